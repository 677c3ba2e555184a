package kittest_test

// These tests check the filter Registry's side of per-route configuration:
// the name and disabled flag that reach a factory, the gate around filters
// that do not look their per-route state up themselves, the per-route type
// registry, and that the built-in filters take their per-route configs.

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
)

// counting is an HTTP filter that knows nothing of per-route configuration:
// it counts the requests and responses it sees.
type counting struct {
	name              string
	requests, replies atomic.Int64
}

func (c *counting) OnRequest(*http.Exchange) http.Action { c.requests.Add(1); return http.Continue }
func (c *counting) OnResponse(*http.Exchange)            { c.replies.Add(1) }

// countingFactory builds counting filters from a StringValue and takes an
// Int64Value per route.
type countingFactory struct{ built *[]*counting }

func (countingFactory) Name() string                   { return "test.counting" }
func (countingFactory) ConfigType() proto.Message      { return &wrapperspb.StringValue{} }
func (countingFactory) RouteConfigType() proto.Message { return &wrapperspb.Int64Value{} }
func (f countingFactory) Create(_ proto.Message, fc *filter.Context) (http.Filter, error) {
	c := &counting{name: fc.HTTPFilterName}
	*f.built = append(*f.built, c)
	return c, nil
}
func (countingFactory) NewRouteConfig(m proto.Message, fc *filter.Context) (any, error) {
	return fc.HTTPFilterName + ":" + m.(*wrapperspb.Int64Value).String(), nil
}

// otherCounting takes the same per-route type as countingFactory.
type otherCounting struct{ countingFactory }

func (otherCounting) Name() string              { return "test.other" }
func (otherCounting) ConfigType() proto.Message { return &wrapperspb.DoubleValue{} }

// terminal is a terminal filter built from a BoolValue.
type terminal struct{}

func (terminal) OnRequest(*http.Exchange) http.Action { return http.Continue }
func (terminal) Serve(*http.Exchange)                 {}

type terminalFactory struct{}

func (terminalFactory) Name() string              { return "test.terminal" }
func (terminalFactory) ConfigType() proto.Message { return &wrapperspb.BoolValue{} }
func (terminalFactory) Create(proto.Message, *filter.Context) (http.Filter, error) {
	return terminal{}, nil
}

// routed is a GET / exchange routed in tbl.
func routed(tbl *route.Table) *http.Exchange {
	e, _ := kittest.Routed(tbl, "GET", "x", "/")
	return e
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func httpFilter(t *testing.T, name string, m proto.Message, disabled bool) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, Disabled: disabled, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, m)}}
}

func TestPerRouteGate(t *testing.T) {
	var built []*counting
	reg := filter.NewRegistry()
	if err := reg.RegisterHTTP(countingFactory{&built}); err != nil {
		t.Fatal(err)
	}
	fc, _ := kittest.Context()
	on, err := reg.HTTPFilterFor(httpFilter(t, "on", &wrapperspb.StringValue{}, false), fc)
	if err != nil {
		t.Fatal(err)
	}
	off, err := reg.HTTPFilterFor(httpFilter(t, "off", &wrapperspb.StringValue{}, true), fc)
	if err != nil {
		t.Fatal(err)
	}
	if built[0].name != "on" || built[1].name != "off" {
		t.Fatalf("the factory got the names %q, %q", built[0].name, built[1].name)
	}
	if fc.HTTPFilterName != "" {
		t.Error("the shared context was modified")
	}
	for _, f := range []http.Filter{on, off} {
		if _, ok := f.(http.ResponseFilter); !ok {
			t.Fatal("the gate hides OnResponse")
		}
		if _, ok := f.(filter.RouteAware); !ok {
			t.Fatal("not gated")
		}
	}
	tbl := kittest.Routes(t, reg, fc, `
virtual_hosts:
- name: vh
  domains: ["*"]
  typed_per_filter_config:
    "on": {"@type": type.googleapis.com/google.protobuf.Int64Value, value: 7}
  routes:
  - match: {prefix: /swap}
    route: {cluster: c}
    typed_per_filter_config:
      "on": {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
      "off": {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {}}
  - match: {prefix: /}
    route: {cluster: c}
`)
	if c := route.PerFilter(routed(tbl), "on").Config(); c != "on:value:7" {
		t.Errorf("per-route config %v (the factory's NewRouteConfig gets the filter's name)", c)
	}
	run := func(path string) {
		e, _ := kittest.Routed(tbl, "GET", "x", path)
		for _, f := range []http.Filter{on, off} {
			f.OnRequest(e)
			f.(http.ResponseFilter).OnResponse(e)
		}
	}
	run("/")
	run("/swap")
	run("/swap")
	e, _ := kittest.Exchange("GET", "/") // no route
	on.OnRequest(e)
	off.OnRequest(e)
	for i, want := range []int64{2, 2} {
		if got := built[i].requests.Load(); got != want {
			t.Errorf("%s: %d requests, want %d", built[i].name, got, want)
		}
	}
	if built[0].replies.Load() != 1 || built[1].replies.Load() != 2 {
		t.Errorf("replies %d, %d", built[0].replies.Load(), built[1].replies.Load())
	}
}

