package h2

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/skiffproxy/skiff/dataplane/http"
)

type handlerFunc func(s http.ServerStream)

func (f handlerFunc) ServeStream(s http.ServerStream) { f(s) }

// respond answers 200 with body and ends the stream.
func respond(s http.ServerStream, body string) {
	var h http.Header
	h.Add(http.Status, "200")
	if err := s.WriteHeader(&h, body == ""); err != nil {
		return
	}
	if body != "" {
		_, _ = s.Write([]byte(body))
		_ = s.End()
	}
}

func TestServerRequestAndResponse(t *testing.T) {
	got := make(chan string, 1)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		h := s.Header()
		body, err := io.ReadAll(s)
		if err != nil {
			t.Error(err)
			return
		}
		got <- h.Method() + " " + h.Scheme() + " " + h.Authority() + " " + h.Path() + " " + h.Value("x-a") + " " + string(body) + " " + s.Trailers().Value("x-t") + " " + s.Protocol()
		var rh http.Header
		rh.Add("x-before-status", "1") // pseudo-header fields go first on the wire anyway
		rh.Add(http.Status, "201")
		rh.Add("connection", "close") // dropped: connection-specific
		_ = s.WriteHeader(&rh, false)
		_, _ = s.Write([]byte("hello "))
		_, _ = s.Write([]byte("world"))
		var tr http.Header
		tr.Add("grpc-status", "0")
		_ = s.EndWithTrailers(&tr)
	}))
	p := dialPeer(t, ts.addr)
	p.headers(1, false, ":method", "POST", ":scheme", "https", ":path", "/x?y", "host", "example.com", "x-a", "A")
	p.data(1, false, []byte("req-"))
	p.data(1, false, []byte("body"))
	p.headers(1, true, "x-t", "T")
	hdr, body, trailers := p.readResponse(1)
	if want := "POST https example.com /x?y A req-body T HTTP/2"; <-got != want {
		t.Errorf("handler saw something else than %q", want)
	}
	if hdr[0].Name != ":status" || hdr[0].Value != "201" || len(hdr) != 2 || hdr[1].Name != "x-before-status" {
		t.Errorf("response header %v", hdr)
	}
	if string(body) != "hello world" {
		t.Errorf("body %q", body)
	}
	if len(trailers) != 1 || trailers[0].Name != "grpc-status" {
		t.Errorf("trailers %v", trailers)
	}
}

// TestServerSettings checks the server's SETTINGS and initial connection
// WINDOW_UPDATE carry the options.
func TestServerSettings(t *testing.T) {
	ts := startServer(t, ServerOptions{MaxConcurrentStreams: 7, InitialStreamWindowSize: 100000, InitialConnectionWindowSize: 200000, MaxHeaderListSize: 5000}, handlerFunc(func(s http.ServerStream) {}))
	nc := dialRawConn(t, ts.addr)
	p := newPeer(t, nc)
	_ = p.fr.WriteSettings()
	f := p.read().(*http2.SettingsFrame)
	for id, want := range map[http2.SettingID]uint32{http2.SettingMaxConcurrentStreams: 7, http2.SettingInitialWindowSize: 100000, http2.SettingMaxHeaderListSize: 5000} {
		if v, ok := f.Value(id); !ok || v != want {
			t.Errorf("%v = %d, %v; want %d", id, v, ok, want)
		}
	}
	wu := p.read().(*http2.WindowUpdateFrame)
	if wu.StreamID != 0 || wu.Increment != 200000-65535 {
		t.Errorf("connection WINDOW_UPDATE %d on %d", wu.Increment, wu.StreamID)
	}
}

func TestNewServerValidates(t *testing.T) {
	for _, o := range []ServerOptions{
		{InitialStreamWindowSize: 1000},
		{InitialConnectionWindowSize: 1 << 31},
		{MaxConcurrentStreams: 1 << 31},
		{MaxHeaderListSize: 10},
	} {
		if _, err := NewServer(o); err == nil {
			t.Errorf("NewServer(%+v) accepted", o)
		}
	}
}

