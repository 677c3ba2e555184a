package upstream

import (
	"fmt"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/stats"
)

// outlierCluster is a cluster of n hosts (127.0.0.1:1 ... :n) with the
// outlier detection od, and its stats store.
func outlierCluster(t *testing.T, n int, od *clusterv3.OutlierDetection) (*Cluster, *stats.Store) {
	t.Helper()
	oc, err := newOutlierConfig(od)
	if err != nil {
		t.Fatal(err)
	}
	var eps []Endpoint
	for i := 1; i <= n; i++ {
		eps = append(eps, ep(fmt.Sprintf("127.0.0.1:%d", i), 1, 0, 0))
	}
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(&Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: eps,
		PanicThreshold: 50, Outlier: oc})})
	t.Cleanup(func() { m.Set(nil) })
	return m.Get("c"), st
}

func host(c *Cluster, port int) *Host {
	for _, h := range c.Hosts() {
		if int(h.Addr.Port()) == port {
			return h
		}
	}
	return nil
}

func stat(t *testing.T, st *stats.Store, name string) int64 {
	t.Helper()
	v, _ := st.Value("cluster.c.outlier_detection." + name)
	return v
}

// waitUntil polls cond every 10 ms for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
	}
}

// TestConsecutive5xx: a host that answers consecutive_5xx 5xx in a row is
// ejected (the balancer no longer picks it), counted as Envoy counts it, and
// comes back after base_ejection_time; a success in between starts the
// count again.
func TestConsecutive5xx(t *testing.T) {
	c, st := outlierCluster(t, 3, &clusterv3.OutlierDetection{
		Consecutive_5Xx: wrapperspb.UInt32(3), MaxEjectionPercent: wrapperspb.UInt32(100),
		Interval: durationpb.New(20 * time.Millisecond), BaseEjectionTime: durationpb.New(200 * time.Millisecond),
	})
	bad := host(c, 1)
	c.ReportStatus(bad, 503)
	c.ReportStatus(bad, 500)
	c.ReportStatus(bad, 200) // starts again
	c.ReportStatus(bad, 503)
	c.ReportStatus(bad, 503)
	if bad.Ejected() {
		t.Fatal("ejected after two 5xx in a row")
	}
	c.ReportStatus(bad, 500)
	if !bad.Ejected() || bad.Healthy() {
		t.Fatal("not ejected after three 5xx in a row")
	}
	if got := countPicks(c, 100); got["127.0.0.1:1"] != 0 || got["127.0.0.1:2"] != 50 {
		t.Fatalf("picks %v: want the two others only", got)
	}
	for name, want := range map[string]int64{"ejections_active": 1, "ejections_enforced_total": 1,
		"ejections_enforced_consecutive_5xx": 1, "ejections_detected_consecutive_5xx": 1, "ejections_overflow": 0} {
		if v := stat(t, st, name); v != want {
			t.Errorf("%s = %d, want %d", name, v, want)
		}
	}
	start := time.Now()
	waitUntil(t, "the host back", func() bool { return !bad.Ejected() })
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("back after %v, before base_ejection_time", d)
	}
	// The host is marked back before the balancer's host set is rebuilt
	// with it: picks made in between go to the other two.
	waitUntil(t, "the balancer to pick the host again", func() bool { return countPicks(c, 3)["127.0.0.1:1"] == 1 })
	if got := countPicks(c, 30); got["127.0.0.1:1"] != 10 {
		t.Fatalf("picks %v: the host is back in the balancer", got)
	}
	if v := stat(t, st, "ejections_active"); v != 0 {
		t.Errorf("ejections_active = %d after the host came back", v)
	}
}

