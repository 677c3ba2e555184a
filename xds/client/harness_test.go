package client

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/internal/xdstest"
	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
)

const nodeID = "test-node"

// --- resources ---

func sockAddr(ap netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(time.Second),
	}
}

func assignment(name string, hosts ...netip.AddrPort) *endpointv3.ClusterLoadAssignment {
	var eps []*endpointv3.LbEndpoint
	for _, h := range hosts {
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(h)}}})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}
}

func tcpListener(name string, addr netip.AddrPort, cluster string) *listenerv3.Listener {
	a, _ := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(addr),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a},
		}}}},
	}
}

// --- the client under test ---

type setup struct {
	extraNetworkFilters []filter.NetworkFactory
	rtds                bool // a bootstrap RTDS layer named "dynamic" over ADS
	delta               bool
	perType             bool // per-type api_config_source streams instead of ADS
	edsTimeout          time.Duration
	staticExtra         []*clusterv3.Cluster
	initial             *restartv1.XdsState // a hot-restart parent's state
	noFetchTimeout      bool                // lds_config and cds_config: initial_fetch_timeout 0s (wait forever)
	nodeOnce            bool                // the api_config_source's set_node_on_first_message_only
	onSend              func(proto.Message) // sees every request as the client sends it
}

type fixture struct {
	t       testing.TB
	cp      *xdstest.ControlPlane
	dp      *dataplane.Server
	client  *Client
	stats   *stats.Store
	runtime *runtime.Loader
	cancel  context.CancelFunc
	done    chan struct{}
	ready   chan struct{}
}

func testBootstrap(cpAddr string, s setup) *bootstrapv3.Bootstrap {
	ap := netip.MustParseAddrPort(cpAddr)
	xdsCluster := &clusterv3.Cluster{
		Name:                 "xds",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment:       assignment("xds", ap),
	}
	api := &corev3.ApiConfigSource{
		ApiType:             corev3.ApiConfigSource_GRPC,
		TransportApiVersion: corev3.ApiVersion_V3,
		GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "xds"}}}},
	}
	if s.delta {
		api.ApiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	api.SetNodeOnFirstMessageOnly = s.nodeOnce
	b := &bootstrapv3.Bootstrap{
		Node:            &corev3.Node{Id: nodeID, Cluster: "test"},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: append([]*clusterv3.Cluster{xdsCluster}, s.staticExtra...)},
	}
	if s.rtds {
		b.LayeredRuntime = &bootstrapv3.LayeredRuntime{Layers: []*bootstrapv3.RuntimeLayer{
			{Name: "rtds", LayerSpecifier: &bootstrapv3.RuntimeLayer_RtdsLayer_{RtdsLayer: &bootstrapv3.RuntimeLayer_RtdsLayer{Name: "dynamic", RtdsConfig: adsSource()}}},
		}}
	}
	if s.perType {
		src := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: api}, ResourceApiVersion: corev3.ApiVersion_V3}
		b.DynamicResources = &bootstrapv3.Bootstrap_DynamicResources{LdsConfig: src, CdsConfig: proto.Clone(src).(*corev3.ConfigSource)}
	} else {
		b.DynamicResources = &bootstrapv3.Bootstrap_DynamicResources{AdsConfig: api, LdsConfig: adsSource(), CdsConfig: adsSource()}
	}
	if s.noFetchTimeout {
		b.DynamicResources.LdsConfig.InitialFetchTimeout = durationpb.New(0)
		b.DynamicResources.CdsConfig.InitialFetchTimeout = durationpb.New(0)
	}
	return b
}

func newFixture(t testing.TB, s setup) *fixture {
	t.Helper()
	cp := xdstest.Start(t, "127.0.0.1:0", nodeID)
	return newFixtureWith(t, cp, s)
}

func newFixtureWith(t testing.TB, cp *xdstest.ControlPlane, s setup) *fixture {
	t.Helper()
	b := testBootstrap(cp.Addr(), s)
	reg, err := filters.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	for _, nf := range s.extraNetworkFilters {
		if err := reg.RegisterNetwork(nf); err != nil {
			t.Fatal(err)
		}
	}
	st := stats.NewStore()
	log := slog.New(slog.DiscardHandler)
	dp := dataplane.NewServer(dataplane.Options{Logger: log, Registry: reg, Stats: st, DrainTime: time.Second})
	srcs, err := SourcesFromBootstrap(b)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(b.GetLayeredRuntime())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, cp: cp, dp: dp, stats: st, runtime: rt, done: make(chan struct{}), ready: make(chan struct{})}
	c, err := New(Options{
		Runtime:       rt,
		Stats:         st,
		Node:          b.GetNode(),
		Logger:        log,
		Dataplane:     dp,
		Static:        dataplane.Snapshot{Clusters: b.GetStaticResources().GetClusters()},
		Sources:       srcs,
		Dial:          dialer(b, cp, s.onSend),
		OnInitialized: func() { close(f.ready) },
		Initial:       s.initial,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.client = c
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() {
		defer close(f.done)
		c.Run(ctx)
	}()
	t.Cleanup(f.close)
	return f
}

// dialer is the client's Dialer: NewDialer's, or if onSend is set one to the
// control plane that shows onSend every message the client sends.
func dialer(b *bootstrapv3.Bootstrap, cp *xdstest.ControlPlane, onSend func(proto.Message)) Dialer {
	if onSend == nil {
		return NewDialer(b, "skiff/test", nil)
	}
	return func(*corev3.GrpcService) (*grpc.ClientConn, error) {
		return grpc.NewClient("passthrough:///"+cp.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				cs, err := streamer(ctx, desc, cc, method, opts...)
				return sendHook{cs, onSend}, err
			}))
	}
}

// sendHook shows every message sent on a client stream to a function.
type sendHook struct {
	grpc.ClientStream
	onSend func(proto.Message)
}

func (h sendHook) SendMsg(m any) error {
	if pm, ok := m.(proto.Message); ok {
		h.onSend(proto.Clone(pm))
	}
	return h.ClientStream.SendMsg(m)
}

func (f *fixture) close() {
	f.cancel()
	<-f.done
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	f.dp.Shutdown(ctx)
}

func (f *fixture) waitReady() {
	f.t.Helper()
	select {
	case <-f.ready:
	case <-time.After(20 * time.Second):
		f.t.Fatal("client never initialized")
	}
}

// listenerAddr waits until the data plane runs the named listener and returns
// its bound address.
func (f *fixture) listenerAddr(name string) netip.AddrPort {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range f.dp.Listeners() {
			if l.Name == name {
				return l.Bound[0]
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.t.Fatalf("listener %q never ran", name)
	return netip.AddrPort{}
}

// greeter is an upstream that writes its name on every connection.
func greeter(t testing.TB, name string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.WriteString(c, name)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// through connects to addr and returns what the upstream said.
func through(t testing.TB, addr netip.AddrPort) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading through %s: %v", addr, err)
	}
	return string(b)
}

// eventually retries f until it returns "" or the time is up.
func eventually(t testing.TB, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if last = f(); last == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: %s", what, last)
}
