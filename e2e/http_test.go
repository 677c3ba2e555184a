package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/internal/grpcecho"
	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/xdstest"
)

// httpBackend is a net/http server (HTTP/1.1 and h2c) on loopback, shut
// down by the test's cleanup.
func httpBackend(t testing.TB, h nethttp.Handler) string {
	t.Helper()
	return httpBackendAt(t, "127.0.0.1:0", h)
}

// httpBackendAt is httpBackend listening on addr.
func httpBackendAt(t testing.TB, addr string, h nethttp.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &nethttp.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	srv.Protocols = new(nethttp.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	})
	return ln.Addr().String()
}

// echoHTTP answers with what it saw and echoes the body, full duplex, with
// the body's digest and the request's trailer in the response trailers.
func echoHTTP(name string) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		_ = nethttp.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Trailer", "x-sha, x-req-trailer")
		w.Header().Set("x-upstream", name)
		w.Header().Set("x-seen-path", r.URL.RequestURI())
		w.Header().Set("x-seen-host", r.Host)
		w.Header().Set("x-seen-added", r.Header.Get("x-added"))
		w.Header().Set("x-seen-removed", r.Header.Get("x-removed"))
		w.Header().Set("x-seen-request-id", r.Header.Get("x-request-id"))
		w.Header().Set("x-seen-xff", r.Header.Get("x-forwarded-for"))
		w.Header().Set("x-remove-me", "1")
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(w, h), r.Body); err != nil {
			return
		}
		w.Header().Set("x-sha", fmt.Sprintf("%x", h.Sum(nil)))
		w.Header().Set("x-req-trailer", r.Trailer.Get("x-client-trailer"))
	})
}

// wsUpstream accepts WebSocket upgrades and echoes what follows.
func wsUpstream(t testing.TB) string {
	t.Helper()
	return nettest.Serve(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := nethttp.ReadRequest(br)
		if err != nil || !strings.EqualFold(req.Header.Get("upgrade"), "websocket") {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
		io.Copy(c, br)
		c.(*net.TCPConn).CloseWrite()
	})
}

func sock(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("{ socket_address: { address: %q, port_value: %s } }", host, port)
}

func staticCluster(name string, http2 bool, addrs ...string) string {
	var eps []string
	for _, a := range addrs {
		eps = append(eps, "{ endpoint: { address: "+sock(a)+" } }")
	}
	s := fmt.Sprintf(`  - name: %s
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: %s
      endpoints: [{ lb_endpoints: [%s] }]
`, name, name, strings.Join(eps, ", "))
	if http2 {
		s += `    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
`
	}
	return s
}

// h1Trailers, after a staticCluster, lets the cluster's HTTP/1.1 responses
// keep their trailers (http_protocol_options.enable_trailers).
const h1Trailers = `    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http_protocol_options: { enable_trailers: true } }
`

// httpFixture is skiff with an HTTP listener in front of test upstreams.
type httpFixture struct {
	p       *Proxy
	addr    string
	logPath string
	flaky   atomic.Int32
	slow    chan struct{}
}

