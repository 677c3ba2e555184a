package controlplane

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	runtimeservice "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// The test set: an HTTP listener getting its routes over RDS, a TCP listener
// (in a YAML list), a route configuration, an EDS cluster and its endpoints.
const (
	httpListenerYAML = `
"@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: http
address:
  socket_address: { address: 127.0.0.1, port_value: 10080 }
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: http
      rds:
        route_config_name: local_route
        config_source: { ads: {}, resource_api_version: V3 }
      http_filters:
      - name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
`
	tcpListenersYAML = `
# A list of resources.
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
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
	routeYAML = `
"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: local_route
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: / }
    route: { cluster: backend }
`
	clusterYAML = `
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: backend
type: EDS
connect_timeout: 1s
eds_cluster_config:
  eds_config: { ads: {}, resource_api_version: V3 }
`
	endpointsJSON = `{
  "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
  "clusterName": "backend",
  "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10001}}}}]}]
}
`
)

func testFiles() map[string]string {
	return map[string]string{
		"listeners/http.yaml":             httpListenerYAML,
		"listeners/tcp.yml":               tcpListenersYAML,
		"routes.yaml":                     routeYAML,
		"clusters/backend.yaml":           clusterYAML,
		"clusters/backend-endpoints.json": endpointsJSON,
		"README.md":                       "not a resource file",
	}
}

func TestSotWADS(t *testing.T) {
	s := serve(t, writeFiles(t, testFiles()))
	if got := s.logs.lines("unresolved reference"); len(got) > 0 {
		t.Errorf("warnings for a consistent set: %q", got)
	}
	c := ads(t, s.conn)

	c.send(req(resource.ListenerType, nil))
	lds := c.recv()
	listeners := unpackAll[*listenerv3.Listener](t, lds.GetResources())
	if got := keys(listeners); !slices.Equal(got, []string{"http", "tcp"}) {
		t.Fatalf("listeners %q, want http and tcp", got)
	}
	if lds.GetVersionInfo() == "" || lds.GetTypeUrl() != resource.ListenerType {
		t.Errorf("response version %q type %q", lds.GetVersionInfo(), lds.GetTypeUrl())
	}
	// The HTTP listener names its route configuration; its typed_config survived intact.
	var hcm hcmv3.HttpConnectionManager
	if err := listeners["http"].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	if got := hcm.GetRds().GetRouteConfigName(); got != "local_route" {
		t.Errorf("rds route_config_name %q", got)
	}
	c.send(req(resource.ListenerType, lds))

	c.send(req(resource.ClusterType, nil))
	cds := c.recv()
	clusters := unpackAll[*clusterv3.Cluster](t, cds.GetResources())
	if b := clusters["backend"]; b.GetType() != clusterv3.Cluster_EDS || len(clusters) != 1 {
		t.Fatalf("clusters %v", clusters)
	}
	c.send(req(resource.ClusterType, cds))

	c.send(req(resource.EndpointType, nil, "backend"))
	eds := c.recv()
	endpoints := unpackAll[*endpointv3.ClusterLoadAssignment](t, eds.GetResources())
	if got := endpoints["backend"].GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); got != 10001 {
		t.Errorf("endpoint port %d, want 10001", got)
	}
	c.send(req(resource.EndpointType, eds, "backend"))

	c.send(req(resource.RouteType, nil, "local_route"))
	rds := c.recv()
	routes := unpackAll[*routev3.RouteConfiguration](t, rds.GetResources())
	if got := routes["local_route"].GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster(); got != "backend" {
		t.Errorf("route cluster %q", got)
	}
	c.send(req(resource.RouteType, rds, "local_route"))

	// Every node gets the same resources.
	other := ads(t, s.conn)
	r := req(resource.ClusterType, nil)
	r.Node = &corev3.Node{Id: "another-node"}
	other.send(r)
	if got := keys(unpackAll[*clusterv3.Cluster](t, other.recv().GetResources())); !slices.Equal(got, []string{"backend"}) {
		t.Errorf("another node's clusters %q", got)
	}

	// The listener and the client's arrival are logged.
	s.logs.waitLog(t, "client connected", "node=test-node", "service=ADS")
	c.none(200 * time.Millisecond)
}

func TestDeltaADS(t *testing.T) {
	dir := writeFiles(t, testFiles())
	s := serve(t, dir)
	c := deltaADS(t, s.conn)

	// Wildcard CDS, then the endpoints of the cluster by name.
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, TypeUrl: resource.ClusterType})
	cds := c.recv()
	if got := deltaNames(cds); !slices.Equal(got, []string{"backend"}) {
		t.Fatalf("clusters %q", got)
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: cds.GetNonce()})
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"backend"}})
	eds := c.recv()
	if got := deltaNames(eds); !slices.Equal(got, []string{"backend"}) {
		t.Fatalf("endpoints %q", got)
	}
	firstVersion := eds.GetResources()[0].GetVersion()
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: eds.GetNonce()})

	// A changed endpoint comes alone, with a new resource version.
	writeFile(t, dir, "clusters/backend-endpoints.json", strings.Replace(endpointsJSON, "10001", "10002", 1))
	eds = c.recv()
	if eds.GetTypeUrl() != resource.EndpointType || len(eds.GetResources()) != 1 || eds.GetResources()[0].GetVersion() == firstVersion {
		t.Fatalf("after an edit: %v", eds)
	}
	var cla endpointv3.ClusterLoadAssignment
	if err := eds.GetResources()[0].GetResource().UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	if got := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); got != 10002 {
		t.Errorf("port %d after the edit, want 10002", got)
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: eds.GetNonce()})

	// Deleting resources removes them, as removed_resources.
	for _, name := range []string{"clusters/backend.yaml", "clusters/backend-endpoints.json"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	removed := map[string][]string{}
	for len(removed) < 2 {
		r := c.recv()
		if len(r.GetResources()) > 0 {
			t.Fatalf("after the removal: %v", r)
		}
		removed[r.GetTypeUrl()] = r.GetRemovedResources()
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
	}
	for _, url := range []string{resource.ClusterType, resource.EndpointType} {
		if !slices.Equal(removed[url], []string{"backend"}) {
			t.Errorf("%s removed_resources %q, want backend", shortName(url), removed[url])
		}
	}
	// The TCP listener still names the cluster that is gone: a warning.
	s.logs.waitLog(t, "unresolved reference", "Listener tcp", `problem="no Cluster \"backend\" is served"`)
}

func deltaNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.GetName())
	}
	slices.Sort(out)
	return out
}

func TestEditPushesNewVersion(t *testing.T) {
	dir := writeFiles(t, testFiles())
	s := serve(t, dir)
	c := ads(t, s.conn)
	c.send(req(resource.ListenerType, nil))
	lds := c.recv()
	c.send(req(resource.ListenerType, lds))
	c.send(req(resource.ClusterType, nil))
	cds := c.recv()
	c.send(req(resource.ClusterType, cds))
	before := s.Version()

	// A direct write, not a rename.
	if err := os.WriteFile(filepath.Join(dir, "listeners/tcp.yml"), []byte(strings.Replace(tcpListenersYAML, "10000", "10010", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	next := c.recv()
	if next.GetTypeUrl() != resource.ListenerType || next.GetVersionInfo() == lds.GetVersionInfo() {
		t.Fatalf("after an edit: type %s version %s (was %s)", next.GetTypeUrl(), next.GetVersionInfo(), lds.GetVersionInfo())
	}
	if got := unpackAll[*listenerv3.Listener](t, next.GetResources())["tcp"].GetAddress().GetSocketAddress().GetPortValue(); got != 10010 {
		t.Errorf("port %d after the edit, want 10010", got)
	}
	c.send(req(resource.ListenerType, next))
	if s.Version() == before {
		t.Error("Version did not change")
	}
	s.logs.waitLog(t, "pushing a new version", "previous="+before, "changed=Listener/tcp")
	// Only listeners changed: the clusters' version_info is the same, so nothing
	// is sent for them.
	c.none(300 * time.Millisecond)

	// Saving a file unchanged pushes nothing.
	version := s.Version()
	writeFile(t, dir, "routes.yaml", routeYAML)
	s.logs.waitLog(t, "resources unchanged", "version="+version)
	c.none(300 * time.Millisecond)

	// So does a file that is not a resource file.
	writeFile(t, dir, "notes.txt", "hello")
	c.none(300 * time.Millisecond)
}

func TestInvalidFileKeepsLastVersion(t *testing.T) {
	dir := writeFiles(t, testFiles())
	s := serve(t, dir)
	c := ads(t, s.conn)
	c.send(req(resource.ClusterType, nil))
	cds := c.recv()
	c.send(req(resource.ClusterType, cds))
	good := s.Version()

	bad := strings.Replace(clusterYAML, "connect_timeout: 1s", "connect_timeout: soon", 1)
	writeFile(t, dir, "clusters/backend.yaml", bad)
	line := s.logs.waitLog(t, "invalid resource file")
	for _, want := range []string{
		"file=" + filepath.Join(dir, "clusters/backend.yaml"),
		"field=connect_timeout",
		"version=" + good,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
	t.Logf("log line: %s", line)
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "backend.yaml: connect_timeout: ") {
		t.Errorf("Reload: %v", err)
	}
	c.none(300 * time.Millisecond)
	if s.Version() != good {
		t.Errorf("version %s after an invalid file, want %s still", s.Version(), good)
	}

	// A second bad file, of another kind: both are reported.
	writeFile(t, dir, "more.yaml", strings.Replace(clusterYAML, "name: backend", "name: backend2\nnmae: x", 1))
	s.logs.waitLog(t, "invalid resource file", "more.yaml", "field=nmae", "did you mean name?")

	// Fixing both serves the new set.
	if err := os.Remove(filepath.Join(dir, "more.yaml")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "clusters/backend.yaml", strings.Replace(clusterYAML, "1s", "2s", 1))
	next := c.recv()
	if next.GetVersionInfo() == cds.GetVersionInfo() {
		t.Fatal("same version after the fix")
	}
	s.logs.waitLog(t, "resource directory is valid again")
}

func TestDeleteRemovesResourceSotW(t *testing.T) {
	files := testFiles()
	files["clusters/second.yaml"] = strings.Replace(clusterYAML, "name: backend", "name: second", 1)
	dir := writeFiles(t, files)
	s := serve(t, dir)
	c := ads(t, s.conn)
	c.send(req(resource.ClusterType, nil))
	cds := c.recv()
	if got := keys(unpackAll[*clusterv3.Cluster](t, cds.GetResources())); !slices.Equal(got, []string{"backend", "second"}) {
		t.Fatalf("clusters %q", got)
	}
	c.send(req(resource.ClusterType, cds))
	if err := os.Remove(filepath.Join(dir, "clusters/second.yaml")); err != nil {
		t.Fatal(err)
	}
	cds = c.recv()
	if got := keys(unpackAll[*clusterv3.Cluster](t, cds.GetResources())); !slices.Equal(got, []string{"backend"}) {
		t.Fatalf("clusters %q after deleting second", got)
	}
	s.logs.waitLog(t, "pushing a new version", "removed=Cluster/second")
}

func TestNewDirectoryIsWatched(t *testing.T) {
	dir := writeFiles(t, testFiles())
	s := serve(t, dir)
	c := ads(t, s.conn)
	c.send(req(resource.ClusterType, nil))
	cds := c.recv()
	c.send(req(resource.ClusterType, cds))

	// A file in a directory created after the server started.
	writeFile(t, dir, "new/deeper/c.yaml", strings.Replace(clusterYAML, "name: backend", "name: later", 1))
	cds = c.recv()
	got := keys(unpackAll[*clusterv3.Cluster](t, cds.GetResources()))
	c.send(req(resource.ClusterType, cds))
	if !slices.Contains(got, "later") {
		// The directory and its file may arrive as two events.
		cds = c.recv()
		got = keys(unpackAll[*clusterv3.Cluster](t, cds.GetResources()))
		c.send(req(resource.ClusterType, cds))
	}
	if !slices.Equal(got, []string{"backend", "later"}) {
		t.Fatalf("clusters %q", got)
	}
	// And a later edit in it.
	writeFile(t, dir, "new/deeper/c.yaml", strings.Replace(clusterYAML, "name: backend", "name: renamed", 1))
	cds = c.recv()
	if got := keys(unpackAll[*clusterv3.Cluster](t, cds.GetResources())); !slices.Equal(got, []string{"backend", "renamed"}) {
		t.Fatalf("clusters %q", got)
	}
}

func TestPerTypeServices(t *testing.T) {
	s := serve(t, writeFiles(t, testFiles()))

	lds := open[*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse](t, listenerservice.NewListenerDiscoveryServiceClient(s.conn).StreamListeners)
	r := req("", nil) // the type is implied by the service
	lds.send(r)
	resp := lds.recv()
	if got := keys(unpackAll[*listenerv3.Listener](t, resp.GetResources())); !slices.Equal(got, []string{"http", "tcp"}) {
		t.Fatalf("LDS: listeners %q", got)
	}

	cds := open[*discoveryv3.DeltaDiscoveryRequest, *discoveryv3.DeltaDiscoveryResponse](t, clusterservice.NewClusterDiscoveryServiceClient(s.conn).DeltaClusters)
	cds.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode})
	if got := deltaNames(cds.recv()); !slices.Equal(got, []string{"backend"}) {
		t.Fatalf("delta CDS: clusters %q", got)
	}
}

func TestSecretsAndRuntime(t *testing.T) {
	s := serve(t, writeFiles(t, map[string]string{
		"secrets.yaml": `
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: token
  generic_secret: { secret: { inline_string: hunter2 } }
