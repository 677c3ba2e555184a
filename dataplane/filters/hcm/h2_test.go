package hcm_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/skiffproxy/skiff/internal/grpcecho"
)

func TestH2cManyStreams(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	}))
	for _, upH2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("upstream-http2=%v", upH2), func(t *testing.T) {
			e := newEnv(t, hcmYAML("backend", "codec_type: HTTP2\n"), cluster(t, "backend", upH2, up))
			c := h2cClient(t)
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for i := range 100 {
				wg.Go(func() {
					resp, err := c.Get(fmt.Sprintf("http://%s/s/%d", e.addr, i))
					if err != nil {
						errs <- err
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					wantProto := "HTTP/1.1"
					if upH2 {
						wantProto = "HTTP/2.0"
					}
					if want := fmt.Sprintf("%s /s/%d", wantProto, i); string(b) != want || resp.ProtoMajor != 2 {
						errs <- fmt.Errorf("got %q over %s, want %q", b, resp.Proto, want)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			e.waitStat("http.ingress.downstream_rq_2xx", 100)
			// Until a peer's SETTINGS arrive, a client assumes it takes 100
			// streams at once (RFC 9113), and may open a second connection.
			if got := e.stat("http.ingress.downstream_cx_http2_total"); got > 2 {
				t.Errorf("downstream_cx_http2_total = %d", got)
			}
			if upH2 {
				if got := e.stat("cluster.backend.upstream_cx_http2_total"); got > 2 {
					t.Errorf("upstream_cx_http2_total = %d: streams not multiplexed", got)
				}
			}
		})
	}
}

func TestAutoCodec(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, r.Proto)
	}))
	e := newEnv(t, hcmYAML("backend", ""), cluster(t, "backend", false, up))
	for _, c := range []*nethttp.Client{h1Client(t), h2cClient(t)} {
		resp, err := c.Get("http://" + e.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", resp.Proto, resp.StatusCode)
		}
	}
	e.waitStat("http.ingress.downstream_cx_http1_total", 1)
	e.waitStat("http.ingress.downstream_cx_http2_total", 1)
}

func TestGRPC(t *testing.T) {
	up := grpcecho.Start(t)
	e := newEnv(t, hcmYAML("grpc", ""), cluster(t, "grpc", true, up))
	_, client, ctx := grpcClient(t, e.addr)

	var trl metadata.MD
	body := bytes.Repeat([]byte("grpc"), 1<<18)
	resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}, grpc.Trailer(&trl))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.GetPayload().GetBody(), body) || trl.Get("x-unary-trailer")[0] != "t" {
		t.Errorf("unary: %d bytes, trailer %v", len(resp.GetPayload().GetBody()), trl)
	}

	_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "nope"}})
	if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != "nope" {
		t.Errorf("trailers-only error: %v", err)
	}

	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		msg := bytes.Repeat([]byte{byte(i)}, 1000*i)
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: msg}}); err != nil {
			t.Fatal(err)
		}
		in, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(in.GetPayload().GetBody(), msg) {
			t.Fatalf("message %d: %d bytes", i, len(in.GetPayload().GetBody()))
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("end of stream: %v", err)
	}
	if stream.Trailer().Get("x-stream-trailer")[0] != "bye" {
		t.Errorf("stream trailer %v", stream.Trailer())
	}

	// A streaming call ending in an error status.
	stream, err = client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&testpb.StreamingOutputCallRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.ResourceExhausted), Message: "full"}})
	if _, err := stream.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("stream error: %v", err)
	}
}

