package hcm_test

import (
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/h2spectest"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

func routeTable(t testing.TB, y string) *route.Table {
	t.Helper()
	var rc routev3.RouteConfiguration
	if err := protoyaml.Unmarshal([]byte(y), &rc); err != nil {
		t.Fatal(err)
	}
	tb, err := route.Compile(&rc, route.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestRDS(t *testing.T) {
	blue := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "blue") }))
	green := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "green") }))
	cfg := `
stat_prefix: ingress
rds: { route_config_name: web, config_source: { ads: {} } }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "blue", false, blue), cluster(t, "green", false, green))
	c := h1Client(t)
	// No route configuration yet: 404.
	if resp, _ := get(t, c, "http://"+e.addr+"/"); resp.StatusCode != 404 {
		t.Errorf("before RDS: %d", resp.StatusCode)
	}
	to := func(cl string) *route.Table {
		return routeTable(t, fmt.Sprintf(`
name: web
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: %s }
`, cl))
	}
	e.routes.Set(map[string]*route.Table{"web": to("blue")})
	if _, body := get(t, c, "http://"+e.addr+"/"); body != "blue" {
		t.Errorf("after RDS: %q", body)
	}
	e.routes.Set(map[string]*route.Table{"web": to("green")})
	if _, body := get(t, c, "http://"+e.addr+"/"); body != "green" {
		t.Errorf("after the update: %q", body)
	}
	e.waitStat("http.ingress.downstream_cx_total", 1) // the same connection throughout

	// Weighted clusters split the traffic.
	e.routes.Set(map[string]*route.Table{"web": routeTable(t, `
name: web
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { weighted_clusters: { clusters: [{ name: blue, weight: 1 }, { name: green, weight: 1 }] } }
`)})
	seen := map[string]int{}
	for range 100 {
		_, body := get(t, c, "http://"+e.addr+"/")
		seen[body]++
	}
	if seen["blue"] < 20 || seen["green"] < 20 {
		t.Errorf("weighted split %v", seen)
	}
}

func TestRoutingByHeadersAndPath(t *testing.T) {
	a := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "a") }))
	b := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "b") }))
	cfg := `
stat_prefix: ingress
route_config:
  virtual_hosts:
  - name: api
    domains: ["api.example.com", "*.api.example.com"]
    routes:
    - match: { prefix: "/", headers: [{ name: x-canary, string_match: { exact: "1" } }] }
      route: { cluster: b }
    - match: { safe_regex: { regex: "/v[0-9]+/.*" } }
      route: { cluster: b }
    - match: { prefix: "/" }
      route: { cluster: a }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "a", false, a), cluster(t, "b", false, b))
	c := h1Client(t)
	for _, tc := range []struct {
		path, host, canary, want string
	}{
		{"/", "api.example.com", "", "a"},
		{"/", "api.example.com", "1", "b"},
		{"/v2/users", "eu.api.example.com", "", "b"},
		{"/users", "eu.api.example.com", "", "a"},
	} {
		_, body := get(t, c, "http://"+e.addr+tc.path, "host", tc.host, "x-canary", tc.canary)
		if body != tc.want {
			t.Errorf("%s %s canary=%q: %q, want %q", tc.host, tc.path, tc.canary, body, tc.want)
		}
	}
}

// TestSteadyStateAllocs checks what BenchmarkProxyH1KeepAlive shows: a
// keep-alive request through the connection manager and the router, on
// both codec sides, allocates nothing.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	rt := proxyRoundTrip(t)
	for range 64 {
		rt()
	}
	if allocs := testing.AllocsPerRun(500, rt); allocs != 0 {
		t.Errorf("%v allocs per proxied request, want 0", allocs)
	}
}

// TestH2spec runs h2spec (tools/h2spec) against the connection manager's
// downstream HTTP/2, through the router to an upstream.
func TestH2spec(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.Copy(io.Discard, r.Body)
		// Slow enough that the streams of 5.1.2's burst are all still open
		// when the one over the limit arrives.
		time.Sleep(20 * time.Millisecond)
		io.WriteString(w, "skiff answers h2spec through its router, with a body long enough for flow control\n")
	}))
	e := newEnv(t, hcmYAML("backend", "codec_type: HTTP2\nhttp2_protocol_options: { max_concurrent_streams: 100 }\n"), cluster(t, "backend", false, up))
	_, port, _ := net.SplitHostPort(e.addr)
	h2spectest.Run(t, port)
}
