package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	dnscommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/common/dns/v3"
	dnsclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dns/v3"
	caresv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/cares/v3"
	getaddrinfov3 "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/getaddrinfo/v3"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/skiffproxy/skiff/internal/backoff"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Envoy's defaults for DNS clusters.
const (
	DefaultDNSRefreshRate = 5 * time.Second
	// DefaultDNSQueryTimeout and DefaultDNSQueryTries are c-ares's, which
	// Envoy's default resolver is: a lookup gives up after their product.
	DefaultDNSQueryTimeout = 5 * time.Second
	DefaultDNSQueryTries   = 4
)

// DNSConfig is how a STRICT_DNS or LOGICAL_DNS cluster finds its hosts: each
// of its load_assignment's endpoints names a host to resolve, again and again.
type DNSConfig struct {
	// Logical is LOGICAL_DNS: one target, whose first address is the
	// cluster's one host. Otherwise (STRICT_DNS) every address of every
	// target is a host.
	Logical bool
	// Targets are the load_assignment's endpoints, in order.
	Targets []DNSTarget
	// Family is dns_lookup_family (AUTO: IPv6 if the name has any, else IPv4).
	Family clusterv3.Cluster_DnsLookupFamily
	// Refresh is dns_refresh_rate: how long a resolution stands.
	Refresh time.Duration
	// Jitter is dns_jitter: up to this much is added to each Refresh.
	Jitter time.Duration
	// Failure is dns_failure_refresh_rate: the backoff after a failed
	// resolution. Zero: Refresh.
	Failure backoff.Policy
	// RespectTTL is respect_dns_ttl: a resolution stands for the smallest
	// TTL of its answers instead of Refresh, but at least MinTTL
	// (dns_min_refresh_rate).
	RespectTTL bool
	MinTTL     time.Duration
	// Resolver is the DNS resolver (typed_dns_resolver_config).
	Resolver Resolver
	// Warm is wait_for_warm_on_init (default true): a new cluster is not
	// used before its first resolution.
	Warm bool
}

// DNSTarget is one endpoint of a DNS cluster: the name to resolve and the
// port, weight, priority, health and metadata every address it resolves to
// gets. Endpoint.Hostname is the name unless the endpoint sets its own.
type DNSTarget struct {
	Name     string
	Port     uint16
	Endpoint Endpoint
}

// Resolver says where and how names are resolved: Envoy's
// typed_dns_resolver_config (c-ares or getaddrinfo), or the system's
// resolv.conf and hosts file when it has no servers.
type Resolver struct {
	// Servers, if any, are asked instead of resolv.conf's name servers; the
	// queries of a lookup are spread over them.
	Servers []netip.AddrPort
	// TCP sends queries over TCP (use_tcp_for_dns_lookups).
	TCP bool
	// NoSearch resolves names as absolute, without the search domains of
	// resolv.conf (no_default_search_domain).
	NoSearch bool
	// Timeout bounds one lookup (query_timeout_seconds × query_tries).
	Timeout time.Duration
}

