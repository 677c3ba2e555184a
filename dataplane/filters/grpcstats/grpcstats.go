// Package grpcstats is the HTTP filter envoy.filters.http.grpc_stats: for
// each gRPC request routed to a cluster it counts, once the call ends with
// a grpc-status (in the trailers, or a trailers-only response),
// cluster.<cluster stat name>.grpc.total and .success (status 0) or
// .failure (any other), and as the bodies go by, the messages of the
// request and of the response (.request_message_count,
// .response_message_count). Every method is counted under that one prefix
// (what istiod configures), unless stats_for_all_methods or
// individual_method_stats_allowlist give a method its own,
// grpc.<service>.<method>., as in Envoy.
//
// Not done (refused when configured, or noted): enable_upstream_stats
// (upstream_rq_time). emit_filter_state is accepted:
// it stores the message counts in the request's filter state for access
// logs, and skiff has no filter state, so nothing could read it.
package grpcstats

import (
	"strings"

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

	allMethods  bool                       // stats_for_all_methods
	allow       map[string]map[string]bool // individual_method_stats_allowlist: service -> methods
	replaceDots bool                       // replace_dots_in_grpc_service_name
}

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	cfg := m.(*grpcstatsv3.FilterConfig)
	if err := cfgerr.OnlyFields(cfg, "emit_filter_state", "stats_for_all_methods",
		"individual_method_stats_allowlist", "replace_dots_in_grpc_service_name"); err != nil {
		return nil, err
	}
	f := &Filter{pr: fc.PerRoute(), clusters: fc.Clusters,
		allMethods: cfg.GetStatsForAllMethods().GetValue(), replaceDots: cfg.GetReplaceDotsInGrpcServiceName()}
	if al := cfg.GetIndividualMethodStatsAllowlist(); al != nil {
		f.allow = map[string]map[string]bool{}
		for _, svc := range al.GetServices() {
			ms := f.allow[svc.GetName()]
			if ms == nil {
				ms = map[string]bool{}
				f.allow[svc.GetName()] = ms
			}
			for _, name := range svc.GetMethodNames() {
				ms[name] = true
			}
		}
	}
	return f, nil
}

// prefix is the stats prefix of a call to path: "grpc.<service>.<method>."
// when the configuration counts the method on its own, "" for the common
// grpc. set, as Envoy's filter decides in decodeHeaders.
func (f *Filter) prefix(path string) string {
	if !f.allMethods && f.allow == nil {
		return ""
	}
	svc, method, ok := serviceAndMethod(path)
	switch {
	case !ok:
		return ""
	case f.allMethods:
		if f.replaceDots {
			svc = strings.ReplaceAll(svc, ".", "_")
		}
	case !f.allow[svc][method]:
		return ""
	}
	return "grpc." + svc + "." + method + "."
}

// serviceAndMethod splits a gRPC call's path, "/<service>/<method>" (its
// query, if any, dropped), as Envoy's Grpc::Common::resolveServiceAndMethod:
// exactly two non-empty parts, empty ones between slashes ignored.
func serviceAndMethod(path string) (svc, method string, ok bool) {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	n := 0
	for part := range strings.SplitSeq(path, "/") {
		if part == "" {
			continue
		}
		switch n {
		case 0:
			svc = part
		case 1:
			method = part
		}
		n++
	}
	return svc, method, n == 2
}

// PerRoute implements filter.RouteAware.
func (f *Filter) PerRoute() filter.PerRoute { return f.pr }

// OnRequest implements http.Filter: a gRPC call's bodies are watched for
// their messages; the call is counted at the end.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	if f.clusters != nil && e.IsGRPC() {
		if _, on := f.pr.Lookup(e); on {
			e.AddBodyTap(&messageTap{f: f, e: e, prefix: f.prefix(e.Request.Path())})
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
	prefix    string // the method's stats prefix, "" for the common set (see Filter.prefix)
	req, resp frameCounter
}

// RequestData implements http.BodyTap.
func (t *messageTap) RequestData(p []byte) {
	if n := t.req.count(p); n > 0 {
		t.f.charge(t.e.Info.UpstreamCluster, t.prefix, func(c *upstream.GRPCStats) { c.RequestMessageCount.Add(n) })
	}
}

// ResponseData implements http.BodyTap.
func (t *messageTap) ResponseData(p []byte) {
	if n := t.resp.count(p); n > 0 {
		t.f.charge(t.e.Info.UpstreamCluster, t.prefix, func(c *upstream.GRPCStats) { c.ResponseMessageCount.Add(n) })
	}
}

// charge counts in the gRPC counters of the cluster called name, the
// method's set under prefix or the common one (prefix ""). They live in the
// cluster's stats scope, as in Envoy, and go with it: a call whose cluster
// was removed meanwhile is not counted.
func (f *Filter) charge(name, prefix string, count func(*upstream.GRPCStats)) {
	if name == "" || f.clusters == nil {
		return
	}
	cl := f.clusters.Get(name)
	if cl == nil || !cl.Acquire() {
		return
	}
	defer cl.Release()
	if prefix != "" {
		count(cl.GRPCMethodStats(prefix))
		return
	}
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
	prefix := ""
	for _, t := range e.BodyTaps() {
		if mt, ok := t.(*messageTap); ok && mt.f == f {
			prefix = mt.prefix // decided on the request as it came, before any rewrite
		}
	}
	f.charge(e.Info.UpstreamCluster, prefix, func(c *upstream.GRPCStats) {
		c.Total.Inc()
		if status == "0" {
			c.Success.Inc()
		} else {
			c.Failure.Inc()
		}
	})
}
