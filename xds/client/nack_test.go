package client

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/xds/resource"
)

// --- resources for the NACK tests ---

// badCluster is a cluster the data plane rejects.
func badCluster(name string) *clusterv3.Cluster {
	c := edsCluster(name)
	c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED // not supported: rejected
	return c
}

// badAssignment is a ClusterLoadAssignment skiff rejects (a named endpoint).
func badAssignment(name string) *endpointv3.ClusterLoadAssignment {
	cla := assignment(name)
	cla.Endpoints[0].LbEndpoints = []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_EndpointName{EndpointName: "named"}}}
	return cla
}

// routeTo is a route configuration sending everything to cluster.
func routeTo(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}},
	}}}
}

// badRoute is a route configuration that fails validation (a virtual host
// needs a domain).
func badRoute(name, cluster string) *routev3.RouteConfiguration {
	rc := routeTo(name, cluster)
	rc.VirtualHosts[0].Domains = nil
	return rc
}

// waitForever is an ADS config source without an initial fetch timeout.
func waitForever() *corev3.ConfigSource {
	src := adsSource()
	src.InitialFetchTimeout = durationpb.New(0)
	return src
}

// httpUpstream is an HTTP server that answers every request with body.
func httpUpstream(t testing.TB, body string) netip.AddrPort {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) }))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String())
}

// get sends one GET through addr and returns the status and body.
func get(t testing.TB, addr netip.AddrPort) (int, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatalf("GET through %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// nackOf waits for the NACK of type url that follows response n of that type.
func (f *fixture) nackOf(url string, n int) *discoveryv3.DiscoveryRequest {
	f.t.Helper()
	resp := f.cp.Response(url, n)
	for i := 0; ; i++ {
		r := f.cp.Request(url, i)
		if r.GetResponseNonce() == resp.GetNonce() {
			if r.GetErrorDetail() == nil {
				f.t.Fatalf("response %d of %s was ACKed, want a NACK", n, resource.ShortName(url))
			}
			return r
		}
	}
}

// csdsStatus is the CSDS client status of a resource, "" if CSDS does not
// list it.
func (f *fixture) csdsStatus(url, name string) string {
	for _, g := range f.client.GenericXdsConfigs() {
		if g.GetTypeUrl() == url && g.GetName() == name {
			return g.GetClientStatus().String()
		}
	}
	return ""
}

// --- item: a NACK ends the initial fetch ---

// TestRejectedCDSEndsInitialization: as Envoy's CdsApiImpl::onConfigUpdateFailed
// ("allow server startup to continue, even if we have a bad config"), a
// rejected first CDS response counts as fetched: LDS is requested and the
// client initializes, without waiting for initial_fetch_timeout (here none:
// it would wait forever).
func TestRejectedCDSEndsInitialization(t *testing.T) {
	f := newFixture(t, setup{noFetchTimeout: true})
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {badCluster("bad")},
		resourcev3.ListenerType: {},
	})
	nack := f.nackOf(resource.ClusterType, 0)
	if got := nack.GetErrorDetail().GetCode(); got != int32(codes.Internal) {
		t.Errorf("NACK error_detail.code %d, want %d (INTERNAL, as Envoy)", got, codes.Internal)
	}
	wantRequest(t, f.cp.Request(resource.ListenerType, 0), &discoveryv3.DiscoveryRequest{Node: node(), TypeUrl: resource.ListenerType})
	f.waitReady()
	if st := f.csdsStatus(resource.ClusterType, "bad"); st != "NACKED" {
		t.Errorf("CSDS status of the rejected cluster %q, want NACKED", st)
	}
}

// TestRejectedLDSEndsInitialization: a rejected first LDS response
// initializes the client (LdsApiImpl::onConfigUpdateFailed).
func TestRejectedLDSEndsInitialization(t *testing.T) {
	f := newFixture(t, setup{noFetchTimeout: true})
	bad := tcpListener("broken", loopback0, "backend")
	bad.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
	f.cp.Push(map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {}, resourcev3.ListenerType: {bad}})
	f.nackOf(resource.ListenerType, 0)
	f.waitReady()
}

