// Package listener runs skiff's listeners: the sockets they accept on, the
// listener filters, the choice of a filter chain for each connection, and the
// registry of the connections each filter chain accepted (which is what drain and
// hand-over operate on).
package listener

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// DefaultListenerFiltersTimeout is Envoy's default listener_filters_timeout.
const DefaultListenerFiltersTimeout = 15 * time.Second

// Config is a validated listener: its sockets, listener filters and built filter
// chains. Building a Config touches no socket.
type Config struct {
	Name    string
	Sockets []SocketSpec
	// StatPrefix names the listener's stats: listener.<StatPrefix>.*; by default
	// the address of its first socket as Envoy writes it (127.0.0.1_10000).
	StatPrefix string

	ListenerFilters                  []filter.ListenerFilter
	ListenerFiltersTimeout           time.Duration
	ContinueOnListenerFiltersTimeout bool

	Chains       []*FilterChain
	DefaultChain *FilterChain

	// UseOriginalDst is use_original_dst: a connection whose original
	// destination is restored (implicitly, as by the original_dst listener
	// filter) goes to the listener at that address, if there is one.
	UseOriginalDst bool
	// Unbound, when valid, is the address of a listener with bind_to_port
	// false: it binds no socket (Sockets is for its stat prefix only) and
	// serves the connections use_original_dst listeners hand it.
	Unbound netip.AddrPort

	proto *listenerv3.Listener
}

// Proto returns the listener resource the Config was built from.
func (c *Config) Proto() *listenerv3.Listener { return c.proto }

