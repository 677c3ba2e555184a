package route

import (
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

// TestPathMatch checks each path specifier with exact expectations; every
// route sits alone in its virtual host so only its own match decides.
func TestPathMatch(t *testing.T) {
	tests := []struct {
		name  string
		match string // RouteMatch in YAML flow style
		path  string
		want  bool
	}{
		{"prefix", `{prefix: /api}`, "/api", true},
		{"prefix longer", `{prefix: /api}`, "/apix/y", true},
		{"prefix query", `{prefix: /api}`, "/api?x=1", true},
		{"prefix shorter", `{prefix: /api}`, "/ap", false},
		{"prefix case", `{prefix: /api}`, "/API", false},
		{"prefix ignores query", `{prefix: "/a?"}`, "/a?b", false}, // query is never matched
		{"prefix ignores fragment", `{prefix: "/a#"}`, "/a#b", false},
		{"prefix insensitive", `{prefix: /Api, case_sensitive: false}`, "/aPI/x", true},
		{"prefix insensitive miss", `{prefix: /Api, case_sensitive: false}`, "/apx", false},
		{"empty prefix", `{prefix: ""}`, "/anything", true},
		{"path", `{path: /exact}`, "/exact", true},
		{"path query", `{path: /exact}`, "/exact?q", true},
		{"path fragment", `{path: /exact}`, "/exact#f", true},
		{"path longer", `{path: /exact}`, "/exact/", false},
		{"path case", `{path: /exact}`, "/EXACT", false},
		{"path insensitive", `{path: /Exact, case_sensitive: false}`, "/eXACT", true},
		{"regex full match", `{safe_regex: {regex: "/v[0-9]+/.*"}}`, "/v12/x", true},
		{"regex anchored", `{safe_regex: {regex: "/v[0-9]+"}}`, "/v12/x", false},
		{"regex not on query", `{safe_regex: {regex: "/v[0-9]+"}}`, "/v1?x=/v2", true},
		{"regex alternation anchored", `{safe_regex: {regex: "/a|/b"}}`, "/bc", false},
		{"regex case_sensitive ignored", `{safe_regex: {regex: "/a"}, case_sensitive: false}`, "/A", false},
		{"regex (?i)", `{safe_regex: {regex: "(?i)/a"}}`, "/A", true},
		{"separated prefix equal", `{path_separated_prefix: /api}`, "/api", true},
		{"separated prefix slash", `{path_separated_prefix: /api}`, "/api/x", true},
		{"separated prefix query", `{path_separated_prefix: /api}`, "/api?x", true},
		{"separated prefix other", `{path_separated_prefix: /api}`, "/apix", false},
		{"separated prefix short", `{path_separated_prefix: /api}`, "/ap", false},
		{"separated prefix insensitive", `{path_separated_prefix: /Api, case_sensitive: false}`, "/API/x", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - name: r
    match: `+tt.match+`
    route: {cluster: c}
`)
			got := tbl.Match(req("h", tt.path), 0) != nil
			if got != tt.want {
				t.Errorf("%s on %q: matched %v, want %v", tt.match, tt.path, got, tt.want)
			}
		})
	}
}

func TestIgnorePathParameters(t *testing.T) {
	const routes = `
  domains: ["*"]
  routes:
  - {name: exact, match: {path: /a/b}, route: {cluster: c}}
  - {name: sep, match: {path_separated_prefix: /x}, route: {cluster: c}}
`
	with := mustCompile(t, "ignore_path_parameters_in_path_matching: true\nvirtual_hosts:\n- name: vh"+routes)
	without := mustCompile(t, "virtual_hosts:\n- name: vh"+routes)
	for _, tt := range []struct{ path, with, without string }{
		{"/a/b;jsessionid=1", "exact", "<nil>"},
		{"/a/b;p?q=1", "exact", "<nil>"},
		{"/x;p/y", "sep", "<nil>"},
		{"/a/b?x;y", "exact", "exact"},
	} {
		if got := routeName(with.Match(req("h", tt.path), 0)); got != tt.with {
			t.Errorf("with: %q matched %s, want %s", tt.path, got, tt.with)
		}
		if got := routeName(without.Match(req("h", tt.path), 0)); got != tt.without {
			t.Errorf("without: %q matched %s, want %s", tt.path, got, tt.without)
		}
	}
}

func TestHeaderMatch(t *testing.T) {
	tests := []struct {
		name    string
		matcher string // HeaderMatcher in YAML flow style
		headers []string
		want    bool
	}{
		{"name only: present", `{name: x-a}`, []string{"x-a", "1"}, true},
		{"name only: absent", `{name: x-a}`, nil, false},
		{"name upper case", `{name: X-A, string_match: {exact: "1"}}`, []string{"x-a", "1"}, true},
		{"exact_match", `{name: x-a, exact_match: v}`, []string{"x-a", "v"}, true},
		{"exact_match other", `{name: x-a, exact_match: v}`, []string{"x-a", "w"}, false},
		{"exact_match empty matches any", `{name: x-a, exact_match: ""}`, []string{"x-a", "w"}, true},
		{"exact_match missing", `{name: x-a, exact_match: v}`, nil, false},
		{"prefix_match", `{name: x-a, prefix_match: ab}`, []string{"x-a", "abc"}, true},
		{"prefix_match miss", `{name: x-a, prefix_match: ab}`, []string{"x-a", "cab"}, false},
		{"suffix_match", `{name: x-a, suffix_match: bc}`, []string{"x-a", "abc"}, true},
		{"suffix_match miss", `{name: x-a, suffix_match: bc}`, []string{"x-a", "bca"}, false},
		{"contains_match", `{name: x-a, contains_match: b}`, []string{"x-a", "abc"}, true},
		{"contains_match miss", `{name: x-a, contains_match: z}`, []string{"x-a", "abc"}, false},
		{"safe_regex_match", `{name: x-a, safe_regex_match: {regex: "[0-9]+"}}`, []string{"x-a", "123"}, true},
		{"safe_regex_match is full", `{name: x-a, safe_regex_match: {regex: "[0-9]+"}}`, []string{"x-a", "123a"}, false},
		{"range in", `{name: x-a, range_match: {start: -10, end: 10}}`, []string{"x-a", "-10"}, true},
		{"range end excluded", `{name: x-a, range_match: {start: -10, end: 10}}`, []string{"x-a", "10"}, false},
		{"range empty", `{name: x-a, range_match: {start: 5, end: 5}}`, []string{"x-a", "5"}, false},
		{"range empty, inverted", `{name: x-a, range_match: {start: 5, end: 5}, invert_match: true}`, []string{"x-a", "5"}, true},
		{"range spaces and sign", `{name: x-a, range_match: {start: 0, end: 10}}`, []string{"x-a", " +9 "}, true},
		{"range not a number", `{name: x-a, range_match: {start: 0, end: 10}}`, []string{"x-a", "9a"}, false},
		{"range overflow", `{name: x-a, range_match: {start: 0, end: 10}}`, []string{"x-a", "99999999999999999999"}, false},
		{"present true", `{name: x-a, present_match: true}`, []string{"x-a", ""}, true},
		{"present true absent", `{name: x-a, present_match: true}`, nil, false},
		{"present false absent", `{name: x-a, present_match: false}`, nil, true},
		{"present false present", `{name: x-a, present_match: false}`, []string{"x-a", "v"}, false},
		{"present true inverted absent", `{name: x-a, present_match: true, invert_match: true}`, nil, true},
		{"present true inverted present", `{name: x-a, present_match: true, invert_match: true}`, []string{"x-a", "v"}, false},
		{"present false inverted absent", `{name: x-a, present_match: false, invert_match: true}`, nil, false},
		{"present false inverted present", `{name: x-a, present_match: false, invert_match: true}`, []string{"x-a", "v"}, true},
		{"inverted exact", `{name: x-a, string_match: {exact: v}, invert_match: true}`, []string{"x-a", "w"}, true},
		{"inverted exact equal", `{name: x-a, string_match: {exact: v}, invert_match: true}`, []string{"x-a", "v"}, false},
		// A missing header does not match an inverted value matcher either.
		{"inverted exact absent", `{name: x-a, string_match: {exact: v}, invert_match: true}`, nil, false},
		{"missing as empty", `{name: x-a, string_match: {exact: ""}, treat_missing_header_as_empty: true}`, nil, true},
		{"missing as empty inverted", `{name: x-a, string_match: {exact: v}, invert_match: true, treat_missing_header_as_empty: true}`, nil, true},
		{"missing as empty prefix", `{name: x-a, string_match: {prefix: v}, treat_missing_header_as_empty: true}`, nil, false},
		{"string exact", `{name: x-a, string_match: {exact: Vv}}`, []string{"x-a", "Vv"}, true},
		{"string exact case", `{name: x-a, string_match: {exact: Vv}}`, []string{"x-a", "vv"}, false},
		{"string exact ignore_case", `{name: x-a, string_match: {exact: Vv, ignore_case: true}}`, []string{"x-a", "vV"}, true},
		{"string prefix ignore_case", `{name: x-a, string_match: {prefix: AB, ignore_case: true}}`, []string{"x-a", "abc"}, true},
		{"string suffix ignore_case", `{name: x-a, string_match: {suffix: BC, ignore_case: true}}`, []string{"x-a", "abc"}, true},
		{"string suffix miss", `{name: x-a, string_match: {suffix: BC}}`, []string{"x-a", "abc"}, false},
		{"string contains ignore_case", `{name: x-a, string_match: {contains: B, ignore_case: true}}`, []string{"x-a", "abc"}, true},
		{"string contains", `{name: x-a, string_match: {contains: B}}`, []string{"x-a", "abc"}, false},
		{"string regex", `{name: x-a, string_match: {safe_regex: {regex: "a.c"}}}`, []string{"x-a", "abc"}, true},
		{"ignore_case is ASCII only", `{name: x-a, string_match: {exact: "é", ignore_case: true}}`, []string{"x-a", "É"}, false},
		// Repeated fields are matched as one value joined by ",".
		{"joined values", `{name: x-a, string_match: {exact: "1,2"}}`, []string{"x-a", "1", "x-a", "2"}, true},
		{"joined values first only", `{name: x-a, string_match: {exact: "1"}}`, []string{"x-a", "1", "x-a", "2"}, false},
		{"pseudo-header", `{name: ":method", string_match: {exact: POST}}`, []string{":method", "POST"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /, headers: [`+tt.matcher+`]}
    route: {cluster: c}
`)
			h := hdr(":path", "/")
			for i := 0; i+1 < len(tt.headers); i += 2 {
				h.Add(tt.headers[i], tt.headers[i+1])
			}
			if got := tbl.Match(h, 0) != nil; got != tt.want {
				t.Errorf("%s with %q: %v, want %v", tt.matcher, tt.headers, got, tt.want)
			}
		})
	}
}