// TestRejectedEDSWarmsTheCluster: a rejected EDS response ends the initial
// fetch of every endpoints subscription still waiting (Envoy calls
// onConfigUpdateFailed on each watch of the type, and EdsClusterImpl then
// completes its initialization): the cluster warms without endpoints and
// the client initializes.
func TestRejectedEDSWarmsTheCluster(t *testing.T) {
	f := newFixture(t, setup{})
	cl := edsCluster("backend")
	cl.EdsClusterConfig.EdsConfig = waitForever()
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {cl},
		resourcev3.EndpointType: {badAssignment("backend")},
		resourcev3.ListenerType: {},
	})
	f.nackOf(resource.EndpointType, 0)
	f.waitReady()
	c := f.dp.Clusters().Get("backend")
	if c == nil {
		t.Fatal("the cluster whose endpoints were rejected is not in use")
	}
}

// TestRejectedRDSWarmsTheListener: a new listener whose route configuration
// is rejected warms without it (RdsRouteConfigSubscription::
// onConfigUpdateFailed marks its init target ready) and answers 404, instead
// of refusing connections until the initial fetch timeout (here none).
func TestRejectedRDSWarmsTheListener(t *testing.T) {
	up := httpUpstream(t, "routed")
	f := newFixture(t, setup{noFetchTimeout: true})
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {hcmListenerFrom("http", "a", waitForever())},
		resourcev3.RouteType:    {badRoute("a", "backend")},
	})
	f.nackOf(resource.RouteType, 0)
	f.waitReady()
	if code, _ := get(t, f.listenerAddr("http")); code != http.StatusNotFound {
		t.Fatalf("through a listener without its (rejected) routes: %d, want 404", code)
	}
	// The fixed routes are taken as usual.
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {hcmListenerFrom("http", "a", waitForever())},
		resourcev3.RouteType:    {routeTo("a", "backend")},
	})
	eventually(t, "the fixed routes serve", func() string {
		if code, body := get(t, f.listenerAddr("http")); code != http.StatusOK || body != "routed" {
			return "got " + http.StatusText(code) + " " + body
		}
		return ""
	})
}

// --- item: delta removals of route configurations and endpoints ---

// TestDeltaRDSRemovalIgnored: Envoy ignores a delta removal of a route
// configuration ("Server sent a delta RDS update attempting to remove a
// resource ... Ignoring."): the listener keeps routing with the last one.
func TestDeltaRDSRemovalIgnored(t *testing.T) {
	up := httpUpstream(t, "routed")
	f := newFixture(t, setup{delta: true})
	all := map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {hcmListener("http", "a")},
		resourcev3.RouteType:    {routeTo("a", "backend")},
	}
	f.cp.Push(all)
	f.waitReady()
	addr := f.listenerAddr("http")
	if code, body := get(t, addr); code != http.StatusOK || body != "routed" {
		t.Fatalf("before the removal: %d %q", code, body)
	}
	delete(all, resourcev3.RouteType)
	f.cp.Push(all)
	f.waitDeltaRemoval(resource.RouteType, "a")
	if code, body := get(t, addr); code != http.StatusOK || body != "routed" {
		t.Fatalf("after a delta removal of the route configuration: %d %q, want the last routes still serving", code, body)
	}
	if st := f.csdsStatus(resource.RouteType, "a"); st != "ACKED" {
		t.Errorf("CSDS status of the removed route configuration %q, want it still ACKED", st)
	}
}

// TestDeltaEDSRemovalIgnored: EdsClusterImpl takes a delta removal of its
// ClusterLoadAssignment as an update without resources, which keeps the
// hosts it has: the cluster keeps its endpoints.
func TestDeltaEDSRemovalIgnored(t *testing.T) {
	up := greeter(t, "kept")
	f := newFixture(t, setup{delta: true})
	all := map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("backend")},
		resourcev3.EndpointType: {assignment("backend", up)},
		resourcev3.ListenerType: {tcpListener("ingress", loopback0, "backend")},
	}
	f.cp.Push(all)
	f.waitReady()
	addr := f.listenerAddr("ingress")
	delete(all, resourcev3.EndpointType)
	f.cp.Push(all)
	f.waitDeltaRemoval(resource.EndpointType, "backend")
	if got := through(t, addr); got != "kept" {
		t.Fatalf("after a delta removal of the endpoints: %q, want the last endpoints still used", got)
	}
}

