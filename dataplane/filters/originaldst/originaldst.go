// Package originaldst is the listener filter envoy.filters.listener.original_dst:
// it restores a connection's original destination, the address the client
// connected to before an iptables (or nftables) REDIRECT or DNAT sent it to
// the listener, from the kernel's connection tracking (SO_ORIGINAL_DST, and
// IP6T_SO_ORIGINAL_DST for IPv6). The connection's Local becomes that address
// and is marked restored: filter chains match on it, ORIGINAL_DST clusters
// connect to it, and a listener with use_original_dst hands the connection to
// the listener bound there. A connection the kernel did not redirect keeps its
// address, not marked restored, as in Envoy.
package originaldst

import (
	"context"

	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.listener.original_dst"

// Factory builds original_dst filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &originaldstv3.OriginalDst{} }

// Create implements filter.ListenerFactory.
func (Factory) Create(m proto.Message, _ *filter.Context) (filter.ListenerFilter, error) {
	// traffic_direction matters on Windows only.
	if err := cfgerr.OnlyFields(m, "traffic_direction"); err != nil {
		return nil, err
	}
	return Filter{}, nil
}

// Filter is a built original_dst filter.
type Filter struct{}

// OnAccept implements filter.ListenerFilter.
func (Filter) OnAccept(_ context.Context, c *filter.Conn) error {
	c.RestoreOriginalDst()
	return nil
}
