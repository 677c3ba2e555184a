package h1

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// Behaviours that follow Envoy's HTTP/1 codec (codec_impl.cc and Balsa)
// rather than what RFC 9112 would also allow.

// protoEcho answers 200 with the request's protocol in x-proto, and closes
// nothing itself.
var protoEcho = handlerFunc(func(s http.ServerStream) {
	readAll(s)
	respond(s, "200", "ok", "x-proto", s.Protocol(), "content-length", "2")
})

// Envoy takes any request version but HTTP/1.1 for HTTP/1.0 (which the
// connection manager refuses with 426 unless accept_http_10); its responses
// to HTTP/1.0 say HTTP/1.0 under accept_http_10.
func TestServerOtherVersionsAreHTTP10(t *testing.T) {
	for _, accept := range []bool{false, true} {
		for _, v := range []string{"HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "HTTP/3.0", "HTTP/0.9"} {
			t.Run(v, func(t *testing.T) {
				opts := testOptions()
				opts.AcceptHTTP10 = accept
				s := startServer(t, opts, protoEcho)
				s.send("GET / " + v + "\r\nHost: a\r\n\r\n")
				resp, body := s.response("GET")
				if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("x-proto") != "HTTP/1.0" {
					t.Fatalf("status %d, body %q, protocol %q; want 200, ok, HTTP/1.0", resp.StatusCode, body, resp.Header.Get("x-proto"))
				}
				want := "HTTP/1.1"
				if accept {
					want = "HTTP/1.0"
				}
				if resp.Proto != want {
					t.Errorf("status line version %s, want %s", resp.Proto, want)
				}
				if !s.closed() {
					t.Error("HTTP/1.0 connection without keep-alive left open")
				}
			})
		}
	}
}

// Envoy's shouldCloseConnection honours "proxy-connection: close".
func TestServerProxyConnectionClose(t *testing.T) {
	s := startServer(t, testOptions(), echo)
	s.send("GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: keep-alive, Close\r\n\r\n")
	resp, _ := s.response("GET")
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("status %d, close %v; want 200 and close", resp.StatusCode, resp.Close)
	}
	if !s.closed() {
		t.Fatal("connection open after proxy-connection: close")
	}
}

// With allow_custom_methods, any token is a method.
func TestServerAllowCustomMethods(t *testing.T) {
	opts := testOptions()
	opts.AllowCustomMethods = true
	s := startServer(t, opts, echo)
	for _, m := range []string{"FOO", "get"} {
		s.send(m + " / HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, _ := s.response(m)
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("x-request"), ":method: "+m+"|") {
			t.Fatalf("%s: status %d, request %q", m, resp.StatusCode, resp.Header.Get("x-request"))
		}
	}
}

// Envoy's parser decodes a chunked HTTP/1.0 request; the connection then
// closes (RFC 9112 section 6.1), keep-alive or not.
func TestServerChunkedHTTP10(t *testing.T) {
	s := startServer(t, testOptions(), echo)
	s.send("POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	resp, body := s.response("POST")
	if resp.StatusCode != 200 || body != "abc" {
		t.Fatalf("status %d, body %q", resp.StatusCode, body)
	}
	if !s.closed() {
		t.Fatal("connection open after a chunked HTTP/1.0 request")
	}
}

// An h2c upgrade is ignored as in Envoy's codec: upgrade, HTTP2-Settings and
// their connection options are removed.
func TestServerH2CUpgradeStripped(t *testing.T) {
	for _, tc := range []struct{ conn, want string }{
		{"Upgrade, HTTP2-Settings, keep-alive", "|connection: keep-alive|x: y"},
		{"upgrade,http2-settings", "|x: y"},
	} {
		s := startServer(t, testOptions(), echo)
		s.send("GET / HTTP/1.1\r\nHost: a\r\nConnection: " + tc.conn + "\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nX: y\r\n\r\n")
		resp, _ := s.response("GET")
		if got := resp.Header.Get("x-request"); resp.StatusCode != 200 || !strings.HasSuffix(got, ":path: /"+tc.want) {
			t.Fatalf("status %d, request %q; want fields %q", resp.StatusCode, got, tc.want)
		}
		if resp.Close {
			t.Fatal("connection: close")
		}
	}
}

// Without enable_trailers, the server drops request trailers and sends no
// response trailers, as Envoy does.
func TestServerTrailersDroppedByDefault(t *testing.T) {
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		body, _ := readAll(st)
		st.WriteHeader(header(":status", "200", "x-body", body, "x-trailers", st.Trailers().String()), false)
		st.Write([]byte("hi"))
		st.EndWithTrailers(header("x-checksum", "42"))
	}))
	s.send("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n")
	want := "HTTP/1.1 200 OK\r\nx-body: abc\r\nx-trailers: \r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
	if got := s.raw(len(want)); got != want {
		t.Fatalf("response\n%q\nwant\n%q", got, want)
	}
}

// Without enable_trailers, the client sends no request trailers and drops
// response trailers.
func TestClientTrailersDroppedByDefault(t *testing.T) {
	got := make(chan string, 1)
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		req, _ := readRequest(t, br)
		if req == nil {
			got <- "no request"
			return
		}
		got <- req.Trailer.Get("X-Sum")
		conn.Write([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Done: yes\r\n\r\n"))
	})
	s, err := cc.NewStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.WriteHeader(header(":method", "POST", ":authority", "a", ":path", "/"), false)
	s.Write([]byte("abc"))
	if err := s.EndWithTrailers(header("x-sum", "1")); err != nil {
		t.Fatal(err)
	}
	if tr := <-got; tr != "" {
		t.Errorf("upstream got request trailer %q", tr)
	}
	if _, err := s.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	if body, err := readAll(s); body != "hi" || err != nil {
		t.Fatalf("body %q, %v", body, err)
	}
	if s.Trailers().Len() != 0 {
		t.Fatalf("response trailers kept: %s", s.Trailers())
	}
}

// An absolute-form target's scheme is the request's :scheme, and an edge
// proxy (ValidateScheme) refuses an https URL over plaintext with 403, as
// Envoy's codec (handlePath) does.
func TestServerAbsoluteFormScheme(t *testing.T) {
	schemeEcho := handlerFunc(func(s http.ServerStream) {
		readAll(s)
		respond(s, "200", "ok", "x-scheme", s.Header().Value(http.Scheme), "content-length", "2")
	})
	for _, tc := range []struct {
		target   string
		validate bool
		status   int
		scheme   string
	}{
		{"http://a/x", false, 200, "http"},
		{"https://a/x", false, 200, "https"},
		{"HTTPS://a/x", false, 200, "https"},
		{"http://a/x", true, 200, "http"},
		{"https://a/x", true, 403, ""},
	} {
		opts := testOptions()
		opts.ValidateScheme = tc.validate
		s := startServer(t, opts, schemeEcho)
		s.send("GET " + tc.target + " HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, _ := s.response("GET")
		if resp.StatusCode != tc.status || resp.Header.Get("x-scheme") != tc.scheme {
			t.Errorf("%s (validate %v): %d, scheme %q; want %d, %q", tc.target, tc.validate, resp.StatusCode, resp.Header.Get("x-scheme"), tc.status, tc.scheme)
		}
	}
}