// TestDeltaEDSRemovalEndsInitialFetch: a delta removal of a
// ClusterLoadAssignment not received yet completes the cluster's
// initialization (without endpoints), as EdsClusterImpl's update without
// resources does.
func TestDeltaEDSRemovalEndsInitialFetch(t *testing.T) {
	f := newFixture(t, setup{delta: true})
	cl := edsCluster("backend")
	cl.EdsClusterConfig.EdsConfig = waitForever()
	f.cp.Push(map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {cl}, resourcev3.ListenerType: {}})
	f.cp.DeltaRequest(resource.EndpointType, 0)
	// go-control-plane removes only what it sent: the removal is handed to
	// the client as if it came on the stream.
	eds := f.client.types[resource.EndpointType]
	f.client.handleDelta(eds.stream, &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl: resource.EndpointType, Nonce: "n-removed", RemovedResources: []string{"backend"},
	})
	f.waitReady()
	if f.dp.Clusters().Get("backend") == nil {
		t.Fatal("the cluster is not in use after its endpoints were removed before they came")
	}
}

// waitDeltaRemoval waits until the client has answered a delta response
// removing name.
func (f *fixture) waitDeltaRemoval(url, name string) {
	f.t.Helper()
	for n := 0; ; n++ {
		resp := f.cp.DeltaResponse(url, n)
		if !slices.Contains(resp.GetRemovedResources(), name) {
			continue
		}
		for i := 0; ; i++ {
			if r := f.cp.DeltaRequest(url, i); r.GetResponseNonce() == resp.GetNonce() {
				return
			}
		}
	}
}

// --- item: the NACK state of wildcard types ---

// TestNACKStateReplacedByLaterUpdates: as Envoy's listener manager replaces
// its error state on each LDS update, a resource NACKED in one update is no
// longer reported NACKED (CSDS, and so the config dump) once a later
// accepted update does not have it.
func TestNACKStateReplacedByLaterUpdates(t *testing.T) {
	up := greeter(t, "x")
	f := newFixture(t, setup{})
	good := func(extra ...types.Resource) map[resourcev3.Type][]types.Resource {
		m := full(edsCluster("backend"), assignment("backend", up), tcpListener("ingress", loopback0, "backend"))
		for _, r := range extra {
			switch r := r.(type) {
			case *clusterv3.Cluster:
				m[resourcev3.ClusterType] = append(m[resourcev3.ClusterType], r)
			default:
				m[resourcev3.ListenerType] = append(m[resourcev3.ListenerType], r)
			}
		}
		return m
	}
	f.cp.Push(good())
	f.waitReady()
	badL := tcpListener("l3", loopback0, "backend")
	badL.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
	f.cp.Push(good(badCluster("c2"), badL))
	f.nackOf(resource.ClusterType, 1)
	f.nackOf(resource.ListenerType, 1)
	if c, l := f.csdsStatus(resource.ClusterType, "c2"), f.csdsStatus(resource.ListenerType, "l3"); c != "NACKED" || l != "NACKED" {
		t.Fatalf("CSDS status of the rejected cluster %q and listener %q, want NACKED", c, l)
	}
	v := f.cp.Push(good())
	eventually(t, "the later versions accepted", func() string {
		if got := f.client.Versions(); got[resource.ClusterType] != v || got[resource.ListenerType] != v {
			return "versions " + got[resource.ClusterType] + ", " + got[resource.ListenerType]
		}
		return ""
	})
	for _, g := range f.client.GenericXdsConfigs() {
		if g.GetClientStatus().String() == "NACKED" || g.GetErrorState() != nil {
			t.Errorf("%s %q still reported %s (%s) after an accepted update without it",
				resource.ShortName(g.GetTypeUrl()), g.GetName(), g.GetClientStatus(), g.GetErrorState().GetDetails())
		}
	}
}

