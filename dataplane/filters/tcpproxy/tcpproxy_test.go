package tcpproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/internal/statstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	reg *filter.Registry
	fc  *filter.Context
	st  *stats.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	reg := filter.NewRegistry()
	if err := reg.RegisterNetwork(Factory{}); err != nil {
		t.Fatal(err)
	}
	st := stats.NewStore()
	return &env{reg: reg, st: st, fc: &filter.Context{
		Logger: slog.New(slog.DiscardHandler), Stats: st, Clusters: upstream.NewManager(st), Buffers: bufpool.New(),
	}}
}

func (e *env) setClusters(cfgs ...*upstream.Config) {
	var as []upstream.Assignment
	for _, c := range cfgs {
		as = append(as, upstream.Static(c))
	}
	e.fc.Clusters.Set(as)
}

func (e *env) build(t *testing.T, cfg *tcpv3.TcpProxy) (*Proxy, error) {
	t.Helper()
	a, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := e.reg.NetworkFilter(Name, a, e.fc)
	if err != nil {
		return nil, err
	}
	return f.(*Proxy), nil
}

func TestConfigErrors(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name string
		cfg  *tcpv3.TcpProxy
		path string
	}{
		{"no cluster", &tcpv3.TcpProxy{StatPrefix: "x"}, "typed_config"},
		{"empty stat prefix", &tcpv3.TcpProxy{ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}}, "typed_config.stat_prefix"},
		{"hash policy on filter state", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			HashPolicy: []*typev3.HashPolicy{{PolicySpecifier: &typev3.HashPolicy_FilterState_{FilterState: &typev3.HashPolicy_FilterState{Key: "k"}}}}},
			"typed_config.hash_policy[0].filter_state"},
		{"two hash policies", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			HashPolicy: []*typev3.HashPolicy{sourceIPHash, sourceIPHash}}, "typed_config.hash_policy"},
		{"zero weight", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_WeightedClusters{WeightedClusters: &tcpv3.TcpProxy_WeightedCluster{
			Clusters: []*tcpv3.TcpProxy_WeightedCluster_ClusterWeight{{Name: "a", Weight: 1}, {Name: "b", Weight: 0}}}}}, "typed_config.weighted_clusters.clusters[1].weight"},
		{"zero connect attempts", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			MaxConnectAttempts: wrapperspb.UInt32(0)}, "typed_config.max_connect_attempts"},
		{"negative idle timeout", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			IdleTimeout: durationpb.New(-time.Second)}, "typed_config.idle_timeout"},
		{"negative max duration", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			MaxDownstreamConnectionDuration: durationpb.New(-time.Second)}, "typed_config.max_downstream_connection_duration"},
		{"max duration under 1ms", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			MaxDownstreamConnectionDuration: durationpb.New(time.Microsecond)}, "typed_config.max_downstream_connection_duration"},
		{"tunneling over POST", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			TunnelingConfig: &tcpv3.TcpProxy_TunnelingConfig{Hostname: "h:443", UsePost: true}}, "typed_config.tunneling_config.use_post"},
		{"tunneling hostname command", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			TunnelingConfig: &tcpv3.TcpProxy_TunnelingConfig{Hostname: "%NOPE%:443"}}, "typed_config.tunneling_config.hostname"},
		{"unknown access logger", &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
			AccessLog: []*accesslogv3.AccessLog{{Name: "x", ConfigType: &accesslogv3.AccessLog_TypedConfig{
				TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.access_loggers.wasm.v3.WasmAccessLog"}}}}},
			"typed_config.access_log[0].typed_config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.build(t, tc.cfg)
			if err == nil {
				t.Fatal("no error")
			}
			if got := cfgerr.PathOf(err); got != tc.path {
				t.Fatalf("error %q at %q, want %q", err, got, tc.path)
			}
		})
	}
}

func TestWeightedClustersSplit(t *testing.T) {
	e := newEnv(t)
	p, err := e.build(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_WeightedClusters{WeightedClusters: &tcpv3.TcpProxy_WeightedCluster{
		Clusters: []*tcpv3.TcpProxy_WeightedCluster_ClusterWeight{{Name: "a", Weight: 80}, {Name: "b", Weight: 20}}}}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for range 10000 {
		got[p.pickCluster()]++
	}
	if got["a"]+got["b"] != 10000 || got["a"] < 7600 || got["a"] > 8400 {
		t.Fatalf("split %v, want about 8000/2000", got)
	}
}

// serve runs p on the server side of a fresh loopback connection and returns
// the client side; the returned wait function waits for ServeConn to return.
func serve(t *testing.T, p *Proxy) (net.Conn, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.ServeConn(context.Background(), filter.NewConn(srv, 1, "test", slog.New(slog.DiscardHandler)))
	}()
	return client, wg.Wait
}

