package grpcstats

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpcstatsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filter"
)

// TestPrefix: which calls get stats of their own, and under what name, as
// Envoy's filter decides: every parseable path with stats_for_all_methods
// (dots in the service replaced on request), the listed methods with an
// allowlist, none otherwise; a path that is not /<service>/<method> goes
// to the common set.
func TestPrefix(t *testing.T) {
	build := func(cfg *grpcstatsv3.FilterConfig) *Filter {
		f, err := Factory{}.Create(cfg, &filter.Context{})
		if err != nil {
			t.Fatal(err)
		}
		return f.(*Filter)
	}
	all := build(&grpcstatsv3.FilterConfig{PerMethodStatSpecifier: &grpcstatsv3.FilterConfig_StatsForAllMethods{StatsForAllMethods: wrapperspb.Bool(true)}})
	dots := build(&grpcstatsv3.FilterConfig{ReplaceDotsInGrpcServiceName: true,
		PerMethodStatSpecifier: &grpcstatsv3.FilterConfig_StatsForAllMethods{StatsForAllMethods: wrapperspb.Bool(true)}})
	listed := build(&grpcstatsv3.FilterConfig{PerMethodStatSpecifier: &grpcstatsv3.FilterConfig_IndividualMethodStatsAllowlist{
		IndividualMethodStatsAllowlist: &corev3.GrpcMethodList{Services: []*corev3.GrpcMethodList_Service{
			{Name: "pkg.Svc", MethodNames: []string{"Get"}},
		}},
	}})
	none := build(&grpcstatsv3.FilterConfig{})
	for _, tc := range []struct {
		f          *Filter
		path, want string
	}{
		{all, "/pkg.Svc/Get", "grpc.pkg.Svc.Get."},
		{all, "/pkg.Svc/Get?x=1", "grpc.pkg.Svc.Get."},
		{all, "//pkg.Svc//Get", "grpc.pkg.Svc.Get."},
		{all, "/pkg.Svc", ""},
		{all, "/a/b/c", ""},
		{dots, "/pkg.v1.Svc/Get", "grpc.pkg_v1_Svc.Get."},
		{listed, "/pkg.Svc/Get", "grpc.pkg.Svc.Get."},
		{listed, "/pkg.Svc/Put", ""},
		{listed, "/other.Svc/Get", ""},
		{none, "/pkg.Svc/Get", ""},
	} {
		if got := tc.f.prefix(tc.path); got != tc.want {
			t.Errorf("%+v: prefix(%q) = %q, want %q", tc.f.allow, tc.path, got, tc.want)
		}
	}
}
