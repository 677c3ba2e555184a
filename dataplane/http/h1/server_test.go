package h1

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	stdhttp "net/http"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// echo answers 200 with the request body (after reading it to its end) and
// an x-request header listing the request's fields, and an x-trailers one
// listing its trailers. If the body fails it returns without answering.
var echo = handlerFunc(func(s http.ServerStream) {
	body, err := readAll(s)
	if err != nil {
		return
	}
	req := strings.ReplaceAll(strings.TrimSuffix(s.Header().String(), "\n"), "\n", "|")
	tr := strings.ReplaceAll(strings.TrimSuffix(s.Trailers().String(), "\n"), "\n", "|")
	h := header(":status", "200", "x-request", req, "x-trailers", tr, "content-length", itoa(len(body)))
	if err := s.WriteHeader(h, body == ""); err != nil {
		return
	}
	if body != "" {
		s.Write([]byte(body))
		s.End()
	}
})

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestServerKeepAlive(t *testing.T) {
	s := startServer(t, testOptions(), echo)
	for i := range 3 {
		s.send("GET /a/b?c=d HTTP/1.1\r\nHost: Example.COM:8080\r\nX-Thing: one\r\nx-thing:  two \r\nAccept: */*\r\n\r\n")
		resp, body := s.response("GET")
		if resp.StatusCode != 200 || body != "" || resp.Close {
			t.Fatalf("request %d: status %d, body %q, close %v", i, resp.StatusCode, body, resp.Close)
		}
		want := ":method: GET|:scheme: http|:authority: Example.COM:8080|:path: /a/b?c=d|x-thing: one|x-thing: two|accept: */*"
		if got := resp.Header.Get("x-request"); got != want {
			t.Fatalf("request %d: handler saw\n%s\nwant\n%s", i, got, want)
		}
	}
	s.client.Close()
	if err := s.result(); err != nil {
		t.Fatalf("Serve = %v, want nil", err)
	}
}

func TestServerPipelining(t *testing.T) {
	s := startServer(t, testOptions(), echo)
	s.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" +
		"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
		"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"GET /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	for i, want := range []struct{ path, body string }{{"/1", ""}, {"/2", "hello"}, {"/3", "abc"}, {"/4", ""}} {
		resp, body := s.response("GET")
		if !strings.Contains(resp.Header.Get("x-request")+"|", ":path: "+want.path+"|") || body != want.body {
			t.Fatalf("response %d: %q, body %q; want path %s, body %q", i, resp.Header.Get("x-request"), body, want.path, want.body)
		}
		if resp.Close != (i == 3) {
			t.Fatalf("response %d: close = %v", i, resp.Close)
		}
	}
	if !s.closed() {
		t.Fatal("connection not closed after connection: close")
	}
}

func TestServerChunkedRequestWithTrailers(t *testing.T) {
	s := startServer(t, trailerOptions(), echo)
	s.send("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n" +
		"5;ext=1\r\nhello\r\n1 ; a ; b=\"c\"\r\n \r\n5\r\nworld\r\n0\r\nX-Sum: abc\r\nX-Other: d\r\n\r\n")
	resp, body := s.response("POST")
	if body != "hello world" {
		t.Fatalf("body %q", body)
	}
	if got := resp.Header.Get("x-trailers"); got != "x-sum: abc|x-other: d" {
		t.Fatalf("trailers %q", got)
	}
	if strings.Contains(resp.Header.Get("x-request"), "transfer-encoding") {
		t.Fatalf("transfer-encoding passed to the handler: %q", resp.Header.Get("x-request"))
	}
}

// rawResponse reads raw bytes from the client end until it has n of them
// or the connection closes.
func (s *server) raw(n int) string {
	s.t.Helper()
	s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	k, err := io.ReadFull(s.br, b)
	if err != nil && k < n && err != io.ErrUnexpectedEOF && err != io.EOF {
		s.t.Fatalf("read: %v", err)
	}
	return string(b[:k])
}

