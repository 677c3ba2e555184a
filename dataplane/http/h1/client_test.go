package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	stdhttp "net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// upstream runs script on the accepted end of a loopback connection (with a
// bufio.Reader over it, for net/http's request parser) and returns a
// ClientConn on the dialed end. Cleanup closes both and waits for the script.
func upstream(t *testing.T, opts *Options, script func(conn net.Conn, br *bufio.Reader)) *ClientConn {
	t.Helper()
	conn, up := tcpPair(t)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer up.Close()
		script(up, bufio.NewReader(up))
	})
	cc := NewClientConn(conn, opts)
	t.Cleanup(func() {
		cc.Close()
		up.Close()
		wg.Wait()
	})
	return cc
}

// readRequest parses one request with net/http and reads its body.
func readRequest(t *testing.T, br *bufio.Reader) (*stdhttp.Request, string) {
	t.Helper()
	req, err := stdhttp.ReadRequest(br)
	if err != nil {
		if err != io.EOF && !errors.Is(err, net.ErrClosed) {
			t.Errorf("upstream: reading request: %v", err)
		}
		return nil, ""
	}
	b, err := io.ReadAll(req.Body)
	if err != nil {
		t.Errorf("upstream: reading request body: %v", err)
	}
	return req, string(b)
}

func get(path string, kv ...string) *http.Header {
	return header(append([]string{":method", "GET", ":scheme", "http", ":authority", "up.example", ":path", path}, kv...)...)
}

// roundTrip sends req (with body, if any; end after it) and returns the
// response head and body.
func roundTrip(t *testing.T, cc *ClientConn, req *http.Header, body string) (*http.Header, string, http.ClientStream) {
	t.Helper()
	s, err := cc.NewStream(context.Background())
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	if err := s.WriteHeader(req, body == ""); err != nil {
		t.Fatalf("WriteHeader: %v", err)
	}
	if body != "" {
		if _, err := s.Write([]byte(body)); err != nil {
			t.Fatalf("Write: %v", err)
		}
		if err := s.End(); err != nil {
			t.Fatalf("End: %v", err)
		}
	}
	h, err := s.ReadHeader()
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	got, err := readAll(s)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return h, got, s
}

