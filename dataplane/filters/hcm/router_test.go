package hcm_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/nettest"
)

// echoUpstream echoes the request body, with a digest of it and the
// request's trailers in the response trailers.
func echoUpstream(t testing.TB) string {
	return upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		_ = nethttp.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Trailer", "x-sha, x-req-trailer")
		w.Header().Set("x-method", r.Method)
		w.Header().Set("x-te", r.Header.Get("te"))
		h := sha256.New()
		_, err := io.Copy(io.MultiWriter(w, h), r.Body)
		if err != nil {
			return
		}
		w.Header().Set("x-sha", fmt.Sprintf("%x", h.Sum(nil)))
		w.Header().Set("x-req-trailer", r.Trailer.Get("x-client-trailer"))
	}))
}

func TestBodies(t *testing.T) {
	up := echoUpstream(t)
	// Trailers of HTTP/1.1 bodies pass only with enable_trailers, on both
	// sides, as in Envoy.
	e := newEnv(t, hcmYAML("backend", "http_protocol_options: { enable_trailers: true }"),
		clusterWith(t, "backend", `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: { enable_trailers: true } }
`, up))
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool
		h2c     bool
	}{
		{"small content-length", 100, false, false},
		{"large content-length", 3 << 20, false, false},
		{"chunked", 1 << 20, true, false},
		{"h2c", 2 << 20, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h1Client(t)
			if tc.h2c {
				c = h2cClient(t)
			}
			body := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16)
			var r io.Reader = bytes.NewReader(body)
			if tc.chunked {
				r = io.MultiReader(r) // no length: chunked
			}
			req, _ := nethttp.NewRequest("POST", "http://"+e.addr+"/echo", r)
			if tc.chunked {
				req.Trailer = nethttp.Header{"X-Client-Trailer": nil}
				req.Body = &trailerSetter{r: req.Body, req: req, k: "X-Client-Trailer", v: "ct"}
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, body) {
				t.Fatalf("echoed %d bytes, sent %d", len(got), len(body))
			}
			want := fmt.Sprintf("%x", sha256.Sum256(body))
			if resp.Trailer.Get("x-sha") != want {
				t.Errorf("trailers %v", resp.Trailer)
			}
			if tc.chunked && resp.Trailer.Get("x-req-trailer") != "ct" {
				t.Errorf("request trailer not passed on: %v", resp.Trailer)
			}
		})
	}
}

// trailerSetter sets a request trailer once the body is read.
type trailerSetter struct {
	r    io.ReadCloser
	req  *nethttp.Request
	k, v string
}

func (t *trailerSetter) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err == io.EOF {
		t.req.Trailer.Set(t.k, t.v)
	}
	return n, err
}
func (t *trailerSetter) Close() error { return t.r.Close() }

func TestExpectContinue(t *testing.T) {
	up := echoUpstream(t)
	e := newEnv(t, hcmYAML("backend", ""), cluster(t, "backend", false, up))
	c := dialRaw(t, e.addr)
	io.WriteString(c, "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 Continue") {
		t.Fatalf("first line %q, %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "hello")
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "hello" {
		t.Errorf("%d %q", resp.StatusCode, b)
	}
}

func TestRetries(t *testing.T) {
	var fails atomic.Int32
	fails.Store(2)
	flaky := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b, _ := io.ReadAll(r.Body)
		if fails.Add(-1) >= 0 {
			w.WriteHeader(503)
			return
		}
		fmt.Fprintf(w, "ok %s attempt=%s", b, r.Header.Get("x-envoy-attempt-count"))
	}))
	closed := nettest.RefusedAddr(t).String()
	good := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, "good")
	}))
	cfg := `
stat_prefix: ingress
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    include_request_attempt_count: true
    routes:
    - match: { prefix: "/flaky" }
      route:
        cluster: flaky
        retry_policy: { retry_on: "5xx", num_retries: 3, retry_back_off: { base_interval: 0.001s } }
    - match: { prefix: "/connect" }
      route:
        cluster: mixed
        retry_policy: { retry_on: "connect-failure", num_retries: 3, retry_back_off: { base_interval: 0.001s } }
    - match: { prefix: "/limited" }
      route:
        cluster: flaky
        retry_policy: { retry_on: "5xx", num_retries: 1, retry_back_off: { base_interval: 0.001s } }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "flaky", false, flaky), cluster(t, "mixed", false, closed, good))
	c := h1Client(t)
	req, _ := nethttp.NewRequest("POST", "http://"+e.addr+"/flaky", strings.NewReader("payload"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok payload attempt=3" {
		t.Errorf("5xx retries: %d %q", resp.StatusCode, b)
	}
	e.waitStat("cluster.flaky.upstream_rq_retry", 2)
	e.waitStat("cluster.flaky.upstream_rq_retry_success", 1)
	for range 4 {
		resp, body := get(t, c, "http://"+e.addr+"/connect")
		if resp.StatusCode != 200 || body != "good" {
			t.Errorf("connect-failure retries: %d %q", resp.StatusCode, body)
		}
	}
	fails.Store(5)
	resp, _ = get(t, c, "http://"+e.addr+"/limited")
	if resp.StatusCode != 503 {
		t.Errorf("retries exhausted: %d", resp.StatusCode)
	}
	e.waitStat("cluster.flaky.upstream_rq_retry_limit_exceeded", 1)
}

func TestTimeouts(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	slow := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.URL.Path == "/stall-body" {
			w.Header().Set("content-length", "10")
			w.WriteHeader(200)
			io.WriteString(w, "12345")
			w.(nethttp.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	cfg := `
