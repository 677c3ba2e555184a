package listener

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// FilterChain is a built filter chain: its match criteria, its network filters,
// and the registry of the connections it accepted.
type FilterChain struct {
	Name     string
	match    chainMatch
	filters  []filter.NetworkFilter // all but the terminal one
	terminal filter.TerminalFilter
	conns    *ConnSet
	proto    *listenerv3.FilterChain
	// tls terminates TLS (transport_socket envoy.transport_sockets.tls) for
	// at most handshakeTimeout (transport_socket_connect_timeout; 0: none,
	// as in Envoy); nil for plain connections.
	tls              *tlscontext.Server
	handshakeTimeout time.Duration
}

// Conns is the registry of the chain's connections.
func (ch *FilterChain) Conns() *ConnSet { return ch.conns }

// buildChain builds pb, or returns the chain of prev it equals (and whose
// connections see the same health, that is, whose listener had the same
// drain_type). health is what the chain's ConnSet consults (see newConnSet).
func buildChain(pb *listenerv3.FilterChain, reg *filter.Registry, fc *filter.Context, prev []*FilterChain, health filter.ServerHealth) (*FilterChain, error) {
	for _, p := range prev {
		if p != nil && proto.Equal(p.proto, pb) && p.conns.health == health {
			return p, nil
		}
	}
	if err := cfgerr.OnlyFields(pb, "filter_chain_match", "filters", "name", "metadata", "transport_socket",
		"transport_socket_connect_timeout"); err != nil {
		return nil, err
	}
	m, err := newChainMatch(pb.GetFilterChainMatch())
	if err != nil {
		return nil, cfgerr.Field("filter_chain_match", err)
	}
	ch := &FilterChain{Name: pb.GetName(), match: m, conns: newConnSet(health), proto: pb}
	if ts := pb.GetTransportSocket(); ts != nil {
		if ch.tls, err = tlscontext.Downstream(ts, fc.Secrets); err != nil {
			return nil, cfgerr.Field("transport_socket", err)
		}
	}
	if d := pb.GetTransportSocketConnectTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, cfgerr.Errorf("transport_socket_connect_timeout", "%v", err)
		}
		ch.handshakeTimeout = d.AsDuration()
	}
	if len(pb.GetFilters()) == 0 {
		return nil, cfgerr.Errorf("filters", "a filter chain needs at least one network filter, the last one terminal (e.g. envoy.filters.network.tcp_proxy)")
	}
	for i, fpb := range pb.GetFilters() {
		if err := cfgerr.OnlyFields(fpb, "name", "typed_config"); err != nil {
			return nil, cfgerr.Index("filters", i, err)
		}
		nf, err := reg.NetworkFilter(fpb.GetName(), fpb.GetTypedConfig(), fc)
		if err != nil {
			return nil, cfgerr.Index("filters", i, err)
		}
		t, terminal := nf.(filter.TerminalFilter)
		last := i == len(pb.GetFilters())-1
		switch {
		case terminal && !last:
			return nil, cfgerr.Errorf(fmt.Sprintf("filters[%d]", i), "%s is a terminal filter and must be the last in the chain", fpb.GetName())
		case !terminal && last:
			return nil, cfgerr.Errorf(fmt.Sprintf("filters[%d]", i), "the last filter of a chain must be terminal (such as envoy.filters.network.tcp_proxy); %s is not", fpb.GetName())
		case terminal:
			ch.terminal = t
		default:
			ch.filters = append(ch.filters, nf)
		}
	}
	return ch, nil
}

// chainMatch is a FilterChainMatch in a form that is quick to evaluate.
type chainMatch struct {
	destPort     uint32 // 0: any
	destPrefixes []netip.Prefix
	serverNames  []string
	transport    string
	alpn         []string
	directSource []netip.Prefix
	sourceType   listenerv3.FilterChainMatch_ConnectionSourceType
	source       []netip.Prefix
	sourcePorts  []uint32
}

func newChainMatch(pb *listenerv3.FilterChainMatch) (chainMatch, error) {
	var m chainMatch
	if pb == nil {
		return m, nil
	}
	if err := cfgerr.OnlyFields(pb, "destination_port", "prefix_ranges", "direct_source_prefix_ranges",
		"source_type", "source_prefix_ranges", "source_ports", "server_names", "transport_protocol",
		"application_protocols"); err != nil {
		return m, err
	}
	var err error
	m.destPort = pb.GetDestinationPort().GetValue()
	if m.destPrefixes, err = prefixes(pb.GetPrefixRanges()); err != nil {
		return m, cfgerr.Field("prefix_ranges", err)
	}
	if m.directSource, err = prefixes(pb.GetDirectSourcePrefixRanges()); err != nil {
		return m, cfgerr.Field("direct_source_prefix_ranges", err)
	}
	if m.source, err = prefixes(pb.GetSourcePrefixRanges()); err != nil {
		return m, cfgerr.Field("source_prefix_ranges", err)
	}
	for i, sn := range pb.GetServerNames() {
		if strings.Contains(sn[min(1, len(sn)):], "*") || (strings.HasPrefix(sn, "*") && !strings.HasPrefix(sn, "*.")) {
			return m, cfgerr.Errorf(fmt.Sprintf("server_names[%d]", i), "%q: only a leading \"*.\" wildcard is allowed", sn)
		}
		m.serverNames = append(m.serverNames, strings.ToLower(sn))
	}
	m.transport = pb.GetTransportProtocol()
	m.alpn = pb.GetApplicationProtocols()
	m.sourceType = pb.GetSourceType()
	m.sourcePorts = pb.GetSourcePorts()
	return m, nil
}

