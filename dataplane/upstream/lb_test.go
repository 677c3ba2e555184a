package upstream

import (
	"fmt"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/skiffproxy/skiff/internal/stats"
)

const (
	healthy   = corev3.HealthStatus_HEALTHY
	unhealthy = corev3.HealthStatus_UNHEALTHY
	degraded  = corev3.HealthStatus_DEGRADED
)

// level builds n endpoints of priority prio on ports from port on, health
// given per endpoint (cycled).
func levelEndpoints(prio uint32, port int, health ...corev3.HealthStatus) []Endpoint {
	var eps []Endpoint
	for i, h := range health {
		eps = append(eps, ep(fmt.Sprintf("127.0.0.1:%d", port+i), 1, prio, h))
	}
	return eps
}

// loads renders a balancer's per-level loads as "h/d h/d ...", panicking
// levels marked with a !.
func loads(b *balancer) string {
	var parts []string
	for _, l := range b.levels {
		p := fmt.Sprintf("%d/%d", l.healthyLoad, l.degradedLoad)
		if l.panic {
			p += "!"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

// TestPriorityLoad: the share of each priority level, healthy and degraded,
// as Envoy's LoadBalancerBase computes it (its test cases' figures): a
// level's availability is its healthy (degraded) hosts over its hosts times
// the overprovisioning factor, at most 100 %; the levels in order take their
// share, degraded hosts what healthy ones cannot; panic when the levels
// together fall short and a level has fewer available hosts than the
// threshold, and when all are in panic the levels share by host count.
func TestPriorityLoad(t *testing.T) {
	for _, tc := range []struct {
		name     string
		eps      [][]Endpoint
		policy   LoadPolicy
		panicPct float64
		want     string
	}{
		{"all healthy", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy), levelEndpoints(1, 10, healthy)}, LoadPolicy{}, 50, "100/0 0/0"},
		{"4 of 5: still all (1.4 × 80 %)", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy, healthy, healthy, unhealthy), levelEndpoints(1, 10, healthy)}, LoadPolicy{}, 50, "100/0 0/0"},
		{"3 of 5 spill 16 %", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy, healthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy)}, LoadPolicy{}, 50, "84/0 16/0"},
		{"overprovisioning 100", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy, healthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy)}, LoadPolicy{Overprovisioning: 100}, 50, "60/0 40/0"},
		{"three levels", [][]Endpoint{levelEndpoints(0, 1, healthy, unhealthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy, unhealthy), levelEndpoints(2, 20, healthy)}, LoadPolicy{}, 0, "35/0 65/0 0/0"},
		{"degraded take the rest", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy, degraded, degraded, unhealthy)}, LoadPolicy{}, 50, "56/44"},
		{"degraded unused", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy, healthy, healthy, degraded)}, LoadPolicy{}, 50, "100/0"},
		{"healthy below before degraded", [][]Endpoint{levelEndpoints(0, 1, healthy, degraded), levelEndpoints(1, 10, healthy)}, LoadPolicy{}, 50, "70/0 30/0"},
		{"degraded next level", [][]Endpoint{levelEndpoints(0, 1, healthy, unhealthy, unhealthy, unhealthy), levelEndpoints(1, 10, degraded)}, LoadPolicy{}, 50, "35/0 0/65"},
		{"two levels fill", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy, unhealthy, unhealthy, unhealthy)}, LoadPolicy{}, 0, "70/0 30/0"},
		{"shortfall scaled up", [][]Endpoint{levelEndpoints(0, 1, healthy, unhealthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy, unhealthy, unhealthy, unhealthy)}, LoadPolicy{}, 0, "50/0 50/0"},
		{"healthy of every level before degraded", [][]Endpoint{levelEndpoints(0, 1, healthy, healthy, degraded, degraded, unhealthy), levelEndpoints(1, 10, healthy)}, LoadPolicy{}, 50, "56/0 44/0"},
		{"one level in panic", [][]Endpoint{levelEndpoints(0, 1, healthy, unhealthy, unhealthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy, healthy, unhealthy, unhealthy)}, LoadPolicy{}, 50, "29/0! 71/0"},
		{"degraded share in panic", [][]Endpoint{levelEndpoints(0, 1, degraded, unhealthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy, unhealthy, unhealthy)}, LoadPolicy{}, 30, "0/43! 57/0"},
		{"total panic by hosts", [][]Endpoint{levelEndpoints(0, 1, healthy, unhealthy, unhealthy, unhealthy), levelEndpoints(1, 10, unhealthy, unhealthy)}, LoadPolicy{}, 50, "67/0! 33/0!"},
		{"none healthy, no panic", [][]Endpoint{levelEndpoints(0, 1, unhealthy), levelEndpoints(1, 10, unhealthy)}, LoadPolicy{}, 0, "100/0 0/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var all []Endpoint
			for _, l := range tc.eps {
				all = append(all, l...)
			}
			c := newCluster(Assignment{Config: &Config{Name: "c", StatName: "c", LBPolicy: clusterv3.Cluster_ROUND_ROBIN, PanicThreshold: tc.panicPct},
				Endpoints: all, From: &all, Policy: tc.policy}, stats.NewStore())
			if got := loads(c.lb.Load()); got != tc.want {
				t.Errorf("loads %s, want %s", got, tc.want)
			}
			if strings.Contains(tc.want, "!") {
				// A level in panic gives its shares to all its hosts.
				if got := countPicks(c, 200); got["<nil>"] != 0 {
					t.Errorf("picks %v: none may fail", got)
				}
			}
		})
	}
}