// TestServerWindowUpdateOnConsumption checks that the server gives window back
// as the handler reads, not as data arrives, and enforces its windows.
func TestServerWindowUpdateOnConsumption(t *testing.T) {
	release := make(chan struct{})
	done := make(chan error, 1)
	ts := startServer(t, ServerOptions{InitialStreamWindowSize: MinWindowSize, InitialConnectionWindowSize: MinWindowSize}, handlerFunc(func(s http.ServerStream) {
		<-release
		n, err := io.Copy(io.Discard, s)
		if err == nil && n != MinWindowSize {
			err = errors.New("short body")
		}
		done <- err
		respond(s, "ok")
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	chunk := make([]byte, 16384)
	left := MinWindowSize
	for left > 0 {
		n := min(left, len(chunk))
		p.data(1, left == n, chunk[:n])
		left -= n
	}
	p.quiet(200 * time.Millisecond) // no WINDOW_UPDATE while the handler does not read
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var conn, stream uint32
	p.expect("response", func(f http2.Frame) bool {
		_, ok := f.(*http2.HeadersFrame)
		return ok
	}, func(f http2.Frame) bool {
		if wu, ok := f.(*http2.WindowUpdateFrame); ok {
			if wu.StreamID == 0 {
				conn += wu.Increment
			} else {
				stream += wu.Increment
			}
			return true
		}
		return false
	})
	if conn < MinWindowSize/2 {
		t.Errorf("connection window given back: %d", conn)
	}
	if stream != 0 {
		t.Errorf("stream WINDOW_UPDATE after END_STREAM: %d", stream)
	}
}

func TestServerConnectionWindowOverflowIsError(t *testing.T) {
	ts := startServer(t, ServerOptions{InitialStreamWindowSize: 1 << 20, InitialConnectionWindowSize: MinWindowSize}, handlerFunc(func(s http.ServerStream) {
		<-s.Context().Done()
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	chunk := make([]byte, 16384)
	for range 4 {
		p.data(1, false, chunk)
	}
	p.data(1, false, chunk[:16384*4-MinWindowSize+1])
	p.expectGoAway(http2.ErrCodeFlowControl)
}

func TestServerStreamWindowOverflowIsStreamError(t *testing.T) {
	ts := startServer(t, ServerOptions{InitialStreamWindowSize: MinWindowSize}, handlerFunc(func(s http.ServerStream) {
		<-s.Context().Done()
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	chunk := make([]byte, 16384)
	for range 4 {
		p.data(1, false, chunk)
	}
	p.data(1, false, chunk[:16384*4-MinWindowSize+1])
	p.expectRST(1, http2.ErrCodeFlowControl)
}

// TestServerRespectsPeerWindows checks the server never sends beyond the
// client's stream and connection windows, and that SETTINGS changes apply to
// open streams.
func TestServerRespectsPeerWindows(t *testing.T) {
	body := strings.Repeat("x", 100000)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) { respond(s, body) }))
	p := dialPeer(t, ts.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	p.request(1, true, "/")
	got := 0
	readData := func(want int) {
		t.Helper()
		for got < want {
			f := p.read()
			if d, ok := f.(*http2.DataFrame); ok {
				got += len(d.Data())
			}
		}
		if got != want {
			t.Fatalf("got %d bytes, want %d", got, want)
		}
	}
	readData(10)
	p.quiet(100 * time.Millisecond)
	_ = p.fr.WriteWindowUpdate(1, 30)
	readData(40)
	p.quiet(100 * time.Millisecond)
	// A larger initial window applies to the open stream: +200000-10.
	_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 200000})
	// Now the connection window (65535) is the limit.
	readData(MinWindowSize)
	p.quiet(100 * time.Millisecond)
	_ = p.fr.WriteWindowUpdate(0, 1<<20)
	readData(len(body))
}

func TestServerMaxConcurrentStreams(t *testing.T) {
	release := make(chan struct{})
	ts := startServer(t, ServerOptions{MaxConcurrentStreams: 2}, handlerFunc(func(s http.ServerStream) {
		if s.Header().Path() == "/block" {
			<-release
		}
		respond(s, "ok")
	}))
	p := dialPeer(t, ts.addr)
	if p.settings[http2.SettingMaxConcurrentStreams] != 2 {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d", p.settings[http2.SettingMaxConcurrentStreams])
	}
	p.request(1, true, "/block")
	p.request(3, true, "/block")
	p.request(5, true, "/block")
	p.expectRST(5, http2.ErrCodeRefusedStream)
	close(release)
	p.readResponses(1, 3)
	p.request(7, true, "/")
	p.readResponse(7)
}

// malformedRequests are request header blocks RFC 9113 section 8.1.1 calls
// malformed.
func malformedRequests() map[string][]string {
	base := []string{":method", "GET", ":scheme", "http", ":authority", "a"}
	with := func(kv ...string) []string { return append(append([]string(nil), base...), kv...) }
	return map[string][]string{
		"no :path":                base,
		"empty :path":             with(":path", ""),
		"relative :path":          with(":path", "x"),
		"no :method":              {":scheme", "http", ":path", "/"},
		"no :scheme":              {":method", "GET", ":path", "/"},
		"duplicate :path":         with(":path", "/", ":path", "/"),
		"unknown pseudo":          with(":path", "/", ":foo", "x"),
		":status in request":      with(":path", "/", ":status", "200"),
		":protocol not agreed":    with(":path", "/", ":protocol", "websocket"),
		"pseudo after regular":    {":method", "GET", ":scheme", "http", "x", "y", ":path", "/"},
		"upper case name":         with(":path", "/", "X-Up", "1"),
		"connection":              with(":path", "/", "connection", "keep-alive"),
		"transfer-encoding":       with(":path", "/", "transfer-encoding", "chunked"),
		"upgrade":                 with(":path", "/", "upgrade", "h2c"),
		"keep-alive":              with(":path", "/", "keep-alive", "1"),
		"te not trailers":         with(":path", "/", "te", "gzip"),
		"value with LF":           with(":path", "/", "x", "a\nb"),
		"leading space":           with(":path", "/", "x", " a"),
		"space in name":           with(":path", "/", "a b", "1"),
		"host differs":            with(":path", "/", "host", "b"),
		"bad content-length":      with(":path", "/", "content-length", "1x"),
		"CONNECT with :path":      {":method", "CONNECT", ":authority", "a:443", ":path", "/"},
		"CONNECT no authority":    {":method", "CONNECT"},
		"content-length, no body": with(":path", "/", "content-length", "3"),
	}
}

// By default (as in Envoy, without override_stream_error_on_invalid_http_message)
// a malformed request ends the connection: GOAWAY(PROTOCOL_ERROR), close.
func TestServerMalformedRequestEndsConnection(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		t.Errorf("handler called for %s", s.Header().Path())
		respond(s, "")
	}))
	for name, kv := range malformedRequests() {
		t.Run(name, func(t *testing.T) {
			p := dialPeer(t, ts.addr)
			p.headers(1, true, kv...)
			p.expectGoAway(http2.ErrCodeProtocol)
			p.expectClosed()
		})
	}
}

func TestServerMalformedRequests(t *testing.T) {
	called := make(chan string, 100)
	ts := startServer(t, ServerOptions{StreamErrorOnInvalidHTTPMessage: true}, handlerFunc(func(s http.ServerStream) {
		called <- s.Header().Path()
		respond(s, "")
	}))
	base := []string{":method", "GET", ":scheme", "http", ":authority", "a"}
	with := func(kv ...string) []string { return append(append([]string(nil), base...), kv...) }
	p := dialPeer(t, ts.addr)
	id := uint32(1)
	for name, kv := range malformedRequests() {
		p.headers(id, true, kv...)
		f := p.expect(name, func(f http2.Frame) bool { return f.Header().StreamID == id }, nil)
		if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("%s: got %v, want RST_STREAM PROTOCOL_ERROR", name, f.Header())
		}
		id += 2
	}
	good := map[string][]string{
		"te trailers":        with(":path", "/te", "te", "trailers"),
		"host only":          {":method", "GET", ":scheme", "http", ":path", "/host", "host", "h"},
		"OPTIONS *":          {":method", "OPTIONS", ":scheme", "http", ":authority", "a", ":path", "*"},
		"CONNECT":            {":method", "CONNECT", ":authority", "a:443"},
		"same host":          with(":path", "/same", "host", "a"),
		"content-length 0":   with(":path", "/cl0", "content-length", "0"),
		"no authority":       {":method", "GET", ":scheme", "http", ":path", "/noauth"},
		"inner space, empty": with(":path", "/sp", "x", "a b", "y", ""),
	}
	for name, kv := range good {
		p.headers(id, true, kv...)
		f := p.expect(name, func(f http2.Frame) bool { return f.Header().StreamID == id }, nil)
		if _, ok := f.(*http2.HeadersFrame); !ok || p.field(":status") != "200" {
			t.Errorf("%s: got %v, want a 200 response", name, f.Header())
		}
		id += 2
	}
	if len(called) != len(good) {
		t.Errorf("handler called %d times, want %d", len(called), len(good))
	}
}

func TestServerHostBecomesAuthority(t *testing.T) {
	got := make(chan string, 1)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		got <- s.Header().Authority() + "|" + s.Header().Value("host")
		respond(s, "")
	}))
	p := dialPeer(t, ts.addr)
	p.headers(1, true, ":method", "GET", ":scheme", "http", ":path", "/", "host", "example.com:8080")
	p.readResponse(1)
	if g := <-got; g != "example.com:8080|" {
		t.Errorf(":authority|host = %q", g)
	}
}

