package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/internal/stats"
)

func tlsSocket(t testing.TB) *corev3.TransportSocket {
	a, err := anypb.New(&tlsv3.UpstreamTlsContext{Sni: "x", CommonTlsContext: &tlsv3.CommonTlsContext{AlpnProtocols: []string{"istio"}}})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

func rawSocket(t testing.TB) *corev3.TransportSocket {
	a, err := anypb.New(&rawbufferv3.RawBuffer{})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.raw_buffer", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

func listen(t *testing.T) (net.Listener, *endpointv3.Endpoint) {
	t.Helper()
	ln := serveTCP(t, func(net.Conn) {})
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	return ln, &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}}
}

// TestTransportSocketMatches: istiod's clusters choose TLS for endpoints
// labelled tlsMode=istio and raw_buffer for the others. skiff connects to the
// latter and refuses the former with a TransportError and a stat, never
// sending plaintext to a host that expects TLS.
func TestTransportSocketMatches(t *testing.T) {
	_, plain := listen(t)
	_, mtls := listen(t)
	tlsMD, _ := structpb.NewStruct(map[string]any{"tlsMode": "istio"})
	pb := &clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       nil,
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{
			{Name: "tlsMode-istio", Match: tlsMD, TransportSocket: tlsSocket(t)},
			{Name: "tlsMode-disabled", Match: &structpb.Struct{}, TransportSocket: rawSocket(t)},
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: plain}},
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: mtls}, Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{TransportSocketMatchKey: tlsMD}}},
		}}}},
	}
	cfg, err := NewConfig(pb)
	if err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(cfg)})
	cl := m.Get("c")
	hosts := cl.Hosts()
	if len(hosts) != 2 {
		t.Fatalf("%d hosts", len(hosts))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cl.Connect(ctx, hosts[0])
	if err != nil {
		t.Fatalf("raw_buffer host: %v", err)
	}
	c.Close()
	cl.Disconnected(hosts[0])
	_, err = cl.Connect(ctx, hosts[1])
	var te *TransportError
	if !errors.As(err, &te) || !errors.Is(err, ErrTransportUnsupported) || te.Match != "tlsMode-istio" {
		t.Fatalf("TLS host: err %v, want a TransportError for tlsMode-istio", err)
	}
	want := map[string]uint64{
		"cluster.c.upstream_cx_transport_unsupported":  1,
		"cluster.c.upstream_cx_connect_fail":           1,
		"cluster.c.tlsMode-istio.total_match_count":    1,
		"cluster.c.tlsMode-disabled.total_match_count": 1,
	}
	for name, v := range want {
		if got := st.Counter(name).Value(); got != v {
			t.Errorf("%s = %d, want %d", name, got, v)
		}
	}
}

// TestStaticWithoutEndpoints: istiod's BlackHoleCluster is STATIC without a
// load_assignment; as in Envoy it has no hosts.
func TestStaticWithoutEndpoints(t *testing.T) {
	cfg, err := NewConfig(&clusterv3.Cluster{Name: "BlackHoleCluster", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}})
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(stats.NewStore())
	m.Set([]Assignment{Static(cfg)})
	if h := m.Get("BlackHoleCluster").Pick(); h != nil {
		t.Fatalf("picked %v from a cluster without endpoints", h.Addr)
	}
}

// TestLeastRequest: with two hosts, power of two choices never picks the
// busier one when it can see both.
func TestLeastRequest(t *testing.T) {
	c := newCluster(Static(&Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, LBPolicy: clusterv3.Cluster_LEAST_REQUEST, ChoiceCount: 2,
		Endpoints: []Endpoint{{Addr: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 1}, {Addr: netip.MustParseAddrPort("127.0.0.1:2"), Weight: 1}}}), stats.NewStore())
	hs := c.Hosts()
	hs[0].RqActive.Store(5)
	picked := map[*Host]int{}
	for range 1000 {
		picked[c.Pick()]++
	}
	// Both choices land on the busy host a quarter of the time.
	if picked[hs[1]] < 600 || picked[hs[0]] > 400 {
		t.Fatalf("picks %d (busy) / %d (idle)", picked[hs[0]], picked[hs[1]])
	}
}