func TestServerChunkedResponseWithTrailers(t *testing.T) {
	s := startServer(t, trailerOptions(), handlerFunc(func(st http.ServerStream) {
		st.WriteHeader(header(":status", "200", "Trailer", "x-checksum"), false)
		st.Write([]byte("hello "))
		st.Write([]byte("world"))
		st.Write(nil) // flush only: no empty chunk
		st.EndWithTrailers(header("x-checksum", "42"))
	}))
	s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	want := "HTTP/1.1 200 OK\r\nTrailer: x-checksum\r\ntransfer-encoding: chunked\r\n\r\n" +
		"6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: 42\r\n\r\n"
	if got := s.raw(len(want)); got != want {
		t.Fatalf("response\n%q\nwant\n%q", got, want)
	}
	// The connection goes on.
	s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	s.response("GET")
}

func TestServerExpectContinue(t *testing.T) {
	s := startServer(t, testOptions(), echo)
	s.send("PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	const cont = "HTTP/1.1 100 Continue\r\n\r\n"
	if got := s.raw(len(cont)); got != cont {
		t.Fatalf("got %q, want 100 Continue first", got)
	}
	s.send("data")
	resp, body := s.response("PUT")
	if resp.StatusCode != 200 || body != "data" || resp.Close {
		t.Fatalf("status %d, body %q, close %v", resp.StatusCode, body, resp.Close)
	}
}

func TestServerExpectAnsweredWithoutBody(t *testing.T) {
	for _, status := range []string{"417", "401", "413"} {
		t.Run(status, func(t *testing.T) {
			s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
				respond(st, status, "")
			}))
			s.send("PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
			// The first thing to arrive is the final response: no 100.
			resp, _ := s.response("PUT")
			if itoa(resp.StatusCode) != status || !resp.Close {
				t.Fatalf("status %d, close %v; want %s with connection: close", resp.StatusCode, resp.Close, status)
			}
			if !s.closed() {
				t.Fatal("connection left open with a request body possibly on its way")
			}
			if err := s.result(); err != nil {
				t.Fatalf("Serve = %v", err)
			}
		})
	}
}

func TestServerHTTP10(t *testing.T) {
	t.Run("close", func(t *testing.T) {
		s := startServer(t, testOptions(), echo)
		s.send("GET / HTTP/1.0\r\n\r\n")
		resp, _ := s.response("GET")
		if resp.StatusCode != 200 || !resp.Close {
			t.Fatalf("status %d, close %v", resp.StatusCode, resp.Close)
		}
		if got := resp.Header.Get("x-request"); got != ":method: GET|:scheme: http|:path: /" {
			t.Fatalf("handler saw %q", got)
		}
		if !s.closed() {
			t.Fatal("HTTP/1.0 connection without keep-alive left open")
		}
	})
	t.Run("keep-alive", func(t *testing.T) {
		s := startServer(t, testOptions(), echo)
		for range 2 {
			s.send("GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
			resp, _ := s.response("GET")
			if resp.StatusCode != 200 || resp.Close || resp.Header.Get("Connection") != "keep-alive" {
				t.Fatalf("status %d, close %v, connection %q", resp.StatusCode, resp.Close, resp.Header.Get("Connection"))
			}
		}
	})
	t.Run("close-delimited", func(t *testing.T) {
		s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
			st.WriteHeader(header(":status", "200"), false)
			st.Write([]byte("until "))
			st.Write([]byte("close"))
			st.End()
		}))
		s.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		want := "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close"
		if got := s.raw(len(want) + 1); got != want {
			t.Fatalf("response %q, want %q then the close", got, want)
		}
	})
	t.Run("no 1xx", func(t *testing.T) {
		s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
			if err := st.WriteHeader(header(":status", "103", "link", "</a>"), false); err != nil {
				t.Errorf("103: %v", err)
			}
			respond(st, "204", "")
		}))
		s.send("GET / HTTP/1.0\r\n\r\n")
		if resp, _ := s.response("GET"); resp.StatusCode != 204 {
			t.Fatalf("status %d, want 204 first", resp.StatusCode)
		}
	})
}

