package statsconfig

import (
	"os"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"

	"github.com/skiffproxy/skiff/internal/protoyaml"
)

// config reads a stats_config written in YAML.
func config(t *testing.T, yaml string) *metricsv3.StatsConfig {
	t.Helper()
	var pb metricsv3.StatsConfig
	if err := protoyaml.Unmarshal([]byte(yaml), &pb); err != nil {
		t.Fatalf("%s: %v", yaml, err)
	}
	return &pb
}

func mustNew(t *testing.T, yaml string) *Config {
	t.Helper()
	c, err := New(config(t, yaml))
	if err != nil {
		t.Fatalf("New(%s): %v", yaml, err)
	}
	return c
}

func TestDefaultTags(t *testing.T) {
	for _, tt := range []struct {
		name      string
		extracted string
		tags      []Tag
	}{
		{"cluster.backend.upstream_cx_total", "cluster.upstream_cx_total", []Tag{{"envoy.cluster_name", "backend"}}},
		{"cluster.backend.membership_healthy", "cluster.membership_healthy", []Tag{{"envoy.cluster_name", "backend"}}},
		{"listener.127.0.0.1_10000.downstream_cx_total", "listener.downstream_cx_total", []Tag{{"envoy.listener_address", "127.0.0.1_10000"}}},
		{"listener.[__1]_10000.downstream_cx_active", "listener.downstream_cx_active", []Tag{{"envoy.listener_address", "[__1]_10000"}}},
		{"listener.ingress.downstream_cx_total", "listener.downstream_cx_total", []Tag{{"envoy.listener_address", "ingress"}}},
		// Envoy keeps the admin listener's stats out of the listener_address tag.
		{"listener.admin.downstream_cx_total", "listener.admin.downstream_cx_total", nil},
		{"tcp.ingress_tcp.downstream_cx_total", "tcp.downstream_cx_total", []Tag{{"envoy.tcp_prefix", "ingress_tcp"}}},
		{"tcp.ingress_tcp.upstream_flush_active", "tcp.upstream_flush_active", []Tag{{"envoy.tcp_prefix", "ingress_tcp"}}},
		{"http.ingress_http.downstream_rq_200", "http.downstream_rq", []Tag{{"envoy.response_code", "200"}, {"envoy.http_conn_manager_prefix", "ingress_http"}}},
		{"http.ingress_http.downstream_rq_5xx", "http.downstream_rq_xx", []Tag{{"envoy.response_code_class", "5"}, {"envoy.http_conn_manager_prefix", "ingress_http"}}},
		{"listener.127.0.0.1_80.http.hcm.downstream_rq_2xx", "listener.http.downstream_rq_xx", []Tag{
			{"envoy.response_code_class", "2"}, {"envoy.http_conn_manager_prefix", "hcm"}, {"envoy.listener_address", "127.0.0.1_80"}}},
		{"vhost.vh.route.r1.upstream_rq_total", "vhost.route.upstream_rq_total", []Tag{{"envoy.virtual_host", "vh"}, {"envoy.route", "r1"}}},
		{"server.live", "server.live", nil},
		// A prefix without a stat name after it is not a tag.
		{"tcp.lonely", "tcp.lonely", nil},
	} {
		extracted, tags := DefaultTags().Extract(tt.name)
		if extracted != tt.extracted || !slices.Equal(tags, tt.tags) {
			t.Errorf("Extract(%q) = %q, %v; want %q, %v", tt.name, extracted, tags, tt.extracted, tt.tags)
		}
	}
}

// The stats_tags of a bootstrap as istio-agent writes it
// (tools/packaging/common/envoy_bootstrap.json): no default tags, ECMAScript
// regexes with look-aheads and [:digit:] classes, and the reporter-style
// tags Istio's stats use.
const istioTags = `
use_all_default_tags: false
stats_tags:
- tag_name: cluster_name
  regex: '^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)'
- tag_name: tcp_prefix
  regex: '^tcp\.((.*?)\.)\w+?$'
- tag_name: response_code
  regex: '(response_code=\.=(.+?);\.;)|_rq(_(\d{3}))$'
- tag_name: response_code_class
  regex: '_rq(_(\dxx))$'
- tag_name: http_conn_manager_listener_prefix
  regex: '^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)'
- tag_name: http_conn_manager_prefix
  regex: '^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)'
- tag_name: listener_address
  regex: '^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)'
- tag_name: reporter
  regex: '(reporter=\.=(.*?);\.;)'
- tag_name: source_workload
  regex: '(source_workload=\.=(.*?);\.;)'
- tag_name: mesh
  fixed_value: mesh-1
`

