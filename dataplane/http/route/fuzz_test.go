package route

import (
	"strings"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// fuzzDomains are the virtual hosts of fuzzConfig with their domains, for
// the reference implementation.
var fuzzDomains = []struct {
	name    string
	domains []string
}{
	{"exact", []string{"api.example.com", "api.example.com:8443", "[::1]:80"}},
	{"suffix", []string{"*.example.com"}},
	{"suffix-long", []string{"*-x.example.com"}},
	{"prefix", []string{"api.*"}},
	{"prefix-long", []string{"api.example.*"}},
	{"ops", []string{"ops.test"}},
	{"default", []string{"*"}},
}

func fuzzConfig(ignorePort bool) string {
	var b strings.Builder
	if ignorePort {
		b.WriteString("ignore_port_in_host_matching: true\n")
	}
	b.WriteString("virtual_hosts:\n")
	for _, v := range fuzzDomains {
		b.WriteString("- name: " + v.name + "\n  domains: [")
		for i, d := range v.domains {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(`"` + d + `"`)
		}
		b.WriteString("]\n  routes:\n")
		if v.name == "ops" {
			b.WriteString(`
  - match: {safe_regex: {regex: "/r/([^/]*)/(.*)"}}
    route: {cluster: c, regex_rewrite: {pattern: {regex: "/r/([^/]*)/"}, substitution: "/\\1-\\0/"}, host_rewrite_path_regex: {pattern: {regex: "^/r/([^/]*)/.*$"}, substitution: "\\1"}, append_x_forwarded_host: true}
    request_headers_to_add: [{header: {key: x-from, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}, append_action: OVERWRITE_IF_EXISTS}]
  - match: {prefix: /redirect, case_sensitive: false}
    redirect: {prefix_rewrite: /to, port_redirect: 8443, strip_query: true}
  - match: {path_separated_prefix: /direct}
    direct_response: {status: 302, body: {inline_string: moved}}
    response_headers_to_add: [{header: {key: x-a, value: a}, append_action: ADD_IF_ABSENT}]
  - match: {prefix: /, headers: [{name: x-fuzz, range_match: {start: -5, end: 5}, invert_match: true}], query_parameters: [{name: q, string_match: {suffix: z, ignore_case: true}}]}
    route: {cluster_header: x-fuzz}
  - match: {prefix: /}
    route: {weighted_clusters: {header_name: x-fuzz, clusters: [{name: a, weight: 1}, {cluster_header: x-fuzz, weight: 2}]}, prefix_rewrite: /w}
`)
			continue
		}
		b.WriteString(`
  - {name: hdr, match: {prefix: /h, headers: [{name: x-fuzz, string_match: {exact: "yes"}}]}, route: {cluster: c}}
  - {name: exact, match: {path: /exact}, route: {cluster: c}}
  - {name: ci, match: {prefix: /CI, case_sensitive: false}, route: {cluster: c}}
  - {name: api, match: {prefix: /api/}, route: {cluster: c}}
  - {name: apiroot, match: {path: /api}, route: {cluster: c}}
  - {name: sep, match: {path_separated_prefix: /seg}, route: {cluster: c}}
`)
		if v.name == "default" {
			b.WriteString("  - {name: root, match: {prefix: /}, route: {cluster: c}}\n")
		}
	}
	return b.String()
}

// refLower lower-cases ASCII letters, as Envoy does with hosts.
func refLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// refVirtualHost is the domain search written out plainly: exact, longest
// suffix wildcard, longest prefix wildcard, "*".
func refVirtualHost(host string, ignorePort bool) string {
	if ignorePort {
		colon := strings.LastIndex(host, ":")
		if colon >= 0 && !(strings.LastIndex(host, "]") > colon) {
			host = host[:colon]
		}
	}
	host = refLower(host)
	best, bestLen := "", -1
	for _, v := range fuzzDomains {
		for _, d := range v.domains {
			if d != "*" && !strings.HasPrefix(d, "*") && !strings.HasSuffix(d, "*") && d == host {
				return v.name
			}
		}
	}
	for _, v := range fuzzDomains {
		for _, d := range v.domains {
			if d != "*" && strings.HasPrefix(d, "*") && len(host) > len(d)-1 && strings.HasSuffix(host, d[1:]) && len(d) > bestLen {
				best, bestLen = v.name, len(d)
			}
		}
	}
	if best != "" {
		return best
	}
	for _, v := range fuzzDomains {
		for _, d := range v.domains {
			if d != "*" && !strings.HasPrefix(d, "*") && strings.HasSuffix(d, "*") && len(host) > len(d)-1 && strings.HasPrefix(host, d[:len(d)-1]) && len(d) > bestLen {
				best, bestLen = v.name, len(d)
			}
		}
	}
	if best != "" {
		return best
	}
	return "default"
}

// refRoute is the route list of the non-ops virtual hosts written out.
func refRoute(vhost, path, fuzzHeader string, hasHeader bool) string {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	switch {
	case strings.HasPrefix(path, "/h") && hasHeader && fuzzHeader == "yes":
		return "hdr"
	case path == "/exact":
		return "exact"
	case len(path) >= 3 && refLower(path[:3]) == "/ci":
		return "ci"
	case strings.HasPrefix(path, "/api/"):
		return "api"
	case path == "/api":
		return "apiroot"
	case path == "/seg" || strings.HasPrefix(path, "/seg/"):
		return "sep"
	case vhost == "default" && strings.HasPrefix(path, "/"):
		return "root"
	}
	return "<nil>"
}

// FuzzMatch matches arbitrary hosts, paths and a header against a fixed
// table: nothing may panic, and for the prefix/path/domain part the result
// must agree with the reference above. Matched routes are then run through
// every operation the router uses.
func FuzzMatch(f *testing.F) {
	for _, s := range [][3]string{
		{"api.example.com", "/api/v1", ""},
		{"API.EXAMPLE.COM:8443", "/exact?x", "yes"},
		{"a-x.example.com", "/ci/x", ""},
		{"api.example.org", "/seg/x#f", ""},
		{"[::1]:80", "/h", "yes"},
		{"ops.test", "/r/abc/def?q=Z", "9"},
		{"ops.test", "/REDIRECT/x?y", ""},
		{"ops.test", "/direct/x", ""},
		{"ops.test", "/?q=aZ", "7"},
		{"ops.test:99", "/x", "12"},
		{"", "", ""},
		{".example.com", "api", "\x00"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	tables := map[bool]*Table{}
	for _, ip := range []bool{false, true} {
		tbl, err := Compile(parseRC(f, fuzzConfig(ip)), Options{})
		if err != nil {
			f.Fatal(err)
		}
		tables[ip] = tbl
	}
	f.Fuzz(func(t *testing.T, host, path, value string) {
		for ignorePort, tbl := range tables {
			h := &http.Header{}
			h.Add(":method", "GET")
			h.Add(":scheme", "https")
			h.Add(":authority", host)
			h.Add(":path", path)
			hasHeader := len(value)%2 == 0
			if hasHeader {
				h.Add("x-fuzz", value)
			}
			vh := tbl.VirtualHostFor(host)
			wantVH := refVirtualHost(host, ignorePort)
			if vh == nil || vh.Name != wantVH {
				t.Fatalf("ignorePort=%v VirtualHostFor(%q) = %v, reference %s", ignorePort, host, vh, wantVH)
			}
			r := tbl.Match(h, 0)
			if wantVH != "ops" {
				if got, want := routeName(r), refRoute(wantVH, path, value, hasHeader); got != want {
					t.Fatalf("ignorePort=%v %q %q (x-fuzz %q %v): matched %s, reference %s", ignorePort, host, path, value, hasHeader, got, want)
				}
			}
			if r == nil {
				continue
			}
			// The router's operations must not panic on whatever matched.
			info := &http.StreamInfo{}
			r.ClusterFor(h, uint64(len(path))*0x9e3779b97f4a7c15)
			r.MutateRequest(h, info)
			r.RewriteRequest(h, true)
			resp := &http.Header{}
			resp.Add(":status", "200")
			r.MutateResponse(resp, info)
			r.Reply(h, &http.Header{}, info)
			r.Location(h)
			if r.Retry != nil {
				r.Retry.RetriableResponse(r.Retry.On, resp)
			}
		}
	})
}
