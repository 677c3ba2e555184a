package client

import (
	"fmt"
	"slices"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/dataplane/admin"
)

// TestConfigDumpShowsWarming: the config dump tells a warming listener or
// cluster from an active one, as Envoy's does: a cluster waiting for its
// endpoints is in dynamic_warming_clusters, not dynamic_active_clusters; a
// changed listener whose new routes have not come has a warming_state beside
// its active_state (the old version, still serving). Before, every accepted
// resource was shown active.
func TestConfigDumpShowsWarming(t *testing.T) {
	up := greeter(t, "x")
	f := newFixture(t, setup{})
	slow := edsCluster("slow") // its endpoints never come, and it waits an hour for them
	slow.EdsClusterConfig.EdsConfig.InitialFetchTimeout = durationpb.New(time.Hour)
	push := func(listenerRoutes string, withSlow bool, rcs ...types.Resource) string {
		cls := []types.Resource{edsCluster("backend")}
		if withSlow {
			cls = append(cls, slow)
		}
		return f.cp.Push(map[resourcev3.Type][]types.Resource{
			resourcev3.ClusterType:  cls,
			resourcev3.EndpointType: {assignment("backend", up)},
			resourcev3.ListenerType: {hcmListener("http", listenerRoutes)},
			resourcev3.RouteType:    rcs,
		})
	}
	v1 := push("a", false, routeTo("a", "backend"))
	f.waitReady()
	eventually(t, "everything active", func() string {
		return checkDump(admin.DynamicConfigDumper(f.client).DynamicConfigDump(), map[string]string{"backend": "active"}, v1, "")
	})

	// The listener moves to routes "b", which the control plane lacks; a
	// cluster comes whose endpoints do not.
	v2 := push("b", true, routeTo("a", "backend"))
	eventually(t, "the warming listener and cluster", func() string {
		return checkDump(admin.DynamicConfigDumper(f.client).DynamicConfigDump(), map[string]string{"backend": "active", "slow": "warming"}, v1, v2)
	})

	// The routes come: the listener's new version serves.
	v3 := push("b", true, routeTo("a", "backend"), routeTo("b", "backend"))
	eventually(t, "the listener active once its routes came", func() string {
		return checkDump(admin.DynamicConfigDumper(f.client).DynamicConfigDump(), map[string]string{"backend": "active", "slow": "warming"}, v3, "")
	})
}

// checkDump describes how d differs from what is expected: the dynamic
// clusters by name ("active" or "warming"), and the versions of listener
// "http"'s active and warming states ("": none).
func checkDump(d admin.DynamicDump, clusters map[string]string, activeVersion, warmingVersion string) string {
	got := map[string]string{}
	for _, c := range d.Clusters.GetDynamicActiveClusters() {
		got[clusterName(c.GetCluster())] += "active"
	}
	for _, c := range d.Clusters.GetDynamicWarmingClusters() {
		got[clusterName(c.GetCluster())] += "warming"
	}
	if fmt.Sprint(got) != fmt.Sprint(clusters) {
		return fmt.Sprintf("clusters %v, want %v", got, clusters)
	}
	i := slices.IndexFunc(d.Listeners.GetDynamicListeners(), func(l *adminv3.ListenersConfigDump_DynamicListener) bool { return l.GetName() == "http" })
	if i < 0 {
		return "listener http not in the dump"
	}
	l := d.Listeners.GetDynamicListeners()[i]
	if a, w := l.GetActiveState().GetVersionInfo(), l.GetWarmingState().GetVersionInfo(); a != activeVersion || w != warmingVersion {
		return fmt.Sprintf("listener http: active version %q, warming %q; want %q and %q", a, w, activeVersion, warmingVersion)
	}
	return ""
}

func clusterName(a *anypb.Any) string {
	var c clusterv3.Cluster
	if err := a.UnmarshalTo(&c); err != nil {
		return err.Error()
	}
	return c.GetName()
}
