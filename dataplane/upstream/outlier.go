package upstream

import (
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// OutlierConfig is a cluster's outlier_detection (passive health checking),
// with Envoy's defaults filled in. Percentages are 0-100; the enforcing ones
// are the chance that a host found to be an outlier is ejected.
type OutlierConfig struct {
	Interval, BaseEjectionTime, MaxEjectionTime, MaxEjectionTimeJitter time.Duration
	MaxEjectionPercent                                                 uint32
	AlwaysEjectOneHost                                                 bool
	// SplitLocalOrigin is split_external_local_origin_errors: connect
	// failures and timeouts count apart from the upstream's own errors.
	SplitLocalOrigin bool

	Consecutive5xx, ConsecutiveGatewayFailure, ConsecutiveLocalOriginFailure uint32
	Enforcing5xx, EnforcingGatewayFailure, EnforcingLocalOriginFailure       uint32

	SuccessRateMinimumHosts, SuccessRateRequestVolume, SuccessRateStdevFactor uint32
	EnforcingSuccessRate, EnforcingLocalOriginSuccessRate                     uint32

	FailurePercentageThreshold, FailurePercentageMinimumHosts, FailurePercentageRequestVolume uint32
	EnforcingFailurePercentage, EnforcingFailurePercentageLocalOrigin                         uint32
}

// newOutlierConfig compiles outlier_detection.
func newOutlierConfig(pb *clusterv3.OutlierDetection) (*OutlierConfig, error) {
	if err := cfgerr.OnlyFields(pb, "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
		"enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
		"success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
		"enforcing_consecutive_gateway_failure", "split_external_local_origin_errors",
		"consecutive_local_origin_failure", "enforcing_consecutive_local_origin_failure",
		"enforcing_local_origin_success_rate", "failure_percentage_threshold", "enforcing_failure_percentage",
		"enforcing_failure_percentage_local_origin", "failure_percentage_minimum_hosts",
		"failure_percentage_request_volume", "max_ejection_time", "max_ejection_time_jitter",
		"successful_active_health_check_uneject_host", "always_eject_one_host"); err != nil {
		return nil, err
	}
	u := func(v *wrapperspb.UInt32Value, def uint32) uint32 {
		if v == nil {
			return def
		}
		return v.GetValue()
	}
	d := func(v *durationpb.Duration, def time.Duration) time.Duration {
		if v == nil {
			return def
		}
		return v.AsDuration()
	}
	oc := &OutlierConfig{
		Interval:                              d(pb.GetInterval(), 10*time.Second),
		BaseEjectionTime:                      d(pb.GetBaseEjectionTime(), 30*time.Second),
		MaxEjectionTimeJitter:                 d(pb.GetMaxEjectionTimeJitter(), 0),
		MaxEjectionPercent:                    min(u(pb.GetMaxEjectionPercent(), 10), 100),
		AlwaysEjectOneHost:                    pb.GetAlwaysEjectOneHost().GetValue(),
		SplitLocalOrigin:                      pb.GetSplitExternalLocalOriginErrors(),
		Consecutive5xx:                        u(pb.GetConsecutive_5Xx(), 5),
		ConsecutiveGatewayFailure:             u(pb.GetConsecutiveGatewayFailure(), 5),
		ConsecutiveLocalOriginFailure:         u(pb.GetConsecutiveLocalOriginFailure(), 5),
		Enforcing5xx:                          u(pb.GetEnforcingConsecutive_5Xx(), 100),
		EnforcingGatewayFailure:               u(pb.GetEnforcingConsecutiveGatewayFailure(), 0),
		EnforcingLocalOriginFailure:           u(pb.GetEnforcingConsecutiveLocalOriginFailure(), 100),
		SuccessRateMinimumHosts:               u(pb.GetSuccessRateMinimumHosts(), 5),
		SuccessRateRequestVolume:              u(pb.GetSuccessRateRequestVolume(), 100),
		SuccessRateStdevFactor:                u(pb.GetSuccessRateStdevFactor(), 1900),
		EnforcingSuccessRate:                  u(pb.GetEnforcingSuccessRate(), 100),
		EnforcingLocalOriginSuccessRate:       u(pb.GetEnforcingLocalOriginSuccessRate(), 100),
		FailurePercentageThreshold:            u(pb.GetFailurePercentageThreshold(), 85),
		FailurePercentageMinimumHosts:         u(pb.GetFailurePercentageMinimumHosts(), 5),
		FailurePercentageRequestVolume:        u(pb.GetFailurePercentageRequestVolume(), 50),
		EnforcingFailurePercentage:            u(pb.GetEnforcingFailurePercentage(), 0),
		EnforcingFailurePercentageLocalOrigin: u(pb.GetEnforcingFailurePercentageLocalOrigin(), 0),
	}
	// Envoy: max_ejection_time defaults to 300 s, or base_ejection_time if that
	// is longer, and may not be set below it.
	oc.MaxEjectionTime = d(pb.GetMaxEjectionTime(), max(300*time.Second, oc.BaseEjectionTime))
	if oc.MaxEjectionTime < oc.BaseEjectionTime {
		return nil, cfgerr.Errorf("max_ejection_time", "%v is less than base_ejection_time (%v)", oc.MaxEjectionTime, oc.BaseEjectionTime)
	}
	if oc.Interval <= 0 {
		return nil, cfgerr.Errorf("interval", "must be greater than zero")
	}
	return oc, nil
}

// Outcome is what became of a connection or request to a host when no HTTP
// status says it (Envoy's Outlier::Result), for outlier detection.
type Outcome uint8

const (
	// ConnectFailed: the connection could not be made, or the upstream reset
	// the request (LocalOriginConnectFailed).
	ConnectFailed Outcome = iota + 1
	// TimedOut: the upstream did not answer in time (LocalOriginTimeout).
	TimedOut
	// Connected: a connection was made, or reused; the request's response
	// decides the rest (LocalOriginConnectSuccess: no HTTP status).
	Connected
	// ConnectedFinal: a connection was made and that is all a TCP proxy
	// learns (LocalOriginConnectSuccessFinal: a success).
	ConnectedFinal
)

// ejection kinds, as Envoy's OutlierEjectionType, with their stat names.
type ejection uint8

const (
	ejConsecutive5xx ejection = iota
	ejGatewayFailure
	ejLocalOriginFailure
	ejSuccessRate
	ejLocalOriginSuccessRate
	ejFailurePercentage
	ejLocalOriginFailurePercentage
	numEjectionKinds
)

var ejectionNames = [numEjectionKinds]string{
	"consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
	"success_rate", "local_origin_success_rate", "failure_percentage", "local_origin_failure_percentage",
}

// outlierStats are cluster.<name>.outlier_detection.*, as in Envoy.
type outlierStats struct {
	active                       stats.Gauge
	overflow, enforcedTotal, old stats.Counter // old: the deprecated ejections_total
	enforced, detected           [numEjectionKinds]stats.Counter
}

func newOutlierStats(sc *stats.Scope) *outlierStats {
	const p = "outlier_detection."
	s := &outlierStats{
		active:        sc.Gauge(p + "ejections_active"),
		overflow:      sc.Counter(p + "ejections_overflow"),
		enforcedTotal: sc.Counter(p + "ejections_enforced_total"),
		old:           sc.Counter(p + "ejections_total"),
	}
	for k, name := range ejectionNames {
		s.enforced[k] = sc.Counter(p + "ejections_enforced_" + name)
		s.detected[k] = sc.Counter(p + "ejections_detected_" + name)
	}
	return s
}

// hostOutlier is a host's outlier detection state. The counters are kept by
// the reports (any goroutine); the rest under its cluster's mu.
type hostOutlier struct {
	ejected                                           atomic.Bool
	consecutive5xx, consecutiveGateway, consecutiveLO atomic.Uint32
	// This interval's requests and successes, upstream (ext) and local
	// origin (lo: connects and timeouts, when split).
	ext, lo srCounts

	// Under the cluster's mu.
	extLast, loLast srLast // the last interval's
	backoff         uint32 // how many base_ejection_times the next ejection lasts
	ejectedAt       time.Time
	unejectedAt     time.Time
	jitter          time.Duration
}

type srCounts struct{ total, success atomic.Uint64 }

type srLast struct{ total, success uint64 }

// roll ends the interval: the counts so far become the last interval's.
func (c *srCounts) roll() srLast {
	l := srLast{total: c.total.Swap(0), success: c.success.Swap(0)}
	l.success = min(l.success, l.total) // a report between the two swaps
	return l
}

// detector is a cluster's outlier detection: reports update the hosts'
// counters, consecutive errors eject a host at once, and an interval timer
// brings ejected hosts back and runs the success rate and failure
// percentage checks, as Envoy's DetectorImpl.
type detector struct {
	c     *Cluster
	cfg   *OutlierConfig
	stats *outlierStats
	timer *time.Timer
	done  bool // stopped: under c.mu
}

// setOutlierLocked starts, restarts or stops the cluster's outlier detection
// for cfg (nil: none). c.mu is held.
func (c *Cluster) setOutlierLocked(cfg *OutlierConfig) {
	old := c.outlier.Load()
	if old != nil && old.cfg == cfg {
		return
	}
	if old != nil {
		old.stopLocked()
	}
	if cfg == nil {
		c.outlier.Store(nil)
		if c.unejectAllLocked() {
			c.rebuildLocked()
		}
		return
	}
	st := c.outlierStats
	if st == nil {
		st = newOutlierStats(c.scope)
		c.outlierStats = st
	}
	d := &detector{c: c, cfg: cfg, stats: st}
	d.timer = time.AfterFunc(cfg.Interval, d.onInterval)
	c.outlier.Store(d)
}

func (d *detector) stopLocked() {
	d.done = true
	d.timer.Stop()
}

// DetectsOutliers reports whether the cluster has outlier detection, so that
// a caller can skip working out a status nobody would be told.
func (c *Cluster) DetectsOutliers() bool { return c.outlier.Load() != nil }

// ReportStatus reports the HTTP status of a response from h (for a gRPC
// request that ended in its headers, the HTTP equivalent of its
// grpc-status) to the cluster's outlier detection, if it has one.
func (c *Cluster) ReportStatus(h *Host, status int) {
	if d := c.outlier.Load(); d != nil {
		d.putStatus(h, status)
	}
}

// ReportOutcome reports what became of a connection or request to h when no
// HTTP status says it, as Envoy maps such results: unless
// split_external_local_origin_errors is set, a failed connect counts as a 503
// from the host, a timeout as a 504, and a TCP proxy's connect as a 200.
func (c *Cluster) ReportOutcome(h *Host, o Outcome) {
	d := c.outlier.Load()
	if d == nil {
		return
	}
	if !d.cfg.SplitLocalOrigin {
		switch o {
		case ConnectFailed:
			d.putStatus(h, 503)
		case TimedOut:
			d.putStatus(h, 504)
		case ConnectedFinal:
			d.putStatus(h, 200)
		}
		return
	}
	od := &h.outlier
	od.lo.total.Add(1)
	switch o {
	case ConnectFailed, TimedOut:
		if od.consecutiveLO.Add(1) == d.cfg.ConsecutiveLocalOriginFailure {
			d.consecutive(h, ejLocalOriginFailure)
		}
	case Connected, ConnectedFinal:
		od.lo.success.Add(1)
		od.consecutiveLO.Store(0)
	}
}

// putStatus counts a response status (Envoy's putHttpResponseCode): 5xx
// toward consecutive_5xx, 502-504 toward consecutive_gateway_failure.
func (d *detector) putStatus(h *Host, status int) {
	od := &h.outlier
	od.ext.total.Add(1)
	if status < 500 || status > 599 {
		od.ext.success.Add(1)
		od.consecutive5xx.Store(0)
		od.consecutiveGateway.Store(0)
		return
	}
	if status >= 502 && status <= 504 {
		if od.consecutiveGateway.Add(1) == d.cfg.ConsecutiveGatewayFailure {
			d.consecutive(h, ejGatewayFailure)
		}
	} else {
		od.consecutiveGateway.Store(0)
	}
	if od.consecutive5xx.Add(1) == d.cfg.Consecutive5xx {
		d.consecutive(h, ejConsecutive5xx)
	}
}

// consecutive acts on a host reaching a consecutive error threshold.
func (d *detector) consecutive(h *Host, k ejection) {
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if d.done || h.outlier.ejected.Load() || c.hosts[h.key()] != h {
		return
	}
	d.stats.detected[k].Inc()
	if d.ejectLocked(h, k, time.Now()) {
		c.rebuildLocked()
	}
	// The counter starts again, so that a host that goes on failing is
	// found again (ejected or not).
	switch k {
	case ejConsecutive5xx:
		h.outlier.consecutive5xx.Store(0)
	case ejGatewayFailure:
		h.outlier.consecutiveGateway.Store(0)
	case ejLocalOriginFailure:
		h.outlier.consecutiveLO.Store(0)
	}
}

// ejectLocked ejects h for kind k, if max_ejection_percent allows and the
// kind's enforcing percentage says so. It reports whether it did.
func (d *detector) ejectLocked(h *Host, k ejection, now time.Time) bool {
	cfg, c := d.cfg, d.c
	active := c.ejectedLocked()
	allowed := float64(100*(active+1))/float64(len(c.hosts)) <= float64(cfg.MaxEjectionPercent) ||
		(cfg.AlwaysEjectOneHost && active == 0)
	if !allowed {
		d.stats.overflow.Inc()
		return false
	}
	if k == ejConsecutive5xx || k == ejSuccessRate {
		d.stats.old.Inc()
	}
	if !enforce(d.enforcing(k)) {
		return false
	}
	od := &h.outlier
	od.ejected.Store(true)
	od.ejectedAt = now
	if cfg.MaxEjectionTimeJitter > 0 {
		od.jitter = rand.N(cfg.MaxEjectionTimeJitter + time.Millisecond)
	}
	if time.Duration(od.backoff)*cfg.BaseEjectionTime < cfg.MaxEjectionTime+cfg.BaseEjectionTime {
		od.backoff++
	}
	d.stats.enforced[k].Inc()
	d.stats.enforcedTotal.Inc()
	d.stats.active.Set(int64(active + 1))
	return true
}

func (d *detector) enforcing(k ejection) uint32 {
	cfg := d.cfg
	switch k {
	case ejConsecutive5xx:
		return cfg.Enforcing5xx
	case ejGatewayFailure:
		return cfg.EnforcingGatewayFailure
	case ejLocalOriginFailure:
		return cfg.EnforcingLocalOriginFailure
	case ejSuccessRate:
		return cfg.EnforcingSuccessRate
	case ejLocalOriginSuccessRate:
		return cfg.EnforcingLocalOriginSuccessRate
	case ejFailurePercentage:
		return cfg.EnforcingFailurePercentage
	}
	return cfg.EnforcingFailurePercentageLocalOrigin
}

// enforce is true with probability pct percent.
func enforce(pct uint32) bool { return pct >= 100 || (pct > 0 && rand.Uint32N(100) < pct) }

// onInterval is the interval timer: ejected hosts whose time is up come
// back, the interval's counts are rolled, the success rate and failure
// percentage checks run, and the hosts that stayed in for an interval since
// they came back have their ejection backoff lowered.
func (d *detector) onInterval() {
	c, cfg := d.c, d.cfg
	c.mu.Lock()
	defer c.mu.Unlock()
	if d.done {
		return
	}
	now := time.Now()
	changed := false
	for _, h := range c.hosts {
		od := &h.outlier
		if od.ejected.Load() {
			span := min(time.Duration(od.backoff)*cfg.BaseEjectionTime, cfg.MaxEjectionTime) + od.jitter
			if now.Sub(od.ejectedAt) >= span {
				od.ejected.Store(false)
				od.consecutive5xx.Store(0)
				od.consecutiveGateway.Store(0)
				od.consecutiveLO.Store(0)
				od.unejectedAt = now
				changed = true
			}
		}
		od.extLast, od.loLast = od.ext.roll(), od.lo.roll()
	}
	changed = d.rateChecksLocked(false, now) || changed
	if cfg.SplitLocalOrigin {
		changed = d.rateChecksLocked(true, now) || changed
	}
	for _, h := range c.hosts {
		od := &h.outlier
		if !od.ejected.Load() && !od.unejectedAt.IsZero() && now.Sub(od.unejectedAt) >= cfg.Interval && od.backoff > 0 {
			od.backoff--
		}
	}
	d.stats.active.Set(int64(c.ejectedLocked()))
	if changed {
		c.rebuildLocked()
	}
	d.timer.Reset(cfg.Interval)
}

// rateChecksLocked runs the success rate and failure percentage checks over
// the last interval's counts, upstream or local origin ones. It reports
// whether it ejected a host.
func (d *detector) rateChecksLocked(local bool, now time.Time) bool {
	cfg, c := d.cfg, d.c
	if n := uint32(len(c.hosts)); n < cfg.SuccessRateMinimumHosts && n < cfg.FailurePercentageMinimumHosts {
		return false
	}
	type rated struct {
		h    *Host
		rate float64 // success, percent
	}
	var sr, fp []rated
	sum := 0.0
	for _, h := range c.hosts {
		od := &h.outlier
		last := od.extLast
		if local {
			last = od.loLast
		}
		if od.ejected.Load() || last.total == 0 {
			continue
		}
		r := rated{h, float64(last.success) * 100 / float64(last.total)}
		if last.total >= uint64(cfg.SuccessRateRequestVolume) {
			sr = append(sr, r)
			sum += r.rate
		}
		if last.total >= uint64(cfg.FailurePercentageRequestVolume) {
			fp = append(fp, r)
		}
	}
	srKind, fpKind := ejSuccessRate, ejFailurePercentage
	if local {
		srKind, fpKind = ejLocalOriginSuccessRate, ejLocalOriginFailurePercentage
	}
	ejected := false
	if len(sr) > 0 && uint32(len(sr)) >= cfg.SuccessRateMinimumHosts {
		// Hosts below the mean by more than success_rate_stdev_factor/1000
		// standard deviations.
		mean := sum / float64(len(sr))
		variance := 0.0
		for _, r := range sr {
			variance += (r.rate - mean) * (r.rate - mean)
		}
		threshold := mean - float64(cfg.SuccessRateStdevFactor)/1000*math.Sqrt(variance/float64(len(sr)))
		for _, r := range sr {
			if r.rate < threshold && !r.h.outlier.ejected.Load() {
				d.stats.detected[srKind].Inc()
				ejected = d.ejectLocked(r.h, srKind, now) || ejected
			}
		}
	}
	if len(fp) > 0 && uint32(len(fp)) >= cfg.FailurePercentageMinimumHosts {
		for _, r := range fp {
			if 100-r.rate >= float64(cfg.FailurePercentageThreshold) && !r.h.outlier.ejected.Load() {
				d.stats.detected[fpKind].Inc()
				ejected = d.ejectLocked(r.h, fpKind, now) || ejected
			}
		}
	}
	return ejected
}

// ejectedLocked counts the cluster's ejected hosts.
func (c *Cluster) ejectedLocked() int {
	n := 0
	for _, h := range c.hosts {
		if h.outlier.ejected.Load() {
			n++
		}
	}
	return n
}

// unejectAllLocked brings every ejected host back; it reports whether there
// was one.
func (c *Cluster) unejectAllLocked() bool {
	found := false
	for _, h := range c.hosts {
		if h.outlier.ejected.Swap(false) {
			found = true
		}
	}
	return found
}
