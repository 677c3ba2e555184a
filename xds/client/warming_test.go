package client

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	testv3 "github.com/envoyproxy/go-control-plane/pkg/test/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/xds/resource"
)

// TestInitialFetchTimeout runs a real go-control-plane server and the client in
// a synctest bubble, over an in-memory connection, so the initial fetch timeouts
// can be observed on the bubble's fake clock: a cluster whose endpoints never
// come warms (empty) when its eds_config's initial_fetch_timeout expires, and
// only then are listeners requested and the client initialized.
func TestInitialFetchTimeout(t *testing.T) {
	cl := edsCluster("slow")
	cl.EdsClusterConfig.EdsConfig.InitialFetchTimeout = durationpb.New(5 * time.Second)
	runInBubble(t, map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {cl}, resourcev3.ListenerType: {}},
		func(t *testing.T, c *Client, ready <-chan struct{}) {
			start := time.Now()
			if c.Initialized() {
				t.Fatal("initialized while a cluster was warming")
			}
			if d := c.dataplaneClusterNames(); len(d) != 0 {
				t.Fatalf("warming cluster applied before its endpoints or timeout: %v", d)
			}
			<-ready // the fetch timeout, then LDS (empty, answered at once), then ready
			if waited := time.Since(start); waited < 5*time.Second || waited > 6*time.Second {
				t.Fatalf("initialized after %v, want the 5 s initial_fetch_timeout", waited)
			}
			if !slices.Contains(c.dataplaneClusterNames(), "slow") {
				t.Fatal("the cluster is not in use after its fetch timed out")
			}
			var timedOut bool
			for _, g := range c.GenericXdsConfigs() {
				if g.GetTypeUrl() == resource.EndpointType && g.GetName() == "slow" {
					timedOut = g.GetClientStatus().String() == "TIMEOUT"
				}
			}
			if !timedOut {
				t.Errorf("CSDS does not say the endpoints timed out: %v", c.GenericXdsConfigs())
			}
		})
}

// dataplaneClusterNames is what the client last applied.
func (c *Client) dataplaneClusterNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.activeClusters {
		out = append(out, n)
	}
	return out
}

// memListener is an in-memory net.Listener built on net.Pipe, so that every
// goroutine of the gRPC client and server blocks on channels the synctest
// bubble can see.
type memListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func newMemListener() *memListener {
	return &memListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *memListener) dial() (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.conns <- b:
		return a, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}

func (l *memListener) Addr() net.Addr { return memAddr{} }

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

// TestRepeatedNACKsArePaced: go-control-plane's snapshot cache answers every
// NACK with the same response until the snapshot changes. The client NACKs
// the first at once and paces the repeats (100 ms doubling up to 1 s) instead
// of spinning with the server; a fixed snapshot is taken within a second.
func TestRepeatedNACKsArePaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
		var mu sync.Mutex
		nacks, acks := 0, 0
		cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			if r.GetTypeUrl() != resource.ClusterType || r.GetResponseNonce() == "" {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			if r.GetErrorDetail() != nil {
				nacks++
			} else {
				acks++
			}
			return nil
		}}
		bad := edsCluster("bad")
		bad.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED // not supported: rejected
		set := func(version string, cl *clusterv3.Cluster) {
			snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {cl}, resourcev3.ListenerType: {}})
			if err != nil {
				t.Fatal(err)
			}
			if err := cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
				t.Fatal(err)
			}
		}
		set("1", bad)
		bubbleADS(t, cache, cb)

		// NACKs at 0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5 ... 9.5 s.
		time.Sleep(10 * time.Second)
		synctest.Wait()
		mu.Lock()
		n := nacks
		mu.Unlock()
		if n < 8 || n > 13 {
			t.Fatalf("%d NACKs of the same update in 10 s, want about 12 (paced)", n)
		}
		set("2", edsCluster("good"))
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if acks != 1 {
			t.Fatalf("%d ACKs within a second of the fixed snapshot, want 1", acks)
		}
	})
}

// runInBubble runs a real go-control-plane server serving resources and a
// client over ADS in a synctest bubble (see TestInitialFetchTimeout), then
// calls test with the client and a channel closed when it initializes.
func runInBubble(t *testing.T, resources map[resourcev3.Type][]types.Resource, test func(t *testing.T, c *Client, ready <-chan struct{})) {
	synctest.Test(t, func(t *testing.T) {
		cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
		snap, err := cachev3.NewSnapshot("1", resources)
		if err != nil {
			t.Fatal(err)
		}
		if err := cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
			t.Fatal(err)
		}
		c, ready := bubbleADS(t, cache, nil)
		synctest.Wait()
		test(t, c, ready)
	})
}

// bubbleADS starts, inside a synctest bubble, a go-control-plane server on
// cache (with callbacks cb, nil for none) over an in-memory listener, a data
// plane and a client of it over ADS, running until the test ends. It
// returns the client and a channel closed when it initializes.
func bubbleADS(t *testing.T, cache cachev3.SnapshotCache, cb serverv3.Callbacks) (*Client, <-chan struct{}) {
	lis := newMemListener()
	gs := grpc.NewServer()
	testv3.RegisterServer(gs, serverv3.NewServer(context.Background(), cache, cb))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	reg, _ := filters.Builtin()
	log := slog.New(slog.DiscardHandler)
	dp := dataplane.NewServer(dataplane.Options{Logger: log, Registry: reg, Stats: stats.NewStore(), DrainTime: time.Second})
	ready := make(chan struct{})
	api := &corev3.ApiConfigSource{ApiType: corev3.ApiConfigSource_GRPC, GrpcServices: []*corev3.GrpcService{{
		TargetSpecifier: &corev3.GrpcService_GoogleGrpc_{GoogleGrpc: &corev3.GrpcService_GoogleGrpc{TargetUri: "passthrough:///mem"}}}}}
	c, err := New(Options{
		Node: node(), Logger: log, Dataplane: dp,
		Sources: Sources{ADS: api, Cluster: adsSource(), Listener: adsSource()},
		Dial: func(*corev3.GrpcService) (*grpc.ClientConn, error) {
			return grpc.NewClient("passthrough:///mem", grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return lis.dial() }))
		},
		OnInitialized: func() { close(ready) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		defer scancel()
		dp.Shutdown(sctx)
	})
	return c, ready
}