func TestWebSocketUpgrade(t *testing.T) {
	// A raw upstream that accepts the upgrade and echoes bytes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := nethttp.ReadRequest(br)
		if err != nil || req.Header.Get("upgrade") != "websocket" {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
		io.Copy(c, br)
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	e := newEnv(t, hcmYAML("ws", "upgrade_configs: [{ upgrade_type: websocket }]\n"), cluster(t, "ws", false, ln.Addr().String()))

	c := dialRaw(t, e.addr)
	io.WriteString(c, "GET /chat HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || !strings.EqualFold(resp.Header.Get("upgrade"), "websocket") {
		t.Fatalf("upgrade answered %d %v", resp.StatusCode, resp.Header)
	}
	for i := range 5 {
		msg := fmt.Sprintf("frame %d", i)
		io.WriteString(c, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("tunnel: %q %v", buf, err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("after close: %q", rest)
	}

	// Without upgrade_configs, an upgrade is refused.
	e2 := newEnv(t, hcmYAML("ws", ""), cluster(t, "ws", false, ln.Addr().String()))
	got := rawExchange(t, e2.addr, "GET /chat HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", 2*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.1 403 ") {
		t.Errorf("upgrade without upgrade_configs: %q", got)
	}
}

func TestDrain(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, "ok")
	}))
	e := newEnv(t, hcmYAML("backend", ""), cluster(t, "backend", false, up))
	// An HTTP/1.1 connection and an HTTP/2 one, both open, and a third
	// connection, idle when skiff shuts down.
	c1, br := dialKeepAlive(t, e.addr)
	_, fr := dialH2(t, e.addr)
	_, br3 := dialKeepAlive(t, e.addr)

	e.drain(false) // a filter chain changed
	e.waitStat("http.ingress.downstream_cx_drain_close", 3)
	// HTTP/1.1: the idle connection stays open, as in Envoy, and its next
	// response says "connection: close" (which ReadResponse turns into
	// resp.Close, taking the header away); then the connection closes.
	time.Sleep(50 * time.Millisecond) // (a connection closed by the drain would be closed by now)
	io.WriteString(c1, "GET / HTTP/1.1\r\nhost: a\r\n\r\n")
	if resp, err := nethttp.ReadResponse(br, nil); err != nil || !resp.Close {
		t.Errorf("HTTP/1.1 after the drain: %v, %v; want a response with connection: close", resp, err)
	} else if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
		t.Errorf("HTTP/1.1 after the drain: body %q", b)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the connection: close response: %v, want EOF", err)
	}
	// At a shutdown, an idle connection closes at once.
	e.drain(true)
	if _, err := br3.ReadByte(); err != io.EOF {
		t.Errorf("an idle connection at a shutdown: %v, want EOF", err)
	}
	// HTTP/2: GOAWAY.
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY: %v", err)
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			break
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			fr.WriteSettingsAck()
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			fr.WritePing(true, p.Data)
		}
	}
	e.waitStat("http.ingress.downstream_cx_drain_close", 3)
}

// TestRequestHeadersTimeout: a request head not complete within
// request_headers_timeout gets 408 on HTTP/1.1 and RST_STREAM(NO_ERROR) on
// HTTP/2 (whose connection goes on), and counts
// downstream_rq_header_timeout either way.
func TestRequestHeadersTimeout(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	e := newEnv(t, "codec_type: AUTO\nrequest_headers_timeout: 0.2s\n"+hcmYAML("up", ""), cluster(t, "up", false, up))

	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /slow HTTP/1.1\r\nhost: a\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := nethttp.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 408 {
		t.Fatalf("HTTP/1.1: %v %v, want 408", resp, err)
	}
	e.waitStat("http.ingress.downstream_rq_header_timeout", 1)

	h2c, fr := dialH2(t, e.addr)
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2RequestBlock("a", "/stalled")[:4], EndStream: true})
	_ = h2c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("HTTP/2: %v before RST_STREAM", err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.StreamID != 1 || rst.ErrCode != http2.ErrCodeNo {
				t.Fatalf("HTTP/2: %v, want RST_STREAM(NO_ERROR) on stream 1", rst)
			}
			break
		}
	}
	e.waitStat("http.ingress.downstream_rq_header_timeout", 2)
}

// TestH2ClientResetInterruptsUpstream: an HTTP/2 client's RST_STREAM reaches
// the upstream request it was waiting on (its HTTP/1.1 connection is closed),
// and the stream counts as reset by the client and is logged as Envoy logs it
// (DR, "http2.remote_reset").
func TestH2ClientResetInterruptsUpstream(t *testing.T) {
	arrived, gone := make(chan struct{}), make(chan struct{})
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		close(arrived)
		select {
		case <-r.Context().Done():
			close(gone)
		case <-time.After(10 * time.Second):
		}
	}))
	logPath := t.TempDir() + "/access.log"
	e := newEnv(t, "codec_type: HTTP2\n"+hcmYAML("up", accessLogYAML(logPath, `%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESPONSE_CODE_DETAILS%\n`)),
		cluster(t, "up", false, up))
	_, fr := dialH2(t, e.addr)
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2RequestBlock("a", "/wait"), EndStream: true, EndHeaders: true})
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}
	_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request was not interrupted by the client's reset")
	}
	e.waitStat("http.ingress.downstream_rq_rx_reset", 1)
	// Envoy: DownstreamRemoteReset, with the codec's details.
	if log := waitLog(logPath, 1); log != "0 DR DownstreamRemoteReset http2.remote_reset\n" {
		t.Errorf("access log %q", log)
	}
}

// TestH2UpstreamResetAfterResponseStarted: an upstream connection that
// closes halfway through the response body resets the HTTP/2 client's stream
// with RST_STREAM(NO_ERROR), as Envoy's codec does for every reset reason but
// a refused stream or a CONNECT error.
func TestH2UpstreamResetAfterResponseStarted(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		c, bw, err := nethttp.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
		_ = bw.Flush()
		c.Close()
	}))
	e := newEnv(t, "codec_type: HTTP2\n"+hcmYAML("up", ""), cluster(t, "up", false, up))
	_, fr := dialH2(t, e.addr)
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2RequestBlock("a", "/"), EndStream: true, EndHeaders: true})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("HTTP/2: %v before RST_STREAM", err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.StreamID != 1 || rst.ErrCode != http2.ErrCodeNo {
				t.Fatalf("HTTP/2: %v, want RST_STREAM(NO_ERROR) on stream 1", rst)
			}
			break
		}
	}
}

