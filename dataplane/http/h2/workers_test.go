package h2

import (
	"io"
	nethttp "net/http"
	"sync"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// TestHandlerWorkersShrinkWhenQuiet: a connection reuses its handler
// goroutines while it is busy, and once it goes quiet keeps one waiting,
// not one per stream of its busiest moment.
func TestHandlerWorkersShrinkWhenQuiet(t *testing.T) {
	const n = 6
	var started sync.WaitGroup
	release := make(chan struct{})
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		started.Done()
		<-release
		var h http.Header
		h.Add(http.Status, "200")
		_ = s.WriteHeader(&h, true)
	}))
	tr := &nethttp.Transport{MaxConnsPerHost: 1}
	tr.Protocols = new(nethttp.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &nethttp.Client{Transport: tr, Timeout: 10 * time.Second}
	burst := func() {
		started.Add(n)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				resp, err := client.Get("http://" + ts.addr + "/")
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
		started.Wait() // n handlers run at once
		release <- struct{}{}
		for range n - 1 {
			release <- struct{}{}
		}
		wg.Wait()
	}
	burst()
	ts.mu.Lock()
	if len(ts.conns) != 1 {
		t.Fatalf("%d connections, want 1", len(ts.conns))
	}
	sc := ts.conns[0]
	ts.mu.Unlock()
	idle := func() int {
		sc.mu.Lock()
		c := sc.c
		sc.mu.Unlock()
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.idleWorkers
	}
	deadline := time.Now().Add(5 * time.Second)
	for idle() > 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := idle(); got != 1 {
		t.Fatalf("%d idle handler goroutines on a quiet connection, want 1", got)
	}
	burst() // and the connection goes on serving
}
