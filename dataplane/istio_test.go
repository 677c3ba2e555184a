package dataplane

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/internal/stats"
)

// validateIstioResource decodes one resource istiod pushed (testdata/istio,
// see its README) and checks it as the xDS client does before ACKing.
func validateIstioResource(t *testing.T, s *Server, path string) (proto.Message, error) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Base(path)
	var m proto.Message
	var validate func() error
	switch {
	case strings.HasPrefix(base, "Listener-"):
		l := &listenerv3.Listener{}
		m, validate = l, func() error { return s.ValidateListener(l) }
	case strings.HasPrefix(base, "ClusterLoadAssignment-"):
		c := &endpointv3.ClusterLoadAssignment{}
		m, validate = c, func() error { return s.ValidateEndpoints(c) }
	case strings.HasPrefix(base, "Cluster-"):
		c := &clusterv3.Cluster{}
		m, validate = c, func() error { return s.ValidateCluster(c) }
	case strings.HasPrefix(base, "RouteConfiguration-"):
		r := &routev3.RouteConfiguration{}
		m, validate = r, func() error { return s.ValidateRoute(r) }
	default:
		t.Fatalf("%s: unknown resource kind", base)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		t.Fatalf("%s: %v", base, err)
	}
	return m, validate()
}

func istioServer(t *testing.T) *Server {
	reg, err := filters.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	return NewServer(Options{Logger: slog.New(slog.DiscardHandler), Registry: reg, Stats: stats.NewStore()})
}

// TestIstioGatewayResources: every resource istiod pushed to an ingress
// gateway is accepted, exactly as pushed, alone and as one configuration.
func TestIstioGatewayResources(t *testing.T) { checkIstioResources(t, "router", 9) }

// TestIstioSidecarResources: so is every resource istiod pushed to a
// sidecar: virtualOutbound (use_original_dst) and the listeners it hands
// connections to (bind_to_port false), virtualInbound (mTLS with
// certificates by SDS, the peer metadata filter's downstream_propagation),
// the inbound clusters (ORIGINAL_DST, from 127.0.0.6), the passthrough
// clusters (use_downstream_protocol_config).
func TestIstioSidecarResources(t *testing.T) { checkIstioResources(t, "sidecar", 16) }

// checkIstioResources validates the n resources of testdata/istio/dir one
// by one, then as one configuration, as Apply builds it.
func checkIstioResources(t *testing.T, dir string, n int) {
	s := istioServer(t)
	files, _ := filepath.Glob("testdata/istio/" + dir + "/*.pb")
	if len(files) != n {
		t.Fatalf("%d %s resources, want %d", len(files), dir, n)
	}
	snap := &Snapshot{Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}, Routes: map[string]*routev3.RouteConfiguration{}}
	for _, f := range files {
		m, err := validateIstioResource(t, s, f)
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
		}
		switch m := m.(type) {
		case *listenerv3.Listener:
			snap.Listeners = append(snap.Listeners, m)
		case *clusterv3.Cluster:
			snap.Clusters = append(snap.Clusters, m)
		case *endpointv3.ClusterLoadAssignment:
			snap.Endpoints[m.GetClusterName()] = m
		case *routev3.RouteConfiguration:
			snap.Routes[m.GetName()] = m
		}
	}
	if err := s.Validate(snap); err != nil {
		t.Fatal(err)
	}
}
