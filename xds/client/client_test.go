package client

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	runtimev3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/google/go-cmp/cmp"

	"github.com/skiffproxy/skiff/internal/statstest"
	"github.com/skiffproxy/skiff/internal/xdstest"
	"github.com/skiffproxy/skiff/xds/resource"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var loopback0 = netip.MustParseAddrPort("127.0.0.1:0")

func node() *corev3.Node { return &corev3.Node{Id: nodeID, Cluster: "test"} }

// wantRequest compares a whole DiscoveryRequest.
func wantRequest(t *testing.T, got, want *discoveryv3.DiscoveryRequest) {
	t.Helper()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("DiscoveryRequest mismatch (-want +got):\n%s", diff)
	}
}

func wantDeltaRequest(t *testing.T, got, want *discoveryv3.DeltaDiscoveryRequest) {
	t.Helper()
	if diff := cmp.Diff(want, got, protocmp.Transform(), protocmp.SortRepeatedFields(&discoveryv3.DeltaDiscoveryRequest{}, "resource_names_subscribe", "resource_names_unsubscribe")); diff != "" {
		t.Fatalf("DeltaDiscoveryRequest mismatch (-want +got):\n%s", diff)
	}
}

func full(cluster *clusterv3.Cluster, cla proto.Message, l *listenerv3.Listener) map[resourcev3.Type][]types.Resource {
	m := map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {cluster},
		resourcev3.EndpointType: {cla.(types.Resource)},
	}
	if l != nil {
		m[resourcev3.ListenerType] = []types.Resource{l}
	}
	return m
}

func TestStateOfTheWorldADS(t *testing.T) {
	up := greeter(t, "backend-1")
	f := newFixture(t, setup{})
	v1 := f.cp.Push(full(edsCluster("backend"), assignment("backend", up), tcpListener("ingress", loopback0, "backend")))

	// CDS first, with the node and no version.
	wantRequest(t, f.cp.Request(resource.ClusterType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.ClusterType})
	cdsResp := f.cp.Response(resource.ClusterType, 0)
	// The CDS ACK, then the EDS subscription the cluster needs.
	wantRequest(t, f.cp.Request(resource.ClusterType, 1), &discoveryv3.DiscoveryRequest{
		Node: node(), TypeUrl: resource.ClusterType, VersionInfo: v1, ResponseNonce: cdsResp.GetNonce()})
	wantRequest(t, f.cp.Request(resource.EndpointType, 0), &discoveryv3.DiscoveryRequest{
		Node: node(), TypeUrl: resource.EndpointType, ResourceNames: []string{"backend"}})
	edsResp := f.cp.Response(resource.EndpointType, 0)
	wantRequest(t, f.cp.Request(resource.EndpointType, 1), &discoveryv3.DiscoveryRequest{
		Node: node(), TypeUrl: resource.EndpointType, VersionInfo: v1, ResourceNames: []string{"backend"}, ResponseNonce: edsResp.GetNonce()})
	// Listeners only once the clusters are warm.
	wantRequest(t, f.cp.Request(resource.ListenerType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.ListenerType})
	ldsResp := f.cp.Response(resource.ListenerType, 0)
	wantRequest(t, f.cp.Request(resource.ListenerType, 1), &discoveryv3.DiscoveryRequest{
		Node: node(), TypeUrl: resource.ListenerType, VersionInfo: v1, ResponseNonce: ldsResp.GetNonce()})

	f.waitReady()
	if got := through(t, f.listenerAddr("ingress")); got != "backend-1" {
		t.Fatalf("through the listener: %q", got)
	}
	statstest.Expect(t, f.stats, map[string]int64{
		"control_plane.connected_state":           1,
		"cluster_manager.cds.update_success":      1,
		"listener_manager.lds.update_success":     1,
		"listener_manager.total_listeners_active": 1,
		"cluster_manager.active_clusters":         2, // with the static xds cluster
	})

	// An endpoint update applies in place; new connections go to the new host.
	up2 := greeter(t, "backend-2")
	v2 := f.cp.Push(full(edsCluster("backend"), assignment("backend", up2), tcpListener("ingress", loopback0, "backend")))
	addr := f.listenerAddr("ingress")
	eventually(t, "new endpoint in use", func() string {
		if got := through(t, addr); got != "backend-2" {
			return "reached " + got
		}
		return ""
	})
	if got := f.listenerAddr("ingress"); got != addr {
		t.Fatalf("listener rebound from %s to %s on an update that changed nothing of it", addr, got)
	}
	eventually(t, "versions", func() string {
		if v := f.client.Versions(); v[resource.EndpointType] != v2 || v[resource.ClusterType] != v2 || v[resource.ListenerType] != v2 {
			return "versions " + strings.Join([]string{v[resource.ClusterType], v[resource.EndpointType], v[resource.ListenerType]}, ",")
		}
		return ""
	})
}