func startHTTPFixture(t *testing.T) *httpFixture {
	f := &httpFixture{slow: make(chan struct{})}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(f.slow) }) })
	echoA := httpBackend(t, echoHTTP("a"))
	echoB := httpBackend(t, echoHTTP("b"))
	flaky := httpBackend(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.Copy(io.Discard, r.Body)
		if f.flaky.Add(-1) >= 0 {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "recovered")
	}))
	slow := httpBackend(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		select {
		case <-f.slow:
		case <-r.Context().Done():
		}
	}))
	grpcAddr := grpcecho.Start(t)
	ws := wsUpstream(t)
	f.logPath = filepath.Join(t.TempDir(), "access.log")

	cfg := fmt.Sprintf(`node: { id: e2e-http, cluster: e2e }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          max_request_headers_kb: 8
          http_protocol_options: { accept_http_10: true, enable_trailers: true }
          upgrade_configs: [{ upgrade_type: websocket }]
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %q
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            name: local
            response_headers_to_add: [{ header: { key: x-config, value: "yes" } }]
            virtual_hosts:
            - name: other
              domains: ["other.example", "*.other.example"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: echo_b }
            - name: default
              domains: ["*"]
              request_headers_to_add: [{ header: { key: x-added, value: "%%PROTOCOL%%" } }]
              request_headers_to_remove: [x-removed]
              routes:
              - match: { prefix: "/", headers: [{ name: x-canary, string_match: { exact: "1" } }] }
                route: { cluster: echo_b }
              - match: { prefix: "/old/" }
                route: { cluster: echo_a, prefix_rewrite: "/new/" }
                response_headers_to_remove: [x-remove-me]
              - match: { prefix: "/weighted" }
                route: { weighted_clusters: { clusters: [{ name: echo_a, weight: 50 }, { name: echo_b, weight: 50 }] } }
              - match: { prefix: "/flaky" }
                route: { cluster: flaky, retry_policy: { retry_on: "5xx", num_retries: 3, retry_back_off: { base_interval: 0.001s } } }
              - match: { prefix: "/connect" }
                route: { cluster: half_refused, retry_policy: { retry_on: "connect-failure", num_retries: 2, retry_back_off: { base_interval: 0.001s } } }
              - match: { prefix: "/slow" }
                route: { cluster: slow, timeout: 0.3s }
              - match: { prefix: "/redirect" }
                redirect: { https_redirect: true, host_redirect: "secure.example" }
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "straight from skiff" } }
              - match: { prefix: "/ws" }
                route: { cluster: ws }
              - match: { prefix: "/grpc.testing." }
                route: { cluster: grpc, timeout: 0s }
              - match: { prefix: "/" }
                route: { cluster: echo_a }
  clusters:
%s%s%s%s%s%s%s`, f.logPath,
		staticCluster("echo_a", false, echoA)+h1Trailers, // trailers pass on HTTP/1.1 only when both sides enable them, as in Envoy
		staticCluster("echo_b", false, echoB),
		staticCluster("flaky", false, flaky),
		staticCluster("half_refused", false, refusingAddr(t), echoA),
		staticCluster("slow", false, slow),
		staticCluster("ws", false, ws),
		staticCluster("grpc", true, grpcAddr))
	f.p = startSkiff(t, cfg, "--drain-time", "5s")
	f.addr = f.p.Addr(t, "http")
	return f
}

func h1Client(t testing.TB) *nethttp.Client {
	tr := &nethttp.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &nethttp.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*nethttp.Request, []*nethttp.Request) error { return nethttp.ErrUseLastResponse }}
}

