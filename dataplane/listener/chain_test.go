package listener

import (
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

func cidr(s string) *corev3.CidrRange {
	p := netip.MustParsePrefix(s)
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

func mustChain(t *testing.T, name string, m *listenerv3.FilterChainMatch) *FilterChain {
	t.Helper()
	cm, err := newChainMatch(m)
	if err != nil {
		t.Fatalf("chain %s: %v", name, err)
	}
	return &FilterChain{Name: name, match: cm}
}

func TestMatchFollowsEnvoyOrderAndSpecificity(t *testing.T) {
	chains := []*FilterChain{
		mustChain(t, "any", nil),
		mustChain(t, "port8080", &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(8080)}),
		mustChain(t, "port8080-sni", &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(8080), ServerNames: []string{"api.example.com"}}),
		mustChain(t, "port8080-wild", &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(8080), ServerNames: []string{"*.example.com"}}),
		mustChain(t, "dst-10/8", &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("10.0.0.0/8")}}),
		mustChain(t, "dst-10.1/16", &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("10.1.0.0/16")}}),
		mustChain(t, "src-192.168/16", &listenerv3.FilterChainMatch{SourcePrefixRanges: []*corev3.CidrRange{cidr("192.168.0.0/16")}}),
		mustChain(t, "tls", &listenerv3.FilterChainMatch{TransportProtocol: "tls"}),
	}
	def := &FilterChain{Name: "default"}
	conn := func(local, remote, sni, transport string) *filter.Conn {
		c := &filter.Conn{Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote), ServerName: sni, TransportProtocol: transport}
		c.DirectRemote = c.Remote
		return c
	}
	for _, tc := range []struct {
		name string
		c    *filter.Conn
		want string
	}{
		{"nothing specific", conn("127.0.0.1:9000", "127.0.0.1:5555", "", "raw_buffer"), "any"},
		{"port wins", conn("10.1.2.3:8080", "192.168.1.1:5555", "", "raw_buffer"), "port8080"},
		{"exact sni under port", conn("10.1.2.3:8080", "127.0.0.1:1", "api.example.com", "raw_buffer"), "port8080-sni"},
		{"wildcard sni under port", conn("10.1.2.3:8080", "127.0.0.1:1", "www.example.com", "raw_buffer"), "port8080-wild"},
		{"sni case-insensitive", conn("10.1.2.3:8080", "127.0.0.1:1", "API.example.COM", "raw_buffer"), "port8080-sni"},
		{"wildcard needs a label", conn("10.1.2.3:8080", "127.0.0.1:1", "example.com", "raw_buffer"), "port8080"},
		{"longest destination prefix", conn("10.1.2.3:9000", "127.0.0.1:1", "", "raw_buffer"), "dst-10.1/16"},
		{"shorter destination prefix", conn("10.2.2.3:9000", "127.0.0.1:1", "", "raw_buffer"), "dst-10/8"},
		{"source prefix", conn("127.0.0.1:9000", "192.168.3.4:1", "", "raw_buffer"), "src-192.168/16"},
		{"transport protocol", conn("127.0.0.1:9000", "127.0.0.1:1", "", "tls"), "tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := match(chains, def, tc.c)
			if got == nil || got.Name != tc.want {
				t.Fatalf("matched %v, want %s", got, tc.want)
			}
		})
	}
}

func TestMatchDoesNotBacktrack(t *testing.T) {
	// Envoy commits to the most specific destination port before looking at
	// server names: a connection to 8080 whose SNI matches only the port-less
	// chain gets no chain at all (then the default chain), not the port-less one.
	chains := []*FilterChain{
		mustChain(t, "port8080-sni", &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(8080), ServerNames: []string{"a.example.com"}}),
		mustChain(t, "sni-b", &listenerv3.FilterChainMatch{ServerNames: []string{"b.example.com"}}),
	}
	c := &filter.Conn{Local: netip.MustParseAddrPort("127.0.0.1:8080"), Remote: netip.MustParseAddrPort("127.0.0.1:1"), ServerName: "b.example.com"}
	def := &FilterChain{Name: "default"}
	if got := match(chains, def, c); got != def {
		t.Fatalf("matched %s, want the default chain", got.Name)
	}
	if got := match(chains, nil, c); got != nil {
		t.Fatalf("matched %s, want none", got.Name)
	}
}