func TestNACKKeepsLastGoodConfig(t *testing.T) {
	up := greeter(t, "good")
	f := newFixture(t, setup{})
	v1 := f.cp.Push(full(edsCluster("backend"), assignment("backend", up), tcpListener("ingress", loopback0, "backend")))
	f.waitReady()
	addr := f.listenerAddr("ingress")

	// A listener whose filter skiff does not know: the LDS response is
	// NACKed, naming the listener and the field, with the last good version.
	bad := tcpListener("broken", loopback0, "backend")
	bad.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {tcpListener("ingress", loopback0, "backend"), bad},
	})
	resp := f.cp.Response(resource.ListenerType, 1)
	nack := f.cp.Request(resource.ListenerType, 2)
	if nack.GetVersionInfo() != v1 || nack.GetResponseNonce() != resp.GetNonce() || nack.GetErrorDetail() == nil {
		t.Fatalf("want a NACK of nonce %s with version %s, got %v", resp.GetNonce(), v1, nack)
	}
	msg := nack.GetErrorDetail().GetMessage()
	for _, want := range []string{`Listener "broken"`, "filter_chains[0].filters[0].typed_config", "RedisProxy"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error_detail %q does not mention %q", msg, want)
		}
	}
	if got := through(t, addr); got != "good" {
		t.Fatalf("after the NACK the old listener answers %q", got)
	}
	// (At least one: go-control-plane answers the NACK by sending its
	// snapshot again, which is rejected again.)
	if v, _ := f.stats.Value("listener_manager.lds.update_rejected"); v < 1 {
		t.Errorf("listener_manager.lds.update_rejected = %d, want at least 1", v)
	}
	for _, l := range f.dp.Listeners() {
		if l.Name == "broken" {
			t.Fatal("the rejected listener runs")
		}
	}
	// CSDS shows the rejection.
	var found bool
	for _, g := range f.client.GenericXdsConfigs() {
		if g.GetName() == "broken" {
			found = g.GetClientStatus().String() == "NACKED" && strings.Contains(g.GetErrorState().GetDetails(), "typed_config")
		}
	}
	if !found {
		t.Errorf("CSDS does not report the listener NACKED: %v", f.client.GenericXdsConfigs())
	}
}

func TestDuplicateNamesAreNACKed(t *testing.T) {
	up := greeter(t, "x")
	f := newFixture(t, setup{})
	f.cp.Push(full(edsCluster("backend"), assignment("backend", up), nil))
	cds := f.cp.Response(resource.ClusterType, 0)
	f.cp.Request(resource.ClusterType, 1) // ACK

	// go-control-plane's cache refuses duplicates, so this response is sent by
	// hand through the client's handler, as if it came on the stream.
	a, _ := anypb.New(edsCluster("dup"))
	ts := f.client.types[resource.ClusterType]
	f.client.handleSotW(ts.stream, &discoveryv3.DiscoveryResponse{
		VersionInfo: "dup", TypeUrl: resource.ClusterType, Nonce: "n-dup", Resources: []*anypb.Any{a, a},
	})
	// The NACK is read off the wire: the stream's sender takes the error
	// from the client's state as it sends it.
	nack := f.cp.RequestAnswering(resource.ClusterType, "n-dup")
	if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, `Cluster "dup": appears twice`) {
		t.Fatalf("NACK error_detail %q", msg)
	}
	if nack.GetVersionInfo() != cds.GetVersionInfo() {
		t.Fatalf("version after a rejected response %q, want %q", nack.GetVersionInfo(), cds.GetVersionInfo())
	}
	f.client.mu.Lock()
	first := ts.res["dup"]
	f.client.mu.Unlock()
	// As in Envoy's CDS, the first of the duplicates is applied.
	if first == nil || first.Version != "dup" {
		t.Fatalf("the first of the duplicates is not taken: %v", first)
	}
}

