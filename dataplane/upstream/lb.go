package upstream

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// LoadPolicy is a load assignment's policy (ClusterLoadAssignment.policy):
// how its priority levels share the traffic.
type LoadPolicy struct {
	// Overprovisioning is overprovisioning_factor in hundredths (Envoy's
	// default 140: a level with 1/1.4 of its hosts available takes all the
	// traffic it would take with all of them).
	Overprovisioning uint32
	// WeightedPriorityHealth: a level's availability counts host weights,
	// not hosts (weighted_priority_health).
	WeightedPriorityHealth bool
}

// DefaultLoadPolicy is the policy of a load assignment without one.
var DefaultLoadPolicy = LoadPolicy{Overprovisioning: 140}

// PolicyOf returns cla's policy, defaults filled in.
func PolicyOf(cla *endpointv3.ClusterLoadAssignment) LoadPolicy {
	p := DefaultLoadPolicy
	if pb := cla.GetPolicy(); pb != nil {
		if f := pb.GetOverprovisioningFactor(); f != nil {
			p.Overprovisioning = f.GetValue()
		}
		p.WeightedPriorityHealth = pb.GetWeightedPriorityHealth()
	}
	return p
}

// hostState is how the load balancer sees a host, as Envoy's coarse health:
// unhealthy if anything failed it, else degraded if the control plane or
// its health checks say so, else healthy.
type hostState uint8

const (
	stateHealthy hostState = iota
	stateDegraded
	stateUnhealthy
)

func (h *Host) state() hostState {
	if h.Ejected() || h.hcFailed.Load() {
		return stateUnhealthy
	}
	switch h.Health() {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
	case corev3.HealthStatus_DEGRADED:
		return stateDegraded
	default:
		return stateUnhealthy
	}
	if h.hcDegraded.Load() {
		return stateDegraded
	}
	return stateHealthy
}

// balancer is an immutable snapshot of how a cluster picks its hosts, as
// Envoy's load balancer does: the traffic is shared between the priority
// levels by their availability (Envoy's priority load: each level takes
// what its healthy hosts, times the overprovisioning factor, can carry,
// the levels after it the rest; degraded hosts only what healthy ones of
// every level cannot), and within a level it goes to its healthy hosts, or
// its degraded ones, or, in panic, to all of them.
type balancer struct {
	all               []*Host
	healthy, degraded int
	levels            []level // the priorities that have hosts, highest first
	hashed            bool    // RING_HASH or MAGLEV: picks follow a request's hash
	// only is the host set every pick goes to, when one takes all the load
	// (the common case: one level, no host degraded), with onlyPanic.
	only      *hostSet
	onlyPanic bool
}

// level is one priority level: its share of the picks in percent, healthy
// and degraded, and the host sets they go to.
type level struct {
	healthyLoad, degradedLoad uint32
	healthy, degraded         *hostSet
	panic                     bool
}

// balancerConfig is what a balancer is built with.
type balancerConfig struct {
	policy   clusterv3.Cluster_LbPolicy
	panicPct float64 // healthy_panic_threshold
	choices  int     // LEAST_REQUEST's choice_count
	locality bool    // locality weighted load balancing
	hashing  *Hashing
	load     LoadPolicy
}

