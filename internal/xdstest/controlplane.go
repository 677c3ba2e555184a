// Package xdstest runs a real go-control-plane xDS server for tests: ADS and
// the per-type services, state of the world and delta, recording every request
// it receives and every response it sends so tests can assert whole messages.
package xdstest

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	testv3 "github.com/envoyproxy/go-control-plane/pkg/test/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// ControlPlane is a real go-control-plane xDS server on loopback that records
// every request it receives and every response it sends.
type ControlPlane struct {
	t       testing.TB
	node    string
	cache   cachev3.SnapshotCache
	grpc    *grpc.Server
	lis     net.Listener
	version int

	mu        sync.Mutex
	requests  []proto.Message // *DiscoveryRequest or *DeltaDiscoveryRequest, in arrival order
	responses []proto.Message
	changed   chan struct{}
}

// Start serves ADS (SotW and delta) for nodeID on addr, host:port or
// unix:path, until the test ends; opts are the gRPC server's (TLS
// credentials, say).
func Start(t testing.TB, addr, nodeID string, opts ...grpc.ServerOption) *ControlPlane {
	t.Helper()
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok { // as istio-agent serves istiod's xDS to its proxy
		network, addr = "unix", path
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	cp := &ControlPlane{t: t, lis: lis, node: nodeID, changed: make(chan struct{}, 1)}
	cp.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			cp.record(&cp.requests, r)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, r *discoveryv3.DiscoveryResponse) {
			cp.record(&cp.responses, r)
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			cp.record(&cp.requests, r)
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, r *discoveryv3.DeltaDiscoveryResponse) {
			cp.record(&cp.responses, r)
		},
	}
	srv := serverv3.NewServer(context.Background(), cp.cache, cb)
	cp.grpc = grpc.NewServer(opts...)
	testv3.RegisterServer(cp.grpc, srv)
	go cp.grpc.Serve(lis)
	t.Cleanup(cp.Stop)
	return cp
}

// Addr is the address the server listens on.
func (cp *ControlPlane) Addr() string { return cp.lis.Addr().String() }

// Stop stops the server and closes its streams.
func (cp *ControlPlane) Stop() { cp.grpc.Stop() }

func (cp *ControlPlane) record(list *[]proto.Message, m proto.Message) {
	cp.mu.Lock()
	*list = append(*list, proto.Clone(m))
	cp.mu.Unlock()
	select {
	case cp.changed <- struct{}{}:
	default:
	}
}

// Push makes resources the next snapshot version and returns that version.
func (cp *ControlPlane) Push(resources map[resourcev3.Type][]types.Resource) string {
	cp.t.Helper()
	cp.version++
	v := string(rune('0' + cp.version%10))
	if cp.version >= 10 {
		v = time.Now().Format("150405.000000")
	}
	snap, err := cachev3.NewSnapshot(v, resources)
	if err != nil {
		cp.t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), cp.node, snap); err != nil {
		cp.t.Fatal(err)
	}
	return v
}

// waitFor waits until match accepts a recorded message (requests or responses)
// at or after index from, and returns it and its index.
func (cp *ControlPlane) waitFor(list *[]proto.Message, from int, what string, match func(proto.Message) bool) (proto.Message, int) {
	cp.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		cp.mu.Lock()
		for i := from; i < len(*list); i++ {
			if match((*list)[i]) {
				m := (*list)[i]
				cp.mu.Unlock()
				return m, i
			}
		}
		cp.mu.Unlock()
		select {
		case <-cp.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			cp.mu.Lock()
			defer cp.mu.Unlock()
			for _, r := range *list {
				cp.t.Logf("recorded: %v", r)
			}
			cp.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Request waits for the n-th (from 0) SotW request of a type.
func (cp *ControlPlane) Request(typeURL string, n int) *discoveryv3.DiscoveryRequest {
	cp.t.Helper()
	from := 0
	for {
		m, i := cp.waitFor(&cp.requests, from, "request "+typeURL, func(m proto.Message) bool {
			r, ok := m.(*discoveryv3.DiscoveryRequest)
			return ok && r.GetTypeUrl() == typeURL
		})
		if n == 0 {
			return m.(*discoveryv3.DiscoveryRequest)
		}
		n--
		from = i + 1
	}
}

// RequestAnswering waits for the SotW request of a type that answers the
// response with the given nonce (its ACK or NACK).
func (cp *ControlPlane) RequestAnswering(typeURL, nonce string) *discoveryv3.DiscoveryRequest {
	cp.t.Helper()
	m, _ := cp.waitFor(&cp.requests, 0, "request "+typeURL+" answering "+nonce, func(m proto.Message) bool {
		r, ok := m.(*discoveryv3.DiscoveryRequest)
		return ok && r.GetTypeUrl() == typeURL && r.GetResponseNonce() == nonce
	})
	return m.(*discoveryv3.DiscoveryRequest)
}

// DeltaRequest waits for the n-th delta request of a type.
func (cp *ControlPlane) DeltaRequest(typeURL string, n int) *discoveryv3.DeltaDiscoveryRequest {
	cp.t.Helper()
	from := 0
	for {
		m, i := cp.waitFor(&cp.requests, from, "delta request "+typeURL, func(m proto.Message) bool {
			r, ok := m.(*discoveryv3.DeltaDiscoveryRequest)
			return ok && r.GetTypeUrl() == typeURL
		})
		if n == 0 {
			return m.(*discoveryv3.DeltaDiscoveryRequest)
		}
		n--
		from = i + 1
	}
}

// Response waits for the n-th SotW response of a type.
func (cp *ControlPlane) Response(typeURL string, n int) *discoveryv3.DiscoveryResponse {
	cp.t.Helper()
	from := 0
	for {
		m, i := cp.waitFor(&cp.responses, from, "response "+typeURL, func(m proto.Message) bool {
			r, ok := m.(*discoveryv3.DiscoveryResponse)
			return ok && r.GetTypeUrl() == typeURL
		})
		if n == 0 {
			return m.(*discoveryv3.DiscoveryResponse)
		}
		n--
		from = i + 1
	}
}

// DeltaResponse waits for the n-th delta response of a type.
func (cp *ControlPlane) DeltaResponse(typeURL string, n int) *discoveryv3.DeltaDiscoveryResponse {
	cp.t.Helper()
	from := 0
	for {
		m, i := cp.waitFor(&cp.responses, from, "delta response "+typeURL, func(m proto.Message) bool {
			r, ok := m.(*discoveryv3.DeltaDiscoveryResponse)
			return ok && r.GetTypeUrl() == typeURL
		})
		if n == 0 {
			return m.(*discoveryv3.DeltaDiscoveryResponse)
		}
		n--
		from = i + 1
	}
}

// Requests returns a copy of every request received so far, in order.
func (cp *ControlPlane) Requests() []proto.Message {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]proto.Message(nil), cp.requests...)
}

// Responses returns a copy of every response sent so far, in order.
func (cp *ControlPlane) Responses() []proto.Message {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]proto.Message(nil), cp.responses...)
}
