package h2

import (
	"context"
	"net"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/http"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testServer is an h2 server on a loopback listener.
type testServer struct {
	srv    *Server
	addr   string
	ln     net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []*ServerConn
	errs   []error
}

// startServer serves h on 127.0.0.1; the test's cleanup stops it and waits for
// every connection.
func startServer(t testing.TB, opts ServerOptions, h http.Handler) *testServer {
	t.Helper()
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, addr: ln.Addr().String(), ln: ln, cancel: cancel}
	ts.wg.Add(1)
	go func() {
		defer ts.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			sc := srv.NewConn()
			ts.mu.Lock()
			ts.conns = append(ts.conns, sc)
			ts.mu.Unlock()
			ts.wg.Add(1)
			go func() {
				defer ts.wg.Done()
				err := sc.Serve(ctx, nc, h)
				ts.mu.Lock()
				ts.errs = append(ts.errs, err)
				ts.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	ts.ln.Close()
	ts.cancel()
	ts.wg.Wait()
}

// drainAll calls Drain on every connection served so far.
func (ts *testServer) drainAll() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, sc := range ts.conns {
		sc.Drain()
	}
}

func (c *conn) peerMaxStreamsForTest() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerMaxStreams
}
