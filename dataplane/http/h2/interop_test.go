package h2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// ---------------------------------------------------------------------------
// Go's HTTP/2 client (h2c with prior knowledge) against our server. It is
// x/net/http2's implementation, which x/net v0.60 deprecates in favor of the
// copy net/http bundles; the tests use net/http's.

func goClient(t *testing.T) *nethttp.Client {
	var p nethttp.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &nethttp.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &nethttp.Client{Transport: tr, Timeout: 30 * time.Second}
}

// echoHandler answers with the request's body, a digest of it in the header,
// and its trailers back as response trailers.
type echoHandler struct{}

func (echoHandler) ServeStream(s http.ServerStream) {
	body, err := io.ReadAll(s)
	if err != nil {
		return
	}
	var h http.Header
	h.Add(http.Status, "200")
	h.Add("x-method", s.Header().Method())
	h.Add("x-sha256", fmt.Sprintf("%x", sha256.Sum256(body)))
	if err := s.WriteHeader(&h, false); err != nil {
		return
	}
	for len(body) > 0 { // in pieces, as a proxy would
		n := min(len(body), 10000)
		if _, err := s.Write(body[:n]); err != nil {
			return
		}
		body = body[n:]
	}
	var tr http.Header
	tr.Add("x-echo-trailer", s.Trailers().Value("x-req-trailer"))
	tr.Add("x-done", "yes")
	_ = s.EndWithTrailers(&tr)
}

func TestGoClientAgainstServer(t *testing.T) {
	// Small windows, so that flow control works hard both ways.
	ts := startServer(t, ServerOptions{InitialStreamWindowSize: MinWindowSize, InitialConnectionWindowSize: MinWindowSize}, echoHandler{})
	client := goClient(t)
	url := "http://" + ts.addr

	t.Run("GET", func(t *testing.T) {
		resp, err := client.Get(url + "/get")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 || len(body) != 0 || resp.Header.Get("X-Method") != "GET" {
			t.Errorf("%v %v %q", resp.Status, resp.Header, body)
		}
		if resp.Trailer.Get("X-Done") != "yes" {
			t.Errorf("trailers %v", resp.Trailer)
		}
	})

	t.Run("large bodies and trailers both ways", func(t *testing.T) {
		payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		req, _ := nethttp.NewRequest("POST", url+"/post", bytes.NewReader(payload))
		req.Trailer = nethttp.Header{"X-Req-Trailer": nil}
		req.Body = &trailerBody{r: bytes.NewReader(payload), req: req, value: "from-client"}
		req.ContentLength = -1
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body, payload) || resp.Header.Get("X-Sha256") != fmt.Sprintf("%x", sha256.Sum256(payload)) {
			t.Errorf("echo of %d bytes came back as %d", len(payload), len(body))
		}
		if resp.Trailer.Get("X-Echo-Trailer") != "from-client" || resp.Trailer.Get("X-Done") != "yes" {
			t.Errorf("trailers %v", resp.Trailer)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				msg := strings.Repeat(fmt.Sprint(i), 1000*i)
				resp, err := client.Post(url+"/c", "text/plain", strings.NewReader(msg))
				if err != nil {
					t.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != msg {
					t.Errorf("stream %d: got %d bytes", i, len(body))
				}
			})
		}
		wg.Wait()
	})
}

// trailerBody is a request body that sets its trailer at EOF.
type trailerBody struct {
	r     io.Reader
	req   *nethttp.Request
	value string
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.req.Trailer.Set("X-Req-Trailer", b.value)
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

func TestGoClientResets(t *testing.T) {
	canceled := make(chan error, 1)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		switch s.Header().Path() {
		case "/reset":
			s.Reset(http.ResetInternalError)
		case "/wait":
			var h http.Header
			h.Add(http.Status, "200")
			_ = s.WriteHeader(&h, false) // and no End: the client gives up
			<-s.Context().Done()
			_, err := s.Read(make([]byte, 1))
			canceled <- err
		}
	}))
	client := goClient(t)
	url := "http://" + ts.addr
	// A server reset.
	if _, err := client.Get(url + "/reset"); err == nil {
		t.Error("GET of a reset stream succeeded")
	}
	// A client that goes away mid-request.
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	req, _ := nethttp.NewRequestWithContext(ctx, "POST", url+"/wait", pr)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	pw.Close()
	var se *StreamError
	if err := <-canceled; !errors.As(err, &se) || !se.Remote || se.Code != http.ResetCancel {
		t.Errorf("handler saw %v, want the client's CANCEL", err)
	}
}

// ---------------------------------------------------------------------------
// Our client against Go's HTTP/2 server (h2c with prior knowledge).

// startGoServer serves h with net/http's HTTP/2 server, prior-knowledge h2c
// only, on 127.0.0.1.
func startGoServer(t *testing.T, cfg *nethttp.HTTP2Config, h nethttp.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p nethttp.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &nethttp.Server{Handler: h, Protocols: &p, HTTP2: cfg}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String()
}

