package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/internal/statstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ep(addr string, weight uint32, prio uint32, health corev3.HealthStatus) Endpoint {
	return Endpoint{Addr: netip.MustParseAddrPort(addr), Weight: weight, Priority: prio, Health: health}
}

func newTestCluster(eps []Endpoint, policy clusterv3.Cluster_LbPolicy) *Cluster {
	return newCluster(Static(&Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, LBPolicy: policy, Endpoints: eps}), stats.NewStore())
}

func countPicks(c *Cluster, n int) map[string]int {
	got := map[string]int{}
	for range n {
		h := c.Pick()
		if h == nil {
			got["<nil>"]++
			continue
		}
		got[h.Addr.String()]++
	}
	return got
}

func TestRoundRobinIsEven(t *testing.T) {
	c := newTestCluster([]Endpoint{
		ep("127.0.0.1:1", 1, 0, 0), ep("127.0.0.1:2", 1, 0, 0), ep("127.0.0.1:3", 1, 0, 0),
	}, clusterv3.Cluster_ROUND_ROBIN)
	got := countPicks(c, 300)
	for _, a := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"} {
		if got[a] != 100 {
			t.Fatalf("round robin picks: %v, want 100 each", got)
		}
	}
}

func TestWeightedRoundRobinFollowsWeights(t *testing.T) {
	c := newTestCluster([]Endpoint{
		ep("127.0.0.1:1", 5, 0, 0), ep("127.0.0.1:2", 1, 0, 0), ep("127.0.0.1:3", 4, 0, 0),
	}, clusterv3.Cluster_ROUND_ROBIN)
	got := countPicks(c, 1000)
	if got["127.0.0.1:1"] != 500 || got["127.0.0.1:2"] != 100 || got["127.0.0.1:3"] != 400 {
		t.Fatalf("weighted picks: %v, want 500/100/400", got)
	}
	// Smooth: the heavy host never takes more than its share in a short window.
	var run, longest int
	for range 100 {
		if c.Pick().Addr.Port() == 1 {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	if longest > 2 {
		t.Fatalf("weight-5 host picked %d times in a row; smooth WRR interleaves", longest)
	}
}

func TestPriorityAndHealth(t *testing.T) {
	c := newTestCluster([]Endpoint{
		ep("127.0.0.1:1", 1, 0, corev3.HealthStatus_UNHEALTHY),
		ep("127.0.0.1:2", 1, 1, corev3.HealthStatus_HEALTHY),
		ep("127.0.0.1:3", 1, 1, corev3.HealthStatus_UNKNOWN),
		ep("127.0.0.1:4", 1, 2, corev3.HealthStatus_HEALTHY),
		ep("127.0.0.1:5", 1, 1, corev3.HealthStatus_DRAINING),
	}, clusterv3.Cluster_ROUND_ROBIN)
	// Envoy's priority load: priority 0 has no healthy host; priority 1,
	// two of three (the draining one is not), carries min(100, 1.4 × 2/3)
	// = 93 %, priority 2 the other 7 %.
	got := countPicks(c, 10000)
	if p1 := got["127.0.0.1:2"] + got["127.0.0.1:3"]; p1 < 9100 || p1 > 9500 || got["127.0.0.1:4"]+p1 != 10000 {
		t.Fatalf("picks %v: want 93 %% over priority 1's two usable hosts, 7 %% to priority 2", got)
	}
	c.SetEndpoints([]Endpoint{ep("127.0.0.1:1", 1, 0, corev3.HealthStatus_UNHEALTHY)})
	if h := c.Pick(); h != nil {
		t.Fatalf("picked %v from a cluster with no healthy host", h.Addr)
	}
	if v := c.stats.cxNoneHealthy.Value(); v != 1 {
		t.Fatalf("upstream_cx_none_healthy = %d, want 1", v)
	}
}

func TestRandomStaysInPickableSet(t *testing.T) {
	c := newTestCluster([]Endpoint{
		ep("127.0.0.1:1", 3, 0, 0), ep("127.0.0.1:2", 1, 0, 0), ep("127.0.0.1:9", 1, 1, 0),
	}, clusterv3.Cluster_RANDOM)
	got := countPicks(c, 4000)
	if got["127.0.0.1:9"] != 0 || got["127.0.0.1:1"] < 2600 || got["127.0.0.1:1"] > 3400 {
		t.Fatalf("random picks %v: want ~3000/1000 over priority 0", got)
	}
}

func TestSetEndpointsKeepsHosts(t *testing.T) {
	c := newTestCluster([]Endpoint{ep("127.0.0.1:1", 1, 0, 0), ep("127.0.0.1:2", 1, 0, 0)}, clusterv3.Cluster_ROUND_ROBIN)
	before := c.Hosts()[0]
	before.CxTotal.Add(7)
	c.SetEndpoints([]Endpoint{ep("127.0.0.1:1", 3, 0, 0), ep("127.0.0.1:3", 1, 0, 0)})
	after := c.Hosts()[0]
	if after != before || after.CxTotal.Load() != 7 || after.Weight() != 3 {
		t.Fatalf("host 127.0.0.1:1 was replaced or lost its counters (same=%v total=%d weight=%d)", after == before, after.CxTotal.Load(), after.Weight())
	}
	if len(c.Hosts()) != 2 || c.Hosts()[1].Addr.Port() != 3 {
		t.Fatalf("hosts after update: %v", c.Hosts())
	}
}

func TestConnectCountsAndRefusal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	good := ln.Addr().(*net.TCPAddr).AddrPort()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	refusing := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()
	defer ln.Close()

	st := stats.NewStore()
	m := NewManager(st)
	cfg := &Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: []Endpoint{{Addr: good, Weight: 1}, {Addr: refusing, Weight: 1}}}
	m.Set([]Assignment{Static(cfg)})
	c := m.Get("c")
	hosts := c.Hosts()

	conn, err := c.Connect(context.Background(), hosts[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(context.Background(), hosts[1]); !IsRefused(err) {
		t.Fatalf("connect to a closed port: %v, want connection refused", err)
	}
	statstest.Expect(t, st, map[string]int64{
		"cluster.c.upstream_cx_total":        2,
		"cluster.c.upstream_cx_connect_fail": 1,
		"cluster.c.upstream_cx_active":       1,
		// As Envoy's pools count every close: the refused one is the
		// host's.
		"cluster.c.upstream_cx_destroy":        1,
		"cluster.c.upstream_cx_destroy_remote": 1,
		"cluster.c.upstream_cx_destroy_local":  0,
	})
	conn.Close()
	c.Disconnected(hosts[0])
	if v, _ := st.Value("cluster.c.upstream_cx_active"); v != 0 {
		t.Errorf("upstream_cx_active after Disconnected = %d", v)
	}
	if hosts[1].CxConnectFail.Load() != 1 || hosts[0].CxActive.Load() != 0 {
		t.Errorf("host counters: fail=%d active=%d", hosts[1].CxConnectFail.Load(), hosts[0].CxActive.Load())
	}
}

// TestOpen: a connection for a gRPC client of the cluster counts as a
// pool's, under max_connections, and its Close counts its end.
func TestOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg, err := NewConfig(clusterYAML(t, `circuit_breakers: { thresholds: [{ max_connections: 1 }] }`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints = []Endpoint{{Addr: ln.Addr().(*net.TCPAddr).AddrPort(), Weight: 1}}
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(cfg)})
	c := m.Get("c")
	conn, err := c.Open(t.Context(), ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(t.Context(), ConnectOptions{}); err == nil || !strings.Contains(err.Error(), "max_connections") {
		t.Fatalf("a second connection under max_connections 1: %v", err)
	}
	statstest.Expect(t, st, map[string]int64{
		"cluster.c.upstream_cx_total":    1,
		"cluster.c.upstream_cx_active":   1,
		"cluster.c.upstream_cx_overflow": 1,
		"cluster.c.upstream_cx_destroy":  0,
	})
	conn.Close()
	conn.Close() // counted once
	statstest.Expect(t, st, map[string]int64{
		"cluster.c.upstream_cx_active":        0,
		"cluster.c.upstream_cx_destroy":       1,
		"cluster.c.upstream_cx_destroy_local": 1,
	})
	if conn, err = c.Open(t.Context(), ConnectOptions{}); err != nil {
		t.Fatalf("no room after the first connection closed: %v", err)
	}
	conn.Close()
}

// TestOpenOutlivesRemoval: a connection from Open holds its cluster, as a
// pool's does. Removed by CDS while the connection is open (the gRPC access
// log's can last as long as the process), the cluster keeps its stats for
// the connection's close; without the reference the close counted into
// freed slots of the stats file, which the cluster re-added under the same
// name took (its counters went to -1).
func TestOpenOutlivesRemoval(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	st, err := stats.Open(filepath.Join(t.TempDir(), "stats"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	assignment := func() Assignment {
		cfg, err := NewConfig(clusterYAML(t, ``))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Endpoints = []Endpoint{{Addr: ln.Addr().(*net.TCPAddr).AddrPort(), Weight: 1}}
		return Static(cfg)
	}
	m := NewManager(st)
	m.Set([]Assignment{assignment()})
	conn, err := m.Get("c").Open(t.Context(), ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.Set(nil)
	if v, ok := st.Value("cluster.c.upstream_cx_active"); !ok || v != 1 {
		t.Errorf("removed cluster with an open connection: upstream_cx_active %d (there: %t), want 1", v, ok)
	}
	m.Set([]Assignment{assignment()})
	m.Get("c").HTTPStats()
	before := st.Snapshot()
	conn.Close()
	after := st.Snapshot()
	for i := range after {
		if i < len(before) && before[i].Name == after[i].Name && before[i].Value != after[i].Value && !strings.HasPrefix(after[i].Name, "cluster.c.upstream_cx_") {
			t.Errorf("%s changed %d -> %d by the old connection's close", after[i].Name, before[i].Value, after[i].Value)
		}
	}
}

func TestConnectTimeout(t *testing.T) {
	addr := nettest.UnansweredAddr(t)
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(&Config{Name: "c", StatName: "c", ConnectTimeout: 200 * time.Millisecond, Endpoints: []Endpoint{{Addr: addr, Weight: 1}}})})
	c := m.Get("c")
	conn, err := c.Connect(context.Background(), c.Hosts()[0])
	if err == nil {
		conn.Close()
		t.Fatal("connected; want a connect timeout")
	}
	if !errors.Is(err, ErrConnectTimeout) {
		t.Fatalf("got %v, want a connect timeout", err)
	}
	if v, _ := st.Value("cluster.c.upstream_cx_connect_timeout"); v != 1 {
		t.Fatalf("upstream_cx_connect_timeout = %d", v)
	}
	// skiff gave up on it: a local close.
	if l, _ := st.Value("cluster.c.upstream_cx_destroy_local"); l != 1 {
		t.Fatalf("upstream_cx_destroy_local = %d, want 1", l)
	}
}

// TestMaxConnectionsIsTheClusterTotal: the HTTP pools' connections
// (HTTPStats.Conns) and tcp_proxy's (ReserveConnection) count toward one
// max_connections, as in Envoy, where it is the cluster's total; a refusal
// is counted in upstream_cx_overflow.
func TestMaxConnectionsIsTheClusterTotal(t *testing.T) {
	cfg, err := NewConfig(clusterYAML(t, `circuit_breakers: { thresholds: [{ max_connections: 2 }] }`))
	if err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(cfg)})
	c := m.Get("c")
	hs := c.HTTPStats()
	hs.Conns.Add(1) // an HTTP pool's connection
	if !c.ReserveConnection() {
		t.Fatal("no room for a second connection under max_connections 2")
	}
	if c.ReserveConnection() {
		t.Fatal("a third connection under max_connections 2")
	}
	if hs.Conns.Load() != 2 {
		t.Fatalf("the HTTP pools see %d connections, want 2", hs.Conns.Load())
	}
	if v, _ := st.Value("cluster.c.upstream_cx_overflow"); v != 1 || hs.CxOverflow.Value() != 1 {
		t.Fatalf("upstream_cx_overflow = %d (HTTPStats: %d), want 1", v, hs.CxOverflow.Value())
	}
	hs.Conns.Add(-1)
	if !c.ReserveConnection() {
		t.Fatal("no room after the HTTP connection closed")
	}
	c.ReleaseConnection()
	c.ReleaseConnection()
	if hs.Conns.Load() != 0 {
		t.Fatalf("%d connections left", hs.Conns.Load())
	}
}

// TestCircuitBreakerGauges: as Envoy's, each circuit breaker publishes
// circuit_breakers.default.<x>_open (1 while at its limit) and, with
// track_remaining, remaining_<x>, kept up to date as the counts change and
// when the cluster's limits do.
func TestCircuitBreakerGauges(t *testing.T) {
	st := stats.NewStore()
	m := NewManager(st)
	cfg, err := NewConfig(clusterYAML(t, `circuit_breakers: { thresholds: [{ max_connections: 2, max_requests: 1, track_remaining: true }] }`))
	if err != nil {
		t.Fatal(err)
	}
	m.Set([]Assignment{Static(cfg)})
	c := m.Get("c")
	check := func(when string, want map[string]int64) {
		t.Helper()
		for name, v := range want {
			if got, ok := st.Value("cluster.c.circuit_breakers.default." + name); !ok || got != v {
				t.Errorf("%s: %s = %d (exists: %v), want %d", when, name, got, ok, v)
			}
		}
	}
	check("at first", map[string]int64{
		"cx_open": 0, "rq_open": 0, "rq_pending_open": 0, "rq_retry_open": 0, "cx_pool_open": 0,
		"remaining_cx": 2, "remaining_rq": 1, "remaining_pending": DefaultCircuitBreakerLimit, "remaining_retries": DefaultMaxRetries,
	})
	c.ReserveConnection()
	check("one connection", map[string]int64{"cx_open": 0, "remaining_cx": 1})
	c.ReserveConnection()
	c.HTTPStats().Requests.Add(1)
	check("at the limits", map[string]int64{"cx_open": 1, "remaining_cx": 0, "rq_open": 1, "remaining_rq": 0})
	c.ReleaseConnection()
	c.HTTPStats().Requests.Add(-1)
	check("below the limits", map[string]int64{"cx_open": 0, "remaining_cx": 1, "rq_open": 0, "remaining_rq": 1})

	// A new limit applies to the connection still counted.
	cfg, err = NewConfig(clusterYAML(t, `circuit_breakers: { thresholds: [{ max_connections: 1, track_remaining: true }] }`))
	if err != nil {
		t.Fatal(err)
	}
	m.Set([]Assignment{Static(cfg)})
	check("max_connections 1", map[string]int64{"cx_open": 1, "remaining_cx": 0})
	c.ReleaseConnection()

	// Without track_remaining, only the _open gauges.
	cfg, err = NewConfig(clusterYAML(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	NewManager(st).Set([]Assignment{Static(&Config{Name: "d", StatName: "d", Limits: cfg.Limits})})
	if _, ok := st.Value("cluster.d.circuit_breakers.default.cx_open"); !ok {
		t.Error("no cx_open without track_remaining")
	}
	if _, ok := st.Value("cluster.d.circuit_breakers.default.remaining_cx"); ok {
		t.Error("remaining_cx without track_remaining")
	}
}

func TestNewConfigErrors(t *testing.T) {
	base := func() *clusterv3.Cluster {
		return &clusterv3.Cluster{
			Name:                 "c",
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}}}}}},
			}}},
		}
	}
	if cfg, err := NewConfig(base()); err != nil || len(cfg.Endpoints) != 1 || cfg.ConnectTimeout != DefaultConnectTimeout {
		t.Fatalf("good cluster: %v %+v", err, cfg)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*clusterv3.Cluster)
		path   string
	}{
		{"hostname endpoint", func(c *clusterv3.Cluster) {
			c.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().Address = "example.com"
		}, "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"},
		{"ORIGINAL_DST without CLUSTER_PROVIDED", func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}
			c.LoadAssignment = nil
		}, "lb_policy"},
		{"ORIGINAL_DST with a load assignment", func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}
			c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
		}, "load_assignment"},
		{"ORIGINAL_DST metadata key", func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}
			c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
			c.LoadAssignment = nil
			c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{MetadataKey: &metadatav3.MetadataKey{Key: "k", Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: "a"}}}}}}
		}, "original_dst_lb_config.metadata_key"},
		{"cleanup_interval on STATIC", func(c *clusterv3.Cluster) { c.CleanupInterval = durationpb.New(time.Second) }, "cleanup_interval"},
		{"EDS without a source", func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
			c.LoadAssignment = nil
		}, "eds_cluster_config.eds_config"},
		{"EDS with inline endpoints", func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
			c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
		}, "load_assignment"},
		{"unknown protocol options", func(c *clusterv3.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": {TypeUrl: "type.googleapis.com/envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"}}
		}, "typed_extension_protocol_options[envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions]"},
		{"upstream filters without a registry", func(c *clusterv3.Cluster) {
			c.Filters = []*clusterv3.Filter{{Name: "x"}}
		}, "filters[0]"},
		{"TLS transport socket by SDS", func(c *clusterv3.Cluster) {
			c.TransportSocket = upstreamTLS(t, func(pb *tlsv3.UpstreamTlsContext) {
				pb.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{
					Name: "ROOTCA", SdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}
			})
		}, "transport_socket.typed_config.common_tls_context.validation_context_sds_secret_config.sds_config"},
		{"unknown transport socket", func(c *clusterv3.Cluster) {
			c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{{Name: "m", TransportSocket: &corev3.TransportSocket{
				Name: "x", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/x.Y"}}}}}
		}, "transport_socket_matches[0].transport_socket.typed_config"},
		{"least request config without LEAST_REQUEST", func(c *clusterv3.Cluster) {
			c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{}}
		}, "least_request_lb_config"},
		{"cluster provided", func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED }, "lb_policy"},
		{"health check without timeout", func(c *clusterv3.Cluster) { c.HealthChecks = []*corev3.HealthCheck{{}} }, "health_checks[0].timeout"},
		{"outlier detection monitors", func(c *clusterv3.Cluster) {
			c.OutlierDetection = &clusterv3.OutlierDetection{Monitors: []*corev3.TypedExtensionConfig{{Name: "x", TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/x.Y"}}}}
		}, "outlier_detection.monitors"},
		{"max ejection time below base", func(c *clusterv3.Cluster) {
			c.OutlierDetection = &clusterv3.OutlierDetection{BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionTime: durationpb.New(time.Second)}
		}, "outlier_detection.max_ejection_time"},
		{"zero connect timeout", func(c *clusterv3.Cluster) { c.ConnectTimeout = durationpb.New(0) }, "connect_timeout"},
		{"bind config freebind", func(c *clusterv3.Cluster) {
			c.UpstreamBindConfig = &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{Address: "127.0.0.6", PortSpecifier: &corev3.SocketAddress_PortValue{}}, Freebind: wrapperspb.Bool(true)}
		}, "upstream_bind_config.freebind"},
		{"bind config hostname", func(c *clusterv3.Cluster) {
			c.UpstreamBindConfig = &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{Address: "localhost", PortSpecifier: &corev3.SocketAddress_PortValue{}}}
		}, "upstream_bind_config.source_address.address"},
		{"zero weight", func(c *clusterv3.Cluster) {
			c.LoadAssignment.Endpoints[0].LbEndpoints[0].LoadBalancingWeight = wrapperspb.UInt32(0)
		}, "load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(c)
			_, err := NewConfig(c)
			if err == nil {
				t.Fatal("no error")
			}
			if got := cfgerr.PathOf(err); got != tc.path {
				t.Fatalf("error %q at %q, want path %q", err, got, tc.path)
			}
		})
	}
}