// Build validates pb and builds its filters through reg. prev, if not nil, is the
// listener's running configuration. If pb changes nothing of it but its filter
// chains (FilterChainOnlyChange), filter chains equal to one of prev's are reused
// as they are, so their connections are not drained by an update that does not
// touch them; any other change rebuilds every chain, so that all of prev's drain
// (Envoy replaces the whole listener then).
func Build(pb *listenerv3.Listener, reg *filter.Registry, fc filter.Context, prev *Config) (*Config, error) {
	if err := cfgerr.OnlyFields(pb,
		"name", "address", "additional_addresses", "stat_prefix", "filter_chains", "default_filter_chain",
		"listener_filters", "listener_filters_timeout", "continue_on_listener_filters_timeout",
		"per_connection_buffer_limit_bytes", "metadata", "drain_type", "transparent", "freebind",
		"socket_options", "tcp_fast_open_queue_length", "traffic_direction", "enable_reuse_port",
		"tcp_backlog_size", "bind_to_port", "ignore_global_conn_limit", "use_original_dst",
		// Envoy's event loop accepts at most this many pending connections per
		// socket event, for fairness between listeners sharing a worker. skiff's
		// accept loop takes one connection per Accept call and hands it to its
		// own goroutine, so it already interleaves as Envoy does with 1 (the
		// value istiod sends); any value is honoured by that behaviour.
		"max_connections_to_accept_per_socket_event",
	); err != nil {
		return nil, err
	}
	if err := cfgerr.Validate(pb); err != nil {
		return nil, err
	}
	if pb.GetName() == "" {
		return nil, cfgerr.Errorf("name", "must not be empty")
	}
	c := &Config{
		Name:                             pb.GetName(),
		ListenerFiltersTimeout:           DefaultListenerFiltersTimeout,
		ContinueOnListenerFiltersTimeout: pb.GetContinueOnListenerFiltersTimeout(),
		proto:                            pb,
	}
	fc.Listener = c.Name
	fc.TrafficDirection = pb.GetTrafficDirection()
	fc.BufferLimit = int(pb.GetPerConnectionBufferLimitBytes().GetValue())

	base, err := baseSpec(pb)
	if err != nil {
		return nil, err
	}
	spec, err := socketSpec(pb.GetAddress(), base)
	if err != nil {
		return nil, cfgerr.Field("address", err)
	}
	c.Sockets = append(c.Sockets, spec)
	c.UseOriginalDst = pb.GetUseOriginalDst().GetValue()
	if pb.BindToPort != nil && !pb.GetBindToPort().GetValue() {
		// Reached only through a use_original_dst listener's hand-over.
		if len(pb.GetAdditionalAddresses()) > 0 {
			return nil, cfgerr.Errorf("additional_addresses", "not supported by skiff on a listener that does not bind")
		}
		if spec.Addr.Port() == 0 {
			return nil, cfgerr.Errorf("address.socket_address.port_value", "a listener that does not bind needs its port (connections are handed to it by their original destination)")
		}
		c.Unbound = spec.Addr
	}
	for i, aa := range pb.GetAdditionalAddresses() {
		if err := cfgerr.OnlyFields(aa, "address"); err != nil {
			return nil, cfgerr.Index("additional_addresses", i, err)
		}
		spec, err := socketSpec(aa.GetAddress(), base)
		if err != nil {
			return nil, cfgerr.Index("additional_addresses", i, cfgerr.Field("address", err))
		}
		c.Sockets = append(c.Sockets, spec)
	}
	for i, s := range c.Sockets {
		for j, o := range c.Sockets[:i] {
			if o.Addr == s.Addr && s.Addr.Port() != 0 {
				return nil, cfgerr.Errorf(SocketPath(i), "%s is also %s", s.Addr, SocketPath(j))
			}
		}
	}
	c.StatPrefix = pb.GetStatPrefix()
	if c.StatPrefix == "" {
		c.StatPrefix = StatAddress(c.Sockets[0].Addr)
	}

	if t := pb.GetListenerFiltersTimeout(); t != nil {
		c.ListenerFiltersTimeout = t.AsDuration() // 0 disables it, as in Envoy
	}
	for i, lf := range pb.GetListenerFilters() {
		f, err := buildListenerFilter(lf, reg, &fc)
		if err != nil {
			return nil, cfgerr.Index("listener_filters", i, err)
		}
		c.ListenerFilters = append(c.ListenerFilters, f)
	}

	if len(pb.GetFilterChains()) == 0 && pb.GetDefaultFilterChain() == nil {
		return nil, cfgerr.Errorf("filter_chains", "a listener needs at least one filter chain or a default_filter_chain")
	}
	var prevChains []*FilterChain
	if prev != nil && FilterChainOnlyChange(prev.proto, pb) {
		prevChains = append(prev.Chains, prev.DefaultChain)
	}
	health := drainHealth(pb.GetDrainType(), fc.Server)
	for i, fcpb := range pb.GetFilterChains() {
		ch, err := buildChain(fcpb, reg, &fc, prevChains, health)
		if err != nil {
			return nil, cfgerr.Index("filter_chains", i, err)
		}
		for j, other := range c.Chains {
			if proto.Equal(other.proto.GetFilterChainMatch(), fcpb.GetFilterChainMatch()) {
				return nil, cfgerr.Errorf(fmt.Sprintf("filter_chains[%d].filter_chain_match", i),
					"same matching rules as filter_chains[%d] (%s); Envoy rejects duplicate matches too", j, describeMatch(fcpb.GetFilterChainMatch()))
			}
		}
		c.Chains = append(c.Chains, ch)
	}
	if err := checkOverlaps(c.Chains); err != nil {
		return nil, err
	}
	if d := pb.GetDefaultFilterChain(); d != nil {
		if m := d.GetFilterChainMatch(); m != nil && proto.Size(m) > 0 { // istiod sends an empty one
			return nil, cfgerr.Errorf("default_filter_chain.filter_chain_match", "the default filter chain must not have a match")
		}
		ch, err := buildChain(d, reg, &fc, prevChains, health)
		if err != nil {
			return nil, cfgerr.Field("default_filter_chain", err)
		}
		c.DefaultChain = ch
	}
	return c, nil
}