stat_prefix: ingress
stream_idle_timeout: 0.3s
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/timeout" }
      route: { cluster: slow, timeout: 0.2s }
    - match: { prefix: "/idle" }
      route: { cluster: slow, timeout: 0s }
    - match: { prefix: "/stall-body" }
      route: { cluster: slow, timeout: 0s }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "slow", false, slow))
	c := h1Client(t)
	start := time.Now()
	resp, body := get(t, c, "http://"+e.addr+"/timeout")
	if resp.StatusCode != 504 || body != "upstream request timeout" {
		t.Errorf("route timeout: %d %q", resp.StatusCode, body)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("route timeout after %v", d)
	}
	// The whole request is in, so the stream idle timeout is the upstream's
	// lateness: 504, as Envoy's (408 is for a request still arriving).
	resp, body = get(t, c, "http://"+e.addr+"/idle")
	if resp.StatusCode != 504 || body != "stream timeout" {
		t.Errorf("stream idle timeout: %d %q", resp.StatusCode, body)
	}
	// A response stalled in its body is reset.
	req, _ := nethttp.NewRequest("GET", "http://"+e.addr+"/stall-body", nil)
	r, err := c.Do(req)
	if err == nil {
		_, err = io.ReadAll(r.Body)
		r.Body.Close()
	}
	if err == nil {
		t.Errorf("stalled body: no error")
	}
	e.waitStat("cluster.slow.upstream_rq_timeout", 1)
	e.waitStat("http.ingress.downstream_rq_idle_timeout", 2)
	once.Do(func() { close(release) })
}

