// Package filters assembles skiff's built-in filters. Each filter lives in its own
// folder below this one, with its tests and a README; Builtin is the one list
// that registers them.
package filters

import (
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/cors"
	"github.com/skiffproxy/skiff/dataplane/filters/fault"
	"github.com/skiffproxy/skiff/dataplane/filters/grpcstats"
	"github.com/skiffproxy/skiff/dataplane/filters/hcm"
	"github.com/skiffproxy/skiff/dataplane/filters/healthcheck"
	"github.com/skiffproxy/skiff/dataplane/filters/httpinspector"
	"github.com/skiffproxy/skiff/dataplane/filters/istioalpn"
	"github.com/skiffproxy/skiff/dataplane/filters/localratelimit"
	"github.com/skiffproxy/skiff/dataplane/filters/metadataexchange"
	"github.com/skiffproxy/skiff/dataplane/filters/originaldst"
	"github.com/skiffproxy/skiff/dataplane/filters/peermetadata"
	"github.com/skiffproxy/skiff/dataplane/filters/rbac"
	"github.com/skiffproxy/skiff/dataplane/filters/router"
	"github.com/skiffproxy/skiff/dataplane/filters/tcpproxy"
	"github.com/skiffproxy/skiff/dataplane/filters/tlsinspector"
)

// Builtin returns a Registry holding every filter skiff ships with.
func Builtin() (*filter.Registry, error) {
	r := filter.NewRegistry()
	for _, f := range []filter.NetworkFactory{
		tcpproxy.Factory{},
		rbac.NetworkFactory{},
		metadataexchange.NetworkFactory{}, // Istio's; see its package
		hcm.Factory{Registry: r},          // builds its http_filters through r
	} {
		if err := r.RegisterNetwork(f); err != nil {
			return nil, err
		}
	}
	// Upstream network filters: a cluster's filters.
	for _, f := range []filter.UpstreamNetworkFactory{
		metadataexchange.UpstreamFactory{},
	} {
		if err := r.RegisterUpstreamNetwork(f); err != nil {
			return nil, err
		}
	}
	// Listener filters: a listener's listener_filters.
	for _, f := range []filter.ListenerFactory{
		tlsinspector.Factory{},
		httpinspector.Factory{},
		originaldst.Factory{},
	} {
		if err := r.RegisterListener(f); err != nil {
			return nil, err
		}
	}
	for _, f := range []filter.HTTPFactory{
		fault.Factory{},
		localratelimit.Factory{},
		cors.Factory{},
		cors.PolicyFactory{},
		rbac.HTTPFactory{},
		grpcstats.Factory{},
		healthcheck.Factory{},
		istioalpn.Factory{},    // Istio's; see its package
		peermetadata.Factory{}, // Istio's istio.metadata_exchange; see its package
		router.Factory{},
	} {
		if err := r.RegisterHTTP(f); err != nil {
			return nil, err
		}
	}
	return r, nil
}