func TestServerContentLengthMismatch(t *testing.T) {
	ts := startServer(t, ServerOptions{StreamErrorOnInvalidHTTPMessage: true}, handlerFunc(func(s http.ServerStream) {
		if _, err := io.Copy(io.Discard, s); err == nil {
			t.Error("handler read a body that does not match content-length")
		}
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/", "content-length", "3")
	p.data(1, true, []byte("four"))
	p.expectRST(1, http2.ErrCodeProtocol)
	p.request(3, false, "/", "content-length", "5")
	p.data(3, true, []byte("four"))
	p.expectRST(3, http2.ErrCodeProtocol)
}

// By default, DATA that contradicts content-length ends the connection.
func TestServerContentLengthMismatchEndsConnection(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		io.Copy(io.Discard, s)
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/", "content-length", "3")
	p.data(1, true, []byte("four"))
	p.expectGoAway(http2.ErrCodeProtocol)
	p.expectClosed()
}

func TestServerHeaderListTooLarge(t *testing.T) {
	var called atomic.Bool
	ts := startServer(t, ServerOptions{MaxHeaderListSize: 2000}, handlerFunc(func(s http.ServerStream) {
		if s.Header().Has("x-big") {
			called.Store(true)
		}
		respond(s, "")
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/", "x-big", strings.Repeat("b", 3000))
	// Envoy resets the stream (INTERNAL_ERROR); it does not answer 431.
	p.expectRST(1, http2.ErrCodeInternal)
	// The connection (and its HPACK state) is fine.
	p.request(3, true, "/")
	if hdr, _, _ := p.readResponse(3); hdr[0].Value != "200" {
		t.Errorf("after the reset: %v", hdr)
	}
	if called.Load() {
		t.Error("handler called for an oversized header")
	}
}

// More fields than MaxHeaders (pseudo-header fields count) reset the
// stream, as Envoy does for max_headers_count over HTTP/2.
func TestServerTooManyHeaders(t *testing.T) {
	ts := startServer(t, ServerOptions{MaxHeaders: 6}, handlerFunc(func(s http.ServerStream) { respond(s, "") }))
	p := dialPeer(t, ts.addr)
	p.request(1, true, "/", "a", "1", "b", "2", "c", "3")
	p.expectRST(1, http2.ErrCodeInternal)
	p.request(3, true, "/", "a", "1", "b", "2")
	if hdr, _, _ := p.readResponse(3); hdr[0].Value != "200" {
		t.Errorf("within the limit: %v", hdr)
	}
}

func TestServerContinuation(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) { respond(s, s.Header().Value("x-long")) }))
	p := dialPeer(t, ts.addr)
	long := strings.Repeat("v", 20000)
	block := p.encode(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/", "x-long", long)
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:100], EndStream: true})
	_ = p.fr.WriteContinuation(1, false, block[100:10000])
	_ = p.fr.WriteContinuation(1, true, block[10000:])
	// A large response header is split into CONTINUATION frames too.
	_, body, _ := p.readResponse(1)
	if string(body) != long {
		t.Errorf("body of %d bytes", len(body))
	}
}

func TestServerLargeResponseHeaderUsesContinuation(t *testing.T) {
	long := strings.Repeat("h", 40000)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		var h http.Header
		h.Add(http.Status, "200")
		h.Add("x-long", long)
		_ = s.WriteHeader(&h, true)
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, true, "/")
	f := p.read()
	if hf, ok := f.(*http2.HeadersFrame); !ok || hf.HeadersEnded() {
		t.Fatalf("got %v, want HEADERS without END_HEADERS", f.Header())
	}
	for {
		f = p.read()
		cf, ok := f.(*http2.ContinuationFrame)
		if !ok {
			t.Fatalf("got %v, want CONTINUATION", f.Header())
		}
		if cf.HeadersEnded() {
			break
		}
	}
	if p.field("x-long") != long {
		t.Error("x-long lost")
	}
}