func TestServerHEAD(t *testing.T) {
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		st.WriteHeader(header(":status", "200", "content-length", "64"), false)
		if n, err := st.Write(body64); n != 64 || err != nil {
			t.Errorf("Write on HEAD = %d, %v", n, err)
		}
		st.End()
	}))
	s.send("HEAD / HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
	want := "HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n"
	if got := s.raw(2 * len(want)); got != want+want {
		t.Fatalf("responses %q, want twice %q", got, want)
	}
}

func TestServer204And304(t *testing.T) {
	for _, tc := range []struct{ status, want string }{
		{"204", "HTTP/1.1 204 No Content\r\nx: y\r\n\r\n"},
		{"304", "HTTP/1.1 304 Not Modified\r\nx: y\r\ncontent-length: 10\r\n\r\n"},
	} {
		t.Run(tc.status, func(t *testing.T) {
			s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
				st.WriteHeader(header(":status", tc.status, "content-length", "10", "x", "y"), false)
				if _, err := st.Write([]byte("0123456789")); err != ErrBodyNotAllowed {
					t.Errorf("Write = %v, want ErrBodyNotAllowed", err)
				}
				st.End()
			}))
			s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
			if got := s.raw(2 * len(tc.want)); got != tc.want+tc.want {
				t.Fatalf("responses %q, want twice %q", got, tc.want)
			}
		})
	}
}

// tunnelEcho answers an upgrade (or CONNECT) with status and then echoes raw
// bytes until the client closes its side.
func tunnelEcho(status string) handlerFunc {
	return func(st http.ServerStream) {
		if err := st.WriteHeader(header(":status", status, "upgrade", "echo"), false); err != nil {
			st.Reset(http.ResetInternalError)
			return
		}
		buf := make([]byte, 100)
		for {
			n, err := st.Read(buf)
			if n > 0 {
				st.Write(buf[:n])
			}
			if err != nil {
				st.End()
				return
			}
		}
	}
}

func TestServerUpgradeTunnel(t *testing.T) {
	s := startServer(t, testOptions(), tunnelEcho("101"))
	s.send("GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nearly")
	want := "HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nearly"
	if got := s.raw(len(want)); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	for _, msg := range []string{"ping", "GET / HTTP/1.1\r\n\r\n", "\x00\xff binary"} {
		s.send(msg)
		if got := s.raw(len(msg)); got != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	s.client.CloseWrite()
	if !s.closed() {
		t.Fatal("tunnel not closed after the client's close")
	}
	if err := s.result(); err != nil {
		t.Fatalf("Serve = %v", err)
	}
}

func TestServerUpgradeRefused(t *testing.T) {
	// 101 needs an upgrade request; the handler falls back to a reset.
	s := startServer(t, testOptions(), tunnelEcho("101"))
	s.send("GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\n\r\n") // no "connection: upgrade"
	if !s.closed() {
		t.Fatal("connection open after a reset")
	}
}

func TestServerConnectTunnel(t *testing.T) {
	var seen string
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		seen = st.Header().String()
		tunnelEcho("200")(st)
	}))
	s.send("CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n\r\n")
	want := "HTTP/1.1 200 OK\r\nupgrade: echo\r\n\r\n"
	if got := s.raw(len(want)); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	const hello = "\x16\x03\x01 tls bytes"
	s.send(hello)
	if got := s.raw(len(hello)); got != hello {
		t.Fatalf("echo %q", got)
	}
	s.client.CloseWrite()
	if !s.closed() {
		t.Fatal("tunnel not closed")
	}
	s.result()
	if seen != ":method: CONNECT\n:authority: upstream.example:443\n" {
		t.Fatalf("handler saw %q", seen)
	}
}

