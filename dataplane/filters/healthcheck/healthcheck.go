// Package healthcheck is the HTTP filter envoy.filters.http.health_check:
// requests that match its headers are health checks (of skiff itself, by a
// load balancer in front of it). Without pass_through_mode skiff answers
// them: 200, or 503 while the server fails its health checks (the admin
// API's FailHealthCheck, or draining) or while a cluster of
// cluster_min_healthy_percentages has fewer healthy hosts than its
// percentage. With pass_through_mode they go upstream like other requests,
// but 503 while the server fails. Every response carries
// x-envoy-immediate-health-check-fail: true while the server fails, as
// Envoy's; a health check's response carries
// x-envoy-upstream-healthchecked-cluster with the node's cluster. Health
// checks are marked so (access logs' not_health_check_filter skips them).
//
// Stats, under http.<stat_prefix>.health_check.: request_total, ok, failed,
// failed_cluster_not_found, failed_cluster_empty, failed_cluster_unhealthy.
// cache_time (caching an upstream's health answers) is refused.
package healthcheck

import (
	"slices"
	"strings"

	healthcheckv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/health_check/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.http.health_check"

// The response headers the filter sets, and its replies' details.
const (
	HeaderImmediateFail  = "x-envoy-immediate-health-check-fail"
	HeaderCheckedCluster = "x-envoy-upstream-healthchecked-cluster"
)

// Factory builds health_check filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &healthcheckv3.HealthCheck{} }

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	cfg := m.(*healthcheckv3.HealthCheck)
	if err := cfgerr.OnlyFields(cfg, "pass_through_mode", "headers", "cluster_min_healthy_percentages", "cache_time"); err != nil {
		return nil, err
	}
	if cfg.GetCacheTime() != nil {
		return nil, cfgerr.Errorf("cache_time", "caching the upstream's health check answers is not supported by skiff")
	}
	f := &Filter{
		passThrough: cfg.GetPassThroughMode().GetValue(),
		server:      fc.Server,
		clusters:    fc.Clusters,
		cluster:     fc.Node.GetCluster(),
	}
	for i, h := range cfg.GetHeaders() {
		hm, err := route.NewHeaderMatcher(h)
		if err != nil {
			return nil, cfgerr.Index("headers", i, err)
		}
		f.headers = append(f.headers, hm)
	}
	for name, pct := range cfg.GetClusterMinHealthyPercentages() {
		f.minHealthy = append(f.minHealthy, clusterMin{name: name, percent: pct.GetValue()})
	}
	slices.SortFunc(f.minHealthy, func(a, b clusterMin) int { return strings.Compare(a.name, b.name) })
	st := fc.Stats
	if st == nil {
		st = stats.NewStore()
	}
	p := fc.HTTPStatPrefix + "health_check."
	f.stats = filterStats{
		total:            st.Counter(p + "request_total"),
		ok:               st.Counter(p + "ok"),
		failed:           st.Counter(p + "failed"),
		clusterNotFound:  st.Counter(p + "failed_cluster_not_found"),
		clusterEmpty:     st.Counter(p + "failed_cluster_empty"),
		clusterUnhealthy: st.Counter(p + "failed_cluster_unhealthy"),
	}
	return f, nil
}

// Filter is a health_check filter.
type Filter struct {
	passThrough bool
	headers     []*route.HeaderMatcher
	minHealthy  []clusterMin // by name, so that the first failing one is always the same
	server      filter.ServerHealth
	clusters    *upstream.Manager
	cluster     string // the node's cluster, for x-envoy-upstream-healthchecked-cluster
	stats       filterStats
}

type clusterMin struct {
	name    string
	percent float64
}

type filterStats struct {
	total, ok, failed, clusterNotFound, clusterEmpty, clusterUnhealthy stats.Counter
}

func (f *Filter) failing() bool { return f.server != nil && f.server.HealthCheckFailed() }

// OnRequest implements http.Filter.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	for _, h := range f.headers {
		if !h.Matches(e.Request) {
			return http.Continue
		}
	}
	e.Info.HealthCheck = true
	f.stats.total.Inc()
	failing := f.failing()
	if f.passThrough && !failing {
		return http.Continue
	}
	status, details := 200, "health_check_ok"
	switch {
	case failing:
		status, details = 503, "health_check_failed"
	default:
		status, details = f.clustersHealth()
	}
	if status == 200 {
		f.stats.ok.Inc()
		_ = e.LocalReply(200, "", details, 0)
	} else {
		f.stats.failed.Inc()
		_ = e.LocalReply(status, "", details, http.FlagFailedLocalHealthCheck)
	}
	return http.Stop
}

// clustersHealth is Envoy's check of cluster_min_healthy_percentages: 503 if
// a cluster is missing, empty (unless its percentage is 0) or has fewer
// healthy hosts than its percentage of all.
func (f *Filter) clustersHealth() (int, string) {
	details := "health_check_ok"
	for _, m := range f.minHealthy {
		details = "health_check_ok_cluster_healthy"
		c := f.clusters.Get(m.name)
		if c == nil {
			f.stats.clusterNotFound.Inc()
			return 503, "health_check_failed_no_cluster_found"
		}
		hosts := c.Hosts()
		if len(hosts) == 0 {
			if m.percent == 0 {
				continue
			}
			f.stats.clusterEmpty.Inc()
			return 503, "health_check_failed_cluster_empty"
		}
		healthy := 0
		for _, h := range hosts {
			if h.Healthy() {
				healthy++
			}
		}
		if 100*float64(healthy) < float64(len(hosts))*m.percent {
			f.stats.clusterUnhealthy.Inc()
			return 503, "health_check_failed_cluster_unhealthy"
		}
	}
	return 200, details
}

// OnResponse implements http.ResponseFilter.
func (f *Filter) OnResponse(e *http.Exchange) {
	if e.Info.HealthCheck && f.cluster != "" {
		e.Response.Set(HeaderCheckedCluster, f.cluster)
	}
	if f.failing() {
		e.Response.Set(HeaderImmediateFail, "true")
	}
}
