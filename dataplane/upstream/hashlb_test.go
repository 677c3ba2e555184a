package upstream

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

func hashCluster(policy clusterv3.Cluster_LbPolicy, weights ...uint32) *Cluster {
	var eps []Endpoint
	for i, w := range weights {
		eps = append(eps, ep(fmt.Sprintf("127.0.0.1:%d", i+1), w, 0, 0))
	}
	cfg := &Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, LBPolicy: policy, Endpoints: eps,
		Hashing: Hashing{MinRingSize: defaultMinRingSize, MaxRingSize: maxRingSize, TableSize: defaultMaglevTable}}
	return newCluster(Static(cfg), stats.NewStore())
}

// spread picks a host for n random hashes, keeping the picks.
func spread(c *Cluster, keys []uint64) (map[uint64]string, map[string]int) {
	picks, counts := map[uint64]string{}, map[string]int{}
	for _, k := range keys {
		h := c.PickHash(k, 0).Addr.String()
		picks[k] = h
		counts[h]++
	}
	return picks, counts
}

// TestConsistentHashing: RING_HASH and MAGLEV send a hash to the same host
// every time, spread hashes over the hosts by weight, and when a host goes
// move mostly the hashes that were on it.
func TestConsistentHashing(t *testing.T) {
	keys := make([]uint64, 20000)
	for i := range keys {
		keys[i] = rand.Uint64()
	}
	for _, policy := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV} {
		t.Run(policy.String(), func(t *testing.T) {
			c := hashCluster(policy, 1, 1, 1, 1)
			if !c.HashBased() {
				t.Fatal("not hash based")
			}
			before, counts := spread(c, keys)
			again, _ := spread(c, keys)
			for _, k := range keys {
				if before[k] != again[k] {
					t.Fatalf("hash %x went to %s, then to %s", k, before[k], again[k])
				}
			}
			for h, n := range counts {
				if n < 4000 || n > 6000 { // a quarter each, give or take
					t.Errorf("%s got %d of 20000", h, n)
				}
			}
			// 127.0.0.1:4 goes.
			c.SetEndpoints([]Endpoint{ep("127.0.0.1:1", 1, 0, 0), ep("127.0.0.1:2", 1, 0, 0), ep("127.0.0.1:3", 1, 0, 0)})
			after, _ := spread(c, keys)
			stayed, others := 0, 0
			for _, k := range keys {
				if before[k] != "127.0.0.1:4" {
					others++
					if after[k] == before[k] {
						stayed++
					}
				}
			}
			// Maglev moves a few. Envoy's ring is scaled to min_ring_size
			// again for three hosts, which gives each more hashes (342,
			// not 256), and the new ones take some.
			if want := others * 85 / 100; stayed < want {
				t.Errorf("%d of %d hashes on the hosts that stayed kept their host, want at least %d", stayed, others, want)
			}
			weighted := hashCluster(policy, 1, 3)
			_, counts = spread(weighted, keys)
			if n := counts["127.0.0.1:2"]; n < 13500 || n > 16500 {
				t.Errorf("weights 1 and 3: the weight-3 host got %d of 20000, want about 15000", n)
			}
		})
	}
}

// TestRingSize: Envoy's ring: the least weighted host gets a whole number of
// hashes, min_ring_size in all at least.
func TestRingSize(t *testing.T) {
	c := hashCluster(clusterv3.Cluster_RING_HASH, 1, 1, 1)
	if n := len(c.lb.Load().only.hashed.(*ring).hashes); n != 1026 { // 342 each
		t.Fatalf("ring of %d, want 1026", n)
	}
	c = hashCluster(clusterv3.Cluster_MAGLEV, 1, 2)
	m := c.lb.Load().only.hashed.(*maglev)
	n := 0
	for _, h := range m.table {
		if h.Addr.Port() == 2 {
			n++
		}
	}
	if len(m.table) != defaultMaglevTable || n < defaultMaglevTable*2/3-2 || n > defaultMaglevTable*2/3+2 {
		t.Fatalf("maglev table of %d, %d slots for the weight-2 host", len(m.table), n)
	}
}

// TestHashRetryAttempt: another attempt for the same hash looks elsewhere.
func TestHashRetryAttempt(t *testing.T) {
	for _, policy := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV} {
		c := hashCluster(policy, 1, 1, 1, 1)
		moved := 0
		for i := range 1000 {
			k := uint64(i) * 0x9e3779b97f4a7c15
			if c.PickHash(k, 0) != c.PickHash(k, 1) {
				moved++
			}
		}
		if moved < 500 {
			t.Errorf("%v: a retry attempt went elsewhere for %d of 1000 hashes", policy, moved)
		}
	}
}

func TestHashingConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*clusterv3.Cluster)
		path   string
	}{
		{"ring config without RING_HASH", func(c *clusterv3.Cluster) {
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{}}
		}, "ring_hash_lb_config"},
		{"murmur", func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
				HashFunction: clusterv3.Cluster_RingHashLbConfig_MURMUR_HASH_2}}
		}, "ring_hash_lb_config.hash_function"},
		{"ring sizes the wrong way", func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
				MinimumRingSize: wrapperspb.UInt64(4096), MaximumRingSize: wrapperspb.UInt64(2048)}}
		}, "ring_hash_lb_config.minimum_ring_size"},
		{"maglev table not prime", func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
			c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(65536)}}
		}, "maglev_lb_config.table_size"},
		{"hash balance factor", func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{ConsistentHashingLbConfig: &clusterv3.Cluster_CommonLbConfig_ConsistentHashingLbConfig{
				HashBalanceFactor: wrapperspb.UInt32(150)}}
		}, "common_lb_config.consistent_hashing_lb_config.hash_balance_factor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &clusterv3.Cluster{Name: "c"}
			tc.mutate(c)
			_, err := NewConfig(c)
			if err == nil {
				t.Fatal("no error")
			}
			if got := cfgerr.PathOf(err); got != tc.path {
				t.Fatalf("error %q at %q, want %q", err, got, tc.path)
			}
		})
	}
	c, err := NewConfig(&clusterv3.Cluster{Name: "c", LbPolicy: clusterv3.Cluster_MAGLEV,
		LbConfig: &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(251)}}})
	if err != nil || c.Hashing.TableSize != 251 || c.Hashing.MinRingSize != defaultMinRingSize {
		t.Fatalf("MAGLEV with table 251: %+v, %v", c, err)
	}
}
