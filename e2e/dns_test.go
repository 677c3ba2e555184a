package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/dnstest"
)

// TestDNSCluster: a STRICT_DNS cluster, resolved through a DNS server the
// test runs (the bootstrap's typed_dns_resolver_config), sends requests to the address its name has now: when the name
// moves to another address, the traffic follows within the refresh rate.
// auto_host_rewrite gives the upstream the name, as Envoy's does for a DNS
// cluster's hosts.
func TestDNSCluster(t *testing.T) {
	t.Parallel()
	one := httpBackend(t, echoHTTP("one"))
	_, port, _ := net.SplitHostPort(one)
	// The second upstream listens on the same port of another loopback
	// address: a DNS answer names addresses, the cluster gives the port.
	httpBackendAt(t, net.JoinHostPort("127.0.0.2", port), echoHTTP("two"))
	dns := dnstest.Start(t)
	dns.Set("svc.skiff.test", 30, netip.MustParseAddr("127.0.0.1"))

	// The resolver is the bootstrap's, which DNS clusters without one of
	// their own use (the cluster-level one has unit tests).
	cfg := fmt.Sprintf(`typed_dns_resolver_config:
  name: envoy.network.dns_resolver.cares
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
    resolvers: [{ socket_address: { address: 127.0.0.1, port_value: %d } }]
    dns_resolver_options: { no_default_search_domain: true }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: default
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: svc, auto_host_rewrite: true }
  clusters:
  - name: svc
    type: STRICT_DNS
    connect_timeout: 1s
    dns_lookup_family: V4_ONLY
    dns_refresh_rate: 0.1s
    load_assignment:
      cluster_name: svc
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: svc.skiff.test, port_value: %s } } } }] }]
`, dns.Addr.Port(), port)
	p := startSkiff(t, cfg)
	url := "http://" + p.Addr(t, "http") + "/"
	c := h1Client(t)

	// skiff started listening after the cluster's first resolution.
	resp, _ := doGet(t, c, url)
	if got := resp.Header.Get("x-upstream"); resp.StatusCode != 200 || got != "one" {
		t.Fatalf("first request: %d from %q, want 200 from one", resp.StatusCode, got)
	}
	if got := resp.Header.Get("x-seen-host"); got != "svc.skiff.test" {
		t.Errorf("upstream saw host %q, want the cluster's DNS name svc.skiff.test", got)
	}

	dns.Set("svc.skiff.test", 30, netip.MustParseAddr("127.0.0.2"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, _ := doGet(t, c, url)
		if resp.StatusCode != 200 {
			t.Fatalf("while the name moved: status %d", resp.StatusCode)
		}
		if resp.Header.Get("x-upstream") == "two" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("requests still go to the old address 10 s after the name moved")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
