package upstream

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// withLoadBalancingPolicy returns pb with its load_balancing_policy (the
// typed load balancers Envoy now prefers to lb_policy) written as the
// lb_policy and *_lb_config fields it stands for, which the rest of
// NewConfig reads; pb itself is not changed. As in Envoy, the first policy
// of the list that skiff implements is the one used, and lb_policy is then
// ignored.
func withLoadBalancingPolicy(pb *clusterv3.Cluster) (*clusterv3.Cluster, error) {
	lbp := pb.GetLoadBalancingPolicy()
	if err := cfgerr.OnlyFields(lbp, "policies"); err != nil {
		return nil, cfgerr.Field("load_balancing_policy", err)
	}
	var names []string
	for i, p := range lbp.GetPolicies() {
		path := fmt.Sprintf("load_balancing_policy.policies[%d].typed_extension_config.typed_config", i)
		m, err := p.GetTypedExtensionConfig().GetTypedConfig().UnmarshalNew()
		if err != nil {
			names = append(names, p.GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl())
			continue // a type skiff does not know: the next one may do
		}
		if err := cfgerr.Validate(m); err != nil {
			return nil, cfgerr.Field(path, err)
		}
		out := proto.Clone(pb).(*clusterv3.Cluster)
		out.LoadBalancingPolicy = nil
		out.LbConfig = nil
		switch c := m.(type) {
		case *roundrobinv3.RoundRobin:
			err = cfgerr.OnlyFields(c)
			out.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
		case *randomv3.Random:
			err = cfgerr.OnlyFields(c)
			out.LbPolicy = clusterv3.Cluster_RANDOM
		case *leastrequestv3.LeastRequest:
			err = cfgerr.OnlyFields(c, "choice_count")
			out.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
			if c.ChoiceCount != nil {
				out.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{ChoiceCount: c.GetChoiceCount()}}
			}
		case *ringhashv3.RingHash:
			err = cfgerr.OnlyFields(c, "hash_function", "minimum_ring_size", "maximum_ring_size", "use_hostname_for_hashing", "consistent_hashing_lb_config")
			out.LbPolicy = clusterv3.Cluster_RING_HASH
			rh := &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: c.GetMinimumRingSize(), MaximumRingSize: c.GetMaximumRingSize()}
			if c.GetHashFunction() == ringhashv3.RingHash_MURMUR_HASH_2 {
				rh.HashFunction = clusterv3.Cluster_RingHashLbConfig_MURMUR_HASH_2
			}
			out.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: rh}
			//lint:ignore SA1019 deprecated for consistent_hashing_lb_config, still honoured by Envoy
			useHostname := c.GetUseHostnameForHashing()
			err = consistentHashing(out, err, useHostname, c.GetConsistentHashingLbConfig().GetUseHostnameForHashing(), c.GetConsistentHashingLbConfig().GetHashBalanceFactor().GetValue())
		case *maglevv3.Maglev:
			err = cfgerr.OnlyFields(c, "table_size", "consistent_hashing_lb_config")
			out.LbPolicy = clusterv3.Cluster_MAGLEV
			if c.TableSize != nil {
				out.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: c.GetTableSize()}}
			}
			err = consistentHashing(out, err, false, c.GetConsistentHashingLbConfig().GetUseHostnameForHashing(), c.GetConsistentHashingLbConfig().GetHashBalanceFactor().GetValue())
		default:
			names = append(names, p.GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl())
			continue
		}
		if err != nil {
			return nil, cfgerr.Field(path, err)
		}
		return out, nil
	}
	return nil, cfgerr.Errorf("load_balancing_policy.policies", "none is supported by skiff (%v; round_robin, random, least_request, ring_hash and maglev are)", names)
}

// consistentHashing writes a typed policy's consistent hashing settings as
// common_lb_config's, unless err (the policy's own check) is already set.
func consistentHashing(out *clusterv3.Cluster, err error, useHostname, chUseHostname bool, balance uint32) error {
	if err != nil || (!useHostname && !chUseHostname && balance == 0) {
		return err
	}
	if out.CommonLbConfig == nil {
		out.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{}
	}
	out.CommonLbConfig.ConsistentHashingLbConfig = &clusterv3.Cluster_CommonLbConfig_ConsistentHashingLbConfig{
		UseHostnameForHashing: useHostname || chUseHostname,
	}
	if balance != 0 {
		return cfgerr.Errorf("consistent_hashing_lb_config.hash_balance_factor", "not supported by skiff")
	}
	return nil
}
