package h1

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// These tests run the codecs over net.Pipe inside a synctest bubble, so
// deadlines run on the bubble's fake clock and timing is asserted exactly.

// pipeServer runs a ServerConn on a net.Pipe and collects what it writes.
type pipeServer struct {
	client net.Conn
	done   chan error
	mu     sync.Mutex
	out    strings.Builder
	eof    bool
}

func startPipeServer(t *testing.T, opts *Options, h http.Handler) *pipeServer {
	client, conn := net.Pipe()
	p := &pipeServer{client: client, done: make(chan error, 1)}
	go func() { p.done <- NewServerConn(opts).Serve(context.Background(), conn, h) }()
	go func() {
		b := make([]byte, 1024)
		for {
			n, err := client.Read(b)
			p.mu.Lock()
			p.out.Write(b[:n])
			p.eof = err != nil
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { client.Close() })
	return p
}

// output returns what the server wrote so far and whether it closed.
func (p *pipeServer) output() (string, bool) {
	synctest.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String(), p.eof
}

func (p *pipeServer) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(p.client, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func TestRequestHeadersTimeoutSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		opts := testOptions()
		opts.RequestHeadersTimeout = 10 * time.Second
		opts.CloseDelay = -1
		p := startPipeServer(t, opts, echo)

		// The timer starts with the first byte, not with the connection.
		time.Sleep(time.Hour)
		p.send(t, "GET / HTTP/1.1\r\nHo")
		time.Sleep(10*time.Second - time.Nanosecond)
		if out, closed := p.output(); out != "" || closed {
			t.Fatalf("before the timeout: %q, closed %v", out, closed)
		}
		time.Sleep(time.Nanosecond)
		out, closed := p.output()
		if out != "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" || !closed {
			t.Fatalf("at the timeout: %q, closed %v", out, closed)
		}
		var e *Error
		if err := <-p.done; !errors.As(err, &e) || e.Kind != KindHeadersTimeout || e.Status != 408 || e.Details != DetailsRequestHeaderTimeout {
			t.Fatalf("Serve = %v, want a headers timeout", err)
		}
	})
}

// TestRequestHeadersTimeoutPerRequest checks that each request gets the
// whole timeout, however long the connection has lived.
func TestRequestHeadersTimeoutPerRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		opts := testOptions()
		opts.RequestHeadersTimeout = 10 * time.Second
		p := startPipeServer(t, opts, echo)
		for range 5 {
			p.send(t, "GET / HTTP/1.1\r\n")
			time.Sleep(9 * time.Second)
			p.send(t, "Host: a\r\n\r\n")
			time.Sleep(time.Minute)
		}
		out, closed := p.output()
		if strings.Count(out, "HTTP/1.1 200 OK") != 5 || closed {
			t.Fatalf("output %q, closed %v", out, closed)
		}
		p.client.Close()
		if err := <-p.done; err != nil {
			t.Fatalf("Serve = %v", err)
		}
	})
}

func TestIdleTimeoutSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		opts := testOptions()
		opts.IdleTimeout = 30 * time.Second
		p := startPipeServer(t, opts, echo)
		// Requests just inside the idle timeout keep the connection.
		for range 3 {
			time.Sleep(30*time.Second - time.Nanosecond)
			p.send(t, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		}
		out, closed := p.output()
		if strings.Count(out, "HTTP/1.1 200 OK") != 3 || closed {
			t.Fatalf("output %q, closed %v", out, closed)
		}
		time.Sleep(30*time.Second - time.Nanosecond)
		if _, closed := p.output(); closed {
			t.Fatal("closed before the idle timeout")
		}
		time.Sleep(time.Nanosecond)
		if out2, closed := p.output(); !closed || out2 != out {
			t.Fatalf("after the idle timeout: closed %v, new output %q", closed, strings.TrimPrefix(out2, out))
		}
		var e *Error
		if err := <-p.done; !errors.As(err, &e) || e.Kind != KindIdleTimeout || e.Status != 0 {
			t.Fatalf("Serve = %v, want an idle timeout", err)
		}
	})
}

// TestIdleTimeoutDoesNotCutHandlers checks that the idle timeout does not
// run while a handler works, however long.
func TestIdleTimeoutDoesNotCutHandlers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		opts := testOptions()
		opts.IdleTimeout = 30 * time.Second
		p := startPipeServer(t, opts, handlerFunc(func(s http.ServerStream) {
			time.Sleep(time.Hour)
			if s.Context().Err() != nil {
				t.Error("context canceled while the client waits")
			}
			respond(s, "200", "late", "content-length", "4")
		}))
		p.send(t, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		time.Sleep(time.Hour + time.Second)
		if out, closed := p.output(); !strings.HasSuffix(out, "\r\n\r\nlate") || closed {
			t.Fatalf("output %q, closed %v", out, closed)
		}
		p.client.Close()
		<-p.done
	})
}

func TestDrainIdleSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, conn := net.Pipe()
		defer client.Close()
		c := NewServerConn(testOptions())
		done := make(chan error, 1)
		go func() { done <- c.Serve(context.Background(), conn, echo) }()
		time.Sleep(time.Minute)
		c.Drain()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Serve = %v", err)
			}
		default:
			t.Fatal("an idle connection outlived Drain")
		}
	})
}

// TestDrainBeforeServe: a connection drained before it starts serves
// nothing.
func TestDrainBeforeServe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, conn := net.Pipe()
		defer client.Close()
		c := NewServerConn(testOptions())
		c.Drain()
		if err := c.Serve(context.Background(), conn, echo); err != nil {
			t.Fatalf("Serve = %v", err)
		}
	})
}

func TestServeContextCanceled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, conn := net.Pipe()
		defer client.Close()
		ctx, cancel := context.WithCancelCause(context.Background())
		done := make(chan error, 1)
		go func() { done <- NewServerConn(testOptions()).Serve(ctx, conn, echo) }()
		time.Sleep(time.Second)
		stop := errors.New("shutting down")
		cancel(stop)
		if err := <-done; err != stop {
			t.Fatalf("Serve = %v, want the context's cause", err)
		}
	})
}

func TestClientExpectTimeoutSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		conn, up := net.Pipe()
		opts := testOptions()
		opts.ExpectContinueTimeout = 3 * time.Second
		cc := NewClientConn(conn, opts)
		defer cc.Close()
		start := time.Now()
		bodyAt := make(chan time.Duration, 1)
		go func() {
			defer up.Close()
			b := make([]byte, 4096)
			n, _ := up.Read(b) // the head
			if !strings.HasPrefix(string(b[:n]), "PUT / HTTP/1.1\r\n") {
				t.Errorf("head %q", b[:n])
			}
			n, _ = up.Read(b) // the body, once the client gave up waiting
			bodyAt <- time.Since(start)
			if string(b[:n]) != "data" {
				t.Errorf("body %q", b[:n])
			}
			io.WriteString(up, "HTTP/1.1 204 No Content\r\n\r\n")
		}()
		s, _ := cc.NewStream(context.Background())
		s.WriteHeader(header(":method", "PUT", ":authority", "a", ":path", "/", "expect", "100-continue", "content-length", "4"), false)
		if _, err := s.Write([]byte("data")); err != nil {
			t.Fatal(err)
		}
		s.End()
		if h, err := s.ReadHeader(); err != nil || h.Value(":status") != "204" {
			t.Fatalf("ReadHeader = %v, %v", h, err)
		}
		if d := <-bodyAt; d != 3*time.Second {
			t.Fatalf("body sent after %v, want exactly the 3s timeout", d)
		}
	})
}