func TestDeltaADS(t *testing.T) {
	up := greeter(t, "delta-backend")
	f := newFixture(t, setup{delta: true})
	f.cp.Push(full(edsCluster("backend"), assignment("backend", up), tcpListener("ingress", loopback0, "backend")))

	wantDeltaRequest(t, f.cp.DeltaRequest(resource.ClusterType, 0), &discoveryv3.DeltaDiscoveryRequest{Node: node(), TypeUrl: resource.ClusterType})
	cds := f.cp.DeltaResponse(resource.ClusterType, 0)
	wantDeltaRequest(t, f.cp.DeltaRequest(resource.ClusterType, 1), &discoveryv3.DeltaDiscoveryRequest{Node: node(), TypeUrl: resource.ClusterType, ResponseNonce: cds.GetNonce()})
	wantDeltaRequest(t, f.cp.DeltaRequest(resource.EndpointType, 0), &discoveryv3.DeltaDiscoveryRequest{Node: node(), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"backend"}})
	f.waitReady()
	if got := through(t, f.listenerAddr("ingress")); got != "delta-backend" {
		t.Fatalf("through the listener: %q", got)
	}

	// Removing the cluster from CDS while the listener still uses it: the
	// cluster is kept until the listener stops referencing it.
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {tcpListener("ingress", loopback0, "backend")},
	})
	resp := f.cp.DeltaResponse(resource.ClusterType, 1)
	if len(resp.GetRemovedResources()) != 1 || resp.GetRemovedResources()[0] != "backend" {
		t.Fatalf("expected the cluster removed, got %v", resp)
	}
	f.cp.DeltaRequest(resource.ClusterType, 2) // its ACK
	if got := through(t, f.listenerAddr("ingress")); got != "delta-backend" {
		t.Fatalf("a cluster still used by a listener was dropped: %q", got)
	}
	// The listener moves to another cluster: now the old one goes.
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("other")},
		resourcev3.EndpointType: {assignment("other", up)},
		resourcev3.ListenerType: {tcpListener("ingress", loopback0, "other")},
	})
	eventually(t, "the unused cluster is dropped", func() string {
		if f.dp.Clusters().Get("backend") != nil {
			return "cluster backend still present"
		}
		if f.dp.Clusters().Get("other") == nil {
			return "cluster other missing"
		}
		return ""
	})
}

// TestDeltaSubscriptionWithoutNonce: a delta request that only changes the
// subscription carries no response_nonce (DeltaDiscoveryRequest's comment:
// "Otherwise (unlike in DiscoveryRequest) response_nonce must be omitted"),
// as Envoy's: istiod drops a request whose nonce is not its last one sent
// (an EDS push crossing the request), and the new cluster's subscription
// was lost for the rest of the stream. Only the ACK of a response has it.
func TestDeltaSubscriptionWithoutNonce(t *testing.T) {
	up := greeter(t, "b")
	f := newFixture(t, setup{delta: true})
	f.cp.Push(full(edsCluster("a"), assignment("a", up), tcpListener("la", loopback0, "a")))
	f.waitReady()
	eds := f.cp.DeltaResponse(resource.EndpointType, 0)
	if ack := f.cp.DeltaRequest(resource.EndpointType, 1); ack.GetResponseNonce() != eds.GetNonce() {
		t.Fatalf("the EDS ACK carries nonce %q, want the response's %q", ack.GetResponseNonce(), eds.GetNonce())
	}
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("a"), edsCluster("b")},
		resourcev3.EndpointType: {assignment("a", up), assignment("b", up)},
		resourcev3.ListenerType: {tcpListener("la", loopback0, "a")},
	})
	r := f.cp.DeltaRequest(resource.EndpointType, 2)
	if !slices.Equal(r.GetResourceNamesSubscribe(), []string{"b"}) || r.GetResponseNonce() != "" {
		t.Errorf("EDS request for the new cluster: subscribe %v, nonce %q; want [b] and no nonce", r.GetResourceNamesSubscribe(), r.GetResponseNonce())
	}
}