func TestRemovedClusterReleasesItsStatsAfterLastUser(t *testing.T) {
	st := stats.NewStore()
	m := NewManager(st)
	cfg := &Config{Name: "gone", StatName: "gone", ConnectTimeout: time.Second}
	m.Set([]Assignment{Static(cfg)})
	c := m.Get("gone")
	if !c.Acquire() {
		t.Fatal("Acquire of a live cluster failed")
	}
	c.stats.cxTotal.Inc()
	m.Set(nil) // removed while a connection still uses it
	if _, ok := st.Value("cluster.gone.upstream_cx_total"); !ok {
		t.Fatal("stats of a removed cluster vanished while it was still in use")
	}
	c.Release()
	if _, ok := st.Value("cluster.gone.upstream_cx_total"); ok {
		t.Fatal("stats of a removed, unused cluster are still held")
	}
	if c.Acquire() {
		t.Fatal("Acquire succeeded on a released cluster")
	}
	// Churn: many clusters come and go; the store does not keep them.
	for i := range 200 {
		name := fmt.Sprintf("churn-%d", i)
		m.Set([]Assignment{Static(&Config{Name: name, StatName: name, ConnectTimeout: time.Second})})
	}
	m.Set(nil)
	for _, s := range st.Snapshot() {
		if strings.HasPrefix(s.Name, "cluster.churn-") {
			t.Fatalf("stat %s of a removed cluster is still held", s.Name)
		}
	}
}