// dnsConfig reads a DNS cluster's settings and its endpoints as targets.
// The settings are a DnsCluster: the cluster_type extension's, or the one
// Envoy makes of the deprecated Cluster fields for type STRICT_DNS and
// LOGICAL_DNS.
func dnsConfig(pb *clusterv3.Cluster, dc *dnsclusterv3.DnsCluster, field string, def *Resolver) (*DNSConfig, error) {
	if err := cfgerr.OnlyFields(dc, "dns_refresh_rate", "dns_failure_refresh_rate", "respect_dns_ttl", "dns_jitter",
		"typed_dns_resolver_config", "dns_lookup_family", "all_addresses_in_single_endpoint", "dns_min_refresh_rate"); err != nil {
		return nil, cfgerr.Field(field, err)
	}
	d := &DNSConfig{
		Logical:    dc.GetAllAddressesInSingleEndpoint(),
		Family:     clusterv3.Cluster_DnsLookupFamily(max(dc.GetDnsLookupFamily()-1, 0)), // the same names, one apart
		Refresh:    DefaultDNSRefreshRate,
		RespectTTL: dc.GetRespectDnsTtl(),
		Resolver:   Resolver{Timeout: DefaultDNSQueryTimeout * DefaultDNSQueryTries},
		Warm:       pb.WaitForWarmOnInit == nil || pb.GetWaitForWarmOnInit().GetValue(),
	}
	if r := dc.GetDnsRefreshRate(); r != nil {
		d.Refresh = r.AsDuration() // validated: at least 1 ms
	}
	if m := dc.GetDnsMinRefreshRate(); m != nil {
		d.MinTTL = m.AsDuration()
	}
	if j := dc.GetDnsJitter(); j != nil {
		d.Jitter = j.AsDuration()
	}
	if f := dc.GetDnsFailureRefreshRate(); f != nil {
		d.Failure.Base = f.GetBaseInterval().AsDuration()
		d.Failure.Max = 10 * d.Failure.Base // Envoy's default
		if m := f.GetMaxInterval(); m != nil {
			d.Failure.Max = m.AsDuration()
			if d.Failure.Max < d.Failure.Base {
				return nil, cfgerr.Errorf(cfgerr.Join(field, "dns_failure_refresh_rate.max_interval"), "must not be less than base_interval")
			}
		}
	}
	switch tc := dc.GetTypedDnsResolverConfig(); {
	case tc != nil:
		if err := d.Resolver.typed(tc); err != nil {
			return nil, cfgerr.Field(cfgerr.Join(field, "typed_dns_resolver_config"), err)
		}
	case !hasLegacyResolver(pb) && def != nil:
		d.Resolver = *def // the bootstrap's
	default:
		if err := d.Resolver.legacy(pb); err != nil {
			return nil, err
		}
	}
	cla := pb.GetLoadAssignment()
	if err := cfgerr.Field("load_assignment", cfgerr.OnlyFields(cla, "cluster_name", "endpoints", "policy")); err != nil {
		return nil, err
	}
	for i, lle := range cla.GetEndpoints() {
		for j, lbe := range lle.GetLbEndpoints() {
			path := fmt.Sprintf("load_assignment.endpoints[%d].lb_endpoints[%d]", i, j)
			t, err := dnsTarget(lle, lbe)
			if err != nil {
				return nil, cfgerr.Field(path, err)
			}
			d.Targets = append(d.Targets, t)
		}
	}
	if d.Logical && len(d.Targets) != 1 {
		// Envoy's rule, since a logical host stands for one name.
		return nil, cfgerr.Errorf("load_assignment", "a LOGICAL_DNS cluster must have exactly one endpoint (it has %d)", len(d.Targets))
	}
	return d, nil
}

// legacyDNSCluster is the DnsCluster that a STRICT_DNS or LOGICAL_DNS
// cluster's own (deprecated) fields describe.
func legacyDNSCluster(pb *clusterv3.Cluster) *dnsclusterv3.DnsCluster {
	dc := &dnsclusterv3.DnsCluster{
		AllAddressesInSingleEndpoint: pb.GetType() == clusterv3.Cluster_LOGICAL_DNS,
		DnsLookupFamily:              dnscommonv3.DnsLookupFamily(pb.GetDnsLookupFamily() + 1),
		TypedDnsResolverConfig:       pb.GetTypedDnsResolverConfig(),
		//lint:ignore SA1019 deprecated in favour of DnsCluster, which this makes of them, as Envoy does
		DnsRefreshRate: pb.GetDnsRefreshRate(),
		//lint:ignore SA1019 as above
		RespectDnsTtl: pb.GetRespectDnsTtl(),
		//lint:ignore SA1019 as above
		DnsJitter: pb.GetDnsJitter(),
	}
	//lint:ignore SA1019 as above
	if f := pb.GetDnsFailureRefreshRate(); f != nil {
		dc.DnsFailureRefreshRate = &dnsclusterv3.DnsCluster_RefreshRate{BaseInterval: f.GetBaseInterval(), MaxInterval: f.GetMaxInterval()}
	}
	return dc
}

