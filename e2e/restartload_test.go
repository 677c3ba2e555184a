package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// httpBody is what the HTTP upstream answers to GET path.
func httpBody(path string) string { return "ok " + path + "\n" }

// httpUpstream is an HTTP/1.1 server on 127.0.0.1 answering every request with
// httpBody(path). It answers Connection: close with Connection: close, as wrk
// needs to tell the end of a response from a failure.
type httpUpstream struct {
	Addr   string
	srv    *httptest.Server
	served atomic.Int64
}

func startHTTPUpstream(t testing.TB) *httpUpstream {
	t.Helper()
	u := &httpUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.served.Add(1)
		b := httpBody(r.URL.Path)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		io.WriteString(w, b)
	}))
	u.Addr = u.srv.Listener.Addr().String()
	t.Cleanup(u.srv.Close)
	return u
}

// waitServed waits until the upstream has served n more requests than before,
// for up to timeout.
func (u *httpUpstream) waitServed(t testing.TB, before, n int64, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for u.served.Load() < before+n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the upstream served %d requests in %v, want %d", what, u.served.Load()-before, timeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// httpLoad is sustained HTTP/1.1 load through the proxy: wrk, a separate
// process, when it is installed; otherwise goroutines of the test doing the same.
// Either way each connection waits loadPause between requests, so that the load
// is sustained without starving the machine (a -race skiff, its successor and
// the other tests share it), and every response is checked: status 200 and
// exactly httpBody("/load").
type httpLoad struct {
	keepAlive bool
	// wrk
	cmd    *exec.Cmd
	out    bytes.Buffer
	exited chan struct{} // closed once wrk has been waited for
	// goroutines
	stopc              chan struct{}
	wg                 sync.WaitGroup
	requests, failures atomic.Int64
	mu                 sync.Mutex
	errs               []string
}

const (
	loadConns = 4
	loadPause = 2 * time.Millisecond
)

// loadResult is what a load run saw.
type loadResult struct {
	requests, failures int64
	detail             string // the error counts, and the first errors
}

// haveWrk reports whether wrk is installed (and not turned off with
// SKIFF_E2E_NO_WRK=1, which runs the goroutine load instead).
var haveWrk = sync.OnceValue(func() bool {
	if os.Getenv("SKIFF_E2E_NO_WRK") != "" {
		return false
	}
	_, err := exec.LookPath("wrk")
	return err == nil
})

// wrkScript checks every response and prints one machine-readable line.
const wrkScript = `local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function delay() return %d end
function response(status, headers, body)
  if status ~= 200 or body ~= %q then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("WRK requests=%%d connect=%%d read=%%d write=%%d timeout=%%d status=%%d bad=%%d\n",
    summary.requests, e.connect, e.read, e.write, e.timeout, e.status, b))
end
`

// startHTTPLoad starts load on addr: a new connection per request
// (Connection: close, the bench's h1close) or keep-alive connections.
func startHTTPLoad(t testing.TB, addr string, keepAlive bool) *httpLoad {
	t.Helper()
	l := &httpLoad{keepAlive: keepAlive}
	if haveWrk() {
		script := filepath.Join(t.TempDir(), "load.lua")
		if err := os.WriteFile(script, fmt.Appendf(nil, wrkScript, loadPause.Milliseconds(), httpBody("/load")), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"-t1", "-c" + strconv.Itoa(loadConns), "-d120s", "--timeout", "10s", "-s", script}
		if !keepAlive {
			args = append(args, "-H", "Connection: close")
		}
		l.cmd = exec.Command("wrk", append(args, "http://"+addr+"/load")...)
		l.cmd.Stdout, l.cmd.Stderr = &l.out, &l.out
		if err := l.cmd.Start(); err != nil {
			t.Fatalf("starting wrk: %v", err)
		}
		l.exited = make(chan struct{})
		go func() {
			l.cmd.Wait()
			close(l.exited)
		}()
		t.Cleanup(func() {
			select {
			case <-l.exited:
			default:
				l.cmd.Process.Kill()
				<-l.exited
			}
		})
		return l
	}
	l.stopc = make(chan struct{})
	for range loadConns {
		l.wg.Go(l.run(addr))
	}
	t.Cleanup(func() { l.stopGoroutines() })
	return l
}

var wrkLine = regexp.MustCompile(`WRK requests=(\d+) connect=(\d+) read=(\d+) write=(\d+) timeout=(\d+) status=(\d+) bad=(\d+)`)

// stop ends the load and returns what it saw. Requests in flight when it stops
// are not counted either way.
func (l *httpLoad) stop(t testing.TB) loadResult {
	t.Helper()
	if l.cmd == nil {
		l.stopGoroutines()
		l.mu.Lock()
		defer l.mu.Unlock()
		return loadResult{requests: l.requests.Load(), failures: l.failures.Load(), detail: strings.Join(l.errs, "; ")}
	}
	l.cmd.Process.Signal(syscall.SIGINT) // wrk prints its summary and exits
	select {
	case <-l.exited:
	case <-time.After(20 * time.Second):
		l.cmd.Process.Kill()
		<-l.exited
		t.Fatalf("wrk did not stop within 20s of SIGINT:\n%s", l.out.String())
	}
	m := wrkLine.FindStringSubmatch(l.out.String())
	if m == nil {
		t.Fatalf("wrk printed no summary:\n%s", l.out.String())
	}
	n := make([]int64, len(m))
	for i := 1; i < len(m); i++ {
		n[i], _ = strconv.ParseInt(m[i], 10, 64)
	}
	return loadResult{
		requests: n[1], failures: n[2] + n[3] + n[4] + n[5] + n[6] + n[7],
		detail: fmt.Sprintf("wrk: connect errors %d, read errors %d, write errors %d, timeouts %d, non-2xx %d, wrong bodies %d",
			n[2], n[3], n[4], n[5], n[6], n[7]),
	}
}

func (l *httpLoad) stopGoroutines() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

func (l *httpLoad) fail(err error) {
	l.failures.Add(1)
	l.mu.Lock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, err.Error())
	}
	l.mu.Unlock()
}

