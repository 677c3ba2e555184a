package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/internal/stats"
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

// TestFilterChainChangeKeepsIdleHTTP1: when a listener's filter chain
// changes, an idle HTTP/1.1 keep-alive connection of the old chain is not
// closed under its client: its next request is answered by the old chain
// with "connection: close" (as Envoy's drain does), and the next connection
// reaches the new chain. A shutdown closes an idle one at once.
func TestFilterChainChangeKeepsIdleHTTP1(t *testing.T) {
	s, _ := newTestServer(t, 10*time.Second)
	blue, green := httpGreeter(t, "blue"), httpGreeter(t, "green")
	snap := func(prefix string) *Snapshot {
		lis := hcmListener("web", netip.MustParseAddrPort("127.0.0.1:0"), "r")
		lis.FilterChains[0].Name = prefix // a changed chain: the old one drains
		return &Snapshot{
			Listeners: []*listenerv3.Listener{lis},
			Clusters:  []*clusterv3.Cluster{staticCluster("blue", blue), staticCluster("green", green)},
			Routes:    map[string]*routev3.RouteConfiguration{"r": routeTo("r", "blue")},
		}
	}
	if err := s.Apply(snap("a")); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "web")
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := func(c net.Conn, br *bufio.Reader) (*nethttp.Response, error) {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nhost: a\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := nethttp.ReadResponse(br, nil)
		if err == nil {
			io.ReadAll(resp.Body)
		}
		return resp, err
	}
	c1, br1 := dial()
	if resp, err := get(c1, br1); err != nil || resp.Close {
		t.Fatalf("before the change: %v %v", resp, err)
	}
	if err := s.Apply(snap("b")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // (a connection closed by the drain would be closed by now)
	if resp, err := get(c1, br1); err != nil || !resp.Close {
		t.Fatalf("the idle connection after the change: %v, %v; want an answer with connection: close", resp, err)
	}
	c2, br2 := dial()
	if resp, err := get(c2, br2); err != nil || resp.Close {
		t.Fatalf("a new connection after the change: %v %v", resp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.BeginShutdown()
	if _, err := br2.ReadByte(); err != io.EOF {
		t.Errorf("an idle connection at a shutdown: %v, want EOF", err)
	}
	_ = s.Shutdown(ctx)
}

// TestListenerChangeDrainsEveryChain: as in Envoy, an update of one filter
// chain drains only that chain's connections, while an update that changes
// anything else of the listener (here per_connection_buffer_limit_bytes)
// replaces the whole listener: it keeps its socket, but the idle HTTP/1.1
// keep-alive connections of all its chains are answered next with
// "connection: close", and new connections get the new listener.
func TestListenerChangeDrainsEveryChain(t *testing.T) {
	s, _ := newTestServer(t, 10*time.Second)
	blue := httpGreeter(t, "blue")
	snap := func(defaultName string, limit uint32) *Snapshot {
		lis := hcmListener("web", loopback0, "r")
		lis.DefaultFilterChain = proto.Clone(lis.FilterChains[0]).(*listenerv3.FilterChain)
		lis.DefaultFilterChain.Name = defaultName
		// Connections from 127.0.0.2 take the first chain, the others the
		// default one.
		lis.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{SourcePrefixRanges: []*corev3.CidrRange{
			{AddressPrefix: "127.0.0.2", PrefixLen: wrapperspb.UInt32(32)},
		}}
		if limit > 0 {
			lis.PerConnectionBufferLimitBytes = wrapperspb.UInt32(limit)
		}
		return &Snapshot{
			Listeners: []*listenerv3.Listener{lis},
			Clusters:  []*clusterv3.Cluster{staticCluster("blue", blue)},
			Routes:    map[string]*routev3.RouteConfiguration{"r": routeTo("r", "blue")},
		}
	}
	if err := s.Apply(snap("a", 0)); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "web")
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	dial := func(from string) client {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return client{c, bufio.NewReader(c)}
	}
	closes := func(cl client) bool { // reports connection: close
		t.Helper()
		if _, err := io.WriteString(cl.c, "GET / HTTP/1.1\r\nhost: a\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := nethttp.ReadResponse(cl.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		return resp.Close
	}
	matched, other := dial("127.0.0.2"), dial("127.0.0.1")
	if closes(matched) || closes(other) {
		t.Fatal("connection: close before any update")
	}

	// Only the default chain changes: its connection drains, the other
	// chain's does not.
	if err := s.Apply(snap("b", 0)); err != nil {
		t.Fatal(err)
	}
	if !closes(other) {
		t.Error("the changed default chain's connection was not drained")
	}
	if closes(matched) {
		t.Error("a filter chain update drained the connection of an unchanged chain")
	}
	other = dial("127.0.0.1")
	if closes(other) {
		t.Fatal("a new connection after the filter chain update got connection: close")
	}

	// A listener-level change: every chain drains; the socket stays.
	if err := s.Apply(snap("b", 1<<20)); err != nil {
		t.Fatal(err)
	}
	if got := boundAddr(t, s, "web"); got != addr {
		t.Fatalf("listener rebound from %s to %s on a change outside its socket", addr, got)
	}
	if !closes(matched) || !closes(other) {
		t.Error("after a change outside the filter chains, a connection of the old listener was not drained")
	}
	if closes(dial("127.0.0.2")) || closes(dial("127.0.0.1")) {
		t.Error("a new connection to the new listener got connection: close")
	}
}

// TestGradualDrain: with Envoy's gradual drain strategy, the connections of a
// changed filter chain are asked to end with a probability that grows over
// the drain time: right after the change few of the old chain's connections
// answer with "connection: close", most do late in the window.
func TestGradualDrain(t *testing.T) {
	reg, err := filters.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	const window = 10 * time.Second // long, so that a slow machine still makes the first round early in it
	s := NewServer(Options{Logger: slog.New(slog.DiscardHandler), Registry: reg, Stats: stats.NewStore(), DrainTime: window, GradualDrain: true})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	blue := httpGreeter(t, "blue")
	snap := func(name string) *Snapshot {
		lis := hcmListener("web", netip.MustParseAddrPort("127.0.0.1:0"), "r")
		lis.FilterChains[0].Name = name
		return &Snapshot{
			Listeners: []*listenerv3.Listener{lis},
			Clusters:  []*clusterv3.Cluster{staticCluster("blue", blue)},
			Routes:    map[string]*routev3.RouteConfiguration{"r": routeTo("r", "blue")},
		}
	}
	if err := s.Apply(snap("a")); err != nil {
		t.Fatal(err)
	}
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	get := func(cl client) bool { // reports connection: close
		t.Helper()
		io.WriteString(cl.c, "GET / HTTP/1.1\r\nhost: a\r\n\r\n")
		resp, err := nethttp.ReadResponse(cl.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		return resp.Close
	}
	var clients []client
	for range 20 {
		c, err := net.Dial("tcp", boundAddr(t, s, "web").String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		cl := client{c, bufio.NewReader(c)}
		if get(cl) {
			t.Fatal("connection: close before any drain")
		}
		clients = append(clients, cl)
	}
	start := time.Now()
	if err := s.Apply(snap("b")); err != nil {
		t.Fatal(err)
	}
	var open []client
	for _, cl := range clients {
		if !get(cl) {
			open = append(open, cl)
		}
	}
	early := len(clients) - len(open)
	if early > 8 { // immediate would close all 20
		t.Errorf("%d of %d connections closed %v into a %v gradual drain, want few", early, len(clients), time.Since(start), window)
	}
	time.Sleep(time.Until(start.Add(window * 5 / 6)))
	late := 0
	for _, cl := range open {
		if get(cl) {
			late++
		}
	}
	if late < len(open)/2 {
		t.Errorf("%d of %d connections closed %v into a %v gradual drain, want most", late, len(open), time.Since(start), window)
	}
}

// TestListenerBufferLimitBoundsRetryBody: the router keeps for a retry as
// much of a request body as the listener's per_connection_buffer_limit_bytes
// allows, as Envoy's retry_shadow_buffer_limit: with 1000 bytes, a POST of
// 800 is retried after a 503, one of 1200 is not (the client gets the 503).
// It was a fixed 1 MiB whatever the listener said (Istio sends 32 KiB).
func TestListenerBufferLimitBoundsRetryBody(t *testing.T) {
	var calls atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nethttp.Server{Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b, _ := io.ReadAll(r.Body)
		if calls.Add(1)%2 == 1 { // every first attempt fails
			w.WriteHeader(503)
			return
		}
		fmt.Fprintf(w, "%d", len(b))
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	up := ln.Addr().(*net.TCPAddr).AddrPort()

	s, _ := newTestServer(t, time.Second)
	lis := hcmListener("web", netip.MustParseAddrPort("127.0.0.1:0"), "r")
	lis.PerConnectionBufferLimitBytes = wrapperspb.UInt32(1000)
	rc := routeTo("r", "up")
	rc.VirtualHosts[0].Routes[0].GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{lis}, Clusters: []*clusterv3.Cluster{staticCluster("up", up)},
		Routes: map[string]*routev3.RouteConfiguration{"r": rc}}); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "web")
	tr := &nethttp.Transport{}
	defer tr.CloseIdleConnections()
	c := &nethttp.Client{Transport: tr, Timeout: 5 * time.Second}
	post := func(n int) (int, string) {
		calls.Store(0)
		resp, err := c.Post("http://"+addr.String()+"/", "text/plain", strings.NewReader(strings.Repeat("b", n)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(800); code != 200 || body != "800" {
		t.Errorf("800 bytes: %d %q, want the retry's 200 \"800\"", code, body)
	}
	if code, _ := post(1200); code != 503 {
		t.Errorf("1200 bytes: %d, want the first attempt's 503 (too large to keep for a retry)", code)
	}
}
