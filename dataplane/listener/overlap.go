package listener

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// matchLevel is one level of Envoy's filter chain tree: its field in
// FilterChainMatch and what a message calls a value of it.
type matchLevel struct{ field, what string }

// matchLevels are the levels of Envoy's filter chain tree, in its order (the
// order of levels in chain.go).
var matchLevels = [...]matchLevel{
	{"destination_port", "destination port"},
	{"prefix_ranges", "destination prefix"},
	{"server_names", "server name"},
	{"transport_protocol", "transport protocol"},
	{"application_protocols", "application protocol"},
	{"direct_source_prefix_ranges", "direct source prefix"},
	{"source_type", "source type"},
	{"source_prefix_ranges", "source prefix"},
	{"source_ports", "source port"},
}

// matchKeys are the keys under which Envoy files a chain at each level of its
// filter chain tree (FilterChainManagerImpl::addFilterChainForDestinationPorts
// and the functions it calls): one per listed value, or the catch-all key ""
// for a level the chain leaves unconstrained (no port, no list, source type
// ANY). A wildcard server name "*.example.com" is filed under ".example.com",
// a prefix under its masked form.
type matchKeys [len(matchLevels)][]string

func (m *chainMatch) keys() matchKeys {
	var k matchKeys
	k[0] = []string{portKey(m.destPort)}
	k[1] = prefixKeys(m.destPrefixes)
	k[2] = []string{""}
	if len(m.serverNames) > 0 {
		k[2] = make([]string, len(m.serverNames))
		for i, n := range m.serverNames {
			k[2][i] = strings.TrimPrefix(n, "*")
		}
	}
	k[3] = []string{m.transport}
	k[4] = []string{""}
	if len(m.alpn) > 0 {
		k[4] = m.alpn
	}
	k[5] = prefixKeys(m.directSource)
	k[6] = []string{""}
	if m.sourceType != listenerv3.FilterChainMatch_ANY {
		k[6] = []string{m.sourceType.String()}
	}
	k[7] = prefixKeys(m.source)
	k[8] = []string{""}
	if len(m.sourcePorts) > 0 {
		k[8] = make([]string, len(m.sourcePorts))
		for i, p := range m.sourcePorts {
			k[8][i] = portKey(p)
		}
	}
	return k
}

func portKey(p uint32) string {
	if p == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(p), 10)
}

func prefixKeys(ps []netip.Prefix) []string {
	if len(ps) == 0 {
		return []string{""}
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// checkOverlaps refuses chains whose matches overlap, as Envoy does ("multiple
// filter chains with overlapping matching rules are defined"): Envoy files
// each chain under every combination of its keys, one per level, and two
// chains that share a combination (a connection both would match equally
// well) make the listener invalid. That is the case when the two chains share
// a key at every level; a chain that lists a value twice overlaps itself.
// Errors are located at the later chain's filter_chain_match.
func checkOverlaps(chains []*FilterChain) error {
	keys := make([]matchKeys, len(chains))
	for i, ch := range chains {
		keys[i] = ch.match.keys()
		for l, ks := range keys[i] {
			for j, k := range ks {
				if slices.Contains(ks[:j], k) {
					return cfgerr.Errorf(fmt.Sprintf("filter_chains[%d].filter_chain_match.%s", i, matchLevels[l].field),
						"%s %q is listed twice: the chain overlaps itself, which Envoy rejects (multiple filter chains with overlapping matching rules)",
						matchLevels[l].what, k)
				}
			}
		}
		for j := range i {
			shared, ok := sharedKeys(&keys[j], &keys[i])
			if !ok {
				continue
			}
			return cfgerr.Errorf(fmt.Sprintf("filter_chains[%d].filter_chain_match", i),
				"overlaps %s: %s would match both, and Envoy rejects overlapping matching rules (multiple filter chains with overlapping matching rules are defined)",
				chainLabel(chains[j], j), describeShared(&shared))
		}
	}
	return nil
}

// sharedKeys returns a combination of keys a and b share, one per level, and
// whether there is one.
func sharedKeys(a, b *matchKeys) (shared [len(matchLevels)]string, ok bool) {
	for l := range a {
		i := slices.IndexFunc(a[l], func(k string) bool { return slices.Contains(b[l], k) })
		if i < 0 {
			return shared, false
		}
		shared[l] = a[l][i]
	}
	return shared, true
}

// describeShared describes the connections a combination of keys stands for.
func describeShared(shared *[len(matchLevels)]string) string {
	var parts []string
	for l, k := range shared {
		if k != "" {
			if l == 2 && strings.HasPrefix(k, ".") {
				k = "*" + k
			}
			parts = append(parts, fmt.Sprintf("%s %q", matchLevels[l].what, k))
		}
	}
	if len(parts) == 0 {
		return "any connection (neither constrains anything)"
	}
	return "a connection with " + strings.Join(parts, ", ")
}

// chainLabel names the i-th chain in messages: its index and, if it has one,
// its name.
func chainLabel(ch *FilterChain, i int) string {
	if ch.Name != "" {
		return fmt.Sprintf("filter_chains[%d] (%q)", i, ch.Name)
	}
	return fmt.Sprintf("filter_chains[%d]", i)
}
