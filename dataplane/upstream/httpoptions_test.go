package upstream

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func clusterYAML(t *testing.T, extra string) *clusterv3.Cluster {
	t.Helper()
	var c clusterv3.Cluster
	y := `
name: c
type: STATIC
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } } }] }] }
` + extra
	if err := protoyaml.Unmarshal([]byte(y), &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestHTTPProtocolOptions(t *testing.T) {
	cfg, err := NewConfig(clusterYAML(t, `
circuit_breakers:
  thresholds:
  - { max_connections: 7, max_pending_requests: 0, max_retries: 1 }
  - { priority: HIGH, max_connections: 1 }
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: { idle_timeout: 30s, max_requests_per_connection: 100, max_headers_count: 50 }
    explicit_http_config: { http2_protocol_options: { max_concurrent_streams: 10, initial_stream_window_size: 70000 } }
    upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true, override_auto_sni_header: X-SNI }
`))
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.HTTP
	if !cfg.HTTP2 || h.Idle() != 30*time.Second || h.MaxRequestsPerConnection != 100 || h.MaxHeadersCount != 50 ||
		h.MaxConcurrentStreams != 10 || h.InitialStreamWindowSize != 70000 || !h.AutoSNI || !h.AutoSANValidation || h.AutoSNIHeader != "x-sni" {
		t.Errorf("%+v http2=%v", h, cfg.HTTP2)
	}
	l := cfg.Limits
	if l.Connections() != 7 || l.Pending() != 0 || l.Requests() != DefaultCircuitBreakerLimit || l.Retries() != 1 {
		t.Errorf("limits %+v", l)
	}
	var zero Config
	if zero.HTTP.Idle() != DefaultUpstreamIdleTimeout || zero.Limits.Connections() != DefaultCircuitBreakerLimit || zero.Limits.Retries() != DefaultMaxRetries {
		t.Errorf("defaults")
	}
	trailers, err := NewConfig(clusterYAML(t, `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: { enable_trailers: true } }
`))
	if err != nil || !trailers.HTTP.EnableTrailers || cfg.HTTP.EnableTrailers {
		t.Errorf("enable_trailers: %v, set %v (and %v where not asked)", err, trailers != nil && trailers.HTTP.EnableTrailers, cfg.HTTP.EnableTrailers)
	}
	for extra, path := range map[string]string{
		`circuit_breakers: { thresholds: [{ retry_budget: {} }] }`: "circuit_breakers.thresholds[0]",
		`http_protocol_options: { accept_http_10: true }`:          "http_protocol_options",
		`typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: { max_stream_duration: 1s }
    explicit_http_config: { http_protocol_options: {} }`: "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].common_http_protocol_options",
		`http2_protocol_options: { hpack_table_size: 100 }`: "http2_protocol_options",
		// Negative durations, as Envoy's "Expected positive duration".
		`common_http_protocol_options: { idle_timeout: -1s }`:            "common_http_protocol_options.idle_timeout",
		`common_http_protocol_options: { max_connection_duration: -1s }`: "common_http_protocol_options.max_connection_duration",
		`typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: { idle_timeout: -1s }
    explicit_http_config: { http_protocol_options: {} }`: "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].common_http_protocol_options.idle_timeout",
	} {
		_, err := NewConfig(clusterYAML(t, extra))
		if err == nil || !strings.HasPrefix(cfgerr.PathOf(err), path) {
			t.Errorf("%s: %v (path %q), want path %s", extra, err, cfgerr.PathOf(err), path)
		}
	}
}

func TestHostHostnameAndGone(t *testing.T) {
	m := NewManager(stats.NewStore())
	a := netip.MustParseAddrPort("127.0.0.1:1")
	b := netip.MustParseAddrPort("127.0.0.1:2")
	cfg := &Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: []Endpoint{{Addr: a, Weight: 1, Hostname: "a.example"}, {Addr: b, Weight: 1}}}
	m.Set([]Assignment{Static(cfg)})
	c := m.Get("c")
	ha := c.Hosts()[0]
	if ha.Hostname() != "a.example" || c.Hosts()[1].Hostname() != "" {
		t.Errorf("hostnames %q %q", ha.Hostname(), c.Hosts()[1].Hostname())
	}
	c.SetEndpoints([]Endpoint{{Addr: b, Weight: 1}})
	if !ha.Gone() || c.Hosts()[0].Gone() {
		t.Errorf("a dropped host is not gone, or a kept one is")
	}
	hb := c.Hosts()[0]
	m.Set(nil)
	if !hb.Gone() {
		t.Errorf("a removed cluster's host is not gone")
	}
	hs := c.HTTPStats()
	hs.Response(503)
	hs.Response(503)
	if hs.classes[4].Value() != 2 || hs.codes[403].Load().Value() != 2 {
		t.Errorf("response counters")
	}
}

// TestDeprecatedHTTPOptions: the cluster-level settings HttpProtocolOptions
// replaced still configure the pools. max_requests_per_connection goes with
// HttpProtocolOptions, as in Envoy (istio-agent's bootstrap has both on
// xds-grpc), unless that sets it too; the others do not mix with it.
func TestDeprecatedHTTPOptions(t *testing.T) {
	cfg, err := NewConfig(clusterYAML(t, `
common_http_protocol_options: { idle_timeout: 7s, max_headers_count: 40 }
http_protocol_options: { enable_trailers: true }
max_requests_per_connection: 9
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.IdleTimeout != 7*time.Second || cfg.HTTP.MaxHeadersCount != 40 || cfg.HTTP.MaxRequestsPerConnection != 9 || !cfg.HTTP.EnableTrailers {
		t.Errorf("HTTP options %+v: want idle 7s, 40 headers, 9 requests per connection, trailers", cfg.HTTP)
	}
	cfg, err = NewConfig(clusterYAML(t, `
max_requests_per_connection: 1
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http2_protocol_options: {} }
`))
	if err != nil || cfg.HTTP.MaxRequestsPerConnection != 1 || !cfg.HTTP2 {
		t.Errorf("max_requests_per_connection beside HttpProtocolOptions: %v, %d requests per connection, HTTP/2 %v", err, cfg.HTTP.MaxRequestsPerConnection, cfg.HTTP2)
	}
	for _, tt := range []struct{ extra, path string }{
		{"max_requests_per_connection: 9", "max_requests_per_connection"},
		{"common_http_protocol_options: { idle_timeout: 7s }", "common_http_protocol_options"},
	} {
		_, err = NewConfig(clusterYAML(t, tt.extra+`
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: {} }
    common_http_protocol_options: { max_requests_per_connection: 3 }
`))
		if cfgerr.PathOf(err) != tt.path {
			t.Errorf("%s with HttpProtocolOptions setting max_requests_per_connection: %v, want an error at %s", tt.extra, err, tt.path)
		}
	}
}
