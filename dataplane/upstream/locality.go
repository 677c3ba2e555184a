package upstream

// overprovisioning is Envoy's default overprovisioning factor (1.4, in
// hundredths): a locality with at least 1/1.4 of its hosts healthy takes its
// whole weight.
const overprovisioning = 140

// byLocality makes b pick a locality first and then a host of it, as
// Envoy's locality weighted load balancing (common_lb_config
// locality_weighted_lb_config): each locality of the picked priority level
// takes traffic in proportion to its load_balancing_weight times its
// availability, min(1, 1.4 × its healthy hosts / its hosts). Localities
// without a weight take none; if none has any, b stays as it is.
func (b *balancer) byLocality(all []*Host) {
	if len(b.pickable) == 0 {
		return
	}
	level := b.pickable[0].Priority()
	type group struct {
		hosts          []*Host // pickable (healthy) ones
		total, healthy int
		weight         uint32
	}
	var order []string
	groups := map[string]*group{}
	for _, h := range all {
		if h.Priority() != level {
			continue
		}
		g := groups[h.locality]
		if g == nil {
			g = &group{weight: h.localityWeight}
			groups[h.locality] = g
			order = append(order, h.locality)
		}
		g.total++
		if h.Healthy() {
			g.healthy++
			g.hosts = append(g.hosts, h)
		}
	}
	var localities []*balancer
	var weights []int64
	var total int64
	for _, name := range order {
		g := groups[name]
		if g.weight == 0 || g.healthy == 0 {
			continue
		}
		avail := min(int64(1000), int64(overprovisioning*10*g.healthy/g.total))
		w := int64(g.weight) * avail
		child := &balancer{all: g.hosts, healthy: g.healthy, policy: b.policy, pickable: g.hosts, choices: b.choices}
		child.weigh()
		localities = append(localities, child)
		weights = append(weights, w)
		total += w
	}
	if total == 0 {
		return
	}
	b.localities, b.lweights, b.ltotal = localities, weights, total
	b.lcurrent = make([]int64, len(localities))
}

// pickLocality is the smooth weighted round robin over the localities.
func (b *balancer) pickLocality() *balancer {
	if len(b.localities) == 1 {
		return b.localities[0]
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	best := 0
	for i, w := range b.lweights {
		b.lcurrent[i] += w
		if b.lcurrent[i] > b.lcurrent[best] {
			best = i
		}
	}
	b.lcurrent[best] -= b.ltotal
	return b.localities[best]
}
