package dataplane

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/dataplane/listener"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func sockAddr(ap netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())},
	}}}
}

func tcpListener(name string, addr netip.AddrPort, cluster string) *listenerv3.Listener {
	cfg, _ := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(addr),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg}}},
		}},
	}
}

func staticCluster(name string, hosts ...netip.AddrPort) *clusterv3.Cluster {
	var eps []*endpointv3.LbEndpoint
	for _, h := range hosts {
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(h)}}})
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment:       &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}},
	}
}

// namedEcho is an upstream that greets each connection with its name and a
// newline, then echoes.
func namedEcho(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.WriteString(c, name+"\n")
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func newTestServer(t testing.TB, drain time.Duration) (*Server, *stats.Store) {
	t.Helper()
	reg, err := filters.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	s := NewServer(Options{Logger: slog.New(slog.DiscardHandler), Registry: reg, Stats: st, DrainTime: drain})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, st
}

func boundAddr(t testing.TB, s *Server, name string) netip.AddrPort {
	t.Helper()
	for _, l := range s.Listeners() {
		if l.Name == name {
			return l.Bound[0]
		}
	}
	t.Fatalf("no listener %q", name)
	return netip.AddrPort{}
}

// dialGreeting connects through the proxy and returns the upstream's name.
func dialGreeting(t *testing.T, addr netip.AddrPort) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading greeting through %s: %v", addr, err)
	}
	return c, r, strings.TrimSpace(line)
}

func echoOnce(t *testing.T, c net.Conn, r *bufio.Reader, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := r.ReadString('\n')
	if err != nil || strings.TrimSpace(got) != msg {
		t.Fatalf("echo: got %q, %v; want %q", got, err, msg)
	}
}

var loopback0 = netip.MustParseAddrPort("127.0.0.1:0")

func TestApplyFilterChainUpdateKeepsSocketAndOldConnections(t *testing.T) {
	a, b := namedEcho(t, "a"), namedEcho(t, "b")
	s, _ := newTestServer(t, 10*time.Second)
	clusters := []*clusterv3.Cluster{staticCluster("a", a), staticCluster("b", b)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "l")
	c1, r1, who := dialGreeting(t, addr)
	if who != "a" {
		t.Fatalf("first connection reached %q, want a", who)
	}

	// Same socket, new filter chain: pointed at cluster b. The listener keeps
	// its socket (and port, though it was chosen by the system).
	l := tcpListener("l", loopback0, "b")
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{l}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	if got := boundAddr(t, s, "l"); got != addr {
		t.Fatalf("listener rebound from %s to %s on a filter-chain-only update", addr, got)
	}
	_, _, who = dialGreeting(t, addr)
	if who != "b" {
		t.Fatalf("new connection reached %q, want b", who)
	}
	// The connection accepted by the old chain drains but keeps working.
	echoOnce(t, c1, r1, "still here")
}

func TestRetiredChainIsClosedAfterDrainTime(t *testing.T) {
	a, b := namedEcho(t, "a"), namedEcho(t, "b")
	s, _ := newTestServer(t, 200*time.Millisecond)
	clusters := []*clusterv3.Cluster{staticCluster("a", a), staticCluster("b", b)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	c1, r1, _ := dialGreeting(t, boundAddr(t, s, "l"))
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "b")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	c1.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r1.ReadByte(); err == nil {
		t.Fatal("connection of the retired chain still open after the drain time")
	} else if errors.Is(err, net.ErrClosed) || isTimeout(err) {
		t.Fatalf("connection not closed by the proxy: %v", err)
	}
}

