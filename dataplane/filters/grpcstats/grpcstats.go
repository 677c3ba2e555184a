// Package grpcstats is the HTTP filter envoy.filters.http.grpc_stats: for
// each gRPC request routed to a cluster it counts, once the call ends with
// a grpc-status (in the trailers, or a trailers-only response),
// cluster.<cluster stat name>.grpc.total and .success (status 0) or
// .failure (any other), and as the bodies go by, the messages of the
// request and of the response (.request_message_count,
// .response_message_count): Envoy's stats for stats_for_all_methods false
// without an individual_method_stats_allowlist (every method counted under
// one prefix, which is what istiod configures).
//
// Not done (refused when configured, or noted): per-method stats
// (stats_for_all_methods true, individual_method_stats_allowlist) and
// enable_upstream_stats (upstream_rq_time). emit_filter_state is accepted:
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

// OnRequest implements http.Filter: a gRPC call's bodies are watched for
// their messages; the call is counted at the end.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	if f.clusters != nil && e.IsGRPC() {
		if _, on := f.pr.Lookup(e); on {
			e.AddBodyTap(&messageTap{f: f, e: e})
		}
	}
	return http.Continue
}

// messageTap counts the messages of one call's bodies, charging the
// cluster's counters as they start, as Envoy's filter does in decodeData
// and encodeData (a streaming call's counts grow while it lasts).
type messageTap struct {
	f         *Filter
	e         *http.Exchange
	req, resp frameCounter
}

// RequestData implements http.BodyTap.
func (t *messageTap) RequestData(p []byte) {
	if n := t.req.count(p); n > 0 {
		t.f.charge(t.e.Info.UpstreamCluster, func(c *upstream.GRPCStats) { c.RequestMessageCount.Add(n) })
	}
}

// ResponseData implements http.BodyTap.
func (t *messageTap) ResponseData(p []byte) {
	if n := t.resp.count(p); n > 0 {
		t.f.charge(t.e.Info.UpstreamCluster, func(c *upstream.GRPCStats) { c.ResponseMessageCount.Add(n) })
	}
}

// charge counts in the gRPC counters of the cluster called name. They live
// in the cluster's stats scope, as in Envoy, and go with it: a call whose
// cluster was removed meanwhile is not counted.
func (f *Filter) charge(name string, count func(*upstream.GRPCStats)) {
	if name == "" || f.clusters == nil {
		return
	}
	cl := f.clusters.Get(name)
	if cl == nil || !cl.Acquire() {
		return
	}
	defer cl.Release()
	count(cl.GRPCStats())
}

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
	f.charge(e.Info.UpstreamCluster, func(c *upstream.GRPCStats) {
		c.Total.Inc()
		if status == "0" {
			c.Success.Inc()
		} else {
			c.Failure.Inc()
		}
	})
}
