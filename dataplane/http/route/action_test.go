package route

import (
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/backoff"
)

func TestClusterFor(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: static, match: {path: /static}, route: {cluster: static-c}}
  - {name: header, match: {path: /header}, route: {cluster_header: X-Cluster}}
  - name: weighted
    match: {path: /weighted}
    route:
      weighted_clusters:
        clusters:
        - {name: a, weight: 1}
        - {name: zero, weight: 0}
        - {name: b, weight: 2}
        - {cluster_header: x-c, weight: 3}
  - name: by-header
    match: {path: /by-header}
    route:
      weighted_clusters:
        header_name: x-random
        clusters: [{name: a, weight: 50}, {name: b, weight: 50}]
`)
	tests := []struct {
		path string
		kv   []string
		rnd  uint64
		want string
	}{
		{"/static", nil, 7, "static-c"},
		{"/header", []string{"x-cluster", "from-header"}, 0, "from-header"},
		{"/header", []string{"x-cluster", "first", "x-cluster", "second"}, 0, "first"},
		{"/header", nil, 0, ""}, // no cluster: cluster_not_found
		// Total weight 6: [0,1) a, [1,1) zero (never), [1,3) b, [3,6) the header.
		{"/weighted", []string{"x-c", "hc"}, 0, "a"},
		{"/weighted", []string{"x-c", "hc"}, 1, "b"},
		{"/weighted", []string{"x-c", "hc"}, 2, "b"},
		{"/weighted", []string{"x-c", "hc"}, 3, "hc"},
		{"/weighted", []string{"x-c", "hc"}, 5, "hc"},
		{"/weighted", []string{"x-c", "hc"}, 6, "a"},               // modulo the total
		{"/weighted", nil, 4, ""},                                  // the chosen cluster's header is missing
		{"/weighted", []string{"x-c", "hc"}, math.MaxUint64, "hc"}, // 2^64-1 mod 6 = 3
		// header_name: the header's value replaces the random value.
		{"/by-header", []string{"x-random", "49"}, 99, "a"},
		{"/by-header", []string{"x-random", "50"}, 0, "b"},
		{"/by-header", []string{"x-random", "149"}, 0, "a"},
		{"/by-header", []string{"x-random", "junk"}, 50, "b"},               // not a number: the random value
		{"/by-header", []string{"x-random", "1", "x-random", "1"}, 50, "b"}, // repeated: the random value
		{"/by-header", nil, 10, "a"},
	}
	for _, tt := range tests {
		r := tbl.Match(req("h", tt.path, tt.kv...), 0)
		if r == nil {
			t.Fatalf("%s: no route", tt.path)
		}
		if got := r.ClusterFor(req("h", tt.path, tt.kv...), tt.rnd); got != tt.want {
			t.Errorf("%s %v rnd=%d: %q, want %q", tt.path, tt.kv, tt.rnd, got, tt.want)
		}
	}
}

// TestWeightedDistribution checks that uniformly random values split traffic
// by weight.
func TestWeightedDistribution(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route:
      weighted_clusters:
        clusters: [{name: a, weight: 10}, {name: b, weight: 30}, {name: c, weight: 60}]
`)
	h := req("h", "/")
	r := tbl.Match(h, 0)
	counts := map[string]int{}
	// A fixed-seed xorshift stands in for the stream's random value.
	x := uint64(0x9e3779b97f4a7c15)
	const n = 100000
	for range n {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		counts[r.ClusterFor(h, x)]++
	}
	for name, weight := range map[string]float64{"a": 0.1, "b": 0.3, "c": 0.6} {
		got := float64(counts[name]) / n
		if math.Abs(got-weight) > 0.01 {
			t.Errorf("%s got %.3f of the traffic, want %.2f (counts %v)", name, got, weight, counts)
		}
	}
	// Every value of the total weight's range maps to exactly its share.
	exact := map[string]int{}
	for v := range uint64(100) {
		exact[r.ClusterFor(h, v)]++
	}
	if want := map[string]int{"a": 10, "b": 30, "c": 60}; !reflect.DeepEqual(exact, want) {
		t.Errorf("over 0..99: %v, want %v", exact, want)
	}
}

