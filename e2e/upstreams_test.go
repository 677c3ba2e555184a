package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/nettest"
)

// upstream is an in-test TCP server on loopback. Each accepted connection is
// served by handle in its own goroutine; the test's cleanup closes the listener
// and every connection and waits for the handlers to return.
type upstream struct {
	Addr     string
	ln       net.Listener
	handle   func(*net.TCPConn)
	accepted atomic.Int64

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[*net.TCPConn]struct{}
}

// startUpstream listens on host:0 ("127.0.0.1" or "::1").
func startUpstream(t testing.TB, host string, handle func(*net.TCPConn)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("upstream: %v", err)
	}
	u := &upstream{Addr: ln.Addr().String(), ln: ln, handle: handle, conns: map[*net.TCPConn]struct{}{}}
	u.wg.Add(1)
	go u.serve()
	t.Cleanup(u.close)
	return u
}

func (u *upstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		tc := c.(*net.TCPConn)
		u.accepted.Add(1)
		tc.SetDeadline(time.Now().Add(ioTimeout))
		u.mu.Lock()
		u.conns[tc] = struct{}{}
		u.mu.Unlock()
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer func() {
				u.mu.Lock()
				delete(u.conns, tc)
				u.mu.Unlock()
				tc.Close()
			}()
			u.handle(tc)
		}()
	}
}

func (u *upstream) close() {
	u.ln.Close()
	u.mu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// echoHandler sends back everything it reads and half-closes after the client's EOF.
func echoHandler(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
	}
}

// shaHandler reads everything until EOF, then replies "<sha256 hex> <bytes>\n".
func shaHandler(c *net.TCPConn) {
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return
	}
	fmt.Fprintf(c, "%x %d\n", h.Sum(nil), n)
	c.CloseWrite()
}

// shaReply is the reply shaHandler would send for data.
func shaReply(data []byte) string {
	return fmt.Sprintf("%x %d\n", sha256.Sum256(data), len(data))
}

// sendHandler sends n bytes of the stream randomBytes(seed, n), then closes.
func sendHandler(seed uint64, n int) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		c.Write(randomBytes(seed, n))
		c.Close()
	}
}

// resetHandler sends n bytes of randomBytes(seed, n), waits for one byte from
// the client (it has read them all) if ack is set, then resets the connection
// (SO_LINGER 0 and close send an RST).
func resetHandler(seed uint64, n int, ack bool) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		if _, err := c.Write(randomBytes(seed, n)); err != nil {
			return
		}
		if ack {
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				return
			}
		}
		c.SetLinger(0)
		c.Close()
	}
}

// duplexResult is what the duplex upstream received on one connection.
type duplexResult struct {
	sum [sha256.Size]byte
	n   int64
}

// duplexUpstream, for each connection, reads an 8-byte header (a seed and a
// length as two uint32) and then, at the same time, sends length bytes of
// randomStream(seed) and reads everything the client sends until EOF. It
// records what it read under the seed.
type duplexUpstream struct {
	*upstream
	mu      sync.Mutex
	results map[uint32]duplexResult
}

func startDuplexUpstream(t testing.TB, host string) *duplexUpstream {
	d := &duplexUpstream{results: map[uint32]duplexResult{}}
	d.upstream = startUpstream(t, host, d.handle)
	return d
}

func (d *duplexUpstream) handle(c *net.TCPConn) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	seed, n := binary.BigEndian.Uint32(hdr[:4]), binary.BigEndian.Uint32(hdr[4:])
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.LimitReader(randomStream(uint64(seed)), int64(n)))
		if err == nil {
			err = c.CloseWrite()
		}
		sent <- err
	}()
	h := sha256.New()
	read, err := io.Copy(h, c)
	if err != nil {
		c.Close() // unblocks the sender
		<-sent
		return
	}
	if err := <-sent; err != nil {
		return
	}
	var r duplexResult
	h.Sum(r.sum[:0])
	r.n = read
	d.mu.Lock()
	d.results[seed] = r
	d.mu.Unlock()
}

// result returns what the upstream read on the connection that sent seed.
func (d *duplexUpstream) result(seed uint32) (duplexResult, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.results[seed]
	return r, ok
}

// randomStream is a deterministic stream of pseudo-random bytes.
func randomStream(seed uint64) io.Reader {
	return rand.NewChaCha8(seedBytes(seed))
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return s
}

// randomBytes returns the first n bytes of randomStream(seed).
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	io.ReadFull(randomStream(seed), b)
	return b
}

// refusingAddr returns a loopback address nothing listens on, held for the
// test (nettest.RefusedAddr), so connecting to it is refused.
func refusingAddr(t testing.TB) string { return nettest.RefusedAddr(t).String() }

// freePort returns a loopback port that was free a moment ago (for a
// process to listen on; a refused address is refusingAddr's).
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// freePortPair returns a port p such that p and p+1 were both free.
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 100 {
		p := freePort(t)
		if p < 65535 && portFree(net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1))) {
			return p
		}
	}
	t.Fatal("no two adjacent free ports")
	return 0
}

// portFree reports whether host:port can be bound now.
func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// haveIPv6Loopback reports whether ::1 can be listened on.
func haveIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// dial connects to addr, with a deadline of ioTimeout on the connection, and
// closes it at the end of the test.
func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// echoRoundTrip writes msg on c and checks that exactly msg comes back.
func echoRoundTrip(c net.Conn, msg []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	_, rerr := io.ReadFull(c, got)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if rerr != nil {
		return fmt.Errorf("read: %w", rerr)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo differs from what was sent (%d bytes): %s", len(msg), firstDiff(got, msg))
	}
	return nil
}

// echoAll sends payload, half-closes, and checks that exactly payload and then
// EOF come back.
func echoAll(c *net.TCPConn, payload []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if rerr != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), rerr)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo of %d bytes differs: got %d bytes, %s", len(payload), len(got), firstDiff(got, payload))
	}
	return nil
}

func firstDiff(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d", i)
		}
	}
	return fmt.Sprintf("lengths %d and %d", len(got), len(want))
}

// expectClosed reads from c until it ends, within timeout, and returns the bytes
// read and the error that ended it (nil for EOF).
func expectClosed(t testing.TB, c net.Conn, timeout time.Duration) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open %v later (read %d bytes)", timeout, len(b))
	}
	return b, err
}

// hashWriter counts and hashes what is written to it.
type hashWriter struct {
	h hash.Hash
	n int64
}

func newHashWriter() *hashWriter { return &hashWriter{h: sha256.New()} }

func (w *hashWriter) Write(b []byte) (int, error) {
	w.h.Write(b)
	w.n += int64(len(b))
	return len(b), nil
}

func (w *hashWriter) sum() string { return hex.EncodeToString(w.h.Sum(nil)) }

func hexSum(s [sha256.Size]byte) string { return hex.EncodeToString(s[:]) }

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
