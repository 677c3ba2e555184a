package client

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/internal/tlstest"
	"github.com/skiffproxy/skiff/xds/resource"
)

// tlsListener is tcpListener terminating TLS with the certificate of the
// SDS secret secret (over ADS).
func tlsListener(name, cluster, secret string) *listenerv3.Listener {
	l := tcpListener(name, loopback0, cluster)
	a, _ := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: secret, SdsConfig: adsSource()}}}})
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
	return l
}

// throughTLS connects to addr over TLS and returns the certificate's
// common name and what the upstream said.
func throughTLS(t *testing.T, addr netip.AddrPort) (cn, said string) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr.String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading through %s: %v", addr, err)
	}
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, string(b)
}

// TestSDSListenerSecret: a listener whose certificate comes by SDS warms
// until the secret comes (the client subscribes to it by name), then serves
// TLS with it; a new version of the secret is used from the next handshake
// on without the listener being modified; a secret that does not load is
// NACKed naming it and its field, and the last good one keeps serving.
func TestSDSListenerSecret(t *testing.T) {
	up := greeter(t, "backend")
	ca := tlstest.NewCA(t, "sds CA")
	first, second := ca.Issue(t, "first", "tls.test"), ca.Issue(t, "second", "tls.test")
	f := newFixture(t, setup{})
	res := full(edsCluster("backend"), assignment("backend", up), tlsListener("tls", "backend", "server-cert"))
	f.cp.Push(res)
	for n := 0; ; n++ {
		if r := f.cp.Request(resource.SecretType, n); strings.Join(r.GetResourceNames(), ",") == "server-cert" {
			break
		}
	}
	time.Sleep(100 * time.Millisecond) // time for the listener to start, were it not warming
	for _, l := range f.dp.Listeners() {
		if l.Name == "tls" {
			t.Fatal("the listener runs before its secret came")
		}
	}

	res[resourcev3.SecretType] = []types.Resource{first.Secret("server-cert")}
	f.cp.Push(res)
	addr := f.listenerAddr("tls")
	if cn, said := throughTLS(t, addr); cn != "first" || said != "backend" {
		t.Fatalf("through the listener: certificate %q, upstream %q", cn, said)
	}
	modified, _ := f.stats.Value("listener_manager.listener_modified")

	res[resourcev3.SecretType] = []types.Resource{second.Secret("server-cert")}
	v := f.cp.Push(res)
	eventually(t, "the rotated certificate served", func() string {
		if cn, _ := throughTLS(t, addr); cn != "second" {
			return "certificate " + cn
		}
		return ""
	})
	if m, _ := f.stats.Value("listener_manager.listener_modified"); m != modified {
		t.Errorf("listener_manager.listener_modified went from %d to %d on a secret's rotation", modified, m)
	}

	// A certificate with another's key.
	res[resourcev3.SecretType] = []types.Resource{tlstest.CertSecret("server-cert", first.CertPEM, second.KeyPEM)}
	bad := f.cp.Push(res)
	nack := f.cp.Request(resource.SecretType, 0)
	for n := 1; nack.GetErrorDetail() == nil; n++ {
		nack = f.cp.Request(resource.SecretType, n)
	}
	if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, `Secret "server-cert": tls_certificate`) || nack.GetVersionInfo() != v {
		t.Fatalf("NACK %q (version %q, want %q after rejecting %q), want it to name the secret and its field", msg, nack.GetVersionInfo(), v, bad)
	}
	if cn, said := throughTLS(t, addr); cn != "second" || said != "backend" {
		t.Fatalf("after the NACK: certificate %q, upstream %q; want the last good one", cn, said)
	}
}

// tlsGreeter is greeter over TLS with cert.
func tlsGreeter(t *testing.T, name string, cert tls.Certificate) netip.AddrPort {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, name)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestSDSClusterSecretOwnSource: a cluster verifying its hosts against a
// CA that comes by SDS from a config source of its own (an
// api_config_source naming a static cluster, as istio-agent's sds-grpc)
// warms until the secret comes, and then originates TLS with it.
func TestSDSClusterSecretOwnSource(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	up := tlsGreeter(t, "over TLS", ca.Issue(t, "backend", "backend.test").TLS(t))
	f := newFixture(t, setup{})
	sds := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{
		ApiConfigSource: &corev3.ApiConfigSource{ApiType: corev3.ApiConfigSource_GRPC, TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "xds"}}}}}}}
	cl := edsCluster("backend")
	a, _ := anypb.New(&tlsv3.UpstreamTlsContext{Sni: "backend.test", CommonTlsContext: &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: sds}}}})
	cl.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
	res := full(cl, assignment("backend", up), tcpListener("plain", loopback0, "backend"))
	f.cp.Push(res)
	r := f.cp.Request(resource.SecretType, 0)
	if strings.Join(r.GetResourceNames(), ",") != "ROOTCA" {
		t.Fatalf("SDS request %v, want ROOTCA", r)
	}
	time.Sleep(100 * time.Millisecond)
	if len(f.dp.Listeners()) != 0 || f.dp.Clusters().Get("backend") != nil {
		t.Fatal("the cluster (or a listener behind it) is in use before its secret came")
	}
	res[resourcev3.SecretType] = []types.Resource{&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: ca.PEM}}}}}}
	f.cp.Push(res)
	if got := through(t, f.listenerAddr("plain")); got != "over TLS" {
		t.Fatalf("through the listener: %q", got)
	}
	if v, _ := f.stats.Value("cluster.backend.ssl.handshake"); v != 1 {
		t.Errorf("cluster.backend.ssl.handshake = %d, want 1", v)
	}
}

// TestSDSDelta: the same over delta ADS: the listener warms until its
// secret comes, serves it, and follows a new version; a delta removal of
// the secret is ignored (the last version keeps serving), as for routes and
// endpoints.
func TestSDSDelta(t *testing.T) {
	up := greeter(t, "backend")
	ca := tlstest.NewCA(t, "sds CA")
	first, second := ca.Issue(t, "first", "tls.test"), ca.Issue(t, "second", "tls.test")
	f := newFixture(t, setup{delta: true})
	res := full(edsCluster("backend"), assignment("backend", up), tlsListener("tls", "backend", "server-cert"))
	f.cp.Push(res)
	f.cp.DeltaRequest(resource.SecretType, 0)
	res[resourcev3.SecretType] = []types.Resource{first.Secret("server-cert")}
	f.cp.Push(res)
	addr := f.listenerAddr("tls")
	if cn, said := throughTLS(t, addr); cn != "first" || said != "backend" {
		t.Fatalf("through the listener: certificate %q, upstream %q", cn, said)
	}
	res[resourcev3.SecretType] = []types.Resource{second.Secret("server-cert")}
	f.cp.Push(res)
	eventually(t, "the rotated certificate served", func() string {
		if cn, _ := throughTLS(t, addr); cn != "second" {
			return "certificate " + cn
		}
		return ""
	})
	delete(res, resourcev3.SecretType)
	f.cp.Push(res)
	f.waitDeltaRemoval(resource.SecretType, "server-cert")
	if cn, said := throughTLS(t, addr); cn != "second" || said != "backend" {
		t.Fatalf("after the secret's removal: certificate %q, upstream %q; want the last version", cn, said)
	}
}
