package admin

import (
	"fmt"
	"regexp"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DynamicDump is the part of Envoy's config dump that comes from xDS. Each
// message holds only its dynamic fields and version_info; the admin API adds
// the static resources of the bootstrap. A nil message means nothing of that
// type came over xDS. The admin API copies what it is given before changing
// anything.
type DynamicDump struct {
	// Listeners: dynamic_listeners (with active, warming, draining and error
	// state and client_status) and version_info.
	Listeners *adminv3.ListenersConfigDump
	// Clusters: dynamic_active_clusters, dynamic_warming_clusters and
	// version_info.
	Clusters *adminv3.ClustersConfigDump
	// Routes: dynamic_route_configs.
	Routes *adminv3.RoutesConfigDump
	// Endpoints: dynamic_endpoint_configs (dumped with include_eds only).
	Endpoints *adminv3.EndpointsConfigDump
	// Secrets: dynamic_active_secrets and dynamic_warming_secrets.
	Secrets *adminv3.SecretsConfigDump
}

// VersionReporter may be implemented by the XDSStatus value (when it does not
// implement DynamicConfigDumper) to give the version_info of the listener and
// cluster dumps: the last accepted version of each type, by type URL.
type VersionReporter interface {
	Versions() map[string]string
}

// xDS type URLs, as in package xds/resource (which package dataplane may not
// import).
const (
	listenerTypeURL = "type.googleapis.com/envoy.config.listener.v3.Listener"
	clusterTypeURL  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointTypeURL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	routeTypeURL    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	secretTypeURL   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// DumpFromGenericXdsConfigs builds a DynamicDump from CSDS entries: every
// resource with an xds_config is shown as active (or, for a secret, as an
// active secret). It is what the config dump shows when the XDSStatus does not
// implement DynamicConfigDumper.
func DumpFromGenericXdsConfigs(cfgs []*statusv3.ClientConfig_GenericXdsConfig) DynamicDump {
	var d DynamicDump
	for _, c := range cfgs {
		switch c.GetTypeUrl() {
		case listenerTypeURL:
			if d.Listeners == nil {
				d.Listeners = &adminv3.ListenersConfigDump{}
			}
			dl := &adminv3.ListenersConfigDump_DynamicListener{Name: c.GetName(), ErrorState: c.GetErrorState(), ClientStatus: c.GetClientStatus()}
			if c.GetXdsConfig() != nil {
				dl.ActiveState = &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: c.GetVersionInfo(), Listener: c.GetXdsConfig(), LastUpdated: c.GetLastUpdated()}
			}
			d.Listeners.DynamicListeners = append(d.Listeners.DynamicListeners, dl)
		case clusterTypeURL:
			if d.Clusters == nil {
				d.Clusters = &adminv3.ClustersConfigDump{}
			}
			d.Clusters.DynamicActiveClusters = append(d.Clusters.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
				VersionInfo: c.GetVersionInfo(), Cluster: c.GetXdsConfig(), LastUpdated: c.GetLastUpdated(), ErrorState: c.GetErrorState(), ClientStatus: c.GetClientStatus()})
		case routeTypeURL:
			if d.Routes == nil {
				d.Routes = &adminv3.RoutesConfigDump{}
			}
			d.Routes.DynamicRouteConfigs = append(d.Routes.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
				VersionInfo: c.GetVersionInfo(), RouteConfig: c.GetXdsConfig(), LastUpdated: c.GetLastUpdated(), ErrorState: c.GetErrorState(), ClientStatus: c.GetClientStatus()})
		case endpointTypeURL:
			if d.Endpoints == nil {
				d.Endpoints = &adminv3.EndpointsConfigDump{}
			}
			d.Endpoints.DynamicEndpointConfigs = append(d.Endpoints.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: c.GetVersionInfo(), EndpointConfig: c.GetXdsConfig(), LastUpdated: c.GetLastUpdated(), ErrorState: c.GetErrorState(), ClientStatus: c.GetClientStatus()})
		case secretTypeURL:
			if d.Secrets == nil {
				d.Secrets = &adminv3.SecretsConfigDump{}
			}
			d.Secrets.DynamicActiveSecrets = append(d.Secrets.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{
				Name: c.GetName(), VersionInfo: c.GetVersionInfo(), Secret: c.GetXdsConfig(), LastUpdated: c.GetLastUpdated(), ErrorState: c.GetErrorState(), ClientStatus: c.GetClientStatus()})
		}
	}
	return d
}