func dnsTarget(lle *endpointv3.LocalityLbEndpoints, lbe *endpointv3.LbEndpoint) (DNSTarget, error) {
	sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
	if sa == nil {
		return DNSTarget{}, cfgerr.Errorf("endpoint.address.socket_address", "is required in a DNS cluster")
	}
	if err := checkSocketAddr(sa); err != nil {
		return DNSTarget{}, cfgerr.Field("endpoint.address.socket_address", err)
	}
	if sa.GetAddress() == "" {
		return DNSTarget{}, cfgerr.Errorf("endpoint.address.socket_address.address", "must name a host")
	}
	ep := endpointTemplate(lle, lbe)
	if ep.Hostname == "" {
		ep.Hostname = sa.GetAddress() // Envoy's: a resolved host is known by its name
	}
	return DNSTarget{Name: sa.GetAddress(), Port: uint16(sa.GetPortValue()), Endpoint: ep}, nil
}

// hasLegacyResolver reports whether a cluster sets any of the deprecated
// resolver fields.
func hasLegacyResolver(pb *clusterv3.Cluster) bool {
	//lint:ignore SA1019 deprecated in Envoy, still honoured there
	return len(pb.GetDnsResolvers()) > 0 || pb.GetUseTcpForDnsLookups() || pb.GetDnsResolutionConfig() != nil
}

// BootstrapResolver is the resolver a bootstrap's typed_dns_resolver_config
// (or its deprecated dns_resolution_config and use_tcp_for_dns_lookups)
// gives the DNS clusters that set no resolver of their own, as in Envoy; nil
// if the bootstrap sets none. Errors name the bootstrap's field.
func BootstrapResolver(b *bootstrapv3.Bootstrap) (*Resolver, error) {
	r := &Resolver{Timeout: DefaultDNSQueryTimeout * DefaultDNSQueryTries}
	if tc := b.GetTypedDnsResolverConfig(); tc != nil {
		if err := r.typed(tc); err != nil {
			return nil, cfgerr.Field("typed_dns_resolver_config", err)
		}
		return r, nil
	}
	//lint:ignore SA1019 deprecated in Envoy, still honoured there
	rc, tcp := b.GetDnsResolutionConfig(), b.GetUseTcpForDnsLookups()
	if rc == nil && !tcp {
		return nil, nil
	}
	if err := cfgerr.OnlyFields(rc, "resolvers", "dns_resolver_options"); err != nil {
		return nil, cfgerr.Field("dns_resolution_config", err)
	}
	r.TCP = tcp
	r.options(rc.GetDnsResolverOptions())
	return r, r.addServers("dns_resolution_config.resolvers", rc.GetResolvers())
}

// legacy reads the deprecated resolver fields typed_dns_resolver_config
// replaced: dns_resolution_config, dns_resolvers, use_tcp_for_dns_lookups.
func (r *Resolver) legacy(pb *clusterv3.Cluster) error {
	//lint:ignore SA1019 deprecated in Envoy, still honoured there when typed_dns_resolver_config is unset
	servers, field := pb.GetDnsResolvers(), "dns_resolvers"
	//lint:ignore SA1019 as above
	r.TCP = pb.GetUseTcpForDnsLookups()
	//lint:ignore SA1019 as above
	if rc := pb.GetDnsResolutionConfig(); rc != nil {
		if err := cfgerr.OnlyFields(rc, "resolvers", "dns_resolver_options"); err != nil {
			return cfgerr.Field("dns_resolution_config", err)
		}
		r.options(rc.GetDnsResolverOptions())
		if len(servers) == 0 {
			servers, field = rc.GetResolvers(), "dns_resolution_config.resolvers"
		}
	}
	return r.addServers(field, servers)
}

