package router

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// down is a downstream stream: a request with an optional body, and the
// response recorded.
type down struct {
	req, trailers http.Header
	body          *bytes.Reader
	resp          http.Header
	out           bytes.Buffer
	ended, reset  bool
}

func newDown(method, path string, body []byte, kv ...string) *down {
	d := &down{}
	d.req.Add(http.Method, method)
	d.req.Add(http.Scheme, "http")
	d.req.Add(http.Authority, "example.com")
	d.req.Add(http.Path, path)
	for i := 0; i+1 < len(kv); i += 2 {
		d.req.Add(kv[i], kv[i+1])
	}
	if body != nil {
		d.req.AddUint("content-length", uint64(len(body)))
		d.body = bytes.NewReader(body)
	}
	return d
}

func (d *down) Header() *http.Header  { return &d.req }
func (d *down) EndedWithHeader() bool { return d.body == nil }
func (d *down) Read(p []byte) (int, error) {
	if d.body == nil {
		return 0, io.EOF
	}
	return d.body.Read(p)
}
func (d *down) Trailers() *http.Header { return &d.trailers }
func (d *down) WriteHeader(h *http.Header, end bool) error {
	h.CopyTo(&d.resp)
	d.ended = end
	return nil
}
func (d *down) Write(p []byte) (int, error)        { return d.out.Write(p) }
func (d *down) End() error                         { d.ended = true; return nil }
func (d *down) EndWithTrailers(*http.Header) error { d.ended = true; return nil }
func (d *down) Reset(http.ResetCode)               { d.reset = true }
func (d *down) Context() context.Context           { return context.Background() }
func (d *down) Protocol() string                   { return "HTTP/1.1" }

type fixture struct {
	r        *Router
	clusters *upstream.Manager
	st       *stats.Store
	table    *route.Table
}

func newFixture(t *testing.T, routes string, clusters map[string][]string) *fixture {
	t.Helper()
	var ys []string
	for name, addrs := range clusters {
		ys = append(ys, clusterYAML(name, "", addrs...))
	}
	return newFixtureWith(t, routes, &routerv3.Router{}, ys...)
}

// clusterYAML is a STATIC cluster of addrs, with extra fields (e.g.
// "lb_policy: RING_HASH, ").
func clusterYAML(name, extra string, addrs ...string) string {
	eps := ""
	for _, a := range addrs {
		ap := netip.MustParseAddrPort(a)
		eps += fmt.Sprintf("{ endpoint: { address: { socket_address: { address: %q, port_value: %d } } } },", ap.Addr(), ap.Port())
	}
	return fmt.Sprintf("{ name: %s, type: STATIC, %sconnect_timeout: 1s, load_assignment: { cluster_name: %s, endpoints: [{ lb_endpoints: [%s] }] } }", name, extra, name, eps)
}

// newFixtureWith is newFixture with the router's config and the clusters
// as YAML.
func newFixtureWith(t *testing.T, routes string, cfg *routerv3.Router, clusters ...string) *fixture {
	t.Helper()
	f := &fixture{st: stats.NewStore()}
	f.clusters = upstream.NewManager(f.st)
	var as []upstream.Assignment
	for _, y := range clusters {
		var pb clusterv3.Cluster
		if err := protoyaml.Unmarshal([]byte(y), &pb); err != nil {
			t.Fatal(err)
		}
		cfg, err := upstream.NewConfig(&pb)
		if err != nil {
			t.Fatal(err)
		}
		as = append(as, upstream.Static(cfg))
	}
	f.clusters.Set(as)
	var rc routev3.RouteConfiguration
	if err := protoyaml.Unmarshal([]byte(routes), &rc); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.table, err = route.Compile(&rc, route.Options{}); err != nil {
		t.Fatal(err)
	}
	flt, err := Factory{}.Create(cfg, &filter.Context{Clusters: f.clusters, Stats: f.st, HTTPStatPrefix: "http.t."})
	if err != nil {
		t.Fatal(err)
	}
	f.r = flt.(*Router)
	t.Cleanup(f.r.Close)
	return f
}

func (f *fixture) serve(d *down) *http.Exchange {
	e := http.NewExchange(context.Background(), d)
	if r := f.table.Match(e.Request, route.ExchangeRandom(e)); r != nil {
		e.Route = r
	}
	f.r.Serve(e)
	return e
}

// heldBackend answers 200 to each request once release is closed (or the
// request's context ends); release is closed at the latest when the test
// ends.
func heldBackend(t *testing.T) (addr string, release chan struct{}) {
	release = make(chan struct{})
	addr = backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	return addr, release
}

// routeAllToC is a route configuration sending every request to cluster c.
const routeAllToC = `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: c }
`

func backend(t *testing.T, h nethttp.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nethttp.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}

func TestRetriableStatusCodesAndBufferedBody(t *testing.T) {
	var n atomic.Int32
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b, _ := io.ReadAll(r.Body)
		if n.Add(1) < 3 {
			w.WriteHeader(418)
			return
		}
		w.Write(b)
	})
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route:
      cluster: c
      retry_policy: { retry_on: retriable-status-codes, retriable_status_codes: [418], num_retries: 5, retry_back_off: { base_interval: 0.001s } }
