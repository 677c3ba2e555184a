package route

import (
	"testing"
)

const domainsConfig = `
name: domains
virtual_hosts:
- name: exact
  domains: ["www.foo.com", "FOO.example:8080", "[::1]:80", "[::1]"]
  routes: [{match: {prefix: /}, route: {cluster: exact}}]
- name: suffix-short
  domains: ["*.foo.com"]
  routes: [{match: {prefix: /}, route: {cluster: suffix-short}}]
- name: suffix-long
  domains: ["*-bar.foo.com"]
  routes: [{match: {prefix: /}, route: {cluster: suffix-long}}]
- name: prefix-short
  domains: ["foo.*"]
  routes: [{match: {prefix: /}, route: {cluster: prefix-short}}]
- name: prefix-long
  domains: ["foo.bar.*"]
  routes: [{match: {prefix: /}, route: {cluster: prefix-long}}]
- name: default
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: default}}]
`

func TestVirtualHostPrecedence(t *testing.T) {
	tbl := mustCompile(t, domainsConfig)
	tests := []struct{ host, want string }{
		{"www.foo.com", "exact"},
		{"WWW.Foo.COM", "exact"}, // case-insensitive
		{"foo.example:8080", "exact"},
		{"foo.example", "prefix-short"},  // the port is part of the domain: only foo.* matches
		{"www.foo.com:80", "default"},    // and of the host: no stripping
		{"[::1]:80", "exact"},            // IPv6 literal with port
		{"[::1]", "exact"},               // and without
		{"a.foo.com", "suffix-short"},    // *.foo.com
		{"x-bar.foo.com", "suffix-long"}, // the longest suffix wildcard wins
		{"-bar.foo.com", "suffix-short"}, // a wildcard matches at least one character
		{".foo.com", "default"},          // *.foo.com needs something before the dot
		{"foo.com", "prefix-short"},
		{"bar.foo.com:80", "default"}, // the port defeats suffix wildcards too
		{"a.b.foo.com", "suffix-short"},
		{"foo.bar.baz", "prefix-long"}, // the longest prefix wildcard wins
		{"foo.baz", "prefix-short"},
		{"foo.", "default"},               // foo.* needs one character after
		{"foo.x.foo.com", "suffix-short"}, // suffix wildcards before prefix ones
		{"bar.com", "default"},
		{"", "default"},
	}
	for _, tt := range tests {
		vh := tbl.VirtualHostFor(tt.host)
		if vh == nil || vh.Name != tt.want {
			got := "<nil>"
			if vh != nil {
				got = vh.Name
			}
			t.Errorf("VirtualHostFor(%q) = %s, want %s", tt.host, got, tt.want)
		}
		if r := tbl.Match(req(tt.host, "/"), 0); r == nil || r.VirtualHost.Name != tt.want {
			t.Errorf("Match(%q) = %v, want a route of %s", tt.host, r, tt.want)
		}
	}
}

func TestVirtualHostNoDefault(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: a
  domains: ["a.com"]
  routes: [{match: {prefix: /}, route: {cluster: a}}]
`)
	if r := tbl.Match(req("b.com", "/"), 0); r != nil {
		t.Errorf("b.com matched %v", r.VirtualHost.Name)
	}
	// Without :authority no virtual host can be chosen.
	if r := tbl.Match(hdr(":path", "/"), 0); r != nil {
		t.Errorf("request without :authority matched")
	}
	// A long upper-case host takes the slow path to lower case.
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'A'
	}
	if vh := tbl.VirtualHostFor(string(long)); vh != nil {
		t.Errorf("long host matched %s", vh.Name)
	}
}

func TestVirtualHostOnlyDefault(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: any
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: c}}]
`)
	// As in Envoy, a table with only "*" needs no :authority.
	if r := tbl.Match(hdr(":path", "/x"), 0); r == nil || r.VirtualHost.Name != "any" {
		t.Errorf("got %v", r)
	}
	// Without :path no route matches.
	if r := tbl.Match(hdr(":authority", "x"), 0); r != nil {
		t.Errorf("request without :path matched")
	}
}

