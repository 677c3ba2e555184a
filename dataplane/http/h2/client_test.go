package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// rawServer accepts one connection and plays the server by hand.
func rawServer(t *testing.T, opts ClientOptions, settings ...http2.Setting) (*ClientConn, *peer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc := dialClient(t, ln.Addr().String(), opts)
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	var preface [len(ClientPreface)]byte
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(nc, preface[:]); err != nil || string(preface[:]) != ClientPreface {
		t.Fatalf("preface %q, %v", preface, err)
	}
	p := newPeer(t, nc)
	p.handshake(settings...)
	return cc, p
}

// send opens a stream and writes a request header.
func send(t *testing.T, cc *ClientConn, end bool) http.ClientStream {
	t.Helper()
	cs, err := cc.NewStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.WriteHeader(reqHeader("POST", "/"), end); err != nil {
		t.Fatal(err)
	}
	return cs
}

// expectHeaders waits for the request HEADERS of stream id.
func (p *peer) expectHeaders(id uint32) {
	p.t.Helper()
	f := p.expect("HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.HeadersFrame); return ok }, skipWindowUpdates)
	if f.Header().StreamID != id {
		p.t.Fatalf("HEADERS on stream %d, want %d", f.Header().StreamID, id)
	}
}

func TestClientRequestOnTheWire(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs, _ := cc.NewStream(context.Background())
	h := reqHeader("PUT", "/up", "host", "ignored-for-authority", "connection", "close", "te", "trailers", "x-a", "1")
	h.Del(http.Authority)
	h.Add(http.Authority, "the-authority") // pseudo-header fields go first on the wire anyway
	if err := cs.WriteHeader(h, false); err != nil {
		t.Fatal(err)
	}
	p.expectHeaders(1)
	var names []string
	for _, f := range p.fields {
		names = append(names, f.Name)
	}
	if want := ":method :scheme :path :authority te x-a"; join(names) != want {
		t.Errorf("fields %q, want %q", join(names), want)
	}
	if p.field(":authority") != "the-authority" {
		t.Errorf(":authority %q", p.field(":authority"))
	}
	_, _ = cs.Write([]byte("body"))
	var tr http.Header
	tr.Add("x-trailer", "t")
	_ = cs.EndWithTrailers(&tr)
	f := p.read().(*http2.DataFrame)
	if string(f.Data()) != "body" || f.StreamEnded() {
		t.Errorf("DATA %v %q", f.Header(), f.Data())
	}
	hf := p.read().(*http2.HeadersFrame)
	if !hf.StreamEnded() || p.field("x-trailer") != "t" {
		t.Errorf("trailers %v %v", hf.Header(), p.fields)
	}
	// A request without :authority takes Host's.
	h2 := reqHeader("GET", "/", "host", "from-host")
	h2.Del(http.Authority)
	cs2, _ := cc.NewStream(context.Background())
	_ = cs2.WriteHeader(h2, true)
	p.expectHeaders(3)
	if p.field(":authority") != "from-host" || p.field("host") != "" {
		t.Errorf("fields %v", p.fields)
	}
}

func join(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(x)
	}
	return b.String()
}

// TestClientGoAway: streams above GOAWAY's last stream id fail retryably;
// those below finish; no new streams start; the connection then closes.
func TestClientGoAway(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	one := send(t, cc, true)
	p.expectHeaders(1)
	three := send(t, cc, true)
	p.expectHeaders(3)
	_ = p.fr.WriteGoAway(1, http2.ErrCodeNo, []byte("restarting"))
	_, err := three.ReadHeader()
	var ge *GoAwayError
	if !errors.Is(err, ErrNotProcessed) || !errors.Is(err, ErrConnClosed) || !errors.As(err, &ge) || ge.StreamID != 3 || ge.Debug != "restarting" {
		t.Fatalf("stream 3: %v", err)
	}
	if cc.Available() {
		t.Error("Available after GOAWAY")
	}
	if _, err := cc.NewStream(context.Background()); !errors.Is(err, ErrNotProcessed) {
		t.Errorf("NewStream after GOAWAY: %v", err)
	}
	p.headers(1, false, ":status", "200")
	p.data(1, true, []byte("still served"))
	rh, err := one.ReadHeader()
	if err != nil || rh.Value(http.Status) != "200" {
		t.Fatalf("stream 1: %v", err)
	}
	if b, err := io.ReadAll(one); err != nil || string(b) != "still served" {
		t.Fatalf("stream 1 body %q, %v", b, err)
	}
	// The last stream done, the client closes the connection.
	select {
	case <-cc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open")
	}
	if err := cc.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
}