`, map[string][]string{"c": {up}})
	body := bytes.Repeat([]byte("b"), 100<<10)
	d := newDown("POST", "/", body)
	e := f.serve(d)
	if d.resp.Value(":status") != "200" || !bytes.Equal(d.out.Bytes(), body) {
		t.Fatalf("%q, %d bytes", d.resp.Value(":status"), d.out.Len())
	}
	if e.Info.UpstreamAttempts != 3 {
		t.Errorf("%d attempts", e.Info.UpstreamAttempts)
	}
	if v, _ := f.st.Value("cluster.c.upstream_rq_retry"); v != 2 {
		t.Errorf("upstream_rq_retry = %d", v)
	}
	// A body over the retry buffer is not retried.
	n.Store(0)
	big := bytes.Repeat([]byte("x"), RetryBufferLimit+1)
	d = newDown("POST", "/", big)
	f.serve(d)
	if d.resp.Value(":status") != "418" {
		t.Errorf("a body too large to keep was retried: %q", d.resp.Value(":status"))
	}
}

func TestRetryHeadersAndPerTryTimeout(t *testing.T) {
	var n atomic.Int32
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if n.Add(1) == 1 {
			time.Sleep(300 * time.Millisecond) // the first try times out
		}
		io.WriteString(w, r.Header.Get("x-envoy-expected-rq-timeout-ms"))
	})
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: c, timeout: 5s }
`, map[string][]string{"c": {up}})
	d := newDown("GET", "/", nil, "x-envoy-retry-on", "5xx", "x-envoy-max-retries", "2", "x-envoy-upstream-rq-per-try-timeout-ms", "100")
	f.serve(d)
	if d.resp.Value(":status") != "200" || d.out.String() != "100" {
		t.Errorf("%q %q", d.resp.Value(":status"), d.out.String())
	}
	if v, _ := f.st.Value("cluster.c.upstream_rq_per_try_timeout"); v != 1 {
		t.Errorf("upstream_rq_per_try_timeout = %d", v)
	}
}

func TestGRPCTimeout(t *testing.T) {
	up, release := heldBackend(t)
	defer close(release)
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: c, max_grpc_timeout: 10s }
`, map[string][]string{"c": {up}})
	d := newDown("POST", "/svc/M", nil, "content-type", "application/grpc", "grpc-timeout", "150m")
	start := time.Now()
	e := f.serve(d)
	if el := time.Since(start); el < 100*time.Millisecond || el > 3*time.Second {
		t.Errorf("timed out after %v", el)
	}
	if d.resp.Value("grpc-status") != "14" || e.Info.ResponseFlags&http.FlagUpstreamRequestTimeout == 0 {
		t.Errorf("%v flags %v", d.resp.String(), e.Info.ResponseFlags)
	}
}

// TestGRPCTimeoutHeaderRewritten: under max_grpc_timeout the upstream's
// grpc-timeout says the deadline skiff enforces (capped, or the per-try
// timeout), as Envoy's setTimeoutHeaders writes it, suppress_envoy_headers
// or not; a route with max_stream_duration leaves max_grpc_timeout aside.
func TestGRPCTimeoutHeaderRewritten(t *testing.T) {
	seen := make(chan string, 8)
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		seen <- r.Header.Get("grpc-timeout")
		w.Header().Set("content-type", "application/grpc")
		w.Header().Set("grpc-status", "0")
	})
	f := newFixtureWith(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/capped" }
    route: { cluster: c, max_grpc_timeout: 0.5s }
  - match: { prefix: "/try" }
    route: { cluster: c, max_grpc_timeout: 10s, retry_policy: { retry_on: reset, per_try_timeout: 0.2s } }
  - match: { prefix: "/new" }
    route: { cluster: c, max_grpc_timeout: 0.5s, max_stream_duration: { max_stream_duration: 60s } }
`, &routerv3.Router{SuppressEnvoyHeaders: true}, clusterYAML("c", "", up))
	for _, tc := range []struct{ path, sent, want string }{
		{"/capped/M", "5S", "500m"},
		{"/capped/M", "", "500m"},
		{"/try/M", "5S", "200m"},
		{"/new/M", "5S", "5S"},
	} {
		kv := []string{"content-type", "application/grpc"}
		if tc.sent != "" {
			kv = append(kv, "grpc-timeout", tc.sent)
		}
		f.serve(newDown("POST", tc.path, nil, kv...))
		if got := <-seen; got != tc.want {
			t.Errorf("%s with grpc-timeout %q: upstream got %q, want %q", tc.path, tc.sent, got, tc.want)
		}
	}
}