// TestMaxEjectionPercent: as Envoy, a host is ejected only if the ejected
// hosts then stay within max_ejection_percent (default 10), unless
// always_eject_one_host lets the first go anyway; the others overflow.
func TestMaxEjectionPercent(t *testing.T) {
	fail := func(c *Cluster, port int) {
		for range 5 {
			c.ReportStatus(host(c, port), 500) // not a gateway failure: one detection
		}
	}
	c, st := outlierCluster(t, 3, &clusterv3.OutlierDetection{})
	fail(c, 1)
	if host(c, 1).Ejected() || stat(t, st, "ejections_overflow") != 1 || stat(t, st, "ejections_detected_consecutive_5xx") != 1 {
		t.Fatalf("3 hosts, default 10%%: ejected %v, overflow %d", host(c, 1).Ejected(), stat(t, st, "ejections_overflow"))
	}
	c, st = outlierCluster(t, 3, &clusterv3.OutlierDetection{AlwaysEjectOneHost: wrapperspb.Bool(true)})
	fail(c, 1)
	fail(c, 2)
	if !host(c, 1).Ejected() || host(c, 2).Ejected() || stat(t, st, "ejections_overflow") != 1 {
		t.Fatalf("always_eject_one_host: ejected %v %v, overflow %d", host(c, 1).Ejected(), host(c, 2).Ejected(),
			stat(t, st, "ejections_overflow"))
	}
}

// TestGatewayFailureEnforcing: consecutive gateway failures (502-504) are
// detected, but Envoy enforces them only when
// enforcing_consecutive_gateway_failure says so (default 0).
func TestGatewayFailureEnforcing(t *testing.T) {
	for _, enforcing := range []uint32{0, 100} {
		c, st := outlierCluster(t, 2, &clusterv3.OutlierDetection{
			Consecutive_5Xx: wrapperspb.UInt32(100), ConsecutiveGatewayFailure: wrapperspb.UInt32(2),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(enforcing), MaxEjectionPercent: wrapperspb.UInt32(100),
		})
		c.ReportOutcome(host(c, 1), TimedOut)      // a 504
		c.ReportOutcome(host(c, 1), ConnectFailed) // a 503
		if got := host(c, 1).Ejected(); got != (enforcing == 100) {
			t.Errorf("enforcing %d: ejected %v", enforcing, got)
		}
		if v := stat(t, st, "ejections_detected_consecutive_gateway_failure"); v != 1 {
			t.Errorf("enforcing %d: detected %d", enforcing, v)
		}
	}
}

// TestSplitLocalOrigin: with split_external_local_origin_errors, connect
// failures and timeouts count toward consecutive_local_origin_failure, not
// toward consecutive_5xx, and a connect resets them.
func TestSplitLocalOrigin(t *testing.T) {
	c, st := outlierCluster(t, 2, &clusterv3.OutlierDetection{
		SplitExternalLocalOriginErrors: true, Consecutive_5Xx: wrapperspb.UInt32(2),
		ConsecutiveLocalOriginFailure: wrapperspb.UInt32(3), MaxEjectionPercent: wrapperspb.UInt32(100),
	})
	h := host(c, 1)
	c.ReportOutcome(h, ConnectFailed)
	c.ReportOutcome(h, TimedOut)
	c.ReportOutcome(h, Connected) // starts again
	c.ReportOutcome(h, ConnectFailed)
	c.ReportOutcome(h, ConnectFailed)
	if h.Ejected() {
		t.Fatal("ejected: local origin failures counted as 5xx, or not started again")
	}
	c.ReportOutcome(h, ConnectFailed)
	if !h.Ejected() || stat(t, st, "ejections_enforced_consecutive_local_origin_failure") != 1 {
		t.Fatal("not ejected after three local origin failures in a row")
	}
}

// TestSuccessRate: with enough hosts with enough requests in an interval, a
// host whose success rate is more than success_rate_stdev_factor/1000
// standard deviations below the mean is ejected.
func TestSuccessRate(t *testing.T) {
	c, st := outlierCluster(t, 5, &clusterv3.OutlierDetection{
		Interval: durationpb.New(50 * time.Millisecond), SuccessRateRequestVolume: wrapperspb.UInt32(20),
		SuccessRateStdevFactor: wrapperspb.UInt32(1000), MaxEjectionPercent: wrapperspb.UInt32(100),
		Consecutive_5Xx: wrapperspb.UInt32(1000),
	})
	// A round of reports may straddle a tick; then the next round counts.
	rounds := 0
	waitUntil(t, "the 50 % host ejected", func() bool {
		if rounds++; rounds%10 == 1 {
			for i := 1; i <= 5; i++ {
				for n := range 20 {
					status := 200
					if i == 3 && n%2 == 0 {
						status = 503 // 50 %
					}
					c.ReportStatus(host(c, i), status)
				}
			}
		}
		return host(c, 3).Ejected()
	})
	for _, i := range []int{1, 2, 4, 5} {
		if host(c, i).Ejected() {
			t.Errorf("host %d ejected", i)
		}
	}
	if v := stat(t, st, "ejections_enforced_success_rate"); v != 1 {
		t.Errorf("ejections_enforced_success_rate = %d", v)
	}
}

