// Package resource knows the xDS resource types skiff subscribes to: their type
// URLs, how to decode and check them, and which other resources each one
// references (a cluster its ClusterLoadAssignment, a listener its route
// configurations and clusters, both their TLS secrets). The xDS client uses
// it to validate responses and to follow references (CDS -> EDS, LDS -> RDS,
// both -> SDS).
package resource

import (
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	runtimev3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the resources skiff subscribes to.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	RuntimeType  = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
	SecretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// Types lists the type URLs in the order Envoy initialises them and a control
// plane should push them: clusters, their endpoints, listeners, their routes.
// Runtime comes first since everything else may read it; secrets last, as
// both clusters and listeners name them.
func Types() []string {
	return []string{RuntimeType, ClusterType, EndpointType, ListenerType, RouteType, SecretType}
}

// ShortName is the usual abbreviation of a type URL (LDS, CDS, ...), for logs.
func ShortName(typeURL string) string {
	switch typeURL {
	case ListenerType:
		return "LDS"
	case ClusterType:
		return "CDS"
	case EndpointType:
		return "EDS"
	case RouteType:
		return "RDS"
	case RuntimeType:
		return "RTDS"
	case SecretType:
		return "SDS"
	}
	return typeURL
}

// Kind is the resource's message name, for errors ("Listener", "Cluster", ...).
func Kind(typeURL string) string {
	switch typeURL {
	case ListenerType:
		return "Listener"
	case ClusterType:
		return "Cluster"
	case EndpointType:
		return "ClusterLoadAssignment"
	case RouteType:
		return "RouteConfiguration"
	case RuntimeType:
		return "Runtime"
	case SecretType:
		return "Secret"
	}
	return typeURL
}

// Wildcard reports whether the type is subscribed to as a whole (LDS, CDS) and
// so follows state-of-the-world deletion: a resource absent from a response is
// gone. Other types are subscribed to by name.
func Wildcard(typeURL string) bool { return typeURL == ListenerType || typeURL == ClusterType }

// New returns an empty message of the type, or nil for a type skiff does not know.
func New(typeURL string) proto.Message {
	switch typeURL {
	case ListenerType:
		return &listenerv3.Listener{}
	case ClusterType:
		return &clusterv3.Cluster{}
	case EndpointType:
		return &endpointv3.ClusterLoadAssignment{}
	case RouteType:
		return &routev3.RouteConfiguration{}
	case RuntimeType:
		return &runtimev3.Runtime{}
	case SecretType:
		return &tlsv3.Secret{}
	}
	return nil
}

// Name returns the name of a decoded resource.
func Name(m proto.Message) string {
	switch r := m.(type) {
	case *listenerv3.Listener:
		return r.GetName()
	case *clusterv3.Cluster:
		return r.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName()
	case *routev3.RouteConfiguration:
		return r.GetName()
	case *runtimev3.Runtime:
		return r.GetName()
	case *tlsv3.Secret:
		return r.GetName()
	}
	return ""
}

// Decode unpacks a resource of type typeURL.
func Decode(typeURL string, a *anypb.Any) (proto.Message, error) {
	if a.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("resource of type %s in a response for %s", a.GetTypeUrl(), typeURL)
	}
	m := New(typeURL)
	if m == nil {
		return nil, fmt.Errorf("unknown resource type %s", typeURL)
	}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", Kind(typeURL), err)
	}
	return m, nil
}

// Ref is a reference from one resource to another, with the config source the
// referenced resource comes from.
type Ref struct {
	Name   string
	Source *corev3.ConfigSource
}

// EndpointsRef returns the ClusterLoadAssignment an EDS cluster needs, and false
// for other clusters.
func EndpointsRef(c *clusterv3.Cluster) (Ref, bool) {
	if c.GetType() != clusterv3.Cluster_EDS {
		return Ref{}, false
	}
	ec := c.GetEdsClusterConfig()
	name := ec.GetServiceName()
	if name == "" {
		name = c.GetName()
	}
	return Ref{Name: name, Source: ec.GetEdsConfig()}, true
}

// filterChains are a listener's filter chains, its default chain last.
func filterChains(l *listenerv3.Listener) []*listenerv3.FilterChain {
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(slices.Clip(chains), d)
	}
	return chains
}

// ListenerRefs returns the route configurations a listener's HTTP connection
// managers load through RDS, and the clusters its TCP proxies use.
func ListenerRefs(l *listenerv3.Listener) (routes []Ref, clusters []string) {
	for _, fc := range filterChains(l) {
		for _, f := range fc.GetFilters() {
			a := f.GetTypedConfig()
			switch a.GetTypeUrl() {
			case "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
				var hcm hcmv3.HttpConnectionManager
				if a.UnmarshalTo(&hcm) == nil {
					if rds := hcm.GetRds(); rds != nil {
						routes = append(routes, Ref{Name: rds.GetRouteConfigName(), Source: rds.GetConfigSource()})
					}
				}
			case "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":
				var tp tcpv3.TcpProxy
				if a.UnmarshalTo(&tp) == nil {
					if c := tp.GetCluster(); c != "" {
						clusters = append(clusters, c)
					}
					for _, wc := range tp.GetWeightedClusters().GetClusters() {
						clusters = append(clusters, wc.GetName())
					}
				}
			}
		}
	}
	return routes, clusters
}

// SecretRefs returns the secrets a listener's or a cluster's TLS transport
// sockets take by SDS (an SdsSecretConfig with an sds_config), in order.
func SecretRefs(m proto.Message) []Ref {
	var sockets []*corev3.TransportSocket
	switch r := m.(type) {
	case *listenerv3.Listener:
		for _, fc := range filterChains(r) {
			sockets = append(sockets, fc.GetTransportSocket())
		}
	case *clusterv3.Cluster:
		sockets = append(sockets, r.GetTransportSocket())
		for _, tm := range r.GetTransportSocketMatches() {
			sockets = append(sockets, tm.GetTransportSocket())
		}
	}
	var refs []Ref
	add := func(scs ...*tlsv3.SdsSecretConfig) {
		for _, sc := range scs {
			if sc.GetSdsConfig() != nil {
				refs = append(refs, Ref{Name: sc.GetName(), Source: sc.GetSdsConfig()})
			}
		}
	}
	for _, ts := range sockets {
		var ctc *tlsv3.CommonTlsContext
		a := ts.GetTypedConfig()
		switch a.MessageName() {
		case "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext":
			var d tlsv3.DownstreamTlsContext
			if a.UnmarshalTo(&d) == nil {
				ctc = d.GetCommonTlsContext()
			}
		case "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext":
			var u tlsv3.UpstreamTlsContext
			if a.UnmarshalTo(&u) == nil {
				ctc = u.GetCommonTlsContext()
			}
		}
		add(ctc.GetTlsCertificateSdsSecretConfigs()...)
		add(ctc.GetValidationContextSdsSecretConfig(), ctc.GetCombinedValidationContext().GetValidationContextSdsSecretConfig())
	}
	return refs
}

// RouteClusters returns the clusters a route configuration routes to.
func RouteClusters(rc *routev3.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			ra := r.GetRoute()
			if c := ra.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, wc := range ra.GetWeightedClusters().GetClusters() {
				out = append(out, wc.GetName())
			}
		}
	}
	return out
}