// TestPriorityLoadPicks: picks follow the loads, healthy and degraded hosts
// each taking their share; a hash picks its level by hash mod 100, as
// Envoy's choosePriority.
func TestPriorityLoadPicks(t *testing.T) {
	c := newTestCluster(levelEndpoints(0, 1, healthy, healthy, degraded, degraded, unhealthy), clusterv3.Cluster_ROUND_ROBIN)
	got := countPicks(c, 10000)
	h, d := got["127.0.0.1:1"]+got["127.0.0.1:2"], got["127.0.0.1:3"]+got["127.0.0.1:4"]
	if h < 5400 || h > 5800 || d < 4200 || d > 4600 || got["127.0.0.1:5"] != 0 {
		t.Errorf("picks %v: want 56 %% healthy, 44 %% degraded hosts of priority 0", got)
	}
	if v := c.stats.membershipDegraded.Value(); v != 2 {
		t.Errorf("membership_degraded = %d, want 2", v)
	}
	if f := strings.Join(c.Hosts()[2].HealthFlags(), ","); f != "degraded_eds_health" {
		t.Errorf("a degraded host's flags %q", f)
	}

	hc := newCluster(Static(&Config{Name: "c", StatName: "c", LBPolicy: clusterv3.Cluster_RING_HASH,
		Endpoints: append(levelEndpoints(0, 1, healthy, healthy, healthy, unhealthy, unhealthy), levelEndpoints(1, 10, healthy)...),
		Hashing:   Hashing{MinRingSize: defaultMinRingSize, MaxRingSize: maxRingSize}}), stats.NewStore())
	for _, tc := range []struct {
		hash uint64
		port uint16
	}{{83, 0}, {84, 10}, {199, 10}, {200, 0}} {
		h := hc.PickHash(tc.hash, 0)
		if h == nil || (tc.port == 10) != (h.Addr.Port() == 10) {
			t.Errorf("hash %d picked %v, want priority %d", tc.hash, h, map[bool]int{true: 1}[tc.port == 10])
		}
	}
}

// TestWeightedPriorityHealth: with weighted_priority_health a level's
// availability counts weights: an unhealthy host of weight 3 beside a
// healthy one of weight 1 leaves 1.4 × 1/4 = 35 %, not 70 %.
func TestWeightedPriorityHealth(t *testing.T) {
	eps := []Endpoint{ep("127.0.0.1:1", 3, 0, unhealthy), ep("127.0.0.1:2", 1, 0, healthy), ep("127.0.0.1:10", 1, 1, healthy)}
	for _, tc := range []struct {
		weighted bool
		want     string
	}{{false, "70/0 30/0"}, {true, "35/0 65/0"}} {
		c := newCluster(Assignment{Config: &Config{Name: "c", StatName: "c"}, Endpoints: eps, From: &eps,
			Policy: LoadPolicy{Overprovisioning: 140, WeightedPriorityHealth: tc.weighted}}, stats.NewStore())
		if got := loads(c.lb.Load()); got != tc.want {
			t.Errorf("weighted_priority_health %v: loads %s, want %s", tc.weighted, got, tc.want)
		}
	}
}