// --- item: set_node_on_first_message_only per config source ---

// TestNodeOnFirstMessageOnlyPerSource: set_node_on_first_message_only is
// honoured on the config source that has it, per-type api_config_source as
// well as ADS: the node is in the first request of the stream only.
func TestNodeOnFirstMessageOnlyPerSource(t *testing.T) {
	for _, perType := range []bool{false, true} {
		t.Run(map[bool]string{false: "ads", true: "per-type"}[perType], func(t *testing.T) {
			up := greeter(t, "x")
			var mu sync.Mutex
			var sent []*discoveryv3.DiscoveryRequest // as sent: go-control-plane fills in the node it remembers
			f := newFixture(t, setup{perType: perType, nodeOnce: true, onSend: func(m proto.Message) {
				mu.Lock()
				defer mu.Unlock()
				sent = append(sent, m.(*discoveryv3.DiscoveryRequest))
			}})
			cl := edsCluster("backend")
			if perType {
				cl.EdsClusterConfig.EdsConfig = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}}}
			}
			f.cp.Push(full(cl, assignment("backend", up), tcpListener("ingress", loopback0, "backend")))
			f.waitReady()
			f.cp.Request(resource.ListenerType, 1) // the LDS ACK
			mu.Lock()
			defer mu.Unlock()
			first := map[string]bool{} // by stream: the type URL, or "" for ADS
			for _, r := range sent {
				stream := ""
				if perType {
					stream = r.GetTypeUrl()
				}
				if want := !first[stream]; (r.GetNode() != nil) != want {
					t.Errorf("%s request (nonce %q) with node %v, want it in the stream's first request only", resource.ShortName(r.GetTypeUrl()), r.GetResponseNonce(), r.GetNode())
				}
				first[stream] = true
			}
			if n := len(first); n != map[bool]int{false: 1, true: 3}[perType] {
				t.Errorf("requests on %d streams", n)
			}
		})
	}
}

// --- item: initial_fetch_timeout per subscription ---

// TestFetchTimeoutPerSubscription (in a synctest bubble, see
// TestInitialFetchTimeout): each endpoints subscription times out after the
// initial_fetch_timeout of the eds_config that references it, not the first
// one seen for the type.
func TestFetchTimeoutPerSubscription(t *testing.T) {
	quick, slow := edsCluster("quick"), edsCluster("slow")
	quick.EdsClusterConfig.EdsConfig.InitialFetchTimeout = durationpb.New(2 * time.Second)
	slow.EdsClusterConfig.EdsConfig.InitialFetchTimeout = durationpb.New(10 * time.Second)
	runInBubble(t, map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {quick, slow}, resourcev3.ListenerType: {}},
		func(t *testing.T, c *Client, ready <-chan struct{}) {
			status := func(name string) string {
				for _, g := range c.GenericXdsConfigs() {
					if g.GetTypeUrl() == resource.EndpointType && g.GetName() == name {
						return g.GetClientStatus().String()
					}
				}
				return ""
			}
			start := time.Now()
			time.Sleep(5 * time.Second)
			if q, s := status("quick"), status("slow"); q != "TIMEOUT" || s != "REQUESTED" {
				t.Fatalf("after 5 s: quick %s, slow %s; want TIMEOUT (2 s) and REQUESTED (10 s)", q, s)
			}
			<-ready
			if waited := time.Since(start); waited < 10*time.Second || waited > 11*time.Second {
				t.Fatalf("initialized after %v, want the slow cluster's 10 s", waited)
			}
			if !strings.Contains(status("slow"), "TIMEOUT") {
				t.Errorf("slow after initialization: %s", status("slow"))
			}
		})
}

// --- item: LDS and CDS reject bad resources one by one ---

