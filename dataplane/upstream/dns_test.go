package upstream

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	dnsclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dns/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/internal/dnstest"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

// dnsCluster is a DNS cluster named "c" of the YAML given (type, endpoints
// and DNS settings), asking srv; its Manager holds it until the test ends.
func dnsCluster(t *testing.T, srv *dnstest.Server, y string) (*Cluster, *stats.Store) {
	t.Helper()
	pb := dnsClusterPB(t, srv, y)
	cfg, err := NewConfig(pb)
	if err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(cfg)})
	t.Cleanup(func() { m.Set(nil) })
	return m.Get("c"), st
}

func dnsClusterPB(t *testing.T, srv *dnstest.Server, y string) *clusterv3.Cluster {
	t.Helper()
	var pb clusterv3.Cluster
	full := fmt.Sprintf(`
name: c
connect_timeout: 1s
typed_dns_resolver_config:
  name: envoy.network.dns_resolver.cares
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
    resolvers: [{ socket_address: { address: 127.0.0.1, port_value: %d } }]
    dns_resolver_options: { no_default_search_domain: true }
    query_timeout_seconds: 1
    query_tries: 1
`, srv.Addr.Port()) + y
	if err := protoyaml.Unmarshal([]byte(full), &pb); err != nil {
		t.Fatal(err)
	}
	return &pb
}

func hostAddrs(c *Cluster) []string {
	var out []string
	for _, h := range c.Hosts() {
		out = append(out, h.Addr.String())
	}
	slices.Sort(out)
	return out
}

