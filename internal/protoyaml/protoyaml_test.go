package protoyaml_test

import (
	"errors"
	"strings"
	"testing"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// filter is the start of a bootstrap down to one network filter's typed_config,
// the place most configuration errors are made.
const filter = `
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 0.0.0.0, port_value: 80}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
`

const typedConfig = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"

func TestUnmarshalErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		path string // the error's field path
		want string // the whole message
	}{
		// Field names.
		{
			name: "unknown top-level field",
			in:   "nodes: {id: a}\n",
			path: "nodes",
			want: "nodes: unknown field (did you mean node?)",
		},
		{
			name: "unknown field in a list element",
			in:   "static_resources: {clusters: [{name: a}, {name: b, typ: STATIC}]}\n",
			path: "static_resources.clusters[1].typ",
			want: "static_resources.clusters[1].typ: unknown field (did you mean type?)",
		},
		{
			name: "unknown field inside typed_config",
			in:   filter + "          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          clusterr: x\n",
			path: typedConfig + ".clusterr",
			want: typedConfig + ".clusterr: unknown field (did you mean cluster?)",
		},
		{
			name: "unknown field far from any",
			in:   "admin: {zzzzzzzzz: 1}\n",
			path: "admin.zzzzzzzzz",
			want: "admin.zzzzzzzzz: unknown field",
		},
		{
			name: "JSON names are accepted and paths use proto names",
			in:   `{"staticResources": {"clusters": [{"name": "c", "connectTimeout": "x"}]}}`,
			path: "static_resources.clusters[0].connect_timeout",
			want: `static_resources.clusters[0].connect_timeout: invalid google.protobuf.Duration value "x"`,
		},
		{
			name: "field given twice under two names",
			in:   `{"node": {"id": "a", "userAgentName": "x", "user_agent_name": "y"}}`,
			path: "node.user_agent_name",
			want: `node.user_agent_name: field given twice (as "userAgentName" and "user_agent_name")`,
		},
		{
			name: "JSON key given twice",
			in:   `{"node": {"id": "a", "id": "b"}}`,
			path: "node.id",
			want: "node.id: field given twice",
		},
		{
			name: "YAML key given twice",
			in:   "node:\n  id: a\n  id: b\n",
			path: "node.id",
			want: "node.id: key appears twice in one YAML mapping",
		},
		{
			name: "two fields of a oneof",
			in:   "static_resources: {clusters: [{name: c, type: STATIC, cluster_type: {name: x}}]}\n",
			path: "static_resources.clusters[0].type",
			want: "static_resources.clusters[0].type: only one of cluster_type and type may be set (oneof cluster_discovery_type)",
		},

		// Values.
		{
			name: "uint32 given a word",
			in:   "static_resources: {listeners: [{address: {socket_address: {address: 0.0.0.0, port_value: abc}}}]}\n",
			path: "static_resources.listeners[0].address.socket_address.port_value",
			want: `static_resources.listeners[0].address.socket_address.port_value: invalid value "abc" for uint32`,
		},
		{
			name: "uint32 negative",
			in:   "admin: {address: {socket_address: {port_value: -1}}}\n",
			path: "admin.address.socket_address.port_value",
			want: "admin.address.socket_address.port_value: invalid value -1 for uint32",
		},
		{
			name: "uint32 too large",
			in:   "admin: {address: {socket_address: {port_value: 5000000000}}}\n",
			path: "admin.address.socket_address.port_value",
			want: "admin.address.socket_address.port_value: invalid value 5000000000 for uint32",
		},
		{
			name: "string given a number",
			in:   "node: {id: 123}\n",
			path: "node.id",
			want: "node.id: invalid value 123 for string (quote it to make it a string)",
		},
		{
			name: "string given YAML 1.1 yes",
			in:   "node: {cluster: yes}\n",
			path: "node.cluster",
			want: "node.cluster: invalid value true for string (quote it to make it a string)",
		},
		{
			name: "string given a list",
			in:   "node: {cluster: [a]}\n",
			path: "node.cluster",
			want: `node.cluster: invalid value ["a"] for string`,
		},
		{
			name: "enum name",
			in:   "static_resources: {clusters: [{name: c, lb_policy: ROUND_ROBINN}]}\n",
			path: "static_resources.clusters[0].lb_policy",
			want: `static_resources.clusters[0].lb_policy: invalid value "ROUND_ROBINN" for enum envoy.config.cluster.v3.Cluster.LbPolicy (one of ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV, CLUSTER_PROVIDED, LOAD_BALANCING_POLICY_CONFIG)`,
		},
		{
			name: "duration",
			in:   "stats_flush_interval: 5\n",
			path: "stats_flush_interval",
			want: "stats_flush_interval: invalid value 5 for google.protobuf.Duration",
		},
		{
			name: "duration with a unit protobuf does not know",
			in:   "stats_flush_interval: 5m\n",
			path: "stats_flush_interval",
			want: `stats_flush_interval: invalid google.protobuf.Duration value "5m"`,
		},
		{
			name: "wrapper",
			in:   "stats_server_version_override: -1\n",
			path: "stats_server_version_override",
			want: "stats_server_version_override: invalid value -1 for google.protobuf.UInt64Value",
		},
		{
			name: "struct given a list",
			in:   "node: {metadata: [1]}\n",
			path: "node.metadata",
			want: "node.metadata: invalid value [1] for google.protobuf.Struct",
		},
		{
			name: "list given a mapping",
			in:   "static_resources: {clusters: {name: c}}\n",
			path: "static_resources.clusters",
			want: "static_resources.clusters: expected a list, got a mapping",
		},
		{
			name: "message given a string",
			in:   "static_resources: {clusters: [c1]}\n",
			path: "static_resources.clusters[0]",
			want: `static_resources.clusters[0]: expected a mapping for envoy.config.cluster.v3.Cluster, got string "c1"`,
		},
		{
			name: "null list element",
			in:   "static_resources: {clusters: [null]}\n",
			path: "static_resources.clusters[0]",
			want: "static_resources.clusters[0]: expected a mapping for envoy.config.cluster.v3.Cluster, got null",
		},
		{
			name: "map value",
			in:   "static_resources: {clusters: [{name: c, metadata: {filter_metadata: {envoy.lb: 5}}}]}\n",
			path: "static_resources.clusters[0].metadata.filter_metadata[envoy.lb]",
			want: "static_resources.clusters[0].metadata.filter_metadata[envoy.lb]: invalid value 5 for google.protobuf.Struct",
		},
		{
			name: "map of Any",
			in:   "static_resources: {clusters: [{name: c, typed_extension_protocol_options: {envoy.x: {'@type': type.googleapis.com/google.protobuf.UInt32Value, value: -1}}}]}\n",
			path: "static_resources.clusters[0].typed_extension_protocol_options[envoy.x].value",
			want: "static_resources.clusters[0].typed_extension_protocol_options[envoy.x].value: invalid value -1 for google.protobuf.UInt32Value",
		},
		{
			name: "long value is shortened",
			in:   "node: {id: [" + strings.Repeat("1,", 60) + "1]}\n",
			path: "node.id",
			want: "node.id: invalid value [" + strings.Repeat("1,", 31) + "1... for string",
		},

		// google.protobuf.Any.
		{
			name: "unknown type URL",
			in:   filter + "          '@type': type.googleapis.com/foo.Bar\n",
			path: typedConfig,
			want: typedConfig + `: unknown type URL "type.googleapis.com/foo.Bar" (not linked into skiff)`,
		},
		{
			name: "unknown bare type name",
			in:   filter + "          '@type': foo.Bar\n",
			path: typedConfig,
			want: typedConfig + `: unknown type URL "foo.Bar" (not linked into skiff)`,
		},
		{
			name: "missing @type",
			in:   filter + "          cluster: c\n",
			path: typedConfig,
			want: typedConfig + `: missing "@type": an Any names the type of its content with "@type": type.googleapis.com/<message full name>`,
		},
		{
			name: "@type not a string",
			in:   filter + "          '@type': 5\n",
			path: typedConfig + ".@type",
			want: typedConfig + ".@type: expected a type URL string, got number 5",
		},
		{
			name: "@type empty",
			in:   filter + "          '@type': ''\n",
			path: typedConfig + ".@type",
			want: typedConfig + ".@type: empty type URL",
		},
		{
			name: "@type twice",
			in:   `{"admin": {"access_log": [{"name": "a", "typed_config": {"@type": "x.Y", "@type": "x.Y"}}]}}`,
			path: "admin.access_log[0].typed_config.@type",
			want: "admin.access_log[0].typed_config.@type: field given twice",
		},
		{
			name: "Any holding a well-known type wants value",
			in:   filter + "          '@type': type.googleapis.com/google.protobuf.Duration\n",
			path: typedConfig,
			want: typedConfig + `: missing "value" holding the google.protobuf.Duration`,
		},
		{
			name: "Any holding a well-known type has nothing but value",
			in:   filter + "          '@type': type.googleapis.com/google.protobuf.Duration\n          seconds: 1\n",
			path: typedConfig + ".seconds",
			want: typedConfig + `.seconds: unknown field (an Any holding google.protobuf.Duration has only "@type" and "value")`,
		},
		{
			name: "Any in Any",
			in: filter + "          '@type': type.googleapis.com/google.protobuf.Any\n" +
				"          value: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, idle_timeout: soon}\n",
			path: typedConfig + ".value.idle_timeout",
			want: typedConfig + `.value.idle_timeout: invalid google.protobuf.Duration value "soon"`,
		},
		{
			name: "xds TypedStruct is an ordinary message",
			in: filter + "          '@type': type.googleapis.com/xds.type.v3.TypedStruct\n" +
				"          type_urll: type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n",
			path: typedConfig + ".type_urll",
			want: typedConfig + ".type_urll: unknown field (did you mean type_url?)",
		},
		{
			name: "udpa TypedStruct value is a Struct",
			in: filter + "          '@type': type.googleapis.com/udpa.type.v1.TypedStruct\n" +
				"          value: [1]\n",
			path: typedConfig + ".value",
			want: typedConfig + ".value: invalid value [1] for google.protobuf.Struct",
		},

		// The whole document.
		{
			name: "empty document",
			in:   "# only a comment\n",
			want: "empty document: expected a mapping of envoy.config.bootstrap.v3.Bootstrap fields",
		},
		{
			name: "scalar document",
			in:   "hello\n",
			want: `expected a mapping for envoy.config.bootstrap.v3.Bootstrap, got string "hello"`,
		},
		{
			name: "list document",
			in:   "- node: {}\n",
			want: "expected a mapping for envoy.config.bootstrap.v3.Bootstrap, got a list",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bootstrapv3.Bootstrap
			err := protoyaml.Unmarshal([]byte(tt.in), &b)
			if err == nil {
				t.Fatalf("Unmarshal succeeded: %v", &b)
			}
			var ce *cfgerr.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %q is not a *cfgerr.Error", err, err)
			}
			if ce.Path != tt.path {
				t.Errorf("path = %q, want %q", ce.Path, tt.path)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "(line ") {
				t.Errorf("error keeps protojson's position: %s", err)
			}
		})
	}
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		name      string
		json      bool
		in        string
		line, col int
		want      string
	}{
		{
			name: "YAML indentation",
			in:   "node:\n  id: a\n   cluster: b\n",
			line: 3,
			want: "YAML syntax error: line 3: mapping values are not allowed in this context",
		},
		{
			name: "YAML tab indentation",
			in:   "node:\n\tid: a\n",
			line: 2,
			want: "YAML syntax error: line 2: found character that cannot start any token",
		},
		{
			name: "unclosed flow sequence",
			in:   "static_resources:\n  clusters: [\n",
			line: 2,
			want: "YAML syntax error: line 2: did not find expected node content",
		},
		{
			name: "two documents",
			in:   "node: {id: a}\n---\nnode: {id: b}\n",
			want: `YAML syntax error: document 2: a message is a single YAML document, found more after "---"`,
		},
		{
			name: "content after an empty document",
			in:   "---\n---\nnode: {id: b}\n",
			want: `YAML syntax error: document 2: a message is a single YAML document, found more after "---"`,
		},
		{
			name: "no JSON equivalent",
			in:   "node: {id: .inf}\n",
			want: "YAML syntax error: no JSON equivalent: json: unsupported value: +Inf",
		},
		{
			name: "JSON",
			json: true,
			in:   "{\n  \"node\": {\"id\": \"a\",}\n}\n",
			line: 2, col: 22,
			want: "JSON syntax error: line 2, column 22: invalid character '}' looking for beginning of object key string",
		},
		{
			name: "JSON refuses YAML",
			json: true,
			in:   "node: {id: a}\n",
			line: 1, col: 2,
			want: "JSON syntax error: line 1, column 2: invalid character 'o' in literal null (expecting 'u')",
		},
		{
			name: "JSON trailing data",
			json: true,
			in:   "{}\n{}",
			line: 2, col: 1,
			want: "JSON syntax error: line 2, column 1: invalid character '{' after top-level value",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bootstrapv3.Bootstrap
			var err error
			if tt.json {
				err = protoyaml.UnmarshalJSON([]byte(tt.in), &b)
			} else {
				err = protoyaml.Unmarshal([]byte(tt.in), &b)
			}
			var se *protoyaml.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %T %v is not a *SyntaxError", err, err)
			}
			if se.Line != tt.line || se.Column != tt.col {
				t.Errorf("position = %d:%d, want %d:%d", se.Line, se.Column, tt.line, tt.col)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestUnmarshalGood(t *testing.T) {
	const tcpProxyJSON = `{"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "cluster": "c", "stat_prefix": "s"}`
	tests := []struct {
		name string
		in   string
		want string // protojson of the expected Bootstrap
	}{
		{
			name: "YAML with the type.googleapis.com prefix",
			in:   filter + "          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          cluster: c\n          stat_prefix: s\n",
			want: `{"static_resources": {"listeners": [{"name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
				"filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": ` + tcpProxyJSON + `}]}]}]}}`,
		},
		{
			name: "bare type name",
			in:   filter + "          '@type': envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          cluster: c\n",
			want: `{"static_resources": {"listeners": [{"name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
				"filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config":
				{"@type": "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "cluster": "c"}}]}]}]}}`,
		},
		{
			name: "anchors and merge keys",
			in: `
static_resources:
  clusters:
  - &defaults
    name: a
    type: STATIC
    connect_timeout: 1s
  - <<: *defaults
    name: b
  - *defaults
`[1:],
			want: `{"static_resources": {"clusters": [
				{"name": "a", "type": "STATIC", "connect_timeout": "1s"},
				{"name": "b", "type": "STATIC", "connect_timeout": "1s"},
				{"name": "a", "type": "STATIC", "connect_timeout": "1s"}]}}`,
		},
		{
			name: "JSON with tabs is read as JSON",
			in:   "{\n\t\"node\": {\n\t\t\"id\": \"a\"\n\t}\n}\n",
			want: `{"node": {"id": "a"}}`,
		},
		{
			name: "null leaves a field unset, but is a Value",
			in:   "node: {id: null, metadata: {k: null}}\n",
			want: `{"node": {"metadata": {"k": null}}}`,
		},
		{
			name: "quoted numbers and enum numbers",
			in:   "admin: {address: {socket_address: {port_value: '80', protocol: 1}}}\n",
			want: `{"admin": {"address": {"socket_address": {"port_value": 80, "protocol": "UDP"}}}}`,
		},
		{
			name: "trailing document marker",
			in:   "node: {id: a}\n---\n",
			want: `{"node": {"id": "a"}}`,
		},
		{
			name: "empty Any",
			in:   "admin: {access_log: [{name: a, typed_config: {}}]}\n",
			want: `{"admin": {"access_log": [{"name": "a", "typed_config": {}}]}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got, want bootstrapv3.Bootstrap
			if err := protojson.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatalf("test expectation: %v", err)
			}
			if err := protoyaml.Unmarshal([]byte(tt.in), &got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&got, &want) {
				t.Errorf("got  %v\nwant %v", &got, &want)
			}
		})
	}
}

func TestTypedStruct(t *testing.T) {
	// TypedStruct gets no special treatment: it decodes as the message it is, and
	// whoever consumes the typed_config decides what to do with it.
	for _, typeURL := range []string{"type.googleapis.com/xds.type.v3.TypedStruct", "type.googleapis.com/udpa.type.v1.TypedStruct"} {
		in := filter + "          '@type': " + typeURL + "\n" +
			"          type_url: type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n" +
			"          value: {cluster: c, stat_prefix: s}\n"
		var b bootstrapv3.Bootstrap
		if err := protoyaml.Unmarshal([]byte(in), &b); err != nil {
			t.Fatalf("%s: %v", typeURL, err)
		}
		anyCfg := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig()
		msg, err := anyCfg.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch ts := msg.(type) {
		case *xdstypev3.TypedStruct:
			if ts.GetValue().GetFields()["cluster"].GetStringValue() != "c" {
				t.Errorf("xds TypedStruct = %v", ts)
			}
		case *udpatypev1.TypedStruct:
			if ts.GetValue().GetFields()["cluster"].GetStringValue() != "c" {
				t.Errorf("udpa TypedStruct = %v", ts)
			}
		default:
			t.Errorf("typed_config holds %T", msg)
		}
	}
}

func TestResolver(t *testing.T) {
	// A resolver that knows tcp_proxy only: other types are unknown even though
	// they are linked into the test binary.
	types := new(protoregistry.Types)
	if err := types.RegisterMessage((&tcpproxyv3.TcpProxy{}).ProtoReflect().Type()); err != nil {
		t.Fatal(err)
	}
	opts := protoyaml.Options{Resolver: types}

	var b bootstrapv3.Bootstrap
	ok := filter + "          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          cluster: c\n"
	if err := opts.Unmarshal([]byte(ok), &b); err != nil {
		t.Fatal(err)
	}
	bad := filter + "          '@type': type.googleapis.com/google.protobuf.Duration\n          value: 1s\n"
	err := opts.Unmarshal([]byte(bad), &b)
	want := typedConfig + `: unknown type URL "type.googleapis.com/google.protobuf.Duration" (not linked into skiff)`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

func TestUnmarshalOtherMessages(t *testing.T) {
	// Not only bootstraps: any message, including a well-known type at the top.
	var d durationpb.Duration
	if err := protoyaml.Unmarshal([]byte(`"1.5s"`), &d); err != nil || d.AsDuration().Seconds() != 1.5 {
		t.Errorf("Duration: %v %v", &d, err)
	}
	err := protoyaml.Unmarshal([]byte(`"soon"`), &d)
	if err == nil || err.Error() != `invalid google.protobuf.Duration value "soon"` {
		t.Errorf("Duration error: %v", err)
	}
	var a anypb.Any
	err = protoyaml.Unmarshal([]byte("'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\nstat_prefixx: s\n"), &a)
	if err == nil || err.Error() != "stat_prefixx: unknown field (did you mean stat_prefix?)" {
		t.Errorf("Any error: %v", err)
	}
}

// A list where a message is expected is reported as such, not as a duplicate
// key (yaml.v2 decodes a sequence into a MapSlice of keyless items).
func TestTopLevelListIsNotAMessage(t *testing.T) {
	err := protoyaml.Unmarshal([]byte("- node: {id: a}\n- node: {id: b}\n"), &bootstrapv3.Bootstrap{})
	if err == nil || strings.Contains(err.Error(), "appears twice") || !strings.Contains(err.Error(), "list") {
		t.Fatalf("got %v, want an error saying a list is not a message", err)
	}
}
