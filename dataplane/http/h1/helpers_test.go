package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	stdhttp "net/http"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

// handlerFunc adapts a function to http.Handler.
type handlerFunc func(s http.ServerStream)

func (f handlerFunc) ServeStream(s http.ServerStream) { f(s) }

func testOptions() *Options { return &Options{Buffers: bufpool.New()} }

// trailerOptions are testOptions with trailers kept (Envoy's enable_trailers).
func trailerOptions() *Options {
	o := testOptions()
	o.EnableTrailers = true
	return o
}

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

// server runs a ServerConn on one end of a loopback connection and returns
// the other end and the channel Serve's result arrives on. Cleanup closes the
// client end and waits for Serve.
type server struct {
	t      testing.TB
	c      *ServerConn
	client *net.TCPConn
	br     *bufio.Reader
	done   chan error
}

func startServer(t testing.TB, opts *Options, h http.Handler) *server {
	t.Helper()
	client, conn := tcpPair(t)
	s := &server{t: t, c: NewServerConn(opts), client: client, br: bufio.NewReader(client), done: make(chan error, 1)}
	go func() { s.done <- s.c.Serve(context.Background(), conn, h) }()
	t.Cleanup(func() {
		client.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return s
}

func (s *server) send(raw string) {
	s.t.Helper()
	if _, err := io.WriteString(s.client, raw); err != nil {
		s.t.Fatalf("write: %v", err)
	}
}

// response reads one response with net/http's parser (an independent
// implementation) and returns it with its body read.
func (s *server) response(method string) (*stdhttp.Response, string) {
	s.t.Helper()
	s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := stdhttp.ReadResponse(s.br, &stdhttp.Request{Method: method})
	if err != nil {
		s.t.Fatalf("reading response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("reading response body: %v", err)
	}
	return resp, string(b)
}

// result waits for Serve's result.
func (s *server) result() error {
	s.t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // for Cleanup
		return err
	case <-time.After(10 * time.Second):
		s.t.Fatal("Serve did not return")
		return nil
	}
}

// closed reports whether the server closed the connection (reading gets EOF),
// and then closes the client's end too, as a client would (the server lingers
// after an error response until it does).
func (s *server) closed() bool {
	s.t.Helper()
	s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := s.br.ReadByte()
	if err == nil {
		s.t.Errorf("unexpected byte %q after the response", b)
		return false
	}
	s.client.Close()
	return err == io.EOF || strings.Contains(err.Error(), "reset")
}

// header builds a Header from name, value pairs.
func header(kv ...string) *http.Header {
	h := new(http.Header)
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// respond answers with status, the given fields, and body (with a
// content-length unless chunked is set).
func respond(s http.ServerStream, status string, body string, kv ...string) error {
	h := header(append([]string{":status", status}, kv...)...)
	if err := s.WriteHeader(h, body == ""); err != nil {
		return err
	}
	if body == "" {
		return nil
	}
	if _, err := s.Write([]byte(body)); err != nil {
		return err
	}
	return s.End()
}

// readAll reads a stream's body.
func readAll(r io.Reader) (string, error) {
	var b bytes.Buffer
	_, err := io.Copy(&b, r)
	return b.String(), err
}