// AdminHealth is a filter.ServerHealth that tells the admin API's failure of
// the health checks (Envoy's /healthcheck/fail, skiff admin healthcheck fail)
// apart from its other reasons to fail them, such as a drain. Only the former
// makes Envoy's DEFAULT listeners close their connections (its
// Server::healthCheckFailed is the admin flag alone); a drain acts through
// the drain of the listeners' chains.
type AdminHealth interface {
	AdminHealthCheckFailed() bool
}

// adminOnly is the ServerHealth of the connections of a listener with
// drain_type DEFAULT when the server is an AdminHealth.
type adminOnly struct{ h AdminHealth }

func (a adminOnly) HealthCheckFailed() bool { return a.h.AdminHealthCheckFailed() }

// drainHealth is the server health a listener's connections drain with: with
// drain_type DEFAULT they end at their next safe point while the admin API
// fails the health checks, with MODIFY_ONLY only when their listener or chain
// is changed or removed, or the server drains or restarts. A server that is
// not an AdminHealth is asked HealthCheckFailed.
func drainHealth(t listenerv3.Listener_DrainType, server filter.ServerHealth) filter.ServerHealth {
	if t == listenerv3.Listener_MODIFY_ONLY || server == nil {
		return nil
	}
	if ah, ok := server.(AdminHealth); ok {
		return adminOnly{ah}
	}
	return server
}

// SocketPath is the field path, relative to the listener, of the address of its
// i-th socket: "address" for the first, then the additional addresses.
func SocketPath(i int) string {
	if i == 0 {
		return "address"
	}
	return fmt.Sprintf("additional_addresses[%d].address", i-1)
}

// baseSpec collects the socket settings shared by all of a listener's addresses.
func baseSpec(pb *listenerv3.Listener) (SocketSpec, error) {
	var s SocketSpec
	if v := pb.GetTransparent(); v != nil {
		b := v.GetValue()
		s.Transparent = &b
	}
	if v := pb.GetFreebind(); v != nil {
		b := v.GetValue()
		s.Freebind = &b
	}
	s.FastOpenQueue = int(pb.GetTcpFastOpenQueueLength().GetValue())
	s.Backlog = int(pb.GetTcpBacklogSize().GetValue())
	for i, o := range pb.GetSocketOptions() {
		so, err := socketOption(o)
		if err != nil {
			return s, cfgerr.Index("socket_options", i, err)
		}
		s.Options = append(s.Options, so)
	}
	return s, nil
}

func socketOption(o *corev3.SocketOption) (SocketOption, error) {
	if err := cfgerr.OnlyFields(o, "description", "level", "name", "int_value", "buf_value", "state"); err != nil {
		return SocketOption{}, err
	}
	so := SocketOption{Level: o.GetLevel(), Name: o.GetName(), State: o.GetState()}
	switch v := o.GetValue().(type) {
	case *corev3.SocketOption_IntValue:
		iv := v.IntValue
		so.Int = &iv
	case *corev3.SocketOption_BufValue:
		so.Buf = v.BufValue
	default:
		return so, cfgerr.Errorf("value", "one of int_value or buf_value is required")
	}
	return so, nil
}

func socketSpec(a *corev3.Address, base SocketSpec) (SocketSpec, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return base, cfgerr.Errorf("", "only socket_address listeners are supported (not pipe or envoy_internal_address)")
	}
	if err := cfgerr.OnlyFields(sa, "protocol", "address", "port_value", "ipv4_compat"); err != nil {
		return base, cfgerr.Field("socket_address", err)
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return base, cfgerr.Errorf("socket_address.protocol", "only TCP listeners are supported")
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || ip.Zone() != "" {
		return base, cfgerr.Errorf("socket_address.address", "%q is not an IP address", sa.GetAddress())
	}
	if sa.GetPortValue() > 65535 {
		return base, cfgerr.Errorf("socket_address.port_value", "%d is not a port", sa.GetPortValue())
	}
	base.Addr = netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))
	base.IPv4Compat = sa.GetIpv4Compat()
	return base, nil
}

