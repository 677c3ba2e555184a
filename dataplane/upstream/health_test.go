package upstream

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/stats"
)

// fastCheck is a health check every 20 ms from the start (no_traffic_interval
// too, as the test clusters make no connection), thresholds 2.
func fastCheck() *corev3.HealthCheck {
	return &corev3.HealthCheck{
		Timeout:            durationpb.New(time.Second),
		Interval:           durationpb.New(20 * time.Millisecond),
		NoTrafficInterval:  durationpb.New(20 * time.Millisecond),
		UnhealthyThreshold: wrapperspb.UInt32(2),
		HealthyThreshold:   wrapperspb.UInt32(2),
	}
}

// checkedCluster is a cluster named "c" of the hosts at addrs, health
// checked by hc, and its stats store. Its panic threshold is 0, so that the
// balancer follows the checks' verdict however few hosts pass. It is
// removed (its checks stopped) when the test ends.
func checkedCluster(t *testing.T, hc *corev3.HealthCheck, addrs ...string) (*Cluster, *stats.Store) {
	t.Helper()
	pb := &clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(time.Second), HealthChecks: []*corev3.HealthCheck{hc},
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 0}}}
	cfg, err := NewConfig(pb)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		cfg.Endpoints = append(cfg.Endpoints, ep(a, 1, 0, 0))
	}
	st := stats.NewStore()
	m := NewManager(st)
	m.Set([]Assignment{Static(cfg)})
	t.Cleanup(func() { m.Set(nil) })
	return m.Get("c"), st
}

func hostAt(c *Cluster, addr string) *Host {
	ap := netip.MustParseAddrPort(addr)
	for _, h := range c.Hosts() {
		if h.Addr == ap {
			return h
		}
	}
	return nil
}

// serveTCP accepts connections on a loopback port until the test ends,
// each handled by handle on its own goroutine and then closed.
func serveTCP(t *testing.T, handle func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln
}

// refusedAddr is a loopback address nothing listens on, held for the test.
func refusedAddr(t *testing.T) string { return nettest.RefusedAddr(t).String() }

// statusServer answers the health check path with *status, and records the
// requests it gets.
type statusServer struct {
	*httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	last   *http.Request
	count  atomic.Int64
}

func newStatusServer(t *testing.T, status int) *statusServer {
	s := &statusServer{}
	s.status.Store(int32(status))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.last = r
		s.mu.Unlock()
		s.count.Add(1)
		w.WriteHeader(int(s.status.Load()))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *statusServer) addr() string { return s.Listener.Addr().String() }