// newBalancer builds the balancer over all, as Envoy's LoadBalancerBase
// computes its per-priority state: each level's availability (healthy and
// degraded hosts over its hosts, times the overprovisioning factor, at most
// 100), the loads (the levels in order take their availability's share of
// what is left; what no level takes goes to the first level with healthy
// hosts), and panic (a level whose healthy and degraded hosts are fewer than
// healthy_panic_threshold percent of its hosts, when the levels together
// are not fully available, uses all its hosts; when every level is in panic,
// the levels share the load by their number of hosts).
func newBalancer(cfg *balancerConfig, all []*Host) *balancer {
	b := &balancer{all: all, hashed: cfg.policy == clusterv3.Cluster_RING_HASH || cfg.policy == clusterv3.Cluster_MAGLEV}
	type levelHosts struct {
		prio                   uint32
		all, healthy, degraded []*Host
		n                      int // hosts not excluded
		// The availability's terms: host counts, or weights with
		// weighted_priority_health.
		total, healthyW, degradedW uint64
	}
	var lv []*levelHosts
	byPrio := map[uint32]*levelHosts{}
	for _, h := range all {
		p := h.Priority()
		l := byPrio[p]
		if l == nil {
			l = &levelHosts{prio: p}
			byPrio[p] = l
			lv = append(lv, l)
		}
		l.all = append(l.all, h)
		if h.hcExcluded.Load() {
			continue // excluded: not counted in the level's availability
		}
		l.n++
		w := uint64(1)
		if cfg.load.WeightedPriorityHealth {
			w = uint64(h.Weight())
		}
		l.total += w
		switch h.state() {
		case stateHealthy:
			b.healthy++
			l.healthy = append(l.healthy, h)
			l.healthyW += w
		case stateDegraded:
			b.degraded++
			l.degraded = append(l.degraded, h)
			l.degradedW += w
		}
	}
	// Highest priority (lowest number) first.
	for i := 1; i < len(lv); i++ {
		for j := i; j > 0 && lv[j].prio < lv[j-1].prio; j-- {
			lv[j], lv[j-1] = lv[j-1], lv[j]
		}
	}
	if len(lv) == 0 {
		b.only = &hostSet{policy: cfg.policy}
		return b
	}
	b.levels = make([]level, len(lv))
	over := uint64(cfg.load.Overprovisioning)
	health := make([]uint32, len(lv))
	degraded := make([]uint32, len(lv))
	var sumH, sumD uint32
	for i, l := range lv {
		if l.total > 0 {
			health[i] = uint32(min(100, over*l.healthyW/l.total))
			degraded[i] = uint32(min(100, over*l.degradedW/l.total))
		}
		sumH += health[i]
		sumD += degraded[i]
	}
	avail := min(sumH+sumD, 100)
	if avail > 0 {
		left, firstH := distribute(b.levels, health, 100, avail, func(l *level) *uint32 { return &l.healthyLoad })
		left, firstD := distribute(b.levels, degraded, left, avail, func(l *level) *uint32 { return &l.degradedLoad })
		switch {
		case left == 0:
		case firstH >= 0:
			b.levels[firstH].healthyLoad += left
		default:
			b.levels[firstD].degradedLoad += left
		}
	} else if cfg.panicPct == 0 {
		b.levels[0].healthyLoad = 100 // no host to pick: none healthy
	}
	allPanic := true
	for i, l := range lv {
		// Envoy's isHostSetInPanic counts hosts, whatever their weights.
		in := float64(len(l.healthy)+len(l.degraded)) * 100
		b.levels[i].panic = cfg.panicPct > 0 && avail < 100 && (l.n == 0 || in < cfg.panicPct*float64(l.n))
		allPanic = allPanic && b.levels[i].panic
	}
	if allPanic {
		// Envoy's recalculateLoadInTotalPanic: by the levels' host counts.
		left := uint32(100)
		for i, l := range lv {
			load := uint32(100 * len(l.all) / len(all))
			b.levels[i].healthyLoad, b.levels[i].degradedLoad = load, 0
			left -= load
		}
		b.levels[0].healthyLoad += left
	}
	for i, l := range lv {
		lb := &b.levels[i]
		switch {
		case lb.panic: // all the level's hosts, for either share
			lb.healthy = newHostSet(cfg, l.all, l.all, nil)
			lb.degraded = lb.healthy
		default:
			if lb.healthyLoad > 0 {
				lb.healthy = newHostSet(cfg, l.healthy, l.all, (*Host).Healthy)
			}
			if lb.degradedLoad > 0 {
				lb.degraded = newHostSet(cfg, l.degraded, l.all, (*Host).Degraded)
			}
		}
	}
	for i := range b.levels {
		lb := &b.levels[i]
		switch {
		case lb.healthyLoad == 100:
			b.only, b.onlyPanic = lb.healthy, lb.panic
		case lb.degradedLoad == 100:
			b.only, b.onlyPanic = lb.degraded, lb.panic
		}
	}
	return b
}

// distribute is Envoy's distributeLoad: each level in order takes its
// availability's share of the total availability, from what is left of
// total. It returns what is left and the first level with any
// availability (-1 for none).
func distribute(levels []level, avail []uint32, total, sum uint32, load func(*level) *uint32) (left uint32, first int) {
	first = -1
	for i := range levels {
		if first < 0 && avail[i] > 0 {
			first = i
		}
		d := min(total, avail[i]*100/sum)
		*load(&levels[i]) = d
		total -= d
	}
	return total, first
}

// choose picks the host set for a pick whose random value (or request
// hash) is r, as Envoy's choosePriority: r mod 100 falls in one level's
// healthy load, else in one's degraded load.
func (b *balancer) choose(r uint64) (*hostSet, bool) {
	if b.only != nil {
		return b.only, b.onlyPanic
	}
	x := uint32(r % 100)
	for i := range b.levels {
		l := &b.levels[i]
		if x < l.healthyLoad {
			return l.healthy, l.panic
		}
		x -= l.healthyLoad
	}
	for i := range b.levels {
		l := &b.levels[i]
		if x < l.degradedLoad {
			return l.degraded, l.panic
		}
		x -= l.degradedLoad
	}
	return nil, false
}

// pick chooses a host, and says whether it came from a level in panic.
func (b *balancer) pick() (*Host, bool) {
	var s *hostSet
	var panic bool
	if b.only != nil {
		s, panic = b.only, b.onlyPanic
	} else {
		s, panic = b.choose(rand.Uint64())
	}
	if s == nil {
		return nil, false
	}
	return s.pick(), panic
}

