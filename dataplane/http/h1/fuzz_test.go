package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	stdhttp "net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// memConn is an in-memory net.Conn: reads return in (at most chunk bytes
// at a time), then io.EOF; writes collect in out. Deadlines are ignored.
type memConn struct {
	mu     sync.Mutex
	in     []byte
	chunk  int
	out    bytes.Buffer
	closed bool
}

func (c *memConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	if len(p) > c.chunk {
		p = p[:c.chunk]
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(p)
}

func (c *memConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *memConn) output() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

func (*memConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (*memConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (*memConn) SetDeadline(t time.Time) error      { return nil }
func (*memConn) SetReadDeadline(t time.Time) error  { return nil }
func (*memConn) SetWriteDeadline(t time.Time) error { return nil }

// checkHeader reports what is wrong with a Header the codec produced: every
// name a lower-case token or a known pseudo-header, every value sendable.
func checkHeader(h *http.Header) string {
	problem := ""
	h.Range(func(name, value string) bool {
		switch {
		case name == http.Method || name == http.Path || name == http.Authority || name == http.Scheme || name == http.Status:
		case !isTokenString(name) || strings.ToLower(name) != name:
			problem = "bad name " + name
		}
		if !validValue(value) {
			problem = "bad value for " + name
		}
		return problem == ""
	})
	return problem
}

func fuzzSeedsServer(f *testing.F) {
	for _, tc := range requestCases {
		f.Add([]byte(tc.raw), uint8(0))
		f.Add([]byte(tc.raw), uint8(3))
	}
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcHEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
		"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX: y\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"GET http://a:1/b?c HTTP/1.1\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nCONNECT a:1 HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(1))
	}
}

// FuzzServer feeds arbitrary bytes to the server codec as a request stream.
// It must not panic, must present only well-formed Headers, and must answer
// with responses net/http can parse: 200 from the handler, or a 4xx/5xx
// error response that is the last thing on the connection.
func FuzzServer(f *testing.F) {
	fuzzSeedsServer(f)
	pool := testOptions().Buffers
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		conn := &memConn{in: data, chunk: int(chunk) + 1}
		opts := &Options{Buffers: pool, MaxHeaderBytes: 1024, MaxHeaders: 16, CloseDelay: -1}
		var methods []string
		buf := make([]byte, 100)
		h := handlerFunc(func(s http.ServerStream) {
			req := s.Header()
			if p := checkHeader(req); p != "" {
				t.Fatalf("request header: %s:\n%s", p, req)
			}
			if req.Method() == "" || req.Path() == "" && req.Method() != "CONNECT" {
				t.Fatalf("request header without :method or :path:\n%s", req)
			}
			n := 0
			for {
				k, err := s.Read(buf)
				if n += k; n > 1<<20 {
					t.Fatal("body longer than the input")
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					var e *Error
					if !errors.As(err, &e) {
						t.Fatalf("body error %v is not an *Error", err)
					}
					return // the codec answers
				}
			}
			if p := checkHeader(s.Trailers()); p != "" {
				t.Fatalf("trailers: %s", p)
			}
			methods = append(methods, strings.Clone(req.Method())) // the Header is reused
			if req.Method() == "CONNECT" {
				respond(s, "405", "")
				return
			}
			respond(s, "200", "ok", "content-length", "2")
		})
		err := NewServerConn(opts).Serve(context.Background(), conn, h)
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("Serve = %v, not an *Error", err)
		}

		// Check the responses.
		out := conn.output()
		br := bufio.NewReader(bytes.NewReader(out))
		last, closed := 0, false
		for i := 0; br.Buffered() > 0 || i == 0; i++ {
			if _, err := br.Peek(1); err == io.EOF {
				break
			}
			method := "GET"
			if len(methods) > 0 {
				method = methods[0]
			}
			resp, rerr := stdhttp.ReadResponse(br, &stdhttp.Request{Method: method})
			if rerr != nil {
				t.Fatalf("response %d does not parse: %v\n%q", i, rerr, out)
			}
			if _, rerr := io.ReadAll(resp.Body); rerr != nil {
				t.Fatalf("response %d body: %v\n%q", i, rerr, out)
			}
			if closed {
				t.Fatalf("response after connection: close:\n%q", out)
			}
			last, closed = resp.StatusCode, resp.Close
			switch {
			case last == 100:
				continue
			case last == 200 || last == 405:
				methods = methods[1:]
			case last >= 400 && last <= 431 || last == 501 || last == 505:
				if !resp.Close {
					t.Fatalf("error response %d without connection: close", last)
				}
			default:
				t.Fatalf("unexpected status %d\n%q", last, out)
			}
		}
		if e != nil && e.Status != 0 && e.Status != last {
			t.Fatalf("Serve returned status %d, the last response was %d\n%q", e.Status, last, out)
		}
	})
}

// FuzzClient feeds arbitrary bytes to the client codec as responses to GET
// and HEAD requests. It must not panic, must present only well-formed
// Headers, and must report every failure as an upstream *Error (or a stream
// already over).
func FuzzClient(f *testing.F) {
	for _, tc := range responseCases {
		f.Add([]byte(tc.raw), uint8(0), false)
	}
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nok\r\n0\r\nA: b\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(2), false)
		f.Add([]byte(s), uint8(2), true)
	}
	pool := testOptions().Buffers
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, head bool) {
		conn := &memConn{in: data, chunk: int(chunk) + 1}
		cc := NewClientConn(conn, &Options{Buffers: pool, MaxHeaderBytes: 1024, MaxHeaders: 16})
		defer cc.Close()
		req := get("/")
		if head {
			req = header(":method", "HEAD", ":authority", "a", ":path", "/")
		}
		buf := make([]byte, 64)
		for i := 0; i < 3 && cc.Available(); i++ {
			s, err := cc.NewStream(context.Background())
			if err != nil {
				t.Fatalf("NewStream on an available connection: %v", err)
			}
			if err := s.WriteHeader(req, true); err != nil {
				t.Fatalf("WriteHeader: %v", err)
			}
			h, err := s.ReadHeader()
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || !e.Upstream || e.Status != 0 {
					t.Fatalf("ReadHeader error %v is not an upstream *Error", err)
				}
				return
			}
			if p := checkHeader(h); p != "" || parseStatus(h.Value(http.Status)) < 101 {
				t.Fatalf("response header: %s:\n%s", p, h)
			}
			n := 0
			for {
				k, err := s.Read(buf)
				if n += k; n > len(data) {
					t.Fatal("body longer than the input")
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					var e *Error
					if !errors.As(err, &e) || !e.Upstream {
						t.Fatalf("body error %v is not an upstream *Error", err)
					}
					return
				}
			}
			if p := checkHeader(s.Trailers()); p != "" {
				t.Fatalf("trailers: %s", p)
			}
		}
	})
}
