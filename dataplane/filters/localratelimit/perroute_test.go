package localratelimit

import (
	"strings"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

func lrlRegistry(t testing.TB) *filter.Registry {
	t.Helper()
	r := filter.NewRegistry()
	if err := r.RegisterHTTP(Factory{}); err != nil {
		t.Fatal(err)
	}
	return r
}

const perRouteRoutes = `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - name: own-bucket
    match: {prefix: /a}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit:
        "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
        stat_prefix: route_a
        status: {code: ServiceUnavailable}
        token_bucket: {max_tokens: 2, fill_interval: 3600s}
        filter_enabled: {default_value: {numerator: 100}}
        filter_enforced: {default_value: {numerator: 100}}
        enable_x_ratelimit_headers: DRAFT_VERSION_03
  - name: unlimited
    match: {prefix: /b}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.local_ratelimit: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
  - match: {prefix: /}
    route: {cluster: c}
`

// TestPerRouteBucket checks that a route's LocalRateLimit replaces the
// filter's, with a bucket and stats of its own, and that a route can turn the
// filter off.
func TestPerRouteBucket(t *testing.T) {
	f, st, err := build(t, on+`token_bucket: {max_tokens: 1, fill_interval: 3600s}`)
	if err != nil {
		t.Fatal(err)
	}
	fc, _ := kittest.Context()
	fc.Stats = st
	tbl := kittest.Routes(t, lrlRegistry(t), fc, perRouteRoutes)
	status := func(path string) string {
		e, s := kittest.Routed(tbl, "GET", "x", path)
		f.OnRequest(e)
		return s.Status()
	}
	for i, tc := range []struct{ path, want string }{
		{"/", ""}, {"/", "429"}, // the filter's bucket: one token
		{"/a", ""}, {"/a", ""}, {"/a", "503"}, // the route's: two, and its own status
		{"/b", ""}, {"/b", ""}, {"/b", ""}, // no limit
		{"/", "429"},
	} {
		if got := status(tc.path); got != tc.want {
			t.Errorf("request %d to %s: status %q, want %q", i, tc.path, got, tc.want)
		}
	}
	for name, want := range map[string]int64{
		"route_a.http_local_rate_limit.enabled":      3,
		"route_a.http_local_rate_limit.ok":           2,
		"route_a.http_local_rate_limit.rate_limited": 1,
		"lrl.http_local_rate_limit.enabled":          3,
		"lrl.http_local_rate_limit.rate_limited":     2,
	} {
		if got, _ := kittest.Value(st, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}

	// The response half uses the route's config too.
	e, _ := kittest.Routed(tbl, "GET", "x", "/a")
	e.Response.Add(http.Status, "200")
	f.OnResponse(e)
	if e.Response.Value(HeaderLimit) != "2" {
		t.Errorf("x-ratelimit-limit %q, want the route's 2", e.Response.Value(HeaderLimit))
	}
	e, _ = kittest.Routed(tbl, "GET", "x", "/")
	e.Response.Add(http.Status, "200")
	f.OnResponse(e)
	if e.Response.Has(HeaderLimit) {
		t.Error("x-ratelimit-limit from the filter's config, which does not ask for it")
	}
}

func TestPerRouteNeedsBucket(t *testing.T) {
	fc, _ := kittest.Context()
	_, err := kittest.CompileRoutes(t, lrlRegistry(t), fc, `
virtual_hosts:
- name: vh
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.local_ratelimit:
      "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
      stat_prefix: x
`)
	if err == nil {
		t.Fatal("compiled")
	}
	if got, want := cfgerr.PathOf(err), "virtual_hosts[0].typed_per_filter_config[envoy.filters.http.local_ratelimit].token_bucket"; got != want {
		t.Errorf("path %q, want %q", got, want)
	}
	if !strings.Contains(err.Error(), "is required in a per-route configuration") {
		t.Errorf("error %v", err)
	}
}

func TestPerRouteAllocs(t *testing.T) {
	f, st, err := build(t, on+`token_bucket: {max_tokens: 1, fill_interval: 3600s}`)
	if err != nil {
		t.Fatal(err)
	}
	fc, _ := kittest.Context()
	fc.Stats = st
	tbl := kittest.Routes(t, lrlRegistry(t), fc, perRouteRoutes)
	e, s := kittest.Routed(tbl, "GET", "x", "/a")
	if n := testing.AllocsPerRun(100, func() {
		s.Clear()
		e.Response.Reset()
		f.OnRequest(e)
	}); n != 0 {
		t.Errorf("%v allocs per request", n)
	}
}
