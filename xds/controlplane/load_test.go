package controlplane

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

func testLoader(t testing.TB) loader {
	t.Helper()
	l, err := newLoader()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

const tcpProxyListener = `
"@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: tcp
address:
  socket_address: { address: 127.0.0.1, port_value: 10000 }
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: tcp
      cluster: backend
`

func TestDecodeFileForms(t *testing.T) {
	cluster := func(name string) string {
		return `{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "` + name + `", "type": "STATIC"}`
	}
	for _, tc := range []struct {
		file, content string
		want          []string // Type/name@path
	}{
		{"one.yaml", tcpProxyListener, []string{"Listener/tcp@"}},
		{"one.json", cluster("a"), []string{"Cluster/a@"}},
		{"list.yaml", "- " + cluster("a") + "\n- " + cluster("b") + "\n", []string{"Cluster/a@[0]", "Cluster/b@[1]"}},
		{"list.json", "[" + cluster("a") + ",\n" + cluster("b") + "]", []string{"Cluster/a@[0]", "Cluster/b@[1]"}},
		{"wrapped.yaml", "resources:\n- " + cluster("a") + "\n", []string{"Cluster/a@resources[0]"}},
		{"wrapped.json", `{"resources": [` + cluster("a") + `]}`, []string{"Cluster/a@resources[0]"}},
		{"bare-type-url.yaml", `{"@type": "envoy.config.cluster.v3.Cluster", "name": "a"}`, []string{"Cluster/a@"}},
		{"empty.yaml", "", nil},
		{"comments.yaml", "# nothing yet\n", nil},
		{"empty-list.yaml", "[]", nil},
		{"blank.json", "\n", nil},
		{"cla.yaml", "'@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\ncluster_name: a\n", []string{"ClusterLoadAssignment/a@"}},
		{"secret.yaml", "'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\nname: s\ngeneric_secret: {secret: {inline_string: x}}\n", []string{"Secret/s@"}},
		{"runtime.yaml", "'@type': type.googleapis.com/envoy.service.runtime.v3.Runtime\nname: rt\nlayer: {a: 1}\n", []string{"Runtime/rt@"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := testLoader(t).decodeFile(tc.file, []byte(tc.content))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range got {
				url := resource.APITypePrefix + string(e.res.ProtoReflect().Descriptor().FullName())
				names = append(names, shortName(url)+"/"+e.name+"@"+e.path)
				if e.file != tc.file {
					t.Errorf("file %q", e.file)
				}
			}
			if !slices.Equal(names, tc.want) {
				t.Errorf("got %q, want %q", names, tc.want)
			}
		})
	}
}

func TestDecodeFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file, content string
		path                string // the field path; "-" for a syntax error
		reason              string // part of the reason
	}{
		{"YAML syntax", "a.yaml", "name: [\n", "-", "YAML syntax error: line 1: did not find expected node content"},
		{"YAML syntax in a list", "a.yaml", "- a: 1\n- b: [\n", "-", "YAML syntax error: line 2"},
		{"two YAML documents", "a.yaml", "- a: 1\n---\n- b: 1\n", "-", "document 2: a resource file is a single YAML document"},
		{"JSON syntax", "a.json", `{"@type": }`, "-", "JSON syntax error: line 1, column 11"},
		{"YAML in a .json file", "a.json", "name: x\n", "-", "JSON syntax error"},
		{"unknown field", "a.yaml", strings.Replace(tcpProxyListener, "name: tcp", "nmae: tcp", 1), "nmae", "unknown field (did you mean name?)"},
		{"unknown field in typed_config", "a.yaml", strings.Replace(tcpProxyListener, "cluster: backend", "clustr: backend", 1),
			"filter_chains[0].filters[0].typed_config.clustr", "unknown field (did you mean cluster?)"},
		{"unknown typed_config type", "a.yaml", strings.Replace(tcpProxyListener, "tcp_proxy.v3.TcpProxy", "tcp_proxy.v3.TcpProxi", 1),
			"filter_chains[0].filters[0].typed_config", `unknown type URL "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxi"`},
		{"unknown resource type", "a.yaml", "'@type': type.googleapis.com/envoy.config.listener.v3.Listenr\nname: x\n", "", "unknown type URL"},
		{"not a resource type", "a.yaml", "'@type': type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap\n", "@type", "envoy.config.bootstrap.v3.Bootstrap is not a resource type served over xDS (want one of Cluster, ClusterLoadAssignment, Listener,"},
		{"missing @type", "a.yaml", "name: x\n", "", `missing "@type"`},
		{"missing name", "a.yaml", strings.Replace(tcpProxyListener, "name: tcp\n", "", 1), "name", "missing: a resource served over xDS needs a name"},
		{"missing cluster_name", "a.yaml", "'@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\nendpoints: []\n", "cluster_name", "missing"},
		{"bad value", "a.yaml", strings.Replace(tcpProxyListener, "port_value: 10000", "port_value: many", 1), "address.socket_address.port_value", `invalid value "many" for uint32`},
		{"validation rule", "a.yaml", strings.Replace(tcpProxyListener, "port_value: 10000", "port_value: 70000", 1), "address.socket_address.port_value", "less than or equal to 65535"},
		{"validation rule in typed_config", "a.yaml", strings.Replace(tcpProxyListener, "stat_prefix: tcp", `stat_prefix: ""`, 1), "filter_chains[0].filters[0].typed_config.stat_prefix", "at least 1"},
		{"error in a YAML list", "a.yaml", "- {'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster, name: a}\n- {'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster, nme: b}\n", "[1].nme", "unknown field"},
		{"error in a JSON list", "a.json", `[{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a", "type": "NOPE"}]`, "[0].type", "invalid value"},
		{"error in resources", "a.yaml", "resources:\n- {'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster}\n", "resources[0].name", "missing"},
		{"other key beside resources", "a.yaml", "version_info: x\nresources: []\n", "version_info", "unknown field"},
		{"key twice in a YAML list", "a.yaml", "- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: a\n  name: b\n", "[0].name", "key appears twice"},
		{"key twice in a YAML mapping", "a.yaml", "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: a\nname: b\n", "name", "key appears twice"},
		{"scalar", "a.yaml", "hello\n", "", `got string "hello"`},
		{"list of scalars", "a.yaml", "- 1\n", "[0]", "expected a mapping for google.protobuf.Any"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := testLoader(t).decodeFile(tc.file, []byte(tc.content))
			var fe *FileError
			if !errors.As(err, &fe) || fe.File != tc.file {
				t.Fatalf("got %v, want a *FileError for %s", err, tc.file)
			}
			var se *protoyaml.SyntaxError
			switch {
			case tc.path == "-":
				if !errors.As(err, &se) {
					t.Errorf("got %#v, want a syntax error", fe.Err)
				}
			case cfgerr.PathOf(err) != tc.path:
				t.Errorf("path %q, want %q", cfgerr.PathOf(err), tc.path)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q lacks %q", err, tc.reason)
			}
			t.Log(err)
		})
	}
}

