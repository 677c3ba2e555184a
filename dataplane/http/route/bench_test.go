package route

import (
	"fmt"
	"strings"
	"testing"
)

// benchConfig is a table with 41 virtual hosts and 700 routes: 40 services
// with 10 routes each (prefixes, exact paths, header matches, a regex), and
// one big virtual host with 300 prefix and path routes.
func benchConfig() string {
	var b strings.Builder
	b.WriteString("name: bench\nvirtual_hosts:\n")
	for i := range 40 {
		fmt.Fprintf(&b, "- name: svc-%d\n  domains: [svc-%d.example.com, \"svc-%d.example.com:8080\", \"*.svc-%d.example\", \"svc-%d.*\"]\n  routes:\n", i, i, i, i, i)
		for j := range 3 {
			fmt.Fprintf(&b, "  - {name: canary-%d, match: {prefix: /api/v%d, headers: [{name: x-canary, string_match: {exact: \"1\"}}]}, route: {cluster: canary-%d}}\n", j, j, i)
		}
		for j := range 3 {
			fmt.Fprintf(&b, "  - {name: path-%d, match: {path: /exact/%d}, route: {cluster: c-%d}}\n", j, j, i)
		}
		b.WriteString("  - {name: regex, match: {safe_regex: {regex: \"/items/[0-9]+\"}}, route: {cluster: items}}\n")
		for j := range 2 {
			fmt.Fprintf(&b, "  - {name: api-%d, match: {prefix: /api/v%d/}, route: {cluster: api-%d}}\n", j, j, i)
		}
		fmt.Fprintf(&b, "  - {name: root, match: {prefix: /}, route: {cluster: svc-%d}}\n", i)
	}
	b.WriteString("- name: big\n  domains: [\"*\"]\n  routes:\n")
	for j := range 150 {
		fmt.Fprintf(&b, "  - {name: p-%d, match: {prefix: /p%d/}, route: {cluster: p-%d}}\n", j, j, j)
		fmt.Fprintf(&b, "  - {name: e-%d, match: {path: /e/%d}, route: {cluster: e-%d}}\n", j, j, j)
	}
	return b.String()
}

func benchMatch(b *testing.B, h, want string, kv ...string) {
	tbl := mustCompile(b, benchConfig())
	host, path, _ := strings.Cut(h, "|")
	rq := req(host, path, kv...)
	if got := routeName(tbl.Match(rq, 0)); got != want {
		b.Fatalf("matched %s, want %s", got, want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if tbl.Match(rq, 0) == nil {
			b.Fatal("no match")
		}
	}
}

// Exact domain, prefix route after 6 routes that fail.
func BenchmarkMatchPrefix(b *testing.B) {
	benchMatch(b, "svc-17.example.com|/api/v1/users?id=3", "api-1")
}

// Exact domain with port, exact-path route.
func BenchmarkMatchPath(b *testing.B) { benchMatch(b, "svc-39.example.com:8080|/exact/2", "path-2") }

// Exact header match (the route is first; the header is found among others).
func BenchmarkMatchHeader(b *testing.B) {
	benchMatch(b, "svc-5.example.com|/api/v2/x", "canary-2", "user-agent", "bench", "accept", "*/*", "x-canary", "1")
}

// Upper-case host through a suffix wildcard, falling to the catch-all route.
func BenchmarkMatchWildcard(b *testing.B) { benchMatch(b, "A.B.SVC-33.EXAMPLE|/zzz", "root") }

// The "*" virtual host, 300th route.
func BenchmarkMatchDefaultLast(b *testing.B) { benchMatch(b, "unknown.example.org|/e/149", "e-149") }

// Regex route (Go's regexp).
func BenchmarkMatchRegex(b *testing.B) { benchMatch(b, "svc-1.example.com|/items/12345", "regex") }

func BenchmarkMutateRequest(b *testing.B) {
	tbl := mustCompile(b, `
request_headers_to_add: [{header: {key: x-config, value: c}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
virtual_hosts:
- name: vh
  domains: ["*"]
  request_headers_to_add: [{header: {key: x-vhost, value: v}}]
  request_headers_to_remove: [x-internal]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    request_headers_to_add: [{header: {key: x-route, value: r}, append_action: ADD_IF_ABSENT}]
`)
	base := req("h", "/", "x-internal", "secret", "accept", "*/*")
	r := tbl.Match(base, 0)
	var h = hdr()
	b.ReportAllocs()
	for b.Loop() {
		base.CopyTo(h)
		r.MutateRequest(h, nil)
	}
}

func BenchmarkClusterForWeighted(b *testing.B) {
	tbl := mustCompile(b, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {weighted_clusters: {clusters: [{name: a, weight: 10}, {name: b, weight: 20}, {name: c, weight: 70}]}}
`)
	h := req("h", "/")
	r := tbl.Match(h, 0)
	b.ReportAllocs()
	var rnd uint64
	for b.Loop() {
		rnd += 7919
		if r.ClusterFor(h, rnd) == "" {
			b.Fatal("no cluster")
		}
	}
}

// TestMatchDoesNotAllocate pins the benchmarks' 0 allocs/op.
func TestMatchDoesNotAllocate(t *testing.T) {
	tbl := mustCompile(t, benchConfig())
	for _, tt := range []struct {
		host, path string
		kv         []string
	}{
		{"svc-17.example.com", "/api/v1/users?id=3", nil},
		{"svc-39.example.com:8080", "/exact/2", nil},
		{"svc-5.example.com", "/api/v2/x", []string{"x-canary", "1"}},
		{"A.B.SVC-33.EXAMPLE", "/zzz", nil},
		{"svc-3.anything", "/", nil},
		{"unknown.example.org", "/e/149", nil},
	} {
		rq := req(tt.host, tt.path, tt.kv...)
		if n := testing.AllocsPerRun(100, func() { tbl.Match(rq, 0) }); n != 0 {
			t.Errorf("Match(%s%s) allocates %v times", tt.host, tt.path, n)
		}
	}
}
