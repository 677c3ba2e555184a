package fault

import (
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

// perRouteRoutes: the filter's own config aborts with 503 on x-fault; one
// virtual host replaces it with 418 for every request, one route there
// disables the filter, one enables it with an empty FilterConfig (the
// virtual host's config shows through), and the other virtual host keeps the
// filter's config.
const perRouteRoutes = `
name: local
virtual_hosts:
- name: chaos
  domains: [chaos.example]
  typed_per_filter_config:
    envoy.filters.http.fault:
      "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
      abort: {http_status: 418, percentage: {numerator: 100}}
  routes:
  - name: disabled
    match: {prefix: /off}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
  - name: enabled-route
    match: {prefix: /enabled}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {}}
  - name: slow
    match: {prefix: /slow}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        abort: {http_status: 503, percentage: {numerator: 100}}
        headers: [{name: x-slow, present_match: true}]
  - match: {prefix: /}
    route: {cluster: c}
- name: plain
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
`

func faultRegistry(t testing.TB) *filter.Registry {
	t.Helper()
	r := filter.NewRegistry()
	if err := r.RegisterHTTP(Factory{}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPerRouteConfig(t *testing.T) {
	v := newEnv()
	f := v.mustBuild(t, `abort: {http_status: 503, `+always+`}
headers: [{name: x-fault, present_match: true}]`)
	tbl := kittest.Routes(t, faultRegistry(t), v.fc, perRouteRoutes)
	for _, tc := range []struct {
		host, path string
		kv         []string
		want       string
	}{
		{"chaos.example", "/", nil, "418"}, // the virtual host's fault, no header needed
		{"chaos.example", "/", []string{"x-fault", "1"}, "418"},
		{"chaos.example", "/off", []string{"x-fault", "1"}, ""}, // disabled on the route
		{"chaos.example", "/enabled", nil, "418"},               // the virtual host's config shows through
		{"chaos.example", "/slow", nil, ""},                     // the route's headers do not match
		{"chaos.example", "/slow", []string{"x-slow", "1"}, "503"},
		{"plain.example", "/", nil, ""}, // the filter's own config
		{"plain.example", "/", []string{"x-fault", "1"}, "503"},
	} {
		e, s := kittest.Routed(tbl, "GET", tc.host, tc.path, tc.kv...)
		act := f.OnRequest(e)
		if got := s.Status(); got != tc.want || (tc.want == "") != (act == http.Continue) {
			t.Errorf("%s%s %v: status %q (%v), want %q", tc.host, tc.path, tc.kv, got, act, tc.want)
		}
	}
	// The stats are the filter's, whichever config aborted.
	if got := v.stat(t, "http.test.fault.aborts_injected"); got != 5 {
		t.Errorf("aborts_injected = %d, want 5", got)
	}
}

// TestPerRouteDisabledByDefault checks HttpFilter.disabled: the filter runs
// only on the routes whose typed_per_filter_config names it.
func TestPerRouteDisabledByDefault(t *testing.T) {
	v := newEnv()
	var cfg faultv3.HTTPFault
	if err := protoyaml.Unmarshal([]byte(`abort: {http_status: 500, `+always+`}`), &cfg); err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := faultRegistry(t)
	flt, err := r.HTTPFilterFor(&hcmv3.HttpFilter{Name: "my-fault", Disabled: true, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, v.fc)
	if err != nil {
		t.Fatal(err)
	}
	f := flt.(*Filter)
	if f.PerRoute().Name() != "my-fault" {
		t.Errorf("name %q", f.PerRoute().Name())
	}
	tbl := kittest.Routes(t, r, v.fc, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /on}
    route: {cluster: c}
    typed_per_filter_config:
      my-fault: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {}}
  - match: {prefix: /other-name}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {}}
  - match: {prefix: /}
    route: {cluster: c}
`)
	for path, want := range map[string]string{"/on": "500", "/other-name": "", "/": ""} {
		e, s := kittest.Routed(tbl, "GET", "x", path)
		f.OnRequest(e)
		if s.Status() != want {
			t.Errorf("%s: status %q, want %q", path, s.Status(), want)
		}
	}
	// Without a route, a filter disabled by default does not run.
	e, s := kittest.Exchange("GET", "/")
	if f.OnRequest(e) != http.Continue || s.Status() != "" {
		t.Error("ran without a route")
	}
}

func TestPerRouteConfigErrors(t *testing.T) {
	v := newEnv()
	_, err := kittest.CompileRoutes(t, faultRegistry(t), v.fc, `
name: local
virtual_hosts:
- name: backend
  domains: ["*"]
  routes:
  - name: slow
    match: {prefix: /}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        abort: {http_status: 700, percentage: {numerator: 100}}
`)
	if err == nil {
		t.Fatal("compiled")
	}
	if got, want := cfgerr.PathOf(err), "virtual_hosts[0].routes[0].typed_per_filter_config[envoy.filters.http.fault].abort.http_status"; got != want {
		t.Errorf("path %q, want %q", got, want)
	}
	if !strings.Contains(err.Error(), `(HTTP filter "envoy.filters.http.fault" on route "slow" of virtual host "backend" of route configuration "local")`) {
		t.Errorf("error does not name the filter, route, virtual host and route configuration: %v", err)
	}
	// A fault with neither delay nor abort is valid (it never fires), per
	// route too.
	if _, err = kittest.CompileRoutes(t, faultRegistry(t), v.fc, `
typed_per_filter_config:
  envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
`); err != nil {
		t.Errorf("empty fault: %v", err)
	}
}

// TestPerRouteAllocs checks that finding the route's config costs nothing.
func TestPerRouteAllocs(t *testing.T) {
	v := newEnv()
	f := v.mustBuild(t, `abort: {http_status: 503, `+always+`}
headers: [{name: x-fault, present_match: true}]`)
	tbl := kittest.Routes(t, faultRegistry(t), v.fc, perRouteRoutes)
	e, _ := kittest.Routed(tbl, "GET", "chaos.example", "/slow")
	if n := testing.AllocsPerRun(100, func() { f.OnRequest(e) }); n != 0 {
		t.Errorf("%v allocs per request", n)
	}
}