func TestServerClientReset(t *testing.T) {
	readErr := make(chan error, 1)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		_, err := io.Copy(io.Discard, s)
		<-s.Context().Done()
		readErr <- err
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	p.data(1, false, []byte("partial"))
	_ = p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	err := <-readErr
	var se *StreamError
	if !errors.As(err, &se) || !se.Remote || se.Code != http.ResetCancel || se.StreamID != 1 {
		t.Fatalf("Read error %v, want a remote CANCEL", err)
	}
	// Late frames on the reset stream are answered with STREAM_CLOSED and
	// the connection goes on.
	p.data(1, false, []byte("late"))
	p.expectRST(1, http2.ErrCodeStreamClosed)
	p.request(3, true, "/")
	_ = p.fr.WriteRSTStream(3, http2.ErrCodeCancel)
	<-readErr
	_ = p.fr.WritePing(false, [8]byte{1})
	p.expect("PING ACK", func(f http2.Frame) bool { pf, ok := f.(*http2.PingFrame); return ok && pf.IsAck() }, func(http2.Frame) bool { return true })
}

// TestServerNotifyGoneWithdrawWaits: NotifyGone(nil) returns only once a
// call of the gone function already under way has returned, so that the
// connection manager can reuse what it works on (its stream state, pooled)
// without a late call reaching the next exchange.
func TestServerNotifyGoneWithdrawWaits(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	result := make(chan bool, 1)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		gn := s.(http.GoneNotifier)
		gn.NotifyGone(func() {
			close(started)
			<-release
			finished.Store(true)
		})
		<-started // the client reset the stream
		gn.NotifyGone(nil)
		result <- finished.Load()
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	_ = p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	<-started
	time.Sleep(50 * time.Millisecond) // time for a NotifyGone(nil) that does not wait to return
	close(release)
	if !<-result {
		t.Fatal("NotifyGone(nil) returned while the gone function was still running")
	}
}

