package upstream

import (
	"net/netip"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// DefaultCleanupInterval is Envoy's cleanup_interval: how long an ORIGINAL_DST
// cluster keeps a host nothing picked.
const DefaultCleanupInterval = 5 * time.Second

// DefaultOriginalDstHeader is the request header an ORIGINAL_DST cluster with
// use_http_header reads its destination from.
const DefaultOriginalDstHeader = "x-envoy-original-dst-host"

// OriginalDstConfig is an ORIGINAL_DST cluster's: as Envoy's, its hosts are
// made on demand for the destination a connection or request asks for (the
// original destination a listener filter restored, or a request header) and
// dropped once no pick used them for a cleanup interval.
type OriginalDstConfig struct {
	// Header is the request header naming the destination ("IP:port"),
	// with use_http_header; "" otherwise.
	Header string
	// PortOverride, if not 0, replaces the destination's port
	// (upstream_port_override).
	PortOverride uint16
	// Cleanup is cleanup_interval.
	Cleanup time.Duration
}

func originalDstConfig(pb *clusterv3.Cluster) (*OriginalDstConfig, error) {
	if pb.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		return nil, cfgerr.Errorf("lb_policy", "an ORIGINAL_DST cluster needs CLUSTER_PROVIDED (its hosts are the destinations asked for), as in Envoy")
	}
	if pb.GetLoadAssignment() != nil {
		return nil, cfgerr.Errorf("load_assignment", "an ORIGINAL_DST cluster has no load assignment: its hosts are the destinations asked for")
	}
	if len(pb.GetHealthChecks()) > 0 {
		return nil, cfgerr.Errorf("health_checks", "not supported by skiff on ORIGINAL_DST clusters")
	}
	od := &OriginalDstConfig{Cleanup: DefaultCleanupInterval}
	if d := pb.GetCleanupInterval(); d != nil {
		if od.Cleanup = d.AsDuration(); od.Cleanup <= 0 {
			return nil, cfgerr.Errorf("cleanup_interval", "must be greater than zero")
		}
	}
	if lc := pb.GetOriginalDstLbConfig(); lc != nil {
		if err := cfgerr.OnlyFields(lc, "use_http_header", "http_header_name", "upstream_port_override"); err != nil {
			return nil, cfgerr.Field("original_dst_lb_config", err)
		}
		if lc.GetUseHttpHeader() {
			od.Header = DefaultOriginalDstHeader
			if n := lc.GetHttpHeaderName(); n != "" {
				od.Header = strings.ToLower(n)
			}
		}
		if p := lc.GetUpstreamPortOverride(); p != nil {
			if p.GetValue() == 0 || p.GetValue() > 65535 {
				return nil, cfgerr.Errorf("original_dst_lb_config.upstream_port_override", "%d is not a port", p.GetValue())
			}
			od.PortOverride = uint16(p.GetValue())
		}
	}
	return od, nil
}

// OriginalDst is the cluster's ORIGINAL_DST configuration, or nil for a
// cluster of another type. Such a cluster picks no host by Pick: callers ask
// PickOriginal for the destination.
func (c *Cluster) OriginalDst() *OriginalDstConfig { return c.cfg.Load().OriginalDst }

// PickOriginal returns the host for destination dst of an ORIGINAL_DST
// cluster (its port replaced by upstream_port_override), made if the cluster
// has none yet, as Envoy's OriginalDstCluster does; nil (counted in
// upstream_cx_none_healthy) for an invalid dst.
func (c *Cluster) PickOriginal(dst netip.AddrPort) *Host {
	od := c.OriginalDst()
	if od == nil || !dst.IsValid() {
		c.stats.cxNoneHealthy.Inc()
		return nil
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if od.PortOverride != 0 {
		dst = netip.AddrPortFrom(dst.Addr(), od.PortOverride)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.hosts[hostKey{addr: dst}]
	if h == nil {
		h = &Host{Addr: dst}
		h.weight.Store(1)
		h.transport.Store(resolveTransport(c.transports, c.cfg.Load().transport, nil, nil))
		c.hosts[hostKey{addr: dst}] = h
		all := append(append([]*Host(nil), c.lb.Load().all...), h)
		c.setBalancerLocked(all)
		c.startCleanupLocked(od.Cleanup)
	}
	h.used.Store(true)
	return h
}

// startCleanupLocked starts the sweep of unused hosts, if it is not running.
func (c *Cluster) startCleanupLocked(every time.Duration) {
	if c.cleanup != nil {
		return
	}
	c.cleanup = time.AfterFunc(every, c.sweep)
}

// sweep drops the hosts no pick used since the last sweep, as Envoy's
// cleanup timer does; connections made to them go on, and their pools close
// them once idle (the host is gone). It runs again while hosts remain.
func (c *Cluster) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cleanup = nil
	od := c.cfg.Load().OriginalDst
	if od == nil || c.stopped {
		return
	}
	var keep []*Host
	for _, h := range c.lb.Load().all {
		if h.used.Swap(false) {
			keep = append(keep, h)
			continue
		}
		h.gone.Store(true)
		delete(c.hosts, h.key())
	}
	if len(keep) != len(c.lb.Load().all) {
		c.setBalancerLocked(keep)
	}
	if len(keep) > 0 {
		c.startCleanupLocked(od.Cleanup)
	}
}