func TestUpstreamResetBeforeResponse(t *testing.T) {
	up := nettest.Serve(t, func(c net.Conn) {
		c.Read(make([]byte, 1024))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	f := newFixture(t, routeAllToC, map[string][]string{"c": {up}})
	d := newDown("POST", "/", []byte("x"))
	e := f.serve(d)
	if d.resp.Value(":status") != "503" || e.Info.ResponseFlags&http.FlagUpstreamConnectionTermination == 0 ||
		e.Info.ResponseCodeDetails != "upstream_reset_before_response_started{connection_termination}" {
		t.Errorf("%s flags %v details %q", d.resp.String(), e.Info.ResponseFlags, e.Info.ResponseCodeDetails)
	}
	if body := d.out.String(); body != "upstream connect error or disconnect/reset before headers. reset reason: connection termination" {
		t.Errorf("body %q", body)
	}
	if v, _ := f.st.Value("cluster.c.upstream_rq_rx_reset"); v != 1 {
		t.Errorf("upstream_rq_rx_reset = %d", v)
	}
}

func TestSteadyStateNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	// A raw upstream that allocates nothing per request (net/http would).
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
		buf := make([]byte, 4096)
		resp := []byte("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
		n := 0
		for {
			if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 {
				n = copy(buf, buf[i+4:n])
				if _, err := c.Write(resp); err != nil {
					return
				}
				continue
			}
			m, err := c.Read(buf[n:])
			if err != nil {
				return
			}
			n += m
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	f := newFixture(t, routeAllToC, map[string][]string{"c": {ln.Addr().String()}})
	// The pool closes its connection first, so the upstream goroutine ends.
	t.Cleanup(f.r.Close)
	d := newDown("GET", "/", nil)
	e := http.NewExchange(context.Background(), d)
	rt := f.table.Match(e.Request, route.ExchangeRandom(e))
	run := func() {
		d.resp.Reset()
		e.Reset(d)
		e.Route = rt
		d.out.Reset()
		f.r.Serve(e)
		if d.resp.Value(":status") != "200" {
			t.Fatal(d.resp.String())
		}
	}
	for range 50 {
		run()
	}
	// The x-envoy-expected-rq-timeout-ms and attempt headers go on the
	// request each time: the request header grows, then reuses its memory.
	if n := testing.AllocsPerRun(200, func() {
		d.req.Reset()
		d.req.Add(http.Method, "GET")
		d.req.Add(http.Scheme, "http")
		d.req.Add(http.Authority, "example.com")
		d.req.Add(http.Path, "/")
		run()
	}); n != 0 {
		t.Errorf("%v allocs per request", n)
	}
}

// TestUpstreamNames: with auto_sni, the upstream SNI is the request's host
// without its port, in lower case (or the override header's, when the
// request has it), none for an IP address; with auto_san_validation, the
// same host (IP addresses too) is the certificate's name to check.
func TestUpstreamNames(t *testing.T) {
	cluster := func(extra string) *upstream.Cluster {
		var pb clusterv3.Cluster
		if err := protoyaml.Unmarshal([]byte(`
name: c
type: STATIC
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: {} }
`+extra), &pb); err != nil {
			t.Fatal(err)
		}
		cfg, err := upstream.NewConfig(&pb)
		if err != nil {
			t.Fatal(err)
		}
		m := upstream.NewManager(stats.NewStore())
		m.Set([]upstream.Assignment{upstream.Static(cfg)})
		return m.Get("c")
	}
	both := cluster("    upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true }\n")
	sniOnly := cluster("    upstream_http_protocol_options: { auto_sni: true }\n")
	sanOnly := cluster("    upstream_http_protocol_options: { auto_san_validation: true }\n")
	header := cluster("    upstream_http_protocol_options: { auto_sni: true, override_auto_sni_header: X-Target }\n")
	plain := cluster("")
	for _, tt := range []struct {
		name              string
		cl                *upstream.Cluster
		authority, target string
		wantSNI, wantSAN  string
	}{
		{"name", both, "API.example.com", "", "api.example.com", "api.example.com"},
		{"name and port", both, "api.example.com:8443", "", "api.example.com", "api.example.com"},
		{"IPv4", both, "10.0.0.1:80", "", "", "10.0.0.1"},
		{"IPv6", both, "[::1]:80", "", "", "::1"},
		{"auto_sni alone", sniOnly, "api.example.com", "", "api.example.com", ""},
		{"auto_san_validation alone", sanOnly, "api.example.com", "", "", "api.example.com"},
		{"override header", header, "api.example.com", "target.example.com:1234", "target.example.com", ""},
		{"override header missing", header, "api.example.com", "", "api.example.com", ""},
		{"neither", plain, "api.example.com", "", "", ""},
	} {
		var h http.Header
		h.Add(http.Authority, tt.authority)
		if tt.target != "" {
			h.Add("x-target", tt.target)
		}
		if sni, san := upstreamNames(tt.cl, &h); sni != tt.wantSNI || san != tt.wantSAN {
			t.Errorf("%s: upstreamNames(%q) = %q, %q; want %q, %q", tt.name, tt.authority, sni, san, tt.wantSNI, tt.wantSAN)
		}
	}
}