func dialClient(t testing.TB, addr string, opts ClientOptions) *ClientConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := NewClientConn(nc, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func reqHeader(method, path string, kv ...string) *http.Header {
	var h http.Header
	h.Add(http.Method, method)
	h.Add(http.Scheme, "http")
	h.Add(http.Authority, "upstream")
	h.Add(http.Path, path)
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return &h
}

// roundTrip sends a request with body and trailers and reads the whole
// response.
func roundTrip(t testing.TB, cc *ClientConn, h *http.Header, body []byte, trailers *http.Header) (*http.Header, []byte, *http.Header, error) {
	cs, err := cc.NewStream(context.Background())
	if err != nil {
		return nil, nil, nil, err
	}
	end := body == nil && trailers == nil
	if err := cs.WriteHeader(h, end); err != nil {
		return nil, nil, nil, err
	}
	errc := make(chan error, 1)
	go func() {
		if end {
			errc <- nil
			return
		}
		if _, err := cs.Write(body); err != nil {
			errc <- err
			return
		}
		errc <- cs.EndWithTrailers(trailers)
	}()
	rh, err := cs.ReadHeader()
	if err != nil {
		<-errc
		return nil, nil, nil, err
	}
	rb, err := io.ReadAll(cs)
	if werr := <-errc; err == nil {
		err = werr
	}
	return rh, rb, cs.Trailers(), err
}

func TestClientAgainstGoServer(t *testing.T) {
	addr := startGoServer(t, nil, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			nethttp.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Trailer", "X-Echo-Trailer")
		w.Header().Set("X-Proto", r.Proto)
		w.Header().Set("X-Host", r.Host)
		w.WriteHeader(202)
		_, _ = w.Write(body)
		w.Header().Set("X-Echo-Trailer", r.Trailer.Get("X-Req-Trailer"))
	}))
	// Small windows on our side: x/net must wait for our WINDOW_UPDATEs.
	cc := dialClient(t, addr, ClientOptions{InitialStreamWindowSize: MinWindowSize, InitialConnectionWindowSize: MinWindowSize})

	rh, body, _, err := roundTrip(t, cc, reqHeader("GET", "/g"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rh.Value(http.Status) != "202" || rh.Value("x-proto") != "HTTP/2.0" || rh.Value("x-host") != "upstream" || len(body) != 0 {
		t.Errorf("GET: %v %q", rh, body)
	}

	payload := bytes.Repeat([]byte("payload!"), 300000) // 2.4 MB
	var tr http.Header
	tr.Add("x-req-trailer", "t1")
	_, body, rt, err := roundTrip(t, cc, reqHeader("POST", "/p", "trailer", "x-req-trailer"), payload, &tr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, payload) || rt.Value("x-echo-trailer") != "t1" {
		t.Errorf("POST: %d bytes back, trailers %v", len(body), rt)
	}

	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			msg := bytes.Repeat([]byte{byte('a' + i%26)}, 5000*i)
			var cs *ClientConn = cc
			for range 100 { // wait for a slot when at the server's limit
				if cs.Available() {
					break
				}
				time.Sleep(time.Millisecond)
			}
			_, body, _, err := roundTrip(t, cs, reqHeader("POST", "/c"), msg, nil)
			if err != nil && !errors.Is(err, ErrConnClosed) {
				t.Error(err)
			}
			if err == nil && !bytes.Equal(body, msg) {
				t.Errorf("stream %d: %d bytes", i, len(body))
			}
		})
	}
	wg.Wait()
}

func TestClientRespectsMaxConcurrentStreams(t *testing.T) {
	release := make(chan struct{})
	addr := startGoServer(t, &nethttp.HTTP2Config{MaxConcurrentStreams: 2}, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		<-release
	}))
	cc := dialClient(t, addr, ClientOptions{})
	// Until the server's SETTINGS arrive, 100 is assumed; wait for them.
	get := func() http.ClientStream {
		cs, err := cc.NewStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.WriteHeader(reqHeader("GET", "/"), true); err != nil {
			t.Fatal(err)
		}
		return cs
	}
	first := get()
	deadline := time.Now().Add(5 * time.Second)
	for cc.c.peerMaxStreamsForTest() != 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	second := get()
	if cc.Available() {
		t.Fatal("Available with the server's 2 streams open")
	}
	if _, err := cc.NewStream(context.Background()); !errors.Is(err, ErrConnClosed) {
		t.Fatalf("NewStream beyond the limit: %v", err)
	}
	close(release)
	for _, cs := range []http.ClientStream{first, second} {
		if _, err := cs.ReadHeader(); err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, cs)
	}
	deadline = time.Now().Add(5 * time.Second)
	for !cc.Available() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !cc.Available() {
		t.Fatal("not Available once the streams are done")
	}
}

func TestClientResetReachesServer(t *testing.T) {
	canceled := make(chan struct{})
	addr := startGoServer(t, nil, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.WriteHeader(200)
		w.(nethttp.Flusher).Flush()
		<-r.Context().Done()
		close(canceled)
	}))
	cc := dialClient(t, addr, ClientOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cs, _ := cc.NewStream(ctx)
	_ = cs.WriteHeader(reqHeader("GET", "/"), true)
	if _, err := cs.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	cancel() // resets the stream with CANCEL
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not see the reset")
	}
	var se *StreamError
	if _, err := cs.Read(make([]byte, 1)); !errors.As(err, &se) || se.Code != http.ResetCancel || se.Remote {
		t.Errorf("Read after cancel: %v", err)
	}
	if !cc.Available() {
		t.Error("connection unusable after a reset")
	}
}
