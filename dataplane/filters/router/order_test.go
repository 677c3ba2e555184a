package router

import (
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/nettest"
)

// TestResponseMutationsAfterRouterHeaders: the route's response header
// mutations come after the headers the router adds, so that they can remove
// or overwrite them, as Envoy's finalizeResponseHeaders does.
func TestResponseMutationsAfterRouterHeaders(t *testing.T) {
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "ok") })
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  include_attempt_count_in_response: true
  routes:
  - match: { prefix: "/" }
    route: { cluster: c }
    response_headers_to_remove: [x-envoy-upstream-service-time]
    response_headers_to_add:
    - header: { key: x-envoy-attempt-count, value: "7" }
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
`, map[string][]string{"c": {up}})
	d := newDown("GET", "/", nil)
	f.serve(d)
	if d.resp.Value(":status") != "200" || d.resp.Has("x-envoy-upstream-service-time") || d.resp.Value("x-envoy-attempt-count") != "7" {
		t.Errorf("response %s", d.resp.String())
	}
}

// TestRequestMutationsAfterRouterHeaders: the route's request header
// mutations come after the router read the client's x-envoy headers and
// hash_policy header and added its own headers, as in Envoy's
// decodeHeaders: they may remove the router's headers, and what they add
// goes upstream without steering the router.
func TestRequestMutationsAfterRouterHeaders(t *testing.T) {
	echo := func(name string) nethttp.HandlerFunc {
		return func(w nethttp.ResponseWriter, r *nethttp.Request) {
			if r.URL.Path == "/add" {
				time.Sleep(150 * time.Millisecond)
			}
			_, expected := r.Header["X-Envoy-Expected-Rq-Timeout-Ms"]
			_, attempt := r.Header["X-Envoy-Attempt-Count"]
			fmt.Fprintf(w, "%s expected=%v attempt=%v timeout=%s", name, expected, attempt, r.Header.Get("x-envoy-upstream-rq-timeout-ms"))
		}
	}
	a, b := backend(t, echo("a")), backend(t, echo("b"))
	f := newFixtureWith(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  include_request_attempt_count: true
  routes:
  - match: { prefix: "/rm" }
    route: { cluster: one }
    request_headers_to_remove: [x-envoy-expected-rq-timeout-ms, x-envoy-attempt-count]
  - match: { prefix: "/add" }
    route: { cluster: one, timeout: 5s }
    request_headers_to_add:
    - header: { key: x-envoy-upstream-rq-timeout-ms, value: "50" }
  - match: { prefix: "/hash" }
    route: { cluster: ring, hash_policy: [{ header: { header_name: x-user } }] }
    request_headers_to_add:
    - header: { key: x-user, value: fixed }
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
`, &routerv3.Router{}, clusterYAML("one", "", a), clusterYAML("ring", "lb_policy: RING_HASH, ", a, b))

	d := newDown("GET", "/rm", nil)
	f.serve(d)
	if got := d.out.String(); got != "a expected=false attempt=false timeout=" {
		t.Errorf("removing the router's headers: %q", got)
	}
	// The route's x-envoy-upstream-rq-timeout-ms goes upstream as it is,
	// and the route's timeout stays.
	d = newDown("GET", "/add", nil)
	f.serve(d)
	if got := d.out.String(); d.resp.Value(":status") != "200" || got != "a expected=true attempt=true timeout=50" {
		t.Errorf("adding x-envoy-upstream-rq-timeout-ms: %s %q", d.resp.Value(":status"), got)
	}
	// The client's x-user places the request, not the route's.
	seen := map[string]bool{}
	for i := range 20 {
		d = newDown("GET", "/hash", nil, "x-user", "user"+strconv.Itoa(i))
		f.serve(d)
		seen[d.out.String()[:1]] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("20 users hashed to %v: the route's header placed them", seen)
	}
}

