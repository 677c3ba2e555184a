package admin

import (
	"bufio"
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/upstream"
)

// serveClusters answers as Envoy's /clusters: its text lines
// (cluster::host::stat::value, what scripts grep) or, with ?format=json,
// an envoy.admin.v3.Clusters (what istioctl proxy-config endpoint reads).
// Each host shows the counters skiff keeps per host (cx_total, cx_active,
// cx_connect_fail, rq_active), not Envoy's per-host request counts, and
// the cluster its default-priority circuit breaker.
func (s *Server) serveClusters(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if format != "" && format != "json" && format != "text" {
		http.Error(w, fmt.Sprintf("format %q: want text or json", format), http.StatusBadRequest)
		return
	}
	cs := s.clustersStatus()
	if format == "json" {
		s.writeJSON(w, cs)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	bw := bufio.NewWriter(w)
	for _, c := range cs.GetClusterStatuses() {
		name := c.GetName()
		fmt.Fprintf(bw, "%s::observability_name::%s\n", name, c.GetObservabilityName())
		for _, t := range c.GetCircuitBreakers().GetThresholds() {
			for _, l := range []struct {
				name string
				v    *wrapperspb.UInt32Value
			}{{"max_connections", t.GetMaxConnections()}, {"max_pending_requests", t.GetMaxPendingRequests()},
				{"max_requests", t.GetMaxRequests()}, {"max_retries", t.GetMaxRetries()}} {
				fmt.Fprintf(bw, "%s::default_priority::%s::%d\n", name, l.name, l.v.GetValue())
			}
		}
		fmt.Fprintf(bw, "%s::added_via_api::%t\n", name, c.GetAddedViaApi())
		for _, h := range c.GetHostStatuses() {
			prefix := name + "::" + hostAddress(h.GetAddress()) + "::"
			for _, m := range h.GetStats() {
				fmt.Fprintf(bw, "%s%s::%d\n", prefix, m.GetName(), m.GetValue())
			}
			l := h.GetLocality()
			fmt.Fprintf(bw, "%shostname::%s\n%shealth_flags::%s\n%sweight::%d\n%sregion::%s\n%szone::%s\n%ssub_zone::%s\n%scanary::false\n%spriority::%d\n",
				prefix, h.GetHostname(), prefix, healthFlagsText(h.GetHealthStatus()), prefix, h.GetWeight(),
				prefix, l.GetRegion(), prefix, l.GetZone(), prefix, l.GetSubZone(), prefix, prefix, h.GetPriority())
		}
	}
	bw.Flush()
}

// clustersStatus is the running clusters as Envoy's /clusters?format=json
// describes them, sorted by name.
func (s *Server) clustersStatus() *adminv3.Clusters {
	static := s.staticClusters()
	out := &adminv3.Clusters{}
	for _, c := range s.opts.Dataplane.Clusters().Clusters() {
		cfg := c.Config()
		lim := cfg.Limits
		cs := &adminv3.ClusterStatus{
			Name:              c.Name(),
			ObservabilityName: cfg.StatName,
			AddedViaApi:       !static[c.Name()],
			CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority:           corev3.RoutingPriority_DEFAULT,
				MaxConnections:     wrapperspb.UInt32(lim.Connections()),
				MaxPendingRequests: wrapperspb.UInt32(lim.Pending()),
				MaxRequests:        wrapperspb.UInt32(lim.Requests()),
				MaxRetries:         wrapperspb.UInt32(lim.Retries()),
			}}},
		}
		for _, h := range c.Hosts() {
			cs.HostStatuses = append(cs.HostStatuses, hostStatus(c, h))
		}
		out.ClusterStatuses = append(out.ClusterStatuses, cs)
	}
	slices.SortFunc(out.ClusterStatuses, func(a, b *adminv3.ClusterStatus) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return out
}

