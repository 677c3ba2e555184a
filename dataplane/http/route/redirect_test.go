package route

import (
	"testing"
)

func TestRedirect(t *testing.T) {
	tests := []struct {
		name     string
		match    string
		redirect string
		host     string
		path     string
		kv       []string
		status   string
		location string
	}{
		{"https", `{prefix: /}`, `{https_redirect: true}`, "foo.com", "/a?b=1", nil, "301", "https://foo.com/a?b=1"},
		// Changing the scheme drops the old scheme's default port...
		{"https drops :80", `{prefix: /}`, `{https_redirect: true}`, "foo.com:80", "/a", nil, "301", "https://foo.com/a"},
		// ... but not another port.
		{"https keeps :8080", `{prefix: /}`, `{https_redirect: true}`, "foo.com:8080", "/a", nil, "301", "https://foo.com:8080/a"},
		// The request's protocol is x-forwarded-proto when the HCM set it.
		{"https xfp", `{prefix: /}`, `{https_redirect: true}`, "foo.com:443", "/a", []string{"x-forwarded-proto", "https"}, "301", "https://foo.com:443/a"},
		{"scheme", `{prefix: /}`, `{scheme_redirect: ftp, response_code: FOUND}`, "foo.com:80", "/a", nil, "302", "ftp://foo.com/a"},
		{"same scheme keeps port", `{prefix: /}`, `{host_redirect: "", path_redirect: /b}`, "foo.com:80", "/a", nil, "301", "http://foo.com:80/b"},
		{"host", `{prefix: /}`, `{host_redirect: bar.com, response_code: SEE_OTHER}`, "foo.com:8080", "/a?q", nil, "303", "http://bar.com/a?q"},
		{"port", `{prefix: /}`, `{port_redirect: 8443, response_code: TEMPORARY_REDIRECT}`, "foo.com:8080", "/a", nil, "307", "http://foo.com:8443/a"},
		{"port IPv6", `{prefix: /}`, `{port_redirect: 8443}`, "[::1]:8080", "/a", nil, "301", "http://[::1]:8443/a"},
		{"host and port", `{prefix: /}`, `{host_redirect: bar.com, port_redirect: 81, response_code: PERMANENT_REDIRECT}`, "foo.com", "/a", nil, "308", "http://bar.com:81/a"},
		{"path keeps query", `{prefix: /}`, `{path_redirect: /new}`, "foo.com", "/old?x=1", nil, "301", "http://foo.com/new?x=1"},
		{"path with query wins", `{prefix: /}`, `{path_redirect: "/new?y=2", strip_query: true}`, "foo.com", "/old?x=1", nil, "301", "http://foo.com/new?y=2"},
		{"path strip_query", `{prefix: /}`, `{path_redirect: /new, strip_query: true}`, "foo.com", "/old?x=1", nil, "301", "http://foo.com/new"},
		{"strip_query", `{prefix: /}`, `{strip_query: true}`, "foo.com", "/old?x=1", nil, "301", "http://foo.com/old"},
		{"prefix_rewrite", `{prefix: /old/}`, `{prefix_rewrite: /new/}`, "foo.com", "/old/a?x", nil, "301", "http://foo.com/new/a?x"},
		{"prefix_rewrite leading slash", `{prefix: /old/}`, `{prefix_rewrite: ""}`, "foo.com", "/old/a", nil, "301", "http://foo.com/old/a"},
		{"prefix_rewrite adds slash", `{prefix: /old/}`, `{prefix_rewrite: "x/"}`, "foo.com", "/old/a", nil, "301", "http://foo.com/x/a"},
		{"regex_rewrite", `{prefix: /}`, `{regex_rewrite: {pattern: {regex: "^/service/([^/]+)(/.*)$"}, substitution: "\\2/instance/\\1"}}`,
			"foo.com", "/service/foo/v1/api?q", nil, "301", "http://foo.com/v1/api/instance/foo?q"},
		{"no host", `{prefix: /}`, `{path_redirect: /x}`, "", "/a", nil, "301", "http:///x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: `+tt.match+`
    redirect: `+tt.redirect+`
`)
			rq := req(tt.host, tt.path, tt.kv...)
			r := tbl.Match(rq, 0)
			if r == nil || r.Action != Redirect {
				t.Fatalf("got %v", r)
			}
			var resp = hdr()
			body := r.Reply(rq, resp, nil)
			if body != nil {
				t.Errorf("body %q", body)
			}
			want := ":status: " + tt.status + "\nlocation: " + tt.location + "\n"
			if got := resp.String(); got != want {
				t.Errorf("response:\n%swant:\n%s", got, want)
			}
			// The request is left alone.
			if rq.Path() != tt.path {
				t.Errorf("request :path changed to %q", rq.Path())
			}
			if r.ClusterFor(rq, 0) != "" {
				t.Errorf("a redirect has no cluster")
			}
			if r.RewriteRequest(rq, true) {
				t.Errorf("RewriteRequest rewrote a redirect's request")
			}
		})
	}
}

func TestDirectResponse(t *testing.T) {
	tbl := mustCompile(t, `
response_headers_to_add: [{header: {key: x-config, value: c}}]
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - name: ok
    match: {path: /ok}
    direct_response: {status: 200, body: {inline_string: "hello\n"}}
    response_headers_to_add: [{header: {key: x-route, value: r}}]
  - name: json
    match: {path: /json}
    direct_response: {status: 503, body: {inline_bytes: "e30="}}
    response_headers_to_add: [{header: {key: content-type, value: application/json}}]
  - name: empty
    match: {path: /empty}
    direct_response: {status: 204}
  - name: moved
    match: {prefix: /moved}
    direct_response: {status: 301}
  - name: created
    match: {path: /created}
    direct_response: {status: 201, body: {inline_string: made}}
`)
	tests := []struct {
		path, host string
		kv         []string
		want       string
		body       string
	}{
		{"/ok", "h", nil, ":status: 200\nx-route: r\nx-config: c\ncontent-type: text/plain\n", "hello\n"},
		{"/json", "h", nil, ":status: 503\ncontent-type: application/json\nx-config: c\n", "{}"},
		{"/empty", "h", nil, ":status: 204\nx-config: c\n", ""},
		// A 3xx or 201 direct response points at the request's own URL.
		{"/moved/x?y", "h:80", nil, ":status: 301\nlocation: http://h:80/moved/x?y\nx-config: c\n", ""},
		// :scheme and x-forwarded-proto disagree: the port of the latter's
		// default is dropped (Envoy's processRequestHost).
		{"/moved", "h:443", []string{"x-forwarded-proto", "https"}, ":status: 301\nlocation: http://h/moved\nx-config: c\n", ""},
		{"/created", "h", nil, ":status: 201\nlocation: http://h/created\nx-config: c\ncontent-type: text/plain\n", "made"},
	}
	for _, tt := range tests {
		rq := req(tt.host, tt.path, tt.kv...)
		r := tbl.Match(rq, 0)
		if r == nil || r.Action != DirectResponse {
			t.Fatalf("%s: got %v", tt.path, r)
		}
		resp := hdr()
		body := r.Reply(rq, resp, nil)
		if got := resp.String(); got != tt.want {
			t.Errorf("%s: response\n%swant\n%s", tt.path, got, tt.want)
		}
		if string(body) != tt.body {
			t.Errorf("%s: body %q, want %q", tt.path, body, tt.body)
		}
	}
	// Reply does nothing for a Forward route.
	fwd := mustCompile(t, `
virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]
`).Match(req("h", "/"), 0)
	resp := hdr()
	if body := fwd.Reply(req("h", "/"), resp, nil); body != nil || resp.Len() != 0 || fwd.Location(req("h", "/")) != "" {
		t.Errorf("Reply on a Forward route wrote %q", resp.String())
	}
}

// TestRequireTLS: a virtual host's require_tls redirects, before any route
// matches, each request that did not come over TLS to the same URL with
// https, the host kept as it is (port included), as Envoy's
// SslRedirectRoute does; EXTERNAL_ONLY lets internal requests through.
func TestRequireTLS(t *testing.T) {
	tbl := mustCompile(t, `
response_headers_to_add: [{header: {key: x-config, value: c}}]
virtual_hosts:
- name: all
  domains: ["all.example", "all.example:8080"]
  require_tls: ALL
  routes: [{ name: r, match: {path: /only}, route: {cluster: c} }]
- name: external
  domains: ["ext.example"]
  require_tls: EXTERNAL_ONLY
  routes: [{ name: r, match: {prefix: /}, route: {cluster: c} }]
- name: none
  domains: ["*"]
  routes: [{ name: r, match: {prefix: /}, route: {cluster: c} }]
`)
	for _, tc := range []struct {
		host, path string
		kv         []string
		location   string // "" when the request is routed
	}{
		{"all.example", "/any?q=1", nil, "https://all.example/any?q=1"},
		{"all.example:8080", "/only", []string{"x-forwarded-proto", "http"}, "https://all.example:8080/only"},
		{"all.example", "/only", []string{"x-forwarded-proto", "https"}, ""},
		{"all.example", "/only", []string{"x-envoy-internal", "true"}, "https://all.example/only"},
		{"ext.example", "/a", nil, "https://ext.example/a"},
		{"ext.example", "/a", []string{"x-envoy-internal", "true"}, ""},
		{"other.example", "/a", nil, ""},
	} {
		rq := req(tc.host, tc.path, tc.kv...)
		r := tbl.Match(rq, 0)
		if r == nil {
			t.Fatalf("%s%s %v: no route", tc.host, tc.path, tc.kv)
		}
		if tc.location == "" {
			if r.Action == Redirect {
				t.Errorf("%s%s %v: redirected, want routed", tc.host, tc.path, tc.kv)
			}
			continue
		}
		resp := hdr()
		if body := r.Reply(rq, resp, nil); body != nil {
			t.Errorf("body %q", body)
		}
		// No header mutation: Envoy's redirect route has none.
		if want := ":status: 301\nlocation: " + tc.location + "\n"; resp.String() != want {
			t.Errorf("%s%s %v: response\n%swant\n%s", tc.host, tc.path, tc.kv, resp.String(), want)
		}
	}
}