func TestLoadDir(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"a.yaml":              "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: one\n",
		"sub/b.json":          `{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "two"}`,
		".hidden.yaml":        "not: even: yaml:",
		".git/c.yaml":         "not: even: yaml:",
		"..2026_01_01/d.yaml": "not: even: yaml:",
		"notes.txt":           "not: even: yaml:",
	})
	s, err := testLoader(t).loadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range s[resource.ClusterType] {
		names = append(names, e.name)
	}
	if !slices.Equal(names, []string{"one", "two"}) {
		t.Errorf("clusters %q", names)
	}

	// A symbolic link to a file is followed.
	if err := os.Symlink(filepath.Join(dir, "sub/b.json"), filepath.Join(dir, "link.json")); err != nil {
		t.Fatal(err)
	}
	_, err = testLoader(t).loadDir(dir)
	// (Files are read in lexical order: the link comes first.)
	if err == nil || !strings.Contains(err.Error(), `b.json: name: duplicate Cluster "two": already defined in `+filepath.Join(dir, "link.json")) {
		t.Errorf("duplicate through a link: %v", err)
	}

	// Every bad file is reported, not only the first.
	writeFile(t, dir, "x.yaml", "x: [")
	writeFile(t, dir, "y.yaml", "- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: one\n")
	_, err = testLoader(t).loadDir(dir)
	for _, want := range []string{
		"b.json: name: duplicate Cluster",
		"x.yaml: YAML syntax error",
		`y.yaml: [0].name: duplicate Cluster "one": already defined in ` + filepath.Join(dir, "a.yaml"),
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

// TestIstioRouter decodes what istiod pushed to a gateway (testdata/istio-router:
// the .json files are the protojson form of the .pb files, with "@type" added) and
// checks that the result is what istiod sent.
func TestIstioRouter(t *testing.T) {
	const dir = "testdata/istio-router"
	l := testLoader(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := l.decodeFile(file, data)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("%d resources", len(got))
			}
			wire, err := os.ReadFile(strings.TrimSuffix(file, ".json") + ".pb")
			if err != nil {
				t.Fatal(err)
			}
			want := got[0].res.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(wire, want); err != nil {
				t.Fatal(err)
			}
			// Compared in JSON, where every Any is expanded: the bytes of an Any
			// depend on the encoder.
			if g, w := canonicalJSON(t, got[0].res, l.resolver), canonicalJSON(t, want, l.resolver); !reflect.DeepEqual(g, w) {
				t.Errorf("decoded JSON differs from the .pb istiod sent:\n got %v\nwant %v", g, w)
			}
		})
	}

	// As a directory: valid, every reference resolved, and served.
	s := serve(t, dir)
	if got := s.logs.lines("level=WARN"); len(got) > 0 {
		t.Errorf("warnings: %q", got)
	}
	c := ads(t, s.conn)
	c.send(req(resource.ListenerType, nil))
	if got := len(c.recv().GetResources()); got != 1 {
		t.Errorf("%d listeners", got)
	}
}

