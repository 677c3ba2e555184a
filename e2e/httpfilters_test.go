package e2e

import (
	"fmt"
	nethttp "net/http"
	"strings"
	"testing"
)

// TestHTTPFilters runs the built-in HTTP filters in one chain in front of
// the router, through the real binary, with a static runtime layer that the
// filters read: fault injection switched on by the runtime, RBAC denying a
// header, a local rate limit, and CORS preflights answered by skiff (the
// policy given as the filter's own config; e2e/perfilter_test.go gives it
// per route).
func TestHTTPFilters(t *testing.T) {
	t.Parallel()
	echo := httpBackend(t, echoHTTP("a"))
	cfg := fmt.Sprintf(`node: { id: e2e-http-filters, cluster: e2e }
layered_runtime:
  layers:
  - name: static
    static_layer:
      # Config says 0%%; the runtime says every matching request aborts.
      fault.http.abort.abort_percent: 100
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
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
              allow_origin_string_match: [{ exact: "https://app.example" }]
              allow_methods: "GET, PUT"
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
              headers: [{ name: x-fault, present_match: true }]
              abort: { http_status: 418, percentage: { numerator: 0 } }
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: limited
              token_bucket: { max_tokens: 3, tokens_per_fill: 1, fill_interval: 3600s }
              filter_enabled: { default_value: { numerator: 100 } }
              filter_enforced: { default_value: { numerator: 100 } }
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
%s`, staticCluster("echo", false, echo))
	p := startSkiff(t, cfg)
	base := "http://" + p.Addr(t, "http")
	c := h1Client(t)

	// Filters ahead of the rate limit answer without taking a token.
	resp, body := doGet(t, c, base+"/x", "x-evil", "1")
	if resp.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("rbac: %d %q", resp.StatusCode, body)
	}
	resp, _ = doGet(t, c, base+"/x", "x-fault", "1")
	if resp.StatusCode != 418 {
		t.Errorf("fault switched on by the runtime layer: got %d, want 418", resp.StatusCode)
	}
	req, _ := nethttp.NewRequest("OPTIONS", base+"/x", nil)
	req.Header.Set("origin", "https://app.example")
	req.Header.Set("access-control-request-method", "PUT")
	pre, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pre.Body.Close()
	if pre.StatusCode != 200 || pre.Header.Get("access-control-allow-origin") != "https://app.example" ||
		!strings.Contains(pre.Header.Get("access-control-allow-methods"), "PUT") {
		t.Errorf("cors preflight: %d %v", pre.StatusCode, pre.Header)
	}

	// Three tokens, then 429s.
	for i := range 5 {
		resp, body := doGet(t, c, base+"/x", "origin", "https://app.example")
		want := 200
		if i >= 3 {
			want = 429
		}
		if resp.StatusCode != want {
			t.Errorf("request %d: %d, want %d", i, resp.StatusCode, want)
		}
		if want == 200 && resp.Header.Get("access-control-allow-origin") != "https://app.example" {
			t.Errorf("request %d: no CORS headers on the actual response: %v", i, resp.Header)
		}
		if want == 429 && body != "local_rate_limited" {
			t.Errorf("request %d: 429 with body %q, want Envoy's local_rate_limited", i, body)
		}
	}
}