func TestServerHandlerReset(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		s.Reset(http.ResetCancel)
		if _, err := s.Write([]byte("x")); err == nil {
			t.Error("Write after Reset succeeded")
		}
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	p.expectRST(1, http2.ErrCodeCancel)
	// Data the client had in flight is ignored (the server sent the reset).
	p.data(1, true, []byte("in flight"))
	p.quiet(100 * time.Millisecond)
}

func TestServerHandlerWithoutResponseResets(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {}))
	p := dialPeer(t, ts.addr)
	p.request(1, true, "/")
	p.expectRST(1, http2.ErrCodeInternal)
	// A response not ended is reset as well.
	ts2 := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		var h http.Header
		h.Add(http.Status, "200")
		_ = s.WriteHeader(&h, false)
		_, _ = s.Write([]byte("half"))
	}))
	p2 := dialPeer(t, ts2.addr)
	p2.request(1, true, "/")
	f := p2.expect("RST_STREAM", func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }, func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.HeadersFrame:
			return !f.StreamEnded()
		case *http2.DataFrame:
			return !f.StreamEnded()
		}
		return false
	})
	if rst := f.(*http2.RSTStreamFrame); rst.ErrCode != http2.ErrCodeInternal {
		t.Errorf("RST_STREAM %v", rst.ErrCode)
	}
}

