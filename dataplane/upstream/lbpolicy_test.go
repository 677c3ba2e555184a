package upstream

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/client_side_weighted_round_robin/v3"
)

// TestLoadBalancingPolicy: load_balancing_policy, Envoy's typed load
// balancers, picks the first policy skiff implements and configures it as
// the lb_policy fields would; the cluster's own resource is kept as given.
func TestLoadBalancingPolicy(t *testing.T) {
	policy := func(typ, fields string) string {
		return `{ typed_extension_config: { name: p, typed_config: { "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.` + typ + `` + fields + ` } } }`
	}
	wrr := policy("client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin", "")
	for _, tc := range []struct {
		name, policies string
		check          func(*Config) bool
		err            string
	}{
		{"maglev after an unsupported one", wrr + ", " + policy("maglev.v3.Maglev", ", table_size: 65537"),
			func(c *Config) bool { return c.LBPolicy == clusterv3.Cluster_MAGLEV && c.Hashing.TableSize == 65537 }, ""},
		{"least request", policy("least_request.v3.LeastRequest", ", choice_count: 3"),
			func(c *Config) bool { return c.LBPolicy == clusterv3.Cluster_LEAST_REQUEST && c.ChoiceCount == 3 }, ""},
		{"ring hash by hostname", policy("ring_hash.v3.RingHash", ", minimum_ring_size: 64, consistent_hashing_lb_config: { use_hostname_for_hashing: true }"),
			func(c *Config) bool {
				return c.LBPolicy == clusterv3.Cluster_RING_HASH && c.Hashing.MinRingSize == 64 && c.Hashing.UseHostname
			}, ""},
		{"random", policy("random.v3.Random", ""), func(c *Config) bool { return c.LBPolicy == clusterv3.Cluster_RANDOM }, ""},
		{"slow start refused", policy("round_robin.v3.RoundRobin", ", slow_start_config: { slow_start_window: 10s }"), nil,
			"load_balancing_policy.policies[0].typed_extension_config.typed_config.slow_start_config: not supported by skiff"},
		{"none supported", wrr, nil, "load_balancing_policy.policies: none is supported by skiff"},
	} {
		pb := clusterYAML(t, "lb_policy: RING_HASH\nload_balancing_policy: { policies: ["+tc.policies+"] }\n")
		cfg, err := NewConfig(pb)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err == "" && !tc.check(cfg):
			t.Errorf("%s: policy %v, hashing %+v, choices %d", tc.name, cfg.LBPolicy, cfg.Hashing, cfg.ChoiceCount)
		case tc.err == "" && cfg.Proto() != pb:
			t.Errorf("%s: Proto is not the cluster as given", tc.name)
		}
	}
}