func (r *Resolver) typed(tc *corev3.TypedExtensionConfig) error {
	m, err := tc.GetTypedConfig().UnmarshalNew()
	if err != nil {
		return cfgerr.Errorf("typed_config", "%v", err)
	}
	if err := cfgerr.Validate(m); err != nil {
		return cfgerr.Field("typed_config", err)
	}
	switch c := m.(type) {
	case *caresv3.CaresDnsResolverConfig:
		// The c-ares settings that tune how it reuses UDP sockets and
		// channels are met by a fresh socket per query; the others are
		// refused rather than ignored.
		if err := cfgerr.OnlyFields(c, "resolvers", "dns_resolver_options", "query_timeout_seconds", "query_tries",
			"rotate_nameservers", "udp_max_queries", "max_udp_channel_duration", "reinit_channel_on_timeout"); err != nil {
			return cfgerr.Field("typed_config", err)
		}
		r.options(c.GetDnsResolverOptions())
		timeout, tries := DefaultDNSQueryTimeout, DefaultDNSQueryTries
		if v := c.GetQueryTimeoutSeconds(); v != nil {
			timeout = time.Duration(max(v.GetValue(), 1)) * time.Second
		}
		if v := c.GetQueryTries(); v != nil {
			tries = int(max(v.GetValue(), 1))
		}
		r.Timeout = timeout * time.Duration(tries)
		return r.addServers("typed_config.resolvers", c.GetResolvers())
	case *getaddrinfov3.GetAddrInfoDnsResolverConfig:
		// The system's resolver: resolv.conf and the hosts file, as skiff
		// resolves without a typed_dns_resolver_config.
		return cfgerr.Field("typed_config", cfgerr.OnlyFields(c, "num_retries", "num_resolver_threads"))
	}
	return cfgerr.Errorf("typed_config", "DNS resolver %s is not supported by skiff (c-ares and getaddrinfo are)", tc.GetTypedConfig().GetTypeUrl())
}

func (r *Resolver) options(o *corev3.DnsResolverOptions) {
	r.TCP = r.TCP || o.GetUseTcpForDnsLookups()
	r.NoSearch = r.NoSearch || o.GetNoDefaultSearchDomain()
}

func (r *Resolver) addServers(field string, addrs []*corev3.Address) error {
	for i, a := range addrs {
		sa := a.GetSocketAddress()
		if sa == nil {
			return cfgerr.Errorf(fmt.Sprintf("%s[%d].socket_address", field, i), "is required")
		}
		ip, err := netip.ParseAddr(sa.GetAddress())
		if err != nil {
			return cfgerr.Errorf(fmt.Sprintf("%s[%d].socket_address.address", field, i), "%q is not an IP address", sa.GetAddress())
		}
		port := uint16(sa.GetPortValue())
		if port == 0 {
			port = 53
		}
		r.Servers = append(r.Servers, netip.AddrPortFrom(ip.Unmap(), port))
	}
	return nil
}

// Lookup resolves name to the addresses family allows, and the smallest TTL
// of the answers that gave them (0 if none was seen: a hosts file entry). A
// name that does not exist, or has no address of the family, is no error: it
// resolves to no address, as in Envoy.
func (r *Resolver) Lookup(ctx context.Context, name string, family clusterv3.Cluster_DnsLookupFamily) ([]netip.Addr, time.Duration, error) {
	if ip, err := netip.ParseAddr(name); err == nil {
		return []netip.Addr{ip.Unmap()}, 0, nil
	}
	ttl := &ttlRecorder{}
	var next int // the server of the lookup's next query
	var mu sync.Mutex
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		mu.Lock()
		if len(r.Servers) > 0 {
			address = r.Servers[next%len(r.Servers)].String()
			next++
		}
		mu.Unlock()
		if r.TCP {
			network = "tcp"
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		return ttl.wrap(c), nil
	}}
	if r.NoSearch && !strings.HasSuffix(name, ".") {
		name += "." // absolute: no search domain is tried
	}
	network := "ip"
	switch family {
	case clusterv3.Cluster_V4_ONLY:
		network = "ip4"
	case clusterv3.Cluster_V6_ONLY:
		network = "ip6"
	}
	if r.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	addrs, err := res.LookupNetIP(ctx, network, name)
	if err != nil {
		if dnsErr, ok := errors.AsType[*net.DNSError](err); ok && dnsErr.IsNotFound {
			return nil, ttl.min(), nil
		}
		return nil, 0, fmt.Errorf("resolving %s: %w", name, err)
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return pickFamily(addrs, family), ttl.min(), nil
}