func TestServerAbsoluteForm(t *testing.T) {
	s := startServer(t, testOptions(), echo)
	for _, tc := range []struct{ target, host, scheme, authority, path string }{
		{"http://example.com:8080/a?b", "other", "http", "example.com:8080", "/a?b"},
		{"HTTP://example.com", "", "http", "example.com", "/"},
		{"https://example.com?q=1", "x", "https", "example.com", "/?q=1"}, // the URL's scheme, as Envoy takes it
		{"*", "a", "http", "a", "*"},
	} {
		method := "GET"
		if tc.target == "*" {
			method = "OPTIONS"
		}
		req := method + " " + tc.target + " HTTP/1.1\r\n"
		if tc.host != "" {
			req += "Host: " + tc.host + "\r\n"
		}
		s.send(req + "\r\n")
		resp, _ := s.response(method)
		want := ":method: " + method + "|:scheme: " + tc.scheme + "|:authority: " + tc.authority + "|:path: " + tc.path
		if got := resp.Header.Get("x-request"); got != want {
			t.Errorf("%s: handler saw %q, want %q", tc.target, got, want)
		}
	}
}

func TestServerSchemeTLS(t *testing.T) {
	client, conn := net.Pipe()
	c := NewServerConn(testOptions())
	done := make(chan error, 1)
	got := make(chan string, 1)
	go func() {
		done <- c.Serve(context.Background(), tlsLike{conn}, handlerFunc(func(st http.ServerStream) {
			got <- st.Header().Scheme()
			respond(st, "200", "")
		}))
	}()
	go io.WriteString(client, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if scheme := <-got; scheme != "https" {
		t.Fatalf(":scheme = %q on a TLS conn", scheme)
	}
	client.Close()
	<-done
}

// tlsLike is a conn with a ConnectionState method, as *tls.Conn has.
type tlsLike struct{ net.Conn }

func (tlsLike) ConnectionState() (cs tls.ConnectionState) { return cs }

func TestServerDrain(t *testing.T) {
	t.Run("in flight", func(t *testing.T) {
		var s *server
		s = startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
			s.c.Drain()
			respond(st, "200", "ok")
		}))
		s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, body := s.response("GET")
		if !resp.Close || body != "ok" {
			t.Fatalf("close %v, body %q; want connection: close", resp.Close, body)
		}
		if !s.closed() {
			t.Fatal("drained connection left open")
		}
		if err := s.result(); err != nil {
			t.Fatalf("Serve = %v", err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		s := startServer(t, testOptions(), echo)
		s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		s.response("GET")
		s.c.Drain()
		if !s.closed() {
			t.Fatal("idle connection not closed by Drain")
		}
		if err := s.result(); err != nil {
			t.Fatalf("Serve = %v", err)
		}
	})
	t.Run("discouraged idle", func(t *testing.T) {
		// Envoy's drain: the idle connection stays for its next request,
		// whose response says connection: close; then it closes.
		s := startServer(t, testOptions(), echo)
		s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, _ := s.response("GET"); resp.Close {
			t.Fatal("connection: close before the drain")
		}
		s.c.Discourage()
		time.Sleep(20 * time.Millisecond) // (a closing connection would be closed by now)
		s.send("GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, _ := s.response("GET"); !resp.Close || resp.StatusCode != 200 {
			t.Fatalf("the request after Discourage: status %d, close %v; want 200 with connection: close", resp.StatusCode, resp.Close)
		}
		if !s.closed() {
			t.Fatal("connection left open after its connection: close response")
		}
		if err := s.result(); err != nil {
			t.Fatalf("Serve = %v", err)
		}
	})
	t.Run("discouraged then drained", func(t *testing.T) {
		s := startServer(t, testOptions(), echo)
		s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		s.response("GET")
		s.c.Discourage()
		s.c.Drain()
		if !s.closed() {
			t.Fatal("idle connection not closed by Drain after Discourage")
		}
		if err := s.result(); err != nil {
			t.Fatalf("Serve = %v", err)
		}
	})
}

func TestServerClientGoneCancelsContext(t *testing.T) {
	canceled := make(chan error, 1)
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		select {
		case <-st.Context().Done():
			canceled <- context.Cause(st.Context())
		case <-time.After(10 * time.Second):
			canceled <- nil
		}
	}))
	s.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	time.Sleep(10 * time.Millisecond)
	s.client.Close()
	if err := <-canceled; err == nil {
		t.Fatal("context not canceled when the client went away")
	}
	if err := s.result(); err != nil {
		t.Fatalf("Serve = %v", err)
	}
}