func h2cClient(t testing.TB) *nethttp.Client {
	// One connection, its streams multiplexed.
	tr := &nethttp.Transport{DisableCompression: true, MaxConnsPerHost: 1}
	tr.Protocols = new(nethttp.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return &nethttp.Client{Transport: tr, Timeout: 30 * time.Second}
}

func doGet(t testing.TB, c *nethttp.Client, url string, hdr ...string) (*nethttp.Response, string) {
	t.Helper()
	req, err := nethttp.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// rawConn is a client connection for hand-written HTTP/1.x.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func rawDial(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

func (c *rawConn) response(t testing.TB) (*nethttp.Response, string) {
	t.Helper()
	resp, err := nethttp.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// TestHTTP runs HTTP/1.1 and HTTP/2 traffic through skiff's HTTP connection
// manager and router to real upstreams.
func TestHTTP(t *testing.T) {
	t.Parallel()
	f := startHTTPFixture(t)
	base := "http://" + f.addr

	t.Run("keep-alive", func(t *testing.T) {
		c := rawDial(t, f.addr)
		for i := range 5 {
			fmt.Fprintf(c, "GET /ka/%d HTTP/1.1\r\nhost: a\r\nuser-agent: e2e\r\n\r\n", i)
			resp, _ := c.response(t)
			if resp.StatusCode != 200 || resp.Header.Get("x-seen-path") != fmt.Sprintf("/ka/%d", i) || resp.Close {
				t.Fatalf("request %d on one connection: %d %v", i, resp.StatusCode, resp.Header)
			}
			if resp.Header.Get("server") != "envoy" || resp.Header.Get("x-envoy-upstream-service-time") == "" || resp.Header.Get("x-config") != "yes" {
				t.Errorf("headers %v", resp.Header)
			}
			if id := resp.Header.Get("x-seen-request-id"); len(id) != 36 {
				t.Errorf("x-request-id %q", id)
			}
		}
	})

	t.Run("chunked", func(t *testing.T) {
		body := randomBytes(7, 1<<20+13)
		req, _ := nethttp.NewRequest("POST", base+"/upload", io.MultiReader(bytes.NewReader(body)))
		req.Trailer = nethttp.Header{"X-Client-Trailer": nil}
		tr := &trailerBody{r: io.NopCloser(bytes.NewReader(body)), req: req}
		req.Body = tr
		resp, err := h1Client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(got, body) || resp.Trailer.Get("x-sha") != fmt.Sprintf("%x", sha256.Sum256(body)) || resp.Trailer.Get("x-req-trailer") != "sent" {
			t.Errorf("chunked echo: %d bytes, trailers %v", len(got), resp.Trailer)
		}
	})

	t.Run("pipelining", func(t *testing.T) {
		c := rawDial(t, f.addr)
		io.WriteString(c, "GET /p/1 HTTP/1.1\r\nhost: a\r\n\r\nPOST /p/2 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabcGET /p/3 HTTP/1.1\r\nhost: a\r\n\r\n")
		for i, want := range []string{"", "abc", ""} {
			resp, body := c.response(t)
			if resp.Header.Get("x-seen-path") != fmt.Sprintf("/p/%d", i+1) || body != want {
				t.Errorf("pipelined %d: %v %q", i+1, resp.Header.Get("x-seen-path"), body)
			}
		}
	})

	t.Run("100-continue", func(t *testing.T) {
		c := rawDial(t, f.addr)
		io.WriteString(c, "POST /c HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
		line, _ := c.br.ReadString('\n')
		if !strings.HasPrefix(line, "HTTP/1.1 100 Continue") {
			t.Fatalf("got %q before the body", line)
		}
		c.br.ReadString('\n')
		io.WriteString(c, "body")
		if resp, body := c.response(t); resp.StatusCode != 200 || body != "body" {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
	})

	t.Run("HTTP/1.0", func(t *testing.T) {
		c := rawDial(t, f.addr)
		io.WriteString(c, "GET /ten HTTP/1.0\r\nhost: a\r\n\r\n")
		resp, _ := c.response(t)
		if resp.StatusCode != 200 || !resp.Close {
			t.Errorf("HTTP/1.0: %d close=%v", resp.StatusCode, resp.Close)
		}
	})

	t.Run("websocket", func(t *testing.T) {
		c := rawDial(t, f.addr)
		io.WriteString(c, "GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
		resp, err := nethttp.ReadResponse(c.br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		for i := range 10 {
			msg := fmt.Sprintf("message %d through the tunnel", i)
			io.WriteString(c, msg)
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(c.br, buf); err != nil || string(buf) != msg {
				t.Fatalf("tunnel: %q %v", buf, err)
			}
		}
		c.Conn.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(c.br); err != nil || len(rest) != 0 {
			t.Errorf("tunnel end: %q %v", rest, err)
		}
	})

	t.Run("h2c many streams", func(t *testing.T) {
		c := h2cClient(t)
		var wg sync.WaitGroup
		var failed atomic.Int32
		for i := range 100 {
			wg.Go(func() {
				resp, err := c.Get(fmt.Sprintf("%s/h2/%d", base, i))
				if err != nil {
					failed.Add(1)
					return
				}
				io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != 2 || resp.Header.Get("x-seen-path") != fmt.Sprintf("/h2/%d", i) {
					failed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			t.Errorf("%d of 100 streams failed", n)
		}
	})

	t.Run("grpc", func(t *testing.T) {
		conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		client := testpb.NewTestServiceClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var trl metadata.MD
		payload := bytes.Repeat([]byte("skiff"), 100000)
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: payload}}, grpc.Trailer(&trl))
		if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), payload) || len(trl.Get("x-unary-trailer")) == 0 {
			t.Fatalf("unary: %v, trailer %v", err, trl)
		}
		_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.PermissionDenied), Message: "no"}})
		if s, _ := status.FromError(err); s.Code() != codes.PermissionDenied || s.Message() != "no" {
			t.Errorf("status: %v", err)
		}
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 30 {
			msg := bytes.Repeat([]byte{byte(i)}, 3000*i)
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: msg}}); err != nil {
				t.Fatal(err)
			}
			in, err := stream.Recv()
			if err != nil || !bytes.Equal(in.GetPayload().GetBody(), msg) {
				t.Fatalf("bidi message %d: %v", i, err)
			}
		}
		stream.CloseSend()
		if _, err := stream.Recv(); err != io.EOF {
			t.Errorf("bidi end: %v", err)
		}
		if len(stream.Trailer().Get("x-stream-trailer")) == 0 {
			t.Errorf("bidi trailers %v", stream.Trailer())
		}
	})

	t.Run("routing", func(t *testing.T) {
		c := h1Client(t)
		for _, tc := range []struct {
			path string
			hdr  []string
			want string
		}{
			{"/x", nil, "a"},
			{"/x", []string{"host", "www.other.example"}, "b"},
			{"/x", []string{"x-canary", "1"}, "b"},
		} {
			resp, _ := doGet(t, c, base+tc.path, tc.hdr...)
			if got := resp.Header.Get("x-upstream"); got != tc.want {
				t.Errorf("%s %v: upstream %q, want %q", tc.path, tc.hdr, got, tc.want)
			}
		}
		seen := map[string]int{}
		for range 60 {
			resp, _ := doGet(t, c, base+"/weighted")
			seen[resp.Header.Get("x-upstream")]++
		}
		if seen["a"] < 10 || seen["b"] < 10 {
			t.Errorf("weighted clusters: %v", seen)
		}
	})

	t.Run("header mutations", func(t *testing.T) {
		resp, _ := doGet(t, h1Client(t), base+"/old/thing?q=1", "x-removed", "gone")
		if resp.Header.Get("x-seen-path") != "/new/thing?q=1" || resp.Header.Get("x-seen-added") != "HTTP/1.1" ||
			resp.Header.Get("x-seen-removed") != "" || resp.Header.Get("x-remove-me") != "" || resp.Header.Get("x-config") != "yes" {
			t.Errorf("headers %v", resp.Header)
		}
	})

	t.Run("retries", func(t *testing.T) {
		f.flaky.Store(2)
		resp, body := doGet(t, h1Client(t), base+"/flaky")
		if resp.StatusCode != 200 || body != "recovered" {
			t.Errorf("5xx retried: %d %q", resp.StatusCode, body)
		}
		for range 4 {
			if resp, _ := doGet(t, h1Client(t), base+"/connect"); resp.StatusCode != 200 {
				t.Errorf("connect-failure retried: %d", resp.StatusCode)
			}
		}
	})

	t.Run("timeout", func(t *testing.T) {
		resp, body := doGet(t, h1Client(t), base+"/slow")
		if resp.StatusCode != 504 || body != "upstream request timeout" {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
	})

	t.Run("redirect and direct response", func(t *testing.T) {
		resp, _ := doGet(t, h1Client(t), base+"/redirect/x?y")
		if resp.StatusCode != 301 || resp.Header.Get("location") != "https://secure.example/redirect/x?y" {
			t.Errorf("redirect: %d %q", resp.StatusCode, resp.Header.Get("location"))
		}
		resp, body := doGet(t, h1Client(t), base+"/direct")
		if resp.StatusCode != 200 || body != "straight from skiff" {
			t.Errorf("direct: %d %q", resp.StatusCode, body)
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		c := rawDial(t, f.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nhost: a\r\nx-big: "+strings.Repeat("z", 10<<10)+"\r\n\r\n")
		if resp, _ := c.response(t); resp.StatusCode != 431 {
			t.Errorf("oversized headers: %d", resp.StatusCode)
		}
		c = rawDial(t, f.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd")
		if resp, _ := c.response(t); resp.StatusCode != 400 {
			t.Errorf("conflicting content-length: %d", resp.StatusCode)
		}
	})

	t.Run("access log", func(t *testing.T) {
		// Envoy's default format, one line per exchange.
		line := regexp.MustCompile(`^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /ka/0 HTTP/1\.1" 200 - 0 \d+ \d+ \d+ "-" "e2e" "[0-9a-f-]{36}" "a" "127\.0\.0\.1:\d+"$`)
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(f.logPath)
			for _, l := range strings.Split(string(b), "\n") {
				if line.MatchString(l) {
					if !strings.Contains(string(b), `"GET /slow HTTP/1.1" 504 UT `) || !strings.Contains(string(b), `"- - HTTP/1.1" 431 DPE `) {
						if time.Now().Before(deadline) {
							break
						}
						t.Errorf("the log lacks the 504 UT or 431 DPE lines:\n%s", b)
					}
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no access log line like %s in:\n%s", line, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

type trailerBody struct {
	r   io.ReadCloser
	req *nethttp.Request
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.req.Trailer.Set("X-Client-Trailer", "sent")
	}
	return n, err
}
func (b *trailerBody) Close() error { return b.r.Close() }

// TestHTTPDrain: on SIGTERM, an HTTP/1.1 keep-alive connection gets
// "connection: close" on its next response and an HTTP/2 one gets GOAWAY.
func TestHTTPDrain(t *testing.T) {
	t.Parallel()
	up := httpBackend(t, echoHTTP("a"))
	cfg := fmt.Sprintf(`static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: a } }] }
  clusters:
%s`, staticCluster("a", false, up))
	p := startSkiff(t, cfg, "--drain-time", "10s")
	addr := p.Addr(t, "http")
	c1 := rawDial(t, addr)
	io.WriteString(c1, "GET /before HTTP/1.1\r\nhost: a\r\n\r\n")
	if resp, _ := c1.response(t); resp.Close {
		t.Fatal("connection: close before the drain")
	}
	// A request in flight when the drain starts: its body arrives after.
	io.WriteString(c1, "POST /during HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n")
	c2 := rawDial(t, addr)
	fr := http2.NewFramer(c2, c2.br)
	io.WriteString(c2, http2.ClientPreface)
	fr.WriteSettings()
	time.Sleep(100 * time.Millisecond)

	p.Signal(t, syscall.SIGTERM)
	p.WaitMsg(t, 10*time.Second, "shutting down: listeners closed, draining connections")
	io.WriteString(c1, "body")
	resp, body := c1.response(t)
	if !resp.Close || body != "body" {
		t.Errorf("HTTP/1.1 during the drain: close=%v %q", resp.Close, body)
	}
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("HTTP/2: no GOAWAY: %v", err)
		}
		if _, ok := fm.(*http2.GoAwayFrame); ok {
			break
		}
		if s, ok := fm.(*http2.SettingsFrame); ok && !s.IsAck() {
			fr.WriteSettingsAck()
		}
		if ping, ok := fm.(*http2.PingFrame); ok && !ping.IsAck() {
			fr.WritePing(true, ping.Data)
		}
	}
	c1.Close()
	c2.Close()
	if code := p.Wait(t, exitTimeout); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// TestHTTPRDS: routes come over RDS; an RDS update changes routing on a
// connection that stays open, and the listener is not rebuilt.
func TestHTTPRDS(t *testing.T) {
	t.Parallel()
	blue := httpBackend(t, echoHTTP("blue"))
	green := httpBackend(t, echoHTTP("green"))
	cp := xdstest.Start(t, "127.0.0.1:0", xdsNode)
	// /teapot aborts with the status the route's typed_per_filter_config
	// gives the fault filter, which has no fault of its own.
	teapot := func(status uint32) map[string]*anypb.Any {
		f, _ := anypb.New(&faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_HttpStatus{HttpStatus: status},
			Percentage: &typev3.FractionalPercent{Numerator: 100},
		}})
		return map[string]*anypb.Any{"envoy.filters.http.fault": f}
	}
	teapotStatus := uint32(418)
	routes := func(cluster string) *routev3.RouteConfiguration {
		return &routev3.RouteConfiguration{Name: "web", VirtualHosts: []*routev3.VirtualHost{{
			Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:                &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/teapot"}},
				Action:               &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
				TypedPerFilterConfig: teapot(teapotStatus),
			}, {
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
			}},
		}}}
	}
	rtr, _ := anypb.New(&routerv3.Router{})
	flt, _ := anypb.New(&faultv3.HTTPFault{})
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: "ingress",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "web",
			ConfigSource: xdsEDSCluster("x").GetEdsClusterConfig().GetEdsConfig()}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.fault", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: flt}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: rtr}},
		},
	})
	lis := &listenerv3.Listener{
		Name:    "web",
		Address: xdsAddress("127.0.0.1:0"),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}
	push := func(cluster string) {
		cp.Push(map[resourcev3.Type][]types.Resource{
			resourcev3.ClusterType:  {xdsEDSCluster("blue"), xdsEDSCluster("green")},
			resourcev3.EndpointType: {xdsAssignment("blue", blue), xdsAssignment("green", green)},
			resourcev3.ListenerType: {lis},
			resourcev3.RouteType:    {routes(cluster)},
		})
	}
	push("blue")
	p := startSkiff(t, xdsBootstrap(cp.Addr(), false))
	addr := waitListener(t, p, "web")
	c := rawDial(t, addr)
	ask := func() string {
		io.WriteString(c, "GET / HTTP/1.1\r\nhost: a\r\n\r\n")
		resp, _ := c.response(t)
		return resp.Header.Get("x-upstream")
	}
	if got := ask(); got != "blue" {
		t.Fatalf("first route: %q", got)
	}
	io.WriteString(c, "GET /teapot HTTP/1.1\r\nhost: a\r\n\r\n")
	if resp, _ := c.response(t); resp.StatusCode != 418 {
		t.Fatalf("/teapot with the fault of its RDS typed_per_filter_config: %d, want 418", resp.StatusCode)
	}

	// An invalid per-filter config is NACKed, naming it; the last good
	// routes go on.
	teapotStatus = 99
	push("green")
	var nack string
	for n := 0; nack == ""; n++ {
		nack = cp.Request(resourcev3.RouteType, n).GetErrorDetail().GetMessage()
	}
	if !strings.Contains(nack, "typed_per_filter_config[envoy.filters.http.fault].abort.http_status") {
		t.Errorf("NACK of an invalid per-filter config: %q", nack)
	}
	if got := ask(); got != "blue" {
		t.Fatalf("after the NACK: %q, want the last good route", got)
	}
	teapotStatus = 418
	push("green")
	deadline := time.Now().Add(20 * time.Second)
	for ask() != "green" {
		if time.Now().After(deadline) {
			t.Fatal("the RDS update never changed routing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The same connection served both: the listener was not rebuilt.
	if n := strings.Count(p.Stderr(), `"msg":"listener bound"`); n != 1 {
		t.Errorf("listener bound %d times", n)
	}
}
