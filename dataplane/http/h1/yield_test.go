package h1

import (
	"bufio"
	"context"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"

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

// loggedConn records its writes; it accepts them all.
type loggedConn struct {
	net.Conn // nil: only Write is used
	log      *eventLog
}

func (c *loggedConn) Write(p []byte) (int, error) {
	c.log.add("write")
	return len(p), nil
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

// TestWritesYieldToReadyGoroutines checks that the codec's writes let a
// goroutine that is ready to run go first (yieldToReady): on one processor, a
// goroutine started just before a write runs before the write's system call.
// Without the yield it runs only once the writer blocks, after the write.
func TestWritesYieldToReadyGoroutines(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	t.Run("flush", func(t *testing.T) {
		log := &eventLog{}
		var w writer
		w.init(&loggedConn{log: log}, bufpool.New())
		defer w.release()
		w.get()
		w.str("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
		done := make(chan struct{})
		go func() { log.add("ready goroutine"); close(done) }()
		if err := w.flush(); err != nil {
			t.Fatal(err)
		}
		<-done
		yieldedFirst(t, log.events())
	})

	t.Run("through", func(t *testing.T) {
		log := &eventLog{}
		var w writer
		w.init(&loggedConn{log: log}, bufpool.New())
		defer w.release()
		w.get()
		w.str("HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n")
		done := make(chan struct{})
		go func() { log.add("ready goroutine"); close(done) }()
		if err := w.through(make([]byte, 70000)); err != nil { // more than the buffer holds: writev
			t.Fatal(err)
		}
		<-done
		yieldedFirst(t, log.events())
	})

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
}
