package upstream

import (
	"strconv"
	"sync/atomic"

	"github.com/skiffproxy/skiff/internal/stats"
)

// HTTPStats are a cluster's HTTP request and connection pool stats, named as
// in Envoy (cluster.<name>.upstream_rq_total, ...).
type HTTPStats struct {
	RqTotal, RqCompleted                             stats.Counter
	RqActive, RqPendingActive                        stats.Gauge
	RqPendingTotal, RqPendingOverflow                stats.Counter
	RqTimeout, RqPerTryTimeout, RqPerTryIdleTimeout  stats.Counter
	RqRetry, RqRetrySuccess                          stats.Counter
	RqRetryOverflow, RqRetryLimitExceeded            stats.Counter
	RqRxReset, RqTxReset, RqCancelled                stats.Counter
	CxHTTP1Total, CxHTTP2Total                       stats.Counter
	CxDestroy, CxDestroyLocal, CxDestroyRemote       stats.Counter
	CxIdleTimeout, CxMaxRequests, CxMaxDurationReach stats.Counter
	CxOverflow, CxProtocolError                      stats.Counter
	CxPoolOverflow                                   stats.Counter
	RqTime                                           stats.Histogram

	// What the circuit breakers (Config.Limits) count, the cluster's own
	// (made with it, so that their gauges are there from the start):
	// its connections (open or being made; shared with the cluster's
	// other users, tcp_proxy's connections: see Cluster.ReserveConnection),
	// requests waiting for a connection, requests in flight, retries in
	// flight and connection pools.
	Conns, Pending, Requests, Retries, Pools *Resource

	classes [5]stats.Counter // upstream_rq_1xx .. upstream_rq_5xx
	codes   [500]atomic.Pointer[stats.Counter]
	scope   *stats.Scope
}

func newHTTPStats(sc *stats.Scope, cs *clusterStats, res *resources) *HTTPStats {
	hs := &HTTPStats{
		Conns:                &res.conns,
		Pending:              &res.pending,
		Requests:             &res.requests,
		Retries:              &res.retries,
		Pools:                &res.pools,
		RqTotal:              sc.Counter("upstream_rq_total"),
		RqCompleted:          sc.Counter("upstream_rq_completed"),
		RqActive:             sc.Gauge("upstream_rq_active"),
		RqPendingActive:      sc.Gauge("upstream_rq_pending_active"),
		RqPendingTotal:       sc.Counter("upstream_rq_pending_total"),
		RqPendingOverflow:    sc.Counter("upstream_rq_pending_overflow"),
		CxPoolOverflow:       sc.Counter("upstream_cx_pool_overflow"),
		RqTimeout:            sc.Counter("upstream_rq_timeout"),
		RqPerTryTimeout:      sc.Counter("upstream_rq_per_try_timeout"),
		RqPerTryIdleTimeout:  sc.Counter("upstream_rq_per_try_idle_timeout"),
		RqRetry:              sc.Counter("upstream_rq_retry"),
		RqRetrySuccess:       sc.Counter("upstream_rq_retry_success"),
		RqRetryOverflow:      sc.Counter("upstream_rq_retry_overflow"),
		RqRetryLimitExceeded: sc.Counter("upstream_rq_retry_limit_exceeded"),
		RqRxReset:            sc.Counter("upstream_rq_rx_reset"),
		RqTxReset:            sc.Counter("upstream_rq_tx_reset"),
		RqCancelled:          sc.Counter("upstream_rq_cancelled"),
		CxHTTP1Total:         sc.Counter("upstream_cx_http1_total"),
		CxHTTP2Total:         sc.Counter("upstream_cx_http2_total"),
		CxDestroy:            cs.cxDestroy,
		CxDestroyLocal:       cs.cxDestroyLocal,
		CxDestroyRemote:      cs.cxDestroyRemote,
		CxIdleTimeout:        sc.Counter("upstream_cx_idle_timeout"),
		CxMaxRequests:        sc.Counter("upstream_cx_max_requests"),
		CxMaxDurationReach:   sc.Counter("upstream_cx_max_duration_reached"),
		CxOverflow:           cs.cxOverflow,
		CxProtocolError:      sc.Counter("upstream_cx_protocol_error"),
		RqTime:               sc.Histogram("upstream_rq_time"),
		scope:                sc,
	}
	for i := range hs.classes {
		hs.classes[i] = sc.Counter("upstream_rq_" + strconv.Itoa(i+1) + "xx")
	}
	return hs
}

// Response counts a response from the cluster: upstream_rq_<class>xx and
// upstream_rq_<code>. The per-code counter is created on the first response
// with that code.
func (hs *HTTPStats) Response(code int) {
	if code < 100 || code > 599 {
		return
	}
	hs.classes[code/100-1].Inc()
	p := hs.codes[code-100].Load()
	if p == nil {
		c := hs.scope.Counter("upstream_rq_" + strconv.Itoa(code))
		hs.codes[code-100].CompareAndSwap(nil, &c)
		p = hs.codes[code-100].Load()
	}
	p.Inc()
}