// TestGRPCStats: the grpc_stats filter counts each gRPC call that ends with
// a grpc-status in its cluster's stats (success for status 0, failure
// otherwise; a trailers-only answer included), and the counters go with the
// cluster when it is removed.
func TestGRPCStats(t *testing.T) {
	e := grpcStatsEnv(t, "emit_filter_state: true")
	conn, client, ctx := grpcClient(t, e.addr)
	for range 3 {
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "nope"}})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("trailers-only error: %v", err)
	}
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&testpb.StreamingOutputCallRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.ResourceExhausted), Message: "full"}})
	if _, err := stream.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream error: %v", err)
	}
	e.waitStat("cluster.grpc.grpc.total", 5)
	e.waitStat("cluster.grpc.grpc.success", 3)
	e.waitStat("cluster.grpc.grpc.failure", 2)
	// Messages: a request and a response each for the three calls, a
	// request for the trailers-only error and one for the failed stream.
	e.waitStat("cluster.grpc.grpc.request_message_count", 5)
	e.waitStat("cluster.grpc.grpc.response_message_count", 3)

	// A streaming call's messages count as they go, not at its end.
	echo := echoMessages(t, ctx, client, 2)
	e.waitStat("cluster.grpc.grpc.request_message_count", 7)
	e.waitStat("cluster.grpc.grpc.response_message_count", 5)
	if v, _ := e.st.Value("cluster.grpc.grpc.total"); v != 5 {
		t.Errorf("grpc.total = %d while a call is under way, want 5", v)
	}
	echo.CloseSend()
	if _, err := echo.Recv(); err != io.EOF {
		t.Fatalf("stream end: %v", err)
	}
	e.waitStat("cluster.grpc.grpc.total", 6)

	// Removed with its cluster (once its pooled upstream connections,
	// which hold references to it, are closed).
	conn.Close()
	e.pools.Close()
	e.clusters.Set(nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := e.st.Value("cluster.grpc.grpc.total"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cluster.grpc.grpc.total outlived its cluster")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// grpcStatsEnv is a connection manager routing everything to a gRPC echo
// upstream (cluster grpc, HTTP/2) through grpc_stats configured with cfg,
// YAML fields of its FilterConfig.
func grpcStatsEnv(t *testing.T, cfg string) *env {
	up := grpcecho.Start(t)
	return newEnv(t, `
stat_prefix: ingress
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/" }
      route: { cluster: grpc }
http_filters:
- name: envoy.filters.http.grpc_stats
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig
    `+cfg+`
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`, cluster(t, "grpc", true, up))
}

// echoMessages opens a FullDuplexCall and exchanges n messages on it,
// leaving it open.
func echoMessages(t *testing.T, ctx context.Context, client testpb.TestServiceClient, n int) testpb.TestService_FullDuplexCallClient {
	t.Helper()
	echo, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := echo.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("y")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := echo.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	return echo
}

// TestGRPCStatsPerMethod: stats_for_all_methods counts each method under
// grpc.<service>.<method>. of its cluster, as Envoy; an
// individual_method_stats_allowlist does so for the methods it lists and
// counts the others in the common grpc. set.
func TestGRPCStatsPerMethod(t *testing.T) {
	for _, tc := range []struct {
		name, cfg     string
		unary, stream string // where UnaryCall and FullDuplexCall are counted
	}{
		{"all methods", "stats_for_all_methods: true",
			"cluster.grpc.grpc.grpc.testing.TestService.UnaryCall.", "cluster.grpc.grpc.grpc.testing.TestService.FullDuplexCall."},
		{"dots replaced", "stats_for_all_methods: true\n    replace_dots_in_grpc_service_name: true",
			"cluster.grpc.grpc.grpc_testing_TestService.UnaryCall.", "cluster.grpc.grpc.grpc_testing_TestService.FullDuplexCall."},
		{"allowlist", "individual_method_stats_allowlist: { services: [{ name: grpc.testing.TestService, method_names: [UnaryCall] }] }",
			"cluster.grpc.grpc.grpc.testing.TestService.UnaryCall.", "cluster.grpc.grpc."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := grpcStatsEnv(t, tc.cfg)
			_, client, ctx := grpcClient(t, e.addr)
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("x")}}); err != nil {
				t.Fatal(err)
			}
			echo := echoMessages(t, ctx, client, 2)
			echo.CloseSend()
			if _, err := echo.Recv(); err != io.EOF {
				t.Fatalf("stream end: %v", err)
			}
			e.waitStat(tc.unary+"success", 1)
			e.waitStat(tc.unary+"request_message_count", 1)
			e.waitStat(tc.stream+"success", 1)
			e.waitStat(tc.stream+"request_message_count", 2)
			e.waitStat(tc.stream+"response_message_count", 2)
			if tc.stream != "cluster.grpc.grpc." {
				if v, _ := e.st.Value("cluster.grpc.grpc.total"); v != 0 {
					t.Errorf("cluster.grpc.grpc.total = %d with every method counted on its own", v)
				}
			}
		})
	}
}

