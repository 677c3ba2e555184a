package dataplane

import (
	"errors"
	"io"
	"net"
	nethttp "net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

func hcmListener(name string, addr netip.AddrPort, routeName string) *listenerv3.Listener {
	rtr, _ := anypb.New(&routerv3.Router{})
	cfg, _ := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix:     name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: routeName}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: rtr}}},
	})
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(addr),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg}}},
		}},
	}
}

func routeTo(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}},
	}}}
}

func httpGreeter(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nethttp.Server{Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, name) })}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestRoutesFromSnapshot: route configurations in a Snapshot reach the
// connection managers that name them; an update swaps them without
// rebuilding the listener; a bad one fails the Apply with the route named.
func TestRoutesFromSnapshot(t *testing.T) {
	s, _ := newTestServer(t, time.Second)
	blue, green := httpGreeter(t, "blue"), httpGreeter(t, "green")
	lis := hcmListener("web", netip.MustParseAddrPort("127.0.0.1:0"), "r")
	snap := func(rc *routev3.RouteConfiguration) *Snapshot {
		return &Snapshot{
			Listeners: []*listenerv3.Listener{lis},
			Clusters:  []*clusterv3.Cluster{staticCluster("blue", blue), staticCluster("green", green)},
			Routes:    map[string]*routev3.RouteConfiguration{"r": rc},
		}
	}
	if err := s.Apply(snap(routeTo("r", "blue"))); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "web")
	tr := &nethttp.Transport{}
	defer tr.CloseIdleConnections()
	c := &nethttp.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func() string {
		resp, err := c.Get("http://" + addr.String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(); got != "blue" {
		t.Fatalf("first: %q", got)
	}
	chain := s.listeners["web"].Config().Chains[0]
	if err := s.Apply(snap(routeTo("r", "green"))); err != nil {
		t.Fatal(err)
	}
	if got := get(); got != "green" {
		t.Errorf("after the route update: %q", got)
	}
	if s.listeners["web"].Config().Chains[0] != chain {
		t.Error("a route update rebuilt the filter chain")
	}
	bad := routeTo("r", "green")
	bad.VirtualHosts[0].Routes[0].GetMatch().PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: nil}
	err := s.Apply(snap(bad))
	var re *ResourceError
	if !errors.As(err, &re) || re.Kind != "route" || re.Name != "r" {
		t.Fatalf("bad route: %v", err)
	}
	if err := s.ValidateRoute(bad); err == nil || !strings.Contains(err.Error(), "virtual_hosts[0].routes[0].match") {
		t.Errorf("ValidateRoute: %v", err)
	}
	if got := get(); got != "green" {
		t.Errorf("after the refused update: %q", got)
	}
}