// waitHosts waits (up to 10 s) for the cluster's hosts to be want.
func waitHosts(t *testing.T, c *Cluster, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(hostAddrs(c), want) {
		if time.Now().After(deadline) {
			t.Fatalf("hosts %v, want %v", hostAddrs(c), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statValue(st *stats.Store, name string) int64 {
	v, _ := st.Value(name)
	return v
}

func TestStrictDNSFollowsTheNames(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"))
	srv.Set("b.skiff.test", 30, netip.MustParseAddr("127.0.0.4"))
	c, st := dnsCluster(t, srv, `
type: STRICT_DNS
dns_lookup_family: V4_ONLY
dns_refresh_rate: 0.02s
load_assignment:
  cluster_name: c
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: a.skiff.test, port_value: 8080 } } }
      load_balancing_weight: 3
    - endpoint: { address: { socket_address: { address: b.skiff.test, port_value: 9090 } }, hostname: bee }
`)
	// Set warmed the cluster: its names are resolved already.
	if got, want := hostAddrs(c), []string{"127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:9090"}; !slices.Equal(got, want) {
		t.Fatalf("hosts after Set: %v, want %v", got, want)
	}
	for _, h := range c.Hosts() {
		wantName, wantWeight := "a.skiff.test", uint32(3)
		if h.Addr.Port() == 9090 {
			wantName, wantWeight = "bee", 1
		}
		if h.Hostname() != wantName || h.Weight() != wantWeight {
			t.Errorf("host %v: hostname %q weight %d, want %q %d", h.Addr, h.Hostname(), h.Weight(), wantName, wantWeight)
		}
	}
	kept := hostAt(c, "127.0.0.4:9090")

	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.5"))
	waitHosts(t, c, "127.0.0.5:8080", "127.0.0.4:9090")
	if hostAt(c, "127.0.0.4:9090") != kept {
		t.Error("the host whose address stayed was replaced")
	}
	// A name that no longer exists has no hosts (Envoy: NXDOMAIN is an
	// empty answer, not a failure).
	srv.Remove("a.skiff.test")
	waitHosts(t, c, "127.0.0.4:9090")

	// The resolver goes on every 20 ms: read the counters between two
	// lookups, when every attempt counted has ended.
	var attempts, success int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		success = statValue(st, "cluster.c.update_success")
		ended := success + statValue(st, "cluster.c.update_failure")
		if attempts = statValue(st, "cluster.c.update_attempt"); attempts == ended || time.Now().After(deadline) {
			break
		}
	}
	if attempts < 4 || success != attempts || statValue(st, "cluster.c.update_no_rebuild") == 0 {
		t.Errorf("update_attempt %d, update_success %d, update_no_rebuild %d: want every attempt a success, some without a change",
			attempts, success, statValue(st, "cluster.c.update_no_rebuild"))
	}
}

func TestDNSFailureKeepsTheHosts(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.2"))
	c, st := dnsCluster(t, srv, `
type: STRICT_DNS
dns_lookup_family: V4_ONLY
dns_refresh_rate: 0.02s
dns_failure_refresh_rate: { base_interval: 0.01s, max_interval: 0.05s }
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.skiff.test, port_value: 80 } } } }] }] }
`)
	waitHosts(t, c, "127.0.0.2:80")
	srv.Fail(true)
	deadline := time.Now().Add(10 * time.Second)
	for statValue(st, "cluster.c.update_failure") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("update_failure %d after 10 s of SERVFAIL", statValue(st, "cluster.c.update_failure"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := hostAddrs(c); !slices.Equal(got, []string{"127.0.0.2:80"}) {
		t.Fatalf("hosts while resolution fails: %v, want the last good ones", got)
	}
	srv.Fail(false)
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.3"))
	waitHosts(t, c, "127.0.0.3:80")
}

func TestLogicalDNSUsesTheFirstAddress(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"))
	c, _ := dnsCluster(t, srv, `
type: LOGICAL_DNS
dns_lookup_family: V4_ONLY
dns_refresh_rate: 0.02s
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.skiff.test, port_value: 80 } } } }] }] }
`)
	if got := hostAddrs(c); len(got) != 1 || (got[0] != "127.0.0.2:80" && got[0] != "127.0.0.3:80") {
		t.Fatalf("hosts %v, want one of the name's addresses", got)
	}
	// An empty answer leaves the logical host where it is.
	srv.Remove("a.skiff.test")
	before := srv.Queries()
	for srv.Queries() < before+4 {
		time.Sleep(5 * time.Millisecond)
	}
	if got := hostAddrs(c); len(got) != 1 {
		t.Fatalf("hosts after an empty answer: %v, want the one it had", got)
	}
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.9"))
	waitHosts(t, c, "127.0.0.9:80")
}

func TestDNSRespectsTTL(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("a.skiff.test", 1, netip.MustParseAddr("127.0.0.2"))
	// dns_refresh_rate is an hour: only the one-second TTL brings the change.
	c, _ := dnsCluster(t, srv, `
type: STRICT_DNS
dns_lookup_family: V4_ONLY
dns_refresh_rate: 3600s
respect_dns_ttl: true
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.skiff.test, port_value: 80 } } } }] }] }
`)
	waitHosts(t, c, "127.0.0.2:80")
	srv.Set("a.skiff.test", 1, netip.MustParseAddr("127.0.0.3"))
	waitHosts(t, c, "127.0.0.3:80")
}

func TestDNSOverTCP(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("a.skiff.test", 1, netip.MustParseAddr("127.0.0.2"))
	r := Resolver{Servers: []netip.AddrPort{srv.Addr}, TCP: true, NoSearch: true, Timeout: 5 * time.Second}
	addrs, ttl, err := r.Lookup(context.Background(), "a.skiff.test", clusterv3.Cluster_V4_ONLY)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0] != netip.MustParseAddr("127.0.0.2") || ttl != time.Second {
		t.Errorf("Lookup = %v, ttl %v; want [127.0.0.2], 1s", addrs, ttl)
	}
	if srv.TCPQueries() == 0 {
		t.Error("no query came over TCP")
	}
}

func TestPickFamily(t *testing.T) {
	v4, v6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	for _, tc := range []struct {
		family clusterv3.Cluster_DnsLookupFamily
		in     []netip.Addr
		want   []netip.Addr
	}{
		{clusterv3.Cluster_AUTO, []netip.Addr{v4, v6}, []netip.Addr{v6}},
		{clusterv3.Cluster_AUTO, []netip.Addr{v4}, []netip.Addr{v4}},
		{clusterv3.Cluster_V4_PREFERRED, []netip.Addr{v6, v4}, []netip.Addr{v4}},
		{clusterv3.Cluster_V4_PREFERRED, []netip.Addr{v6}, []netip.Addr{v6}},
		{clusterv3.Cluster_ALL, []netip.Addr{v6, v4}, []netip.Addr{v6, v4}},
	} {
		if got := pickFamily(slices.Clone(tc.in), tc.family); !slices.Equal(got, tc.want) {
			t.Errorf("pickFamily(%v, %v) = %v, want %v", tc.in, tc.family, got, tc.want)
		}
	}
}

func TestDNSConfigErrors(t *testing.T) {
	srv := dnstest.Start(t)
	one := `load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.skiff.test, port_value: 80 } } } }] }] }`
	for _, tc := range []struct{ y, want string }{
		{"type: LOGICAL_DNS\nload_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a, port_value: 80 } } } }, { endpoint: { address: { socket_address: { address: b, port_value: 80 } } } }] }] }",
			"load_assignment: a LOGICAL_DNS cluster must have exactly one endpoint (it has 2)"},
		{"type: STRICT_DNS\ndns_failure_refresh_rate: { base_interval: 2s, max_interval: 1s }\n" + one,
			"dns_failure_refresh_rate.max_interval: must not be less than base_interval"},
		{"type: STRICT_DNS\ndns_resolvers: [{ socket_address: { address: dns.example, port_value: 53 } }]\n" + one,
			`dns_resolvers[0].socket_address.address: "dns.example" is not an IP address`},
		{"type: STRICT_DNS\nload_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a, named_port: http } } } }] }] }",
			"load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port: named ports are not supported"},
		{"type: STRICT_DNS\neds_cluster_config: { eds_config: { ads: {} } }\n" + one,
			"eds_cluster_config: only EDS clusters take an eds_cluster_config"},
	} {
		// The resolver of dnsClusterPB is replaced where a case sets dns_resolvers.
		pb := dnsClusterPB(t, srv, tc.y)
		if strings.Contains(tc.y, "dns_resolvers") {
			pb.TypedDnsResolverConfig = nil
		}
		_, err := NewConfig(pb)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant %s", tc.y, err, tc.want)
		}
	}
	var pb clusterv3.Cluster
	if err := protoyaml.Unmarshal([]byte(`
name: c
type: STRICT_DNS
typed_dns_resolver_config: { name: apple, typed_config: { "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.apple.v3.AppleDnsResolverConfig } }
`+one), &pb); err == nil {
		_, err = NewConfig(&pb)
		if err == nil || !strings.Contains(err.Error(), "typed_dns_resolver_config.typed_config") {
			t.Errorf("apple resolver: %v", err)
		}
	}
}

// TestDNSClusterType: the cluster_type extension Envoy now prefers to the
// deprecated STRICT_DNS and LOGICAL_DNS fields says the same.
func TestDNSClusterType(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::2"))
	var pb clusterv3.Cluster
	if err := protoyaml.Unmarshal([]byte(fmt.Sprintf(`
name: c
connect_timeout: 1s
cluster_type:
  name: envoy.cluster.dns
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster
    dns_refresh_rate: 0.02s
    dns_lookup_family: V4_PREFERRED
    all_addresses_in_single_endpoint: true
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{ socket_address: { address: 127.0.0.1, port_value: %d } }]
        dns_resolver_options: { no_default_search_domain: true }
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.skiff.test, port_value: 80 } } } }] }] }
`, srv.Addr.Port())), &pb); err != nil {
		t.Fatal(err)
	}
	cfg, err := NewConfig(&pb)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DNS == nil || !cfg.DNS.Logical || cfg.DNS.Family != clusterv3.Cluster_V4_PREFERRED || cfg.DNS.Refresh != 20*time.Millisecond {
		t.Fatalf("DNS config %+v: want logical, V4_PREFERRED, 20ms", cfg.DNS)
	}
	m := NewManager(stats.NewStore())
	m.Set([]Assignment{Static(cfg)})
	t.Cleanup(func() { m.Set(nil) })
	waitHosts(t, m.Get("c"), "127.0.0.2:80")

	bad := proto.Clone(&pb).(*clusterv3.Cluster)
	if err := bad.GetClusterType().GetTypedConfig().MarshalFrom(&dnsclusterv3.DnsCluster{DnsRefreshRate: durationpb.New(0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewConfig(bad); err == nil || !strings.Contains(err.Error(), "cluster_type.typed_config.dns_refresh_rate") {
		t.Errorf("dns_refresh_rate 0: %v, want an error at cluster_type.typed_config.dns_refresh_rate", err)
	}
	tc := pb.GetClusterType().GetTypedConfig()
	tc.TypeUrl, tc.Value = "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig", nil
	if _, err := NewConfig(&pb); err == nil || !strings.Contains(err.Error(), "cluster_type") {
		t.Errorf("aggregate cluster_type: %v, want an error at cluster_type", err)
	}
}

// TestDNSClusterHealthChecked: a new DNS cluster with health checks is
// published once its names are resolved and the hosts they gave have had
// their first check, so the first request finds them healthy.
func TestDNSClusterHealthChecked(t *testing.T) {
	srv := dnstest.Start(t)
	ln := serveTCP(t, func(net.Conn) {})
	port := ln.Addr().(*net.TCPAddr).Port
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.1"))
	c, _ := dnsCluster(t, srv, fmt.Sprintf(`
type: STRICT_DNS
dns_lookup_family: V4_ONLY
health_checks: [{ timeout: 1s, interval: 10s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.skiff.test, port_value: %d } } } }] }] }
`, port))
	hosts := c.Hosts()
	if len(hosts) != 1 || !hosts[0].Healthy() {
		t.Fatalf("hosts after Set: %v (healthy: %v), want the resolved host, checked and healthy", hostAddrs(c), len(hosts) == 1 && hosts[0].Healthy())
	}
}

// TestBootstrapResolver: the bootstrap's resolver serves the DNS clusters
// that set none of their own; a cluster's own still wins.
func TestBootstrapResolver(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("a.skiff.test", 30, netip.MustParseAddr("127.0.0.2"))
	var b bootstrapv3.Bootstrap
	if err := protoyaml.Unmarshal([]byte(fmt.Sprintf(`
typed_dns_resolver_config:
  name: envoy.network.dns_resolver.cares
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
    resolvers: [{ socket_address: { address: 127.0.0.1, port_value: %d } }]
    use_resolvers_as_fallback: false
    dns_resolver_options: { no_default_search_domain: true, use_tcp_for_dns_lookups: true }
`, srv.Addr.Port())), &b); err != nil {
		t.Fatal(err)
	}
	r, err := BootstrapResolver(&b)
	if err != nil {
		t.Fatal(err)
	}
	var pb clusterv3.Cluster
	if err := protoyaml.Unmarshal([]byte(`
name: c
type: STRICT_DNS
dns_lookup_family: V4_ONLY
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: a.skiff.test, port_value: 80 } } } }] }] }
`), &pb); err != nil {
		t.Fatal(err)
	}
	cfg, err := NewConfigWith(&pb, Options{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.DNS.Resolver.TCP || len(cfg.DNS.Resolver.Servers) != 1 {
		t.Fatalf("cluster resolver %+v: want the bootstrap's", cfg.DNS.Resolver)
	}
	m := NewManager(stats.NewStore())
	m.Set([]Assignment{Static(cfg)})
	t.Cleanup(func() { m.Set(nil) })
	waitHosts(t, m.Get("c"), "127.0.0.2:80")
	if srv.TCPQueries() == 0 {
		t.Error("the bootstrap resolver's TCP was not used")
	}

	// A cluster's own resolver fields win over the bootstrap's.
	//lint:ignore SA1019 the deprecated field is the one under test
	pb.UseTcpForDnsLookups = false
	//lint:ignore SA1019 as above
	pb.DnsResolvers = []*corev3.Address{{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 5353}}}}}
	cfg, err = NewConfigWith(&pb, Options{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DNS.Resolver.TCP || cfg.DNS.Resolver.Servers[0].String() != "127.0.0.9:5353" {
		t.Errorf("cluster resolver %+v: want the cluster's own", cfg.DNS.Resolver)
	}

	// No resolver in the bootstrap: nil. A bad one: an error at its field.
	if r, err := BootstrapResolver(&bootstrapv3.Bootstrap{}); r != nil || err != nil {
		t.Errorf("empty bootstrap: %v, %v", r, err)
	}
	b.TypedDnsResolverConfig.TypedConfig.TypeUrl = "type.googleapis.com/envoy.extensions.network.dns_resolver.apple.v3.AppleDnsResolverConfig"
	b.TypedDnsResolverConfig.TypedConfig.Value = nil
	if _, err := BootstrapResolver(&b); err == nil || !strings.HasPrefix(err.Error(), "typed_dns_resolver_config") {
		t.Errorf("apple resolver: %v, want an error at typed_dns_resolver_config", err)
	}
}