func echoServer(t *testing.T) netip.AddrPort {
	return server(t, func(c net.Conn) { io.Copy(c, c) })
}

// server serves each connection with handle, on a goroutine of its own, and
// closes it after.
func server(t *testing.T, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// refusingAddr is a loopback address nothing listens on, held for the test.
func refusingAddr(t *testing.T) netip.AddrPort { return nettest.RefusedAddr(t) }

// buildLogged builds cfg's proxy with an infoLog as its access log.
func (e *env) buildLogged(t *testing.T, cfg *tcpv3.TcpProxy) (*Proxy, *infoLog) {
	t.Helper()
	p, err := e.build(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	log := &infoLog{}
	p.logs = append(p.logs, log)
	return p, log
}

// infoLog records the stream info of each access log entry.
type infoLog struct {
	mu      sync.Mutex
	entries []http.StreamInfo
}

func (l *infoLog) Log(e *http.Exchange) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, e.Info)
}

func (l *infoLog) last(t *testing.T) http.StreamInfo {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.entries) == 0 {
		t.Fatal("no access log entry")
	}
	return l.entries[len(l.entries)-1]
}

func TestRetriesAnotherEndpointOnConnectFailure(t *testing.T) {
	e := newEnv(t)
	refused, echo := refusingAddr(t), echoServer(t)
	e.setClusters(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: []upstream.Endpoint{
		{Addr: refused, Weight: 1}, {Addr: echo, Weight: 1},
	}})
	p, log := e.buildLogged(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}, MaxConnectAttempts: wrapperspb.UInt32(2)})
	for i := range 4 { // round robin starts on each endpoint in turn
		client, wait := serve(t, p)
		msg := []byte("hello through the proxy")
		client.Write(msg)
		client.(*net.TCPConn).CloseWrite()
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(client)
		if err != nil || string(got) != string(msg) {
			t.Fatalf("connection %d: got %q, %v", i, got, err)
		}
		wait()
		// As Envoy's: the host connected to, its attempts, why the
		// attempt before failed, and UF for that failure (Envoy's tcp_proxy
		// sets it at each failed attempt and never clears it).
		in := log.last(t)
		if in.UpstreamHost != echo || in.UpstreamAttempts != 2 || in.UpstreamTransportFailureReason != "delayed connect error: Connection refused" ||
			in.UpstreamLocal.Addr() != netip.MustParseAddr("127.0.0.1") || string(in.AppendResponseFlags(nil, false)) != "UF" {
			t.Fatalf("connection %d: upstream host %v, attempts %d, failure %q, local %v, flags %s", i,
				in.UpstreamHost, in.UpstreamAttempts, in.UpstreamTransportFailureReason, in.UpstreamLocal, in.AppendResponseFlags(nil, false))
		}
	}
	// Round robin alternates, so every connection's first attempt lands on the
	// refusing host and its retry on the good one.
	if v, _ := e.st.Value("cluster.c.upstream_cx_connect_fail"); v != 4 {
		t.Fatalf("upstream_cx_connect_fail = %d, want 4 (each first attempt)", v)
	}
	if v, _ := e.st.Value("tcp.x.downstream_cx_total"); v != 4 {
		t.Fatalf("downstream_cx_total = %d", v)
	}
	if v, _ := e.st.Value("tcp.x.downstream_cx_rx_bytes_total"); v != 4*23 {
		t.Fatalf("downstream_cx_rx_bytes_total = %d, want %d", v, 4*23)
	}
}