// TestRouteIdleTimeoutShorter: a route's idle_timeout below the manager's
// stream_idle_timeout takes effect (the stream timer was running for the
// manager's, longer, one).
func TestRouteIdleTimeoutShorter(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	slow := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	cfg := `
stat_prefix: ingress
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/" }
      route: { cluster: slow, timeout: 0s, idle_timeout: 0.2s }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "slow", false, slow))
	c := h1Client(t)
	c.Timeout = 20 * time.Second
	for range 2 { // the second on a reused stream whose timer is running
		resp, body := get(t, c, "http://"+e.addr+"/idle")
		if resp.StatusCode != 504 || body != "stream timeout" {
			t.Errorf("route idle timeout: %d %q", resp.StatusCode, body)
		}
	}
	e.waitStat("http.ingress.downstream_rq_idle_timeout", 2)
}

// TestMaxStreamDuration: the connection manager's max_stream_duration and a
// route's, as Envoy applies them: a stream still going when its time is up
// gets 504 (408 before the request is in), or DEADLINE_EXCEEDED over gRPC,
// and is counted; a route's explicit 0 lifts the manager's limit; with
// grpc_timeout_header_max a gRPC request's own grpc-timeout is its limit,
// capped, and is what the upstream is told.
func TestMaxStreamDuration(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var gotTimeout sync.Map
	slow := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		gotTimeout.Store(r.URL.Path, r.Header.Get("grpc-timeout"))
		if r.URL.Path == "/unlimited" {
			time.Sleep(400 * time.Millisecond) // past the manager's limit
			w.WriteHeader(200)
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	cfg := `
stat_prefix: ingress
common_http_protocol_options: { max_stream_duration: 0.2s }
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/manager" }
      route: { cluster: slow, timeout: 0s }
    - match: { prefix: "/route" }
      route: { cluster: slow, timeout: 0s, max_stream_duration: { max_stream_duration: 0.1s } }
    - match: { prefix: "/unlimited" }
      route: { cluster: slow, timeout: 0s, max_stream_duration: { max_stream_duration: 0s } }
    - match: { prefix: "/grpc" }
      route: { cluster: slow, timeout: 0s, max_stream_duration: { grpc_timeout_header_max: 0.3s, grpc_timeout_header_offset: 0.05s } }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "slow", false, slow))
	c := h1Client(t)
	c.Timeout = 20 * time.Second
	for _, path := range []string{"/manager", "/route"} {
		resp, body := get(t, c, "http://"+e.addr+path)
		if resp.StatusCode != 504 || body != "downstream duration timeout" {
			t.Errorf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
	// Over the manager's 0.2 s, but the route lifts the limit.
	resp, _ := get(t, c, "http://"+e.addr+"/unlimited")
	if resp.StatusCode != 200 {
		t.Errorf("/unlimited: %d", resp.StatusCode)
	}
	// gRPC: the header's 10 s capped at 0.3 s, less 0.05 s.
	start := time.Now()
	resp, _ = get(t, c, "http://"+e.addr+"/grpc", "content-type", "application/grpc", "grpc-timeout", "10S")
	if resp.StatusCode != 200 || resp.Header.Get("grpc-status") != "4" || resp.Header.Get("grpc-message") != "downstream duration timeout" {
		t.Errorf("/grpc: %d, grpc-status %q, grpc-message %q", resp.StatusCode, resp.Header.Get("grpc-status"), resp.Header.Get("grpc-message"))
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("/grpc ended after %v, before its 0.25 s", d)
	}
	if v, _ := gotTimeout.Load("/grpc"); v != "250m" {
		t.Errorf("the upstream got grpc-timeout %q, want 250m", v)
	}
	if v, _ := gotTimeout.Load("/manager"); v != "" {
		t.Errorf("a request that is not gRPC got grpc-timeout %q", v)
	}
	e.waitStat("http.ingress.downstream_rq_max_duration_reached", 3)
}

func TestHeaderMutations(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("x-remove-me", "1")
		w.Header().Set("keep-alive", "timeout=5")
		fmt.Fprintf(w, "path=%s host=%s added=%s removed=%q xff=%s proto=%s ext=%s internal=%q", r.URL.Path, r.Host,
			r.Header.Get("x-added"), r.Header.Get("x-gone"), r.Header.Get("x-forwarded-for"),
			r.Header.Get("x-forwarded-proto"), r.Header.Get("x-envoy-external-address"), r.Header.Get("x-envoy-internal"))
	}))
	cfg := `
stat_prefix: ingress
use_remote_address: true
route_config:
  response_headers_to_add: [{ header: { key: x-config, value: "c" } }]
  virtual_hosts:
  - name: vh
    domains: ["example.com"]
    request_headers_to_add: [{ header: { key: x-added, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" } }]
    request_headers_to_remove: [x-gone]
    routes:
    - match: { prefix: "/old/" }
      route: { cluster: backend, prefix_rewrite: "/new/", host_rewrite_literal: "rewritten.example" }
      response_headers_to_add: [{ header: { key: x-route, value: "r" } }]
      response_headers_to_remove: [x-remove-me]
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "backend", false, up))
	c := h1Client(t)
	resp, body := get(t, c, "http://"+e.addr+"/old/x", "host", "example.com", "x-gone", "1", "x-forwarded-for", "1.2.3.4")
	want := "path=/new/x host=rewritten.example added=127.0.0.1 removed=\"\" xff=1.2.3.4,127.0.0.1 proto=http ext=127.0.0.1 internal=\"\""
	if body != want {
		t.Errorf("upstream saw\n%s\nwant\n%s", body, want)
	}
	if resp.Header.Get("x-route") != "r" || resp.Header.Get("x-config") != "c" || resp.Header.Get("x-remove-me") != "" || resp.Header.Get("keep-alive") != "" {
		t.Errorf("response headers %v", resp.Header)
	}
	// Routing by host: another host finds no virtual host.
	resp, _ = get(t, c, "http://"+e.addr+"/old/x", "host", "other.com")
	if resp.StatusCode != 404 {
		t.Errorf("unknown host: %d", resp.StatusCode)
	}
}

// routeAllTo is an HTTP connection manager configuration that routes every
// request to cluster.
func routeAllTo(cluster string) string {
	return `