// TestEmptyRetiredChainLivesOutTheDrainTime: a retired chain with no
// connections is not closed before the drain time ends (Envoy's drain
// sequence keeps draining chains for the whole drain time), since a
// connection its listener accepted just before the update may still join it:
// closed early, it refused that connection unserved (see
// TestListenerBreakingChangeRebindsWithoutRefusing, which hit it about once in
// a hundred runs). Shutdown ends the wait.
func TestEmptyRetiredChainLivesOutTheDrainTime(t *testing.T) {
	a, b := namedEcho(t, "a"), namedEcho(t, "b")
	s, _ := newTestServer(t, time.Hour)
	clusters := []*clusterv3.Cluster{staticCluster("a", a), staticCluster("b", b)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	old := listener.AllChains(s.listeners["l"].Config())
	s.mu.Unlock()
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "b")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the old code closed the empty chain at once
	s.mu.Lock()
	for _, ch := range old {
		if !s.retired[ch] {
			t.Errorf("retired chain %p no longer draining, with an hour of drain time left", ch)
		}
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestApplyUnchangedChainKeepsConnectionsUndrained(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, 100*time.Millisecond)
	snap := &Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: []*clusterv3.Cluster{staticCluster("a", a)}}
	if err := s.Apply(snap); err != nil {
		t.Fatal(err)
	}
	c1, r1, _ := dialGreeting(t, boundAddr(t, s, "l"))
	// A second listener arrives; the first is unchanged (an equal but distinct
	// proto), so its connections must not drain.
	snap2 := &Snapshot{
		Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a"), tcpListener("other", loopback0, "a")},
		Clusters:  []*clusterv3.Cluster{staticCluster("a", a)},
	}
	if err := s.Apply(snap2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // longer than the drain time
	echoOnce(t, c1, r1, "undisturbed")
}

func TestApplyInvalidChangesNothing(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, time.Second)
	good := &Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: []*clusterv3.Cluster{staticCluster("a", a)}}
	if err := s.Apply(good); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "l")

	bad := tcpListener("l2", loopback0, "a")
	bad.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
	err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{bad}, Clusters: good.Clusters})
	var re *ResourceError
	if !errors.As(err, &re) || re.Kind != "listener" || re.Name != "l2" {
		t.Fatalf("got %v, want a ResourceError for listener l2", err)
	}
	if p := cfgerr.PathOf(err); p != "filter_chains[0].filters[0].typed_config" {
		t.Fatalf("error path %q (%v)", p, err)
	}
	if len(s.Listeners()) != 1 {
		t.Fatalf("listeners after a rejected update: %v", s.Listeners())
	}
	_, _, who := dialGreeting(t, addr)
	if who != "a" {
		t.Fatalf("reached %q after a rejected update", who)
	}
}

func TestApplyPortInUseChangesNothing(t *testing.T) {
	a := namedEcho(t, "a")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	s, _ := newTestServer(t, time.Second)
	snap := &Snapshot{
		Listeners: []*listenerv3.Listener{
			tcpListener("free", loopback0, "a"),
			tcpListener("taken", taken.Addr().(*net.TCPAddr).AddrPort(), "a"),
		},
		Clusters: []*clusterv3.Cluster{staticCluster("a", a)},
	}
	err = s.Apply(snap)
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("got %v, want an error naming %s in use", err, taken.Addr())
	}
	if got := s.Listeners(); len(got) != 0 {
		t.Fatalf("listeners after a failed bind: %v", got)
	}
}

func TestRemovedListenerStopsAccepting(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, time.Second)
	cl := []*clusterv3.Cluster{staticCluster("a", a)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: cl}); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "l")
	c1, r1, _ := dialGreeting(t, addr)
	if err := s.Apply(&Snapshot{Clusters: cl}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		c.Close()
		t.Fatal("removed listener still accepts")
	}
	echoOnce(t, c1, r1, "draining but alive")
}

func TestClusterUpdateInPlace(t *testing.T) {
	a, b := namedEcho(t, "a"), namedEcho(t, "b")
	s, st := newTestServer(t, time.Second)
	ls := []*listenerv3.Listener{tcpListener("l", loopback0, "c")}
	if err := s.Apply(&Snapshot{Listeners: ls, Clusters: []*clusterv3.Cluster{staticCluster("c", a)}}); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "l")
	c1, r1, who := dialGreeting(t, addr)
	if who != "a" {
		t.Fatalf("reached %q", who)
	}
	if err := s.Apply(&Snapshot{Listeners: ls, Clusters: []*clusterv3.Cluster{staticCluster("c", b)}}); err != nil {
		t.Fatal(err)
	}
	if _, _, who := dialGreeting(t, addr); who != "b" {
		t.Fatalf("after the endpoint change reached %q, want b", who)
	}
	echoOnce(t, c1, r1, "old host connection untouched")
	if v, _ := st.Value("cluster.c.upstream_cx_total"); v != 2 {
		t.Fatalf("cluster.c.upstream_cx_total = %d, want 2 (counters survive in-place updates)", v)
	}
}