// TestRetryResetsRouterHeaders: a retry sets x-envoy-attempt-count and
// x-envoy-expected-rq-timeout-ms again (over the route's mutations, as
// Envoy's doRetry), the expected timeout less the time since the request
// ended; x-envoy-upstream-service-time counts from the end of the request,
// across the attempts.
func TestRetryResetsRouterHeaders(t *testing.T) {
	var n atomic.Int32
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if n.Add(1) == 1 {
			time.Sleep(200 * time.Millisecond)
			w.WriteHeader(503)
			return
		}
		fmt.Fprintf(w, "%s %s", r.Header.Get("x-envoy-attempt-count"), r.Header.Get("x-envoy-expected-rq-timeout-ms"))
	})
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  include_request_attempt_count: true
  routes:
  - match: { prefix: "/" }
    route:
      cluster: c
      timeout: 2s
      retry_policy: { retry_on: 5xx, num_retries: 1, retry_back_off: { base_interval: 0.001s } }
    request_headers_to_remove: [x-envoy-attempt-count]
`, map[string][]string{"c": {up}})
	d := newDown("GET", "/", nil)
	f.serve(d)
	var attempt, expected int
	if _, err := fmt.Sscanf(d.out.String(), "%d %d", &attempt, &expected); err != nil || d.resp.Value(":status") != "200" {
		t.Fatalf("%s %q", d.resp.Value(":status"), d.out.String())
	}
	if attempt != 2 || expected <= 0 || expected > 1800 {
		t.Errorf("retry sent x-envoy-attempt-count %d, x-envoy-expected-rq-timeout-ms %d", attempt, expected)
	}
	if st, _ := strconv.Atoi(d.resp.Value("x-envoy-upstream-service-time")); st < 200 {
		t.Errorf("x-envoy-upstream-service-time %q, want the time since the request ended", d.resp.Value("x-envoy-upstream-service-time"))
	}
}

// TestRespectExpectedTimeoutFirst: with respect_expected_rq_timeout, the
// request's x-envoy-expected-rq-timeout-ms wins over its
// x-envoy-upstream-rq-timeout-ms, as in Envoy's finalTimeout.
func TestRespectExpectedTimeoutFirst(t *testing.T) {
	up, release := heldBackend(t)
	defer close(release)
	f := newFixtureWith(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: c, timeout: 10s }
`, &routerv3.Router{RespectExpectedRqTimeout: true}, clusterYAML("c", "", up))
	d := newDown("GET", "/", nil, "x-envoy-expected-rq-timeout-ms", "100", "x-envoy-upstream-rq-timeout-ms", "10000")
	e := f.serve(d)
	if d.resp.Value(":status") != "504" || e.Info.ResponseFlags&http.FlagUpstreamRequestTimeout == 0 {
		t.Errorf("%s flags %v", d.resp.String(), e.Info.ResponseFlags)
	}
}

// TestLocalReplyHeaders: the router's local replies get the route's
// response header mutations (of the three levels), as Envoy's filter
// manager applies them to every local reply once a route entry was chosen,
// then the router's x-envoy-overloaded (a circuit breaker's 503) and
// x-envoy-attempt-count; without a body they have no content-type.
func TestLocalReplyHeaders(t *testing.T) {
	closed := refusedAddr(t)
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {})
	f := newFixtureWith(t, `
response_headers_to_add:
- header: { key: x-config, value: "1" }
virtual_hosts:
- name: v
  domains: ["*"]
  include_attempt_count_in_response: true
  response_headers_to_add:
  - header: { key: x-vhost, value: "1" }
  routes:
  - match: { prefix: "/nc" }
    route: { cluster_header: x-cluster }
    response_headers_to_add:
    - header: { key: content-type, value: application/json }
  - match: { prefix: "/uf" }
    route: { cluster: refused }
    response_headers_to_add:
    - header: { key: x-route, value: "%UPSTREAM_CLUSTER%" }
  - match: { prefix: "/uo" }
    route: { cluster: full }
`, &routerv3.Router{}, clusterYAML("refused", "", closed),
		clusterYAML("full", "circuit_breakers: { thresholds: [{ max_requests: 0 }] }, ", up))

	d := newDown("GET", "/nc", nil)
	f.serve(d)
	if d.resp.Value(":status") != "503" || d.resp.Value("x-config") != "1" || d.resp.Value("x-vhost") != "1" ||
		d.resp.Has("content-type") || d.resp.Has("x-envoy-attempt-count") {
		t.Errorf("cluster not found: %s", d.resp.String())
	}
	d = newDown("GET", "/uf", nil)
	e := f.serve(d)
	if d.resp.Value(":status") != "503" || d.resp.Value("x-route") != "refused" || d.resp.Value("x-vhost") != "1" ||
		d.resp.Value("x-envoy-attempt-count") != "1" || e.Info.ResponseFlags&http.FlagUpstreamConnectionFailure == 0 {
		t.Errorf("connection failure: %s", d.resp.String())
	}
	d = newDown("GET", "/uo", nil)
	e = f.serve(d)
	if d.resp.Value(":status") != "503" || d.resp.Value("x-envoy-overloaded") != "true" || d.resp.Value("x-config") != "1" ||
		d.resp.Value("x-envoy-attempt-count") != "1" || e.Info.ResponseFlags&http.FlagUpstreamOverflow == 0 {
		t.Errorf("overflow: %s", d.resp.String())
	}
}

