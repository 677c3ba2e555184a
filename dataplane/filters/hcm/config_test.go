package hcm_test

import (
	"bufio"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"testing"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/hcm"
	"github.com/skiffproxy/skiff/dataplane/filters/router"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

const routerFilter = `{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }`

func TestConfigErrors(t *testing.T) {
	reg := filter.NewRegistry()
	if err := reg.RegisterHTTP(router.Factory{}); err != nil {
		t.Fatal(err)
	}
	f := hcm.Factory{Registry: reg}
	routes := `route_config: { virtual_hosts: [{ name: a, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: c } }] }] }`
	for _, tc := range []struct{ yaml, path, msg string }{
		{`stat_prefix: x
` + routes + `
http_filters: [` + routerFilter + `]
tracing: { provider: { name: envoy.tracers.zipkin } }`, "tracing.provider", "no tracers"},
		{`stat_prefix: x
` + routes + `
http_filters: [` + routerFilter + `]
request_id_extension: { typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }`, "request_id_extension.typed_config", "not a request id extension"},
		{`stat_prefix: x
` + routes + `
http_filters: [{ name: envoy.filters.http.lua, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog } }, ` + routerFilter + `]`, "http_filters[0].typed_config", "is not a HTTP filter skiff supports"},
		{`stat_prefix: x
` + routes + `
http_filters: [` + routerFilter + `, ` + routerFilter + `]`, "http_filters[0]", "must be the last"},
		{`stat_prefix: x
` + routes, "http_filters", "router"},
		{`stat_prefix: x
` + routes + `
codec_type: HTTP3
http_filters: [` + routerFilter + `]`, "codec_type", "HTTP3"},
		{`stat_prefix: x
route_config: { virtual_hosts: [{ name: a, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: missing } }] }] }
http_filters: [` + routerFilter + `]`, "route_config.virtual_hosts[0].routes[0].route.cluster", ""},
		{`stat_prefix: x
` + routes + `
common_http_protocol_options: { max_response_headers_kb: 80 }
http_filters: [` + routerFilter + `]`, "common_http_protocol_options.max_response_headers_kb", ""},
		{`stat_prefix: x
` + routes + `
upgrade_configs: [{ upgrade_type: CONNECT, filters: [` + routerFilter + `] }]
http_filters: [` + routerFilter + `]`, "upgrade_configs[0].filters", "not supported"},
		{`stat_prefix: x
` + routes + `
strip_matching_host_port: true
strip_any_host_port: true
http_filters: [` + routerFilter + `]`, "strip_any_host_port", "only one of"},
		{`stat_prefix: x
` + routes + `
access_log: [{ name: l, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: { text_format: "%NOPE%" } } }]
http_filters: [` + routerFilter + `]`, "access_log[0].typed_config.log_format.text_format", "NOPE"},
	} {
		var cfg hcmv3.HttpConnectionManager
		if err := protoyaml.Unmarshal([]byte(tc.yaml), &cfg); err != nil {
			t.Fatalf("%v\n%s", err, tc.yaml)
		}
		fc := &filter.Context{Listener: "l", ClusterExists: func(name string) bool { return name == "c" }}
		_, err := f.Create(&cfg, fc)
		if err == nil {
			t.Errorf("no error for\n%s", tc.yaml)
			continue
		}
		if got := cfgerr.PathOf(err); got != tc.path || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("error %q at %q, want %q containing %q", err, got, tc.path, tc.msg)
		}
	}
}

// TestCustomMethods: a method outside Envoy's list is refused with 400 and the
// connection closes, unless http_protocol_options.allow_custom_methods (the
// option reaches the HTTP/1.1 codec).
func TestCustomMethods(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("x-method", r.Method)
	}))
	for _, tc := range []struct {
		extra  string
		status int
	}{
		{"", 400},
		{"http_protocol_options: { allow_custom_methods: true }", 200},
	} {
		e := newEnv(t, hcmYAML("backend", tc.extra), cluster(t, "backend", false, up))
		nc, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(nc, "FOO / HTTP/1.1\r\nhost: a\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(nc)
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", tc.extra, err)
		}
		io.ReadAll(resp.Body) // the 400 has a body ("Bad Request")
		resp.Body.Close()
		if resp.StatusCode != tc.status || tc.status == 200 && resp.Header.Get("x-method") != "FOO" {
			t.Errorf("%q: %d (x-method %q), want %d", tc.extra, resp.StatusCode, resp.Header.Get("x-method"), tc.status)
		}
		if tc.status == 400 {
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("the connection stayed open after the 400: %v", err)
			}
		}
		nc.Close()
	}
}