// TestHTTPHealthCheck: hosts start unhealthy and become healthy on their
// first passing check; a host whose status is retriable fails only after
// unhealthy_threshold checks, one with an unexpected status at once; it
// comes back after healthy_threshold passes; the balancer follows; the
// request is Envoy's (GET path, Host the cluster name, User-Agent Envoy/HC,
// added headers); stats count it.
func TestHTTPHealthCheck(t *testing.T) {
	good := newStatusServer(t, 200)
	flaky := newStatusServer(t, 200)
	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
		Path:              "/healthz?deep=1",
		RetriableStatuses: []*typev3.Int64Range{{Start: 429, End: 430}},
		RequestHeadersToAdd: []*corev3.HeaderValueOption{{
			Header: &corev3.HeaderValue{Key: "x-check", Value: "skiff"},
		}},
	}}
	c, st := checkedCluster(t, hc, good.addr(), flaky.addr())
	g, f := hostAt(c, good.addr()), hostAt(c, flaky.addr())
	waitUntil(t, "both hosts healthy", func() bool { return g.Healthy() && f.Healthy() })

	good.mu.Lock()
	r := good.last
	good.mu.Unlock()
	if r.Method != "GET" || r.URL.RequestURI() != "/healthz?deep=1" || r.Host != "c" ||
		r.Header.Get("User-Agent") != "Envoy/HC" || r.Header.Get("X-Check") != "skiff" {
		t.Errorf("health check request: %s %s Host %q, headers %v", r.Method, r.URL, r.Host, r.Header)
	}

	// A retriable status: still healthy after one failure, not after two.
	flaky.status.Store(429)
	n := flaky.count.Load()
	waitUntil(t, "one retriable failure", func() bool { return flaky.count.Load() >= n+1 })
	if !f.Healthy() && flaky.count.Load() < n+2 {
		t.Fatal("unhealthy after one retriable failure, unhealthy_threshold is 2")
	}
	waitUntil(t, "unhealthy after two retriable failures", func() bool { return !f.Healthy() })
	for range 20 {
		if h := c.Pick(); h != g {
			t.Fatalf("picked %v with %v failing its health checks", h.Addr, f.Addr)
		}
	}

	// Two passes in a row bring it back.
	flaky.status.Store(200)
	waitUntil(t, "healthy again", func() bool { return f.Healthy() })
	picked := map[*Host]bool{}
	for range 10 {
		picked[c.Pick()] = true
	}
	if !picked[f] || !picked[g] {
		t.Errorf("the balancer picks %v after the host recovered, want both", picked)
	}

	// A status neither expected nor retriable fails it at once.
	flaky.status.Store(503)
	waitUntil(t, "unhealthy", func() bool { return !f.Healthy() })

	for _, name := range []string{"attempt", "success", "failure", "network_failure"} {
		if v, _ := st.Value("cluster.c.health_check." + name); v == 0 {
			t.Errorf("cluster.c.health_check.%s = 0", name)
		}
	}
	if v, _ := st.Value("cluster.c.health_check.healthy"); v != 1 {
		t.Errorf("cluster.c.health_check.healthy = %d, want 1", v)
	}
}

// TestHTTP2HealthCheck: codec_client_type HTTP2 checks over cleartext
// HTTP/2 (prior knowledge), one connection reused, with the same request
// and status rules.
func TestHTTP2HealthCheck(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	var mu sync.Mutex
	var protos, hosts, paths []string
	var remotes = map[string]bool{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos, hosts, paths = append(protos, r.Proto), append(hosts, r.Host), append(paths, r.URL.RequestURI())
		remotes[r.RemoteAddr] = true
		mu.Unlock()
		w.WriteHeader(int(status.Load()))
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
		Path: "/ready?x=1", Host: "svc.local", CodecClientType: typev3.CodecClientType_HTTP2,
	}}
	c, st := checkedCluster(t, hc, ln.Addr().String())
	h := hostAt(c, ln.Addr().String())
	waitUntil(t, "healthy", h.Healthy)
	waitUntil(t, "three checks", func() bool {
		v, _ := st.Value("cluster.c.health_check.success")
		return v >= 3
	})
	mu.Lock()
	conns := len(remotes) // of the passing checks
	mu.Unlock()
	status.Store(503)
	waitUntil(t, "unhealthy on 503", func() bool { return !h.Healthy() })
	mu.Lock()
	defer mu.Unlock()
	for i := range protos {
		if protos[i] != "HTTP/2.0" || hosts[i] != "svc.local" || paths[i] != "/ready?x=1" {
			t.Fatalf("check %d: %s Host %s %s, want HTTP/2.0 svc.local /ready?x=1", i, protos[i], hosts[i], paths[i])
		}
	}
	if conns != 1 {
		t.Errorf("the passing checks came over %d connections, want one reused", conns)
	}
}

// TestHTTPHealthCheckUnexpectedStatusAtOnce: with a high unhealthy
// threshold, one 503 still fails a healthy host (Envoy ignores the
// threshold for a status that is neither expected nor retriable), while
// connection failures count toward it.
func TestHTTPHealthCheckUnexpectedStatusAtOnce(t *testing.T) {
	srv := newStatusServer(t, 200)
	hc := fastCheck()
	hc.UnhealthyThreshold = wrapperspb.UInt32(1000)
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/"}}
	c, _ := checkedCluster(t, hc, srv.addr())
	h := hostAt(c, srv.addr())
	waitUntil(t, "healthy", h.Healthy)
	srv.status.Store(503)
	waitUntil(t, "unhealthy after a 503", func() bool { return !h.Healthy() })
}