// staticCluster is a cluster with its endpoints inline (no EDS, no warming).
func staticCluster(name string, hosts ...netip.AddrPort) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment:       assignment(name, hosts...),
		ConnectTimeout:       durationpb.New(time.Second),
	}
}

// unknownFilterListener is a listener skiff rejects (a network filter it does
// not know).
func unknownFilterListener(name string) *listenerv3.Listener {
	l := tcpListener(name, loopback0, "backend")
	l.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
	return l
}

// TestBadResourcesRejectedAlone: as Envoy's CDS (CdsApiHelper) and LDS
// (LdsApiImpl) do, a response with bad clusters or listeners applies the good
// ones and the removals, keeps the last good version of a resource whose new
// one is bad, and NACKs with the errors of the bad ones and the previous
// version_info; CSDS reports the bad ones NACKED and the good ones ACKED at
// the new version.
func TestBadResourcesRejectedAlone(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			up, up2 := greeter(t, "backend"), greeter(t, "extra")
			f := newFixture(t, setup{delta: delta})
			v1 := f.cp.Push(map[resourcev3.Type][]types.Resource{
				resourcev3.ClusterType:  {staticCluster("backend", up), staticCluster("old", up)},
				resourcev3.ListenerType: {tcpListener("ingress", loopback0, "backend"), tcpListener("gone", loopback0, "backend")},
			})
			f.waitReady()
			ingress := f.listenerAddr("ingress")
			f.listenerAddr("gone")

			// "ingress" and "backend" get bad new versions, "c2" and "l3" are
			// new and bad, "extra" and "second" new and good; "old" and
			// "gone" are removed.
			badBackend := staticCluster("backend", up)
			badBackend.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
			v2 := f.cp.Push(map[resourcev3.Type][]types.Resource{
				resourcev3.ClusterType: {badBackend, staticCluster("extra", up2), badCluster("c2")},
				resourcev3.ListenerType: {unknownFilterListener("ingress"), tcpListener("second", loopback0, "extra"),
					unknownFilterListener("l3")},
			})
			if !delta {
				for _, url := range []string{resource.ClusterType, resource.ListenerType} {
					nack := f.nackOf(url, 1)
					if nack.GetVersionInfo() != v1 {
						t.Errorf("%s NACK with version_info %q, want the previous %q", resource.ShortName(url), nack.GetVersionInfo(), v1)
					}
					msg := nack.GetErrorDetail().GetMessage()
					for _, want := range map[string][]string{resource.ClusterType: {`Cluster "backend"`, `Cluster "c2"`}, resource.ListenerType: {`Listener "ingress"`, `Listener "l3"`}}[url] {
						if !strings.Contains(msg, want) {
							t.Errorf("%s NACK %q does not name %s", resource.ShortName(url), msg, want)
						}
					}
				}
			}
			eventually(t, "the good resources applied, the removals done", func() string {
				if f.dp.Clusters().Get("extra") == nil {
					return "cluster extra missing"
				}
				if f.dp.Clusters().Get("old") != nil {
					return "cluster old still there"
				}
				var names []string
				for _, l := range f.dp.Listeners() {
					names = append(names, l.Name)
				}
				if slices.Sort(names); !slices.Equal(names, []string{"ingress", "second"}) {
					return "listeners " + strings.Join(names, ",")
				}
				return ""
			})
			if got := through(t, f.listenerAddr("second")); got != "extra" {
				t.Errorf("through the new listener: %q", got)
			}
			if got := through(t, ingress); got != "backend" {
				t.Errorf("through the listener whose new version was rejected: %q, want its last good version serving", got)
			}
			for _, c := range []struct{ url, name, status, version string }{
				{resource.ClusterType, "backend", "NACKED", v1},
				{resource.ClusterType, "c2", "NACKED", ""},
				{resource.ClusterType, "extra", "ACKED", v2},
				{resource.ListenerType, "ingress", "NACKED", v1},
				{resource.ListenerType, "l3", "NACKED", ""},
				{resource.ListenerType, "second", "ACKED", v2},
			} {
				for _, g := range f.client.GenericXdsConfigs() {
					if g.GetTypeUrl() != c.url || g.GetName() != c.name {
						continue
					}
					if g.GetClientStatus().String() != c.status || (!delta && g.GetVersionInfo() != c.version) {
						t.Errorf("CSDS %s %q: %s at %q, want %s at %q", resource.ShortName(c.url), c.name, g.GetClientStatus(), g.GetVersionInfo(), c.status, c.version)
					}
					if c.status == "NACKED" && (g.GetErrorState().GetVersionInfo() != v2 || !strings.Contains(g.GetErrorState().GetDetails(), c.name)) {
						t.Errorf("CSDS %s %q error state %v", resource.ShortName(c.url), c.name, g.GetErrorState())
					}
				}
			}
			if v := f.client.Versions(); v[resource.ClusterType] == v2 || v[resource.ListenerType] == v2 {
				t.Errorf("versions advanced to the partly rejected %q: %v", v2, v)
			}
		})
	}
}

