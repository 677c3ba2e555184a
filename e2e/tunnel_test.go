package e2e

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestTCPOverCONNECT: the two ends of TCP tunneled over HTTP CONNECT, as
// Envoy's configs/encapsulate_in_http*_connect.yaml and
// terminate_http*_connect.yaml set them up, each a skiff: the first's
// tcp_proxy (tunneling_config) sends each connection as a CONNECT over its
// cluster's HTTP/1.1 or HTTP/2 pool to the second, whose connection manager
// terminates the CONNECT (connect_config) to a TCP echo server. Bytes come
// back exact, each end passes on as a half-close, the hostname's
// %COMMAND%s are substituted, and a CONNECT the far end refuses closes the
// connection.
func TestTCPOverCONNECT(t *testing.T) {
	t.Parallel()
	echo := startUpstream(t, "127.0.0.1", echoHandler)
	far := startSkiff(t, fmt.Sprintf(`
static_resources:
  listeners:
  - name: connect
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: connect
          upgrade_configs: [{ upgrade_type: CONNECT }]
          route_config:
            virtual_hosts:
            - name: echo
              domains: ["echo.internal:443", "127.0.0.1:9"]
              routes:
              - match: { connect_matcher: {} }
                route: { cluster: echo, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
%s`, staticCluster("echo", false, echo.Addr)))
	farAddr := far.Addr(t, "connect")

	tunnel := func(name, hostname string, http2 bool) string {
		return fmt.Sprintf(`
  - name: %[1]s
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: %[1]s
          cluster: far_%[3]v
          tunneling_config: { hostname: "%[2]s" }
`, name, hostname, http2)
	}
	near := startSkiff(t, fmt.Sprintf(`
static_resources:
  listeners:%s%s%s%s
  clusters:
%s%s`,
		tunnel("h1", "echo.internal:443", false), tunnel("h2", "echo.internal:443", true),
		tunnel("formatted", "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:9", true), tunnel("refused", "elsewhere:443", true),
		staticCluster("far_false", false, farAddr), staticCluster("far_true", true, farAddr)))

	for _, name := range []string{"h1", "h2", "formatted"} {
		t.Run(name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", near.Addr(t, name), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioTimeout))
			if err := echoAll(c.(*net.TCPConn), randomBytes(7, 1<<20)); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", near.Addr(t, "refused"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		c.Write([]byte("lost"))
		if b, err := io.ReadAll(c); len(b) != 0 {
			t.Errorf("a refused tunnel gave %q (%v), want the connection closed", b, err)
		}
	})
}