// TestClientNetHTTPServer runs the client codec against net/http's server
// (another implementation): methods, bodies both ways, trailers, HEAD, 204,
// 304, on one reused connection.
func TestClientNetHTTPServer(t *testing.T) {
	srv := httptest.NewServer(stdhttp.HandlerFunc(func(w stdhttp.ResponseWriter, r *stdhttp.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Body", string(body))
		w.Header().Set("X-Trailer", r.Trailer.Get("X-Sum"))
		w.Header().Set("X-TE", strings.Join(r.TransferEncoding, ","))
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.WriteHeader(304)
		case "/chunked":
			w.Header().Set("Trailer", "X-Done")
			w.WriteHeader(200)
			w.Write([]byte("part one, "))
			w.(stdhttp.Flusher).Flush()
			w.Write([]byte("part two"))
			w.Header().Set("X-Done", "yes")
		default:
			w.Write([]byte("hello " + r.URL.RawQuery))
		}
	}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := NewClientConn(conn, trailerOptions())
	defer cc.Close()

	h, body, _ := roundTrip(t, cc, get("/?q=1", "Accept", "*/*"), "")
	if h.Value(":status") != "200" || body != "hello q=1" || h.Value("x-method") != "GET" || h.Value("x-host") != "up.example" {
		t.Fatalf("GET: %s, body %q", h, body)
	}

	post := header(":method", "POST", ":authority", "up.example", ":path", "/p", "content-length", "5")
	if h, _, _ = roundTrip(t, cc, post, "hello"); h.Value("x-body") != "hello" {
		t.Fatalf("POST with content-length: %s", h)
	}

	// Chunked request with trailers.
	s, _ := cc.NewStream(context.Background())
	s.WriteHeader(header(":method", "PUT", ":authority", "up.example", ":path", "/c", "trailer", "X-Sum"), false)
	s.Write([]byte("ab"))
	s.Write([]byte("cd"))
	s.EndWithTrailers(header("x-sum", "99"))
	h, _ = s.ReadHeader()
	readAll(s)
	if h.Value("x-body") != "abcd" || h.Value("x-trailer") != "99" || h.Value("x-te") != "chunked" {
		t.Fatalf("chunked PUT: %s", h)
	}

	// Chunked response with trailers.
	h, body, s = roundTrip(t, cc, get("/chunked"), "")
	if body != "part one, part two" || s.Trailers().Value("x-done") != "yes" || h.Has("transfer-encoding") {
		t.Fatalf("chunked response: %s, body %q, trailers %s", h, body, s.Trailers())
	}

	if h, body, _ = roundTrip(t, cc, header(":method", "HEAD", ":authority", "a", ":path", "/"), ""); h.Value("content-length") != "6" || body != "" {
		t.Fatalf("HEAD: %s, body %q", h, body)
	}
	for _, p := range []string{"/204", "/304"} {
		if h, body, _ = roundTrip(t, cc, get(p), ""); h.Value(":status") != p[1:] || body != "" {
			t.Fatalf("%s: %s, body %q", p, h, body)
		}
	}
	if !cc.Available() {
		t.Fatal("connection not reusable after clean exchanges")
	}
}

func TestClientReuse(t *testing.T) {
	for _, tc := range []struct {
		name     string
		response string
		body     string
		reusable bool
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "ok", true},
		{"no body", "HTTP/1.1 204 No Content\r\n\r\n", "", true},
		{"connection close", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "ok", false},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", false},
		{"HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", "ok", true},
		{"close-delimited", "HTTP/1.1 200 OK\r\n\r\nuntil the end", "until the end", false},
		{"bytes after the response", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", "ok", false},
		{"after 1xx", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
				for {
					if req, _ := readRequest(t, br); req == nil {
						return
					}
					io.WriteString(conn, tc.response)
					if !tc.reusable {
						if tc.name == "close-delimited" {
							conn.Close()
						}
						return
					}
				}
			})
			for i := range 2 {
				h, body, _ := roundTrip(t, cc, get("/"), "")
				if body != tc.body || h.Has("transfer-encoding") {
					t.Fatalf("round %d: %s, body %q, want %q", i, h, body, tc.body)
				}
				if cc.Available() != tc.reusable {
					t.Fatalf("round %d: Available = %v, want %v", i, cc.Available(), tc.reusable)
				}
				if !tc.reusable {
					if _, err := cc.NewStream(context.Background()); !errors.Is(err, ErrConnClosed) {
						t.Fatalf("NewStream on a closed connection = %v", err)
					}
					return
				}
			}
		})
	}
}

func TestClientRequestFraming(t *testing.T) {
	type seen struct {
		head string
		body string
	}
	got := make(chan seen, 8)
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		for {
			req, body := readRequest(t, br)
			if req == nil {
				return
			}
			var b strings.Builder
			b.WriteString(req.Method + " " + req.RequestURI + " " + req.Host)
			if len(req.TransferEncoding) > 0 {
				b.WriteString(" te=" + strings.Join(req.TransferEncoding, ","))
			}
			if v := req.Header.Get("Content-Length"); v != "" {
				b.WriteString(" cl=" + v)
			}
			for _, k := range []string{"Connection", "X-A"} {
				if v := req.Header.Get(k); v != "" {
					b.WriteString(" " + k + "=" + v)
				}
			}
			got <- seen{b.String(), body}
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		}
	})
	for _, tc := range []struct {
		name string
		req  *http.Header
		body string
		want seen
	}{
		{"GET", get("/x?y", "X-A", "1", "host", "ignored"), "", seen{"GET /x?y up.example X-A=1", ""}},
		{"POST no body", header(":method", "POST", ":authority", "a", ":path", "/"), "", seen{"POST / a cl=0", ""}},
		{"POST length", header(":method", "POST", ":authority", "a", ":path", "/", "content-length", "3"), "abc", seen{"POST / a cl=3", "abc"}},
		{"POST chunked", header(":method", "POST", ":authority", "a", ":path", "/", "transfer-encoding", "gzip"), "abc", seen{"POST / a te=chunked", "abc"}},
		{"host field", header(":method", "GET", ":path", "/", "host", "h.example"), "", seen{"GET / h.example", ""}},
		{"OPTIONS *", header(":method", "OPTIONS", ":authority", "a", ":path", "*"), "", seen{"OPTIONS * a", ""}},
	} {
		roundTrip(t, cc, tc.req, tc.body)
		if g := <-got; g != tc.want {
			t.Errorf("%s: upstream saw %+v, want %+v", tc.name, g, tc.want)
		}
	}
	// A refused head writes nothing: the stream can still be used.
	s, err := cc.NewStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*http.Header{
		header(":method", "GET", ":authority", "a"), // no :path
		header(":method", "G T", ":authority", "a", ":path", "/"),
		header(":method", "GET", ":authority", "a", ":path", "/a b"),
		header(":method", "GET", ":authority", "a\r\nx: y", ":path", "/"),
		header(":method", "GET", ":authority", "a", ":path", "/", "x", "a\nb"),
		header(":method", "GET", ":authority", "a", ":path", "/", "bad name", "b"),
		header(":method", "GET", ":authority", "a", ":path", "/", "content-length", "x"),
		header(":method", "GET", ":authority", "a", ":path", "/", "upgrade", "x", "connection", "upgrade", "content-length", "3"),
	} {
		if err := s.WriteHeader(bad, true); err != ErrInvalidHeader {
			t.Errorf("WriteHeader(%q) = %v, want ErrInvalidHeader", bad.String(), err)
		}
	}
	if err := s.WriteHeader(get("/after"), true); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g.head != "GET /after up.example" {
		t.Errorf("upstream saw %+v", g)
	}
	if _, err := s.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	readAll(s)
}

