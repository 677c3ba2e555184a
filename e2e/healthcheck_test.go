package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// TestActiveHealthCheck: a cluster's http_health_check, from an Envoy
// bootstrap, keeps requests away from the host whose health check fails,
// from the first request on, and sends them there again once it passes; the
// checks show in the stats.
func TestActiveHealthCheck(t *testing.T) {
	t.Parallel()
	var sick atomic.Bool
	sick.Store(true)
	backend := func(name string, sick *atomic.Bool) string {
		var checked atomic.Bool
		return httpBackend(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			if r.URL.Path == "/healthz" {
				if !checked.Swap(true) {
					// A slow first check: were skiff to accept before the
					// first round of checks is in, the first requests would
					// meet both hosts unproven, the balancer in panic using
					// them all.
					time.Sleep(300 * time.Millisecond)
				}
				if sick.Load() {
					w.WriteHeader(nethttp.StatusServiceUnavailable)
				}
				return
			}
			w.Header().Set("x-upstream", name)
		}))
	}
	var never atomic.Bool
	a, b := backend("a", &never), backend("b", &sick)
	endpoint := func(addr string) string {
		host, port, _ := net.SplitHostPort(addr)
		return fmt.Sprintf(`
        - endpoint: { address: { socket_address: { address: %s, port_value: %s } } }`, host, port)
	}
	p := startSkiff(t, fmt.Sprintf(`
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: web }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: web
    connect_timeout: 1s
    health_checks:
    - timeout: 1s
      interval: 0.05s
      no_traffic_interval: 0.05s
      unhealthy_threshold: 1
      healthy_threshold: 2
      http_health_check: { path: /healthz }
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:%s%s
`, endpoint(a), endpoint(b)))
	addr := p.Addr(t, "l")
	client := &nethttp.Client{Timeout: 5 * time.Second}
	ask := func() string {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.Header.Get("x-upstream")
	}
	// The listener accepts only once the first round of checks is in (as
	// Envoy's warming waits for it): the very first requests avoid b.
	for i := range 20 {
		if got := ask(); got != "a" {
			t.Fatalf("request %d went to %q while b fails its health checks", i, got)
		}
	}
	// The admin API says why b is not picked, as Envoy's /clusters does.
	admin := adminv1.NewAdminServiceClient(grpcConn(t, "unix://"+filepath.Join(p.RuntimeDir, "admin.sock")))
	cl, err := admin.ListClusters(rpcCtx(t), &adminv1.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]string{}
	for _, c := range cl.GetClusters() {
		for _, h := range c.GetHosts() {
			flags[h.GetAddress()] = fmt.Sprint(h.GetHealthy(), h.GetHealthFlags())
		}
	}
	if flags[a] != "true []" || flags[b] != "false [failed_active_hc]" {
		t.Errorf("admin ListClusters: host a %q, host b %q; want \"true []\", \"false [failed_active_hc]\"", flags[a], flags[b])
	}
	sick.Store(false)
	waitFor(t, "requests to b again once it passes its checks", func() bool {
		for range 10 {
			if ask() == "b" {
				return true
			}
		}
		return false
	})
	r := runSkiff(t, "stats", "--runtime-dir", p.RuntimeDir, "-o", "json")
	var s fileStats
	if err := json.Unmarshal([]byte(r.stdout), &s); r.code != 0 || err != nil {
		t.Fatalf("skiff stats: exit %d, %v\n%s", r.code, err, r.stderr)
	}
	for _, name := range []string{"cluster.web.health_check.attempt", "cluster.web.health_check.success", "cluster.web.health_check.failure"} {
		if v, ok := s.value(name); !ok || v == 0 {
			t.Errorf("%s = %d (present %v), want > 0", name, v, ok)
		}
	}
	if v, _ := s.value("cluster.web.health_check.healthy"); v != 2 {
		t.Errorf("cluster.web.health_check.healthy = %d, want 2", v)
	}
}