stat_prefix: ingress
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes: [{ match: { prefix: "/" }, route: { cluster: ` + cluster + ` } }]
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
}

// grpcCall posts an empty gRPC request (content-type application/grpc) to
// url and returns the response, its body read and closed.
func grpcCall(t testing.TB, c *nethttp.Client, url string) *nethttp.Response {
	t.Helper()
	req, err := nethttp.NewRequest("POST", url, strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/grpc")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestOutlierDetectionEjectsFailingHost: the router reports each response to
// the cluster's outlier detection, so a host that keeps answering 503 is
// ejected after consecutive_5xx of them and the rest of the requests go to
// the host that works, as with Envoy.
func TestOutlierDetectionEjectsFailingHost(t *testing.T) {
	bad := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { w.WriteHeader(503) }))
	good := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { w.WriteHeader(200) }))
	cl := cluster(t, "pair", false, bad, good)
	cl.OutlierDetection = &clusterv3.OutlierDetection{
		Consecutive_5Xx: wrapperspb.UInt32(3), MaxEjectionPercent: wrapperspb.UInt32(100),
		BaseEjectionTime: durationpb.New(time.Minute),
	}
	e := newEnv(t, routeAllTo("pair"), cl)
	c := h1Client(t)
	failed := 0
	for range 20 {
		if resp, _ := get(t, c, "http://"+e.addr+"/"); resp.StatusCode != 200 {
			failed++
		}
	}
	if failed != 3 {
		t.Errorf("%d of 20 requests failed, want 3 (the failing host's three 503s, then it is ejected)", failed)
	}
	e.waitStat("cluster.pair.outlier_detection.ejections_enforced_consecutive_5xx", 1)
	e.waitStat("cluster.pair.outlier_detection.ejections_active", 1)
}

// TestOutlierDetectionGRPCStatus: for a gRPC request, the router reports
// the HTTP status a response's grpc-status stands for (14 UNAVAILABLE: 503),
// so a host answering 200 with grpc-status 14 is ejected, as with Envoy.
func TestOutlierDetectionGRPCStatus(t *testing.T) {
	bad := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("content-type", "application/grpc")
		w.Header().Set("grpc-status", "14")
		w.WriteHeader(200)
	}))
	cl := cluster(t, "grpc", false, bad)
	cl.OutlierDetection = &clusterv3.OutlierDetection{
		Consecutive_5Xx: wrapperspb.UInt32(3), MaxEjectionPercent: wrapperspb.UInt32(100),
		BaseEjectionTime: durationpb.New(time.Minute),
	}
	e := newEnv(t, routeAllTo("grpc"), cl)
	c := h1Client(t)
	for range 3 {
		if resp := grpcCall(t, c, "http://"+e.addr+"/pkg.Svc/Method"); resp.StatusCode != 200 || resp.Header.Get("grpc-status") != "14" {
			t.Fatalf("response %d grpc-status %q, want the host's 200 with 14", resp.StatusCode, resp.Header.Get("grpc-status"))
		}
	}
	e.waitStat("cluster.grpc.outlier_detection.ejections_enforced_consecutive_5xx", 1)
}

