package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHealthCheckFilter: envoy.filters.http.health_check answers a load
// balancer's health checks from skiff itself, 200 while the clusters it
// watches are healthy; `skiff admin healthcheck fail` (Envoy's
// /healthcheck/fail) makes them 503 and marks every response with
// x-envoy-immediate-health-check-fail, `healthcheck ok` undoes it, and a
// graceful drain fails them too. The access log's not_health_check_filter
// leaves the health checks out.
func TestHealthCheckFilter(t *testing.T) {
	t.Parallel()
	echo := httpBackend(t, echoHTTP("a"))
	logPath := filepath.Join(t.TempDir(), "access.log")
	cfg := fmt.Sprintf(`node: { id: e2e-health, cluster: edge-fleet }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          access_log:
          - name: envoy.access_loggers.file
            filter: { not_health_check_filter: {} }
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %q
              log_format: { text_format_source: { inline_string: "%%REQ(:PATH)%% %%RESPONSE_CODE%%\n" } }
          http_filters:
          - name: envoy.filters.http.health_check
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{ name: ":path", string_match: { exact: /healthz } }]
              cluster_min_healthy_percentages: { echo: { value: 100 } }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: default
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: echo }
  clusters:
%s`, logPath, staticCluster("echo", false, echo))
	p := startSkiff(t, cfg, "--drain-time", "30s")
	base := "http://" + p.Addr(t, "http")
	c := h1Client(t)
	admin := func(args ...string) {
		t.Helper()
		if r := runSkiff(t, append([]string{"admin", "--runtime-dir", p.RuntimeDir}, args...)...); r.code != 0 {
			t.Fatalf("skiff admin %v: exit %d\n%s", args, r.code, r.stderr)
		}
	}
	check := func(path string, status int, failHeader string) {
		t.Helper()
		resp, _ := doGet(t, c, base+path)
		if resp.StatusCode != status || resp.Header.Get("x-envoy-immediate-health-check-fail") != failHeader {
			t.Errorf("GET %s: %d, x-envoy-immediate-health-check-fail %q; want %d %q", path, resp.StatusCode,
				resp.Header.Get("x-envoy-immediate-health-check-fail"), status, failHeader)
		}
		if path == "/healthz" && resp.Header.Get("x-envoy-upstream-healthchecked-cluster") != "edge-fleet" {
			t.Errorf("GET /healthz: x-envoy-upstream-healthchecked-cluster %q, want the node's cluster", resp.Header.Get("x-envoy-upstream-healthchecked-cluster"))
		}
		if path != "/healthz" && resp.Header.Get("x-upstream") != "a" {
			t.Errorf("GET %s: not proxied (x-upstream %q)", path, resp.Header.Get("x-upstream"))
		}
	}
	check("/healthz", 200, "")
	check("/app", 200, "")
	admin("healthcheck", "fail")
	check("/healthz", 503, "true")
	check("/app", 200, "true")
	admin("healthcheck", "ok")
	check("/healthz", 200, "")
	admin("drain", "--graceful")
	check("/healthz", 503, "true")

	// Only the two /app requests reach the access log (it is written out
	// every second).
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if got := string(b); got == "/app 200\n/app 200\n" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("access log:\n%s\nwant the two /app requests only", got)
		} else if strings.Contains(got, "/healthz") {
			t.Fatalf("access log has a health check:\n%s", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