// TestServerEarlyResponse: a handler answering before reading the request
// body; the server ends the response, then asks the client to stop sending
// with RST_STREAM(NO_ERROR).
func TestServerEarlyResponse(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) { respond(s, "early") }))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	_, body, _ := p.readResponse(1)
	if string(body) != "early" {
		t.Errorf("body %q", body)
	}
	p.expectRST(1, http2.ErrCodeNo)
}

func TestServerInformationalResponses(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		var h http.Header
		h.Add(http.Status, "103")
		h.Add("link", "</a.css>; rel=preload")
		if err := s.WriteHeader(&h, false); err != nil {
			t.Error(err)
		}
		h.Reset()
		h.Add(http.Status, "101")
		if err := s.WriteHeader(&h, false); err == nil {
			t.Error("101 accepted")
		}
		h.Reset()
		h.Add(http.Status, "100")
		if err := s.WriteHeader(&h, true); err == nil {
			t.Error("1xx ending the stream accepted")
		}
		respond(s, "done")
		if err := s.WriteHeader(&h, false); err == nil {
			t.Error("WriteHeader after the final one accepted")
		}
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, true, "/")
	f := p.read()
	if hf, ok := f.(*http2.HeadersFrame); !ok || hf.StreamEnded() || p.field(":status") != "103" {
		t.Fatalf("first frame %v %v", f.Header(), p.fields)
	}
	hdr, body, _ := p.readResponse(1)
	if hdr[0].Value != "200" || string(body) != "done" {
		t.Errorf("%v %q", hdr, body)
	}
}

func TestServerProtocolErrorSendsGoAway(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) { respond(s, "") }))
	p := dialPeer(t, ts.addr)
	p.request(1, true, "/")
	p.readResponse(1)
	p.data(0, false, []byte("DATA on stream 0"))
	g := p.expectGoAway(http2.ErrCodeProtocol)
	if g.LastStreamID != 1 {
		t.Errorf("GOAWAY last stream id %d, want 1", g.LastStreamID)
	}
	p.expectClosed()
	ts.stop()
	var ce *ConnError
	if len(ts.errs) != 1 || !errors.As(ts.errs[0], &ce) || ce.Code != http.ResetProtocolError || ce.Remote {
		t.Errorf("Serve returned %v", ts.errs)
	}
}

func TestServerInvalidPreface(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {}))
	nc := dialRawConn(t, ts.addr)
	_, _ = io.WriteString(nc, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	p := newPeer(t, nc)
	p.expectGoAway(http2.ErrCodeProtocol)
	p.expectClosed()
}

func TestServerFirstFrameMustBeSettings(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {}))
	nc := dialRawConn(t, ts.addr)
	_, _ = io.WriteString(nc, ClientPreface)
	p := newPeer(t, nc)
	_ = p.fr.WritePing(false, [8]byte{})
	p.expectGoAway(http2.ErrCodeProtocol)
}

func TestServerPing(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {}))
	p := dialPeer(t, ts.addr)
	data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	_ = p.fr.WritePing(false, data)
	f := p.read()
	if pf, ok := f.(*http2.PingFrame); !ok || !pf.IsAck() || pf.Data != data {
		t.Fatalf("got %v", f.Header())
	}
}

// TestServerStreamContextCanceledOnClose checks that handlers see their
// streams' contexts canceled when the connection goes, and that Serve waits
// for them.
func TestServerStreamContextCanceledOnClose(t *testing.T) {
	started := make(chan struct{})
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		close(started)
		<-s.Context().Done()
		if _, err := s.Read(make([]byte, 1)); !errors.Is(err, ErrConnClosed) {
			t.Errorf("Read after the connection closed: %v", err)
		}
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, false, "/")
	<-started
	p.nc.Close()
	ts.stop() // waits for Serve, which waits for the handler
}

