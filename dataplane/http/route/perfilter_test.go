package route

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// fakeConfigs stands in for the filter registry: a StringValue is a
// per-route config (its value, "bad" being invalid), a BoolValue is the
// config type of a filter without per-route configuration, anything else is
// unknown.
func fakeConfigs(name string, a *anypb.Any) (any, error) {
	switch {
	case a.MessageIs(&wrapperspb.StringValue{}):
		var s wrapperspb.StringValue
		if err := a.UnmarshalTo(&s); err != nil {
			return nil, err
		}
		if s.GetValue() == "bad" {
			return nil, cfgerr.Errorf("value", "bad is not a good value")
		}
		return name + "=" + s.GetValue(), nil
	case a.MessageIs(&wrapperspb.BoolValue{}):
		return nil, &UnsupportedFilterConfigError{Reason: "the filter does not support virtual host or route specific configurations"}
	}
	return nil, &UnsupportedFilterConfigError{Reason: "no HTTP filter takes " + a.GetTypeUrl()}
}

func compileFC(t testing.TB, y string) (*Table, error) {
	t.Helper()
	return Compile(parseRC(t, y), Options{FilterConfigs: fakeConfigs})
}

func mustCompileFC(t testing.TB, y string) *Table {
	t.Helper()
	tbl, err := compileFC(t, y)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return tbl
}

// sv is a typed_per_filter_config value: a StringValue.
func sv(v string) string {
	return `{"@type": type.googleapis.com/google.protobuf.StringValue, value: ` + v + `}`
}

// fcw is a FilterConfig wrapper with the given fields.
func fcw(fields string) string {
	return `{"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig` + fields + `}`
}

var precedence = `
name: rc
typed_per_filter_config:
  a: ` + sv("rc") + `
  b: ` + sv("rc") + `
  c: ` + sv("rc") + `
virtual_hosts:
- name: vh
  domains: ["*"]
  typed_per_filter_config:
    b: ` + sv("vh") + `
    d: ` + sv("vh") + `
  routes:
  - name: own
    match: {prefix: /own}
    typed_per_filter_config:
      c: ` + sv("route") + `
      d: ` + fcw(`, config: {}`) + `
    route: {cluster: x}
  - name: inherits
    match: {prefix: /inherits}
    direct_response: {status: 200}
- name: other
  domains: [other.example]
  routes:
  - name: bare
    match: {prefix: /}
    route: {cluster: cy}
`

func TestPerFilterPrecedence(t *testing.T) {
	tbl := mustCompileFC(t, precedence)
	configs := func(r *Route, name string) string {
		c := r.PerFilter(name, nil, 0)
		if c == nil {
			return "<nil>"
		}
		var s []string
		for _, v := range c.Configs() {
			s = append(s, v.(string))
		}
		return strings.Join(s, ",")
	}
	own := tbl.Match(req("x", "/own"), 0)
	inherits := tbl.Match(req("x", "/inherits"), 0)
	bare := tbl.Match(req("other.example", "/"), 0)
	for _, tc := range []struct {
		r          *Route
		name, want string
		config     any
	}{
		// Most specific first: route, virtual host, route configuration.
		{own, "a", "a=rc", "a=rc"},
		{own, "b", "b=vh,b=rc", "b=vh"},
		{own, "c", "c=route,c=rc", "c=route"},
		// An empty FilterConfig config enables the filter without a config:
		// the virtual host's shows through.
		{own, "d", "d=vh", "d=vh"},
		{own, "e", "<nil>", nil},
		{inherits, "a", "a=rc", "a=rc"},
		{inherits, "b", "b=vh,b=rc", "b=vh"},
		{inherits, "c", "c=rc", "c=rc"},
		{inherits, "d", "d=vh", "d=vh"},
		{bare, "b", "b=rc", "b=rc"},
		{bare, "d", "<nil>", nil},
	} {
		if got := configs(tc.r, tc.name); got != tc.want {
			t.Errorf("route %s, filter %s: configs %s, want %s", tc.r.Name, tc.name, got, tc.want)
		}
		if got := tc.r.PerFilter(tc.name, nil, 0).Config(); got != tc.config {
			t.Errorf("route %s, filter %s: config %v, want %v", tc.r.Name, tc.name, got, tc.config)
		}
	}
	if c := own.PerFilter("d", nil, 0); c.Name() != "d" || c.Disabled() {
		t.Errorf("d: %q disabled %v", c.Name(), c.Disabled())
	}
}