// TestTCPHealthCheck: send and receive payloads (hex text and binary); a
// host that answers something else, or closes, is unhealthy; a host that
// refuses connections stays unhealthy from the start.
func TestTCPHealthCheck(t *testing.T) {
	serve := func(reply string) string {
		return serveTCP(t, func(c net.Conn) {
			buf := make([]byte, 64)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				if string(buf[:n]) == "ping" {
					c.Write([]byte(reply))
				}
			}
		}).Addr().String()
	}
	pong := serve("..po" + "ng and more")
	wrong := serve("nope")
	refused := refusedAddr(t)

	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{
		Send: &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Text{Text: "70696e67"}}, // "ping"
		Receive: []*corev3.HealthCheck_Payload{
			{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte("po")}},
			{Payload: &corev3.HealthCheck_Payload_Text{Text: "6e67"}}, // "ng"
		},
	}}
	hc.Timeout = durationpb.New(200 * time.Millisecond)
	c, st := checkedCluster(t, hc, pong, wrong, refused)
	waitUntil(t, "the host that answers pong healthy", hostAt(c, pong).Healthy)
	waitUntil(t, "three checks of each host", func() bool {
		v, _ := st.Value("cluster.c.health_check.attempt")
		return v >= 9
	})
	if hostAt(c, wrong).Healthy() || hostAt(c, refused).Healthy() {
		t.Errorf("healthy: wrong answer %v, refused %v; want neither", hostAt(c, wrong).Healthy(), hostAt(c, refused).Healthy())
	}
	for range 10 {
		if h := c.Pick(); h != hostAt(c, pong) {
			t.Fatalf("picked %v, want only the healthy host", h.Addr)
		}
	}
}

// TestSetWaitsForFirstRound: Manager.Set returns a newly checked cluster
// once its hosts have had their first check, so the first request already
// avoids a host that fails it (Envoy's warming waits for the same).
func TestSetWaitsForFirstRound(t *testing.T) {
	good := newStatusServer(t, 200)
	refused := refusedAddr(t)
	hc := fastCheck()
	hc.Interval = durationpb.New(time.Hour) // the first check is the only one
	hc.NoTrafficInterval = durationpb.New(time.Hour)
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/"}}
	c, _ := checkedCluster(t, hc, good.addr(), refused)
	if !hostAt(c, good.addr()).Healthy() || hostAt(c, refused).Healthy() {
		t.Fatalf("right after Set: healthy %v (passes its check), %v (refuses); want true, false",
			hostAt(c, good.addr()).Healthy(), hostAt(c, refused).Healthy())
	}
}

// TestHealthCheckKeepsStateAcrossUpdates: a cluster update with the same
// health check keeps the hosts' state (no host goes back to unchecked);
// removing health_checks makes every host healthy; a new host added to a
// checked cluster waits for its first check.
func TestHealthCheckKeepsStateAcrossUpdates(t *testing.T) {
	a := newStatusServer(t, 200)
	b := newStatusServer(t, 503)
	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/"}}
	pb := &clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(time.Second), HealthChecks: []*corev3.HealthCheck{hc}}
	st := stats.NewStore()
	m := NewManager(st)
	t.Cleanup(func() { m.Set(nil) })
	set := func(pb *clusterv3.Cluster, addrs ...string) *Cluster {
		cfg, err := NewConfig(pb)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			cfg.Endpoints = append(cfg.Endpoints, ep(ad, 1, 0, 0))
		}
		m.Set([]Assignment{Static(cfg)})
		return m.Get("c")
	}
	c := set(pb, a.addr())
	ha := hostAt(c, a.addr())
	waitUntil(t, "healthy", ha.Healthy)
	c = set(pb, a.addr(), b.addr())
	if !ha.Healthy() {
		t.Error("an update with the same health check made a checked host unhealthy")
	}
	hb := hostAt(c, b.addr())
	if hb.Healthy() {
		t.Error("a new host is healthy before its first check")
	}
	time.Sleep(100 * time.Millisecond)
	if hb.Healthy() {
		t.Error("a host answering 503 became healthy")
	}
	noHC := &clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(time.Second)}
	set(noHC, a.addr(), b.addr())
	if !hb.Healthy() || !ha.Healthy() {
		t.Error("hosts stay unhealthy after health_checks was removed")
	}
	// Health checking added to a cluster already serving takes no host out
	// while its checks begin: the failing one goes after unhealthy_threshold.
	hc2 := fastCheck()
	hc2.Interval = durationpb.New(time.Hour)
	hc2.NoTrafficInterval = durationpb.New(time.Hour) // one check each
	hc2.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
		Path: "/", RetriableStatuses: []*typev3.Int64Range{{Start: 503, End: 504}}}} // b's 503 counts toward the threshold
	set(&clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(time.Second), HealthChecks: []*corev3.HealthCheck{hc2}}, a.addr(), b.addr())
	if !ha.Healthy() || !hb.Healthy() {
		t.Errorf("after health checking was added to a serving cluster: healthy %v, %v; want both (one failure of two)", ha.Healthy(), hb.Healthy())
	}
}