func TestAllAttemptsFailClosesDownstream(t *testing.T) {
	e := newEnv(t)
	refused := refusingAddr(t)
	e.setClusters(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: []upstream.Endpoint{
		{Addr: refused, Weight: 1},
	}})
	p, log := e.buildLogged(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}, MaxConnectAttempts: wrapperspb.UInt32(3)})
	client, wait := serve(t, p)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a connection with no upstream", n)
	}
	wait()
	// As Envoy's onConnectMaxAttempts: UF (each failure), then URX.
	if in := log.last(t); in.UpstreamHost != refused || in.UpstreamAttempts != 3 || in.UpstreamTransportFailureReason != "delayed connect error: Connection refused" ||
		in.UpstreamLocal.IsValid() || string(in.AppendResponseFlags(nil, false)) != "UF,URX" {
		t.Fatalf("upstream host %v, attempts %d, failure %q, local %v, flags %s",
			in.UpstreamHost, in.UpstreamAttempts, in.UpstreamTransportFailureReason, in.UpstreamLocal, in.AppendResponseFlags(nil, false))
	}
	statstest.Expect(t, e.st, map[string]int64{
		"cluster.c.upstream_cx_connect_fail":              3,
		"cluster.c.upstream_cx_connect_attempts_exceeded": 1,
		// Each refused connect is a connection the host closed.
		"cluster.c.upstream_cx_destroy":        3,
		"cluster.c.upstream_cx_destroy_remote": 3,
		"cluster.c.upstream_cx_destroy_local":  0,
	})
	if _, ok := e.st.Value("tcp.x.upstream_connect_attempts_exceeded"); ok {
		t.Error("tcp.x.upstream_connect_attempts_exceeded exists; Envoy has no such stat")
	}
}

// TestSingleAttemptFailureIsUFURX: with the default single attempt, too, a
// failed connect is logged "UF,URX" and counted in the cluster's
// upstream_cx_connect_attempts_exceeded, as Envoy's tests expect.
func TestSingleAttemptFailureIsUFURX(t *testing.T) {
	e := newEnv(t)
	e.setClusters(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: []upstream.Endpoint{
		{Addr: refusingAddr(t), Weight: 1},
	}})
	p, log := e.buildLogged(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}})
	client, wait := serve(t, p)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a connection with no upstream", n)
	}
	wait()
	if in := log.last(t); string(in.AppendResponseFlags(nil, false)) != "UF,URX" {
		t.Fatalf("flags %s, want UF,URX", in.AppendResponseFlags(nil, false))
	}
	if v, _ := e.st.Value("cluster.c.upstream_cx_connect_attempts_exceeded"); v != 1 {
		t.Fatalf("upstream_cx_connect_attempts_exceeded = %d, want 1", v)
	}
}

func TestUnknownClusterClosesDownstream(t *testing.T) {
	e := newEnv(t)
	p, err := e.build(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "missing"}})
	if err != nil {
		t.Fatal(err)
	}
	client, wait := serve(t, p)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection to a missing cluster stayed open")
	}
	wait()
	if v, _ := e.st.Value("tcp.x.downstream_cx_no_route"); v != 1 {
		t.Fatalf("downstream_cx_no_route = %d", v)
	}
}

func TestIdleTimeoutIsCounted(t *testing.T) {
	e := newEnv(t)
	e.setClusters(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: []upstream.Endpoint{{Addr: echoServer(t), Weight: 1}}})
	p, err := e.build(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}, IdleTimeout: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	client, wait := serve(t, p)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read error %v, want EOF", err)
	}
	wait()
	if v, _ := e.st.Value("tcp.x.idle_timeout"); v != 1 {
		t.Fatalf("idle_timeout = %d", v)
	}
	// skiff closed the upstream connection.
	statstest.Expect(t, e.st, map[string]int64{
		"cluster.c.upstream_cx_destroy":        1,
		"cluster.c.upstream_cx_destroy_local":  1,
		"cluster.c.upstream_cx_destroy_remote": 0,
		"cluster.c.upstream_cx_active":         0,
	})
}