// TestUnreachableCountsFailures: with the control plane unreachable, each
// stream that could not be made counts in the subscriptions'
// update_failure, as Envoy counts a failed establishment; before, only a
// stream that had been made and then ended did, and dashboards watching
// cds.update_failure stayed at 0 while skiff could not reach istiod.
func TestUnreachableCountsFailures(t *testing.T) {
	cp := xdstest.Start(t, "127.0.0.1:0", nodeID)
	cp.Stop()
	f := newFixtureWith(t, cp, setup{})
	// (LDS is asked for once the clusters are in, as in Envoy.)
	eventually(t, "cds.update_failure counts the failed streams", func() string {
		if v, _ := f.stats.Value("cluster_manager.cds.update_failure"); v == 0 {
			return "cluster_manager.cds.update_failure is 0"
		}
		return ""
	})
}

func TestReconnectResendsVersions(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			up := greeter(t, "persist")
			cp := xdstest.Start(t, "127.0.0.1:0", nodeID)
			addr := cp.Addr()
			f := newFixtureWith(t, cp, setup{delta: delta})
			v1 := cp.Push(full(edsCluster("backend"), assignment("backend", up), tcpListener("ingress", loopback0, "backend")))
			f.waitReady()
			lis := f.listenerAddr("ingress")

			cp.Stop()
			if got := through(t, lis); got != "persist" {
				t.Fatalf("traffic while the control plane is down: %q", got)
			}
			cp2 := xdstest.Start(t, addr, nodeID)
			cp2.Push(full(edsCluster("backend"), assignment("backend", up), tcpListener("ingress", loopback0, "backend")))
			if delta {
				r := cp2.DeltaRequest(resource.ClusterType, 0)
				if r.GetInitialResourceVersions()["backend"] == "" {
					t.Fatalf("delta reconnect without initial_resource_versions: %v", r)
				}
				r = cp2.DeltaRequest(resource.EndpointType, 0)
				if len(r.GetResourceNamesSubscribe()) != 1 || r.GetInitialResourceVersions()["backend"] == "" {
					t.Fatalf("delta EDS reconnect: %v", r)
				}
			} else {
				wantRequest(t, cp2.Request(resource.ClusterType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.ClusterType, VersionInfo: v1})
				wantRequest(t, cp2.Request(resource.EndpointType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.EndpointType, VersionInfo: v1, ResourceNames: []string{"backend"}})
				wantRequest(t, cp2.Request(resource.ListenerType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.ListenerType, VersionInfo: v1})
			}
			if got := through(t, lis); got != "persist" {
				t.Fatalf("traffic after the reconnect: %q", got)
			}
		})
	}
}

// A hot-restart successor starts from its parent's accepted state: it serves
// that at once and subscribes to everything it names, the endpoints and routes
// included, with the versions it has.
func TestInitialStateFromParent(t *testing.T) {
	up := greeter(t, "inherited")
	cp := xdstest.Start(t, "127.0.0.1:0", nodeID)
	parent := newFixtureWith(t, cp, setup{})
	v1 := cp.Push(full(edsCluster("backend"), assignment("backend", up), tcpListener("ingress", loopback0, "backend")))
	parent.waitReady()
	state := parent.client.State()
	parent.close()

	cp2 := xdstest.Start(t, "127.0.0.1:0", nodeID) // nothing pushed: the state alone serves
	f := newFixtureWith(t, cp2, setup{initial: state})
	if got := through(t, f.listenerAddr("ingress")); got != "inherited" {
		t.Fatalf("through the inherited listener: %q", got)
	}
	wantRequest(t, cp2.Request(resource.ClusterType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.ClusterType, VersionInfo: v1})
	wantRequest(t, cp2.Request(resource.EndpointType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.EndpointType, VersionInfo: v1, ResourceNames: []string{"backend"}})
	wantRequest(t, cp2.Request(resource.ListenerType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.ListenerType, VersionInfo: v1})
}

