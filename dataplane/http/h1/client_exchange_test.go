package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/netio"
)

// exchangeUpstream is upstream with the client's end as a netio.Conn when raw
// is true (ExchangeHeader's one-step path) and a plain *net.TCPConn otherwise
// (its WriteHeader-then-ReadHeader fallback).
func exchangeUpstream(t *testing.T, raw bool, script func(conn net.Conn, br *bufio.Reader)) *ClientConn {
	t.Helper()
	conn, up := tcpPair(t)
	nc := maybeRaw(t, conn, raw)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer up.Close()
		script(up, bufio.NewReader(up))
	})
	cc := NewClientConn(nc, testOptions())
	t.Cleanup(func() {
		cc.Close()
		up.Close()
		wg.Wait()
	})
	return cc
}

// maybeRaw returns conn as a netio.Conn if raw is true, as it is otherwise.
func maybeRaw(t *testing.T, conn *net.TCPConn, raw bool) net.Conn {
	t.Helper()
	if !raw {
		return conn
	}
	rc, err := netio.NewConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// exchange opens a stream on cc and runs ExchangeHeader with a deadline, so
// that a lost wake-up fails the test instead of hanging it.
func exchange(t *testing.T, cc *ClientConn, req *http.Header) (http.ClientStream, *http.Header, bool, error) {
	t.Helper()
	s, err := cc.NewStream(context.Background())
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	type result struct {
		resp *http.Header
		sent bool
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, sent, err := s.(http.HeaderExchanger).ExchangeHeader(req)
		done <- result{resp, sent, err}
	}()
	select {
	case r := <-done:
		return s, r.resp, r.sent, r.err
	case <-time.After(10 * time.Second):
		t.Fatal("ExchangeHeader did not return")
		return nil, nil, false, nil
	}
}

func forBothConns(t *testing.T, f func(t *testing.T, raw bool)) {
	t.Run("raw", func(t *testing.T) { f(t, true) })
	t.Run("net", func(t *testing.T) { f(t, false) })
}

// TestClientExchangeHeader: what ExchangeHeader sends and returns is what
// WriteHeader and ReadHeader would, response framing and reuse included.
func TestClientExchangeHeader(t *testing.T) {
	for _, tc := range []struct {
		name, response, status, body string
		reusable                     bool
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "200", "ok", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "200", "ok", true},
		{"no body", "HTTP/1.1 204 No Content\r\n\r\n", "204", "", true},
		{"after 1xx", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", "201", "ok", true},
		{"connection close", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "200", "ok", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forBothConns(t, func(t *testing.T, raw bool) {
				paths := make(chan string, 3)
				cc := exchangeUpstream(t, raw, func(conn net.Conn, br *bufio.Reader) {
					for {
						req, _ := readRequest(t, br)
						if req == nil {
							return
						}
						paths <- req.Method + " " + req.Host + req.URL.Path + " " + req.Header.Get("X-Test")
						// The head in two writes: the client must read on past its first bytes.
						io.WriteString(conn, tc.response[:len(tc.response)/2])
						time.Sleep(time.Millisecond)
						io.WriteString(conn, tc.response[len(tc.response)/2:])
						if !tc.reusable {
							return
						}
					}
				})
				for i := range 2 {
					s, resp, sent, err := exchange(t, cc, get("/x", "x-test", "v"))
					if err != nil || !sent {
						t.Fatalf("round %d: ExchangeHeader = %v, sent %v", i, err, sent)
					}
					if got := resp.Value(http.Status); got != tc.status {
						t.Errorf("round %d: :status %s, want %s", i, got, tc.status)
					}
					body, err := readAll(s)
					if err != nil || body != tc.body {
						t.Fatalf("round %d: body %q, %v; want %q", i, body, err, tc.body)
					}
					s.Close()
					if got := <-paths; got != "GET up.example/x v" {
						t.Errorf("round %d: upstream got %q", i, got)
					}
					if cc.Available() != tc.reusable {
						t.Fatalf("round %d: Available = %v, want %v", i, cc.Available(), tc.reusable)
					}
					if !tc.reusable {
						return
					}
				}
			})
		})
	}
}

// TestClientExchangeHeaderClosedIdle: an upstream that closed the idle
// connection before the request (its FIN arrived while nobody read) fails
// the exchange as "no response" on a sent request, the error the router
// retries on a fresh connection; the wait for the answer must not miss it.
func TestClientExchangeHeaderClosedIdle(t *testing.T) {
	forBothConns(t, func(t *testing.T, raw bool) {
		closed := make(chan struct{})
		cc := exchangeUpstream(t, raw, func(conn net.Conn, br *bufio.Reader) {
			readRequest(t, br)
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			conn.Close()
			close(closed)
		})
		s, _, _, err := exchange(t, cc, get("/"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(s)
		s.Close()
		<-closed
		time.Sleep(20 * time.Millisecond) // the FIN is in
		_, _, sent, err := exchange(t, cc, get("/"))
		var he *Error
		if !errors.As(err, &he) || he.Kind != KindNoResponse || !sent {
			t.Fatalf("ExchangeHeader on a closed connection = %v (sent %v), want a KindNoResponse error on a sent request", err, sent)
		}
	})
}

// TestClientExchangeHeaderWriteFails: a request that cannot be written is
// reported as not sent, and the connection is done.
func TestClientExchangeHeaderWriteFails(t *testing.T) {
	forBothConns(t, func(t *testing.T, raw bool) {
		conn, up := tcpPair(t)
		defer up.Close()
		cc := NewClientConn(maybeRaw(t, conn, raw), testOptions())
		defer cc.Close()
		conn.CloseWrite()
		_, _, sent, err := exchange(t, cc, get("/"))
		if err == nil || sent || !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("ExchangeHeader after CloseWrite = %v (sent %v), want EPIPE, not sent", err, sent)
		}
		if cc.Available() {
			t.Error("connection still available after a failed write")
		}
	})
}