func TestPathRewrite(t *testing.T) {
	tests := []struct {
		name, match, action string
		path, want          string
		rewrote             bool
	}{
		{"prefix", `{prefix: /api/}`, `prefix_rewrite: /v2/`, "/api/users?x=1", "/v2/users?x=1", true},
		{"prefix to root", `{prefix: /api}`, `prefix_rewrite: /`, "/api/users", "//users", true},
		{"prefix insensitive", `{prefix: /API, case_sensitive: false}`, `prefix_rewrite: /x`, "/api/y", "/x/y", true},
		{"path", `{path: /old}`, `prefix_rewrite: /new`, "/old?q", "/new?q", true},
		{"separated prefix", `{path_separated_prefix: /old}`, `prefix_rewrite: /new`, "/old/a", "/new/a", true},
		// For a regex route the matched part is the whole path: the query stays.
		{"regex route prefix", `{safe_regex: {regex: "/v[0-9]/.*"}}`, `prefix_rewrite: /x`, "/v1/a/b?q=1", "/x?q=1", true},
		{"regex_rewrite", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "^/service/([^/]+)(/.*)$"}, substitution: "\\2/instance/\\1"}`,
			"/service/foo/v1/api?x", "/v1/api/instance/foo?x", true},
		{"regex_rewrite every match", `{prefix: /}`, `regex_rewrite: {pattern: {regex: one}, substitution: two}`,
			"/xxx/one/yyy/one/zzz", "/xxx/two/yyy/two/zzz", true},
		{"regex_rewrite first only", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "^(.*?)one(.*)$"}, substitution: "\\1two\\2"}`,
			"/xxx/one/yyy/one/zzz", "/xxx/two/yyy/one/zzz", true},
		{"regex_rewrite case-insensitive", `{prefix: /}`, `regex_rewrite: {pattern: {regex: "(?i)/xxx/"}, substitution: /yyy/}`,
			"/aaa/XxX/bbb", "/aaa/yyy/bbb", true},
		{"regex_rewrite dollar is literal", `{prefix: /}`, `regex_rewrite: {pattern: {regex: a}, substitution: "$1\\\\"}`,
			"/a", "/$1\\", true},
		{"regex_rewrite not query", `{prefix: /}`, `regex_rewrite: {pattern: {regex: q}, substitution: Q}`,
			"/q?q=q", "/Q?q=q", true},
		{"regex_rewrite to nothing", `{prefix: /}`, `regex_rewrite: {pattern: {regex: ".*"}, substitution: ""}`, "/a", "/a", false},
		{"none", `{prefix: /}`, ``, "/a", "/a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: `+tt.match+`
    route: {cluster: c, `+tt.action+`}
`)
			h := req("h", tt.path)
			r := tbl.Match(h, 0)
			if r == nil {
				t.Fatalf("no route for %q", tt.path)
			}
			if got := r.RewriteRequest(h, true); got != tt.rewrote {
				t.Errorf("RewriteRequest = %v, want %v", got, tt.rewrote)
			}
			if got := h.Path(); got != tt.want {
				t.Errorf(":path = %q, want %q", got, tt.want)
			}
			orig, ok := h.Get("x-envoy-original-path")
			if tt.rewrote && orig != tt.path {
				t.Errorf("x-envoy-original-path = %q, want %q", orig, tt.path)
			}
			if !tt.rewrote && ok {
				t.Errorf("x-envoy-original-path set without a rewrite")
			}
			// Without keepOriginal the original path is not kept.
			h2 := req("h", tt.path)
			r.RewriteRequest(h2, false)
			if h2.Has("x-envoy-original-path") {
				t.Errorf("x-envoy-original-path set with keepOriginal false")
			}
		})
	}
}

func TestHostRewrite(t *testing.T) {
	tests := []struct {
		name, action string
		kv           []string
		host, xfh    string
		origHost     string
		auto         bool
	}{
		{"literal", `host_rewrite_literal: up.example`, nil, "up.example", "", "orig.example", false},
		{"literal xfh", `host_rewrite_literal: up.example, append_x_forwarded_host: true`, nil, "up.example", "orig.example", "orig.example", false},
		{"xfh appended", `host_rewrite_literal: up, append_x_forwarded_host: true`, []string{"x-forwarded-host", "a"}, "up", "a,orig.example", "orig.example", false},
		{"xfh idempotent", `host_rewrite_literal: up, append_x_forwarded_host: true`, []string{"x-forwarded-host", "a,orig.example"}, "up", "a,orig.example", "orig.example", false},
		{"header", `host_rewrite_header: X-Host`, []string{"x-host", "from-header"}, "from-header", "", "orig.example", false},
		{"header missing", `host_rewrite_header: x-host`, nil, "orig.example", "", "", false},
		{"path regex", `host_rewrite_path_regex: {pattern: {regex: "^/([^/]+)/.+$"}, substitution: "\\1"}`, nil, "envoyproxy.io", "", "orig.example", false},
		{"auto", `auto_host_rewrite: true`, nil, "orig.example", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c, `+tt.action+`}
`)
			h := req("orig.example", "/envoyproxy.io/some/path", tt.kv...)
			r := tbl.Match(h, 0)
			r.RewriteRequest(h, true)
			if got := h.Authority(); got != tt.host {
				t.Errorf(":authority = %q, want %q", got, tt.host)
			}
			if got := h.Value("x-forwarded-host"); got != tt.xfh {
				t.Errorf("x-forwarded-host = %q, want %q", got, tt.xfh)
			}
			if got := h.Value("x-envoy-original-host"); got != tt.origHost {
				t.Errorf("x-envoy-original-host = %q, want %q", got, tt.origHost)
			}
			if r.AutoHostRewrite != tt.auto {
				t.Errorf("AutoHostRewrite = %v", r.AutoHostRewrite)
			}
			if h.Path() != "/envoyproxy.io/some/path" {
				t.Errorf(":path changed to %q", h.Path())
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: default, match: {path: /default}, route: {cluster: c}}
  - {name: zero, match: {path: /zero}, route: {cluster: c, timeout: 0s}}
  - name: all
    match: {path: /all}
    route: {cluster: c, timeout: 1.5s, idle_timeout: 0s, max_grpc_timeout: 3s, grpc_timeout_offset: 0.01s}