func TestPerTypeStreams(t *testing.T) {
	up := greeter(t, "per-type")
	f := newFixture(t, setup{perType: true})
	cl := edsCluster("backend")
	// With per-type sources, the EDS config source of a cluster can be "self"
	// (the CDS source) or ADS; "self" is what a non-ADS control plane uses.
	cl.EdsClusterConfig.EdsConfig = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}}}
	f.cp.Push(full(cl, assignment("backend", up), tcpListener("ingress", loopback0, "backend")))
	f.waitReady()
	if got := through(t, f.listenerAddr("ingress")); got != "per-type" {
		t.Fatalf("through the listener: %q", got)
	}
}

func TestListenerWaitsForClusters(t *testing.T) {
	f := newFixture(t, setup{edsTimeout: time.Hour})
	// Only a CDS resource whose endpoints never come: LDS must not be requested.
	f.cp.Push(map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {edsCluster("backend")}})
	f.cp.Request(resource.EndpointType, 0)
	time.Sleep(300 * time.Millisecond)
	for _, r := range f.cp.Requests() {
		if r.(*discoveryv3.DiscoveryRequest).GetTypeUrl() == resource.ListenerType {
			t.Fatal("LDS requested while a cluster was still warming")
		}
	}
}

func TestRuntimeLayerOverRTDS(t *testing.T) {
	f := newFixture(t, setup{rtds: true})
	layer, err := structpb.NewStruct(map[string]any{"feature.enabled": true, "limits": map[string]any{"max": 7}})
	if err != nil {
		t.Fatal(err)
	}
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.RuntimeType:  {&runtimev3.Runtime{Name: "dynamic", Layer: layer}},
		resourcev3.ClusterType:  {},
		resourcev3.ListenerType: {},
	})
	wantRequest(t, f.cp.Request(resource.RuntimeType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.RuntimeType, ResourceNames: []string{"dynamic"}})
	eventually(t, "runtime layer applied", func() string {
		s := f.runtime.Snapshot()
		if !s.Bool("feature.enabled", false) || s.Uint("limits.max", 0) != 7 {
			return "runtime values not visible"
		}
		return ""
	})
}

func hcmListener(name, routeConfig string) *listenerv3.Listener {
	return hcmListenerFrom(name, routeConfig, adsSource())
}

// hcmListenerFrom is an HTTP listener whose routes come from RDS through src.
func hcmListenerFrom(name, routeConfig string, src *corev3.ConfigSource) *listenerv3.Listener {
	rtr, _ := anypb.New(&routerv3.Router{})
	a, _ := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: routeConfig, ConfigSource: src}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: rtr}}},
	})
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(loopback0),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a},
		}}}},
	}
}

func TestRDSFollowsListeners(t *testing.T) {
	up := greeter(t, "x")
	f := newFixture(t, setup{})
	// The listener names routes "a", which the control plane does not have yet.
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {hcmListener("http", "a")},
		resourcev3.RouteType:    {},
	})
	wantRequest(t, f.cp.Request(resource.RouteType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.RouteType, ResourceNames: []string{"a"}})
	time.Sleep(200 * time.Millisecond)
	for _, l := range f.dp.Listeners() {
		if l.Name == "http" {
			t.Fatal("a listener whose routes have not arrived is serving (it must warm)")
		}
	}
	if f.client.Initialized() {
		t.Fatal("initialized while a listener warms")
	}
	v := f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {hcmListener("http", "a")},
		resourcev3.RouteType:    {routeTo("a", "backend")},
	})
	f.waitReady()
	f.listenerAddr("http")
	eventually(t, "RDS ACKed", func() string {
		if got := f.client.Versions()[resource.RouteType]; got != v {
			return "RDS version " + got
		}
		return ""
	})
	// The listener moves to routes "b": the subscription follows.
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {hcmListener("http", "b")},
		resourcev3.RouteType:    {routeTo("a", "backend"), routeTo("b", "backend")},
	})
	eventually(t, "RDS subscription follows the listener", func() string {
		for _, r := range f.cp.Requests() {
			if dr, ok := r.(*discoveryv3.DiscoveryRequest); ok && dr.GetTypeUrl() == resource.RouteType &&
				len(dr.GetResourceNames()) == 1 && dr.GetResourceNames()[0] == "b" {
				return ""
			}
		}
		return "no RDS request for [b] alone"
	})
}