// staticClusters are the names of the bootstrap's clusters: those not
// added_via_api.
func (s *Server) staticClusters() map[string]bool {
	static := map[string]bool{}
	for _, c := range s.opts.Bootstrap.GetStaticResources().GetClusters() {
		static[c.GetName()] = true
	}
	return static
}

func hostStatus(c *upstream.Cluster, h *upstream.Host) *adminv3.HostStatus {
	addr := socketAddress(h.Addr)
	if h.Pipe != "" {
		addr = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: h.Pipe}}}
	}
	counter := func(name string, v uint64) *adminv3.SimpleMetric {
		return &adminv3.SimpleMetric{Type: adminv3.SimpleMetric_COUNTER, Name: name, Value: v}
	}
	gauge := func(name string, v int64) *adminv3.SimpleMetric {
		return &adminv3.SimpleMetric{Type: adminv3.SimpleMetric_GAUGE, Name: name, Value: uint64(max(v, 0))}
	}
	hs := &adminv3.HostHealthStatus{EdsHealthStatus: h.Health()}
	for _, f := range h.HealthFlags() {
		switch f {
		case "failed_active_hc":
			hs.FailedActiveHealthCheck = true
		case "excluded_via_immediate_hc_fail":
			hs.ExcludedViaImmediateHcFail = true
		case "failed_outlier_check":
			hs.FailedOutlierCheck = true
		case "degraded_active_hc":
			hs.FailedActiveDegradedCheck = true
		}
	}
	region, rest, _ := strings.Cut(c.HostLocality(h), "/")
	zone, subZone, _ := strings.Cut(rest, "/")
	return &adminv3.HostStatus{
		Address: addr,
		Stats: []*adminv3.SimpleMetric{ // sorted by name, as Envoy's
			gauge("cx_active", h.CxActive.Load()),
			counter("cx_connect_fail", h.CxConnectFail.Load()),
			counter("cx_total", h.CxTotal.Load()),
			gauge("rq_active", h.RqActive.Load()),
		},
		HealthStatus: hs,
		Weight:       h.Weight(),
		Hostname:     h.Hostname(),
		Priority:     h.Priority(),
		Locality:     &corev3.Locality{Region: region, Zone: zone, SubZone: subZone},
	}
}

// hostAddress is an address as Envoy's /clusters writes it: ip:port, or
// a unix socket's path.
func hostAddress(a *corev3.Address) string {
	if p := a.GetPipe(); p != nil {
		return p.GetPath()
	}
	sa := a.GetSocketAddress()
	if strings.Contains(sa.GetAddress(), ":") {
		return fmt.Sprintf("[%s]:%d", sa.GetAddress(), sa.GetPortValue())
	}
	return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
}

// healthFlagsText is a host's health_flags line as Envoy writes it:
// "healthy", or each reason the load balancer skips or degrades the host
// after a slash, in Envoy's order.
func healthFlagsText(hs *adminv3.HostHealthStatus) string {
	var b strings.Builder
	for _, f := range []struct {
		set  bool
		name string
	}{
		{hs.GetFailedActiveHealthCheck(), "failed_active_hc"},
		{hs.GetFailedOutlierCheck(), "failed_outlier_check"},
		{hs.GetEdsHealthStatus() != corev3.HealthStatus_UNKNOWN && hs.GetEdsHealthStatus() != corev3.HealthStatus_HEALTHY &&
			hs.GetEdsHealthStatus() != corev3.HealthStatus_DEGRADED, "failed_eds_health"},
		{hs.GetFailedActiveDegradedCheck(), "degraded_active_hc"},
		{hs.GetEdsHealthStatus() == corev3.HealthStatus_DEGRADED, "degraded_eds_health"},
		{hs.GetExcludedViaImmediateHcFail(), "excluded_via_immediate_hc_fail"},
	} {
		if f.set {
			b.WriteString("/" + f.name)
		}
	}
	if b.Len() == 0 {
		return "healthy"
	}
	return b.String()
}
