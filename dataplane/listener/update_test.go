package listener

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestFilterChainOnlyChangeComparesAsEnvoy: the comparison is the one of
// Envoy's ListenerMessageUtil::filterChainOnlyChange (a MessageDifferencer
// with EQUIVALENT and AS_SET): the chain fields are ignored, repeated fields
// are compared regardless of order, and Any by what it holds, not its bytes.
func TestFilterChainOnlyChangeComparesAsEnvoy(t *testing.T) {
	chains := []*listenerv3.FilterChain{{Name: "c"}}
	lf := func(names ...string) []*listenerv3.ListenerFilter {
		var out []*listenerv3.ListenerFilter
		for _, n := range names {
			out = append(out, &listenerv3.ListenerFilter{Name: n})
		}
		return out
	}
	// One SocketAddress, encoded with its fields in two orders.
	part := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	host := part(&corev3.SocketAddress{Address: "h"})
	port := part(&corev3.SocketAddress{PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 1}})
	const url = "type.googleapis.com/envoy.config.core.v3.SocketAddress"
	meta := func(b []byte) *corev3.Metadata {
		return &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{"x": {TypeUrl: url, Value: b}}}
	}
	for _, tc := range []struct {
		name       string
		prev, next *listenerv3.Listener
		want       bool
	}{
		{"chains only", &listenerv3.Listener{Name: "l", FilterChains: chains},
			&listenerv3.Listener{Name: "l", FilterChains: []*listenerv3.FilterChain{{Name: "d"}},
				DefaultFilterChain: &listenerv3.FilterChain{}, FilterChainMatcher: nil}, true},
		{"listener filters reordered", &listenerv3.Listener{FilterChains: chains, ListenerFilters: lf("a", "b")},
			&listenerv3.Listener{FilterChains: chains, ListenerFilters: lf("b", "a")}, true},
		{"listener filters changed", &listenerv3.Listener{FilterChains: chains, ListenerFilters: lf("a", "b")},
			&listenerv3.Listener{FilterChains: chains, ListenerFilters: lf("a", "a")}, false},
		{"Any encoded differently", &listenerv3.Listener{FilterChains: chains, Metadata: meta(append(host, port...))},
			&listenerv3.Listener{FilterChains: chains, Metadata: meta(append(port, host...))}, true},
		{"Any changed", &listenerv3.Listener{FilterChains: chains, Metadata: meta(host)},
			&listenerv3.Listener{FilterChains: chains, Metadata: meta(port)}, false},
		{"no filter_chains", &listenerv3.Listener{DefaultFilterChain: chains[0]},
			&listenerv3.Listener{DefaultFilterChain: chains[0]}, false},
	} {
		if got := FilterChainOnlyChange(tc.prev, tc.next); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