func TestPerFilterDisabled(t *testing.T) {
	tbl := mustCompileFC(t, `
typed_per_filter_config:
  fault: `+fcw(`, disabled: true`)+`
  cors: `+sv("rc")+`
virtual_hosts:
- name: vh
  domains: ["*"]
  typed_per_filter_config:
    cors: `+fcw(`, disabled: true, config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: ignored}`)+`
  routes:
  - name: on-route
    match: {prefix: /on}
    typed_per_filter_config:
      fault: `+fcw(`, config: {}`)+`
      cors: `+sv("route")+`
    route: {cluster: x}
  - name: off-route
    match: {prefix: /off}
    route: {cluster: x}
`)
	on, off := tbl.Match(req("x", "/on"), 0), tbl.Match(req("x", "/off"), 0)
	for _, tc := range []struct {
		r                 *Route
		name              string
		disabledByDefault bool
		want              bool
	}{
		{on, "fault", false, true},
		{on, "fault", true, true}, // a route enables a filter disabled by default
		{on, "cors", false, true},
		{off, "fault", false, false},
		{off, "cors", false, false}, // the virtual host's disabled wins over the route configuration's policy
		{off, "rbac", false, true},  // no entry: the filter's default
		{off, "rbac", true, false},
		{on, "rbac", true, false},
	} {
		if got := tc.r.PerFilter(tc.name, nil, 0).Enabled(tc.disabledByDefault); got != tc.want {
			t.Errorf("route %s, filter %s (disabled by default %v): enabled %v, want %v", tc.r.Name, tc.name, tc.disabledByDefault, got, tc.want)
		}
	}
	// A disabled entry has no config; the less specific one still shows
	// through it (Envoy's mostSpecificPerFilterConfig), though a disabled
	// filter does not run to see it.
	if c := off.PerFilter("cors", nil, 0); c.Config() != "cors=rc" {
		t.Errorf("off: cors config %v", c.Config())
	}
	if c := on.PerFilter("cors", nil, 0); c.Config() != "cors=route" {
		t.Errorf("on: cors config %v", c.Config())
	}
}

func TestPerFilterOptional(t *testing.T) {
	tbl := mustCompileFC(t, vh(`  - match: {prefix: /}
    route: {cluster: x}
    typed_per_filter_config:
      unknown: `+fcw(`, is_optional: true, config: {"@type": type.googleapis.com/google.protobuf.Int64Value, value: 1}`)+`
      unsupported: `+fcw(`, is_optional: true, config: {"@type": type.googleapis.com/google.protobuf.BoolValue, value: true}`)+`
      known: `+fcw(`, is_optional: true, config: `+sv("v")+``)+`
`))
	r := tbl.Match(req("x", "/"), 0)
	for name, want := range map[string]any{"unknown": nil, "unsupported": nil, "known": "known=v"} {
		c := r.PerFilter(name, nil, 0)
		if c == nil {
			t.Fatalf("%s: no entry (an ignored optional config still enables the filter)", name)
		}
		if c.Config() != want || !c.Enabled(true) {
			t.Errorf("%s: config %v, enabled %v", name, c.Config(), c.Enabled(true))
		}
	}
}