// TestGRPCHealthCheck: grpc.health.v1 Check for the service name, with the
// authority and metadata configured; NOT_SERVING fails the host at once,
// SERVING brings it back; a host that refuses connections is unhealthy.
func TestGRPCHealthCheck(t *testing.T) {
	hs := health.NewServer()
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	var seen atomic.Pointer[metadata.MD]
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		seen.Store(&md)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	refused := refusedAddr(t)

	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
		ServiceName: "svc", Authority: "checks.example",
		InitialMetadata: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-check", Value: "skiff"}}},
	}}
	c, _ := checkedCluster(t, hc, ln.Addr().String(), refused)
	h := hostAt(c, ln.Addr().String())
	waitUntil(t, "healthy", h.Healthy)
	md := *seen.Load()
	if got := md.Get(":authority"); len(got) != 1 || got[0] != "checks.example" {
		t.Errorf(":authority %v, want checks.example", got)
	}
	if got := md.Get("x-check"); len(got) != 1 || got[0] != "skiff" {
		t.Errorf("x-check %v, want skiff", got)
	}
	if ua := md.Get("user-agent"); len(ua) != 1 || !strings.HasPrefix(ua[0], "Envoy/HC") {
		t.Errorf("user-agent %v, want Envoy/HC", ua)
	}
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
	waitUntil(t, "unhealthy when NOT_SERVING", func() bool { return !h.Healthy() })
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	waitUntil(t, "healthy again", h.Healthy)
	if hostAt(c, refused).Healthy() {
		t.Error("a host refusing connections is healthy")
	}
}