// TestServerBackgroundReadDelayed: exchanges that end within bgReadDelay
// start no background read (the connection reads the next request itself);
// a slow one does, and the client going away is noticed then, as in
// TestServerClientGoneCancelsContext.
func TestServerBackgroundReadDelayed(t *testing.T) {
	slow := make(chan struct{})
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		if path, _ := st.Header().Get(":path"); path == "/slow" {
			<-slow
		}
		respond(st, "200", "")
	}))
	started := func() bool {
		s.c.bgMu.Lock()
		defer s.c.bgMu.Unlock()
		return s.c.bgStart != nil
	}
	for range 5 {
		s.send("GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, _ := s.response("GET"); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if started() {
		t.Error("fast exchanges started a background read")
	}
	// The connection's timer ticks while exchanges go on, and stops once a
	// whole period passed without one.
	ticking := func() bool {
		s.c.bgMu.Lock()
		defer s.c.bgMu.Unlock()
		return s.c.bgTicking
	}
	for deadline := time.Now().Add(10 * time.Second); ticking() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if ticking() {
		t.Error("the background read's timer still ticks on a quiet connection")
	}
	s.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	deadline := time.Now().Add(10 * time.Second)
	for !started() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !started() {
		t.Fatal("no background read while the handler was slow")
	}
	close(slow)
	if resp, _ := s.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	s.send("GET /fast HTTP/1.1\r\nHost: a\r\n\r\n") // read by the background read
	if resp, _ := s.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestServerBodyTruncated(t *testing.T) {
	readErr := make(chan error, 1)
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		_, err := readAll(st)
		readErr <- err
	}))
	s.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf")
	time.Sleep(10 * time.Millisecond)
	s.client.CloseWrite()
	var e *Error
	if err := <-readErr; !errors.As(err, &e) || e.Kind != KindTruncated {
		t.Fatalf("Read = %v, want a KindTruncated *Error", err)
	}
	if err := s.result(); !errors.As(err, &e) || e.Kind != KindTruncated || e.Flags() != http.FlagDownstreamConnectionTermination {
		t.Fatalf("Serve = %v, want a KindTruncated *Error (DC)", err)
	}
}

func TestServerUnreadBody(t *testing.T) {
	answer := handlerFunc(func(st http.ServerStream) { respond(st, "200", "") })
	t.Run("buffered", func(t *testing.T) {
		s := startServer(t, testOptions(), answer)
		s.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
			"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		for range 2 {
			if resp, _ := s.response("GET"); resp.StatusCode != 200 || resp.Close {
				t.Fatalf("status %d, close %v", resp.StatusCode, resp.Close)
			}
		}
	})
	t.Run("still coming", func(t *testing.T) {
		s := startServer(t, testOptions(), answer)
		s.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nhello")
		if resp, _ := s.response("POST"); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if !s.closed() {
			t.Fatal("connection left open with an unread body")
		}
	})
	t.Run("chunked", func(t *testing.T) {
		s := startServer(t, testOptions(), answer)
		s.send("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		s.response("POST")
		if !s.closed() {
			t.Fatal("connection left open with an unread chunked body")
		}
	})
}

func TestServerHandlerWithoutResponse(t *testing.T) {
	for name, h := range map[string]handlerFunc{
		"nothing": func(st http.ServerStream) {},
		"reset":   func(st http.ServerStream) { st.Reset(http.ResetCancel) },
		"no end": func(st http.ServerStream) {
			st.WriteHeader(header(":status", "200"), false)
			st.Write([]byte("partial"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := startServer(t, testOptions(), h)
			s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
			s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.ReadAll(s.br) // whatever was written, then the close
			if err := s.result(); err != nil {
				t.Fatalf("Serve = %v", err)
			}
		})
	}
}

func TestServerInvalidResponseHeader(t *testing.T) {
	errs := make(chan error, 8)
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		for _, h := range []*http.Header{
			header(":status", "200", "x-evil", "a\r\nset-cookie: b"),
			header(":status", "200", "bad name", "v"),
			header(":status", "20"),
			header("x", "no status"),
			header(":status", "200", "content-length", "-1"),
			header(":status", "200", "content-length", "1", "content-length", "2"),
			header(":status", "101"), // not an upgrade request
		} {
			errs <- st.WriteHeader(h, true)
		}
		respond(st, "200", "fine")
	}))
	s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if _, body := s.response("GET"); body != "fine" {
		t.Fatalf("body %q", body)
	}
	for i := range 7 {
		if err := <-errs; err != ErrInvalidHeader {
			t.Errorf("header %d: WriteHeader = %v, want ErrInvalidHeader", i, err)
		}
	}
}