// limitedCluster is the Config of a STATIC cluster "c" of addr with
// circuit_breakers max_connections.
func limitedCluster(t *testing.T, addr netip.AddrPort, maxConnections uint32) *upstream.Config {
	t.Helper()
	cfg, err := upstream.NewConfig(&clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{
			{MaxConnections: wrapperspb.UInt32(maxConnections)},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints = []upstream.Endpoint{{Addr: addr, Weight: 1}}
	return cfg
}

// TestMaxConnectionsOverflow: with max_connections: 1 and the one connection
// held open, a second downstream connection gets no upstream connection: it
// is closed, logged UO and counted in upstream_cx_overflow, as Envoy's
// tcp_proxy does (its test UpstreamConnectionLimit). Once the first ends,
// the room is back.
func TestMaxConnectionsOverflow(t *testing.T) {
	e := newEnv(t)
	var accepted atomic.Int32
	addr := server(t, func(c net.Conn) { accepted.Add(1); io.Copy(c, c) })
	e.setClusters(limitedCluster(t, addr, 1))
	p, log := e.buildLogged(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}})
	echo := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}
	first, waitFirst := serve(t, p)
	if err := echo(first); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	for i := range 2 {
		c, wait := serve(t, p)
		if err := echo(c); err == nil {
			t.Fatalf("connection %d over max_connections reached the upstream", i+2)
		}
		wait()
		if in := log.last(t); string(in.AppendResponseFlags(nil, false)) != "UO" || in.UpstreamHost.IsValid() || in.UpstreamAttempts != 0 {
			t.Fatalf("connection %d: flags %s, upstream host %v, attempts %d", i+2, in.AppendResponseFlags(nil, false), in.UpstreamHost, in.UpstreamAttempts)
		}
	}
	if v, _ := e.st.Value("cluster.c.upstream_cx_overflow"); v != 2 {
		t.Fatalf("upstream_cx_overflow = %d, want 2", v)
	}
	first.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadAll(first); err != nil {
		t.Fatal(err)
	}
	waitFirst()
	third, waitThird := serve(t, p)
	if err := echo(third); err != nil {
		t.Fatalf("connection after the first ended: %v", err)
	}
	third.Close()
	waitThird()
	if n := accepted.Load(); n != 2 {
		t.Fatalf("upstream accepted %d connections, want 2", n)
	}
	// Both upstream connections ended by the echo server's close after
	// the client's: the host's close.
	statstest.Expect(t, e.st, map[string]int64{
		"cluster.c.upstream_cx_total":          2,
		"cluster.c.upstream_cx_destroy":        2,
		"cluster.c.upstream_cx_destroy_remote": 2,
		"cluster.c.upstream_cx_active":         0,
	})
}

// TestMaxDownstreamConnectionDuration: a connection that moves bytes all along
// is still closed once max_downstream_connection_duration has passed since the
// filter got it, counted, and logged with DT, as in Envoy.
func TestMaxDownstreamConnectionDuration(t *testing.T) {
	e := newEnv(t)
	e.setClusters(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, Endpoints: []upstream.Endpoint{{Addr: echoServer(t), Weight: 1}}})
	const limit = 300 * time.Millisecond
	p, log := e.buildLogged(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
		MaxDownstreamConnectionDuration: durationpb.New(limit)})
	start := time.Now()
	client, wait := serve(t, p)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4)
	var err2 error
	for i := 0; i < 500 && err2 == nil; i++ { // an echo every 20 ms: never idle
		if _, err2 = client.Write([]byte("ping")); err2 == nil {
			_, err2 = io.ReadFull(client, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err2 == nil {
		t.Fatal("the connection outlived max_downstream_connection_duration by 10 s")
	}
	if d := time.Since(start); d < limit {
		t.Fatalf("closed after %v, before max_downstream_connection_duration (%v): %v", d, limit, err2)
	}
	wait()
	if v, _ := e.st.Value("tcp.x.max_downstream_connection_duration"); v != 1 {
		t.Fatalf("max_downstream_connection_duration = %d", v)
	}
	if in := log.last(t); in.ResponseFlags != http.FlagDurationTimeout || in.BytesReceived == 0 {
		t.Fatalf("access log: flags %v, bytes received %d", in.ResponseFlags, in.BytesReceived)
	}
}

// TestMaxDownstreamConnectionDurationWhileConnecting: the duration counts
// from the filter getting the connection, so it also ends a connect still
// under way (DT, not UF).
func TestMaxDownstreamConnectionDurationWhileConnecting(t *testing.T) {
	e := newEnv(t)
	e.setClusters(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Minute,
		Endpoints: []upstream.Endpoint{{Addr: nettest.UnansweredAddr(t), Weight: 1}}})
	p, log := e.buildLogged(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
		MaxDownstreamConnectionDuration: durationpb.New(100 * time.Millisecond)})
	client, wait := serve(t, p)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %v, want the connection closed", err)
	}
	wait()
	in := log.last(t)
	if v, _ := e.st.Value("tcp.x.max_downstream_connection_duration"); v != 1 || in.ResponseFlags != http.FlagDurationTimeout {
		t.Fatalf("max_downstream_connection_duration = %d; access log flags %v (want DT), failure %q, duration %v",
			v, in.ResponseFlags, in.UpstreamTransportFailureReason, in.Duration)
	}
}

