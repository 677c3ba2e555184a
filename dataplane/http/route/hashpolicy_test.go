package route

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestHashPolicies: each hash_policy kind hashes what Envoy's does with
// xxHash64, several fold together as Envoy folds them, and a terminal one
// that found its input ends the list.
func TestHashPolicies(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /header}
    route: {cluster: c, hash_policy: [{header: {header_name: X-User}}]}
  - match: {prefix: /rewrite}
    route: {cluster: c, hash_policy: [{header: {header_name: x-user, regex_rewrite: {pattern: {regex: "-.*"}, substitution: ""}}}]}
  - match: {prefix: /two}
    route: {cluster: c, hash_policy: [{header: {header_name: a}}, {query_parameter: {name: q}}]}
  - match: {prefix: /terminal}
    route: {cluster: c, hash_policy: [{header: {header_name: a}, terminal: true}, {query_parameter: {name: q}}]}
  - match: {prefix: /cookie}
    route: {cluster: c, hash_policy: [{cookie: {name: sticky, ttl: 3600s, path: /cookie, attributes: [{name: SameSite, value: Lax}]}}]}
  - match: {prefix: /plaincookie}
    route: {cluster: c, hash_policy: [{cookie: {name: sticky}}]}
  - match: {prefix: /ip}
    route: {cluster: c, hash_policy: [{connection_properties: {source_ip: true}}]}
`)
	in := HashInput{
		Remote:       netip.MustParseAddrPort("10.0.0.7:5555"),
		DirectRemote: netip.MustParseAddrPort("127.0.0.1:40000"),
		Local:        netip.MustParseAddrPort("127.0.0.1:8080"),
	}
	x := xxhash.Sum64String
	fold := func(a, b uint64) uint64 { return (a<<1 | a>>63) ^ b }
	cookieValue := fmt.Sprintf("%016x", x("127.0.0.1:40000127.0.0.1:8080"))
	for _, tc := range []struct {
		name      string
		path      string
		kv        []string
		want      uint64
		ok        bool
		setCookie string
	}{
		{"header", "/header", []string{"x-user", "alice"}, x("alice"), true, ""},
		{"header missing", "/header", nil, 0, false, ""},
		{"header values in any order", "/header", []string{"x-user", "b", "x-user", "a"}, chain("a", "b"), true, ""},
		{"header rewritten", "/rewrite", []string{"x-user", "alice-123"}, x("alice"), true, ""},
		{"two policies", "/two?q=1", []string{"a", "v"}, fold(x("v"), x("1")), true, ""},
		{"the second alone", "/two?q=1", nil, x("1"), true, ""},
		{"terminal", "/terminal?q=1", []string{"a", "v"}, x("v"), true, ""},
		{"terminal without its input", "/terminal?q=1", nil, x("1"), true, ""},
		{"cookie", "/cookie", []string{"cookie", `a=b; sticky="s1"`}, x("s1"), true, ""},
		{"cookie made", "/cookie", nil, x(cookieValue), true,
			`sticky="` + cookieValue + `"; Max-Age=3600; Path=/cookie; SameSite=Lax; HttpOnly`},
		{"no cookie, no ttl", "/plaincookie", []string{"cookie", "other=1"}, 0, false, ""},
		{"source ip", "/ip", nil, x("10.0.0.7"), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tbl.Match(req("h", tc.path, tc.kv...), 0)
			if r == nil {
				t.Fatal("no route")
			}
			got, ok, set := r.Hash(req("h", tc.path, tc.kv...), in)
			if got != tc.want || ok != tc.ok || set != tc.setCookie {
				t.Fatalf("Hash = %x, %v, %q; want %x, %v, %q", got, ok, set, tc.want, tc.ok, tc.setCookie)
			}
		})
	}
}

// chain is Envoy's xxHash64 of several values: each value's hash seeds the next.
func chain(vals ...string) uint64 {
	seed := uint64(0)
	for _, v := range vals {
		d := xxhash.NewWithSeed(seed)
		d.WriteString(v)
		seed = d.Sum64()
	}
	return seed
}