func TestClientExpectContinue(t *testing.T) {
	order := make(chan string, 4)
	opts := testOptions()
	opts.ExpectContinueTimeout = time.Minute
	cc := upstream(t, opts, func(conn net.Conn, br *bufio.Reader) {
		req, err := stdhttp.ReadRequest(br)
		if err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		// Nothing of the body before 100.
		conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := br.Peek(1); err == nil {
			order <- "body before 100"
		}
		conn.SetReadDeadline(time.Time{})
		io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n")
		order <- "sent 100"
		body, _ := io.ReadAll(req.Body)
		order <- "body " + string(body)
		io.WriteString(conn, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
	})
	s, _ := cc.NewStream(context.Background())
	if err := s.WriteHeader(header(":method", "PUT", ":authority", "a", ":path", "/", "expect", "100-continue", "content-length", "4"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("data")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	s.End()
	h, err := s.ReadHeader()
	if err != nil || h.Value(":status") != "201" {
		t.Fatalf("ReadHeader = %v, %v", h, err)
	}
	readAll(s)
	if a, b := <-order, <-order; a != "sent 100" || b != "body data" {
		t.Fatalf("upstream saw %q, %q", a, b)
	}
	if !cc.Available() {
		t.Fatal("connection not reusable")
	}
}

// TestClientExpectContinueConcurrent has ReadHeader waiting on one
// goroutine while the body waits for 100 on another.
func TestClientExpectContinueConcurrent(t *testing.T) {
	opts := testOptions()
	opts.ExpectContinueTimeout = time.Minute
	cc := upstream(t, opts, func(conn net.Conn, br *bufio.Reader) {
		req, _ := stdhttp.ReadRequest(br)
		time.Sleep(20 * time.Millisecond)
		io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n")
		body, _ := io.ReadAll(req.Body)
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: "+itoa(len(body))+"\r\n\r\n"+string(body))
	})
	s, _ := cc.NewStream(context.Background())
	s.WriteHeader(header(":method", "POST", ":authority", "a", ":path", "/", "expect", "100-continue"), false)
	done := make(chan string, 1)
	go func() {
		h, err := s.ReadHeader()
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := readAll(s)
		done <- h.Value(":status") + " " + b
	}()
	time.Sleep(5 * time.Millisecond)
	s.Write([]byte("chunk"))
	s.End()
	if got := <-done; got != "200 chunk" {
		t.Fatalf("got %q", got)
	}
}

func TestClientExpectRejected(t *testing.T) {
	opts := testOptions()
	opts.ExpectContinueTimeout = time.Minute
	cc := upstream(t, opts, func(conn net.Conn, br *bufio.Reader) {
		stdhttp.ReadRequest(br)
		io.WriteString(conn, "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 4\r\n\r\nnope")
		io.Copy(io.Discard, br)
	})
	s, _ := cc.NewStream(context.Background())
	s.WriteHeader(header(":method", "PUT", ":authority", "a", ":path", "/", "expect", "100-continue", "content-length", "4"), false)
	if _, err := s.Write([]byte("data")); err != ErrExpectationFailed {
		t.Fatalf("Write = %v, want ErrExpectationFailed", err)
	}
	if err := s.End(); err != ErrExpectationFailed {
		t.Fatalf("End = %v, want ErrExpectationFailed", err)
	}
	h, err := s.ReadHeader()
	if err != nil || h.Value(":status") != "417" {
		t.Fatalf("ReadHeader = %v, %v", h, err)
	}
	if b, _ := readAll(s); b != "nope" {
		t.Fatalf("body %q", b)
	}
	if cc.Available() {
		t.Fatal("connection reusable with a request body not sent")
	}
}

func TestClientExpectTimeout(t *testing.T) {
	opts := testOptions()
	opts.ExpectContinueTimeout = 20 * time.Millisecond
	cc := upstream(t, opts, func(conn net.Conn, br *bufio.Reader) {
		// An upstream that ignores expect: it just waits for the body.
		req, body := readRequest(t, br)
		if req != nil {
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: "+itoa(len(body))+"\r\n\r\n"+body)
		}
	})
	_, body, _ := roundTrip(t, cc, header(":method", "PUT", ":authority", "a", ":path", "/", "expect", "100-continue", "content-length", "4"), "data")
	if body != "data" {
		t.Fatalf("body %q", body)
	}
}

func TestClientReset(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		readRequest(t, br)
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		io.Copy(io.Discard, br)
	})
	s, _ := cc.NewStream(context.Background())
	s.WriteHeader(get("/"), true)
	if _, err := s.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	io.ReadFull(s, buf)
	readErr := make(chan error, 1)
	go func() { _, err := s.Read(buf); readErr <- err }()
	time.Sleep(10 * time.Millisecond)
	s.Reset(http.ResetCancel)
	if err := <-readErr; err == nil {
		t.Fatal("Read after Reset succeeded")
	}
	if cc.Available() {
		t.Fatal("reset connection available")
	}
	if _, err := cc.NewStream(context.Background()); !errors.Is(err, ErrConnClosed) {
		t.Fatalf("NewStream = %v, want ErrConnClosed", err)
	}
}

func TestClientContextCanceled(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		readRequest(t, br)
		io.Copy(io.Discard, br) // never answers
	})
	ctx, cancel := context.WithCancel(context.Background())
	s, err := cc.NewStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.WriteHeader(get("/"), true)
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	if _, err := s.ReadHeader(); err == nil {
		t.Fatal("ReadHeader succeeded after the context was canceled")
	}
	if cc.Available() {
		t.Fatal("connection available after a canceled stream")
	}
}

