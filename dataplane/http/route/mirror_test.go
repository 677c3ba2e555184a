package route

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/skiffproxy/skiff/dataplane/runtime"
)

func TestShadowAuthority(t *testing.T) {
	for in, want := range map[string]string{
		"shop.example":      "shop.example-shadow",
		"shop.example:8080": "shop.example-shadow:8080",
		"10.0.0.1:80":       "10.0.0.1-shadow:80",
		"[::1]:80":          "[::1]-shadow:80",
		"[::1]":             "[::1]-shadow",
		"":                  "-shadow",
	} {
		if got := ShadowAuthority(in); got != want {
			t.Errorf("ShadowAuthority(%q) = %q, want %q", in, got, want)
		}
	}
}

// perMillion is the share f samples, in millionths.
func perMillion(f runtime.Fraction) uint32 {
	return uint32(min(f.Numerator, f.Denominator) * (1000000 / f.Denominator))
}

func TestMirrorFraction(t *testing.T) {
	for _, tc := range []struct {
		rf   *corev3.RuntimeFractionalPercent
		want uint32
	}{
		{nil, 1000000},
		{&corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 5}}, 50000},
		{&corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 25, Denominator: typev3.FractionalPercent_TEN_THOUSAND}}, 2500},
		{&corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 7, Denominator: typev3.FractionalPercent_MILLION}}, 7},
		{&corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 500}}, 1000000}, // capped at 100 %
		{&corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{}}, 0},
	} {
		m, err := compileMirrorPolicy(&routev3.RouteAction_RequestMirrorPolicy{Cluster: "m", RuntimeFraction: tc.rf})
		if err != nil {
			t.Fatal(err)
		}
		if got := perMillion(m.Fraction); got != tc.want {
			t.Errorf("%v: %d per million, want %d", tc.rf, got, tc.want)
		}
	}
	half := MirrorPolicy{Fraction: runtime.Fraction{Numerator: 500000, Denominator: 1000000}}
	n := 0
	for i := range uint64(10000) {
		if half.Mirrored(i * 7919) {
			n++
		}
	}
	if n < 4000 || n > 6000 {
		t.Errorf("50 %% mirrored %d of 10000", n)
	}
	if (&MirrorPolicy{Fraction: runtime.Fraction{Numerator: 0, Denominator: 1000000}}).Mirrored(0) {
		t.Error("0 % mirrored a request")
	}
}

// TestMirrorPolicyLevels: a route without request_mirror_policies takes its
// virtual host's, else the route configuration's; the most specific
// non-empty list wins whole, as in Envoy.
func TestMirrorPolicyLevels(t *testing.T) {
	mirror := func(c string) []*routev3.RouteAction_RequestMirrorPolicy {
		return []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: c}}
	}
	r := func(name string, m []*routev3.RouteAction_RequestMirrorPolicy) *routev3.Route {
		return &routev3.Route{Name: name, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}, RequestMirrorPolicies: m}}}
	}
	rc := &routev3.RouteConfiguration{
		Name:                  "rc",
		RequestMirrorPolicies: mirror("from-config"),
		VirtualHosts: []*routev3.VirtualHost{
			{Name: "a", Domains: []string{"a"}, RequestMirrorPolicies: mirror("from-vhost"),
				Routes: []*routev3.Route{r("own", mirror("from-route")), r("inherits", nil)}},
			{Name: "b", Domains: []string{"b"}, Routes: []*routev3.Route{r("from-config", nil)}},
		},
	}
	tbl, err := Compile(rc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"own": "from-route", "inherits": "from-vhost", "from-config": "from-config"}
	for _, vh := range tbl.vhosts {
		for _, rt := range vh.routes {
			if len(rt.Mirrors) != 1 || rt.Mirrors[0].Cluster != want[rt.Name] {
				t.Errorf("route %s mirrors %+v, want one to %s", rt.Name, rt.Mirrors, want[rt.Name])
			}
		}
	}
}
