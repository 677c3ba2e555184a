package rbac

import (
	"testing"

	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

const denyEvil = `
rules:
  action: DENY
  policies:
    deny-evil:
      permissions: [{header: {name: x-evil, present_match: true}}]
      principals: [{any: true}]
`

const perRouteRoutes = `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - name: open
    match: {prefix: /open}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.rbac: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute}
  - name: disabled
    match: {prefix: /disabled}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.rbac: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
  - name: admin
    match: {prefix: /admin}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.rbac:
        "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
        rbac:
          rules:
            action: ALLOW
            policies:
              "root only":
                permissions: [{any: true}]
                principals: [{header: {name: x-user, string_match: {exact: root}}}]
          shadow_rules:
            action: DENY
            policies:
              watch:
                permissions: [{any: true}]
                principals: [{any: true}]
  - name: default
    match: {prefix: /}
    route: {cluster: c}
`

// TestPerRouteRules checks RBACPerRoute: its rbac replaces the filter's rules
// on the route, none disables the filter there, and FilterConfig's disabled
// does too.
func TestPerRouteRules(t *testing.T) {
	f, st := buildHTTP(t, denyEvil)
	fc, _ := kittest.Context()
	tbl := kittest.Routes(t, registry(t), fc, perRouteRoutes)
	for _, tc := range []struct {
		path    string
		kv      []string
		want    string
		details string
	}{
		{"/", []string{"x-evil", "1"}, "403", "rbac_access_denied_matched_policy[deny-evil]"},
		{"/", nil, "", ""},
		{"/open", []string{"x-evil", "1"}, "", ""},
		{"/disabled", []string{"x-evil", "1"}, "", ""},
		{"/admin", []string{"x-evil", "1", "x-user", "root"}, "", ""},
		{"/admin", nil, "403", "rbac_access_denied_matched_policy[none]"},
	} {
		e, s := kittest.Routed(tbl, "GET", "x", tc.path, tc.kv...)
		act := f.OnRequest(e)
		if s.Status() != tc.want || (tc.want == "") != (act == http.Continue) {
			t.Errorf("%s %v: status %q (%v), want %q", tc.path, tc.kv, s.Status(), act, tc.want)
		}
		if e.Info.ResponseCodeDetails != tc.details {
			t.Errorf("%s %v: details %q, want %q", tc.path, tc.kv, e.Info.ResponseCodeDetails, tc.details)
		}
	}
	// The route's rules count in the filter's counters.
	for name, want := range map[string]int64{
		"http.test.rbac.allowed":       2,
		"http.test.rbac.denied":        2,
		"http.test.rbac.shadow_denied": 2,
	} {
		if got := counter(t, st, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

// TestPerRouteRulesWithoutFilterRules checks that a filter without rules of
// its own enforces a route's.
func TestPerRouteRulesWithoutFilterRules(t *testing.T) {
	f, st := buildHTTP(t, `{}`)
	fc, _ := kittest.Context()
	tbl := kittest.Routes(t, registry(t), fc, perRouteRoutes)
	e, s := kittest.Routed(tbl, "GET", "x", "/admin")
	if f.OnRequest(e) != http.Stop || s.Status() != "403" {
		t.Errorf("status %q", s.Status())
	}
	if got := counter(t, st, "http.test.rbac.denied"); got != 1 {
		t.Errorf("denied = %d", got)
	}
}

func TestPerRouteRulesErrors(t *testing.T) {
	fc, _ := kittest.Context()
	for _, tc := range []struct{ cfg, path string }{
		{`rbac: {rules: {action: ALLOW, policies: {p: {permissions: [{metadata: {filter: f, path: [{key: k}], value: {present_match: true}}}], principals: [{any: true}]}}}}`,
			"typed_per_filter_config[envoy.filters.http.rbac].rbac.rules.policies[p].permissions[0].metadata"},
		{`rbac: {matcher: {}}`, "typed_per_filter_config[envoy.filters.http.rbac].rbac.matcher"},
	} {
		_, err := kittest.CompileRoutes(t, registry(t), fc, `
typed_per_filter_config:
  envoy.filters.http.rbac: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute, `+tc.cfg+`}
`)
		if err == nil {
			t.Errorf("%s: compiled", tc.cfg)
			continue
		}
		if got := cfgerr.PathOf(err); got != tc.path {
			t.Errorf("%s: path %q, want %q (%v)", tc.cfg, got, tc.path, err)
		}
	}
}

func TestPerRouteRulesAllocs(t *testing.T) {
	f, _ := buildHTTP(t, denyEvil)
	fc, _ := kittest.Context()
	tbl := kittest.Routes(t, registry(t), fc, perRouteRoutes)
	e, s := kittest.Routed(tbl, "GET", "x", "/admin")
	if n := testing.AllocsPerRun(100, func() {
		s.Clear()
		e.Response.Reset()
		f.OnRequest(e)
	}); n != 0 {
		t.Errorf("%v allocs per request", n)
	}
}