// TestClientContextAfterStream checks that a context canceled after its
// stream ended does not touch the connection or the next stream.
func TestClientContextAfterStream(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		for {
			if req, _ := readRequest(t, br); req == nil {
				return
			}
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := cc.NewStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s.WriteHeader(get("/"), true)
		s.ReadHeader()
		readAll(s)
		cancel()
	}
	time.Sleep(10 * time.Millisecond)
	if _, body, _ := roundTrip(t, cc, get("/"), ""); body != "ok" || !cc.Available() {
		t.Fatalf("body %q, available %v", body, cc.Available())
	}
}

func TestClientBusy(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) })
	if _, err := cc.NewStream(context.Background()); err != nil {
		t.Fatal(err)
	}
	if cc.Available() {
		t.Fatal("available with a stream in flight")
	}
	if _, err := cc.NewStream(context.Background()); err != ErrConnBusy {
		t.Fatalf("second NewStream = %v, want ErrConnBusy", err)
	}
}

func TestClientUpgradeTunnel(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		req, _ := readRequest(t, br)
		if req == nil || req.Header.Get("Upgrade") != "echo" || !strings.EqualFold(req.Header.Get("Connection"), "upgrade") {
			t.Errorf("upstream got %v", req)
			return
		}
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhi ")
		io.Copy(conn, br)
	})
	s, _ := cc.NewStream(context.Background())
	if err := s.WriteHeader(get("/ws", "upgrade", "echo", "connection", "upgrade"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("early")); err != ErrNotTunnel {
		t.Fatalf("Write before 101 = %v, want ErrNotTunnel", err)
	}
	h, err := s.ReadHeader()
	if err != nil || h.Value(":status") != "101" {
		t.Fatalf("ReadHeader = %v, %v", h, err)
	}
	if _, err := s.Write([]byte("there")); err != nil {
		t.Fatal(err)
	}
	if err := s.End(); err != nil { // half-close: the echo ends
		t.Fatal(err)
	}
	if got, err := readAll(s); got != "hi there" || err != nil {
		t.Fatalf("tunnel read %q, %v", got, err)
	}
	if cc.Available() {
		t.Fatal("tunnel connection available")
	}
}