func TestPerFilterErrors(t *testing.T) {
	const where = `(HTTP filter "f" on route "r" of virtual host "v" of route configuration "rc")`
	one := func(level string) string {
		return "name: rc\nvirtual_hosts:\n- name: v\n  domains: ['*']\n  routes:\n  - name: r\n    match: {prefix: /}\n" + level
	}
	for _, tc := range []struct {
		name, yaml, want string
		unsupported      bool
	}{
		{"unknown type", one("    route: {cluster: x}\n    typed_per_filter_config: {f: {'@type': type.googleapis.com/google.protobuf.Int64Value, value: 1}}\n"),
			"virtual_hosts[0].routes[0].typed_per_filter_config[f]: no HTTP filter takes type.googleapis.com/google.protobuf.Int64Value " + where, true},
		{"no per-route support", one("    route: {cluster: x}\n    typed_per_filter_config: {f: {'@type': type.googleapis.com/google.protobuf.BoolValue, value: true}}\n"),
			"virtual_hosts[0].routes[0].typed_per_filter_config[f]: the filter does not support virtual host or route specific configurations " + where, true},
		{"not optional in FilterConfig", one("    route: {cluster: x}\n    typed_per_filter_config: {f: " + fcw(`, config: {'@type': type.googleapis.com/google.protobuf.BoolValue, value: true}`) + "}\n"),
			"virtual_hosts[0].routes[0].typed_per_filter_config[f].config: the filter does not support virtual host or route specific configurations " + where, true},
		{"invalid config", one("    route: {cluster: x}\n    typed_per_filter_config: {f: " + sv("bad") + "}\n"),
			"virtual_hosts[0].routes[0].typed_per_filter_config[f].value: bad is not a good value " + where, false},
		{"invalid optional config", one("    route: {cluster: x}\n    typed_per_filter_config: {f: " + fcw(`, is_optional: true, config: `+sv("bad")) + "}\n"),
			"virtual_hosts[0].routes[0].typed_per_filter_config[f].config.value: bad is not a good value " + where, false},
		{"FilterConfig without config", one("    route: {cluster: x}\n    typed_per_filter_config: {f: " + fcw(``) + "}\n"),
			"virtual_hosts[0].routes[0].typed_per_filter_config[f].config: is required unless disabled is true (an empty config enables the filter) " + where, false},
		{"vhost level", "name: rc\nvirtual_hosts:\n- name: v\n  domains: ['*']\n  typed_per_filter_config: {g: {'@type': type.googleapis.com/google.protobuf.Int64Value, value: 2}}\n",
			`virtual_hosts[0].typed_per_filter_config[g]: no HTTP filter takes type.googleapis.com/google.protobuf.Int64Value (HTTP filter "g" on virtual host "v" of route configuration "rc")`, true},
		{"rc level", "typed_per_filter_config: {h: " + sv("bad") + "}\n",
			`typed_per_filter_config[h].value: bad is not a good value (HTTP filter "h" on route configuration (unnamed))`, false},
		{"weighted cluster", one("    route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 1, typed_per_filter_config: {f: " + sv("bad") + "}}]}}\n"),
			`virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].typed_per_filter_config[f].value: bad is not a good value (HTTP filter "f" on weighted cluster "b" of route "r" of virtual host "v" of route configuration "rc")`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileFC(t, tc.yaml)
			if err == nil {
				t.Fatal("compiled")
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.want)
			}
			if _, ok := errors.AsType[*UnsupportedFilterConfigError](err); ok != tc.unsupported {
				t.Errorf("UnsupportedFilterConfigError: %v, want %v", ok, tc.unsupported)
			}
			if cfgerr.PathOf(err) == "" {
				t.Error("no path")
			}
		})
	}
	// Without a registry, any entry is an error.
	_, err := Compile(parseRC(t, "virtual_hosts: [{name: v, domains: ['*'], typed_per_filter_config: {f: "+sv("x")+"}}]"), Options{})
	if want := `virtual_hosts[0].typed_per_filter_config[f]: per-filter configurations need the HTTP filter registry, which this route configuration was compiled without (virtual host "v" of route configuration (unnamed))`; err == nil || err.Error() != want {
		t.Errorf("no registry: %v", err)
	}
}