// dynamicDump returns a copy of what the xDS client reports, safe to change.
func (s *Server) dynamicDump() DynamicDump {
	var d DynamicDump
	switch x := s.xdsStatus().(type) {
	case nil:
	case DynamicConfigDumper:
		d = x.DynamicConfigDump()
	default:
		d = DumpFromGenericXdsConfigs(x.GenericXdsConfigs())
		if v, ok := x.(VersionReporter); ok {
			vs := v.Versions()
			if d.Listeners == nil {
				d.Listeners = &adminv3.ListenersConfigDump{}
			}
			if d.Clusters == nil {
				d.Clusters = &adminv3.ClustersConfigDump{}
			}
			d.Listeners.VersionInfo = vs[listenerTypeURL]
			d.Clusters.VersionInfo = vs[clusterTypeURL]
		}
	}
	return DynamicDump{
		Listeners: clone(d.Listeners),
		Clusters:  clone(d.Clusters),
		Routes:    clone(d.Routes),
		Endpoints: clone(d.Endpoints),
		Secrets:   clone(d.Secrets),
	}
}

// clone returns a copy of m, or a new empty message if m is nil.
func clone[M interface {
	proto.Message
	*T
}, T any](m M) M {
	if m == nil {
		return M(new(T))
	}
	return proto.Clone(m).(M)
}

// configDump builds Envoy's config dump: the bootstrap, then clusters,
// listeners, routes and secrets (static ones from the bootstrap, dynamic ones
// from the xDS client), then endpoints if includeEDS. resource and nameRegex
// select as Envoy's ?resource= and ?name_regex= do. Secrets are redacted.
func (s *Server) configDump(resource, nameRegex string, includeEDS bool) (*adminv3.ConfigDump, error) {
	var nameRE *regexp.Regexp
	if nameRegex != "" {
		re, err := regexp.Compile(nameRegex)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "name_regex: %v", err)
		}
		nameRE = re
	}
	b := s.opts.Bootstrap
	updated := timestamppb.New(s.opts.StartTime)
	d := s.dynamicDump()

	for _, l := range b.GetStaticResources().GetListeners() {
		d.Listeners.StaticListeners = append(d.Listeners.StaticListeners, &adminv3.ListenersConfigDump_StaticListener{Listener: mustAny(l), LastUpdated: updated})
		for _, rc := range inlineRouteConfigs(l) {
			d.Routes.StaticRouteConfigs = append(d.Routes.StaticRouteConfigs, &adminv3.RoutesConfigDump_StaticRouteConfig{RouteConfig: rc, LastUpdated: updated})
		}
	}
	for _, sec := range b.GetStaticResources().GetSecrets() {
		d.Secrets.StaticSecrets = append(d.Secrets.StaticSecrets, &adminv3.SecretsConfigDump_StaticSecret{Name: sec.GetName(), Secret: mustAny(sec), LastUpdated: updated})
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		d.Clusters.StaticClusters = append(d.Clusters.StaticClusters, &adminv3.ClustersConfigDump_StaticCluster{Cluster: mustAny(c), LastUpdated: updated})
		if la := c.GetLoadAssignment(); la != nil {
			d.Endpoints.StaticEndpointConfigs = append(d.Endpoints.StaticEndpointConfigs, &adminv3.EndpointsConfigDump_StaticEndpointConfig{EndpointConfig: mustAny(la), LastUpdated: updated})
		}
	}

	dumps := []proto.Message{
		&adminv3.BootstrapConfigDump{Bootstrap: b, LastUpdated: updated},
		d.Clusters, d.Listeners, d.Routes, d.Secrets,
	}
	if includeEDS {
		dumps = append(dumps, d.Endpoints)
	}
	if nameRE != nil {
		for _, m := range dumps[1:] {
			filterByName(m.ProtoReflect(), nameRE)
		}
	}

	cd := &adminv3.ConfigDump{}
	if resource == "" {
		for _, m := range dumps {
			cd.Configs = append(cd.Configs, mustAny(m))
		}
	} else {
		found := false
		for _, m := range dumps {
			fd := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(resource))
			if fd == nil || !fd.IsList() || fd.Message() == nil {
				continue
			}
			found = true
			l := m.ProtoReflect().Get(fd).List()
			for i := 0; i < l.Len(); i++ {
				cd.Configs = append(cd.Configs, mustAny(l.Get(i).Message().Interface()))
			}
		}
		if !found {
			return nil, status.Errorf(codes.InvalidArgument, "resource %q: no config dump has a repeated field of that name (try dynamic_listeners, static_clusters, dynamic_active_clusters, dynamic_route_configs, ...)", resource)
		}
	}
	Redact(cd)
	return cd, nil
}

