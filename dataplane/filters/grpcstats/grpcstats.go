// Package grpcstats is the HTTP filter envoy.filters.http.grpc_stats: for
// each gRPC request routed to a cluster it counts, once the call ends with
// a grpc-status (in the trailers, or a trailers-only response),
// cluster.<cluster stat name>.grpc.total and .success (status 0) or
// .failure (any other), Envoy's stats for stats_for_all_methods false
// without an individual_method_stats_allowlist (every method counted under
// one prefix, which is what istiod configures).
//
// Not done (refused when configured, or noted): per-method stats
// (stats_for_all_methods true, individual_method_stats_allowlist),
// enable_upstream_stats (upstream_rq_time), and the request_message_count /
// response_message_count counters, which need the message frames of the
// bodies that skiff's filters do not see yet. emit_filter_state is accepted:
// it stores the message counts in the request's filter state for access
// logs, and skiff has no filter state, so nothing could read it.
package grpcstats

import (
	grpcstatsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.http.grpc_stats"

// Factory builds the filter.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &grpcstatsv3.FilterConfig{} }

// Filter is a built grpc_stats filter.
type Filter struct {
	pr       filter.PerRoute
	clusters *upstream.Manager
}

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	cfg := m.(*grpcstatsv3.FilterConfig)
	if err := cfgerr.OnlyFields(cfg, "emit_filter_state", "stats_for_all_methods"); err != nil {
		return nil, err
	}
	if cfg.GetStatsForAllMethods().GetValue() {
		return nil, cfgerr.Errorf("stats_for_all_methods", "per-method stats are not supported by skiff yet (false is)")
	}
	return &Filter{pr: fc.PerRoute(), clusters: fc.Clusters}, nil
}

// PerRoute implements filter.RouteAware.
func (f *Filter) PerRoute() filter.PerRoute { return f.pr }

// OnRequest implements http.Filter: the counting happens at the end.
func (f *Filter) OnRequest(*http.Exchange) http.Action { return http.Continue }

// OnComplete implements http.CompleteFilter.
func (f *Filter) OnComplete(e *http.Exchange) {
	if e.Info.UpstreamCluster == "" || !e.IsGRPC() {
		return
	}
	if _, on := f.pr.Lookup(e); !on {
		return
	}
	status, ok := e.ResponseTrailers().Get("grpc-status")
	if !ok {
		status, ok = e.Response.Get("grpc-status") // trailers-only
	}
	if !ok {
		return // Envoy charges nothing without a grpc-status
	}
	// The counters live in the cluster's stats scope, as in Envoy, and go
	// with it: a call whose cluster was removed meanwhile is not counted.
	if f.clusters == nil {
		return
	}
	cl := f.clusters.Get(e.Info.UpstreamCluster)
	if cl == nil || !cl.Acquire() {
		return
	}
	defer cl.Release()
	c := cl.GRPCStats()
	c.Total.Inc()
	if status == "0" {
		c.Success.Inc()
	} else {
		c.Failure.Inc()
	}
}