func TestIgnorePortInHostMatching(t *testing.T) {
	tbl := mustCompile(t, `
ignore_port_in_host_matching: true
virtual_hosts:
- name: plain
  domains: ["foo.com", "[::1]"]
  routes: [{match: {prefix: /}, route: {cluster: c}}]
- name: with-port
  domains: ["bar.com:8080"]
  routes: [{match: {prefix: /}, route: {cluster: c}}]
`)
	tests := []struct{ host, want string }{
		{"foo.com", "plain"},
		{"foo.com:8080", "plain"},
		{"FOO.com:1", "plain"},
		{"foo.com:", "plain"}, // Envoy's getPortStart: an empty port is still a port
		{"[::1]:443", "plain"},
		{"[::1]", "plain"},
		// The option strips the request's port, not the domain's.
		{"bar.com:8080", "<nil>"},
		{"bar.com", "<nil>"},
	}
	for _, tt := range tests {
		got := "<nil>"
		if vh := tbl.VirtualHostFor(tt.host); vh != nil {
			got = vh.Name
		}
		if got != tt.want {
			t.Errorf("VirtualHostFor(%q) = %s, want %s", tt.host, got, tt.want)
		}
	}
}

func TestPortStart(t *testing.T) {
	for host, want := range map[string]int{
		"foo":        -1,
		"foo:80":     3,
		"foo:":       3,
		"[::1]":      -1,
		"[::1]:80":   5,
		"::1":        1, // a bare IPv6 address is taken as host ":" and a port, as Envoy does
		"a:b:c":      3,
		"[fe80::1]x": -1,
	} {
		if got := PortStart(host); got != want {
			t.Errorf("PortStart(%q) = %d, want %d", host, got, want)
		}
	}
}

func TestStripPort(t *testing.T) {
	tests := []struct {
		method, host string
		port         int
		want         string
		stripped     bool
	}{
		{"GET", "foo.com:8080", 8080, "foo.com", true},
		{"GET", "foo.com:8080", 80, "foo.com:8080", false}, // strip_matching_host_port: other port kept
		{"GET", "foo.com:8080", -1, "foo.com", true},       // strip_any_host_port
		{"GET", "foo.com", -1, "foo.com", false},
		{"GET", "[::1]:443", 443, "[::1]", true},
		{"GET", "foo.com:abc", -1, "foo.com:abc", false},     // not a port
		{"CONNECT", "foo.com:443", -1, "foo.com:443", false}, // CONNECT keeps its port
	}
	for _, tt := range tests {
		h := hdr(":method", tt.method, ":authority", tt.host)
		if got := StripPort(h, tt.port); got != tt.stripped {
			t.Errorf("StripPort(%q, %d) = %v", tt.host, tt.port, got)
		}
		if got := h.Authority(); got != tt.want {
			t.Errorf("StripPort(%q, %d): :authority = %q, want %q", tt.host, tt.port, got, tt.want)
		}
	}
}

func TestStripTrailingHostDot(t *testing.T) {
	for _, tt := range []struct{ host, want string }{
		{"foo.com.", "foo.com"},
		{"foo.com.:8080", "foo.com:8080"},
		{"foo.com", "foo.com"},
		{"foo.com:8080", "foo.com:8080"},
		{"[::1]:80", "[::1]:80"},
		{".", ""},
	} {
		h := hdr(":method", "GET", ":authority", tt.host)
		changed := StripTrailingHostDot(h)
		if got := h.Authority(); got != tt.want || changed != (tt.host != tt.want) {
			t.Errorf("StripTrailingHostDot(%q): %q (changed %v), want %q", tt.host, got, changed, tt.want)
		}
	}
}