`)
	d := func(v time.Duration) *time.Duration { return &v }
	tests := []struct {
		path                   string
		timeout                time.Duration
		idle, maxGRPC, offsetG *time.Duration
	}{
		{"/default", 15 * time.Second, nil, nil, nil},
		{"/zero", 0, nil, nil, nil},
		{"/all", 1500 * time.Millisecond, d(0), d(3 * time.Second), d(10 * time.Millisecond)},
	}
	for _, tt := range tests {
		r := tbl.Match(req("h", tt.path), 0)
		if r.Timeout != tt.timeout || !reflect.DeepEqual(r.IdleTimeout, tt.idle) ||
			!reflect.DeepEqual(r.MaxGRPCTimeout, tt.maxGRPC) || !reflect.DeepEqual(r.GRPCTimeoutOffset, tt.offsetG) {
			t.Errorf("%s: timeout %v idle %v maxGRPC %v offset %v", tt.path, r.Timeout, r.IdleTimeout, r.MaxGRPCTimeout, r.GRPCTimeoutOffset)
		}
		if r.ClusterNotFoundCode != 503 {
			t.Errorf("%s: ClusterNotFoundCode %d", tt.path, r.ClusterNotFoundCode)
		}
	}
}

func TestRetryPolicy(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  retry_policy: {retry_on: 5xx, num_retries: 7}
  routes:
  - {name: inherit, match: {path: /inherit}, route: {cluster: c}}
  - name: defaults
    match: {path: /defaults}
    route: {cluster: c, retry_policy: {retry_on: " gateway-error , reset,,connect-failure "}}
  - name: full
    match: {path: /full}
    route:
      cluster: c
      retry_policy:
        retry_on: retriable-status-codes,retriable-headers,retriable-4xx,refused-stream,envoy-ratelimited,reset-before-request,cancelled,deadline-exceeded,internal,resource-exhausted,unavailable
        num_retries: 0
        per_try_timeout: 0.25s
        per_try_idle_timeout: 1s
        retry_back_off: {base_interval: 0.1s, max_interval: 2s}
        retriable_status_codes: [409, 503]
        retriable_headers: [{name: x-retry}]
        retriable_request_headers: [{name: ":method", string_match: {exact: GET}}]
        retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]
        host_selection_retry_max_attempts: 3
  - name: sub-ms
    match: {path: /sub-ms}
    route: {cluster: c, retry_policy: {retry_back_off: {base_interval: 0.0001s}}}
- name: none
  domains: ["none"]
  routes: [{name: none, match: {prefix: /}, route: {cluster: c}}]
`)
	if r := tbl.Match(req("none", "/"), 0); r.Retry != nil {
		t.Errorf("no policy: got %+v", r.Retry)
	}
	inherit := tbl.Match(req("h", "/inherit"), 0).Retry
	want := &RetryPolicy{On: Retry5xx, NumRetries: 7, HostSelectionMaxAttempts: 1,
		Backoff: backoff.Policy{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond}}
	if !reflect.DeepEqual(inherit, want) {
		t.Errorf("inherited: %+v\nwant %+v", inherit, want)
	}
	defaults := tbl.Match(req("h", "/defaults"), 0).Retry
	want = &RetryPolicy{On: RetryGatewayError | RetryReset | RetryConnectFailure, NumRetries: 1, HostSelectionMaxAttempts: 1,
		Backoff: backoff.Policy{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond}}
	if !reflect.DeepEqual(defaults, want) {
		t.Errorf("defaults: %+v\nwant %+v", defaults, want)
	}
	if got := defaults.On.String(); got != "gateway-error,reset,connect-failure" {
		t.Errorf("On.String() = %q", got)
	}
	full := tbl.Match(req("h", "/full"), 0).Retry
	if full.NumRetries != 0 || full.PerTryTimeout != 250*time.Millisecond || full.PerTryIdleTimeout != time.Second ||
		full.Backoff != (backoff.Policy{Base: 100 * time.Millisecond, Max: 2 * time.Second}) ||
		!reflect.DeepEqual(full.RetriableStatusCodes, []uint32{409, 503}) || !full.AvoidPreviousHosts ||
		full.HostSelectionMaxAttempts != 3 || len(full.RetriableHeaders) != 1 || len(full.RetriableRequestHeaders) != 1 {
		t.Errorf("full: %+v", full)
	}
	if full.On != RetryRetriableStatusCodes|RetryRetriableHeaders|RetryRetriable4xx|RetryRefusedStream|RetryEnvoyRateLimited|
		RetryResetBeforeRequest|RetryGRPCCancelled|RetryGRPCDeadlineExceeded|RetryGRPCInternal|RetryGRPCResourceExhausted|RetryGRPCUnavailable {
		t.Errorf("full.On = %s", full.On)
	}
	if sub := tbl.Match(req("h", "/sub-ms"), 0).Retry; sub.Backoff != (backoff.Policy{Base: time.Millisecond, Max: 10 * time.Millisecond}) {
		t.Errorf("sub-ms back-off: %+v", sub.Backoff)
	}

	// Request restriction.
	if !full.AllowsRequest(hdr(":method", "GET")) || full.AllowsRequest(hdr(":method", "POST")) {
		t.Errorf("AllowsRequest does not follow retriable_request_headers")
	}
	if !defaults.AllowsRequest(hdr(":method", "POST")) {
		t.Errorf("AllowsRequest without retriable_request_headers must allow")
	}
}