- "@type": type.googleapis.com/envoy.service.runtime.v3.Runtime
  name: rtds
  layer: { health_check.min_interval: 5 }
`,
	}))
	sds := open[*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse](t, secretservice.NewSecretDiscoveryServiceClient(s.conn).StreamSecrets)
	sds.send(req("", nil, "token"))
	secrets := unpackAll[*tlsv3.Secret](t, sds.recv().GetResources())
	if got := secrets["token"].GetGenericSecret().GetSecret().GetInlineString(); got != "hunter2" {
		t.Errorf("SDS: secret %q", got)
	}
	rtds := open[*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse](t, runtimeservice.NewRuntimeDiscoveryServiceClient(s.conn).StreamRuntime)
	rtds.send(req("", nil, "rtds"))
	layers := unpackAll[*runtimeservice.Runtime](t, rtds.recv().GetResources())
	if got := layers["rtds"].GetLayer().GetFields()["health_check.min_interval"].GetNumberValue(); got != 5 {
		t.Errorf("RTDS: layer value %v", got)
	}
}

func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xds.sock")

	// A socket file left by a server that died is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	l, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	// A live one is not.
	if l2, err := Listen("unix://" + path); err == nil {
		l2.Close()
		t.Fatal("Listen took over a live socket")
	}
	s := serveOn(t, writeFiles(t, testFiles()), l, "unix:"+path)
	c := ads(t, s.conn)
	c.send(req(resource.ListenerType, nil))
	if got := keys(unpackAll[*listenerv3.Listener](t, c.recv().GetResources())); !slices.Equal(got, []string{"http", "tcp"}) {
		t.Fatalf("listeners %q", got)
	}
}

func TestSet(t *testing.T) {
	s := serve(t, "")
	empty := s.Version()
	c := ads(t, s.conn)
	c.send(req(resource.ClusterType, nil))
	cds := c.recv()
	if len(cds.GetResources()) != 0 {
		t.Fatalf("resources without a directory: %v", cds)
	}
	c.send(req(resource.ClusterType, cds))

	// Set serves what a file would be refused for (no connect_timeout rules are
	// broken here, but a negative one would be): tests use it to provoke NACKs.
	cluster := &clusterv3.Cluster{Name: "pushed", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}}
	if err := s.Set(map[resource.Type][]types.Resource{resource.ClusterType: {cluster}}); err != nil {
		t.Fatal(err)
	}
	cds = c.recv()
	if got := keys(unpackAll[*clusterv3.Cluster](t, cds.GetResources())); !slices.Equal(got, []string{"pushed"}) {
		t.Fatalf("clusters %q", got)
	}
	if s.Version() == empty {
		t.Error("Version did not change")
	}
	// The client rejects it: the NACK is logged.
	nack := req(resource.ClusterType, cds)
	nack.VersionInfo = ""
	nack.ErrorDetail = &status.Status{Code: 3, Message: "cluster pushed: bad"}
	c.send(nack)
	s.logs.waitLog(t, "client rejected an update (NACK)", "node=test-node", "type=Cluster", `reason="cluster pushed: bad"`)

	// Setting the same content again pushes nothing.
	v := s.Version()
	if err := s.Set(map[resource.Type][]types.Resource{resource.ClusterType: {cluster}}); err != nil {
		t.Fatal(err)
	}
	if s.Version() != v {
		t.Error("same content, new version")
	}

	for name, bad := range map[string]map[resource.Type][]types.Resource{
		"wrong key":    {resource.ListenerType: {cluster}},
		"unknown type": {"type.googleapis.com/google.protobuf.Empty": {}},
		"no name":      {resource.ClusterType: {&clusterv3.Cluster{}}},
		"duplicate":    {resource.ClusterType: {cluster, cluster}},
		"nil resource": {resource.ClusterType: {nil}},
	} {
		if err := s.Set(bad); err == nil {
			t.Errorf("%s: Set accepted it", name)
		}
	}
	if err := s.Reload(); err == nil {
		t.Error("Reload without a directory succeeded")
	}
}

func TestServeTwice(t *testing.T) {
	s := serve(t, "")
	c := ads(t, s.conn) // the first Serve is running once this has its answer
	c.send(req(resource.ListenerType, nil))
	c.recv()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := s.Serve(context.Background(), l); err == nil {
		t.Fatal("second Serve succeeded")
	}
}

func TestUnresolvedReferencesAreWarnings(t *testing.T) {
	files := testFiles()
	delete(files, "routes.yaml")
	delete(files, "clusters/backend-endpoints.json")
	s := serve(t, writeFiles(t, files))
	for _, want := range [][]string{
		{"Listener http", "field=filter_chains[0].filters[0].typed_config.rds.route_config_name", `no RouteConfiguration \"local_route\" is served`},
		{"Cluster backend", "field=name", `no ClusterLoadAssignment \"backend\" is served`},
	} {
		s.logs.waitLog(t, append([]string{"level=WARN", "unresolved reference"}, want...)...)
	}
	// Served anyway.
	c := ads(t, s.conn)
	c.send(req(resource.ClusterType, nil))
	if got := keys(unpackAll[*clusterv3.Cluster](t, c.recv().GetResources())); !slices.Equal(got, []string{"backend"}) {
		t.Fatalf("clusters %q", got)
	}
}