func TestQueryParameterMatch(t *testing.T) {
	tests := []struct {
		name    string
		matcher string
		path    string
		want    bool
	}{
		{"exact", `{name: a, string_match: {exact: "1"}}`, "/?a=1", true},
		{"exact other", `{name: a, string_match: {exact: "1"}}`, "/?a=2", false},
		{"first value wins", `{name: a, string_match: {exact: "1"}}`, "/?a=2&a=1", false},
		{"later parameter", `{name: a, string_match: {exact: "1"}}`, "/?b=2&a=1", true},
		{"no value", `{name: a, string_match: {exact: ""}}`, "/?a", true},
		{"absent", `{name: a, string_match: {exact: ""}}`, "/?b=1", false},
		{"no query", `{name: a, string_match: {exact: ""}}`, "/", false},
		{"not decoded", `{name: a, string_match: {exact: "x y"}}`, "/?a=x%20y", false},
		{"raw encoded", `{name: a, string_match: {exact: "x%20y"}}`, "/?a=x%20y", true},
		{"name not decoded", `{name: "a b", present_match: true}`, "/?a%20b=1", false},
		{"prefix ignore_case", `{name: a, string_match: {prefix: AB, ignore_case: true}}`, "/?a=abc", true},
		{"present true", `{name: a, present_match: true}`, "/p?a=", true},
		{"present true absent", `{name: a, present_match: true}`, "/p?b=", false},
		// Envoy: present_match: false never matches (an absent parameter
		// fails first, a present one answers false).
		{"present false absent", `{name: a, present_match: false}`, "/p?b=", false},
		{"present false present", `{name: a, present_match: false}`, "/p?a=1", false},
		{"name only", `{name: a}`, "/p?a=1", true},
		{"name only absent", `{name: a}`, "/p?aa=1", false},
		{"fragment kept in value", `{name: a, string_match: {exact: "1#f"}}`, "/?a=1#f", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /, query_parameters: [`+tt.matcher+`]}
    route: {cluster: c}
`)
			if got := tbl.Match(req("h", tt.path), 0) != nil; got != tt.want {
				t.Errorf("%s on %q: %v, want %v", tt.matcher, tt.path, got, tt.want)
			}
		})
	}
}

func TestGRPCMatch(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: grpc, match: {prefix: /, grpc: {}}, route: {cluster: c}}
  - {name: other, match: {prefix: /}, route: {cluster: c}}
`)
	for ct, want := range map[string]string{
		"application/grpc":       "grpc",
		"application/grpc+proto": "grpc",
		"application/grpc-web":   "other",
		"application/json":       "other",
		"":                       "other",
	} {
		if got := routeName(tbl.Match(req("h", "/svc/M", "content-type", ct), 0)); got != want {
			t.Errorf("content-type %q: %s, want %s", ct, got, want)
		}
	}
}

