package bootstrap_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/xds/bootstrap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// checkTCPProxy asserts the content of testdata/tcp_proxy.*, down to the typed_config.
func checkTCPProxy(t *testing.T, b *bootstrapv3.Bootstrap) {
	t.Helper()
	if b.GetNode().GetId() != "skiff-test" || b.GetNode().GetCluster() != "test" {
		t.Errorf("node = %v", b.GetNode())
	}
	if got := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); got != 9901 {
		t.Errorf("admin port = %d", got)
	}
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || ls[0].GetName() != "listener_0" {
		t.Fatalf("listeners = %v", ls)
	}
	var tp tcpproxyv3.TcpProxy
	if err := ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&tp); err != nil {
		t.Fatal(err)
	}
	if tp.GetCluster() != "service-https" || tp.GetStatPrefix() != "https_passthrough" {
		t.Errorf("tcp_proxy = %v", &tp)
	}
	cs := b.GetStaticResources().GetClusters()
	if len(cs) != 1 || cs[0].GetName() != "service-https" || cs[0].GetConnectTimeout().AsDuration().Seconds() != 5 {
		t.Errorf("clusters = %v", cs)
	}
}

func TestLoadFormats(t *testing.T) {
	want, err := bootstrap.Load(filepath.Join("testdata", "tcp_proxy.yaml"), "")
	if err != nil {
		t.Fatal(err)
	}
	checkTCPProxy(t, want)

	// The binary form is made here rather than checked in, from the YAML.
	dir := t.TempDir()
	bin, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	pbPath := filepath.Join(dir, "tcp_proxy.pb")
	if err := os.WriteFile(pbPath, bin, 0o600); err != nil {
		t.Fatal(err)
	}
	// A YAML file with no recognised extension, and JSON read as YAML.
	noExt := filepath.Join(dir, "envoy-config")
	if err := os.WriteFile(noExt, readTestdata(t, "tcp_proxy.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	jsonAsYAML := filepath.Join(dir, "tcp_proxy.yml")
	if err := os.WriteFile(jsonAsYAML, readTestdata(t, "tcp_proxy.json"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, path := range []string{
		filepath.Join("testdata", "tcp_proxy.json"),
		filepath.Join("testdata", "tcp_proxy.pb_text"),
		pbPath, noExt, jsonAsYAML,
	} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			got, err := bootstrap.Load(path, "")
			if err != nil {
				t.Fatal(err)
			}
			checkTCPProxy(t, got)
			if !proto.Equal(got, want) {
				t.Errorf("differs from the YAML form:\n got %v\nwant %v", got, want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	const listener = `
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 0.0.0.0, port_value: 80}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
`
	unknownPB := protowire.AppendTag(nil, 999, protowire.VarintType)
	unknownPB = protowire.AppendVarint(unknownPB, 1)
	listenerPB := protowire.AppendTag(nil, 1, protowire.BytesType) // Bootstrap_StaticResources.listeners
	listenerPB = protowire.AppendBytes(listenerPB, unknownPB)
	staticPB := protowire.AppendTag(nil, 2, protowire.BytesType) // Bootstrap.static_resources
	staticPB = protowire.AppendBytes(staticPB, listenerPB)

	tests := []struct {
		name string
		file string
		data string
		want string // the whole message, or its prefix when it ends in "…"
	}{
		{
			name: "unknown field inside typed_config",
			file: "bad.yaml",
			data: listener + "          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          clusterr: x\n",
			want: "bad.yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.clusterr: unknown field (did you mean cluster?)",
		},
		{
			name: "unknown type URL",
			file: "bad.yaml",
			data: listener + "          '@type': type.googleapis.com/foo.Bar\n",
			want: `bad.yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config: unknown type URL "type.googleapis.com/foo.Bar" (not linked into skiff)`,
		},
		{
			name: "bad scalar",
			file: "bad.yaml",
			data: "static_resources:\n  listeners:\n  - address: {socket_address: {address: 0.0.0.0, port_value: abc}}\n",
			want: `bad.yaml: static_resources.listeners[0].address.socket_address.port_value: invalid value "abc" for uint32`,
		},
		{
			name: "PGV rule",
			file: "bad.yaml",
			data: "static_resources:\n  listeners:\n  - address: {socket_address: {address: 0.0.0.0, port_value: 70000}}\n",
			want: "bad.yaml: static_resources.listeners[0].address.socket_address.port_value: value must be less than or equal to 65535",
		},
		{
			name: "PGV rule in a cluster",
			file: "bad.yaml",
			data: "static_resources:\n  clusters:\n  - connect_timeout: 1s\n",
			want: "bad.yaml: static_resources.clusters[0].name: value length must be at least 1 runes",
		},
		{
			name: "PGV rule on a top-level field",
			file: "bad.yaml",
			data: "stats_flush_interval: 600s\n",
			want: "bad.yaml: stats_flush_interval: value must be inside range [1ms, 5m0s)",
		},
		{
			name: "unsupported top-level field",
			file: "bad.yaml",
			data: "tracing: {http: {name: envoy.tracers.zipkin}}\n",
			want: "bad.yaml: tracing: not supported by skiff (field 9 of envoy.config.bootstrap.v3.Bootstrap)",
		},
		{
			name: "stats_config with a bad tag regex",
			file: "bad.yaml",
			data: "stats_config: {stats_tags: [{tag_name: a, regex: '^a\\.(b'}]}\n",
			want: "bad.yaml: stats_config.stats_tags[0].regex: …",
		},
		{
			name: "stats_config histogram buckets",
			file: "bad.yaml",
			data: "stats_config: {histogram_bucket_settings: [{match: {prefix: a}, buckets: [1]}]}\n",
			want: "bad.yaml: stats_config.histogram_bucket_settings: not supported by skiff …",
		},
		{
			name: "bootstrap extension other than internal_listener",
			file: "bad.yaml",
			data: "bootstrap_extensions: [{name: md, typed_config: {\"@type\": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/istio.workload.BootstrapExtension}}]\n",
			want: `bad.yaml: bootstrap_extensions[0].typed_config: extension "md": type type.googleapis.com/istio.workload.BootstrapExtension is not supported by skiff (only envoy.extensions.bootstrap.internal_listener.v3.InternalListener)`,
		},
		{
			name: "internal_listener out of range",
			file: "bad.yaml",
			data: "bootstrap_extensions: [{name: il, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener, buffer_size_kb: 100000}}]\n",
			want: "bad.yaml: bootstrap_extensions[0].typed_config.buffer_size_kb: …",
		},
		{
			name: "unsupported node field",
			file: "bad.yaml",
			data: "node: {id: n1, dynamic_parameters: {a: {}}}\n",
			want: "bad.yaml: node.dynamic_parameters: not supported by skiff (field 12 of envoy.config.core.v3.Node)",
		},
		{
			name: "unsupported admin field",
			file: "bad.yaml",
			data: "admin: {ignore_global_conn_limit: true}\n",
			want: "bad.yaml: admin.ignore_global_conn_limit: not supported by skiff (field 6 of envoy.config.bootstrap.v3.Admin)",
		},
		{
			name: "cluster_manager must be empty",
			file: "bad.yaml",
			data: "cluster_manager: {local_cluster_name: c}\n",
			want: "bad.yaml: cluster_manager.local_cluster_name: not supported by skiff (field 1 of envoy.config.bootstrap.v3.ClusterManager)",
		},
		{
			name: "duplicate listener",
			file: "bad.yaml",
			data: "static_resources:\n  listeners:\n  - {name: a, address: {pipe: {path: /a}}}\n  - {address: {pipe: {path: /x}}}\n  - {name: a, address: {pipe: {path: /b}}}\n",
			want: `bad.yaml: static_resources.listeners[2].name: duplicate listener name "a" (also static_resources.listeners[0])`,
		},
		{
			name: "duplicate cluster",
			file: "bad.yaml",
			data: "static_resources:\n  clusters:\n  - {name: c}\n  - {name: c}\n",
			want: `bad.yaml: static_resources.clusters[1].name: duplicate cluster name "c" (also static_resources.clusters[0])`,
		},
		{
			name: "YAML syntax",
			file: "bad.yaml",
			data: "node:\n  id: a\n   cluster: b\n",
			want: "bad.yaml: YAML syntax error: line 3: mapping values are not allowed in this context",
		},
		{
			name: "two YAML documents",
			file: "bad.yaml",
			data: "node: {id: a}\n---\nnode: {id: b}\n",
			want: `bad.yaml: YAML syntax error: document 2: a message is a single YAML document, found more after "---"`,
		},
		{
			name: "key twice in YAML",
			file: "bad.yaml",
			data: "node:\n  id: a\n  id: b\n",
			want: "bad.yaml: node.id: key appears twice in one YAML mapping",
		},
		{
			name: "empty YAML",
			file: "bad.yaml",
			data: "# nothing here\n",
			want: "bad.yaml: empty document: expected a mapping of envoy.config.bootstrap.v3.Bootstrap fields",
		},
		{
			name: "JSON syntax",
			file: "bad.json",
			data: "{\n  \"node\": {\"id\": \"a\",}\n}\n",
			want: "bad.json: JSON syntax error: line 2, column 22: invalid character '}' looking for beginning of object key string",
		},
		{
			name: "YAML is not JSON",
			file: "bad.json",
			data: "node: {id: a}\n",
			want: "bad.json: JSON syntax error: line 1, column 2: invalid character 'o' in literal null (expecting 'u')",
		},
		{
			name: "JSON field error",
			file: "bad.json",
			data: `{"node": {"id": "a", "userAgentName": "x", "user_agent_name": "y"}}`,
			want: `bad.json: node.user_agent_name: field given twice (as "userAgentName" and "user_agent_name")`,
		},
		{
			name: "binary garbage",
			file: "bad.pb",
			data: "\xff\xff\xff",
			want: "bad.pb: not a binary envoy.config.bootstrap.v3.Bootstrap: …",
		},
		{
			name: "binary unknown field",
			file: "bad.pb",
			data: string(staticPB),
			want: "bad.pb: static_resources.listeners[0]: unknown field number 999 (wire type 0) in envoy.config.listener.v3.Listener",
		},
		{
			name: "text unknown field",
			file: "bad.pb_text",
			data: "node { idd: \"a\" }\n",
			want: "bad.pb_text: not a text envoy.config.bootstrap.v3.Bootstrap: …",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := bootstrap.Parse(tt.file, []byte(tt.data))
			if err == nil {
				t.Fatalf("Parse succeeded: %v", b)
			}
			got := err.Error()
			if prefix, ok := strings.CutSuffix(tt.want, "…"); ok {
				if !strings.HasPrefix(got, prefix) {
					t.Errorf("got  %s\nwant %s", got, tt.want)
				}
			} else if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestErrorsKeepTheirPath(t *testing.T) {
	_, err := bootstrap.Parse("x.yaml", []byte("static_resources: {listeners: [{address: {socket_address: {port_value: -1}}}]}"))
	if got := cfgerr.PathOf(err); got != "static_resources.listeners[0].address.socket_address.port_value" {
		t.Errorf("PathOf = %q (%v)", got, err)
	}
}

func TestLoadOverride(t *testing.T) {
	file := filepath.Join("testdata", "tcp_proxy.yaml")

	t.Run("merge", func(t *testing.T) {
		override := `
node: {id: overridden, locality: {zone: z1}}
admin: {address: {socket_address: {port_value: 9902}}}
static_resources:
  clusters:
  - name: extra
    type: STATIC
`
		b, err := bootstrap.Load(file, override)
		if err != nil {
			t.Fatal(err)
		}
		// Scalars replaced, messages merged, lists appended: Envoy's MergeFrom.
		if b.GetNode().GetId() != "overridden" || b.GetNode().GetCluster() != "test" || b.GetNode().GetLocality().GetZone() != "z1" {
			t.Errorf("node = %v", b.GetNode())
		}
		sa := b.GetAdmin().GetAddress().GetSocketAddress()
		if sa.GetPortValue() != 9902 || sa.GetAddress() != "127.0.0.1" {
			t.Errorf("admin address = %v", sa)
		}
		cs := b.GetStaticResources().GetClusters()
		if len(cs) != 2 || cs[0].GetName() != "service-https" || cs[1].GetName() != "extra" {
			t.Errorf("clusters = %v", cs)
		}
	})

	t.Run("JSON override alone", func(t *testing.T) {
		b, err := bootstrap.Load("", `{"node": {"id": "n1"}}`)
		if err != nil {
			t.Fatal(err)
		}
		if b.GetNode().GetId() != "n1" {
			t.Errorf("node = %v", b.GetNode())
		}
	})

	errTests := []struct {
		name, path, override, want string
	}{
		{"error in the override names it", file, "node: {idd: x}", "--config-yaml: node.idd: unknown field (did you mean id?)"},
		{"override alone", "", "tracing: {}", "--config-yaml: tracing: not supported by skiff (field 9 of envoy.config.bootstrap.v3.Bootstrap)"},
		{"merged result names both", file, "static_resources: {clusters: [{name: service-https}]}",
			file + ` with --config-yaml: static_resources.clusters[1].name: duplicate cluster name "service-https" (also static_resources.clusters[0])`},
		{"nothing at all", "", "", "bootstrap: no configuration: give a file (-c) or --config-yaml"},
		{"error in the file comes first", filepath.Join("testdata", "missing.yaml"), "node: {idd: x}",
			filepath.Join("testdata", "missing.yaml") + ": open: no such file or directory"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bootstrap.Load(tt.path, tt.override)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got  %v\nwant %s", err, tt.want)
			}
		})
	}

	_, err := bootstrap.Load(filepath.Join("testdata", "missing.yaml"), "")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v does not match fs.ErrNotExist", err)
	}
}

func TestUnnamedListeners(t *testing.T) {
	data := readTestdata(t, "unnamed_listeners.yaml")
	b, err := bootstrap.Parse("unnamed.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 3 {
		t.Fatalf("%d listeners", len(ls))
	}
	for _, l := range ls[:2] {
		if !uuid.MatchString(l.GetName()) {
			t.Errorf("generated name %q is not a UUID", l.GetName())
		}
	}
	if ls[0].GetName() == ls[1].GetName() {
		t.Errorf("two unnamed listeners got one name %q", ls[0].GetName())
	}
	if ls[2].GetName() != "named" {
		t.Errorf("a named listener was renamed to %q", ls[2].GetName())
	}
	// The same file names its listeners the same way every time.
	again, err := bootstrap.Parse("unnamed.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(b, again) {
		t.Errorf("generated names changed between parses")
	}
}

func TestApplyNodeFlags(t *testing.T) {
	b := &bootstrapv3.Bootstrap{}
	bootstrap.ApplyNodeFlags(b, "", "")
	if b.Node != nil {
		t.Errorf("empty flags created a node: %v", b.Node)
	}
	bootstrap.ApplyNodeFlags(b, "n1", "")
	bootstrap.ApplyNodeFlags(b, "", "c1")
	if b.GetNode().GetId() != "n1" || b.GetNode().GetCluster() != "c1" {
		t.Errorf("node = %v", b.GetNode())
	}
	bootstrap.ApplyNodeFlags(b, "n2", "c2")
	if b.GetNode().GetId() != "n2" || b.GetNode().GetCluster() != "c2" {
		t.Errorf("node = %v", b.GetNode())
	}
}

func TestPaths(t *testing.T) {
	if got := bootstrap.ListenerPath(2); got != "static_resources.listeners[2]" {
		t.Errorf("ListenerPath = %q", got)
	}
	if got := bootstrap.ClusterPath(0); got != "static_resources.clusters[0]" {
		t.Errorf("ClusterPath = %q", got)
	}
	for _, tt := range []struct{ path, override, want string }{
		{"a.yaml", "", "a.yaml"},
		{"", "x: 1", "--config-yaml"},
		{"a.yaml", "x: 1", "a.yaml with --config-yaml"},
	} {
		if got := bootstrap.SourceName(tt.path, tt.override); got != tt.want {
			t.Errorf("SourceName(%q, %q) = %q, want %q", tt.path, tt.override, got, tt.want)
		}
	}
}

func TestAcceptedFields(t *testing.T) {
	// Everything the package documentation lists as accepted loads.
	const all = `
node:
  id: n1
  cluster: c
  metadata: {a: b}
  locality: {region: r, zone: z}
  user_agent_name: envoy
  user_agent_build_version: {version: {major_number: 1}}
  client_features: [envoy.lb.does_not_support_overprovisioning]
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
  access_log_path: /dev/null
  profile_path: /tmp/prof
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
layered_runtime:
  layers: [{name: static, static_layer: {a: 1}}]
cluster_manager: {}
stats_flush_interval: 5s
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/udpa.type.v1.TypedStruct
    type_url: type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
    value: {buffer_size_kb: 64}
- name: direct
  typed_config: {"@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener}
static_resources:
  clusters: [{name: xds, type: STATIC}]
`
	b, err := bootstrap.Parse("all.yaml", []byte(all))
	if err != nil {
		t.Fatal(err)
	}
	if b.GetDynamicResources().GetAdsConfig() == nil || b.GetStatsFlushInterval().AsDuration().Seconds() != 5 {
		t.Errorf("fields lost: %v", b)
	}
}