// TestClientGoAwayBeforeHeadersSent: a stream whose HEADERS had not gone out
// when GOAWAY came fails retryably too.
func TestClientGoAwayUnsentStream(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs, err := cc.NewStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = p.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	deadline := time.Now().Add(5 * time.Second)
	for cc.Available() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	err = cs.WriteHeader(reqHeader("GET", "/"), true)
	if err == nil {
		_, err = cs.ReadHeader()
	}
	if !errors.Is(err, ErrNotProcessed) {
		t.Fatalf("stream opened before GOAWAY, sent after: %v", err)
	}
}

func TestClientRefusedStreamIsRetryable(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs := send(t, cc, true)
	p.expectHeaders(1)
	_ = p.fr.WriteRSTStream(1, http2.ErrCodeRefusedStream)
	_, err := cs.ReadHeader()
	var se *StreamError
	if !errors.Is(err, ErrNotProcessed) || !errors.As(err, &se) || !se.Remote || se.Code != http.ResetRefusedStream {
		t.Fatalf("%v", err)
	}
	// Other resets are not.
	cs = send(t, cc, true)
	p.expectHeaders(3)
	_ = p.fr.WriteRSTStream(3, http2.ErrCodeInternal)
	if _, err := cs.ReadHeader(); errors.Is(err, ErrNotProcessed) || err == nil {
		t.Fatalf("INTERNAL_ERROR reset: %v", err)
	}
	if !cc.Available() {
		t.Error("connection unusable after stream resets")
	}
}

func TestClientInformationalAndTrailers(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs := send(t, cc, true)
	p.expectHeaders(1)
	p.headers(1, false, ":status", "100")
	p.headers(1, false, ":status", "103", "link", "</x>")
	p.headers(1, false, ":status", "200", "content-length", "5")
	p.data(1, false, []byte("hel"))
	p.data(1, false, []byte("lo"))
	p.headers(1, true, "grpc-status", "0")
	rh, err := cs.ReadHeader()
	if err != nil || rh.Value(http.Status) != "200" {
		t.Fatalf("%v %v", rh, err)
	}
	b, err := io.ReadAll(cs)
	if err != nil || string(b) != "hello" || cs.Trailers().Value("grpc-status") != "0" {
		t.Fatalf("%q %v %v", b, err, cs.Trailers())
	}
	if cs.(ender).EndedWithHeader() {
		t.Error("EndedWithHeader for a response with a body")
	}
	// A trailers-only response.
	cs = send(t, cc, true)
	p.expectHeaders(3)
	p.headers(3, true, ":status", "200", "grpc-status", "5")
	if _, err := cs.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	if !cs.(ender).EndedWithHeader() {
		t.Error("EndedWithHeader false for a trailers-only response")
	}
	if n, err := cs.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("Read %d %v", n, err)
	}
}

func TestClientMalformedResponses(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	id := uint32(1)
	for name, kv := range map[string][]string{
		"no :status":         {"x", "y"},
		"bad :status":        {":status", "2000"},
		"101":                {":status", "101"},
		"request pseudo":     {":status", "200", ":path", "/"},
		"pseudo after field": {"x", "y", ":status", "200"},
		"upper case":         {":status", "200", "X", "y"},
		"connection header":  {":status", "200", "connection", "close"},
		"bad content-length": {":status", "200", "content-length", "-1"},
	} {
		cs := send(t, cc, true)
		p.expectHeaders(id)
		p.headers(id, true, kv...)
		var se *StreamError
		if _, err := cs.ReadHeader(); !errors.As(err, &se) || se.Code != http.ResetProtocolError || se.Remote {
			t.Errorf("%s: %v", name, err)
		}
		p.expectRST(id, http2.ErrCodeProtocol)
		id += 2
	}
	// Content-length that the body does not match.
	cs := send(t, cc, true)
	p.expectHeaders(id)
	p.headers(id, false, ":status", "200", "content-length", "10")
	p.data(id, true, []byte("short"))
	if _, err := cs.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(cs); err == nil {
		t.Error("short body accepted")
	}
	p.expectRST(id, http2.ErrCodeProtocol)
	// HEAD responses have a content-length and no body.
	id += 2
	cs, _ = cc.NewStream(context.Background())
	_ = cs.WriteHeader(reqHeader("HEAD", "/"), true)
	p.expectHeaders(id)
	p.headers(id, true, ":status", "200", "content-length", "10")
	if _, err := cs.ReadHeader(); err != nil {
		t.Errorf("HEAD: %v", err)
	}
}