func TestServerContentLengthMismatch(t *testing.T) {
	t.Run("short", func(t *testing.T) {
		s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
			st.WriteHeader(header(":status", "200", "content-length", "10"), false)
			st.Write([]byte("12345"))
			if err := st.End(); err != ErrContentLength {
				t.Errorf("End = %v, want ErrContentLength", err)
			}
		}))
		s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := stdhttp.ReadResponse(s.br, nil)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
		}
		if err != io.ErrUnexpectedEOF {
			t.Fatalf("client read %v, want a truncated body", err)
		}
	})
	t.Run("long", func(t *testing.T) {
		s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
			st.WriteHeader(header(":status", "200", "content-length", "3"), false)
			if n, err := st.Write([]byte("12345")); n != 3 || err != ErrContentLength {
				t.Errorf("Write = %d, %v; want 3, ErrContentLength", n, err)
			}
			st.End()
		}))
		s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if _, body := s.response("GET"); body != "123" {
			t.Fatalf("body %q", body)
		}
		if !s.closed() {
			t.Fatal("connection left open after a wrong body")
		}
	})
}

// TestServerNetHTTPClient runs net/http's client (another implementation)
// against the server codec behind a listener.
func TestServerNetHTTPClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan struct{})
	go func() {
		defer close(serving)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go NewServerConn(testOptions()).Serve(context.Background(), conn, echo)
		}
	}()
	tr := &stdhttp.Transport{}
	defer func() { ln.Close(); <-serving; tr.CloseIdleConnections() }()
	cl := &stdhttp.Client{Transport: tr}
	base := "http://" + ln.Addr().String()
	for i := range 5 {
		resp, err := cl.Post(base+"/p", "text/plain", io.NopCloser(strings.NewReader(strings.Repeat("z", i*3000))))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) != i*3000 {
			t.Fatalf("post %d: status %d, %d bytes", i, resp.StatusCode, len(b))
		}
	}
	resp, err := cl.Get(base + "/g")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("x-request"), ":method: GET|:scheme: http|:authority: 127.0.0.1") {
		t.Fatalf("handler saw %q", resp.Header.Get("x-request"))
	}
}

func TestServerInformational(t *testing.T) {
	protos := make(chan string, 2)
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		protos <- st.Protocol()
		st.WriteHeader(header(":status", "103", "link", "</style.css>; rel=preload"), false)
		st.WriteHeader(header(":status", "100"), false) // the client expects it: sent
		body, _ := readAll(st)                          // no second 100
		st.WriteHeader(header(":status", "100"), false) // sent already: dropped
		respond(st, "200", body, "content-length", itoa(len(body)))
	}))
	s.send("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
	want := "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
	if got := s.raw(len(want)); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	s.send("hi")
	want = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"
	if got := s.raw(len(want)); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	s.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	if p1, p2 := <-protos, <-protos; p1 != "HTTP/1.1" || p2 != "HTTP/1.0" {
		t.Fatalf("Protocol = %q, %q", p1, p2)
	}
}

func TestServerLargeResponseHead(t *testing.T) {
	cookie := strings.Repeat("c", 10<<10) // larger than the write buffer
	s := startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
		respond(st, "200", "body", "set-cookie", cookie, "content-length", "4")
	}))
	s.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, body := s.response("GET")
	if resp.Header.Get("Set-Cookie") != cookie || body != "body" {
		t.Fatalf("cookie of %d bytes, body %q", len(resp.Header.Get("Set-Cookie")), body)
	}
}