// dialRaw opens a TCP connection to addr, closed when the test ends, with
// its deadline 10 s away, for a test that speaks HTTP on it itself.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// dialH2 opens an HTTP/2 connection to addr for a test that writes and reads
// frames itself: the client preface and SETTINGS are sent. Its deadline is
// 10 s away.
func dialH2(t *testing.T, addr string) (net.Conn, *http2.Framer) {
	t.Helper()
	c := dialRaw(t, addr)
	_, _ = io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	_ = fr.WriteSettings()
	return c, fr
}

// dialKeepAlive opens an HTTP/1.1 connection to addr and makes one
// keep-alive exchange on it, which must not say close.
func dialKeepAlive(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c := dialRaw(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET / HTTP/1.1\r\nhost: a\r\n\r\n")
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil || resp.Close {
		t.Fatalf("before the drain: %v %v", resp, err)
	}
	io.ReadAll(resp.Body)
	return c, br
}

// grpcClient is a grpc-go TestService client of skiff at addr, and a context
// for its calls that ends within 10 s; the test's cleanup closes both.
func grpcClient(t *testing.T, addr string) (*grpc.ClientConn, testpb.TestServiceClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return conn, testpb.NewTestServiceClient(conn), ctx
}

// TestRouteUpgradeConfigs: a route's upgrade_configs allow or refuse an
// upgrade type whatever the connection manager's say, as Envoy decides it
// once the route is known; a route without them follows the manager.
func TestRouteUpgradeConfigs(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, "upgrade="+r.Header.Get("upgrade"))
	}))
	routes := func(hcmUpgrades string) string {
		return `
stat_prefix: ingress
` + hcmUpgrades + `
route_config:
  name: local
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/on" }
      route: { cluster: up, upgrade_configs: [{ upgrade_type: WebSocket }] }
    - match: { prefix: "/off" }
      route: { cluster: up, upgrade_configs: [{ upgrade_type: websocket, enabled: false }] }
    - match: { prefix: "/" }
      route: { cluster: up }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	}
	for _, tc := range []struct {
		hcm, path, want string
	}{
		{"", "/on", "upgrade=websocket"},
		{"", "/off", "HTTP/1.1 403 "},
		{"", "/plain", "HTTP/1.1 403 "},
		{"upgrade_configs: [{ upgrade_type: websocket }]", "/off", "HTTP/1.1 403 "},
		{"upgrade_configs: [{ upgrade_type: websocket }]", "/plain", "upgrade=websocket"},
		{"upgrade_configs: [{ upgrade_type: websocket, enabled: false }]", "/on", "upgrade=websocket"},
	} {
		e := newEnv(t, routes(tc.hcm), cluster(t, "up", false, up))
		got := rawExchange(t, e.addr, "GET "+tc.path+" HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade, close\r\n\r\n", 5*time.Second)
		if !strings.Contains(got, tc.want) {
			t.Errorf("manager %q, %s: %q, want %q", tc.hcm, tc.path, got, tc.want)
		}
	}
}

// TestDrainDecidedAsTheResponseGoesOut: the drain's decision to end a
// connection is taken as a response head goes out, as Envoy's encodeHeaders
// takes it: with the gradual strategy, a request that began while the draw
// still said no gets "connection: close" on its response if the draw says
// yes by then (it was decided when the request began, so the connection
// went on for another request).
func TestDrainDecidedAsTheResponseGoesOut(t *testing.T) {
	got, release := make(chan struct{}, 1), make(chan struct{})
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.URL.Path == "/slow" {
			got <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	}))
	e := newEnv(t, hcmYAML("backend", ""), cluster(t, "backend", false, up))
	e.drainSig.gradual.Store(true)
	c, br := dialKeepAlive(t, e.addr)
	e.drain(false) // the draw says no: the connection goes on
	io.WriteString(c, "GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
	<-got
	e.drainSig.closeNow.Store(true) // later in the drain time it says yes
	close(release)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil || !resp.Close {
		t.Fatalf("response of the request under way: %v, %v; want connection: close", resp, err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
		t.Errorf("body %q", b)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the connection: close response: %v, want EOF", err)
	}
	e.waitStat("http.ingress.downstream_cx_drain_close", 1)
}