func TestRetriableResponse(t *testing.T) {
	m, err := NewHeaderMatcher(parseHeaderMatcher(t, `{name: x-retry}`))
	if err != nil {
		t.Fatal(err)
	}
	p := &RetryPolicy{RetriableStatusCodes: []uint32{418}, RetriableHeaders: []*HeaderMatcher{m}}
	tests := []struct {
		on   string
		resp []string
		want bool
	}{
		{"5xx", []string{":status", "500"}, true},
		{"5xx", []string{":status", "599"}, true},
		{"5xx", []string{":status", "404"}, false},
		{"gateway-error", []string{":status", "502"}, true},
		{"gateway-error", []string{":status", "504"}, true},
		{"gateway-error", []string{":status", "500"}, false},
		{"retriable-4xx", []string{":status", "409"}, true},
		{"retriable-4xx", []string{":status", "400"}, false},
		{"retriable-status-codes", []string{":status", "418"}, true},
		{"retriable-status-codes", []string{":status", "419"}, false},
		{"retriable-headers", []string{":status", "200", "x-retry", "1"}, true},
		{"retriable-headers", []string{":status", "200"}, false},
		{"unavailable", []string{":status", "200", "grpc-status", "14"}, true},
		{"unavailable", []string{":status", "200", "grpc-status", "13"}, false},
		{"internal", []string{":status", "200", "grpc-status", "13"}, true},
		{"cancelled", []string{":status", "200", "grpc-status", "1"}, true},
		{"deadline-exceeded", []string{":status", "200", "grpc-status", "4"}, true},
		{"resource-exhausted", []string{":status", "200", "grpc-status", "8"}, true},
		{"5xx", []string{":status", "200", "grpc-status", "14"}, false},
		// A rate-limited response is only retried for envoy-ratelimited.
		{"5xx", []string{":status", "503", "x-envoy-ratelimited", "true"}, false},
		{"envoy-ratelimited", []string{":status", "429", "x-envoy-ratelimited", "true"}, true},
		{"connect-failure", []string{":status", "503"}, false},
	}
	for _, tt := range tests {
		on, unknown := ParseRetryOn(tt.on)
		if unknown != "" {
			t.Fatalf("ParseRetryOn(%q): unknown %q", tt.on, unknown)
		}
		if got := p.RetriableResponse(on, hdr(tt.resp...)); got != tt.want {
			t.Errorf("%s on %v: %v, want %v", tt.on, tt.resp, got, tt.want)
		}
	}
	if _, unknown := ParseRetryOn("5xx,bogus,other"); unknown != "bogus" {
		t.Errorf("ParseRetryOn unknown = %q", unknown)
	}
}

