package client

import (
	"maps"
	"slices"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/skiffproxy/skiff/dataplane/admin"
	"github.com/skiffproxy/skiff/xds/resource"
)

// GenericXdsConfigs reports every resource the client knows of, as CSDS
// (envoy.service.status.v3) describes them: requested, acknowledged, rejected
// (with the error and the version that was rejected) or timed out. Resources
// are ordered by type (in initialisation order), then name.
func (c *Client) GenericXdsConfigs() []*statusv3.ClientConfig_GenericXdsConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.genericXdsConfigsLocked()
}

func (c *Client) genericXdsConfigsLocked() []*statusv3.ClientConfig_GenericXdsConfig {
	var out []*statusv3.ClientConfig_GenericXdsConfig
	for _, url := range resource.Types() {
		ts := c.types[url]
		if ts.stream == nil {
			continue
		}
		names := map[string]bool{}
		for n := range ts.res {
			names[n] = true
		}
		for n := range ts.names {
			names[n] = true
		}
		for n := range ts.rejected {
			names[n] = true
		}
		for _, name := range slices.Sorted(maps.Keys(names)) {
			g := &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: url, Name: name, ConfigStatus: statusv3.ConfigStatus_SYNCED}
			r, have := ts.res[name]
			switch {
			case have:
				g.ClientStatus = adminv3.ClientResourceStatus_ACKED
				g.VersionInfo = r.Version
				g.XdsConfig = r.Any
				g.LastUpdated = timestamppb.New(r.LastUpdated)
			case ts.timedOut[name]:
				g.ClientStatus = adminv3.ClientResourceStatus_TIMEOUT
			default:
				g.ClientStatus = adminv3.ClientResourceStatus_REQUESTED
				g.ConfigStatus = statusv3.ConfigStatus_NOT_SENT
			}
			if rej, ok := ts.rejected[name]; ok {
				g.ClientStatus = adminv3.ClientResourceStatus_NACKED
				g.ConfigStatus = statusv3.ConfigStatus_ERROR
				g.ErrorState = &adminv3.UpdateFailureState{
					LastUpdateAttempt: timestamppb.New(rej.at),
					Details:           rej.err.Error(),
					VersionInfo:       rej.version,
				}
			}
			out = append(out, g)
		}
	}
	return out
}

// Initialized reports whether the first round of configuration is done.
func (c *Client) Initialized() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.phase == phaseLive
}

// Versions returns the last accepted version of each subscribed type, by
// type URL.
func (c *Client) Versions() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for url, ts := range c.types {
		if ts.stream != nil {
			out[url] = ts.version
		}
	}
	return out
}

// DynamicConfigDump implements admin.DynamicConfigDumper: Envoy's config dump
// of what came over xDS, with the warming state that GenericXdsConfigs cannot
// give. A listener or cluster whose newest version waits for its route
// configurations or endpoints is shown as warming (the listener's
// warming_state, dynamic_warming_clusters) beside the version still serving
// (active_state, dynamic_active_clusters), as in Envoy; a cluster CDS removed
// that an active listener still uses stays active. Route configurations,
// endpoints and secrets are as GenericXdsConfigs reports them.
func (c *Client) DynamicConfigDump() admin.DynamicDump {
	c.mu.Lock()
	defer c.mu.Unlock()
	generic := c.genericXdsConfigsLocked()
	d := admin.DumpFromGenericXdsConfigs(generic)
	status := map[string]*statusv3.ClientConfig_GenericXdsConfig{}
	for _, g := range generic {
		status[g.GetTypeUrl()+"/"+g.GetName()] = g
	}

	lds := c.types[resource.ListenerType]
	d.Listeners = &adminv3.ListenersConfigDump{VersionInfo: lds.version}
	for _, name := range unionKeys(lds.res, c.activeListeners, status, resource.ListenerType) {
		dl := &adminv3.ListenersConfigDump_DynamicListener{Name: name}
		if g := status[resource.ListenerType+"/"+name]; g != nil {
			dl.ClientStatus, dl.ErrorState = g.GetClientStatus(), g.GetErrorState()
		}
		active := c.activeListeners[name]
		if active != nil {
			dl.ActiveState = listenerState(active)
		}
		if r := lds.res[name]; r != nil && r != active {
			dl.WarmingState = listenerState(r)
		}
		d.Listeners.DynamicListeners = append(d.Listeners.DynamicListeners, dl)
	}

	cds := c.types[resource.ClusterType]
	d.Clusters = &adminv3.ClustersConfigDump{VersionInfo: cds.version}
	for _, name := range unionKeys(cds.res, c.activeClusters, status, resource.ClusterType) {
		var cs adminv3.ClientResourceStatus
		var es *adminv3.UpdateFailureState
		if g := status[resource.ClusterType+"/"+name]; g != nil {
			cs, es = g.GetClientStatus(), g.GetErrorState()
		}
		active := c.activeClusters[name]
		if active != nil {
			d.Clusters.DynamicActiveClusters = append(d.Clusters.DynamicActiveClusters, clusterState(active, cs, es))
		}
		if r := cds.res[name]; r != nil && r != active {
			d.Clusters.DynamicWarmingClusters = append(d.Clusters.DynamicWarmingClusters, clusterState(r, cs, es))
		}
	}
	return d
}

// unionKeys returns, sorted, the names of accepted, of active and of the
// status entries of type url (a resource requested or rejected without an
// accepted version).
func unionKeys(accepted, active map[string]*Resource, status map[string]*statusv3.ClientConfig_GenericXdsConfig, url string) []string {
	names := map[string]bool{}
	for n := range accepted {
		names[n] = true
	}
	for n := range active {
		names[n] = true
	}
	for _, g := range status {
		if g.GetTypeUrl() == url {
			names[g.GetName()] = true
		}
	}
	return slices.Sorted(maps.Keys(names))
}

func listenerState(r *Resource) *adminv3.ListenersConfigDump_DynamicListenerState {
	return &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: r.Version, Listener: r.Any, LastUpdated: timestamppb.New(r.LastUpdated)}
}

func clusterState(r *Resource, cs adminv3.ClientResourceStatus, es *adminv3.UpdateFailureState) *adminv3.ClustersConfigDump_DynamicCluster {
	return &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: r.Version, Cluster: r.Any, LastUpdated: timestamppb.New(r.LastUpdated), ClientStatus: cs, ErrorState: es}
}

var _ admin.DynamicConfigDumper = (*Client)(nil)