// A connection the listener accepted before Shutdown but that joins its
// filter chain only after (here: a listener filter waits for its first bytes)
// is served, not refused with its request unread.
func TestShutdownServesConnectionStillJoining(t *testing.T) {
	a := namedEcho(t, "a")
	s, st := newTestServer(t, time.Second)
	l := inspectedListener(t, "l", "a")
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{l}, Clusters: []*clusterv3.Cluster{staticCluster("a", a)}}); err != nil {
		t.Fatal(err)
	}
	c := dialPending(t, s, st, "l")
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	time.Sleep(100 * time.Millisecond) // Shutdown has stopped the listener and drained the (empty) chain
	r := bufio.NewReader(c)
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	if greeting, err := r.ReadString('\n'); err != nil || greeting != "a\n" {
		t.Fatalf("greeting %q, %v; want the upstream's: the connection was refused", greeting, err)
	}
	if echo, err := r.ReadString('\n'); err != nil || echo != "hello\n" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	c.Close()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestShutdownClosesWhatIsLeft(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, time.Second)
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: []*clusterv3.Cluster{staticCluster("a", a)}}); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "l")
	c1, r1, _ := dialGreeting(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown with a busy connection and a short deadline returned nil")
	}
	c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r1.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("connection still open after Shutdown: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		c.Close()
		t.Fatal("listener still accepts after Shutdown")
	}
}

func TestListenerBreakingChangeRebindsWithoutRefusing(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, time.Second)
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().(*net.TCPAddr).AddrPort()
	free.Close()

	withRcvbuf := func(n int64) *listenerv3.Listener {
		l := tcpListener("l", addr, "a")
		l.SocketOptions = []*corev3.SocketOption{{Level: 1 /* SOL_SOCKET */, Name: 8 /* SO_RCVBUF */, Value: &corev3.SocketOption_IntValue{IntValue: n}}}
		return l
	}
	cl := []*clusterv3.Cluster{staticCluster("a", a)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{withRcvbuf(65536)}, Clusters: cl}); err != nil {
		t.Fatal(err)
	}

	// Clients connect continuously while the listener is rebound five times
	// with a changed socket option: not one connection may be refused or reset.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []error
	var ok int
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := func() error {
					c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					_, err = bufio.NewReader(c).ReadString('\n')
					return err
				}()
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					ok++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range 5 {
		time.Sleep(30 * time.Millisecond)
		if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{withRcvbuf(int64(131072 + i*65536))}, Clusters: cl}); err != nil {
			t.Fatalf("rebind %d: %v", i, err)
		}
	}
	time.Sleep(30 * time.Millisecond)
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed across the rebinds, first: %v", len(failures), len(failures)+ok, failures[0])
	}
	if ok < 10 {
		t.Fatalf("only %d connections made; the test proves nothing", ok)
	}
	if got := boundAddr(t, s, "l"); got != addr {
		t.Fatalf("listener moved to %s", got)
	}
	// The new option is in effect on the socket now serving.
	s.mu.Lock()
	sock := s.listeners["l"].Sockets()[0]
	s.mu.Unlock()
	if got := sock.IntOption(t, 1, 8); got < 131072+4*65536 {
		t.Fatalf("SO_RCVBUF on the serving socket = %d", got)
	}
}

// TestEDSLoadPolicy: an EDS cluster's hosts share the traffic by the load
// assignment's policy: with overprovisioning_factor 100, priority 0 with one
// host healthy of two takes 50 % (70 % with Envoy's default 140), and a
// DEGRADED host takes only what healthy ones cannot.
func TestEDSLoadPolicy(t *testing.T) {
	s, _ := newTestServer(t, time.Second)
	eds := &clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
	}
	lbe := func(port uint16, h corev3.HealthStatus) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HealthStatus: h, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: sockAddr(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))}}}
	}
	for _, tc := range []struct {
		factor *wrapperspb.UInt32Value
		p0     [2]int // the share of priority 0, in picks of 10000, within
	}{{nil, [2]int{6700, 7300}}, {wrapperspb.UInt32(100), [2]int{4700, 5300}}} {
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{
			{LbEndpoints: []*endpointv3.LbEndpoint{lbe(1, corev3.HealthStatus_HEALTHY), lbe(2, corev3.HealthStatus_UNHEALTHY)}},
			{Priority: 1, LbEndpoints: []*endpointv3.LbEndpoint{lbe(10, corev3.HealthStatus_HEALTHY), lbe(11, corev3.HealthStatus_DEGRADED)}},
		}}
		if tc.factor != nil {
			cla.Policy = &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: tc.factor}
		}
		if err := s.Apply(&Snapshot{Clusters: []*clusterv3.Cluster{eds}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{"c": cla}}); err != nil {
			t.Fatal(err)
		}
		c := s.Clusters().Get("c")
		got := map[uint16]int{}
		for range 10000 {
			got[c.Pick().Addr.Port()]++
		}
		if got[1] < tc.p0[0] || got[1] > tc.p0[1] || got[2] != 0 || got[11] != 0 {
			t.Errorf("overprovisioning_factor %v: picks %v, want priority 0's healthy host in [%d, %d], the rest to port 10", tc.factor, got, tc.p0[0], tc.p0[1])
		}
	}
}
