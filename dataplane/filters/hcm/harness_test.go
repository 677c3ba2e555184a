package hcm_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	nethttp "net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/accesslog"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/grpcstats"
	"github.com/skiffproxy/skiff/dataplane/filters/hcm"
	"github.com/skiffproxy/skiff/dataplane/filters/router"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is an HTTP connection manager with the router on a loopback listener,
// in process, with clusters of test upstreams.
type env struct {
	t        testing.TB
	st       *stats.Store
	clusters *upstream.Manager
	pools    *pool.Manager
	routes   *route.Provider
	sinks    *accesslog.Sinks
	reg      *filter.Registry
	mgr      *hcm.Manager
	addr     string
	drainSig testDrain
	connsMu  sync.Mutex
	conns    []*filter.Conn
	ids      atomic.Uint64
}

var testLog = func() *slog.Logger {
	if os.Getenv("SKIFF_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}()

// newEnv builds a connection manager from YAML (an HttpConnectionManager)
// and serves it.
func newEnv(t testing.TB, hcmYAML string, clusters ...*clusterv3.Cluster) *env {
	t.Helper()
	e := &env{t: t, st: stats.NewStore(), drainSig: testDrain{draining: make(chan struct{}), closingIdle: make(chan struct{})}}
	e.clusters = upstream.NewManager(e.st)
	var as []upstream.Assignment
	for _, pb := range clusters {
		cfg, err := upstream.NewConfig(pb)
		if err != nil {
			t.Fatalf("cluster %s: %v", pb.GetName(), err)
		}
		as = append(as, upstream.Static(cfg))
	}
	e.clusters.Set(as)
	bufs := bufpool.New()
	e.pools = pool.NewManager(pool.Options{Buffers: bufs, Logger: testLog})
	e.routes = route.NewProvider()
	e.sinks = accesslog.NewSinks(testLog, e.st, 0)
	e.reg = filter.NewRegistry()
	for _, f := range []filter.HTTPFactory{router.Factory{}, grpcstats.Factory{}} {
		if err := e.reg.RegisterHTTP(f); err != nil {
			t.Fatal(err)
		}
	}
	f := hcm.Factory{Registry: e.reg}
	if err := e.reg.RegisterNetwork(f); err != nil {
		t.Fatal(err)
	}
	var cfg hcmv3.HttpConnectionManager
	if err := protoyaml.Unmarshal([]byte(hcmYAML), &cfg); err != nil {
		t.Fatalf("hcm config: %v", err)
	}
	nf, err := f.Create(&cfg, e.context())
	if err != nil {
		t.Fatalf("hcm: %v", err)
	}
	e.mgr = nf.(*hcm.Manager)
	e.serve()
	return e
}

func (e *env) context() *filter.Context {
	return &filter.Context{
		Logger:     testLog,
		Stats:      e.st,
		Clusters:   e.clusters,
		Buffers:    bufpool.New(),
		Routes:     e.routes,
		HTTPPools:  e.pools,
		AccessLogs: e.sinks,
		Listener:   "test",
		ClusterExists: func(name string) bool {
			return e.clusters.Get(name) != nil
		},
	}
}

func (e *env) serve() {
	// Cleanups run last first: the context is canceled, then Serve closes
	// the listener and waits for the connections, then the pools and sinks
	// close.
	e.t.Cleanup(func() {
		e.pools.Close()
		e.sinks.Close()
	})
	ctx, cancel := context.WithCancel(context.Background())
	e.addr = nettest.Serve(e.t, func(c net.Conn) {
		fc := filter.NewConn(c, e.ids.Add(1), "test", testLog)
		fc.SetDrain(&e.drainSig)
		e.connsMu.Lock()
		e.conns = append(e.conns, fc)
		e.connsMu.Unlock()
		e.mgr.ServeConn(ctx, fc)
	})
	e.t.Cleanup(cancel)
}

// drain makes every connection drain as a retired filter chain's do
// (listener.ConnSet.Drain, the immediate strategy) or, with closeIdle, as at
// a shutdown (listener.ConnSet.DrainNow).
func (e *env) drain(closeIdle bool) {
	d := &e.drainSig
	d.drainOne.Do(func() { close(d.draining) })
	if closeIdle {
		d.idleOne.Do(func() { close(d.closingIdle) })
	}
	e.connsMu.Lock()
	conns := e.conns
	e.connsMu.Unlock()
	for _, c := range conns {
		c.Drain(closeIdle)
	}
}

// testDrain is the harness's filter.DrainDecision: an immediate drain, or
// with gradual the decision the test sets in closeNow.
type testDrain struct {
	draining, closingIdle chan struct{}
	drainOne, idleOne     sync.Once
	gradual, closeNow     atomic.Bool
}

func (d *testDrain) Draining() <-chan struct{}    { return d.draining }
func (d *testDrain) ClosingIdle() <-chan struct{} { return d.closingIdle }
func (d *testDrain) DrainClose() bool {
	if d.gradual.Load() {
		return d.closeNow.Load()
	}
	select {
	case <-d.draining:
		return true
	default:
		return false
	}
}

// stat returns a counter's or gauge's value.
func (e *env) stat(name string) int64 {
	v, _ := e.st.Value(name)
	return v
}

// cluster is a STATIC cluster of addrs; http2 makes it speak HTTP/2.
func cluster(t testing.TB, name string, http2 bool, addrs ...string) *clusterv3.Cluster {
	t.Helper()
	extra := ""
	if http2 {
		extra = `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http2_protocol_options: {} }
`
	}
	return clusterWith(t, name, extra, addrs...)
}

// clusterWith is a STATIC cluster of addrs with extra YAML fields.
func clusterWith(t testing.TB, name, extra string, addrs ...string) *clusterv3.Cluster {
	t.Helper()
	var eps []string
	for _, a := range addrs {
		ap := netip.MustParseAddrPort(a)
		eps = append(eps, fmt.Sprintf(`{ endpoint: { address: { socket_address: { address: %q, port_value: %d } } } }`, ap.Addr(), ap.Port()))
	}
	y := fmt.Sprintf(`
name: %s
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: %s
  endpoints: [{ lb_endpoints: [%s] }]
`, name, name, strings.Join(eps, ", ")) + extra
	var c clusterv3.Cluster
	if err := protoyaml.Unmarshal([]byte(y), &c); err != nil {
		t.Fatalf("cluster yaml: %v\n%s", err, y)
	}
	return &c
}

// upstreamServer is a net/http server (HTTP/1.1 and h2c) on loopback.
func upstreamServer(t testing.TB, h nethttp.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nethttp.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	srv.Protocols = new(nethttp.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	})
	return ln.Addr().String()
}

// hcmYAML is a connection manager routing every request to cluster.
func hcmYAML(cluster string, extra string) string {
	return fmt.Sprintf(`
stat_prefix: ingress
route_config:
  name: local
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/" }
      route: { cluster: %s }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
%s`, cluster, extra)
}

// client is an HTTP/1.1 client with keep-alive.
func h1Client(t testing.TB) *nethttp.Client {
	tr := &nethttp.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &nethttp.Client{Transport: tr, Timeout: 20 * time.Second,
		CheckRedirect: func(*nethttp.Request, []*nethttp.Request) error { return nethttp.ErrUseLastResponse }}
}

// h2cClient is an HTTP/2 client with prior knowledge, which dials one
// connection per address.
func h2cClient(t testing.TB) *nethttp.Client {
	// One connection, its streams multiplexed.
	tr := &nethttp.Transport{DisableCompression: true, MaxConnsPerHost: 1}
	tr.Protocols = new(nethttp.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return &nethttp.Client{Transport: tr, Timeout: 20 * time.Second}
}

// waitStat waits (a little) for a stat to reach want: the connection
// manager counts an exchange once its response is out.
func (e *env) waitStat(name string, want int64) {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := e.stat(name)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("%s = %d, want %d", name, got, want)
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}
