package upstream

import (
	"math"
	"sync/atomic"

	"github.com/skiffproxy/skiff/internal/stats"
)

// Resource counts what one of a cluster's circuit breakers limits (its
// connections open or being made, its pending requests, ...), as a resource
// of Envoy's per-cluster ResourceManager does. Every user of the cluster
// counts against the same Resource: the HTTP connection pools' connections
// and tcp_proxy's both count toward max_connections, the cluster's total.
//
// Each change also sets the circuit breaker's gauges,
// cluster.<name>.circuit_breakers.default.<x>_open (1 while the count is at
// its limit) and, with track_remaining, remaining_<x> (the room left), as
// Envoy's ManagedResourceImpl does.
type Resource struct {
	n      atomic.Int64
	gauges atomic.Pointer[resourceGauges] // nil until the cluster binds them
}

// resourceGauges are a Resource's gauges for one configuration of its
// cluster: a new configuration binds new ones (another limit, or
// track_remaining).
type resourceGauges struct {
	c         *Cluster // whose stats scope holds the gauges
	limit     int64
	open      stats.Gauge
	remaining stats.Gauge
	track     bool // remaining is published (track_remaining)
}

// Add adds d (which may be negative) and returns the new count.
func (r *Resource) Add(d int64) int64 {
	n := r.n.Add(d)
	if g := r.gauges.Load(); g != nil {
		g.set(n)
	}
	return n
}

// Load returns the count.
func (r *Resource) Load() int64 { return r.n.Load() }

// tryInc adds one unless the count has reached limit, and reports whether it
// did.
func (r *Resource) tryInc(limit int64) bool {
	for {
		n := r.n.Load()
		if n >= limit {
			return false
		}
		if r.n.CompareAndSwap(n, n+1) {
			if g := r.gauges.Load(); g != nil {
				g.set(n + 1)
			}
			return true
		}
	}
}

// bind makes g the Resource's gauges and sets them from the count.
func (r *Resource) bind(g *resourceGauges) {
	r.gauges.Store(g)
	g.setHeld(r.n.Load())
}

// set sets the gauges for a count of n, unless the cluster's stats are gone
// (it was removed and its last user left: the gauges' slots may serve
// other stats by now). Some users count without holding a reference, such
// as a pool dropped after its cluster.
func (g *resourceGauges) set(n int64) {
	if !g.c.Acquire() {
		return
	}
	g.setHeld(n)
	g.c.Release()
}

// setHeld sets the gauges for a count of n; the caller holds a reference to
// the cluster.
func (g *resourceGauges) setHeld(n int64) {
	var open int64
	if n >= g.limit {
		open = 1
	}
	g.open.Set(open)
	if g.track {
		g.remaining.Set(max(g.limit-n, 0))
	}
}

// resources are what a cluster's circuit breakers count (see Limits).
type resources struct {
	conns, pending, requests, retries, pools Resource
}

// bindLocked gives the resources gauges for c's limits l, in c's stats
// scope: circuit_breakers.default.cx_open, ... and, with track_remaining,
// remaining_cx, .... c's mu is held, and a reference to c (an update).
func (rs *resources) bindLocked(c *Cluster, l *Limits) {
	sc := c.scope
	pools := int64(math.MaxInt64) // no limit (Envoy's is the largest uint64)
	if v, ok := l.ConnectionPools(); ok {
		pools = int64(v)
	}
	for _, x := range []struct {
		r          *Resource
		open, left string
		limit      int64
	}{
		{&rs.conns, "cx_open", "remaining_cx", int64(l.Connections())},
		{&rs.pending, "rq_pending_open", "remaining_pending", int64(l.Pending())},
		{&rs.requests, "rq_open", "remaining_rq", int64(l.Requests())},
		{&rs.retries, "rq_retry_open", "remaining_retries", int64(l.Retries())},
		{&rs.pools, "cx_pool_open", "remaining_cx_pools", pools},
	} {
		g := &resourceGauges{c: c, limit: x.limit, track: l.TrackRemaining,
			open: sc.GaugeMode("circuit_breakers.default."+x.open, stats.NeverImport)}
		if g.track {
			g.remaining = sc.GaugeMode("circuit_breakers.default."+x.left, stats.NeverImport)
		}
		x.r.bind(g)
	}
}
