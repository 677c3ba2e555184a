package listener

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/tcpproxy"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

func testRegistry(t *testing.T) (*filter.Registry, filter.Context) {
	t.Helper()
	reg := filter.NewRegistry()
	if err := reg.RegisterNetwork(tcpproxy.Factory{}); err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	return reg, filter.Context{Logger: slog.New(slog.DiscardHandler), Stats: st, Clusters: upstream.NewManager(st), Buffers: bufpool.New()}
}

func addr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func tcpFilter(t *testing.T) *listenerv3.Filter {
	t.Helper()
	a, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Filter{Name: tcpproxy.Name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}
}

func TestBuildErrors(t *testing.T) {
	reg, fc := testRegistry(t)
	good := func() *listenerv3.Listener {
		return &listenerv3.Listener{
			Name:         "l",
			Address:      addr("127.0.0.1", 0),
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{tcpFilter(t)}}},
		}
	}
	if _, err := Build(good(), reg, fc, nil); err != nil {
		t.Fatalf("good listener: %v", err)
	}
	nonTerminal := &listenerv3.Filter{Name: "x"} // no typed_config
	for _, tc := range []struct {
		name   string
		mutate func(*listenerv3.Listener)
		path   string
	}{
		{"no chains", func(l *listenerv3.Listener) { l.FilterChains = nil }, "filter_chains"},
		{"terminal not last", func(l *listenerv3.Listener) {
			l.FilterChains[0].Filters = append(l.FilterChains[0].Filters, tcpFilter(t))
		}, "filter_chains[0].filters[0]"},
		{"filter without typed_config", func(l *listenerv3.Listener) {
			l.FilterChains[0].Filters = []*listenerv3.Filter{nonTerminal}
		}, "filter_chains[0].filters[0].typed_config"},
		{"transport socket without typed_config", func(l *listenerv3.Listener) {
			l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls"}
		}, "filter_chains[0].transport_socket.typed_config"},
		{"duplicate match", func(l *listenerv3.Listener) {
			l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Filters: []*listenerv3.Filter{tcpFilter(t)}})
		}, "filter_chains[1].filter_chain_match"},
		{"hostname address", func(l *listenerv3.Listener) { l.Address = addr("localhost", 80) }, "address.socket_address.address"},
		{"udp", func(l *listenerv3.Listener) { l.Address.GetSocketAddress().Protocol = corev3.SocketAddress_UDP }, "address.socket_address.protocol"},
		{"same additional address", func(l *listenerv3.Listener) {
			l.Address = addr("127.0.0.1", 8080)
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: addr("127.0.0.1", 8080)}}
		}, "additional_addresses[0].address"},
		{"bind_to_port false on port 0", func(l *listenerv3.Listener) { l.BindToPort = wrapperspb.Bool(false) }, "address.socket_address.port_value"},
		{"bind_to_port false with more addresses", func(l *listenerv3.Listener) {
			l.BindToPort = wrapperspb.Bool(false)
			l.Address = addr("127.0.0.1", 8080)
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: addr("127.0.0.2", 8080)}}
		}, "additional_addresses"},
		{"connection balance", func(l *listenerv3.Listener) {
			l.ConnectionBalanceConfig = &listenerv3.Listener_ConnectionBalanceConfig{}
		}, "connection_balance_config"},
		{"socket option without value", func(l *listenerv3.Listener) {
			l.SocketOptions = []*corev3.SocketOption{{Level: 1, Name: 2}}
		}, "socket_options[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := good()
			tc.mutate(l)
			_, err := Build(l, reg, fc, nil)
			if err == nil {
				t.Fatal("no error")
			}
			if got := cfgerr.PathOf(err); got != tc.path {
				t.Fatalf("error %q at %q, want %q", err, got, tc.path)
			}
		})
	}
}