// TestUpstreamClusterOwned: a cluster_header route names in StreamInfo the
// cluster's own name, not the request's string, which the connection's next
// request overwrites before an access log (gRPC's, buffered) may send it.
func TestUpstreamClusterOwned(t *testing.T) {
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {})
	f := newFixtureWith(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster_header: x-cluster }
`, &routerv3.Router{}, clusterYAML("c1", "", up))
	fields := func(cluster string) [][2]string {
		return [][2]string{{http.Method, "GET"}, {http.Scheme, "http"}, {http.Authority, "example.com"}, {http.Path, "/"}, {"x-cluster", cluster}}
	}
	d := &down{}
	// Room for what the router adds, so that the buffer stays the same one
	// (as a codec's reused header's does).
	d.req.Add("x-room", strings.Repeat("r", 4096))
	d.req.Reset()
	for _, kv := range fields("c1") {
		d.req.Add(kv[0], kv[1])
	}
	e := f.serve(d)
	if d.resp.Value(":status") != "200" {
		t.Fatalf("response %s", d.resp.String())
	}
	// The next request, in the same buffer.
	d.req.Reset()
	for _, kv := range fields("zz") {
		d.req.Add(kv[0], kv[1])
	}
	if got := e.Info.UpstreamCluster; got != "c1" {
		t.Errorf("UpstreamCluster %q after the header took the next request, want c1", got)
	}
}

// refusedAddr is a loopback address nothing listens on, held for the test.
func refusedAddr(t *testing.T) string { return nettest.RefusedAddr(t).String() }

// TestConnectFailureReply: a refused connection is answered as Envoy 1.3x
// does, the errno in words; a connect timeout is a "connection timeout"
// without a transport failure reason.
func TestConnectFailureReply(t *testing.T) {
	f := newFixture(t, routeAllToC, map[string][]string{"c": {refusedAddr(t)}})
	d := newDown("GET", "/", nil)
	e := f.serve(d)
	if want := "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused"; d.out.String() != want {
		t.Errorf("body %q, want %q", d.out.String(), want)
	}
	if want := "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"; e.Info.ResponseCodeDetails != want {
		t.Errorf("details %q, want %q", e.Info.ResponseCodeDetails, want)
	}
	if e.Info.UpstreamTransportFailureReason != "delayed connect error: Connection refused" {
		t.Errorf("transport failure reason %q", e.Info.UpstreamTransportFailureReason)
	}
	reset, transport := connectFailure(&pool.ConnectError{Host: "h", Err: fmt.Errorf("x: %w", upstream.ErrConnectTimeout)})
	if reset != "connection timeout" || transport != "" || resetDetails(reset, transport) != "upstream_reset_before_response_started{connection_timeout}" ||
		resetBody(true, reset, transport) != "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout" {
		t.Errorf("connect timeout: %q %q", reset, transport)
	}
}

// TestMalformedResponseIsBadGateway: an upstream response that does not
// parse is a protocol error, answered 502 UPE as Envoy's onUpstreamReset
// does.
func TestMalformedResponseIsBadGateway(t *testing.T) {
	up := nettest.Serve(t, func(c net.Conn) {
		c.Read(make([]byte, 4096))
		c.Write([]byte("HTTP/1.1 abc\r\n\r\n"))
		c.Close()
	})
	f := newFixture(t, routeAllToC, map[string][]string{"c": {up}})
	d := newDown("GET", "/", nil)
	e := f.serve(d)
	if d.resp.Value(":status") != "502" || e.Info.ResponseFlags&http.FlagUpstreamProtocolError == 0 ||
		e.Info.ResponseCodeDetails != "upstream_reset_before_response_started{protocol_error}" ||
		d.out.String() != "upstream connect error or disconnect/reset before headers. reset reason: protocol error" {
		t.Errorf("%s flags %v details %q body %q", d.resp.String(), e.Info.ResponseFlags, e.Info.ResponseCodeDetails, d.out.String())
	}
}

// TestTimeoutStats: the route's timeout is response_timeout (Envoy's
// details); an exhausted per-try timeout counts in
// upstream_rq_per_try_timeout only; a per-try idle timeout before the
// headers is upstream_per_try_idle_timeout and not a per-try timeout.
func TestTimeoutStats(t *testing.T) {
	up, release := heldBackend(t)
	defer close(release)
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/global" }
    route: { cluster: c, timeout: 0.05s }
  - match: { prefix: "/try" }
    route: { cluster: c, timeout: 5s, retry_policy: { retry_on: 5xx, num_retries: 0, per_try_timeout: 0.05s } }
  - match: { prefix: "/idle" }
    route: { cluster: c, timeout: 5s, retry_policy: { retry_on: 5xx, num_retries: 0, per_try_idle_timeout: 0.05s } }
`, map[string][]string{"c": {up}})
	value := func(name string) int64 { v, _ := f.st.Value("cluster.c." + name); return v }
	for _, tc := range []struct {
		path, details                     string
		timeouts, perTryTimes, perTryIdle int64
	}{
		{"/global", "response_timeout", 1, 0, 0},
		{"/try", "upstream_per_try_timeout", 1, 1, 0},
		{"/idle", "upstream_per_try_idle_timeout", 1, 1, 1},
	} {
		d := newDown("GET", tc.path, nil)
		e := f.serve(d)
		if d.resp.Value(":status") != "504" || e.Info.ResponseCodeDetails != tc.details {
			t.Errorf("%s: %s details %q, want 504 %q", tc.path, d.resp.Value(":status"), e.Info.ResponseCodeDetails, tc.details)
		}
		if value("upstream_rq_timeout") != tc.timeouts || value("upstream_rq_per_try_timeout") != tc.perTryTimes {
			t.Errorf("%s: upstream_rq_timeout %d, upstream_rq_per_try_timeout %d; want %d, %d", tc.path,
				value("upstream_rq_timeout"), value("upstream_rq_per_try_timeout"), tc.timeouts, tc.perTryTimes)
		}
		if value("upstream_rq_per_try_idle_timeout") != tc.perTryIdle {
			t.Errorf("%s: upstream_rq_per_try_idle_timeout %d, want %d", tc.path, value("upstream_rq_per_try_idle_timeout"), tc.perTryIdle)
		}
	}
}