func TestIstioTags(t *testing.T) {
	tags := mustNew(t, istioTags).Tags
	for _, tt := range []struct {
		name      string
		extracted string
		tags      []Tag
	}{
		{"cluster.outbound|80||web.default.svc.cluster.local.upstream_cx_total", "cluster.upstream_cx_total", []Tag{
			{"cluster_name", "outbound|80||web.default.svc.cluster.local"}, {"mesh", "mesh-1"}}},
		{"cluster.xds-grpc.upstream_rq_200", "cluster.upstream_rq_200", []Tag{
			{"cluster_name", "xds-grpc"},
			// The first alternative's groups took no part: Envoy's tag
			// then has an empty value and removes nothing.
			{"response_code", ""},
			{"mesh", "mesh-1"}}},
		{"cluster.xds-grpc.upstream_rq_5xx", "cluster.upstream_rq", []Tag{
			{"cluster_name", "xds-grpc"}, {"response_code_class", "5xx"}, {"mesh", "mesh-1"}}},
		{"listener.0.0.0.0_15006.http.10.1.2.3_8080.downstream_rq_total", "listener.http.downstream_rq_total", []Tag{
			{"http_conn_manager_listener_prefix", "10.1.2.3_8080"}, {"listener_address", "0.0.0.0_15006"}, {"mesh", "mesh-1"}}},
		{"http.10.0.0.1_80.downstream_rq_total", "http.downstream_rq_total", []Tag{
			{"http_conn_manager_prefix", "10.0.0.1_80"}, {"mesh", "mesh-1"}}},
		// Letters outside a-f make the prefix no address: no tag.
		{"http.inbound_0.0.0.0_8080.downstream_rq_total", "http.inbound_0.0.0.0_8080.downstream_rq_total", []Tag{{"mesh", "mesh-1"}}},
		{"reporter=.=destination;.;source_workload=.=productpage-v1;.;istio_requests_total", "istio_requests_total", []Tag{
			{"reporter", "destination"}, {"source_workload", "productpage-v1"}, {"mesh", "mesh-1"}}},
		{"server.live", "server.live", []Tag{{"mesh", "mesh-1"}}},
	} {
		extracted, got := tags.Extract(tt.name)
		if extracted != tt.extracted || !slices.Equal(got, tt.tags) {
			t.Errorf("Extract(%q) =\n  %q, %v; want\n  %q, %v", tt.name, extracted, got, tt.extracted, tt.tags)
		}
	}
}

// Default and custom extractors of one tag name: the default's tag wins
// unless allow_default_tag_overrides is set, and a stats_tags entry with
// neither regex nor fixed_value stands for the default of its name.
func TestTagPrecedence(t *testing.T) {
	const name = "cluster.foo.bar.upstream_rq_total"
	secondToken := `- tag_name: envoy.cluster_name
  regex: '^cluster\.[^.]+\.(([^.]+)\.)'
`
	for _, tt := range []struct {
		yaml, extracted, value string
	}{
		{"stats_tags:\n" + secondToken, "cluster.bar.upstream_rq_total", "foo"},
		{"allow_default_tag_overrides: true\nstats_tags:\n" + secondToken, "cluster.foo.upstream_rq_total", "bar"},
		{"allow_default_tag_overrides: true\nstats_tags:\n- tag_name: envoy.cluster_name\n  fixed_value: fixed\n", name, "fixed"},
		{"allow_default_tag_overrides: true\nstats_tags:\n- tag_name: envoy.cluster_name\n", "cluster.bar.upstream_rq_total", "foo"},
		{"use_all_default_tags: false\nstats_tags:\n- tag_name: envoy.cluster_name\n", "cluster.bar.upstream_rq_total", "foo"},
		{"use_all_default_tags: false\nstats_tags:\n" + secondToken, "cluster.foo.upstream_rq_total", "bar"},
	} {
		extracted, tags := mustNew(t, tt.yaml).Tags.Extract(name)
		var values []string
		for _, tag := range tags {
			if tag.Name == "envoy.cluster_name" {
				values = append(values, tag.Value)
			}
		}
		if extracted != tt.extracted || !slices.Equal(values, []string{tt.value}) {
			t.Errorf("%s: Extract = %q, envoy.cluster_name %q; want %q, [%s]", tt.yaml, extracted, values, tt.extracted, tt.value)
		}
	}
}