func TestRetriableReset(t *testing.T) {
	p := &RetryPolicy{}
	tests := []struct {
		on   string
		kind ResetKind
		sent bool
		want bool
	}{
		{"reset", ResetOther, true, true},
		{"reset", ResetOverflow, false, false}, // never retried
		{"5xx", ResetOther, true, true},
		{"gateway-error", ResetConnectFailure, false, true},
		{"connect-failure", ResetConnectFailure, false, true},
		{"connect-failure", ResetOther, false, false},
		{"refused-stream", ResetRefusedStream, true, true},
		{"refused-stream", ResetOther, true, false},
		{"reset-before-request", ResetOther, false, true},
		{"reset-before-request", ResetOther, true, false},
		{"retriable-4xx", ResetOther, false, false},
	}
	for _, tt := range tests {
		on, _ := ParseRetryOn(tt.on)
		if got := p.RetriableReset(on, tt.kind, tt.sent); got != tt.want {
			t.Errorf("%s kind %d sent %v: %v, want %v", tt.on, tt.kind, tt.sent, got, tt.want)
		}
	}
}

func TestAccessors(t *testing.T) {
	rc := parseRC(t, `
name: acc
metadata: {filter_metadata: {a: {k: v}}}
virtual_hosts:
- name: vh
  domains: ["*"]
  include_attempt_count_in_response: true
  include_is_timeout_retry_header: true
  routes:
  - name: r
    match: {prefix: /}
    route: {cluster: c, cluster_not_found_response_code: NOT_FOUND}
    decorator: {operation: op, propagate: false}
  - match: {prefix: /}
    route: {cluster: c, cluster_not_found_response_code: INTERNAL_SERVER_ERROR}
`)
	tbl, err := Compile(rc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if tbl.Proto() != rc || tbl.Name() != "acc" || tbl.Metadata.GetFilterMetadata()["a"] == nil {
		t.Errorf("table accessors")
	}
	v := tbl.VirtualHosts()[0]
	if !v.IncludeAttemptCountInResponse || !v.IncludeIsTimeoutRetryHeader || v.IncludeRequestAttemptCount {
		t.Errorf("virtual host flags %+v", v)
	}
	r := v.Routes()[0]
	if r.Decorator.GetOperation() != "op" || r.Decorator.Propagate || r.ClusterNotFoundCode != 404 {
		t.Errorf("route %+v decorator %+v", r, r.Decorator)
	}
	if v.Routes()[1].ClusterNotFoundCode != 500 || v.Routes()[1].Decorator.GetOperation() != "" {
		t.Errorf("second route %+v", v.Routes()[1])
	}
	for a, want := range map[Action]string{Forward: "route", Redirect: "redirect", DirectResponse: "direct_response"} {
		if a.String() != want {
			t.Errorf("%d.String() = %q", a, a.String())
		}
	}
	m, err := NewHeaderMatcher(parseHeaderMatcher(t, `{name: X-Upper}`))
	if err != nil || m.Name() != "x-upper" {
		t.Errorf("HeaderMatcher.Name() = %q, %v", m.Name(), err)
	}
}

// TestStreamLimit: the stream duration limit as Envoy's connection manager
// works it out from a route's max_stream_duration, the manager's and a
// grpc-timeout header.
func TestStreamLimit(t *testing.T) {
	d := func(v time.Duration) *time.Duration { return &v }
	const mgr = 10 * time.Second
	for _, tc := range []struct {
		name  string
		sd    *StreamDuration
		req   *http.Header
		mgr   time.Duration
		limit time.Duration
		ok    bool
	}{
		{"none anywhere", nil, hdr(), 0, 0, false},
		{"the manager's", nil, hdr(), mgr, mgr, true},
		{"the route's over the manager's", &StreamDuration{Max: d(time.Second)}, hdr(), mgr, time.Second, true},
		{"the route's 0 lifts the manager's", &StreamDuration{Max: d(0)}, hdr(), mgr, 0, false},
		{"grpc-timeout ignored without grpc_timeout_header_max", &StreamDuration{Max: d(time.Second)}, hdr("grpc-timeout", "5S"), mgr, time.Second, true},
		{"grpc-timeout, no cap", &StreamDuration{GRPCTimeoutHeaderMax: d(0)}, hdr("grpc-timeout", "5S"), mgr, 5 * time.Second, true},
		{"grpc-timeout capped", &StreamDuration{GRPCTimeoutHeaderMax: d(2 * time.Second)}, hdr("grpc-timeout", "5S"), mgr, 2 * time.Second, true},
		{"grpc-timeout less the offset", &StreamDuration{GRPCTimeoutHeaderMax: d(0), GRPCTimeoutHeaderOffset: d(time.Second)}, hdr("grpc-timeout", "5S"), 0, 4 * time.Second, true},
		{"an offset taking it all", &StreamDuration{GRPCTimeoutHeaderMax: d(0), GRPCTimeoutHeaderOffset: d(time.Minute)}, hdr("grpc-timeout", "5S"), 0, 0, true},
		{"no grpc-timeout: max_stream_duration", &StreamDuration{Max: d(3 * time.Second), GRPCTimeoutHeaderMax: d(0)}, hdr(), mgr, 3 * time.Second, true},
		{"no grpc-timeout, no max: the manager's", &StreamDuration{GRPCTimeoutHeaderMax: d(0)}, hdr(), mgr, mgr, true},
		{"a malformed grpc-timeout is none", &StreamDuration{GRPCTimeoutHeaderMax: d(0)}, hdr("grpc-timeout", "soon"), 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Route{MaxStreamDuration: tc.sd}
			if limit, ok := r.StreamLimit(tc.req, tc.mgr); limit != tc.limit || ok != tc.ok {
				t.Fatalf("StreamLimit = %v, %v; want %v, %v", limit, ok, tc.limit, tc.ok)
			}
		})
	}
}