// TestRetryOutcomeStats: upstream_rq_retry_success counts a retry whose
// outcome the policy does not retry, not one that failed again with no
// retry left; a retry the max_retries circuit breaker refuses sets UO.
func TestRetryOutcomeStats(t *testing.T) {
	var n atomic.Int32
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.URL.Path == "/flaky" && n.Add(1)%2 == 0 {
			return
		}
		w.WriteHeader(503)
	})
	f := newFixtureWith(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/full" }
    route: { cluster: full, retry_policy: { retry_on: 5xx, num_retries: 1 } }
  - match: { prefix: "/" }
    route: { cluster: c, retry_policy: { retry_on: 5xx, num_retries: 1, retry_back_off: { base_interval: 0.001s } } }
`, &routerv3.Router{}, clusterYAML("c", "", up),
		clusterYAML("full", "circuit_breakers: { thresholds: [{ max_retries: 0 }] }, ", up))
	d := newDown("GET", "/down", nil)
	f.serve(d)
	if v, _ := f.st.Value("cluster.c.upstream_rq_retry_success"); d.resp.Value(":status") != "503" || v != 0 {
		t.Errorf("a retry that failed again: %s, upstream_rq_retry_success %d", d.resp.Value(":status"), v)
	}
	d = newDown("GET", "/flaky", nil)
	f.serve(d)
	if v, _ := f.st.Value("cluster.c.upstream_rq_retry_success"); d.resp.Value(":status") != "200" || v != 1 {
		t.Errorf("a retry that worked: %s, upstream_rq_retry_success %d", d.resp.Value(":status"), v)
	}
	d = newDown("GET", "/full", nil)
	e := f.serve(d)
	if v, _ := f.st.Value("cluster.full.upstream_rq_retry_overflow"); d.resp.Value(":status") != "503" || v != 1 ||
		e.Info.ResponseFlags&http.FlagUpstreamOverflow == 0 {
		t.Errorf("retry overflow: %s, upstream_rq_retry_overflow %d, flags %v", d.resp.Value(":status"), v, e.Info.ResponseFlags)
	}
}

// TestRetryRequestHeaders: the router consumes the retry headers (they do
// not go upstream); x-envoy-retry-grpc-on takes gRPC conditions only;
// x-envoy-retriable-status-codes and x-envoy-retriable-header-names widen
// retriable-status-codes and retriable-headers; and
// x-envoy-upstream-rq-timeout-alt-response makes a timeout an empty 204, as
// in Envoy's router.
func TestRetryRequestHeaders(t *testing.T) {
	var n atomic.Int32
	release := make(chan struct{})
	defer close(release)
	up := backend(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		for name := range r.Header {
			if name != "X-Envoy-Expected-Rq-Timeout-Ms" && len(name) > 8 && name[:8] == "X-Envoy-" {
				t.Errorf("%s went upstream", name)
			}
		}
		switch r.URL.Path {
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/status":
			if n.Add(1) == 1 {
				w.WriteHeader(418)
			}
		case "/header":
			if n.Add(1) == 1 {
				w.Header().Set("x-retry-me", "1")
			}
		default:
			n.Add(1)
			w.WriteHeader(503)
		}
	})
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/slow" }
    route: { cluster: c, timeout: 0.05s }
  - match: { prefix: "/" }
    route: { cluster: c }
`, map[string][]string{"c": {up}})
	for _, tc := range []struct {
		path     string
		kv       []string
		status   string
		attempts int32
	}{
		{"/grpc", []string{"x-envoy-retry-grpc-on", "5xx,unavailable", "x-envoy-max-retries", "3"}, "503", 1},
		{"/all", []string{"x-envoy-retry-on", "5xx", "x-envoy-max-retries", "2", "x-envoy-hedge-on-per-try-timeout", "true"}, "503", 3},
		{"/status", []string{"x-envoy-retry-on", "retriable-status-codes", "x-envoy-retriable-status-codes", "500, 418"}, "200", 2},
		{"/header", []string{"x-envoy-retry-on", "retriable-headers", "x-envoy-retriable-header-names", "x-other, X-Retry-Me"}, "200", 2},
	} {
		n.Store(0)
		d := newDown("GET", tc.path, nil, tc.kv...)
		f.serve(d)
		if d.resp.Value(":status") != tc.status || n.Load() != tc.attempts {
			t.Errorf("%s %v: %s after %d attempts, want %s after %d", tc.path, tc.kv, d.resp.Value(":status"), n.Load(), tc.status, tc.attempts)
		}
	}
	d := newDown("GET", "/slow", nil, "x-envoy-upstream-rq-timeout-alt-response", "yes")
	e := f.serve(d)
	if d.resp.Value(":status") != "204" || d.out.Len() != 0 || e.Info.ResponseFlags&http.FlagUpstreamRequestTimeout == 0 {
		t.Errorf("alt response: %s %q flags %v", d.resp.String(), d.out.String(), e.Info.ResponseFlags)
	}
}

// TestDirectResponseContentHeaders: as Envoy's prepareLocalReply, a HEAD
// request to a direct response with a body gets its content-length (and no
// body), and a direct response without a body has no content-type, even
// one response_headers_to_add set.
func TestDirectResponseContentHeaders(t *testing.T) {
	f := newFixture(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/body" }
    direct_response: { status: 200, body: { inline_string: "hello" } }
  - match: { prefix: "/empty" }
    direct_response: { status: 200 }
    response_headers_to_add:
    - header: { key: content-type, value: application/json }
`, nil)
	d := newDown("HEAD", "/body", nil)
	f.serve(d)
	if d.resp.Value(":status") != "200" || d.resp.Value("content-length") != "5" || d.out.Len() != 0 || !d.ended {
		t.Errorf("HEAD: %s%q", d.resp.String(), d.out.String())
	}
	d = newDown("GET", "/empty", nil)
	f.serve(d)
	if d.resp.Value(":status") != "200" || d.resp.Has("content-type") || d.resp.Has("content-length") {
		t.Errorf("no body: %s", d.resp.String())
	}
}
