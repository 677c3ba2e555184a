package netio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/stats"
)

// A mode is one way of wiring a pair: which conns hide syscall.Conn and whether
// pipes are available. splice says which copy the pair must end up using.
type mode struct {
	name             string
	pipes            bool
	wrapDown, wrapUp bool
	splice           bool
}

func testModes() []mode {
	return []mode{
		{name: "splice", pipes: true, splice: true},
		{name: "buffer", pipes: false},                              // raw descriptors, no pipes
		{name: "opaque", pipes: true, wrapDown: true, wrapUp: true}, // Read/Write only
		{name: "mixed", pipes: true, wrapDown: true, wrapUp: false}, // one of each
	}
}

// opaqueConn hides its conn's syscall.Conn, as a TLS conn would, so the pair must
// use Read and Write. Like tls.Conn it offers CloseWrite and NetConn.
type opaqueConn struct{ net.Conn }

func (c opaqueConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }
func (c opaqueConn) NetConn() net.Conn { return c.Conn }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	dialed, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	accepted, err = ln.AcceptTCP()
	if err != nil {
		dialed.Close()
		t.Fatalf("accept: %v", err)
	}
	return dialed, accepted
}

// harness is client <-TCP-> [down  Pair  up] <-TCP-> server, all on loopback.
type harness struct {
	t              testing.TB
	client, server *net.TCPConn
	down, up       net.Conn
	cfg            *Config
	sent, received stats.Counter
	runs           sync.WaitGroup
}

func newHarness(t testing.TB, m mode, idle time.Duration) *harness {
	t.Helper()
	h := &harness{t: t}
	var downTCP, upTCP *net.TCPConn
	h.client, downTCP = tcpPair(t)
	upTCP, h.server = tcpPair(t)
	h.down, h.up = net.Conn(downTCP), net.Conn(upTCP)
	if m.wrapDown {
		h.down = opaqueConn{downTCP}
	}
	if m.wrapUp {
		h.up = opaqueConn{upTCP}
	}
	store := stats.NewStore()
	h.sent, h.received = store.Counter("sent"), store.Counter("received")
	h.cfg = &Config{
		Buffers:     bufpool.New(),
		IdleTimeout: idle,
		// Two handles each, as a listener and a cluster would both count.
		SentCounters:     []stats.Counter{h.sent, store.Counter("sent2")},
		ReceivedCounters: []stats.Counter{h.received, store.Counter("received2")},
	}
	if m.pipes {
		pp, err := NewPipePool(0)
		if err != nil {
			t.Fatalf("NewPipePool: %v", err)
		}
		h.cfg.Pipes = pp
	}
	t.Cleanup(func() {
		for _, c := range []net.Conn{h.client, h.server, h.down, h.up} {
			c.Close()
		}
		waitGroup(t, &h.runs)
	})
	return h
}

// start runs p in a goroutine; the harness waits for it before the test ends.
func (h *harness) start(ctx context.Context, p *Pair) <-chan Result {
	ch := make(chan Result, 1)
	h.runs.Add(1)
	go func() {
		defer h.runs.Done()
		ch <- p.Run(ctx)
	}()
	return ch
}

// patience bounds every wait in these tests. It is far above what any of them
// needs; reaching it means something hangs.
const patience = 30 * time.Second

func waitResult(t testing.TB, ch <-chan Result) Result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(patience):
		t.Fatal("Run did not return")
		return Result{}
	}
}

func waitGroup(t testing.TB, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(patience):
		t.Error("goroutines did not finish")
	}
}

// waitFor polls cond until it holds, failing the test after patience.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	rand.NewChaCha8(s).Read(b)
	return b
}

func checkBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Errorf("%s: got %d bytes, want %d; first difference at offset %d", what, len(got), len(want), i)
}

// exchanged is what one peer received, and its first error.
type exchanged struct {
	got []byte
	err error
}

// exchange writes send to c, half-closes it, and meanwhile reads c to end of
// stream. Writing is gated: each segment waits for a token on gate (nil: none).
func exchange(c *net.TCPConn, send []byte, segments int, gate <-chan struct{}) <-chan exchanged {
	out := make(chan exchanged, 1)
	werr := make(chan error, 1)
	go func() {
		seg := len(send) / segments
		for i := range segments {
			if gate != nil {
				<-gate
			}
			end := (i + 1) * seg
			if i == segments-1 {
				end = len(send)
			}
			if _, err := c.Write(send[i*seg : end]); err != nil {
				werr <- err
				return
			}
		}
		werr <- c.CloseWrite()
	}()
	go func() {
		got, err := io.ReadAll(c)
		out <- exchanged{got, errors.Join(err, <-werr)}
	}()
	return out
}

func waitExchange(t testing.TB, who string, ch <-chan exchanged) []byte {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Errorf("%s: %v", who, r.err)
		}
		return r.got
	case <-time.After(patience):
		t.Fatalf("%s did not finish", who)
		return nil
	}
}
