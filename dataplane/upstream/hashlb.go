package upstream

import (
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Hashing is the configuration of the consistent hashing load balancers.
type Hashing struct {
	// MinRingSize and MaxRingSize are ring_hash_lb_config's
	// minimum_ring_size and maximum_ring_size (RING_HASH).
	MinRingSize, MaxRingSize uint64
	// TableSize is maglev_lb_config.table_size (MAGLEV), a prime.
	TableSize uint64
	// UseHostname is consistent_hashing_lb_config.use_hostname_for_hashing:
	// hosts are placed by their hostname rather than their address.
	UseHostname bool
}

// Envoy's defaults and limits.
const (
	defaultMinRingSize    = 1024
	maxRingSize           = 8 * 1024 * 1024
	defaultMaglevTable    = 65537
	maxMaglevTableSize    = 5000011
	murmurHashUnsupported = "MURMUR_HASH_2 is not supported by skiff (XX_HASH is)"
)

// compile fills h from the cluster's ring_hash_lb_config,
// maglev_lb_config and common_lb_config.consistent_hashing_lb_config.
func (h *Hashing) compile(pb *clusterv3.Cluster) error {
	h.MinRingSize, h.MaxRingSize, h.TableSize = defaultMinRingSize, maxRingSize, defaultMaglevTable
	policy := pb.GetLbPolicy()
	if rh := pb.GetRingHashLbConfig(); rh != nil {
		if policy != clusterv3.Cluster_RING_HASH {
			return cfgerr.Errorf("ring_hash_lb_config", "only for lb_policy RING_HASH")
		}
		if err := cfgerr.OnlyFields(rh, "minimum_ring_size", "maximum_ring_size", "hash_function"); err != nil {
			return cfgerr.Field("ring_hash_lb_config", err)
		}
		if rh.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			return cfgerr.Errorf("ring_hash_lb_config.hash_function", murmurHashUnsupported)
		}
		if v := rh.GetMinimumRingSize(); v != nil {
			h.MinRingSize = v.GetValue()
		}
		if v := rh.GetMaximumRingSize(); v != nil {
			h.MaxRingSize = v.GetValue()
		}
		if h.MinRingSize > h.MaxRingSize {
			return cfgerr.Errorf("ring_hash_lb_config.minimum_ring_size", "%d is more than maximum_ring_size (%d)", h.MinRingSize, h.MaxRingSize)
		}
	}
	if mg := pb.GetMaglevLbConfig(); mg != nil {
		if policy != clusterv3.Cluster_MAGLEV {
			return cfgerr.Errorf("maglev_lb_config", "only for lb_policy MAGLEV")
		}
		if err := cfgerr.OnlyFields(mg, "table_size"); err != nil {
			return cfgerr.Field("maglev_lb_config", err)
		}
		if v := mg.GetTableSize(); v != nil {
			h.TableSize = v.GetValue()
			if h.TableSize > maxMaglevTableSize || !isPrime(h.TableSize) {
				return cfgerr.Errorf("maglev_lb_config.table_size", "%d is not a prime up to %d", h.TableSize, maxMaglevTableSize)
			}
		}
	}
	if ch := pb.GetCommonLbConfig().GetConsistentHashingLbConfig(); ch != nil {
		if err := cfgerr.OnlyFields(ch, "use_hostname_for_hashing"); err != nil {
			return cfgerr.Field("common_lb_config.consistent_hashing_lb_config", err)
		}
		h.UseHostname = ch.GetUseHostnameForHashing()
	}
	return nil
}

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// hashPicker is a consistent hash load balancer's lookup structure over a
// set of hosts: pick maps a request's hash to a host; attempt > 0 asks for
// another host for a retry (Envoy's host selection attempts).
type hashPicker interface {
	pick(hash uint64, attempt uint32) *Host
}

// hashKey is what places h on the ring or in the table: its address as
// Envoy writes it ("10.0.0.1:80", "[::1]:80", a unix socket's path), or its
// hostname.
func hashKey(h *Host, useHostname bool) string {
	if name := h.Hostname(); useHostname && name != "" {
		return name
	}
	return h.String()
}