func TestNewRefusesInvalidDirectory(t *testing.T) {
	files := testFiles()
	files["bad.yaml"] = "\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n"
	_, err := New(Options{Dir: writeFiles(t, files)})
	if err == nil || !strings.Contains(err.Error(), "bad.yaml: name: missing") {
		t.Fatalf("New: %v", err)
	}
	if _, err := New(Options{Dir: filepath.Join(t.TempDir(), "absent")}); err == nil {
		t.Fatal("New accepted a directory that does not exist")
	}
}

// TestExampleDirectory serves examples/controlplane, so that it keeps working.
func TestExampleDirectory(t *testing.T) {
	s := serve(t, filepath.Join("..", "..", "examples", "controlplane"))
	if got := s.logs.lines("level=WARN"); len(got) > 0 {
		t.Errorf("warnings: %q", got)
	}
	c := ads(t, s.conn)
	for _, tc := range []struct {
		url   string
		names []string
	}{
		{resource.ListenerType, []string{"tcp"}},
		{resource.ClusterType, []string{"backend"}},
		{resource.EndpointType, []string{"backend"}},
	} {
		c.send(req(tc.url, nil, tc.names...))
		resp := c.recv()
		var got []string
		for _, r := range resp.GetResources() {
			m, err := r.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, nameOf(m))
		}
		if !slices.Equal(got, tc.names) {
			t.Errorf("%s: %q, want %q", shortName(tc.url), got, tc.names)
		}
		c.send(req(tc.url, resp, tc.names...))
	}
}

// TestSymlinkedDirectory serves a directory given as a symbolic link to it, the
// way a deployment points at its current configuration.
func TestSymlinkedDirectory(t *testing.T) {
	real := writeFiles(t, testFiles())
	link := filepath.Join(t.TempDir(), "current")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	s := serve(t, link)
	c := ads(t, s.conn)
	c.send(req(resource.ClusterType, nil))
	cds := c.recv()
	if got := keys(unpackAll[*clusterv3.Cluster](t, cds.GetResources())); !slices.Equal(got, []string{"backend"}) {
		t.Fatalf("clusters %q", got)
	}
	c.send(req(resource.ClusterType, cds))
	writeFile(t, real, "clusters/backend.yaml", strings.Replace(clusterYAML, "1s", "3s", 1))
	if got := unpackAll[*clusterv3.Cluster](t, c.recv().GetResources())["backend"].GetConnectTimeout().AsDuration(); got != 3*time.Second {
		t.Errorf("connect_timeout %v after the edit", got)
	}
	s.logs.waitLog(t, "pushing a new version", "changed=Cluster/backend")
}
