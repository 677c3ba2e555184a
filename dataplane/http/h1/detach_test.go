package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	stdhttp "net/http"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// detachable is a ServerConn on one end of a loopback connection whose
// accepted end the test keeps, so that it can go on serving it after Detach.
type detachable struct {
	*server
	conn *net.TCPConn
}

func startDetachable(t *testing.T, h http.Handler) *detachable {
	t.Helper()
	client, conn := tcpPair(t)
	d := &detachable{
		server: &server{t: t, c: NewServerConn(testOptions()), client: client, br: bufio.NewReader(client), done: make(chan error, 1)},
		conn:   conn,
	}
	go func() { d.done <- d.c.Serve(context.Background(), conn, h) }()
	t.Cleanup(func() { client.Close(); conn.Close() })
	return d
}

// waitState waits until the codec is in state st.
func (d *detachable) waitState(st int32) {
	d.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); d.c.state.Load() != st; {
		if time.Now().After(deadline) {
			d.t.Fatalf("the codec never reached state %d (it is in %d)", st, d.c.state.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// resume serves the detached connection with a new ServerConn, as a hot
// restart successor does.
func (d *detachable) resume(pending []byte, h http.Handler) chan error {
	done := make(chan error, 1)
	go func() { done <- NewServerConn(testOptions()).ServeBuffered(context.Background(), d.conn, pending, h) }()
	return done
}

func (d *detachable) get(path string) *stdhttp.Response {
	d.t.Helper()
	d.send("GET " + path + " HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, _ := d.response("GET")
	if resp.StatusCode != 200 || resp.Close {
		d.t.Fatalf("GET %s: %d, close %v", path, resp.StatusCode, resp.Close)
	}
	return resp
}

// pathEcho answers 200 with the request's path in x-path.
var pathEcho = handlerFunc(func(s http.ServerStream) {
	path, _ := s.Header().Get(":path")
	respond(s, "200", "", "x-path", path)
})

func TestServerDetachIdle(t *testing.T) {
	d := startDetachable(t, pathEcho)
	d.get("/before")
	d.waitState(stIdle)
	pending, ok := d.c.Detach(0)
	if !ok || len(pending) != 0 {
		t.Fatalf("Detach of an idle connection = %q, %v; want no bytes, true", pending, ok)
	}
	if err := d.result(); !errors.Is(err, ErrDetached) {
		t.Fatalf("Serve = %v, want ErrDetached", err)
	}
	// The connection is open: a new codec goes on with it.
	done := d.resume(nil, pathEcho)
	if got := d.get("/after").Header.Get("x-path"); got != "/after" {
		t.Fatalf("after resuming: x-path %q", got)
	}
	d.client.Close()
	if err := <-done; err != nil {
		t.Fatalf("resumed Serve = %v", err)
	}
}

// A busy connection moves when its exchange ends, without "connection:
// close", and the pipelined request behind it goes with it.
func TestServerDetachBusyWithPipelinedRequest(t *testing.T) {
	release := make(chan struct{})
	d := startDetachable(t, handlerFunc(func(s http.ServerStream) {
		if path, _ := s.Header().Get(":path"); path == "/slow" {
			<-release
		}
		pathEcho(s)
	}))
	d.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	time.Sleep(10 * time.Millisecond) // the second request is buffered
	if _, ok := d.c.Detach(0); ok {
		t.Fatal("Detach(0) took a busy connection")
	}
	type res struct {
		pending []byte
		ok      bool
	}
	got := make(chan res, 1)
	go func() { p, ok := d.c.Detach(10 * time.Second); got <- res{p, ok} }()
	d.waitState(stWantDetach)
	close(release)
	resp, _ := d.response("GET")
	if resp.Header.Get("x-path") != "/slow" || resp.Close {
		t.Fatalf("the exchange in flight: %v, close %v", resp.Header, resp.Close)
	}
	r := <-got
	if !r.ok || string(r.pending) != "GET /next HTTP/1.1\r\nHost: a\r\n\r\n" {
		t.Fatalf("Detach = %q, %v; want the pipelined request, true", r.pending, r.ok)
	}
	if err := d.result(); !errors.Is(err, ErrDetached) {
		t.Fatalf("Serve = %v, want ErrDetached", err)
	}
	done := d.resume(r.pending, pathEcho)
	resp, _ = d.response("GET")
	if resp.Header.Get("x-path") != "/next" {
		t.Fatalf("the pipelined request after resuming: %v", resp.Header)
	}
	d.client.Close()
	if err := <-done; err != nil {
		t.Fatalf("resumed Serve = %v", err)
	}
}

// A connection still busy when Detach gives up goes on as if nothing
// happened, and drains as usual.
func TestServerDetachGivesUp(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	d := startDetachable(t, handlerFunc(func(s http.ServerStream) {
		close(started)
		<-release
		pathEcho(s)
	}))
	d.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	if _, ok := d.c.Detach(20 * time.Millisecond); ok {
		t.Fatal("Detach took a connection that stayed busy")
	}
	d.c.Drain()
	close(release)
	resp, _ := d.response("GET")
	if !resp.Close {
		t.Fatal("a drained connection's response lacks connection: close")
	}
	if err := d.result(); err != nil {
		t.Fatalf("Serve = %v, want nil", err)
	}
}

// A connection the client closed is not handed over.
func TestServerDetachClosed(t *testing.T) {
	d := startDetachable(t, pathEcho)
	d.get("/")
	d.client.Close()
	if err := d.result(); err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if _, ok := d.c.Detach(time.Second); ok {
		t.Fatal("Detach took a connection that had ended")
	}
	if n, err := d.conn.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) && n != 0 {
		t.Fatalf("the codec left the ended connection open: %d, %v", n, err)
	}
}