// TestConsistentHashRouting: on a RING_HASH (or MAGLEV) cluster, a route's
// hash_policy sends requests with the same header to the same host; a
// cookie policy with a ttl gives a client without the cookie one, which
// then keeps it on one host, as Envoy's router does.
func TestConsistentHashRouting(t *testing.T) {
	var addrs []string
	for i := range 3 {
		addrs = append(addrs, upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			fmt.Fprintf(w, "host%d", i)
		})))
	}
	for _, policy := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV} {
		t.Run(policy.String(), func(t *testing.T) {
			cl := cluster(t, "hashed", false, addrs...)
			cl.LbPolicy = policy
			cfg := `
stat_prefix: ingress
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/user" }
      route: { cluster: hashed, hash_policy: [{ header: { header_name: x-user } }] }
    - match: { prefix: "/sticky" }
      route: { cluster: hashed, hash_policy: [{ cookie: { name: sticky, ttl: 60s, path: /sticky } }] }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
			e := newEnv(t, cfg, cl)
			c := h1Client(t)
			seen := map[string]bool{}
			for u := range 30 {
				user := fmt.Sprintf("user-%d", u)
				_, first := get(t, c, "http://"+e.addr+"/user", "x-user", user)
				for range 3 {
					if _, body := get(t, c, "http://"+e.addr+"/user", "x-user", user); body != first {
						t.Fatalf("%s went to %s, then to %s", user, first, body)
					}
				}
				seen[first] = true
			}
			if len(seen) != 3 {
				t.Errorf("30 users went to %d hosts, want all 3", len(seen))
			}
			resp, first := get(t, c, "http://"+e.addr+"/sticky")
			set := resp.Header.Get("set-cookie")
			value, ok := strings.CutPrefix(set, `sticky="`)
			if !ok || !strings.HasSuffix(set, "; Max-Age=60; Path=/sticky; HttpOnly") {
				t.Fatalf("set-cookie %q", set)
			}
			value = value[:strings.IndexByte(value, '"')]
			for range 5 {
				resp, body := get(t, c, "http://"+e.addr+"/sticky", "cookie", "sticky="+value)
				if body != first || resp.Header.Get("set-cookie") != "" {
					t.Fatalf("with its cookie: %s (first %s), set-cookie %q", body, first, resp.Header.Get("set-cookie"))
				}
			}
		})
	}
}

// TestIdleTimeoutAfterLongerRouteIdle: a stream reused after an exchange
// whose route had a longer idle_timeout (its timer set for that one) times
// out at the manager's shorter stream_idle_timeout, not the earlier route's.
func TestIdleTimeoutAfterLongerRouteIdle(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	slow := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.URL.Path == "/long" {
			time.Sleep(500 * time.Millisecond) // past the manager's idle: the timer goes again, for the route's 30 s
			w.WriteHeader(200)
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	cfg := `
stat_prefix: ingress
stream_idle_timeout: 0.3s
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/long" }
      route: { cluster: slow, timeout: 0s, idle_timeout: 30s }
    - match: { prefix: "/" }
      route: { cluster: slow, timeout: 0s }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "slow", false, slow))
	c := h1Client(t)
	c.Timeout = 5 * time.Second
	if resp, _ := get(t, c, "http://"+e.addr+"/long"); resp.StatusCode != 200 {
		t.Fatalf("/long: %d", resp.StatusCode)
	}
	resp, err := c.Get("http://" + e.addr + "/stall")
	if err != nil {
		t.Fatalf("the stalled request on the reused stream got no answer within 5 s (its idle timeout is 0.3 s): %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 504 {
		t.Errorf("stalled request: %d, want 504 (the whole request is in)", resp.StatusCode)
	}
}

// TestIdleTimeoutRequestArriving: a stream that idles while its request body
// is still coming gets 408 (504 is for a request wholly in), as Envoy's.
func TestIdleTimeoutRequestArriving(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	cfg := `
stat_prefix: ingress
stream_idle_timeout: 0.2s
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/" }
      route: { cluster: up, timeout: 0s }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "up", false, up))
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Two of the ten bytes of the body, and then nothing.
	if _, err := io.WriteString(nc, "POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nab"); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := nethttp.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("no answer to the stalled request: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 408 || string(body) != "stream timeout" {
		t.Errorf("stalled request body: %d %q, want 408 \"stream timeout\"", resp.StatusCode, body)
	}
}