func TestMatchSourceTypeAndPorts(t *testing.T) {
	chains := []*FilterChain{
		mustChain(t, "local", &listenerv3.FilterChainMatch{SourceType: listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK}),
		mustChain(t, "external", &listenerv3.FilterChainMatch{SourceType: listenerv3.FilterChainMatch_EXTERNAL}),
		mustChain(t, "external-port", &listenerv3.FilterChainMatch{SourceType: listenerv3.FilterChainMatch_EXTERNAL, SourcePorts: []uint32{4444}}),
	}
	conn := func(remote string) *filter.Conn {
		return &filter.Conn{Local: netip.MustParseAddrPort("10.0.0.1:80"), Remote: netip.MustParseAddrPort(remote)}
	}
	for remote, want := range map[string]string{
		"127.0.0.1:1000": "local",
		"10.0.0.1:1000":  "local",
		"10.9.9.9:1000":  "external",
		"10.9.9.9:4444":  "external-port",
	} {
		if got := match(chains, nil, conn(remote)); got == nil || got.Name != want {
			t.Errorf("remote %s: matched %v, want %s", remote, got, want)
		}
	}
}

func TestMatchALPN(t *testing.T) {
	chains := []*FilterChain{
		mustChain(t, "h2", &listenerv3.FilterChainMatch{ApplicationProtocols: []string{"h2"}}),
		mustChain(t, "any", nil),
	}
	c := &filter.Conn{Local: netip.MustParseAddrPort("127.0.0.1:80"), Remote: netip.MustParseAddrPort("127.0.0.1:1"), ApplicationProtocols: []string{"http/1.1", "h2"}}
	if got := match(chains, nil, c); got.Name != "h2" {
		t.Fatalf("matched %s, want h2", got.Name)
	}
	c.ApplicationProtocols = []string{"http/1.1"}
	if got := match(chains, nil, c); got.Name != "any" {
		t.Fatalf("matched %s, want any", got.Name)
	}
}

// TestMatchALPNFollowsClientOrder: among chains that each list one of the
// client's protocols, the client's order decides, not the chains' order
// (Envoy's findFilterChainForApplicationProtocols walks the client's list).
func TestMatchALPNFollowsClientOrder(t *testing.T) {
	chains := []*FilterChain{
		mustChain(t, "h2", &listenerv3.FilterChainMatch{TransportProtocol: "tls", ApplicationProtocols: []string{"h2"}}),
		mustChain(t, "http/1.1", &listenerv3.FilterChainMatch{TransportProtocol: "tls", ApplicationProtocols: []string{"http/1.1"}}),
		mustChain(t, "both", &listenerv3.FilterChainMatch{TransportProtocol: "tls", ApplicationProtocols: []string{"spdy/3", "acme"}}),
	}
	for _, tc := range []struct {
		offered []string
		want    string
	}{
		{[]string{"http/1.1", "h2"}, "http/1.1"},
		{[]string{"h2", "http/1.1"}, "h2"},
		{[]string{"x", "acme", "h2"}, "both"},
		{[]string{"x", "h2", "acme"}, "h2"},
	} {
		c := &filter.Conn{Local: netip.MustParseAddrPort("127.0.0.1:443"), Remote: netip.MustParseAddrPort("127.0.0.1:1"),
			TransportProtocol: "tls", ApplicationProtocols: tc.offered}
		if got := match(chains, nil, c); got == nil || got.Name != tc.want {
			t.Errorf("client offers %v: matched %+v, want %s", tc.offered, got, tc.want)
		}
	}
}

func TestNewChainMatchRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		m    *listenerv3.FilterChainMatch
		path string
	}{
		{&listenerv3.FilterChainMatch{ServerNames: []string{"a.*.com"}}, "server_names[0]"},
		{&listenerv3.FilterChainMatch{ServerNames: []string{"*example.com"}}, "server_names[0]"},
		{&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{{AddressPrefix: "nope"}}}, "prefix_ranges[0].address_prefix"},
		{&listenerv3.FilterChainMatch{SourcePrefixRanges: []*corev3.CidrRange{{AddressPrefix: "10.0.0.0", PrefixLen: wrapperspb.UInt32(33)}}}, "source_prefix_ranges[0].prefix_len"},
		{&listenerv3.FilterChainMatch{AddressSuffix: "x"}, "address_suffix"},
	} {
		_, err := newChainMatch(tc.m)
		if err == nil {
			t.Errorf("%v: no error", tc.m)
			continue
		}
		if got := cfgerr.PathOf(err); got != tc.path {
			t.Errorf("%v: error %q at path %q, want %q", tc.m, err, got, tc.path)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	chains := []*FilterChain{
		{Name: "a", match: chainMatch{destPort: 8080, serverNames: []string{"a.example.com"}}},
		{Name: "b", match: chainMatch{destPort: 8080, serverNames: []string{"*.example.com"}}},
		{Name: "c", match: chainMatch{}},
	}
	c := &filter.Conn{Local: netip.MustParseAddrPort("127.0.0.1:8080"), Remote: netip.MustParseAddrPort("127.0.0.1:1"), ServerName: "x.example.com"}
	b.ReportAllocs()
	for b.Loop() {
		if match(chains, nil, c).Name != "b" {
			b.Fatal("wrong chain")
		}
	}
}