func TestStatsMatcher(t *testing.T) {
	names := []string{"cluster.xds-grpc.upstream_cx_total", "server.live", "http.in.downstream_rq_total", "istio_requests_total", "listener.admin.downstream_cx_total"}
	for _, tt := range []struct {
		yaml string
		want []string
	}{
		{"{}", names},
		{"stats_matcher: {reject_all: false}", names},
		{"stats_matcher: {reject_all: true}", nil},
		{`stats_matcher: {inclusion_list: {patterns: [{prefix: "cluster.xds-grpc"}, {prefix: istio}, {suffix: ".live"}]}}`,
			[]string{"cluster.xds-grpc.upstream_cx_total", "server.live", "istio_requests_total"}},
		{`stats_matcher: {exclusion_list: {patterns: [{safe_regex: {regex: "(http|listener)\\..*"}}, {exact: server.live}]}}`,
			[]string{"cluster.xds-grpc.upstream_cx_total", "istio_requests_total"}},
	} {
		c := mustNew(t, tt.yaml)
		var got []string
		for _, n := range names {
			if c.Accept == nil || c.Accept(n) {
				got = append(got, n)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: accepted %q, want %q", tt.yaml, got, tt.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"stats_tags: [{tag_name: x, regex: '(a'}]", "stats_tags[0].regex: "},
		{"stats_tags: [{tag_name: x, regex: '[[:nope:]]'}]", `stats_tags[0].regex: "[[:nope:]]": [:nope:] is not supported`},
		{"stats_tags: [{tag_name: x, regex: '[[.a.]]'}]", "stats_tags[0].regex: "},
		{"stats_tags: [{tag_name: x}]", "stats_tags[0]: no regex specified for tag specifier and no default regex for name: 'x'"},
		{"stats_tags: [{regex: '(a)'}]", "stats_tags[0].tag_name: must not be empty"},
		{`stats_matcher: {inclusion_list: {patterns: [{safe_regex: {regex: "("}}]}}`, "stats_matcher.inclusion_list.patterns[0].safe_regex"},
		{"histogram_bucket_settings: [{match: {prefix: a}, buckets: [1]}]", "histogram_bucket_settings: not supported by skiff"},
	} {
		_, err := New(config(t, tt.yaml))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one starting %q", tt.yaml, err, tt.want)
		}
	}
}

func TestExpandClassNames(t *testing.T) {
	for in, want := range map[string]string{
		`^a[[:digit:]]b`:           `^a[0-9]b`,
		`[_.[:digit:]]*`:           `[_.0-9]*`,
		`[_\[\]aA[:xdigit:]]`:      `[_\[\]aA0-9A-Fa-f]`,
		`\[:digit:]`:               `\[:digit:]`, // an escaped bracket opens no class
		`[a][[:digit:]]`:           `[a][0-9]`,
		`[a]:digit:]`:              `[a]:digit:]`,
		`(?=\.)[^[:space:][:w:]]+`: "(?=\\.)[^ \\t\\n\\v\\f\\r0-9A-Za-z_]+",
	} {
		got, err := expandClassNames(in)
		if err != nil || got != want {
			t.Errorf("expandClassNames(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// istioConfig compiles the stats_config of testdata/istio-stats-config.yaml.
func istioConfig(tb testing.TB) *Config {
	tb.Helper()
	data, err := os.ReadFile("testdata/istio-stats-config.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protoyaml.Unmarshal(data, &b); err != nil {
		tb.Fatal(err)
	}
	c, err := New(b.GetStatsConfig())
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// The stats_config of istio-agent's envoy_bootstrap.json (rendered for a
// sidecar; testdata holds it) compiles.
func TestIstioBootstrapStatsConfig(t *testing.T) {
	c := istioConfig(t)
	if c.Accept("cluster.outbound|80||web.default.svc.cluster.local.upstream_rq_total") {
		t.Error("an outbound cluster's stat is accepted; istio-agent's inclusion list keeps it out")
	}
	if !c.Accept("cluster.xds-grpc.upstream_cx_total") || !c.Accept("istiocustom.something") {
		t.Error("a stat on istio-agent's inclusion list is refused")
	}
}

// FuzzTags: any stats_tags regex either fails to compile or extracts from
// any stat name without panicking, the tag-extracted name never longer
// than the name; expandClassNames leaves expressions without bracket
// class names as they are.
func FuzzTags(f *testing.F) {
	f.Add(`^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)`, "listener.0.0.0.0_15006.http.10.1.2.3_8080.downstream_rq_total")
	f.Add(`(reporter=\.=(.*?);\.;)`, "reporter=.=source;.;istio_requests_total")
	f.Add(`(a)|(b)`, "b")
	f.Add(`[[:nope:]`, "x")
	f.Fuzz(func(t *testing.T, regex, name string) {
		if len(regex) > 200 || len(name) > 200 {
			return // backtracking regexes on long names take long, and say nothing more
		}
		expanded, err := expandClassNames(regex)
		if err == nil && !strings.Contains(regex, "[:") && !strings.Contains(regex, "[.") && !strings.Contains(regex, "[=") && expanded != regex {
			t.Fatalf("expandClassNames(%q) = %q", regex, expanded)
		}
		c, err := New(&metricsv3.StatsConfig{StatsTags: []*metricsv3.TagSpecifier{
			{TagName: "t", TagValue: &metricsv3.TagSpecifier_Regex{Regex: regex}},
		}})
		if err != nil {
			return
		}
		extracted, _ := c.Tags.Extract(name)
		if len(extracted) > len(name) {
			t.Fatalf("Extract(%q) = %q", name, extracted)
		}
	})
}

// BenchmarkIstioTags: the cost per stat name of a Prometheus scrape under
// istio-agent's stats_tags (44 ECMAScript regexes).
func BenchmarkIstioTags(b *testing.B) {
	c := istioConfig(b)
	b.ReportAllocs()
	for b.Loop() {
		c.Tags.Extract("cluster.xds-grpc.upstream_cx_total")
	}
}