// normalizedWeights are the hosts' weights as fractions of their sum, and
// the smallest and largest of them.
func normalizedWeights(hosts []*Host) (w []float64, minW, maxW float64) {
	total := 0.0
	for _, h := range hosts {
		total += float64(max(h.Weight(), 1))
	}
	w = make([]float64, len(hosts))
	minW = math.Inf(1)
	for i, h := range hosts {
		w[i] = float64(max(h.Weight(), 1)) / total
		minW, maxW = min(minW, w[i]), max(maxW, w[i])
	}
	return w, minW, maxW
}

// ring is RING_HASH's ring (Envoy's RingHashLoadBalancer::Ring): each host
// has hashes of "<key>_<i>" on it in proportion to its weight, the least
// weighted at least min_ring_size/hosts of them; a request goes to the first
// host at or after its hash.
type ring struct {
	hashes []uint64
	hosts  []*Host
}

func newRing(hosts []*Host, cfg *Hashing) *ring {
	r := &ring{}
	if len(hosts) == 0 {
		return r
	}
	weights, minW, _ := normalizedWeights(hosts)
	// The least weighted host gets a whole number of hashes; the total is
	// capped at max_ring_size.
	scale := min(math.Ceil(minW*float64(cfg.MinRingSize))/minW, float64(cfg.MaxRingSize))
	size := int(math.Ceil(scale))
	type entry struct {
		hash uint64
		host *Host
	}
	entries := make([]entry, 0, size)
	current, target := 0.0, 0.0
	var buf []byte
	for i, h := range hosts {
		buf = append(append(buf[:0], hashKey(h, cfg.UseHostname)...), '_')
		prefix := len(buf)
		target += scale * weights[i]
		for n := uint64(0); current < target; n++ {
			buf = strconv.AppendUint(buf[:prefix], n, 10)
			entries = append(entries, entry{xxhash.Sum64(buf), h})
			current++
		}
	}
	slices.SortStableFunc(entries, func(a, b entry) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	r.hashes = make([]uint64, len(entries))
	r.hosts = make([]*Host, len(entries))
	for i, e := range entries {
		r.hashes[i], r.hosts[i] = e.hash, e.host
	}
	return r
}

func (r *ring) pick(hash uint64, attempt uint32) *Host {
	n := len(r.hashes)
	if n == 0 {
		return nil
	}
	i, _ := slices.BinarySearch(r.hashes, hash) // the first at or after hash
	if i == n {
		i = 0
	}
	if attempt > 0 { // a retry: as if the host were not on the ring
		i = (i + int(attempt)) % n
	}
	return r.hosts[i]
}

// maglev is MAGLEV's lookup table (Envoy's MaglevTable): each host fills
// table slots along its own permutation of them, offset and skip from
// hashes of its key, in turns weighted by its weight.
type maglev struct {
	table []*Host
}

func newMaglev(hosts []*Host, cfg *Hashing) *maglev {
	m := &maglev{}
	if len(hosts) == 0 {
		return m
	}
	size := cfg.TableSize
	weights, _, maxW := normalizedWeights(hosts)
	type build struct {
		offset, skip, next uint64
		weight, target     float64
	}
	bs := make([]build, len(hosts))
	seeded := xxhash.NewWithSeed(1)
	for i, h := range hosts {
		key := hashKey(h, cfg.UseHostname)
		seeded.ResetWithSeed(1)
		seeded.WriteString(key)
		bs[i] = build{offset: xxhash.Sum64String(key) % size, skip: seeded.Sum64()%(size-1) + 1, weight: weights[i]}
	}
	m.table = make([]*Host, size)
	filled := uint64(0)
	for iteration := 1.0; filled < size; iteration++ {
		for i := range bs {
			if filled == size {
				break
			}
			b := &bs[i]
			// A host of the largest weight takes a slot every turn, one of
			// a third of it every third turn.
			if iteration*b.weight < b.target {
				continue
			}
			b.target += maxW
			c := (b.offset + b.skip*b.next) % size
			for m.table[c] != nil {
				b.next++
				c = (b.offset + b.skip*b.next) % size
			}
			m.table[c] = hosts[i]
			b.next++
			filled++
		}
	}
	return m
}

func (m *maglev) pick(hash uint64, attempt uint32) *Host {
	if len(m.table) == 0 {
		return nil
	}
	if attempt > 0 {
		// A retry: Envoy flips many bits of the hash for another host.
		hash ^= ^uint64(0) - uint64(attempt) + 1
	}
	return m.table[hash%uint64(len(m.table))]
}