func TestHealthCheckConfigErrors(t *testing.T) {
	base := func(mod func(*corev3.HealthCheck)) *corev3.HealthCheck {
		hc := fastCheck()
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/"}}
		mod(hc)
		return hc
	}
	for _, tc := range []struct {
		name string
		hcs  []*corev3.HealthCheck
		want string
	}{
		{"no timeout", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) { h.Timeout = nil })}, "health_checks[0].timeout: value is required"},
		{"zero interval", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) { h.Interval = durationpb.New(0) })}, "health_checks[0].interval: value must be greater than 0s"},
		{"no healthy threshold", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) { h.HealthyThreshold = nil })}, "health_checks[0].healthy_threshold: value is required"},
		{"two", []*corev3.HealthCheck{base(func(*corev3.HealthCheck) {}), base(func(*corev3.HealthCheck) {})}, "health_checks: 2 health checks"},
		{"custom", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) {
			h.HealthChecker = &corev3.HealthCheck_CustomHealthCheck_{CustomHealthCheck: &corev3.HealthCheck_CustomHealthCheck{Name: "x"}}
		})}, "custom_health_check"},
		{"grpc metadata", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) {
			h.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
				InitialMetadata: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "grpc-timeout", Value: "1S"}}}}}
		})}, "health_checks[0].grpc_health_check.initial_metadata[0].header.key"},
		{"http3", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) {
			h.GetHttpHealthCheck().CodecClientType = typev3.CodecClientType_HTTP3
		})}, "health_checks[0].http_health_check.codec_client_type: HTTP3 is not supported"},
		{"relative path", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) { h.GetHttpHealthCheck().Path = "healthz" })}, "http_health_check.path"},
		{"status range", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) {
			h.GetHttpHealthCheck().ExpectedStatuses = []*typev3.Int64Range{{Start: 200, End: 200}}
		})}, "http_health_check.expected_statuses[0]"},
		{"bad hex", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) {
			h.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{
				Send: &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Text{Text: "zz"}}}}
		})}, "health_checks[0].tcp_health_check.send.text: is not hex"},
		{"alt port", []*corev3.HealthCheck{base(func(h *corev3.HealthCheck) { h.AltPort = wrapperspb.UInt32(8081) })}, "alt_port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewConfig(&clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(time.Second), HealthChecks: tc.hcs})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestHealthCheckIntervals: the schedule follows Envoy's choice of interval.
func TestHealthCheckIntervals(t *testing.T) {
	cfg, err := compileHealthCheck(&corev3.HealthCheck{
		Timeout: durationpb.New(time.Second), Interval: durationpb.New(10 * time.Second),
		UnhealthyInterval: durationpb.New(20 * time.Second), UnhealthyEdgeInterval: durationpb.New(30 * time.Second),
		HealthyEdgeInterval: durationpb.New(40 * time.Second), NoTrafficHealthyInterval: durationpb.New(50 * time.Second),
		UnhealthyThreshold: wrapperspb.UInt32(3), HealthyThreshold: wrapperspb.UInt32(3),
		HealthChecker: &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	c := newCluster(Assignment{Config: &Config{Name: "c", StatName: "c"}}, st)
	k := &checker{c: c, cfg: cfg}
	for _, tc := range []struct {
		traffic, passed, pending bool
		want                     time.Duration
	}{
		{false, true, false, 50 * time.Second}, // no traffic yet, healthy
		{false, false, false, 60 * time.Second},
		{false, true, true, 60 * time.Second},
		{true, true, false, 10 * time.Second},
		{true, true, true, 40 * time.Second},  // a success toward healthy
		{true, false, true, 30 * time.Second}, // a failure toward unhealthy
		{true, false, false, 20 * time.Second},
	} {
		if tc.traffic && c.stats.cxTotal.Value() == 0 {
			c.stats.cxTotal.Inc()
		}
		if got := k.interval(tc.passed, tc.pending); got != tc.want {
			t.Errorf("traffic %v passed %v pending %v: %v, want %v", tc.traffic, tc.passed, tc.pending, got, tc.want)
		}
	}
}

// TestImmediateHealthCheckFail: a response's
// x-envoy-immediate-health-check-fail fails the host's active health check
// at once, as in Envoy: it leaves the balancer with failed_active_hc and
// excluded_via_immediate_hc_fail, is counted as a passive failure, and
// comes back after healthy_threshold passing checks. A cluster without
// active health checking ignores it.
func TestImmediateHealthCheckFail(t *testing.T) {
	good, other := newStatusServer(t, 200), newStatusServer(t, 200)
	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}}
	c, st := checkedCluster(t, hc, good.addr(), other.addr())
	g, f := hostAt(c, good.addr()), hostAt(c, other.addr())
	waitUntil(t, "both hosts healthy", func() bool { return g.Healthy() && f.Healthy() })

	n := other.count.Load()
	c.ImmediateHealthCheckFail(f)
	if f.Healthy() {
		t.Fatal("healthy right after an immediate health check failure")
	}
	if flags := strings.Join(f.HealthFlags(), ","); flags != "failed_active_hc,excluded_via_immediate_hc_fail" {
		t.Errorf("health flags %q", flags)
	}
	for range 10 {
		if h := c.Pick(); h != g {
			t.Fatalf("picked %v, failed by an immediate health check failure", h.Addr)
		}
	}
	if v, _ := st.Value("cluster.c.health_check.passive_failure"); v != 1 {
		t.Errorf("health_check.passive_failure = %d, want 1", v)
	}
	if v, _ := st.Value("cluster.c.health_check.healthy"); v != 1 {
		t.Errorf("health_check.healthy = %d, want 1", v)
	}
	waitUntil(t, "healthy again", func() bool { return f.Healthy() })
	if got := other.count.Load() - n; got < 2 {
		t.Errorf("back after %d checks, want healthy_threshold (2)", got)
	}
	if flags := f.HealthFlags(); len(flags) != 0 {
		t.Errorf("health flags %q after passing again", flags)
	}

	// Without active health checking, nothing happens.
	plain, _ := outlierCluster(t, 2, &clusterv3.OutlierDetection{})
	h := host(plain, 1)
	plain.ImmediateHealthCheckFail(h)
	if !h.Healthy() {
		t.Error("a host of a cluster without health checks failed by the header")
	}
}

// TestHealthCheckResponseImmediateFail: a failing health check response
// with x-envoy-immediate-health-check-fail (an upstream Envoy's
// health_check filter failing) marks the host
// excluded_via_immediate_hc_fail beside failed_active_hc, as Envoy's HTTP
// health checker does, until it passes again.
func TestHealthCheckResponseImmediateFail(t *testing.T) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.Header().Set("x-envoy-immediate-health-check-fail", "")
			w.WriteHeader(503)
		}
	}))
	t.Cleanup(srv.Close)
	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}}
	c, _ := checkedCluster(t, hc, srv.Listener.Addr().String())
	h := hostAt(c, srv.Listener.Addr().String())
	waitUntil(t, "healthy", func() bool { return h.Healthy() })
	failing.Store(true)
	waitUntil(t, "failed", func() bool { return !h.Healthy() })
	if flags := strings.Join(h.HealthFlags(), ","); flags != "failed_active_hc,excluded_via_immediate_hc_fail" {
		t.Errorf("health flags %q", flags)
	}
	failing.Store(false)
	waitUntil(t, "healthy again", func() bool { return h.Healthy() })
	if flags := h.HealthFlags(); len(flags) != 0 {
		t.Errorf("health flags %q after passing again", flags)
	}
}