// mustAny packs m into a new Any (a copy: redacting the Any leaves m alone).
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		// Only invalid UTF-8 in a string field makes Marshal fail, and every
		// message here was decoded or built by protobuf code that rejects it.
		panic(fmt.Sprintf("admin: packing %s: %v", m.ProtoReflect().Descriptor().FullName(), err))
	}
	return a
}

// inlineRouteConfigs returns the route configurations written inline in the
// HTTP connection managers of a listener, which Envoy dumps as static route
// configs.
func inlineRouteConfigs(l *listenerv3.Listener) []*anypb.Any {
	var out []*anypb.Any
	chains := l.GetFilterChains()
	if dc := l.GetDefaultFilterChain(); dc != nil {
		chains = append(chains[:len(chains):len(chains)], dc)
	}
	for _, ch := range chains {
		for _, f := range ch.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil || !tc.MessageIs(&hcmv3.HttpConnectionManager{}) {
				continue
			}
			hcm := &hcmv3.HttpConnectionManager{}
			if tc.UnmarshalTo(hcm) != nil {
				continue
			}
			if rc := hcm.GetRouteConfig(); rc != nil {
				out = append(out, mustAny(rc))
			}
		}
	}
	return out
}

// filterByName keeps, in every repeated message field of a dump, only the
// entries whose resource name matches re.
func filterByName(m protoreflect.Message, re *regexp.Regexp) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !fd.IsList() || fd.Message() == nil || !m.Has(fd) {
			continue
		}
		l := m.Mutable(fd).List()
		n := 0
		for j := 0; j < l.Len(); j++ {
			if v := l.Get(j); re.MatchString(entryName(v.Message())) {
				l.Set(n, v)
				n++
			}
		}
		l.Truncate(n)
	}
}

// entryName is the name of the resource a config dump entry is about: its own
// name field, else the name (or, for endpoints, the cluster_name) of the
// resource packed in its first set Any field.
func entryName(m protoreflect.Message) string {
	fields := m.Descriptor().Fields()
	if fd := fields.ByName("name"); fd != nil && fd.Kind() == protoreflect.StringKind {
		if n := m.Get(fd).String(); n != "" {
			return n
		}
	}
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil || fd.IsList() || fd.Message().FullName() != "google.protobuf.Any" || !m.Has(fd) {
			continue
		}
		a, ok := m.Get(fd).Message().Interface().(*anypb.Any)
		if !ok {
			continue
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			continue
		}
		ifs := inner.ProtoReflect().Descriptor().Fields()
		for _, name := range []protoreflect.Name{"name", "cluster_name"} {
			if fd := ifs.ByName(name); fd != nil && fd.Kind() == protoreflect.StringKind {
				return inner.ProtoReflect().Get(fd).String()
			}
		}
	}
	return ""
}