func TestClusterWithoutEndpointsClosesDownstream(t *testing.T) {
	e := newEnv(t)
	e.setClusters(&upstream.Config{Name: "empty", StatName: "empty", ConnectTimeout: time.Second})
	p, err := e.build(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "empty"}})
	if err != nil {
		t.Fatal(err)
	}
	client, wait := serve(t, p)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection to a cluster without endpoints stayed open")
	}
	wait()
	if v, _ := e.st.Value("cluster.empty.upstream_cx_none_healthy"); v != 1 {
		t.Fatalf("upstream_cx_none_healthy = %d", v)
	}
}

// TestOutlierDetectionEjectsRefusingHost: tcp_proxy reports connects to the
// cluster's outlier detection (a failed connect counts as a 503, a connect as
// a 200, as in Envoy), so a host that refuses is ejected after
// consecutive_5xx failures and later connections all reach the other host.
func TestOutlierDetectionEjectsRefusingHost(t *testing.T) {
	e := newEnv(t)
	oc, err := upstream.NewConfig(&clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(time.Second),
		OutlierDetection: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(2), MaxEjectionPercent: wrapperspb.UInt32(100),
			BaseEjectionTime: durationpb.New(time.Minute)}})
	if err != nil {
		t.Fatal(err)
	}
	oc.Endpoints = []upstream.Endpoint{{Addr: refusingAddr(t), Weight: 1}, {Addr: echoServer(t), Weight: 1}}
	e.setClusters(oc)
	t.Cleanup(func() { e.fc.Clusters.Set(nil) })
	p, err := e.build(t, &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}})
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for range 10 {
		client, wait := serve(t, p)
		client.Write([]byte("ping"))
		client.(*net.TCPConn).CloseWrite()
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got, err := io.ReadAll(client); err != nil || string(got) != "ping" {
			failed++
		}
		wait()
	}
	if failed != 2 {
		t.Errorf("%d of 10 connections failed, want 2 (the refusing host's two, then it is ejected)", failed)
	}
	if v, _ := e.st.Value("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"); v != 1 {
		t.Errorf("ejections_enforced_consecutive_5xx = %d", v)
	}
}

var sourceIPHash = &typev3.HashPolicy{PolicySpecifier: &typev3.HashPolicy_SourceIp_{SourceIp: &typev3.HashPolicy_SourceIp{}}}

// idServer answers every connection with id and closes it.
func idServer(t *testing.T, id string) netip.AddrPort {
	return server(t, func(c net.Conn) { c.Write([]byte(id)) })
}

// TestSourceIPHash: with hash_policy source_ip on a RING_HASH cluster, a
// client's connections all go to one host, as Envoy's tcp_proxy places
// them; without it they spread.
func TestSourceIPHash(t *testing.T) {
	for _, hashed := range []bool{true, false} {
		e := newEnv(t)
		e.setClusters(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second, LBPolicy: clusterv3.Cluster_RING_HASH,
			Hashing:   upstream.Hashing{MinRingSize: 1024, MaxRingSize: 1 << 23},
			Endpoints: []upstream.Endpoint{{Addr: idServer(t, "a"), Weight: 1}, {Addr: idServer(t, "b"), Weight: 1}, {Addr: idServer(t, "c"), Weight: 1}}})
		cfg := &tcpv3.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"}}
		if hashed {
			cfg.HashPolicy = []*typev3.HashPolicy{sourceIPHash}
		}
		p, err := e.build(t, cfg)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for range 12 {
			client, wait := serve(t, p)
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, _ := io.ReadAll(client)
			seen[string(got)] = true
			client.Close() // the proxy waits for the client's end too
			wait()
		}
		if hashed && len(seen) != 1 || !hashed && len(seen) < 2 {
			t.Errorf("hash_policy %v: 12 connections from one address reached %v", hashed, seen)
		}
	}
}
