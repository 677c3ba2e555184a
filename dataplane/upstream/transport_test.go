package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/internal/tlstest"
)

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
	return ln, endpointOf(ln)
}

// endpointOf is the endpoint of a test server's listener.
func endpointOf(ln net.Listener) *endpointv3.Endpoint {
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	return &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}}
}

func upstreamTLS(t testing.TB, configure func(*tlsv3.UpstreamTlsContext)) *corev3.TransportSocket {
	pb := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{}}
	if configure != nil {
		configure(pb)
	}
	a, err := anypb.New(pb)
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

func inlinePEM(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// trusting is an UpstreamTlsContext verifying the server against ca, with
// the SNI sni.
func trusting(ca *tlstest.CA, sni string) func(*tlsv3.UpstreamTlsContext) {
	return func(pb *tlsv3.UpstreamTlsContext) {
		pb.Sni = sni
		pb.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inlinePEM(ca.PEM)}}
	}
}

// countingTLSServer accepts TLS with cert and counts the connections.
func countingTLSServer(t *testing.T, cert *tlstest.Leaf) (net.Listener, *atomic.Int64) {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert.TLS(t)}}
	var n atomic.Int64
	ln := serveTCP(t, func(c net.Conn) {
		n.Add(1)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		sc := tls.Server(c, cfg)
		io.Copy(sc, sc)
	})
	return ln, &n
}

// tlsEchoServer accepts TLS with cert and echoes what it reads.
func tlsEchoServer(t *testing.T, cert *tlstest.Leaf) *endpointv3.Endpoint {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert.TLS(t)}}
	ln := serveTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		sc := tls.Server(c, cfg)
		io.Copy(sc, sc)
	})
	return endpointOf(ln)
}

// TestTransportSocketMatches: istiod's clusters choose TLS for endpoints
// labelled tlsMode=istio and raw_buffer for the others. skiff connects to
// the latter in plaintext and to the former over TLS. A match whose TLS
// context takes its certificate by SDS makes no connection before the
// secret comes (counted as Envoy's upstream_context_secrets_not_ready),
// never one in plaintext, and connects over TLS once it has.
func TestTransportSocketMatches(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh CA")
	_, plain := listen(t)
	mtls := tlsEchoServer(t, ca.Issue(t, "server", "server.test"))
	sdsLn, sdsAccepted := countingTLSServer(t, ca.Issue(t, "server", "server.test"))
	sds := endpointOf(sdsLn)
	tlsMD, _ := structpb.NewStruct(map[string]any{"tlsMode": "istio"})
	sdsMD, _ := structpb.NewStruct(map[string]any{"tlsMode": "sds"})
	pb := &clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{
			{Name: "tlsMode-istio", Match: tlsMD, TransportSocket: upstreamTLS(t, trusting(ca, "server.test"))},
			{Name: "tlsMode-sds", Match: sdsMD, TransportSocket: upstreamTLS(t, func(pb *tlsv3.UpstreamTlsContext) {
				pb.CommonTlsContext.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: &corev3.ConfigSource{
					ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}
			})},
			{Name: "tlsMode-disabled", Match: &structpb.Struct{}, TransportSocket: rawSocket(t)},
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: plain}},
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: mtls}, Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{TransportSocketMatchKey: tlsMD}}},
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: sds}, Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{TransportSocketMatchKey: sdsMD}}},
		}}}},
	}
	store := tlscontext.NewSecretStore(slog.New(slog.DiscardHandler))
	cfg, err := NewConfigWith(pb, Options{Secrets: tlscontext.Secrets{SDS: store}})
	if err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(cfg)})
	cl := m.Get("c")
	hosts := cl.Hosts()
	if len(hosts) != 3 {
		t.Fatalf("%d hosts", len(hosts))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cl.Connect(ctx, hosts[0])
	if err != nil {
		t.Fatalf("raw_buffer host: %v", err)
	}
	if _, ok := c.(*tls.Conn); ok {
		t.Error("raw_buffer host: got a TLS connection")
	}
	c.Close()
	cl.Disconnected(hosts[0])

	c, err = cl.Connect(ctx, hosts[1])
	if err != nil {
		t.Fatalf("TLS host: %v", err)
	}
	tc, ok := c.(*tls.Conn)
	if !ok || tc.ConnectionState().ServerName != "server.test" {
		t.Fatalf("TLS host: got %T, want a *tls.Conn with SNI server.test", c)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("TLS echo: %q, %v", buf, err)
	}
	c.Close()
	cl.Disconnected(hosts[1])

	_, err = cl.Connect(ctx, hosts[2])
	if !errors.Is(err, tlscontext.ErrSecretNotReady) || !strings.Contains(err.Error(), `"default"`) {
		t.Fatalf("SDS host before its secret: err %v, want ErrSecretNotReady naming the secret", err)
	}
	if n := sdsAccepted.Load(); n != 0 {
		t.Fatalf("the SDS host got %d connections before the secret came", n)
	}
	client := ca.Issue(t, "client", "client.test")
	store.Set(map[string]*tlsv3.Secret{"default": {Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inlinePEM(client.CertPEM), PrivateKey: inlinePEM(client.KeyPEM)}}}})
	c, err = cl.Connect(ctx, hosts[2])
	if err != nil {
		t.Fatalf("SDS host once its secret came: %v", err)
	}
	if _, ok := c.(*tls.Conn); !ok {
		t.Fatalf("SDS host: got %T, want a TLS connection", c)
	}
	if _, local := TLSSession(c, hosts[2].Transport()); local == nil || local.Subject.CommonName != "client" {
		t.Errorf("SDS host: the client certificate is %v, want the secret's", local)
	}
	c.Close()
	cl.Disconnected(hosts[2])
	want := map[string]uint64{
		"cluster.c.upstream_cx_total":                                            4,
		"cluster.c.client_ssl_socket_factory.upstream_context_secrets_not_ready": 1,
		"cluster.c.upstream_cx_connect_fail":                                     1,
		"cluster.c.ssl.handshake":                                                2,
		"cluster.c.ssl.versions.TLSv1.2":                                         2,
		"cluster.c.tlsMode-istio.total_match_count":                              1,
		"cluster.c.tlsMode-sds.total_match_count":                                1,
		"cluster.c.tlsMode-disabled.total_match_count":                           1,
	}
	for name, v := range want {
		if got := st.Counter(name).Value(); got != v {
			t.Errorf("%s = %d, want %d", name, got, v)
		}
	}
}