// TestRequestBodyFailure: a request whose body breaks the protocol half-way
// gets the codec's answer and the connection closes, as Envoy's
// sendProtocolError (400 for a bad chunk size, 431 for too many trailers,
// the status's text as the body), and is logged once, as a protocol error
// (DPE).
func TestRequestBodyFailure(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	logPath := t.TempDir() + "/access.log"
	cfg := hcmYAML("up", `common_http_protocol_options: { max_headers_count: 3 }
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: `+logPath+`
    log_format: { text_format_source: { inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" } }
`)
	e := newEnv(t, cfg, cluster(t, "up", false, up))
	want := ""
	for i, tc := range []struct {
		name, body string
		status     int
		text, log  string
	}{
		{"bad chunk size", "2\r\nab\r\nzz\r\n", 400, "Bad Request", "400 DPE http1.codec_error"},
		{"too many trailers", "2\r\nab\r\n0\r\nt1: 1\r\nt2: 2\r\nt3: 3\r\nt4: 4\r\n\r\n", 431,
			"Request Header Fields Too Large", "431 DPE http1.too_many_headers"},
	} {
		c := dialRaw(t, e.addr)
		io.WriteString(c, "POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"+tc.body)
		resp, err := nethttp.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Errorf("%s: no answer: %v", tc.name, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tc.status || !resp.Close || string(b) != tc.text {
			t.Errorf("%s: %d close=%v %q, want %d %q with connection: close", tc.name, resp.StatusCode, resp.Close, b, tc.status, tc.text)
		}
		e.waitStat("http.ingress.downstream_rq_total", int64(i+1))
		want += tc.log + "\n"
		// The exchange is logged as it ends, which may come after the
		// answer: the next case waits for it, so the lines keep this order.
		waitLogLines(logPath, i+1)
	}
	log := waitLogLines(logPath, 2)
	if log != want {
		t.Errorf("access log:\n%s\nwant:\n%s", log, want)
	}
}

// TestRequestTimeoutRequestArriving: request_timeout running out while the
// request body is still coming gets 408 "request timeout" and
// "connection: close", as Envoy's.
func TestRequestTimeoutRequestArriving(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	e := newEnv(t, hcmYAML("up", "request_timeout: 0.2s\n"), cluster(t, "up", false, up))
	c := dialRaw(t, e.addr)
	io.WriteString(c, "POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nab")
	resp, err := nethttp.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to the stalled request: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 408 || string(body) != "request timeout" || !resp.Close {
		t.Errorf("stalled request body: %d %q close=%v, want 408 \"request timeout\" with connection: close", resp.StatusCode, body, resp.Close)
	}
	e.waitStat("http.ingress.downstream_rq_timeout", 1)
}

// TestImmediateHealthCheckFailHeader: an upstream response carrying
// x-envoy-immediate-health-check-fail takes its host out of a health
// checked cluster at once, as Envoy's router tells the host's health
// checker: the next requests go to the other host, until the failed one
// passes its checks again.
func TestImmediateHealthCheckFailHeader(t *testing.T) {
	backend := func(name string) string {
		return upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			if r.URL.Path == "/fail" {
				w.Header().Set("x-envoy-immediate-health-check-fail", "")
			}
			w.Header().Set("x-upstream", name)
		}))
	}
	a, b := backend("a"), backend("b")
	cl := clusterWith(t, "up", `
common_lb_config: { healthy_panic_threshold: { value: 0 } }
health_checks:
- timeout: 1s
  interval: 0.2s
  no_traffic_interval: 0.2s
  unhealthy_threshold: 2
  healthy_threshold: 2
  http_health_check: { path: /healthz }
`, a, b)
	e := newEnv(t, hcmYAML("up", ""), cl)
	t.Cleanup(func() { e.clusters.Set(nil) }) // stops the health checks
	c := h1Client(t)
	resp, _ := get(t, c, "http://"+e.addr+"/fail")
	failed := resp.Header.Get("x-upstream")
	e.waitStat("cluster.up.health_check.passive_failure", 1)
	for range 6 {
		if resp, _ := get(t, c, "http://"+e.addr+"/"); resp.Header.Get("x-upstream") == failed {
			t.Fatalf("a request went to %s after it answered with x-envoy-immediate-health-check-fail", failed)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, _ := get(t, c, "http://"+e.addr+"/"); resp.Header.Get("x-upstream") == failed {
			break // back, after its checks passed
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not back within 10 s", failed)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLogLines waits up to 5 s for the file at path to hold n lines and
// returns what it holds then.
func waitLogLines(path string, n int) string {
	var log string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(path)
		if log = string(b); strings.Count(log, "\n") >= n {
			break
		}
	}
	return log
}