func buildListenerFilter(lf *listenerv3.ListenerFilter, reg *filter.Registry, fc *filter.Context) (filter.ListenerFilter, error) {
	if err := cfgerr.OnlyFields(lf, "name", "typed_config", "filter_disabled"); err != nil {
		return nil, err
	}
	f, err := reg.ListenerFilter(lf.GetName(), lf.GetTypedConfig(), fc)
	if err != nil || lf.GetFilterDisabled() == nil {
		return f, err
	}
	disabled, err := compilePredicate(lf.GetFilterDisabled())
	if err != nil {
		return nil, cfgerr.Field("filter_disabled", err)
	}
	return disabledWhen{f, disabled}, nil
}

// disabledWhen is a listener filter with filter_disabled: it does not run on
// a connection the predicate matches, as Envoy decides it when the filter's
// turn comes (after the filters before it, original_dst's restoring
// included).
type disabledWhen struct {
	filter.ListenerFilter
	disabled func(*filter.Conn) bool
}

func (d disabledWhen) OnAccept(ctx context.Context, c *filter.Conn) error {
	if d.disabled(c) {
		return nil
	}
	return d.ListenerFilter.OnAccept(ctx, c)
}

// compilePredicate compiles a ListenerFilterChainMatchPredicate: any_match,
// or_match, and_match, not_match and destination_port_range ([start, end)
// of the connection's destination port, the original one if restored).
func compilePredicate(p *listenerv3.ListenerFilterChainMatchPredicate) (func(*filter.Conn) bool, error) {
	set := func(field string, rules []*listenerv3.ListenerFilterChainMatchPredicate) ([]func(*filter.Conn) bool, error) {
		var out []func(*filter.Conn) bool
		for i, r := range rules {
			f, err := compilePredicate(r)
			if err != nil {
				return nil, cfgerr.Index(field+".rules", i, err)
			}
			out = append(out, f)
		}
		return out, nil
	}
	switch r := p.GetRule().(type) {
	case *listenerv3.ListenerFilterChainMatchPredicate_AnyMatch:
		return func(*filter.Conn) bool { return true }, nil // (the proto requires true)
	case *listenerv3.ListenerFilterChainMatchPredicate_OrMatch:
		fs, err := set("or_match", r.OrMatch.GetRules())
		if err != nil {
			return nil, err
		}
		return func(c *filter.Conn) bool {
			for _, f := range fs {
				if f(c) {
					return true
				}
			}
			return false
		}, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_AndMatch:
		fs, err := set("and_match", r.AndMatch.GetRules())
		if err != nil {
			return nil, err
		}
		return func(c *filter.Conn) bool {
			for _, f := range fs {
				if !f(c) {
					return false
				}
			}
			return true
		}, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_NotMatch:
		f, err := compilePredicate(r.NotMatch)
		if err != nil {
			return nil, cfgerr.Field("not_match", err)
		}
		return func(c *filter.Conn) bool { return !f(c) }, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_DestinationPortRange:
		start, end := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		return func(c *filter.Conn) bool {
			p := int32(c.Local.Port())
			return start <= p && p < end
		}, nil
	}
	return nil, cfgerr.Errorf("", "one of any_match, or_match, and_match, not_match, destination_port_range is required")
}

// StatAddress formats an address the way Envoy's listener stat names do:
// 127.0.0.1_10000, [__1]_10000 (':' is not allowed in stat names).
func StatAddress(ap netip.AddrPort) string {
	if ap.Addr().Is4() {
		return fmt.Sprintf("%s_%d", ap.Addr(), ap.Port())
	}
	return fmt.Sprintf("[%s]_%d", strings.ReplaceAll(ap.Addr().String(), ":", "_"), ap.Port())
}
