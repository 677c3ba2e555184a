package h1

import (
	"bufio"
	"context"
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

// loggedConn is an empty memConn (every read finds the end of the stream)
// that records its reads and writes.
type loggedConn struct {
	memConn
	log *eventLog
}

func (c *loggedConn) Write(p []byte) (int, error) {
	c.log.add("write")
	return c.memConn.Write(p)
}

func (c *loggedConn) Read(p []byte) (int, error) {
	c.log.add("read")
	return c.memConn.Read(p)
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

// yieldedFirst reports whether the ready goroutine ran before the writes (a
// writev can come as a write per buffer on a conn without one).
func yieldedFirst(events []string) bool {
	return len(events) >= 2 && events[0] == "ready goroutine" && !slices.Contains(events[1:], "ready goroutine")
}

// eventually runs attempt until ok accepts its events, at most 20 times, and
// fails t with the last events if it never does. One attempt is not enough:
// the scheduler takes from its global queue first on one pick in 61, and
// then the goroutine that just yielded (and went there) runs again before the
// ready one. Without the yield the ready goroutine can never come first.
func eventually(t *testing.T, attempt func(t *testing.T) []string, ok func([]string) bool) {
	t.Helper()
	var events []string
	for range 20 {
		if events = attempt(t); ok(events) {
			return
		}
	}
	t.Fatalf("events %q in the last of 20 attempts: the ready goroutine never ran first", events)
}

// startReady starts the goroutine that the codec's yield must let run first.
func startReady(log *eventLog) (done chan struct{}) {
	done = make(chan struct{})
	go func() { log.add("ready goroutine"); close(done) }()
	return done
}

// waitReady waits for the goroutine startReady started.
func waitReady(t *testing.T, done chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the ready goroutine did not run")
	}
}

// TestCodecYieldsToReadyGoroutines checks that the codec's writes, and the
// server's read of a connection's next request, let a goroutine that is ready
// to run go first (yieldToReady): on one processor, a goroutine started just
// before runs before the system call. Without the yield it runs only once the
// codec's goroutine blocks, after the call, as it must before a connection's
// first read and the client's ExchangeHeader.
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
			eventually(t, func(t *testing.T) []string {
				log := &eventLog{}
				var w writer
				w.init(&loggedConn{log: log}, bufpool.New())
				defer w.release()
				w.get()
				done := startReady(log)
				if err := tc.write(&w); err != nil {
					t.Fatal(err)
				}
				waitReady(t, done)
				return log.events()
			}, yieldedFirst)
		})
	}

	t.Run("no yield before ExchangeHeader's write", func(t *testing.T) {
		// The request goes out at once (see yieldToReady): the ready
		// goroutine runs only when the exchange waits for the answer. With a
		// yield it would run first on 60 picks in 61, so five attempts
		// all without it tell the two apart.
		for range 5 {
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
			s, err := cc.NewStream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			done := startReady(log)
			resp, _, err := s.(http.HeaderExchanger).ExchangeHeader(get("/"))
			if err != nil {
				t.Fatal(err)
			}
			waitReady(t, done)
			if got := resp.Value(http.Status); got != "204" {
				t.Fatalf(":status %s, want 204", got)
			}
			cc.Close()
			up.Close()
			wg.Wait()
			if got, want := log.events(), []string{"write", "ready goroutine"}; !slices.Equal(got, want) {
				t.Fatalf("events %q, want %q", got, want)
			}
		}
	})

	t.Run("next request", func(t *testing.T) {
		want := []string{"write", "ready goroutine", "read"}
		eventually(t, func(t *testing.T) []string {
			log := &eventLog{}
			var done chan struct{}
			h := handlerFunc(func(s http.ServerStream) {
				if err := s.WriteHeader(header(":status", "204"), true); err != nil {
					t.Error(err)
				}
				done = startReady(log)
			})
			req := []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
			if err := NewServerConn(testOptions()).ServeBuffered(context.Background(), &loggedConn{log: log}, req, h); err != nil {
				t.Fatal(err)
			}
			if done == nil {
				t.Fatal("the request was not served")
			}
			waitReady(t, done)
			return log.events()
		}, func(got []string) bool { return slices.Equal(got, want) })
	})

	t.Run("no yield before the first request", func(t *testing.T) {
		// A connection's first read has no response before it to wait for:
		// the ready goroutine runs only when the read blocks, after it.
		log := &eventLog{}
		done := startReady(log)
		h := handlerFunc(func(http.ServerStream) { t.Error("a request was served from an empty connection") })
		if err := NewServerConn(testOptions()).Serve(context.Background(), &loggedConn{log: log}, h); err != nil {
			t.Fatal(err)
		}
		waitReady(t, done)
		if got, want := log.events(), []string{"read", "ready goroutine"}; !slices.Equal(got, want) {
			t.Fatalf("events %q, want %q", got, want)
		}
	})
}