// TestFirstMatchWins checks order, and that every condition of a route must
// hold.
func TestFirstMatchWins(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - name: canary
    match:
      prefix: /api
      headers: [{name: x-canary, string_match: {exact: "1"}}]
      query_parameters: [{name: debug, present_match: true}]
    route: {cluster: canary}
  - {name: api-v1, match: {path_separated_prefix: /api/v1}, route: {cluster: v1}}
  - {name: api, match: {prefix: /api}, route: {cluster: api}}
  - {name: shadowed, match: {path: /api/x}, route: {cluster: never}}
  - {name: root, match: {path: /}, route: {cluster: root}}
`)
	tests := []struct {
		path string
		kv   []string
		want string
	}{
		{"/api/v1/x", []string{"x-canary", "1"}, "api-v1"}, // no ?debug
		{"/api/v1/x?debug", []string{"x-canary", "1"}, "canary"},
		{"/api/v1/x?debug", nil, "api-v1"},
		{"/api/v1", nil, "api-v1"},
		{"/api/v10", nil, "api"},
		{"/api/x", nil, "api"}, // the later exact route never wins
		{"/", nil, "root"},
		{"/other", nil, "<nil>"},
	}
	for _, tt := range tests {
		if got := routeName(tbl.Match(req("h", tt.path, tt.kv...), 0)); got != tt.want {
			t.Errorf("%s %v: %s, want %s", tt.path, tt.kv, got, tt.want)
		}
	}
}

func TestSimpleAtoi(t *testing.T) {
	for s, want := range map[string]int64{
		"0": 0, "42": 42, "-42": -42, "+7": 7, " 8\t": 8,
		"9223372036854775807": 1<<63 - 1, "-9223372036854775808": -1 << 63,
	} {
		if got, ok := simpleAtoi(s); !ok || got != want {
			t.Errorf("simpleAtoi(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
	for _, s := range []string{"", " ", "+", "-", "1a", "9223372036854775808", "-9223372036854775809", "1 2", "0x1"} {
		if got, ok := simpleAtoi(s); ok {
			t.Errorf("simpleAtoi(%q) = %d, want failure", s, got)
		}
	}
	for s, want := range map[string]uint64{"0": 0, "+1": 1, " 18446744073709551615 ": 1<<64 - 1} {
		if got, ok := SimpleAtoiUint64(s); !ok || got != want {
			t.Errorf("SimpleAtoiUint64(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
	for _, s := range []string{"", "-1", "18446744073709551616", "++1", "1.0"} {
		if got, ok := SimpleAtoiUint64(s); ok {
			t.Errorf("SimpleAtoiUint64(%q) = %d, want failure", s, got)
		}
	}
}

// TestRuntimeFraction: a route with runtime_fraction matches the share of
// streams whose random value samples in (Envoy's traffic shifting), the
// runtime key overriding the default share; the others fall through to
// the next route.
func TestRuntimeFraction(t *testing.T) {
	y := `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - name: canary
    match: { prefix: /, runtime_fraction: { default_value: { numerator: 30 }, runtime_key: routing.traffic_shift.svc } }
    route: { cluster: canary }
  - name: stable
    match: { prefix: / }
    route: { cluster: stable }
`
	share := func(tbl *Table) int {
		n := 0
		for r := range uint64(1000) {
			if routeName(tbl.Match(req("h", "/x"), r)) == "canary" {
				n++
			}
		}
		return n
	}
	if got := share(mustCompile(t, y)); got != 300 {
		t.Errorf("default 30%%: %d of 1000 random values matched, want 300", got)
	}
	var lr bootstrapv3.LayeredRuntime
	if err := protoyaml.Unmarshal([]byte(`layers: [{name: static, static_layer: {routing.traffic_shift.svc: 75}}]`), &lr); err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(&lr)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := Compile(parseRC(t, y), Options{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	if got := share(tbl); got != 750 {
		t.Errorf("runtime 75%%: %d of 1000 random values matched, want 750", got)
	}
}

// TestConnectMatcher: connect_matcher routes take CONNECT requests only, as
// Envoy's ConnectRouteEntryImpl, with their other matchers; an HTTP/1.1
// CONNECT has no :path, so no path matcher but an empty prefix matches it; the
// virtual host is picked by the CONNECT target, port included.
func TestConnectMatcher(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: proxy
  domains: ["db.internal:5432"]
  routes:
  - name: tagged
    match: {connect_matcher: {}, headers: [{name: x-tenant, string_match: {exact: a}}]}
    route: {cluster: a, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}
  - {name: connect, match: {connect_matcher: {}}, route: {cluster: c, upgrade_configs: [{upgrade_type: CONNECT}]}}
  - {name: get, match: {prefix: /}, route: {cluster: g}}
- name: other
  domains: ["*"]
  routes:
  - {name: prefix, match: {prefix: /}, route: {cluster: p}}
`)
	connect := func(target string, kv ...string) *http.Header {
		return hdr(append([]string{":method", "CONNECT", ":authority", target}, kv...)...)
	}
	tests := []struct {
		name string
		h    *http.Header
		want string
	}{
		{"connect", connect("db.internal:5432"), "connect"},
		{"connect with header", connect("db.internal:5432", "x-tenant", "a"), "tagged"},
		{"GET is not CONNECT", req("db.internal:5432", "/"), "get"},
		{"connect elsewhere", connect("db.internal:80"), "<nil>"}, // no path: the prefix route cannot take it
		{"HTTP/2 CONNECT with a path", hdr(":method", "CONNECT", ":authority", "db.internal:5432", ":path", "/x"), "connect"},
	}
	for _, tt := range tests {
		if got := routeName(tbl.Match(tt.h, 0)); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
	r := tbl.Match(connect("db.internal:5432", "x-tenant", "a"), 0)
	if r == nil || !r.TerminateConnect || !UpgradeAllowed(r, nil, "connect") {
		t.Errorf("tagged route: TerminateConnect %v, upgrade allowed %v; want both", r != nil && r.TerminateConnect, UpgradeAllowed(r, nil, "connect"))
	}
	if r := tbl.Match(connect("db.internal:5432"), 0); r == nil || r.TerminateConnect {
		t.Errorf("route without connect_config terminates CONNECT")
	}
}