func TestResourceTTLAndHeartbeat(t *testing.T) {
	f := newFixture(t, setup{})
	v := f.cp.Push(map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {}, resourcev3.ListenerType: {}})
	f.waitReady()
	ts := f.client.types[resource.ClusterType]
	wrap := func(withResource bool) *anypb.Any {
		w := &discoveryv3.Resource{Name: "short-lived", Version: "1", Ttl: durationpb.New(300 * time.Millisecond)}
		if withResource {
			c := edsCluster("short-lived")
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
			c.EdsClusterConfig = nil
			c.LoadAssignment = assignment("short-lived")
			w.Resource, _ = anypb.New(c)
		}
		a, _ := anypb.New(w)
		return a
	}
	// The responses are handed to the client's handler as if they came on the
	// stream (go-control-plane only sends TTLs with its heartbeating cache).
	// They carry the server's version, so that the ACKs they cause do not make
	// the real server resend its own (empty) CDS state.
	send := func(withResource bool, nonce string) {
		f.client.handleSotW(ts.stream, &discoveryv3.DiscoveryResponse{VersionInfo: v, TypeUrl: resource.ClusterType, Nonce: nonce, Resources: []*anypb.Any{wrap(withResource)}})
	}
	send(true, "ttl-1")
	if f.dp.Clusters().Get("short-lived") == nil {
		t.Fatal("the TTL'd cluster was not applied")
	}
	// Heartbeats keep it alive well past its TTL.
	for i := range 6 {
		time.Sleep(100 * time.Millisecond)
		send(false, fmt.Sprintf("hb-%d", i))
	}
	if f.dp.Clusters().Get("short-lived") == nil {
		t.Fatal("heartbeats did not keep the cluster alive")
	}
	// Without them it goes once the TTL passes.
	eventually(t, "expired cluster removed", func() string {
		if f.dp.Clusters().Get("short-lived") != nil {
			return "still there"
		}
		return ""
	})
}

// TestHeldBackNACKDoesNotRideOnTheNextACK: a repeated NACK that the client
// paces is dropped when a good update is accepted meanwhile, so that the ACK
// of the good version carries no error_detail.
func TestHeldBackNACKDoesNotRideOnTheNextACK(t *testing.T) {
	up := greeter(t, "x")
	f := newFixture(t, setup{})
	f.cp.Push(full(edsCluster("backend"), assignment("backend", up), nil))
	f.cp.Response(resource.ClusterType, 0)
	f.cp.Request(resource.ClusterType, 1) // ACK

	ts := f.client.types[resource.ClusterType]
	bad := edsCluster("bad")
	bad.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED // not supported: rejected
	a, _ := anypb.New(bad)
	// The repeats are held back, each longer (nackPacing): the last one
	// waits a second, so that the check below sees it held even on a slow,
	// loaded machine (after one repeat the wait was 100 ms, which a test run
	// under load sometimes outlasted).
	for i := range 6 {
		f.client.handleSotW(ts.stream, &discoveryv3.DiscoveryResponse{
			VersionInfo: "bad", TypeUrl: resource.ClusterType, Nonce: fmt.Sprintf("n-bad-%d", i), Resources: []*anypb.Any{a},
		})
		if i == 0 {
			// The first NACK goes out before the repeat comes in; otherwise
			// the send still queued for it would carry the repeat at once.
			if r := f.cp.Request(resource.ClusterType, 2); r.GetErrorDetail() == nil {
				t.Fatalf("the request after a rejected update is not a NACK: %v", r)
			}
		}
	}
	f.client.mu.Lock()
	held := ts.nack != nil && ts.nackTimer != nil
	f.client.mu.Unlock()
	if !held {
		t.Fatal("the repeated NACK was not held back")
	}
	g, _ := anypb.New(edsCluster("backend"))
	f.client.handleSotW(ts.stream, &discoveryv3.DiscoveryResponse{
		VersionInfo: "good", TypeUrl: resource.ClusterType, Nonce: "n-good", Resources: []*anypb.Any{g},
	})
	// The request answering it is read off the wire, not the client's state:
	// the control plane may answer that ACK (its nonce is not one it sent)
	// with its own snapshot before the test could look.
	ack := f.cp.RequestAnswering(resource.ClusterType, "n-good")
	if ack.GetErrorDetail() != nil || ack.GetVersionInfo() != "good" {
		t.Fatalf("the request answering a good update is not its ACK: %v", ack)
	}
}
