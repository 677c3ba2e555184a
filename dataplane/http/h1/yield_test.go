package h1

import (
	"bufio"
	"context"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/netio"
)

// eventLog records, in order, what the goroutines of a test did.
type eventLog struct {
	mu sync.Mutex
	ev []string
}

func (l *eventLog) add(e string) {
	l.mu.Lock()
	l.ev = append(l.ev, e)
	l.mu.Unlock()
}

func (l *eventLog) events() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ev)
}

// loggedConn records its reads and writes: it accepts every write, and every
// read finds the end of the stream.
type loggedConn struct {
	net.Conn // nil: the methods below are all the codec uses
	log      *eventLog
}

func (c *loggedConn) Write(p []byte) (int, error) {
	c.log.add("write")
	return len(p), nil
}

func (c *loggedConn) Read([]byte) (int, error) {
	c.log.add("read")
	return 0, io.EOF
}

func (c *loggedConn) Close() error                     { return nil }
func (c *loggedConn) SetDeadline(time.Time) error      { return nil }
func (c *loggedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *loggedConn) SetWriteDeadline(time.Time) error { return nil }
func (c *loggedConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80} }
func (c *loggedConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

// loggedWriteReader is a netio.Conn that records its WriteRead calls.
type loggedWriteReader struct {
	*netio.Conn
	log *eventLog
}

func (c *loggedWriteReader) WriteRead(w, r []byte) (int, int, error) {
	c.log.add("write")
	return c.Conn.WriteRead(w, r)
}

// yieldedFirst fails t unless the ready goroutine ran before the writes (a
// writev can come as a write per buffer on a conn without one).
func yieldedFirst(t *testing.T, events []string) {
	t.Helper()
	if len(events) < 2 || events[0] != "ready goroutine" || slices.Contains(events[1:], "ready goroutine") {
		t.Fatalf("events %q, want the ready goroutine's before the writes", events)
	}
}

// TestCodecYieldsToReadyGoroutines checks that the codec's writes, and the
// server's read of a connection's next request, let a goroutine that is ready
// to run go first (yieldToReady): on one processor, a goroutine started just
// before runs before the system call. Without the yield it runs only once the
// codec's goroutine blocks, after the call.
func TestCodecYieldsToReadyGoroutines(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, tc := range []struct {
		name  string
		write func(w *writer) error
	}{
		{"flush", func(w *writer) error {
			w.str("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
			return w.flush()
		}},
		{"through", func(w *writer) error { // more than the buffer holds: writev
			w.str("HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n")
			return w.through(make([]byte, 70000))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &eventLog{}
			var w writer
			w.init(&loggedConn{log: log}, bufpool.New())
			defer w.release()
			w.get()
			done := make(chan struct{})
			go func() { log.add("ready goroutine"); close(done) }()
			if err := tc.write(&w); err != nil {
				t.Fatal(err)
			}
			<-done
			yieldedFirst(t, log.events())
		})
	}

	t.Run("ExchangeHeader", func(t *testing.T) {
		log := &eventLog{}
		conn, up := tcpPair(t)
		rc, err := netio.NewConn(conn)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			br := bufio.NewReader(up)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if line == "\r\n" {
					break
				}
			}
			up.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
		})
		cc := NewClientConn(&loggedWriteReader{Conn: rc, log: log}, testOptions())
		defer func() {
			cc.Close()
			up.Close()
			wg.Wait()
		}()
		s, err := cc.NewStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { log.add("ready goroutine"); close(done) }()
		resp, _, err := s.(http.HeaderExchanger).ExchangeHeader(get("/"))
		if err != nil {
			t.Fatal(err)
		}
		<-done
		if got := resp.Value(http.Status); got != "204" {
			t.Fatalf(":status %s, want 204", got)
		}
		yieldedFirst(t, log.events())
	})

	t.Run("next request", func(t *testing.T) {
		log := &eventLog{}
		done := make(chan struct{})
		h := handlerFunc(func(s http.ServerStream) {
			if err := s.WriteHeader(header(":status", "204"), true); err != nil {
				t.Error(err)
			}
			go func() { log.add("ready goroutine"); close(done) }()
		})
		req := []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
		if err := NewServerConn(testOptions()).ServeBuffered(context.Background(), &loggedConn{log: log}, req, h); err != nil {
			t.Fatal(err)
		}
		<-done
		if got, want := log.events(), []string{"write", "ready goroutine", "read"}; !slices.Equal(got, want) {
			t.Fatalf("events %q, want %q", got, want)
		}
	})
}