func prefixes(ranges []*corev3.CidrRange) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, r := range ranges {
		ip, err := netip.ParseAddr(r.GetAddressPrefix())
		if err != nil {
			return nil, cfgerr.Errorf(fmt.Sprintf("[%d].address_prefix", i), "%q is not an IP address", r.GetAddressPrefix())
		}
		bits := int(r.GetPrefixLen().GetValue())
		if bits > ip.BitLen() {
			return nil, cfgerr.Errorf(fmt.Sprintf("[%d].prefix_len", i), "%d is longer than the address", bits)
		}
		out = append(out, netip.PrefixFrom(ip, bits).Masked())
	}
	return out, nil
}

// The match levels, in Envoy's order. Each scores a chain against a connection:
// -1 does not match, 0 matches because the chain does not constrain this level,
// and larger numbers are more specific matches.
var levels = [...]func(m *chainMatch, c *filter.Conn) int{
	func(m *chainMatch, c *filter.Conn) int { // destination port
		switch {
		case m.destPort == 0:
			return 0
		case m.destPort == uint32(c.Local.Port()):
			return 1
		}
		return -1
	},
	func(m *chainMatch, c *filter.Conn) int { return prefixScore(m.destPrefixes, c.Local.Addr()) },
	func(m *chainMatch, c *filter.Conn) int { return serverNameScore(m.serverNames, c.ServerName) },
	func(m *chainMatch, c *filter.Conn) int { // transport protocol
		switch {
		case m.transport == "":
			return 0
		case m.transport == c.TransportProtocol:
			return 1
		}
		return -1
	},
	func(m *chainMatch, c *filter.Conn) int { return alpnScore(m.alpn, c.ApplicationProtocols) },
	func(m *chainMatch, c *filter.Conn) int { return prefixScore(m.directSource, c.DirectRemote.Addr()) },
	func(m *chainMatch, c *filter.Conn) int { // source type
		switch m.sourceType {
		case listenerv3.FilterChainMatch_ANY:
			return 0
		case listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK:
			if isLocal(c) {
				return 1
			}
		case listenerv3.FilterChainMatch_EXTERNAL:
			if !isLocal(c) {
				return 1
			}
		}
		return -1
	},
	func(m *chainMatch, c *filter.Conn) int { return prefixScore(m.source, c.Remote.Addr()) },
	func(m *chainMatch, c *filter.Conn) int { // source port
		switch {
		case len(m.sourcePorts) == 0:
			return 0
		case slices.Contains(m.sourcePorts, uint32(c.Remote.Port())):
			return 1
		}
		return -1
	},
}

func isLocal(c *filter.Conn) bool {
	return c.Remote.Addr().IsLoopback() || c.Remote.Addr() == c.Local.Addr()
}

// prefixScore is 0 for no prefixes, 1+the longest matching prefix length, or -1.
func prefixScore(ps []netip.Prefix, ip netip.Addr) int {
	if len(ps) == 0 {
		return 0
	}
	best := -1
	for _, p := range ps {
		if p.Contains(ip) {
			best = max(best, 1+p.Bits())
		}
	}
	return best
}

// alpnScore ranks the chains by the client's order of preference, as Envoy's
// findFilterChainForApplicationProtocols does: it walks the protocols the
// client offers in order and takes the first one some chain lists. So a chain
// listing an earlier client protocol scores higher (len(offered)-index), one
// that lists none of them -1, and one without application_protocols 0.
func alpnScore(alpn, offered []string) int {
	if len(alpn) == 0 {
		return 0
	}
	for i, p := range offered {
		if slices.Contains(alpn, p) {
			return len(offered) - i
		}
	}
	return -1
}

// serverNameScore prefers an exact name to the longest matching "*." suffix.
func serverNameScore(names []string, sni string) int {
	if len(names) == 0 {
		return 0
	}
	sni = strings.ToLower(sni)
	best := -1
	for _, n := range names {
		switch {
		case n == sni && sni != "":
			return 1 << 16
		case strings.HasPrefix(n, "*.") && strings.HasSuffix(sni, n[1:]) && len(sni) > len(n)-1:
			best = max(best, len(n))
		}
	}
	return best
}

// match picks the filter chain for c the way Envoy does: criteria are taken in a
// fixed order (destination port, destination IP, server name, transport protocol,
// application protocols, direct source IP, source type, source IP, source port);
// at each level the chains with the most specific matching value win, chains that
// leave the level unconstrained are used only if none does, and there is no
// backtracking to an earlier level. If nothing matches, the default chain (which
// may be nil) is used.
func match(chains []*FilterChain, def *FilterChain, c *filter.Conn) *FilterChain {
	// A listener usually has a handful of chains; a small array keeps this
	// allocation-free.
	var buf [16]*FilterChain
	cand := append(buf[:0], chains...)
	for _, level := range levels {
		best, n := 0, 0
		for _, ch := range cand {
			s := level(&ch.match, c)
			if s < best {
				continue // no match (-1), or less specific than what we have
			}
			if s > best {
				best, n = s, 0
			}
			cand[n] = ch
			n++
		}
		if n == 0 {
			return def
		}
		cand = cand[:n]
	}
	return cand[0]
}

func describeMatch(m *listenerv3.FilterChainMatch) string {
	if m == nil {
		return "match everything"
	}
	return fmt.Sprintf("%v", m)
}