// pickFamily keeps the addresses dns_lookup_family asks for: AUTO the IPv6
// ones if there are any, V4_PREFERRED the IPv4 ones if there are any.
func pickFamily(addrs []netip.Addr, family clusterv3.Cluster_DnsLookupFamily) []netip.Addr {
	var want func(netip.Addr) bool
	switch family {
	case clusterv3.Cluster_AUTO:
		want = netip.Addr.Is6
	case clusterv3.Cluster_V4_PREFERRED:
		want = netip.Addr.Is4
	default:
		return addrs
	}
	preferred := slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return !want(a) })
	if len(preferred) > 0 {
		return preferred
	}
	return addrs
}

// ttlRecorder keeps the smallest TTL of the DNS answers read through the
// connections it wraps: the Go resolver does not return TTLs, so they are
// read off the wire as the resolver reads its responses.
type ttlRecorder struct {
	mu  sync.Mutex
	ttl uint32
	set bool
}

func (t *ttlRecorder) min() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Duration(t.ttl) * time.Second
}

// observe reads the TTLs of a DNS message's address and alias answers.
func (t *ttlRecorder) observe(msg []byte) {
	var p dnsmessage.Parser
	if _, err := p.Start(msg); err != nil {
		return
	}
	if err := p.SkipAllQuestions(); err != nil {
		return
	}
	for {
		h, err := p.AnswerHeader()
		if err != nil {
			return
		}
		if h.Type == dnsmessage.TypeA || h.Type == dnsmessage.TypeAAAA || h.Type == dnsmessage.TypeCNAME {
			t.mu.Lock()
			if !t.set || h.TTL < t.ttl {
				t.ttl, t.set = h.TTL, true
			}
			t.mu.Unlock()
		}
		if err := p.SkipAnswer(); err != nil {
			return
		}
	}
}

// wrap returns c reading through t. A UDP connection stays a
// net.PacketConn, which is how the Go resolver tells datagrams from a
// stream.
func (t *ttlRecorder) wrap(c net.Conn) net.Conn {
	if u, ok := c.(*net.UDPConn); ok {
		return udpTTL{u, t}
	}
	return &streamTTL{Conn: c, rec: t}
}

type udpTTL struct {
	*net.UDPConn
	rec *ttlRecorder
}

func (c udpTTL) Read(b []byte) (int, error) {
	n, err := c.UDPConn.Read(b)
	if n > 0 {
		c.rec.observe(b[:n])
	}
	return n, err
}

// streamTTL reassembles the length-prefixed messages of DNS over TCP.
type streamTTL struct {
	net.Conn
	rec *ttlRecorder
	buf []byte
}

func (c *streamTTL) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.buf = append(c.buf, b[:n]...)
	for len(c.buf) >= 2 {
		l := int(c.buf[0])<<8 | int(c.buf[1])
		if len(c.buf) < 2+l {
			break
		}
		c.rec.observe(c.buf[2 : 2+l])
		c.buf = c.buf[2+l:]
	}
	return n, err
}

// dnsStats are a DNS cluster's counters of its resolutions, Envoy's
// cluster.<name>.update_* for DNS clusters.
type dnsStats struct {
	attempt, success, failure, noRebuild stats.Counter
}

func newDNSStats(sc *stats.Scope) *dnsStats {
	return &dnsStats{
		attempt:   sc.Counter("update_attempt"),
		success:   sc.Counter("update_success"),
		failure:   sc.Counter("update_failure"),
		noRebuild: sc.Counter("update_no_rebuild"),
	}
}

// dnsResolver resolves a DNS cluster's targets, each on its own schedule as
// in Envoy, and gives the cluster the union of their addresses.
type dnsResolver struct {
	c       *Cluster
	cfg     *DNSConfig
	stats   *dnsStats
	cancel  context.CancelFunc
	done    sync.WaitGroup
	initial sync.WaitGroup // each target's first resolution
	results [][]Endpoint   // by target; under c.mu
	applied bool           // results have set the cluster's hosts; under c.mu
}

func startDNS(c *Cluster, cfg *DNSConfig, st *dnsStats) *dnsResolver {
	ctx, cancel := context.WithCancel(context.Background())
	r := &dnsResolver{c: c, cfg: cfg, stats: st, cancel: cancel, results: make([][]Endpoint, len(cfg.Targets))}
	r.initial.Add(len(cfg.Targets))
	r.done.Add(len(cfg.Targets))
	for i := range cfg.Targets {
		go r.run(ctx, i)
	}
	return r
}

