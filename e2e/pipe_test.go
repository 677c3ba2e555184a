package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// unixListener listens on a unix socket in a directory of the test's, with
// a path short enough for sun_path.
func unixListener(t *testing.T, name string) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, path
}

// TestPipeEndpoints: clusters whose endpoints are unix sockets (pipe
// addresses, as Envoy proxies to a local app's socket): tcp_proxy copies a
// stream byte for byte with its half-close, and the router sends HTTP
// requests over a kept-alive socket connection; access logs name the host
// by its path.
func TestPipeEndpoints(t *testing.T) {
	t.Parallel()
	echoLn, echoPath := unixListener(t, "echo.sock")
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.UnixConn).CloseWrite()
			}()
		}
	}()
	httpLn, httpPath := unixListener(t, "http.sock")
	srv := &nethttp.Server{Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		fmt.Fprintf(w, "over a unix socket: %s", r.URL.Path)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(httpLn)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	pipeCluster := func(name, path string) string {
		return fmt.Sprintf(`  - name: %s
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: %s
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: %q } } } }] }]
`, name, name, path)
	}
	logPath := filepath.Join(t.TempDir(), "access.log")
	accessLog := func(indent int, tag string) string {
		pad := strings.Repeat(" ", indent)
		return pad + "access_log:\n" + pad + "- name: envoy.access_loggers.file\n" + pad + "  typed_config:\n" +
			pad + "    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n" +
			pad + "    path: " + logPath + "\n" +
			pad + "    log_format: { text_format_source: { inline_string: \"" + tag + " %UPSTREAM_HOST%\\n\" } }\n"
	}
	p := startSkiff(t, `
static_resources:
  listeners:
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
`+accessLog(10, "tcp")+`  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
`+accessLog(10, "http")+`          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: app } }]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
`+pipeCluster("echo", echoPath)+pipeCluster("app", httpPath))

	c, err := net.DialTimeout("tcp", p.Addr(t, "tcp"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if err := echoAll(c.(*net.TCPConn), randomBytes(11, 1<<20)); err != nil {
		t.Fatalf("tcp_proxy to a unix socket: %v", err)
	}

	hc := h1Client(t)
	for i := range 3 {
		resp, body := doGet(t, hc, fmt.Sprintf("http://%s/item/%d", p.Addr(t, "http"), i))
		if resp.StatusCode != 200 || body != fmt.Sprintf("over a unix socket: /item/%d", i) {
			t.Fatalf("GET through the router to a unix socket: %d %q", resp.StatusCode, body)
		}
	}
	c.Close()
	waitFor(t, "the access log lines", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "tcp "+echoPath+"\n") && strings.Count(string(b), "http "+httpPath+"\n") == 3
	})
	r := runSkiff(t, "admin", "--runtime-dir", p.RuntimeDir, "stats")
	for _, want := range []string{"cluster.app.upstream_cx_total: 1", "cluster.app.upstream_rq_total: 3", "cluster.echo.upstream_cx_total: 1"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stats lack %q", want)
		}
	}
}
