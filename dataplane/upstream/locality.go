package upstream

// byLocality makes b pick a locality first and then a host of it, as
// Envoy's locality weighted load balancing (common_lb_config
// locality_weighted_lb_config): each locality of the level (whose hosts are
// levelHosts) takes traffic in proportion to its load_balancing_weight times
// its availability, min(1, overprovisioning × its hosts in the set (those in
// says are) / its hosts). Localities without a weight take none; if none has
// any, b stays as it is.
func (b *hostSet) byLocality(levelHosts []*Host, in func(*Host) bool, overprovisioning uint32) {
	if len(b.pickable) == 0 {
		return
	}
	type group struct {
		hosts          []*Host // pickable (healthy) ones
		total, healthy int
		weight         uint32
	}
	var order []string
	groups := map[string]*group{}
	for _, h := range levelHosts {
		g := groups[h.locality]
		if g == nil {
			g = &group{weight: h.localityWeight}
			groups[h.locality] = g
			order = append(order, h.locality)
		}
		g.total++
		if in(h) {
			g.healthy++
			g.hosts = append(g.hosts, h)
		}
	}
	var localities []*hostSet
	var weights []int64
	var total int64
	for _, name := range order {
		g := groups[name]
		if g.weight == 0 || g.healthy == 0 {
			continue
		}
		avail := min(int64(1000), int64(overprovisioning)*10*int64(g.healthy)/int64(g.total))
		w := int64(g.weight) * avail
		child := &hostSet{policy: b.policy, pickable: g.hosts, choices: b.choices}
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
func (b *hostSet) pickLocality() *hostSet {
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
