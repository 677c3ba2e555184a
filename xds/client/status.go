package client

import (
	"maps"
	"slices"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/skiffproxy/skiff/xds/resource"
)

// GenericXdsConfigs reports every resource the client knows of, as CSDS
// (envoy.service.status.v3) describes them: requested, acknowledged, rejected
// (with the error and the version that was rejected) or timed out. Resources
// are ordered by type (in initialisation order), then name.
func (c *Client) GenericXdsConfigs() []*statusv3.ClientConfig_GenericXdsConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
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