func TestClientConnectTunnel(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		line, _ := br.ReadString('\n')
		if line != "CONNECT up.example:443 HTTP/1.1\r\n" {
			t.Errorf("request line %q", line)
		}
		for l, _ := br.ReadString('\n'); l != "\r\n" && l != ""; l, _ = br.ReadString('\n') {
		}
		io.WriteString(conn, "HTTP/1.1 200 Connection Established\r\n\r\n")
		io.Copy(conn, br)
	})
	s, _ := cc.NewStream(context.Background())
	if err := s.WriteHeader(header(":method", "CONNECT", ":authority", "up.example:443"), false); err != nil {
		t.Fatal(err)
	}
	h, err := s.ReadHeader()
	if err != nil || h.Value(":status") != "200" {
		t.Fatalf("ReadHeader = %v, %v", h, err)
	}
	s.Write([]byte("raw bytes"))
	s.End()
	if got, _ := readAll(s); got != "raw bytes" {
		t.Fatalf("tunnel read %q", got)
	}
}

// responseCases are malformed or unframeable responses; they also seed
// FuzzClient.
var responseCases = []struct {
	name, raw string
	kind      Kind
}{
	{"garbage", "garbage\r\n\r\n", KindMalformed},
	{"bad version", "HTTP/1.x 200 OK\r\n\r\n", KindMalformed},
	{"HTTP/2", "HTTP/2.0 200 OK\r\n\r\n", KindVersion},
	{"short status", "HTTP/1.1 20 OK\r\n\r\n", KindMalformed},
	{"status 000", "HTTP/1.1 000 OK\r\n\r\n", KindMalformed},
	{"reason with a control", "HTTP/1.1 200 O\x01K\r\n\r\n", KindMalformed},
	{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", KindMalformed},
	{"obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", KindMalformed},
	{"CL and TE", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", KindFraming},
	{"conflicting CL", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", KindFraming},
	{"TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", KindFraming},
	{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", KindMalformed},
	{"truncated chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", KindTruncated},
	{"truncated length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", KindTruncated},
	{"truncated head", "HTTP/1.1 200 OK\r\nContent-Le", KindTruncated},
	{"nothing", "", KindNoResponse},
	{"unexpected 101", "HTTP/1.1 101 Switching Protocols\r\n\r\n", KindMalformed},
	{"too many fields", "HTTP/1.1 200 OK\r\n" + strings.Repeat("A: b\r\n", 101) + "\r\n", KindTooManyHeaders},
	{"head too large", "HTTP/1.1 200 OK\r\nA: " + strings.Repeat("b", 61<<10) + "\r\n\r\n", KindHeadersTooLarge},
}

func TestClientBadResponses(t *testing.T) {
	for _, tc := range responseCases {
		t.Run(tc.name, func(t *testing.T) {
			cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
				readRequest(t, br)
				io.WriteString(conn, tc.raw)
			})
			s, _ := cc.NewStream(context.Background())
			s.WriteHeader(get("/"), true)
			_, err := s.ReadHeader()
			if err == nil {
				_, err = readAll(s)
			}
			var e *Error
			if !errors.As(err, &e) || e.Kind != tc.kind || !e.Upstream || e.Status != 0 {
				t.Fatalf("error %#v, want an upstream %v *Error", err, tc.kind)
			}
			if cc.Available() {
				t.Fatal("connection available after a bad response")
			}
			if tc.kind == KindNoResponse || tc.kind == KindTruncated {
				if e.Flags() != http.FlagUpstreamConnectionTermination {
					t.Errorf("flags %v, want UC", e.Flags())
				}
			}
		})
	}
}

func TestClientShortBody(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) })
	s, _ := cc.NewStream(context.Background())
	s.WriteHeader(header(":method", "POST", ":authority", "a", ":path", "/", "content-length", "10"), false)
	s.Write([]byte("short"))
	if err := s.End(); err != ErrContentLength {
		t.Fatalf("End = %v, want ErrContentLength", err)
	}
	if _, err := s.ReadHeader(); err == nil {
		t.Fatal("ReadHeader succeeded on a request that cannot complete")
	}
	if cc.Available() {
		t.Fatal("connection available")
	}
}