// TestListenerFailingToApplyRejectedAlone: a listener the data plane cannot
// start (its address is taken) is rejected alone, as Envoy's listener
// manager fails the one listener; the other new listener runs.
func TestListenerFailingToApplyRejectedAlone(t *testing.T) {
	up := greeter(t, "backend")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	f := newFixture(t, setup{})
	f.cp.Push(map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType: {staticCluster("backend", up)},
		resourcev3.ListenerType: {tcpListener("taken", netip.MustParseAddrPort(taken.Addr().String()), "backend"),
			tcpListener("free", loopback0, "backend")},
	})
	nack := f.nackOf(resource.ListenerType, 0)
	if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, `Listener "taken"`) || strings.Contains(msg, `"free"`) {
		t.Errorf("NACK %q, want it about listener taken alone", msg)
	}
	f.waitReady()
	if got := through(t, f.listenerAddr("free")); got != "backend" {
		t.Fatalf("through the listener that could start: %q", got)
	}
	if st := f.csdsStatus(resource.ListenerType, "taken"); st != "NACKED" {
		t.Errorf("CSDS status of the listener that could not start: %q", st)
	}
}

// TestUnsubscribedBadResourceIgnored: a resource of a response that skiff
// did not ask for (a response crossing an unsubscription) is left out
// unchecked, as Envoy does; a bad one no longer rejects the response and
// with it the good update of a resource that was asked for.
func TestUnsubscribedBadResourceIgnored(t *testing.T) {
	up, up2 := greeter(t, "a-1"), greeter(t, "a-2")
	f := newFixture(t, setup{})
	f.cp.Push(full(edsCluster("a"), assignment("a", up), tcpListener("la", loopback0, "a")))
	f.waitReady()
	bad := assignment("zzz", up)
	bad.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = nil
	good, err := anypb.New(assignment("a", up2))
	if err != nil {
		t.Fatal(err)
	}
	notAsked, err := anypb.New(bad)
	if err != nil {
		t.Fatal(err)
	}
	f.client.mu.Lock()
	s := f.client.types[resource.EndpointType].stream
	f.client.mu.Unlock()
	f.client.handleSotW(s, &discoveryv3.DiscoveryResponse{VersionInfo: "x", TypeUrl: resource.EndpointType, Nonce: "n-x", Resources: []*anypb.Any{good, notAsked}})
	// (The test server may answer the ACK of a nonce it never sent with its
	// own snapshot again: the accepted state is read at once.)
	f.client.mu.Lock()
	a, stray := f.client.types[resource.EndpointType].res["a"], f.client.types[resource.EndpointType].res["zzz"]
	f.client.mu.Unlock()
	if a == nil || a.Version != "x" || stray != nil {
		t.Errorf("accepted: a %v, zzz %v; want a at version x and no zzz", a, stray)
	}
	r := f.cp.RequestAnswering(resource.EndpointType, "n-x")
	if r.GetErrorDetail() != nil || r.GetVersionInfo() != "x" {
		t.Fatalf("answer: version %q, error %v; want an ACK of x", r.GetVersionInfo(), r.GetErrorDetail())
	}
}