// TestFailurePercentage: a host failing at least failure_percentage_threshold
// percent of enough requests is ejected when enforcing_failure_percentage
// says so.
func TestFailurePercentage(t *testing.T) {
	c, st := outlierCluster(t, 2, &clusterv3.OutlierDetection{
		Interval: durationpb.New(50 * time.Millisecond), EnforcingSuccessRate: wrapperspb.UInt32(0),
		EnforcingFailurePercentage: wrapperspb.UInt32(100), FailurePercentageMinimumHosts: wrapperspb.UInt32(2),
		FailurePercentageRequestVolume: wrapperspb.UInt32(10), FailurePercentageThreshold: wrapperspb.UInt32(50),
		MaxEjectionPercent: wrapperspb.UInt32(100), Consecutive_5Xx: wrapperspb.UInt32(1000),
	})
	rounds := 0
	waitUntil(t, "the failing host ejected", func() bool {
		if rounds++; rounds%10 == 1 { // a round may straddle a tick
			for range 10 {
				c.ReportStatus(host(c, 1), 200)
				c.ReportStatus(host(c, 2), 200)
				c.ReportStatus(host(c, 2), 500) // 50 %
			}
		}
		return host(c, 2).Ejected()
	})
	if host(c, 1).Ejected() || stat(t, st, "ejections_enforced_failure_percentage") != 1 {
		t.Fatalf("host 1 ejected %v; enforced %d", host(c, 1).Ejected(), stat(t, st, "ejections_enforced_failure_percentage"))
	}
}

// TestPanicThreshold: with fewer healthy hosts than healthy_panic_threshold
// percent, the balancer uses every host, as Envoy's does, and counts
// lb_healthy_panic; a threshold of 0 turns panic off.
func TestPanicThreshold(t *testing.T) {
	for _, threshold := range []float64{50, 0} {
		st := stats.NewStore()
		c := newCluster(Static(&Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, PanicThreshold: threshold,
			Endpoints: []Endpoint{ep("127.0.0.1:1", 1, 0, 0), ep("127.0.0.1:2", 1, 0, 0), ep("127.0.0.1:3", 1, 0, 0)}}), st)
		c.mu.Lock()
		host(c, 1).outlier.ejected.Store(true)
		c.rebuildLocked()
		c.mu.Unlock()
		if got := countPicks(c, 20); got["127.0.0.1:1"] != 0 {
			t.Fatalf("threshold %v, 2 of 3 healthy: picks %v", threshold, got)
		}
		c.mu.Lock()
		host(c, 2).outlier.ejected.Store(true)
		c.rebuildLocked()
		c.mu.Unlock()
		got := countPicks(c, 30)
		panics, _ := st.Value("cluster.c.lb_healthy_panic")
		switch {
		case threshold == 50 && (got["127.0.0.1:1"] != 10 || panics != 30):
			t.Errorf("1 of 3 healthy, threshold 50: picks %v, lb_healthy_panic %d; want all three", got, panics)
		case threshold == 0 && (got["127.0.0.1:3"] != 30 || panics != 0):
			t.Errorf("1 of 3 healthy, threshold 0: picks %v, lb_healthy_panic %d; want the healthy one", got, panics)
		}
	}
}

// TestOutlierStopsWithCluster: a removed cluster's interval timer does
// nothing more.
func TestOutlierStopsWithCluster(t *testing.T) {
	oc, err := newOutlierConfig(&clusterv3.OutlierDetection{Interval: durationpb.New(10 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(stats.NewStore())
	m.Set([]Assignment{Static(&Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Outlier: oc,
		Endpoints: []Endpoint{ep("127.0.0.1:1", 1, 0, 0)}})})
	d := m.Get("c").outlier.Load()
	m.Set(nil)
	if d.timer.Stop() {
		t.Fatal("the interval timer was still running after the cluster was removed")
	}
}