// pickHash chooses a host for a request's hash (RING_HASH, MAGLEV): the
// hash picks the level, as in Envoy, and the level's ring or table the host.
func (b *balancer) pickHash(hash uint64, attempt uint32) (*Host, bool) {
	s, panic := b.choose(hash)
	if s == nil || s.hashed == nil {
		return nil, false
	}
	return s.hashed.pick(hash, attempt), panic
}

// hostSet picks among a set of hosts of one priority level (its healthy
// hosts, its degraded ones, or all of them) by the cluster's policy.
type hostSet struct {
	policy   clusterv3.Cluster_LbPolicy
	pickable []*Host
	hashed   hashPicker // RING_HASH's ring or MAGLEV's table over pickable
	weighted bool       // weights differ: use smooth weighted round robin
	choices  int        // LEAST_REQUEST's choice_count

	// With locality weighted load balancing, a set per locality of
	// pickable, picked by smooth weighted round robin on their effective
	// weights (see byLocality); nil otherwise.
	localities []*hostSet
	lweights   []int64
	lcurrent   []int64 // under mu
	ltotal     int64

	next atomic.Uint64 // round-robin cursor (equal weights)

	mu      sync.Mutex // smooth weighted round robin state
	current []int64
	total   int64
}

// newHostSet makes the set over pickable, the hosts of a level (levelHosts)
// that in says belong to it (nil: a level in panic, all of them).
func newHostSet(cfg *balancerConfig, pickable, levelHosts []*Host, in func(*Host) bool) *hostSet {
	s := &hostSet{policy: cfg.policy, pickable: pickable, choices: cfg.choices}
	if cfg.locality && in != nil && cfg.policy != clusterv3.Cluster_RING_HASH && cfg.policy != clusterv3.Cluster_MAGLEV {
		s.byLocality(levelHosts, in, cfg.load.Overprovisioning)
	}
	switch cfg.policy {
	case clusterv3.Cluster_RING_HASH:
		s.hashed = newRing(pickable, cfg.hashing)
	case clusterv3.Cluster_MAGLEV:
		s.hashed = newMaglev(pickable, cfg.hashing)
	}
	s.weigh()
	return s
}

// weigh prepares the round robin over b.pickable.
func (b *hostSet) weigh() {
	for _, h := range b.pickable {
		if h.Weight() != b.pickable[0].Weight() {
			b.weighted = true
		}
		b.total += int64(h.Weight())
	}
	b.current = make([]int64, len(b.pickable))
}

func (b *hostSet) pick() *Host {
	if b.localities != nil {
		return b.pickLocality().pick()
	}
	n := len(b.pickable)
	switch {
	case n == 0:
		return nil
	case n == 1:
		return b.pickable[0]
	case b.policy == clusterv3.Cluster_RANDOM:
		return b.pickRandom()
	case b.policy == clusterv3.Cluster_LEAST_REQUEST:
		return b.pickLeastRequest()
	case b.hashed != nil: // a request without a hash goes to a random place
		return b.hashed.pick(rand.Uint64(), 0)
	case !b.weighted:
		return b.pickable[(b.next.Add(1)-1)%uint64(n)]
	}
	// Smooth weighted round robin (as in nginx): every pick raises each host's
	// current weight by its weight and takes the largest, which then pays the
	// total back. Picks are spread evenly in proportion to the weights.
	b.mu.Lock()
	defer b.mu.Unlock()
	best := 0
	for i, h := range b.pickable {
		b.current[i] += int64(h.Weight())
		if b.current[i] > b.current[best] {
			best = i
		}
	}
	b.current[best] -= b.total
	return b.pickable[best]
}

// pickLeastRequest is Envoy's LEAST_REQUEST: with equal weights, the host
// with the fewest active requests of choice_count picked at random (power of
// two choices by default); with unequal weights, a weighted random pick by
// weight / (active requests + 1) (Envoy's active_request_bias of 1.0).
func (b *hostSet) pickLeastRequest() *Host {
	n := len(b.pickable)
	if !b.weighted {
		best := b.pickable[rand.IntN(n)]
		for range max(b.choices, 1) - 1 {
			if h := b.pickable[rand.IntN(n)]; h.RqActive.Load() < best.RqActive.Load() {
				best = h
			}
		}
		return best
	}
	total := 0.0
	for _, h := range b.pickable {
		total += float64(h.Weight()) / float64(h.RqActive.Load()+1)
	}
	r := rand.Float64() * total
	for _, h := range b.pickable {
		r -= float64(h.Weight()) / float64(h.RqActive.Load()+1)
		if r < 0 {
			return h
		}
	}
	return b.pickable[n-1]
}

func (b *hostSet) pickRandom() *Host {
	if !b.weighted {
		return b.pickable[rand.IntN(len(b.pickable))]
	}
	r := rand.Int64N(b.total)
	for _, h := range b.pickable {
		r -= int64(h.Weight())
		if r < 0 {
			return h
		}
	}
	return b.pickable[len(b.pickable)-1]
}