func TestPerRouteRegistry(t *testing.T) {
	var built []*counting
	reg := filter.NewRegistry()
	for _, f := range []filter.HTTPFactory{countingFactory{&built}, terminalFactory{}} {
		if err := reg.RegisterHTTP(f); err != nil {
			t.Fatal(err)
		}
	}
	// Another factory with the same per-route type.
	if err := reg.RegisterHTTP(otherCounting{countingFactory{&built}}); err == nil ||
		err.Error() != "filter registry: test.other: per-route type URL type.googleapis.com/google.protobuf.Int64Value already registered by test.counting" {
		t.Errorf("registered the same per-route type twice: %v", err)
	}
	if reg.HasHTTP("type.googleapis.com/google.protobuf.DoubleValue") {
		t.Error("a refused factory is registered")
	}

	fc, _ := kittest.Context()
	// The terminal filter cannot be disabled by default, and is not gated.
	if _, err := reg.HTTPFilterFor(httpFilter(t, "router", &wrapperspb.BoolValue{}, true), fc); err == nil ||
		err.Error() != "disabled: the terminal filter router cannot be disabled by default" {
		t.Errorf("disabled terminal: %v", err)
	}
	if f, err := reg.HTTPFilterFor(httpFilter(t, "router", &wrapperspb.BoolValue{}, false), fc); err != nil {
		t.Fatal(err)
	} else if _, ok := f.(terminal); !ok {
		t.Errorf("terminal filter wrapped: %T", f)
	}

	build := reg.RouteConfigs(fc)
	for _, tc := range []struct {
		m           proto.Message
		unsupported bool
		err         string
	}{
		{&wrapperspb.Int64Value{Value: 3}, false, ""},
		{&wrapperspb.BoolValue{}, true, "test.terminal does not support virtual host or route specific configurations"},
		{&wrapperspb.StringValue{}, false, "google.protobuf.StringValue is the filter config of test.counting, whose per-route config is type.googleapis.com/google.protobuf.Int64Value"},
		{&wrapperspb.UInt32Value{}, true, "no HTTP filter skiff supports takes type.googleapis.com/google.protobuf.UInt32Value as a per-route configuration"},
	} {
		_, err := build("f", mustAny(t, tc.m))
		if _, ok := errors.AsType[*route.UnsupportedFilterConfigError](err); ok != tc.unsupported {
			t.Errorf("%T: unsupported %v, want %v (%v)", tc.m, ok, tc.unsupported, err)
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%T: %v", tc.m, err)
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("%T: error %v, want %s", tc.m, err, tc.err)
		}
	}
	var none *filter.Registry
	if none.RouteConfigs(fc) != nil {
		t.Error("a nil registry builds per-route configs")
	}
}

// TestPerRouteBuiltin checks that the built-in filters look their per-route
// state up themselves (no gate) and that their per-route types are
// registered.
func TestPerRouteBuiltin(t *testing.T) {
	reg, err := filters.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	fc, _ := kittest.Context()
	for name, m := range map[string]proto.Message{
		"envoy.filters.http.cors":            &corsv3.Cors{},
		"envoy.filters.http.fault":           &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 503}}},
		"envoy.filters.http.local_ratelimit": &lrlv3.LocalRateLimit{StatPrefix: "x"},
		"envoy.filters.http.rbac":            &httprbacv3.RBAC{},
	} {
		f, err := reg.HTTPFilter(name+"-custom", mustAny(t, m), fc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ra, ok := f.(filter.RouteAware)
		if !ok || strings.HasPrefix(fmt.Sprintf("%T", f), "*filter.") {
			t.Errorf("%s: %T is gated", name, f)
			continue
		}
		if ra.PerRoute().Name() != name+"-custom" {
			t.Errorf("%s: name %q", name, ra.PerRoute().Name())
		}
	}
	tbl := kittest.Routes(t, reg, fc, `
typed_per_filter_config:
  a: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy}
  b: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, delay: {fixed_delay: 1s}}
  c: {"@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: x, token_bucket: {max_tokens: 1, fill_interval: 1s}}
  d: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute}
  e: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, is_optional: true, config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
`)
	e := routed(tbl)
	for _, name := range []string{"a", "b", "c", "d"} {
		if route.PerFilter(e, name).Config() == nil {
			t.Errorf("%s: no config", name)
		}
	}
	if c := route.PerFilter(e, "e"); c == nil || c.Config() != nil {
		t.Errorf("optional router config: %v", c)
	}
	_, err = kittest.CompileRoutes(t, reg, fc, `typed_per_filter_config: {e: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}`)
	if err == nil || !strings.Contains(err.Error(), "typed_per_filter_config[e]: envoy.filters.http.router does not support virtual host or route specific configurations") {
		t.Errorf("router per-route config: %v", err)
	}
}