func TestPerFilterWeighted(t *testing.T) {
	tbl := mustCompileFC(t, vh(`  - name: w
    match: {prefix: /}
    typed_per_filter_config:
      f: `+sv("route")+`
      g: `+sv("route")+`
    route:
      weighted_clusters:
        clusters:
        - name: a
          weight: 1
          typed_per_filter_config:
            f: `+sv("a")+`
            h: `+fcw(`, disabled: true`)+`
        - name: b
          weight: 1
        - name: c
          weight: 2
          typed_per_filter_config:
            g: `+sv("c")+`
`))
	r := tbl.Match(req("x", "/"), 0)
	h := req("x", "/")
	want := map[string][3]string{ // cluster: f, g, h
		"a": {"f=a", "g=route", "disabled"},
		"b": {"f=route", "g=route", "<nil>"},
		"c": {"f=route", "g=c", "<nil>"},
	}
	seen := map[string]bool{}
	for rnd := range uint64(8) {
		cluster := r.ClusterFor(h, rnd)
		seen[cluster] = true
		for i, name := range []string{"f", "g", "h"} {
			c := r.PerFilter(name, h, rnd)
			got := "<nil>"
			switch {
			case c.Disabled():
				got = "disabled"
			case c != nil:
				got = c.Config().(string)
			}
			if got != want[cluster][i] {
				t.Errorf("rnd %d, cluster %s, filter %s: %s, want %s", rnd, cluster, name, got, want[cluster][i])
			}
		}
	}
	if len(seen) != 3 {
		t.Errorf("clusters seen %v", seen)
	}

	// Through an exchange: what filters see is the cluster the router will
	// pick with the exchange's random value.
	e := http.NewExchange(context.Background(), nil)
	e.Request, e.Route = h, r
	cluster := r.ClusterFor(h, ExchangeRandom(e))
	if got, want := PerFilter(e, "f").Config(), want[cluster][0]; got != want {
		t.Errorf("exchange for cluster %s: f %v, want %s", cluster, got, want)
	}
}

func TestPerFilterExchange(t *testing.T) {
	tbl := mustCompileFC(t, precedence)
	e := http.NewExchange(context.Background(), nil)
	e.Request = req("x", "/own")
	if PerFilter(e, "a") != nil {
		t.Error("no route, but a config")
	}
	e.Route = tbl.Match(e.Request, 0)
	if got := PerFilter(e, "c").Config(); got != "c=route" {
		t.Errorf("c: %v", got)
	}
	e.Route = (*Route)(nil)
	if PerFilter(e, "a") != nil {
		t.Error("nil route, but a config")
	}
	if first, second := ExchangeRandom(e), ExchangeRandom(e); first != second {
		t.Error("ExchangeRandom is not fixed")
	}
	if ExchangeRandom(e) == ExchangeRandom(http.NewExchange(context.Background(), nil)) {
		t.Error("ExchangeRandom does not vary")
	}
}

// TestPerFilterAllocs checks that the lookup filters do per request does not
// allocate.
func TestPerFilterAllocs(t *testing.T) {
	tbl := mustCompileFC(t, `
typed_per_filter_config: {b: `+sv("rc")+`}
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - name: w
    match: {prefix: /w}
    route: {weighted_clusters: {clusters: [{name: a, weight: 1, typed_per_filter_config: {f: `+sv("a")+`}}, {name: b, weight: 1}]}}
  - name: own
    match: {prefix: /own}
    typed_per_filter_config: {c: `+sv("route")+`}
    route: {cluster: x}
`)
	e := http.NewExchange(context.Background(), nil)
	for _, path := range []string{"/own", "/w"} {
		e.Request = req("x", path)
		e.Route = tbl.Match(e.Request, 0)
		if e.Route == nil {
			t.Fatalf("%s: no route", path)
		}
		if n := testing.AllocsPerRun(100, func() {
			_ = PerFilter(e, "b").Config()
			_ = PerFilter(e, "none").Enabled(true)
		}); n != 0 {
			t.Errorf("%s: %v allocs per lookup", path, n)
		}
	}
}

func BenchmarkPerFilter(b *testing.B) {
	tbl := mustCompileFC(b, precedence)
	e := http.NewExchange(context.Background(), nil)
	e.Request = req("x", "/own")
	e.Route = tbl.Match(e.Request, 0)
	b.ReportAllocs()
	for b.Loop() {
		if PerFilter(e, "d").Config() == nil {
			b.Fatal("no config")
		}
	}
}
