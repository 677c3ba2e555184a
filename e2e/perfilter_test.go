package e2e

import (
	"fmt"
	nethttp "net/http"
	"path/filepath"
	"strings"
	"testing"
)

// perFilterBootstrap is an HTTP listener whose route configuration gives its
// HTTP filters per-route configurations (typed_per_filter_config): a CORS
// policy on the "app" virtual host only, a fault on the /teapot route only,
// RBAC disabled on the /open route, and a second fault filter, disabled by
// default (HttpFilter.disabled), that only the /chaos route enables. ROUTE
// is where a test puts an extra route.
const perFilterBootstrap = `node: { id: e2e-per-filter, cluster: e2e }
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
          http_filters:
          - name: envoy.filters.http.cors
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  deny-evil:
                    permissions: [{ header: { name: x-evil, present_match: true } }]
                    principals: [{ any: true }]
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { http_status: 500, percentage: { numerator: 0 } }
          - name: chaos
            disabled: true
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { http_status: 503, percentage: { numerator: 100 } }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            name: local
            virtual_hosts:
            - name: app
              domains: ["app.example"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ exact: "https://app.example" }]
                  allow_methods: "GET, PUT"
                  expose_headers: "x-app"
                # No HTTP filter takes a Duration; is_optional makes it ignored.
                some.unknown.filter:
                  "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                  is_optional: true
                  config: { "@type": type.googleapis.com/google.protobuf.Duration, value: 1s }
              routes:
              - name: teapot
                match: { prefix: "/teapot" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 418, percentage: { numerator: 100 } }
              - name: open
                match: { prefix: "/open" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.rbac: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }
              - name: chaos
                match: { prefix: "/chaos" }
                route: { cluster: echo }
                typed_per_filter_config:
                  chaos: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {} }
ROUTE              - name: default
                match: { prefix: "/" }
                route: { cluster: echo }
            - name: other
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: echo }
  clusters:
%s`

// TestPerFilterConfig runs per-route filter configurations through the real
// binary: each takes effect on its virtual host or route only.
func TestPerFilterConfig(t *testing.T) {
	t.Parallel()
	echo := httpBackend(t, echoHTTP("a"))
	p := startSkiff(t, fmt.Sprintf(strings.Replace(perFilterBootstrap, "ROUTE", "", 1), staticCluster("echo", false, echo)))
	base := "http://" + p.Addr(t, "http")
	c := h1Client(t)
	const origin = "https://app.example"

	// CORS: the policy of the "app" virtual host, on every route there.
	for _, path := range []string{"/", "/open"} {
		resp, _ := doGet(t, c, base+path, "host", "app.example", "origin", origin)
		if resp.StatusCode != 200 || resp.Header.Get("access-control-allow-origin") != origin || resp.Header.Get("access-control-expose-headers") != "x-app" {
			t.Errorf("app.example%s: %d, CORS headers %v", path, resp.StatusCode, resp.Header)
		}
	}
	req, _ := nethttp.NewRequest("OPTIONS", base+"/", nil)
	req.Host = "app.example"
	req.Header.Set("origin", origin)
	req.Header.Set("access-control-request-method", "PUT")
	pre, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pre.Body.Close()
	if pre.StatusCode != 200 || pre.Header.Get("access-control-allow-origin") != origin || pre.Header.Get("access-control-allow-methods") != "GET, PUT" {
		t.Errorf("preflight to app.example: %d %v", pre.StatusCode, pre.Header)
	}
	// The other virtual host has no policy: the filter does nothing there.
	resp, _ := doGet(t, c, base+"/", "host", "other.example", "origin", origin)
	if resp.StatusCode != 200 || resp.Header.Get("access-control-allow-origin") != "" {
		t.Errorf("other.example: %d, CORS headers %v", resp.StatusCode, resp.Header)
	}

	// Fault: the route's HTTPFault replaces the filter's (which never aborts).
	resp, body := doGet(t, c, base+"/teapot", "host", "app.example")
	if resp.StatusCode != 418 || body != "fault filter abort" {
		t.Errorf("/teapot: %d %q, want the route's fault 418", resp.StatusCode, body)
	}
	resp, _ = doGet(t, c, base+"/", "host", "app.example")
	if resp.StatusCode != 200 {
		t.Errorf("/: %d, want 200 (no fault off the /teapot route)", resp.StatusCode)
	}

	// RBAC: denies x-evil, except on /open where the route disables it.
	resp, body = doGet(t, c, base+"/", "host", "app.example", "x-evil", "1")
	if resp.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("x-evil on /: %d %q, want 403", resp.StatusCode, body)
	}
	resp, _ = doGet(t, c, base+"/open", "host", "app.example", "x-evil", "1")
	if resp.StatusCode != 200 {
		t.Errorf("x-evil on /open: %d, want 200 (rbac disabled on the route)", resp.StatusCode)
	}

	// The chaos fault is disabled by default: it runs on /chaos only.
	resp, _ = doGet(t, c, base+"/chaos", "host", "app.example")
	if resp.StatusCode != 503 {
		t.Errorf("/chaos: %d, want 503 (the route enables the chaos filter)", resp.StatusCode)
	}
	resp, _ = doGet(t, c, base+"/", "host", "other.example")
	if resp.StatusCode != 200 {
		t.Errorf("other.example/: %d, want 200 (the chaos filter is disabled by default)", resp.StatusCode)
	}
}

// TestPerFilterConfigInvalid: an invalid per-filter configuration in the
// bootstrap makes skiff exit non-zero naming the field.
func TestPerFilterConfigInvalid(t *testing.T) {
	t.Parallel()
	const routePath = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[3].typed_per_filter_config"
	for _, tc := range []struct {
		name, route string
		want        []string
	}{
		{"invalid fault", `              - name: broken
                match: { prefix: "/broken" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 700, percentage: { numerator: 100 } }
`, []string{routePath + "[envoy.filters.http.fault].abort.http_status",
			`route "broken" of virtual host "app" of route configuration "local"`}},
		{"no per-route support", `              - name: broken
                match: { prefix: "/broken" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.router: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`, []string{routePath + "[envoy.filters.http.router]", "does not support virtual host or route specific configurations"}},
		{"unknown type", `              - name: broken
                match: { prefix: "/broken" }
                route: { cluster: echo }
                typed_per_filter_config:
                  x: { "@type": type.googleapis.com/google.protobuf.Duration, value: 1s }
`, []string{routePath + "[x]", "google.protobuf.Duration"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := writeFile(t, "bootstrap.yaml", fmt.Sprintf(strings.Replace(perFilterBootstrap, "ROUTE", tc.route, 1),
				staticCluster("echo", false, "127.0.0.1:9")))
			for _, mode := range []string{"serve", "validate"} {
				r := runSkiff(t, "run", "-c", cfg, "--log-encoding", "json", "--runtime-dir", filepath.Join(t.TempDir(), "run"), "--mode", mode)
				if r.code == 0 {
					t.Fatalf("--mode %s: skiff exited 0; stdout:\n%s", mode, r.stdout)
				}
				if !containsAll(r.stderr, append([]string{cfg}, tc.want...)...) {
					t.Errorf("--mode %s: stderr\n%s\nwant it to name the file and contain %q", mode, r.stderr, tc.want)
				}
				if n := boundLines(r.logs); n > 0 {
					t.Errorf("--mode %s: %d listeners were bound before the error", mode, n)
				}
			}
		})
	}
}