// TestFailureReason: a connect error's errno is in words, as the C
// library's strerror (and so Envoy) gives it.
func TestFailureReason(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("dial: %w", syscall.ECONNREFUSED): "delayed connect error: Connection refused",
		syscall.EHOSTUNREACH:                         "delayed connect error: No route to host",
		fmt.Errorf("x: %w", ErrConnectTimeout):       "connect timeout",
	} {
		if got := FailureReason(err); got != want {
			t.Errorf("FailureReason(%v) = %q, want %q", err, got, want)
		}
	}
}

// TestUpstreamBindConfig: upstream_bind_config's source_address is the
// local address of the cluster's connections (istiod gives inbound clusters
// 127.0.0.6, so that their traffic is told apart from the application's).
func TestUpstreamBindConfig(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pb := clusterYAML(t, "upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 } }")
	cfg, err := NewConfig(pb)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints = []Endpoint{{Addr: ln.Addr().(*net.TCPAddr).AddrPort(), Weight: 1}}
	c := newCluster(Static(cfg), stats.NewStore())
	conn, err := c.Connect(context.Background(), c.Hosts()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if from := got.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); from != netip.MustParseAddr("127.0.0.6") {
		t.Errorf("upstream connection from %v, want 127.0.0.6", from)
	}
}