// TestBrokenMatchRefused: a transport_socket_matches entry whose TLS context
// is wrong (not merely SDS) makes the cluster a config error, as in Envoy.
func TestBrokenMatchRefused(t *testing.T) {
	_, err := NewConfig(&clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{{Name: "m", TransportSocket: upstreamTLS(t, func(pb *tlsv3.UpstreamTlsContext) {
			pb.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/nonexistent/ca.pem"}}}}
		})}},
	})
	if want := "transport_socket_matches[0].transport_socket.typed_config.common_tls_context.validation_context.trusted_ca.filename"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("NewConfig: %v, want an error at %s", err, want)
	}
}

// TestUpstreamTLSFailures: a server whose certificate the cluster's
// transport_socket does not trust, and one that never answers the
// ClientHello (connect_timeout covers the handshake), are connect failures
// counted as Envoy counts them.
func TestUpstreamTLSFailures(t *testing.T) {
	ca := tlstest.NewCA(t, "trusted")
	untrusted := tlsEchoServer(t, tlstest.NewCA(t, "stranger").Issue(t, "server", "server.test"))
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	mute := endpointOf(serveTCP(t, func(net.Conn) { <-stall }))
	pb := &clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(200 * time.Millisecond),
		TransportSocket:      upstreamTLS(t, trusting(ca, "server.test")),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: untrusted}},
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: mute}},
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
	ctx := context.Background()
	if _, err := cl.Connect(ctx, hosts[0]); err == nil || !strings.Contains(err.Error(), "TLS handshake") {
		t.Errorf("untrusted server: %v, want a TLS handshake error", err)
	}
	if _, err := cl.Connect(ctx, hosts[1]); !errors.Is(err, ErrConnectTimeout) {
		t.Errorf("mute server: %v, want ErrConnectTimeout", err)
	}
	want := map[string]uint64{
		"cluster.c.upstream_cx_connect_fail":    2,
		"cluster.c.upstream_cx_connect_timeout": 1,
		"cluster.c.ssl.connection_error":        2,
		"cluster.c.ssl.fail_verify_error":       1,
		"cluster.c.ssl.handshake":               0,
		// skiff ended both: a certificate it refused, a timeout.
		"cluster.c.upstream_cx_destroy_local":  2,
		"cluster.c.upstream_cx_destroy_remote": 0,
	}
	for name, v := range want {
		if got := st.Counter(name).Value(); got != v {
			t.Errorf("%s = %d, want %d", name, got, v)
		}
	}
	if hosts[0].CxConnectFail.Load() != 1 || hosts[1].CxConnectFail.Load() != 1 {
		t.Errorf("host connect failures %d, %d; want 1 each", hosts[0].CxConnectFail.Load(), hosts[1].CxConnectFail.Load())
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