// stop ends the resolutions and waits for them.
func (r *dnsResolver) stop() {
	r.cancel()
	r.done.Wait()
}

// firstRound waits until every target has been resolved once, or has
// failed to: as Envoy's cluster warming waits for a DNS cluster's first
// resolution.
func (r *dnsResolver) firstRound() { r.initial.Wait() }

func (r *dnsResolver) run(ctx context.Context, i int) {
	defer r.done.Done()
	first := true
	defer func() {
		if first {
			r.initial.Done()
		}
	}()
	t := r.cfg.Targets[i]
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		r.stats.attempt.Inc()
		addrs, ttl, err := r.cfg.Resolver.Lookup(ctx, t.Name, r.cfg.Family)
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		if err != nil {
			r.stats.failure.Inc()
			wait = r.cfg.Refresh
			if r.cfg.Failure.Base > 0 {
				wait = r.cfg.Failure.Delay(failures)
			}
			failures++
		} else {
			r.stats.success.Inc()
			failures = 0
			if !r.c.resolved(r, i, r.endpoints(t, addrs)) {
				r.stats.noRebuild.Inc()
			}
			wait = r.cfg.Refresh
			if r.cfg.RespectTTL && ttl > 0 {
				wait = max(ttl, r.cfg.MinTTL)
			}
			if r.cfg.Jitter > 0 {
				wait += rand.N(r.cfg.Jitter)
			}
		}
		if first {
			first = false
			r.initial.Done()
		}
		timer.Reset(wait)
	}
}

// endpoints are the hosts a target's addresses make: all of them for
// STRICT_DNS; for LOGICAL_DNS the first, and none if there is none (then
// the cluster keeps the address it has, as Envoy's logical host does).
func (r *dnsResolver) endpoints(t DNSTarget, addrs []netip.Addr) []Endpoint {
	if r.cfg.Logical && len(addrs) > 1 {
		addrs = addrs[:1]
	}
	eps := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = t.Endpoint
		eps[i].Addr = netip.AddrPortFrom(a, t.Port)
	}
	return eps
}

// resolved records target i's endpoints and, if the cluster's hosts change,
// sets them. It reports whether they changed. A resolver's first result
// always sets them: until then the cluster keeps the hosts it had (those of
// the resolver it replaced, or of its static load assignment).
func (c *Cluster) resolved(r *dnsResolver, i int, eps []Endpoint) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dns != r {
		return false // replaced meanwhile
	}
	if r.cfg.Logical && len(eps) == 0 {
		return false
	}
	r.results[i] = eps
	var all []Endpoint
	for _, res := range r.results {
		all = append(all, res...)
	}
	if r.applied && slices.EqualFunc(all, c.dnsEndpoints, sameEndpoint) {
		return false
	}
	r.applied = true
	c.dnsEndpoints = all
	c.setEndpointsLocked(all)
	return true
}

// sameEndpoint compares what a resolution can change of an endpoint: its
// address (the rest comes from its target, which a running resolver does
// not change).
func sameEndpoint(a, b Endpoint) bool { return a.Addr == b.Addr }

func (c *Cluster) dnsResolver() *dnsResolver {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dns
}

// setDNSLocked starts, replaces or stops the cluster's resolutions (c.mu
// held). It returns a resolver just started, whose first round the
// Manager waits for; the hosts of the resolver it replaces stay until then.
func (c *Cluster) setDNSLocked(old, cfg *Config) *dnsResolver {
	if c.dns != nil && old == cfg {
		return nil
	}
	if c.dns != nil {
		// Its goroutines end on their own, and results they still bring
		// are refused (resolved checks c.dns): c.mu is held, so they are
		// not waited for here.
		c.dns.cancel()
		c.dns, c.dnsEndpoints = nil, nil
	}
	if cfg.DNS == nil {
		return nil
	}
	if c.dnsStats == nil {
		c.dnsStats = newDNSStats(c.scope)
	}
	c.dns = startDNS(c, cfg.DNS, c.dnsStats)
	return c.dns
}