// run is one connection's loop of the goroutine load.
func (l *httpLoad) run(addr string) func() {
	req := "GET /load HTTP/1.1\r\nHost: skiff\r\n\r\n"
	if !l.keepAlive {
		req = "GET /load HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\n\r\n"
	}
	want := httpBody("/load")
	return func() {
		var c net.Conn
		var br *bufio.Reader
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for i := 0; i < 1_000_000; i++ {
			select {
			case <-l.stopc:
				return
			case <-time.After(loadPause):
			}
			if c == nil {
				var err error
				if c, err = net.DialTimeout("tcp", addr, 10*time.Second); err != nil {
					c = nil
					l.fail(fmt.Errorf("connect: %w", err))
					continue
				}
				br = bufio.NewReader(c)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			closed := false
			err := func() error {
				if _, err := io.WriteString(c, req); err != nil {
					return fmt.Errorf("write: %w", err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					return fmt.Errorf("read: %w", err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					return fmt.Errorf("read body: %w", err)
				}
				if resp.StatusCode != 200 || string(b) != want {
					return fmt.Errorf("response %d %q, want 200 %q", resp.StatusCode, b, want)
				}
				closed = resp.Close // a draining HTTP connection manager says so
				return nil
			}()
			if err != nil {
				l.fail(err)
			} else {
				l.requests.Add(1)
			}
			if err != nil || !l.keepAlive || closed {
				c.Close()
				c = nil
			}
		}
	}
}

// longEchoHandler echoes like echoHandler, with a deadline long enough for the
// streams of the hot restart tests.
func longEchoHandler(c *net.TCPConn) {
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	echoHandler(c)
}

// byteStream is a long-lived TCP stream through the proxy to an echo upstream:
// a writer sends a deterministic random stream in random-sized chunks, paced,
// and a reader checks every byte echoed back against the same stream as it
// arrives (so a byte lost, duplicated or reordered is caught at its offset)
// and keeps a running hash of both directions.
type byteStream struct {
	id         int
	c          *net.TCPConn
	seed       uint64
	sent, recv atomic.Int64
	stopc      chan struct{}
	writeDone  chan error
	readDone   chan error
	sentHash   hash.Hash // owned by the writer until writeDone
	recvHash   hash.Hash // owned by the reader until readDone
}

// streams is a set of byteStreams.
type streams []*byteStream

const (
	streamChunk = 16 << 10
	streamPause = 5 * time.Millisecond
)

// startStreams opens n streams to addr.
func startStreams(t testing.TB, addr string, n int) streams {
	t.Helper()
	var ss streams
	for i := range n {
		nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		s := &byteStream{
			id: i, c: nc.(*net.TCPConn), seed: rand.Uint64(), stopc: make(chan struct{}),
			writeDone: make(chan error, 1), readDone: make(chan error, 1), sentHash: sha256.New(), recvHash: sha256.New(),
		}
		s.c.SetDeadline(time.Now().Add(5 * time.Minute))
		go s.write()
		go s.read()
		ss = append(ss, s)
		t.Cleanup(func() {
			s.c.Close()
			s.stopWriting()
			<-s.writeDone
			<-s.readDone
		})
	}
	return ss
}

func (s *byteStream) stopWriting() {
	select {
	case <-s.stopc:
	default:
		close(s.stopc)
	}
}

func (s *byteStream) write() {
	src := randomStream(s.seed)
	buf := make([]byte, streamChunk)
	r := rand.New(rand.NewPCG(s.seed, 1))
	tick := time.NewTicker(streamPause)
	defer tick.Stop()
	for {
		select {
		case <-s.stopc:
			s.writeDone <- s.c.CloseWrite()
			return
		case <-tick.C:
		}
		n := 1 + r.IntN(streamChunk)
		io.ReadFull(src, buf[:n])
		w, err := s.c.Write(buf[:n])
		s.sentHash.Write(buf[:w])
		s.sent.Add(int64(w))
		if err != nil {
			s.writeDone <- fmt.Errorf("stream %d: write after %d bytes: %w", s.id, s.sent.Load(), err)
			return
		}
	}
}

func (s *byteStream) read() {
	want := randomStream(s.seed)
	buf := make([]byte, 64<<10)
	exp := make([]byte, 64<<10)
	for {
		n, err := s.c.Read(buf)
		if n > 0 {
			io.ReadFull(want, exp[:n])
			if !bytes.Equal(buf[:n], exp[:n]) {
				off := s.recv.Load()
				for i := range n {
					if buf[i] != exp[i] {
						off += int64(i)
						break
					}
				}
				s.readDone <- fmt.Errorf("stream %d: the echo differs from what was sent at byte %d (a byte lost, duplicated or reordered)", s.id, off)
				return
			}
			s.recvHash.Write(buf[:n])
			s.recv.Add(int64(n))
		}
		if errors.Is(err, io.EOF) {
			s.readDone <- nil
			return
		}
		if err != nil {
			s.readDone <- fmt.Errorf("stream %d: read after %d bytes: %w", s.id, s.recv.Load(), err)
			return
		}
	}
}

// received is how many bytes each stream has had echoed so far.
func (ss streams) received() []int64 {
	out := make([]int64, len(ss))
	for i, s := range ss {
		out[i] = s.recv.Load()
	}
	return out
}

// waitProgress waits until every stream has had at least n more bytes echoed
// than in before, failing early if a stream broke.
func (ss streams) waitProgress(t testing.TB, before []int64, n int64, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for i, s := range ss {
		for s.recv.Load() < before[i]+n {
			select {
			case err := <-s.readDone:
				s.readDone <- err
				t.Fatalf("%s: stream %d ended: %v", what, s.id, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: stream %d had %d bytes echoed in 15s, want %d (sent %d in all, received %d)",
					what, s.id, s.recv.Load()-before[i], n, s.sent.Load(), s.recv.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// finish stops the writers, half-closes, reads the rest until the upstream's
// FIN comes back through the proxy, and checks that every stream got back
// exactly what it sent.
func (ss streams) finish(t testing.TB) {
	t.Helper()
	for _, s := range ss {
		s.stopWriting()
	}
	for _, s := range ss {
		if err := <-s.writeDone; err != nil {
			t.Errorf("stream %d: %v", s.id, err)
		}
		s.writeDone <- nil // for the cleanup
		select {
		case err := <-s.readDone:
			s.readDone <- nil
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
		case <-time.After(30 * time.Second):
			t.Errorf("stream %d: no EOF 30s after the half-close (sent %d, received %d)", s.id, s.sent.Load(), s.recv.Load())
			continue
		}
		sent, recv := s.sentHash.Sum(nil), s.recvHash.Sum(nil)
		if s.sent.Load() != s.recv.Load() || !bytes.Equal(sent, recv) {
			t.Errorf("stream %d: sent %d bytes (sha256 %x), got back %d (sha256 %x)", s.id, s.sent.Load(), sent, s.recv.Load(), recv)
		}
	}
}

// nameHandler answers every connection with name and a newline, then closes.
func nameHandler(name string) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		io.WriteString(c, name+"\n")
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// askName connects to addr and returns the line the upstream sent.
func askName(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("after %q: %w", b, err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}
