package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/internal/tlstest"
	"github.com/skiffproxy/skiff/internal/xdstest"
)

// TestStaticListenerSDS: a bootstrap without dynamic_resources whose static
// listener takes its certificate by SDS from a static cluster (as a
// bootstrap names istio-agent's sds-grpc): skiff runs an xDS client for it,
// the listener serves TLS with the secret, and a rotated secret is served
// from the next handshake on.
func TestStaticListenerSDS(t *testing.T) {
	t.Parallel()
	const node = "static-sds"
	ca := tlstest.NewCA(t, "sds CA")
	secret := func(cn string) map[resourcev3.Type][]types.Resource {
		return map[resourcev3.Type][]types.Resource{resourcev3.SecretType: {ca.Issue(t, cn, "tls.test").Secret("cert")}}
	}
	sds := xdstest.Start(t, "127.0.0.1:0", node)
	sds.Push(secret("first"))
	echo := startUpstream(t, "127.0.0.1", echoHandler)
	p := startSkiff(t, fmt.Sprintf(`
node: { id: %s }
static_resources:
  listeners:
  - name: tls
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: cert
              sds_config:
                resource_api_version: V3
                api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }] }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tls
          cluster: echo
  clusters:
%s%s`, node, staticCluster("echo", false, echo.Addr), staticCluster("sds-grpc", true, sds.Addr())))
	addr := waitListener(t, p, "tls") // the xDS client applies the static listeners
	served := func() string {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "tls.test"})
		if err != nil {
			return "handshake: " + err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err.Error()
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			return fmt.Sprintf("echo %q, %v", buf, err)
		}
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	waitFor(t, "the SDS certificate served", func() bool { return served() == "first" })
	sds.Push(secret("second"))
	waitFor(t, "the rotated certificate served", func() bool { return served() == "second" })
}

// TestHotRestartKeepsSDSSecrets: a listener whose certificate came by SDS
// keeps serving TLS across a hot restart even when the control plane is
// gone by then: the successor takes the secrets with the rest of its
// parent's xDS state instead of warming again.
func TestHotRestartKeepsSDSSecrets(t *testing.T) {
	t.Parallel()
	ca := tlstest.NewCA(t, "sds CA")
	leaf := ca.Issue(t, "served", "tls.test")
	up := startUpstream(t, "127.0.0.1", nameHandler("behind TLS"))
	cp := xdstest.Start(t, "127.0.0.1:0", xdsNode)
	l := xdsListener("tls", "backend")
	ctx, _ := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "cert", SdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}}})
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx}}
	res := xdsResources(xdsAssignment("backend", up.Addr), l)
	res[resourcev3.SecretType] = []types.Resource{leaf.Secret("cert")}
	cp.Push(res)
	f := startFleet(t, xdsBootstrap(cp.Addr(), false))
	addr := f.addr("tls")
	ask := func() (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "tls.test"})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := ask(); err != nil || got != "behind TLS\n" {
		t.Fatalf("before the restart: %q, %v", got, err)
	}
	cp.Stop()
	f.restart("sighup", f.current())
	for i := range 3 {
		if got, err := ask(); err != nil || got != "behind TLS\n" {
			t.Fatalf("connection %d after the restart, the control plane gone: %q, %v", i, got, err)
		}
	}
}
