package controlplane

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// versionLen is how many hex digits of a SHA-256 make a version.
const versionLen = 16

// snapshot turns s into what the cache serves. Each type's version_info is a hash
// of that type's resources, so a change to one type pushes nothing new of the
// others; the returned version, a hash of all of them, names the whole set.
func (s set) snapshot() (*cachev3.Snapshot, string, error) {
	snap := new(cachev3.Snapshot)
	all := sha256.New()
	for i, url := range typeURLs() {
		h := sha256.New()
		items := make(map[string]types.ResourceWithTTL, len(s[url]))
		for _, e := range s[url] {
			b, err := cachev3.MarshalResource(e.res)
			if err != nil {
				return nil, "", fmt.Errorf("%s %q: %w", shortName(url), e.name, err)
			}
			writeField(h, []byte(e.name))
			writeField(h, b)
			items[e.name] = types.ResourceWithTTL{Resource: e.res}
		}
		v := hex.EncodeToString(h.Sum(nil))[:versionLen]
		snap.Resources[i] = cachev3.Resources{Version: v, Items: items}
		writeField(all, []byte(url))
		writeField(all, []byte(v))
	}
	return snap, hex.EncodeToString(all.Sum(nil))[:versionLen], nil
}

// writeField writes b with its length, so that no two sequences of fields hash alike.
func writeField(h hash.Hash, b []byte) {
	h.Write(binary.AppendUvarint(nil, uint64(len(b))))
	h.Write(b)
}

// counts returns the number of resources of each type present, as slog attributes'
// keys and values ("Listener", 2, ...).
func (s set) counts() []any {
	var kv []any
	for _, url := range typeURLs() {
		if n := len(s[url]); n > 0 {
			kv = append(kv, shortName(url), n)
		}
	}
	return kv
}

// A warning is a reference between resources that the set cannot satisfy. A
// client waits for the missing resource (or, for a cluster named in a route,
// fails the requests that go to it), so the set is served anyway.
type warning struct {
	from  entry  // the resource with the reference
	field string // the field holding it, relative to the resource
	msg   string
}

// check finds references to resources that are not in the set: the
// ClusterLoadAssignment of an EDS cluster, the RouteConfiguration an
// http_connection_manager gets over RDS, and the clusters named by tcp_proxy
// filters and routes.
func (s set) check(r resolver) []warning {
	have := func(url resource.Type) map[string]bool {
		m := make(map[string]bool, len(s[url]))
		for _, e := range s[url] {
			m[e.name] = true
		}
		return m
	}
	clusters, endpoints, routes := have(resource.ClusterType), have(resource.EndpointType), have(resource.RouteType)
	var ws []warning
	warn := func(e entry, field, format string, args ...any) {
		ws = append(ws, warning{from: e, field: field, msg: fmt.Sprintf(format, args...)})
	}
	cluster := func(e entry, field, name string) {
		if name != "" && !clusters[name] {
			warn(e, field, "no Cluster %q is served", name)
		}
	}
	routeConfig := func(e entry, at string, rc *routev3.RouteConfiguration) {
		for i, vh := range rc.GetVirtualHosts() {
			for j, rt := range vh.GetRoutes() {
				p := cfgerr.Join(at, fmt.Sprintf("virtual_hosts[%d].routes[%d].route", i, j))
				cluster(e, cfgerr.Join(p, "cluster"), rt.GetRoute().GetCluster())
				for k, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
					cluster(e, cfgerr.Join(p, fmt.Sprintf("weighted_clusters.clusters[%d].name", k)), wc.GetName())
				}
			}
		}
	}

	for _, e := range s[resource.ClusterType] {
		c := e.res.(*clusterv3.Cluster)
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		name, field := c.GetEdsClusterConfig().GetServiceName(), "eds_cluster_config.service_name"
		if name == "" {
			name, field = c.GetName(), "name"
		}
		if !endpoints[name] {
			warn(e, field, "cluster of type EDS, and no ClusterLoadAssignment %q is served", name)
		}
	}
	for _, e := range s[resource.RouteType] {
		routeConfig(e, "", e.res.(*routev3.RouteConfiguration))
	}
	for _, e := range s[resource.ListenerType] {
		l := e.res.(*listenerv3.Listener)
		chains := l.GetFilterChains()
		if dc := l.GetDefaultFilterChain(); dc != nil {
			chains = append(chains[:len(chains):len(chains)], dc)
		}
		for i, fc := range chains {
			at := fmt.Sprintf("filter_chains[%d]", i)
			if i == len(l.GetFilterChains()) {
				at = "default_filter_chain"
			}
			for j, f := range fc.GetFilters() {
				p := fmt.Sprintf("%s.filters[%d].typed_config", at, j)
				switch cfg := unpackKnown(f.GetTypedConfig(), r).(type) {
				case *hcmv3.HttpConnectionManager:
					if rds := cfg.GetRds(); rds != nil && !routes[rds.GetRouteConfigName()] {
						warn(e, p+".rds.route_config_name", "no RouteConfiguration %q is served", rds.GetRouteConfigName())
					}
					routeConfig(e, p+".route_config", cfg.GetRouteConfig())
				case *tcpproxyv3.TcpProxy:
					cluster(e, p+".cluster", cfg.GetCluster())
					for k, wc := range cfg.GetWeightedClusters().GetClusters() {
						cluster(e, fmt.Sprintf("%s.weighted_clusters.clusters[%d].name", p, k), wc.GetName())
					}
				}
			}
		}
	}
	return ws
}

// unpackKnown unpacks a, or returns nil.
func unpackKnown(a *anypb.Any, r resolver) proto.Message {
	if a == nil {
		return nil
	}
	m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{Resolver: r})
	if err != nil {
		return nil
	}
	return m
}