// TestHealthCheckDegraded: a passing check whose response says
// x-envoy-degraded makes the host degraded at once (degraded_active_hc,
// health_check.degraded), as Envoy's HTTP health checker; the load balancer
// then gives it only what the healthy hosts cannot carry, and a passing
// response without the header makes it healthy again.
func TestHealthCheckDegraded(t *testing.T) {
	var degraded atomic.Bool
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if degraded.Load() {
			w.Header().Set("x-envoy-degraded", "")
		}
	})
	a, b := httptest.NewServer(handler), httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	hc := fastCheck()
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}}
	c, st := checkedCluster(t, hc, a.Listener.Addr().String(), b.Listener.Addr().String())
	h := hostAt(c, a.Listener.Addr().String())
	waitUntil(t, "healthy", func() bool { return h.Healthy() })
	degraded.Store(true)
	waitUntil(t, "degraded", func() bool { return h.Degraded() })
	if flags := strings.Join(h.HealthFlags(), ","); flags != "degraded_active_hc" {
		t.Errorf("health flags %q", flags)
	}
	if v, _ := st.Value("cluster.c.health_check.degraded"); v != 1 {
		t.Errorf("health_check.degraded = %d, want 1", v)
	}
	// One host healthy of two: 70 % to it, 30 % to the degraded one.
	got := countPicks(c, 10000)
	if n := got[a.Listener.Addr().String()]; n < 2800 || n > 3200 {
		t.Errorf("picks %v: want 30 %% to the degraded host", got)
	}
	degraded.Store(false)
	waitUntil(t, "healthy again", func() bool { return h.Healthy() })
	if got := countPicks(c, 1000); got[a.Listener.Addr().String()] != 500 {
		t.Errorf("picks %v after it passed without the header: want half", got)
	}
}