// TestBuildRejectsOverlappingMatches: as in Envoy, two chains that a
// connection could match equally well (they share a value, or are both
// unconstrained, at every level of the match) make the listener invalid,
// and so does a chain listing a value twice; chains that differ at some
// level are fine.
func TestBuildRejectsOverlappingMatches(t *testing.T) {
	reg, fc := testRegistry(t)
	type fcm = listenerv3.FilterChainMatch
	build := func(ms ...*fcm) error {
		l := &listenerv3.Listener{Name: "l", Address: addr("127.0.0.1", 0)}
		for i, m := range ms {
			l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Name: "fc" + strconv.Itoa(i), FilterChainMatch: m, Filters: []*listenerv3.Filter{tcpFilter(t)}})
		}
		_, err := Build(l, reg, fc, nil)
		return err
	}
	for _, tc := range []struct {
		name string
		ms   []*fcm
		path string
		msg  string // part of the error
	}{
		{"a name in common", []*fcm{{ServerNames: []string{"a.com"}}, {ServerNames: []string{"a.com", "b.com"}}},
			"filter_chains[1].filter_chain_match", `overlaps filter_chains[0] ("fc0"): a connection with server name "a.com" would match both`},
		{"same names in another order", []*fcm{{ServerNames: []string{"a.com", "b.com"}}, {ServerNames: []string{"b.com", "a.com"}}},
			"filter_chains[1].filter_chain_match", `server name "a.com"`},
		{"names differ in case only", []*fcm{{ServerNames: []string{"*.A.com"}}, {ServerNames: []string{"*.a.COM"}}},
			"filter_chains[1].filter_chain_match", `server name "*.a.com"`},
		{"unset and empty match", []*fcm{nil, {}},
			"filter_chains[1].filter_chain_match", "any connection"},
		{"same prefix written twice", []*fcm{
			{PrefixRanges: []*corev3.CidrRange{cidr("10.0.0.0/8")}, TransportProtocol: "tls"},
			{PrefixRanges: []*corev3.CidrRange{{AddressPrefix: "10.1.2.3", PrefixLen: wrapperspb.UInt32(8)}, cidr("192.168.0.0/16")}, TransportProtocol: "tls"}},
			"filter_chains[1].filter_chain_match", `destination prefix "10.0.0.0/8", transport protocol "tls"`},
		{"protocols and ports in common", []*fcm{
			{ApplicationProtocols: []string{"h2", "http/1.1"}, SourcePorts: []uint32{1, 2}},
			{ApplicationProtocols: []string{"http/1.1"}, SourcePorts: []uint32{2, 3}}},
			"filter_chains[1].filter_chain_match", `application protocol "http/1.1", source port "2"`},
		{"a name twice in one chain", []*fcm{{ServerNames: []string{"a.com", "A.com"}}},
			"filter_chains[0].filter_chain_match.server_names", `server name "a.com" is listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := build(tc.ms...)
			if err == nil {
				t.Fatal("no error")
			}
			if got := cfgerr.PathOf(err); got != tc.path || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q at %q, want %q at %q", err, got, tc.msg, tc.path)
			}
		})
	}
	for _, tc := range []struct {
		name string
		ms   []*fcm
	}{
		{"different names", []*fcm{{ServerNames: []string{"a.com"}}, {ServerNames: []string{"b.com"}}, {}}},
		{"name and wildcard", []*fcm{{ServerNames: []string{"a.example.com"}}, {ServerNames: []string{"*.example.com"}}}},
		{"one level tells them apart", []*fcm{
			{ServerNames: []string{"a.com"}, DestinationPort: wrapperspb.UInt32(443)},
			{ServerNames: []string{"a.com"}},
			{ServerNames: []string{"a.com"}, SourceType: listenerv3.FilterChainMatch_EXTERNAL},
			{ServerNames: []string{"a.com"}, SourcePrefixRanges: []*corev3.CidrRange{cidr("10.0.0.0/8")}},
			{ServerNames: []string{"a.com"}, SourcePrefixRanges: []*corev3.CidrRange{cidr("10.0.0.0/16")}},
		}},
		{"transport protocols", []*fcm{{TransportProtocol: "tls", ApplicationProtocols: []string{"h2"}}, {TransportProtocol: "tls", ApplicationProtocols: []string{"http/1.1"}}, {TransportProtocol: "raw_buffer"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := build(tc.ms...); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBuildReusesEqualChains(t *testing.T) {
	reg, fc := testRegistry(t)
	mk := func(port uint32) *listenerv3.Listener {
		return &listenerv3.Listener{Name: "l", Address: addr("127.0.0.1", 0), FilterChains: []*listenerv3.FilterChain{
			{FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port)}, Filters: []*listenerv3.Filter{tcpFilter(t)}},
			{Filters: []*listenerv3.Filter{tcpFilter(t)}},
		}}
	}
	first, err := Build(mk(80), reg, fc, nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Build(mk(81), reg, fc, first)
	if err != nil {
		t.Fatal(err)
	}
	if second.Chains[1] != first.Chains[1] {
		t.Error("the unchanged chain was rebuilt (its connections would drain)")
	}
	if second.Chains[0] == first.Chains[0] {
		t.Error("the changed chain was reused")
	}
}

// TestBuildRebuildsChainsOnListenerChange: as Envoy's
// ListenerImpl::supportUpdateFilterChain decides, only an update confined to
// filter_chains, default_filter_chain and filter_chain_matcher (with at least
// one of filter_chains) keeps the unchanged chains; any other change replaces
// the whole listener, so none of its chains is reused and all of them drain.
// Fields set to their defaults compare equal to unset ones.
func TestBuildRebuildsChainsOnListenerChange(t *testing.T) {
	reg, fc := testRegistry(t)
	mk := func() *listenerv3.Listener {
		return &listenerv3.Listener{Name: "l", Address: addr("127.0.0.1", 0),
			FilterChains: []*listenerv3.FilterChain{
				{FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80)}, Filters: []*listenerv3.Filter{tcpFilter(t)}},
				{Filters: []*listenerv3.Filter{tcpFilter(t)}},
			},
			DefaultFilterChain: &listenerv3.FilterChain{Filters: []*listenerv3.Filter{tcpFilter(t)}},
		}
	}
	first, err := Build(mk(), reg, fc, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*listenerv3.Listener)
		reused int // chains of first that the update keeps
	}{
		{"nothing", func(*listenerv3.Listener) {}, 3},
		{"a filter chain", func(l *listenerv3.Listener) {
			l.FilterChains[0].FilterChainMatch.DestinationPort = wrapperspb.UInt32(81)
		}, 2},
		{"the default chain", func(l *listenerv3.Listener) { l.DefaultFilterChain.Name = "d" }, 2},
		{"empty metadata", func(l *listenerv3.Listener) { l.Metadata = &corev3.Metadata{} }, 3},
		{"per_connection_buffer_limit_bytes", func(l *listenerv3.Listener) {
			l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(32768)
		}, 0},
		{"metadata", func(l *listenerv3.Listener) {
			l.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"x": {}}}
		}, 0},
		{"stat_prefix", func(l *listenerv3.Listener) { l.StatPrefix = "other" }, 0},
		{"listener_filters_timeout", func(l *listenerv3.Listener) {
			l.ListenerFiltersTimeout = durationpb.New(time.Second)
		}, 0},
		{"no filter_chains left", func(l *listenerv3.Listener) { l.FilterChains = nil }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pb := mk()
			tc.mutate(pb)
			next, err := Build(pb, reg, fc, first)
			if err != nil {
				t.Fatal(err)
			}
			reused := 0
			for _, ch := range AllChains(next) {
				if slices.Contains(AllChains(first), ch) {
					reused++
				}
			}
			if reused != tc.reused {
				t.Errorf("%d chains reused, want %d", reused, tc.reused)
			}
		})
	}
}

func sockopt(t *testing.T, ln *net.TCPListener, level, name int) int {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, name) })
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

func TestBindAppliesEnvoySocketSemantics(t *testing.T) {
	// Envoy binds "::" IPv6-only unless ipv4_compat is set; Go's default is
	// dual-stack, so skiff must set IPV6_V6ONLY itself. (Only the wildcard
	// address shows it: Linux makes a socket bound to ::1 IPv6-only anyway.
	// Nothing connects to the socket.)
	for _, compat := range []bool{false, true} {
		ln, err := Bind(SocketSpec{Addr: netip.MustParseAddrPort("[::]:0"), IPv4Compat: compat})
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		got := sockopt(t, ln, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		ln.Close()
		if want := map[bool]int{false: 1, true: 0}[compat]; got != want {
			t.Errorf("ipv4_compat=%v: IPV6_V6ONLY=%d, want %d", compat, got, want)
		}
	}

	rcvbuf := int64(1 << 16)
	keepalive := int64(1)
	spec := SocketSpec{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Options: []SocketOption{
		{Level: unix.SOL_SOCKET, Name: unix.SO_RCVBUF, Int: &rcvbuf, State: corev3.SocketOption_STATE_PREBIND},
		{Level: unix.SOL_SOCKET, Name: unix.SO_KEEPALIVE, Int: &keepalive, State: corev3.SocketOption_STATE_LISTENING},
	}}
	ln, err := Bind(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := sockopt(t, ln, unix.SOL_SOCKET, unix.SO_RCVBUF); got < int(rcvbuf) {
		t.Errorf("SO_RCVBUF = %d, want at least %d", got, rcvbuf)
	}
	if got := sockopt(t, ln, unix.SOL_SOCKET, unix.SO_KEEPALIVE); got != 1 {
		t.Errorf("SO_KEEPALIVE = %d after a STATE_LISTENING option", got)
	}
}

func TestBindPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = Bind(SocketSpec{Addr: taken.Addr().(*net.TCPAddr).AddrPort()})
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("Bind on a taken port: %v", err)
	}
}

func TestSocketTableSharesByKey(t *testing.T) {
	tab := NewSocketTable(slog.New(slog.DiscardHandler))
	first, err := tab.Acquire(SocketSpec{Addr: netip.MustParseAddrPort("127.0.0.1:0")}, "l/0")
	if err != nil {
		t.Fatal(err)
	}
	spec := SocketSpec{Addr: first.Bound}
	tab.Release(first, nil) // frees the port for a fixed-port spec below
	a, err := tab.Acquire(spec, "l/0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := tab.Acquire(spec, "l/0")
	if err != nil {
		t.Fatalf("second Acquire of the same spec: %v (it must share, not rebind)", err)
	}
	if a != b {
		t.Fatal("equal specs got different sockets")
	}
	tab.Release(a, nil)
	if c, err := net.Dial("tcp", spec.Addr.String()); err != nil {
		t.Fatalf("socket closed while still referenced: %v", err)
	} else {
		c.Close()
	}
	tab.Release(b, nil)
	if c, err := net.Dial("tcp", spec.Addr.String()); err == nil {
		c.Close()
		t.Fatal("socket still open after the last Release")
	}
}

// A hot-restart successor gets each port 0 socket back in the listener that
// had it, not in whichever listener with an equal spec asks first.
func TestSocketTableInheritsPortZeroByOwner(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	parent := NewSocketTable(log)
	spec := SocketSpec{Addr: netip.MustParseAddrPort("127.0.0.1:0")}
	bound := map[string]netip.AddrPort{}
	for _, owner := range []string{"a/0", "b/0", "c/0"} {
		s, err := parent.Acquire(spec, owner)
		if err != nil {
			t.Fatal(err)
		}
		defer parent.Release(s, nil)
		bound[owner] = s.Bound
	}
	keys, files, err := parent.HandOut()
	if err != nil {
		t.Fatal(err)
	}
	child := NewSocketTable(log)
	for i := range keys {
		if err := child.Inherit(keys[i], files[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, owner := range []string{"c/0", "a/0", "b/0"} {
		s, err := child.Acquire(spec, owner)
		if err != nil {
			t.Fatal(err)
		}
		defer child.Release(s, nil)
		if s.Bound != bound[owner] {
			t.Errorf("%s got %s back, had %s", owner, s.Bound, bound[owner])
		}
	}
}

type countingHandler struct{ n chan net.Conn }

func (h countingHandler) handle(c net.Conn) { h.n <- c }

// A socket bound but not yet given a handler queues connections (it does not
// accept and close them); its last Release hands what the loop accepted to the
// handler instead of dropping it.
func TestSocketAcceptsOnlyWithAHandler(t *testing.T) {
	tab := NewSocketTable(slog.New(slog.DiscardHandler))
	s, err := tab.Acquire(SocketSpec{Addr: netip.MustParseAddrPort("127.0.0.1:0")}, "l/0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", s.Bound.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a queued connection: %v, want a timeout (not closed)", err)
	}
	h := countingHandler{make(chan net.Conn, 1)}
	s.setHandler(h)
	select {
	case ac := <-h.n:
		ac.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the queued connection was not handed to the handler")
	}
	tab.Release(s, h)
}

// Releasing a socket that never accepted does not wait for a loop.
func TestSocketReleaseWithoutHandler(t *testing.T) {
	tab := NewSocketTable(slog.New(slog.DiscardHandler))
	s, err := tab.Acquire(SocketSpec{Addr: netip.MustParseAddrPort("127.0.0.1:0")}, "l/0")
	if err != nil {
		t.Fatal(err)
	}
	tab.Release(s, nil)
}

// fakeHealth is a filter.ServerHealth the test fails and restores.
type fakeHealth struct{ failed atomic.Bool }

func (h *fakeHealth) HealthCheckFailed() bool { return h.failed.Load() }

// adminHealth is a fakeHealth that is also an AdminHealth.
type adminHealth struct {
	fakeHealth
	admin atomic.Bool
}

func (h *adminHealth) AdminHealthCheckFailed() bool { return h.admin.Load() }

// TestBuildDrainType: the connections of a listener with drain_type DEFAULT
// are to end at their next safe point while the server fails its health
// checks (Envoy's DrainManagerImpl::drainClose); those of a MODIFY_ONLY
// listener are not; and a change of drain_type does not reuse the chains.
func TestBuildDrainType(t *testing.T) {
	reg, fc := testRegistry(t)
	health := new(fakeHealth)
	fc.Server = health
	mk := func(dt listenerv3.Listener_DrainType) *listenerv3.Listener {
		return &listenerv3.Listener{Name: "l", Address: addr("127.0.0.1", 0), DrainType: dt,
			FilterChains:       []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{tcpFilter(t)}}},
			DefaultFilterChain: &listenerv3.FilterChain{Filters: []*listenerv3.Filter{tcpFilter(t)}}}
	}
	def, err := Build(mk(listenerv3.Listener_DEFAULT), reg, fc, nil)
	if err != nil {
		t.Fatal(err)
	}
	modify, err := Build(mk(listenerv3.Listener_MODIFY_ONLY), reg, fc, def)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range AllChains(modify) {
		if slices.Contains(AllChains(def), ch) {
			t.Fatal("a chain was reused across a change of drain_type")
		}
	}
	drainClose := func(cfg *Config) []bool {
		var out []bool
		for _, ch := range AllChains(cfg) {
			out = append(out, ch.Conns().DrainClose())
		}
		return out
	}
	if got := append(drainClose(def), drainClose(modify)...); slices.Contains(got, true) {
		t.Fatalf("DrainClose %v with the server healthy, want false", got)
	}
	health.failed.Store(true)
	if got := drainClose(def); !slices.Equal(got, []bool{true, true}) {
		t.Errorf("DEFAULT listener, health check failed: DrainClose %v, want true", got)
	}
	if got := drainClose(modify); !slices.Equal(got, []bool{false, false}) {
		t.Errorf("MODIFY_ONLY listener, health check failed: DrainClose %v, want false", got)
	}
	health.failed.Store(false)
	if got := drainClose(def); slices.Contains(got, true) {
		t.Errorf("DEFAULT listener, health check ok again: DrainClose %v, want false", got)
	}
	// A server that tells the admin API's failure apart (the dataplane
	// Server) closes connections for that one only, not while it drains.
	draining := &adminHealth{}
	draining.fakeHealth.failed.Store(true)
	fc.Server = draining
	adm, err := Build(mk(listenerv3.Listener_DEFAULT), reg, fc, def)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(AllChains(def), adm.Chains[0]) {
		t.Fatal("a chain was reused although the server's health changed")
	}
	if got := drainClose(adm); slices.Contains(got, true) {
		t.Errorf("server draining, admin health ok: DrainClose %v, want false", got)
	}
	draining.admin.Store(true)
	if got := drainClose(adm); !slices.Equal(got, []bool{true, true}) {
		t.Errorf("admin health check failed: DrainClose %v, want true", got)
	}

	// A drain of a MODIFY_ONLY listener's chain still says yes.
	modify.Chains[0].Conns().Drain()
	if !modify.Chains[0].Conns().DrainClose() {
		t.Error("MODIFY_ONLY listener's drained chain: DrainClose false")
	}
}