// TestClientResponseBeforeRequestEnds: the server answers, then resets with
// NO_ERROR; the response stays readable and the request writer learns to
// stop.
func TestClientResponseBeforeRequestEnds(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs := send(t, cc, false)
	p.expectHeaders(1)
	p.headers(1, false, ":status", "413")
	p.data(1, true, []byte("too big"))
	_ = p.fr.WriteRSTStream(1, http2.ErrCodeNo)
	rh, err := cs.ReadHeader()
	if err != nil || rh.Value(http.Status) != "413" {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(cs); err != nil || string(b) != "too big" {
		t.Fatalf("%q %v", b, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var werr error
	for werr == nil && time.Now().Before(deadline) {
		_, werr = cs.Write([]byte("more"))
		time.Sleep(time.Millisecond)
	}
	var se *StreamError
	if !errors.As(werr, &se) || se.Code != http.ResetNoError || !se.Remote {
		t.Errorf("Write after the server's RST_STREAM(NO_ERROR): %v", werr)
	}
	if !cc.Available() {
		t.Error("stream still counted")
	}
}

// TestClientWindowUpdateOnConsumption: the client gives window back as the
// caller reads, and resets a stream that overruns its window.
func TestClientWindowUpdateOnConsumption(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{InitialStreamWindowSize: MinWindowSize, InitialConnectionWindowSize: 1 << 20})
	cs := send(t, cc, true)
	p.expectHeaders(1)
	p.headers(1, false, ":status", "200")
	chunk := make([]byte, 16384)
	sent := 0
	for sent+len(chunk) <= MinWindowSize {
		p.data(1, false, chunk)
		sent += len(chunk)
	}
	p.quiet(100 * time.Millisecond)
	if _, err := cs.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(cs, make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	f := p.read()
	if wu, ok := f.(*http2.WindowUpdateFrame); !ok || wu.StreamID != 1 || wu.Increment != uint32(sent) {
		t.Fatalf("got %v, want WINDOW_UPDATE of %d on stream 1", f.Header(), sent)
	}
	// Overrunning the (given back) window.
	for left := MinWindowSize; left > 0; left -= min(left, len(chunk)) {
		p.data(1, false, chunk[:min(left, len(chunk))])
	}
	p.data(1, false, []byte("x"))
	p.expectRST(1, http2.ErrCodeFlowControl)
}

// TestClientRespectsServerWindow: request bodies wait for the server's
// windows.
func TestClientRespectsServerWindow(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
	cs := send(t, cc, false)
	p.expectHeaders(1)
	go func() {
		_, _ = cs.Write(make([]byte, 1000))
		_ = cs.End()
	}()
	got := 0
	for got < 100 {
		if d, ok := p.read().(*http2.DataFrame); ok {
			got += len(d.Data())
		}
	}
	p.quiet(100 * time.Millisecond)
	if got != 100 {
		t.Fatalf("sent %d bytes into a 100-byte window", got)
	}
	_ = p.fr.WriteWindowUpdate(1, 900)
	for {
		d, ok := p.read().(*http2.DataFrame)
		if !ok {
			continue
		}
		got += len(d.Data())
		if d.StreamEnded() {
			break
		}
	}
	if got != 1000 {
		t.Fatalf("got %d bytes", got)
	}
}

func TestClientPushPromiseIsConnectionError(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs := send(t, cc, true)
	p.expectHeaders(1)
	_ = p.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: p.encode(":method", "GET"), EndHeaders: true})
	p.expectGoAway(http2.ErrCodeProtocol)
	if _, err := cs.ReadHeader(); !errors.Is(err, ErrConnClosed) {
		t.Errorf("%v", err)
	}
	<-cc.Done()
	var ce *ConnError
	if !errors.As(cc.Err(), &ce) || ce.Code != http.ResetProtocolError {
		t.Errorf("Err() = %v", cc.Err())
	}
}

func TestClientPing(t *testing.T) {
	_, p := rawServer(t, ClientOptions{})
	_ = p.fr.WritePing(false, [8]byte{9})
	f := p.read()
	if pf, ok := f.(*http2.PingFrame); !ok || !pf.IsAck() || pf.Data != [8]byte{9} {
		t.Fatalf("got %v", f.Header())
	}
}

func TestClientCloseFailsStreams(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs := send(t, cc, true)
	p.expectHeaders(1)
	done := make(chan error, 1)
	go func() { _, err := cs.ReadHeader(); done <- err }()
	_ = cc.Close()
	if err := <-done; !errors.Is(err, ErrConnClosed) || errors.Is(err, ErrNotProcessed) {
		t.Errorf("stream after Close: %v", err)
	}
	g := p.expectGoAway(http2.ErrCodeNo)
	if g.LastStreamID != 0 {
		t.Errorf("client GOAWAY last stream id %d", g.LastStreamID)
	}
	if cc.Available() {
		t.Error("Available after Close")
	}
}

func TestClientServerClosesConnection(t *testing.T) {
	cc, p := rawServer(t, ClientOptions{})
	cs := send(t, cc, true)
	p.expectHeaders(1)
	p.nc.Close()
	if _, err := cs.ReadHeader(); !errors.Is(err, ErrConnClosed) || errors.Is(err, ErrNotProcessed) {
		t.Errorf("%v", err)
	}
	<-cc.Done()
	if _, err := cc.NewStream(context.Background()); !errors.Is(err, ErrConnClosed) {
		t.Errorf("NewStream on a closed connection: %v", err)
	}
}

// TestClientStreamClose: Close recycles finished streams and resets
// unfinished ones; a context canceled after Close does not touch the stream's
// next life.
func TestClientStreamClose(t *testing.T) {
	canceled := make(chan error, 10)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		if s.Header().Path() == "/hang" {
			var h http.Header
			h.Add(http.Status, "200")
			_ = s.WriteHeader(&h, false)
			_, err := io.Copy(io.Discard, s)
			canceled <- err
			return
		}
		b, _ := io.ReadAll(s)
		respond(s, "re:"+string(b))
	}))
	cc := dialClient(t, ts.addr, ClientOptions{})
	closer := func(cs http.ClientStream) { _ = cs.(interface{ Close() error }).Close() }

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				ctx, cancel := context.WithCancel(context.Background())
				cs, err := cc.NewStream(ctx)
				if err != nil {
					t.Error(err)
					cancel()
					return
				}
				msg := []byte{byte('a' + g), byte('0' + i%10)}
				_ = cs.WriteHeader(reqHeader("POST", "/"), false)
				_, _ = cs.Write(msg)
				_ = cs.End()
				if _, err := cs.ReadHeader(); err != nil {
					t.Error(err)
				}
				b, err := io.ReadAll(cs)
				if err != nil || string(b) != "re:"+string(msg) {
					t.Errorf("%q %v", b, err)
				}
				closer(cs)
				cancel() // after Close: must not reset whatever the stream became
			}
		})
	}
	wg.Wait()

	cs, _ := cc.NewStream(context.Background())
	_ = cs.WriteHeader(reqHeader("POST", "/hang"), false)
	if _, err := cs.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	closer(cs)
	var se *StreamError
	// On the wire a stream the client gives up is reset with NO_ERROR, as
	// Envoy's codec resets an upstream stream.
	if err := <-canceled; !errors.As(err, &se) || se.Code != http.ResetNoError || !se.Remote {
		t.Errorf("server saw %v, want the client's RST_STREAM NO_ERROR", err)
	}
	if !cc.Available() {
		t.Error("not Available")
	}
}