// TestServerWriteBlocksOnWindow checks that a handler writing more than the
// client lets through blocks (bounded buffering) and is released by a reset.
func TestServerWriteBlocksOnWindow(t *testing.T) {
	wrote := make(chan int, 1)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		var h http.Header
		h.Add(http.Status, "200")
		_ = s.WriteHeader(&h, false)
		n, err := s.Write(make([]byte, 1<<20))
		if err == nil {
			t.Error("Write of 1 MiB into a 0-byte window returned without error")
		}
		wrote <- n
	}))
	p := dialPeer(t, ts.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	p.request(1, true, "/")
	p.expect("HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.HeadersFrame); return ok }, nil)
	p.quiet(100 * time.Millisecond)
	select {
	case n := <-wrote:
		t.Fatalf("Write returned early (%d bytes)", n)
	default:
	}
	_ = p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	if n := <-wrote; n > maxDataChunk {
		t.Errorf("buffered %d bytes for a closed window", n)
	}
}

// TestServerManyStreams runs concurrent streams with bodies over one
// connection through x/net's client (see interop_test.go for more).
func TestServerManyStreamsRawOrder(t *testing.T) {
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		b, _ := io.ReadAll(s)
		respond(s, string(bytes.ToUpper(b)))
	}))
	p := dialPeer(t, ts.addr)
	for i := uint32(0); i < 20; i++ {
		p.request(1+2*i, false, "/", "content-length", "3")
	}
	for i := uint32(0); i < 20; i++ {
		p.data(1+2*i, true, []byte("abc"))
	}
	// A body may come in more than one DATA frame (the last one, with
	// END_STREAM, possibly empty).
	got, ended := map[uint32]string{}, map[uint32]bool{}
	for len(ended) < 20 {
		f := p.read()
		if d, ok := f.(*http2.DataFrame); ok {
			got[d.StreamID] += string(d.Data())
			if d.StreamEnded() {
				ended[d.StreamID] = true
			}
		}
	}
	for id, b := range got {
		if b != "ABC" {
			t.Errorf("stream %d: %q", id, b)
		}
	}
}

func TestServerRequestHeadersTimeout(t *testing.T) {
	var served, fired atomic.Int32
	ts := startServer(t, ServerOptions{
		RequestHeadersTimeout:   300 * time.Millisecond,
		OnRequestHeadersTimeout: func() { fired.Add(1) },
	}, handlerFunc(func(s http.ServerStream) {
		served.Add(1)
		_, _ = io.Copy(io.Discard, s)
		respond(s, s.Header().Value(":path"))
	}))
	p := dialPeer(t, ts.addr)

	// A header block left open: the stream is reset as Envoy resets it.
	block := p.encode(":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/late")
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:5], EndStream: true})
	p.expectRST(1, http2.ErrCodeNo)
	if fired.Load() != 1 {
		t.Errorf("OnRequestHeadersTimeout called %d times, want 1", fired.Load())
	}
	// Its end arrives late: decoded (HPACK stays in step) and dropped.
	_ = p.fr.WriteContinuation(1, true, block[5:])
	p.request(3, true, "/next")
	if hdr, body, _ := p.readResponse(3); hdr[0].Value != "200" || string(body) != "/next" {
		t.Errorf("after the timeout: %v %q", hdr, body)
	}

	// A request whose block completes in time, sent slowly afterwards (body
	// and trailers are not timed), is served.
	block = p.encode(":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/slow-body")
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: block[:3]})
	time.Sleep(30 * time.Millisecond)
	_ = p.fr.WriteContinuation(5, true, block[3:])
	time.Sleep(350 * time.Millisecond)
	p.data(5, false, []byte("x"))
	time.Sleep(350 * time.Millisecond)
	p.headers(5, true, "x-trailer", "t")
	if hdr, body, _ := p.readResponse(5); hdr[0].Value != "200" || string(body) != "/slow-body" {
		t.Errorf("slow body: %v %q", hdr, body)
	}
	if served.Load() != 2 || fired.Load() != 1 {
		t.Errorf("served %d, timeouts %d; want 2 and 1", served.Load(), fired.Load())
	}
}
