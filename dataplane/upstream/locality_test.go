package upstream

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

// TestLocalityWeighted: with locality_weighted_lb_config, localities share
// the picks by their load_balancing_weight times their availability
// (min(1, 1.4 × healthy / hosts)), a locality without a weight gets none,
// and hosts within a locality share its picks by the policy; without it,
// locality weights do not count.
func TestLocalityWeighted(t *testing.T) {
	pb := clusterYAML(t, `
common_lb_config: { locality_weighted_lb_config: {} }
`)
	pb.LoadAssignment = nil
	y := `
cluster_name: c
endpoints:
- locality: { zone: a }
  load_balancing_weight: 1
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } }
  - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 2 } } }
- locality: { zone: b }
  load_balancing_weight: 3
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 3 } } }
- locality: { zone: c }
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 4 } } }
`
	eps := endpointsYAML(t, y)
	cfg, err := NewConfig(pb)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.LocalityWeighted {
		t.Fatal("locality_weighted_lb_config not read")
	}
	c := newCluster(Assignment{Config: cfg, Endpoints: eps, From: eps}, stats.NewStore())
	got := countPicks(c, 400)
	if got["127.0.0.1:1"] != 50 || got["127.0.0.1:2"] != 50 || got["127.0.0.1:3"] != 300 || got["127.0.0.1:4"] != 0 {
		t.Errorf("picks %v: want zone a 100 (50 each), zone b 300, zone c (no weight) none", got)
	}

	// Zone a with one host of two healthy: availability 0.7, weight 0.7.
	eps[1].Health = corev3.HealthStatus_UNHEALTHY
	c.SetEndpoints(eps)
	got = countPicks(c, 3700)
	if got["127.0.0.1:1"] != 700 || got["127.0.0.1:3"] != 3000 {
		t.Errorf("picks %v: want 700 for zone a's healthy host, 3000 for zone b", got)
	}

	// Without the config, locality weights are ignored: round robin over all.
	plain := newTestCluster(eps, clusterv3.Cluster_ROUND_ROBIN)
	eps[1].Health = corev3.HealthStatus_HEALTHY
	plain.SetEndpoints(eps)
	got = countPicks(plain, 400)
	for _, a := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"} {
		if got[a] != 100 {
			t.Errorf("without locality weighting: %v, want 100 each", got)
			break
		}
	}
}

func endpointsYAML(t *testing.T, y string) []Endpoint {
	t.Helper()
	var cla endpointv3.ClusterLoadAssignment
	if err := protoyaml.Unmarshal([]byte(y), &cla); err != nil {
		t.Fatal(err)
	}
	eps, err := Endpoints(&cla)
	if err != nil {
		t.Fatal(err)
	}
	return eps
}
