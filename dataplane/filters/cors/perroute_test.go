package cors

import (
	"strings"
	"testing"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

func corsRegistry(t testing.TB) *filter.Registry {
	t.Helper()
	r := filter.NewRegistry()
	for _, f := range []filter.HTTPFactory{Factory{}, PolicyFactory{}} {
		if err := r.RegisterHTTP(f); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

const corsPolicyType = `"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy`

// perRouteRoutes: the "app" virtual host has a policy; its /put route
// overrides some fields, /off disables the filter, /dark turns the policy off
// with filter_enabled 0%. The route configuration's policy is the least
// specific level; the "bare" virtual host has only that one.
const perRouteRoutes = `
name: rc
typed_per_filter_config:
  envoy.filters.http.cors: {` + corsPolicyType + `, allow_origin_string_match: [{exact: "https://rc.example"}], allow_headers: "x-rc"}
virtual_hosts:
- name: app
  domains: [app.example]
  typed_per_filter_config:
    envoy.filters.http.cors:
      ` + corsPolicyType + `
      allow_origin_string_match: [{exact: "https://app.example"}]
      allow_methods: "GET"
      max_age: "600"
      allow_credentials: true
      expose_headers: "x-vh"
  routes:
  - name: put
    match: {prefix: /put}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors: {` + corsPolicyType + `, allow_methods: "PUT", allow_credentials: false}
  - name: disabled
    match: {prefix: /off}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
  - name: dark
    match: {prefix: /dark}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors: {` + corsPolicyType + `, filter_enabled: {default_value: {numerator: 0}}}
  - name: default
    match: {prefix: /}
    route: {cluster: c}
- name: bare
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
`

func preflight(tbl *route.Table, host, path, origin string) (*http.Exchange, *kittest.Stream) {
	return kittest.Routed(tbl, "OPTIONS", host, path, "origin", origin, "access-control-request-method", "PUT")
}

// TestPerRoutePolicy checks that the policy comes from the route's levels,
// field by field from the most specific level that sets it, as Envoy's
// CorsFilter resolves it.
func TestPerRoutePolicy(t *testing.T) {
	f, st, err := build(t, `{}`, &corsv3.Cors{}) // Envoy's empty filter config
	if err != nil {
		t.Fatal(err)
	}
	fc, _ := kittest.Context()
	tbl := kittest.Routes(t, corsRegistry(t), fc, perRouteRoutes)

	for _, tc := range []struct {
		name, host, path, origin string
		want                     map[string]string // "" values: absent
	}{
		{"virtual host policy", "app.example", "/", "https://app.example", map[string]string{
			":status": "200", HeaderAllowOrigin: "https://app.example", HeaderAllowMethods: "GET",
			HeaderMaxAge: "600", HeaderAllowCredentials: "true", HeaderAllowHeaders: "x-rc", HeaderExposeHeaders: "x-vh"}},
		{"route overrides fields", "app.example", "/put", "https://app.example", map[string]string{
			":status": "200", HeaderAllowOrigin: "https://app.example", HeaderAllowMethods: "PUT",
			HeaderMaxAge: "600", HeaderAllowCredentials: "", HeaderAllowHeaders: "x-rc"}},
		{"origin of a less specific level is not merged", "app.example", "/put", "https://rc.example", map[string]string{
			":status": ""}}, // forwarded upstream: not allowed by the virtual host's origins
		{"route configuration policy", "bare.example", "/", "https://rc.example", map[string]string{
			":status": "200", HeaderAllowOrigin: "https://rc.example", HeaderAllowMethods: "", HeaderAllowHeaders: "x-rc"}},
		{"disabled on the route", "app.example", "/off", "https://app.example", map[string]string{":status": ""}},
		{"most specific filter_enabled", "app.example", "/dark", "https://app.example", map[string]string{":status": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, s := preflight(tbl, tc.host, tc.path, tc.origin)
			act := f.OnRequest(e)
			_, h, _, _ := s.Response()
			if tc.want[":status"] == "" {
				if act != http.Continue || s.Status() != "" {
					t.Fatalf("answered %q, want passed on", s.Status())
				}
				return
			}
			if act != http.Stop {
				t.Fatal("not answered")
			}
			for name, want := range tc.want {
				if got := h.Value(name); got != want {
					t.Errorf("%s: %q, want %q", name, got, want)
				}
			}
		})
	}

	// The actual request's response gets the merged policy's headers.
	e, _ := kittest.Routed(tbl, "GET", "app.example", "/put", "origin", "https://app.example")
	if f.OnRequest(e) != http.Continue {
		t.Fatal("GET answered")
	}
	e.Response.Add(http.Status, "200")
	f.OnResponse(e)
	if e.Response.Value(HeaderAllowOrigin) != "https://app.example" || e.Response.Value(HeaderExposeHeaders) != "x-vh" ||
		e.Response.Has(HeaderAllowCredentials) {
		t.Errorf("response headers %s", &e.Response)
	}
	if v, _ := kittest.Value(st, "http.test.cors.origin_valid"); v != 4 {
		t.Errorf("origin_valid = %d, want 4", v)
	}
}

// TestPerRouteOverFilterPolicy checks that a CorsPolicy given as the filter's
// typed_config is the least specific level below the routes' policies.
func TestPerRouteOverFilterPolicy(t *testing.T) {
	f, _ := policy(t, example)
	fc, _ := kittest.Context()
	tbl := kittest.Routes(t, corsRegistry(t), fc, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /put}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors: {`+corsPolicyType+`, allow_methods: "PUT"}
  - match: {prefix: /}
    route: {cluster: c}
`)
	for path, methods := range map[string]string{"/put": "PUT", "/": "GET, POST"} {
		e, s := preflight(tbl, "x", path, "https://app.example.com")
		if f.OnRequest(e) != http.Stop {
			t.Fatalf("%s: not answered", path)
		}
		_, h, _, _ := s.Response()
		if h.Value(HeaderAllowMethods) != methods || h.Value(HeaderAllowOrigin) != "https://app.example.com" || h.Value(HeaderMaxAge) != "600" {
			t.Errorf("%s: %s", path, h)
		}
	}
}

func TestPerRoutePolicyErrors(t *testing.T) {
	fc, _ := kittest.Context()
	for _, tc := range []struct{ value, path, msg string }{
		{`{` + corsPolicyType + `, allow_origin_string_match: [{safe_regex: {regex: "a"}, ignore_case: true}]}`,
			"typed_per_filter_config[envoy.filters.http.cors].allow_origin_string_match[0]", ""},
		{`{"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}`,
			"typed_per_filter_config[envoy.filters.http.cors]",
			"envoy.extensions.filters.http.cors.v3.Cors is the filter config of envoy.filters.http.cors, whose per-route config is type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"},
	} {
		_, err := kittest.CompileRoutes(t, corsRegistry(t), fc, "typed_per_filter_config: {envoy.filters.http.cors: "+tc.value+"}\n")
		if err == nil {
			t.Errorf("%s: compiled", tc.value)
			continue
		}
		if got := cfgerr.PathOf(err); !strings.HasPrefix(got, tc.path) {
			t.Errorf("%s: path %q, want %q (%v)", tc.value, got, tc.path, err)
		}
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: error %v, want %q", tc.value, err, tc.msg)
		}
	}
}

func TestPerRoutePolicyAllocs(t *testing.T) {
	f, _, err := build(t, `{}`, &corsv3.Cors{})
	if err != nil {
		t.Fatal(err)
	}
	fc, _ := kittest.Context()
	tbl := kittest.Routes(t, corsRegistry(t), fc, perRouteRoutes)
	e, s := preflight(tbl, "app.example", "/put", "https://app.example")
	if n := testing.AllocsPerRun(100, func() {
		s.Clear()
		e.Response.Reset()
		f.OnRequest(e)
		f.OnResponse(e)
	}); n != 0 {
		t.Errorf("%v allocs per request", n)
	}
}