func canonicalJSON(t *testing.T, m proto.Message, r resolver) any {
	t.Helper()
	b, err := protojson.MarshalOptions{Resolver: r}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestIstioAlpnType checks the hand-written descriptor of istio.alpn's config
// against the bytes istiod sent: no field may be left unknown.
func TestIstioAlpnType(t *testing.T) {
	l := testLoader(t)
	wire, err := os.ReadFile("testdata/istio-router/Listener-0.0.0.0_8080.pb")
	if err != nil {
		t.Fatal(err)
	}
	var found int
	var walk func(m proto.Message)
	walk = func(m proto.Message) {
		if len(m.ProtoReflect().GetUnknown()) > 0 {
			t.Errorf("%s has unknown fields", m.ProtoReflect().Descriptor().FullName())
		}
		if a, ok := m.(*anypb.Any); ok {
			inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{Resolver: l.resolver})
			if err != nil {
				t.Fatal(err)
			}
			if inner.ProtoReflect().Descriptor().FullName() == "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig" {
				found++
			}
			walk(inner)
			return
		}
		forEachMessage(m, walk)
	}
	m, err := l.unpack(&anypb.Any{TypeUrl: resource.ListenerType, Value: wire})
	if err != nil {
		t.Fatal(err)
	}
	walk(m.res)
	if found != 1 {
		t.Errorf("found %d istio.alpn configs, want 1", found)
	}
}

// forEachMessage calls fn with every message directly inside m.
func forEachMessage(m proto.Message, fn func(proto.Message)) {
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				fn(v.List().Get(i).Message().Interface())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				fn(mv.Message().Interface())
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			fn(v.Message().Interface())
		}
		return true
	})
}
