package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/tlstest"
)

// serverCert returns a certificate for name, issued by a CA of its own, and
// a pool that trusts that CA.
func serverCert(t testing.TB, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca := tlstest.NewCA(t, name+" CA")
	return ca.Issue(t, name, name).TLS(t), ca.Pool()
}

// tlsNameHandler is a TLS server with cert that answers each connection with
// its own name and the SNI the client sent, then closes it.
func tlsNameHandler(name string, cert tls.Certificate) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(ioTimeout))
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := s.Handshake(); err != nil {
			return
		}
		fmt.Fprintf(s, "%s (sni %s)", name, s.ConnectionState().ServerName)
		s.Close()
	}
}

// TestTLSPassthroughBySNI: a listener with tls_inspector sends TLS connections
// to the tcp_proxy of the filter chain whose server_names holds their SNI, the
// TLS session running end to end with the backend (passthrough); plain TCP and
// an unknown SNI go to the default chain.
func TestTLSPassthroughBySNI(t *testing.T) {
	t.Parallel()
	certA, poolA := serverCert(t, "a.example")
	certB, poolB := serverCert(t, "b.example")
	upA := startUpstream(t, "127.0.0.1", tlsNameHandler("a.example", certA))
	upB := startUpstream(t, "127.0.0.1", tlsNameHandler("b.example", certB))
	echo := startUpstream(t, "127.0.0.1", echoHandler)
	chain := func(sni, cluster string) string {
		return fmt.Sprintf(`    - filter_chain_match: { server_names: [%q], transport_protocol: tls }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: %s
          cluster: %s
`, sni, cluster, cluster)
	}
	cfg := `static_resources:
  listeners:
  - name: sni
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    listener_filters_timeout: 5s
    filter_chains:
` + chain("a.example", "a") + chain("b.example", "b") + `    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
  clusters:
` + staticCluster("a", false, upA.Addr) + staticCluster("b", false, upB.Addr) + staticCluster("echo", false, echo.Addr)
	p := startSkiff(t, cfg)
	addr := p.Addr(t, "sni")

	for _, tt := range []struct {
		sni  string
		pool *x509.CertPool
		want string
	}{
		{"a.example", poolA, "a.example (sni a.example)"},
		{"b.example", poolB, "b.example (sni b.example)"},
		{"a.example", poolA, "a.example (sni a.example)"},
	} {
		c := dial(t, addr)
		tc := tls.Client(c, &tls.Config{ServerName: tt.sni, RootCAs: tt.pool})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake with %s through skiff: %v", tt.sni, err)
		}
		got, err := io.ReadAll(tc)
		if err != nil && !strings.Contains(err.Error(), "close_notify") {
			t.Fatalf("%s: %v", tt.sni, err)
		}
		if string(got) != tt.want {
			t.Errorf("SNI %s reached %q, want %q", tt.sni, got, tt.want)
		}
		c.Close()
	}

	// Plain TCP goes to the default chain, its first bytes intact.
	c := dial(t, addr)
	if err := echoRoundTrip(c, []byte("plain bytes, no TLS here")); err != nil {
		t.Fatalf("plain TCP through the default chain: %v", err)
	}
	c.Close()

	// An SNI no chain names goes to the default chain too: the echo returns
	// the ClientHello, which is no ServerHello, so the handshake fails.
	c = dial(t, addr)
	tc := tls.Client(c, &tls.Config{ServerName: "c.example", RootCAs: poolA})
	if err := tc.Handshake(); err == nil {
		t.Errorf("handshake with c.example succeeded; want it to reach the echo upstream")
	}
	c.Close()
	if n := echo.accepted.Load(); n != 2 {
		t.Errorf("echo upstream accepted %d connections, want 2", n)
	}
	if a, b := upA.accepted.Load(), upB.accepted.Load(); a != 2 || b != 1 {
		t.Errorf("TLS backends accepted %d and %d connections, want 2 and 1", a, b)
	}
}
