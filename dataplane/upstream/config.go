// Package upstream holds skiff's clusters: the sets of upstream hosts that filters
// connect to, with their load balancing and connection settings, and the Manager
// that owns them and applies updates in place.
package upstream

import (
	"fmt"
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// DefaultConnectTimeout is Envoy's default for Cluster.connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// Config is a validated cluster definition. It is immutable and built without
// side effects, so a whole configuration can be checked before any of it is
// applied.
type Config struct {
	Name string
	// StatName is the name used in stat names: alt_stat_name if set, else Name.
	StatName       string
	ConnectTimeout time.Duration
	LBPolicy       clusterv3.Cluster_LbPolicy
	// Keepalive configures TCP keepalive on upstream connections (nil: system default).
	Keepalive *Keepalive
	// Endpoints is the cluster's load assignment (STATIC clusters).
	Endpoints []Endpoint
	// EDS is set for clusters whose endpoints come from EDS.
	EDS *EDSConfig
	// HTTP2 says the cluster's hosts speak HTTP/2 (http2_protocol_options or
	// an HttpProtocolOptions extension asking for it), as gRPC servers need.
	HTTP2 bool

	proto *clusterv3.Cluster
}

// EDSConfig says where a cluster's endpoints come from.
type EDSConfig struct {
	// ServiceName is the ClusterLoadAssignment's name: eds_cluster_config's
	// service_name, or the cluster's name.
	ServiceName string
	// Source is eds_cluster_config.eds_config.
	Source *corev3.ConfigSource
}

// Proto returns the cluster resource the Config was built from.
func (c *Config) Proto() *clusterv3.Cluster { return c.proto }

// Keepalive is TCP keepalive for upstream connections (Envoy's
// upstream_connection_options.tcp_keepalive). Zero fields keep the system default.
type Keepalive struct {
	Probes   int
	Idle     time.Duration
	Interval time.Duration
}

// Endpoint is one upstream host of a load assignment.
type Endpoint struct {
	Addr     netip.AddrPort
	Weight   uint32 // load_balancing_weight, 1 when unset
	Priority uint32
	Health   corev3.HealthStatus
	Hostname string
}

// NewConfig validates a Cluster resource and returns its Config. Errors name the
// offending field relative to the cluster.
func NewConfig(pb *clusterv3.Cluster) (*Config, error) {
	if err := cfgerr.OnlyFields(pb,
		"name", "alt_stat_name", "type", "connect_timeout", "lb_policy", "load_assignment",
		"per_connection_buffer_limit_bytes", "upstream_connection_options", "metadata",
		"common_lb_config", "round_robin_lb_config", "dns_lookup_family", "eds_cluster_config",
		"http2_protocol_options", "typed_extension_protocol_options",
	); err != nil {
		return nil, err
	}
	if err := cfgerr.Validate(pb); err != nil {
		return nil, err
	}
	if pb.GetName() == "" {
		return nil, cfgerr.Errorf("name", "must not be empty")
	}
	c := &Config{
		Name:           pb.GetName(),
		StatName:       pb.GetName(),
		ConnectTimeout: DefaultConnectTimeout,
		LBPolicy:       pb.GetLbPolicy(),
		proto:          pb,
	}
	if pb.GetAltStatName() != "" {
		c.StatName = pb.GetAltStatName()
	}
	if pb.ConnectTimeout != nil {
		c.ConnectTimeout = pb.GetConnectTimeout().AsDuration()
		if c.ConnectTimeout <= 0 {
			return nil, cfgerr.Errorf("connect_timeout", "must be greater than zero")
		}
	}
	switch c.LBPolicy {
	case clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_RANDOM:
	default:
		return nil, cfgerr.Errorf("lb_policy", "%s is not supported by skiff yet (ROUND_ROBIN, RANDOM are)", c.LBPolicy)
	}
	if err := checkCommonLB(pb.GetCommonLbConfig()); err != nil {
		return nil, cfgerr.Field("common_lb_config", err)
	}
	if err := cfgerr.OnlyFields(pb.GetRoundRobinLbConfig()); err != nil {
		return nil, cfgerr.Field("round_robin_lb_config", err)
	}
	if ka := pb.GetUpstreamConnectionOptions(); ka != nil {
		if err := cfgerr.OnlyFields(ka, "tcp_keepalive"); err != nil {
			return nil, cfgerr.Field("upstream_connection_options", err)
		}
		if tk := ka.GetTcpKeepalive(); tk != nil {
			c.Keepalive = &Keepalive{
				Probes:   int(tk.GetKeepaliveProbes().GetValue()),
				Idle:     time.Duration(tk.GetKeepaliveTime().GetValue()) * time.Second,
				Interval: time.Duration(tk.GetKeepaliveInterval().GetValue()) * time.Second,
			}
		}
	}
	if err := c.protocolOptions(pb); err != nil {
		return nil, err
	}
	switch pb.GetType() {
	case clusterv3.Cluster_STATIC:
		if pb.GetLoadAssignment() == nil {
			return nil, cfgerr.Errorf("load_assignment", "a STATIC cluster needs a load_assignment")
		}
		if pb.GetEdsClusterConfig() != nil {
			return nil, cfgerr.Errorf("eds_cluster_config", "only EDS clusters take an eds_cluster_config")
		}
		eps, err := Endpoints(pb.GetLoadAssignment())
		if err != nil {
			return nil, cfgerr.Field("load_assignment", err)
		}
		c.Endpoints = eps
	case clusterv3.Cluster_EDS:
		ec := pb.GetEdsClusterConfig()
		if ec == nil || ec.GetEdsConfig() == nil {
			return nil, cfgerr.Errorf("eds_cluster_config.eds_config", "an EDS cluster needs the config source of its endpoints")
		}
		if pb.GetLoadAssignment() != nil {
			return nil, cfgerr.Errorf("load_assignment", "an EDS cluster takes its load assignment from EDS, not inline")
		}
		c.EDS = &EDSConfig{ServiceName: ec.GetServiceName(), Source: ec.GetEdsConfig()}
		if c.EDS.ServiceName == "" {
			c.EDS.ServiceName = c.Name
		}
	default:
		if pb.GetClusterType() != nil {
			return nil, cfgerr.Errorf("cluster_type", "custom cluster types are not supported by skiff")
		}
		return nil, cfgerr.Errorf("type", "%s clusters are not supported by skiff yet (STATIC and EDS are)", pb.GetType())
	}
	return c, nil
}

// httpProtocolOptionsName is the extension key of HttpProtocolOptions in
// typed_extension_protocol_options.
const httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// protocolOptions reads the HTTP protocol the cluster's hosts speak. The HTTP
// connection manager issue gives these options their full meaning; until then
// skiff records whether HTTP/2 is asked for (a gRPC control plane's cluster says
// so) and refuses what it cannot honour.
func (c *Config) protocolOptions(pb *clusterv3.Cluster) error {
	//lint:ignore SA1019 deprecated in Envoy but still accepted there, and bootstraps use it
	if pb.GetHttp2ProtocolOptions() != nil {
		c.HTTP2 = true
	}
	for name, a := range pb.GetTypedExtensionProtocolOptions() {
		path := fmt.Sprintf("typed_extension_protocol_options[%s]", name)
		if name != httpProtocolOptionsName && a.GetTypeUrl() != "type.googleapis.com/"+httpProtocolOptionsName {
			return cfgerr.Errorf(path, "only %s is supported", httpProtocolOptionsName)
		}
		var hpo httpv3.HttpProtocolOptions
		if err := a.UnmarshalTo(&hpo); err != nil {
			return cfgerr.Errorf(path, "decoding: %w", err)
		}
		if err := cfgerr.Validate(&hpo); err != nil {
			return cfgerr.Field(path, err)
		}
		if err := cfgerr.OnlyFields(&hpo, "explicit_http_config", "common_http_protocol_options"); err != nil {
			return cfgerr.Field(path, err)
		}
		if e := hpo.GetExplicitHttpConfig(); e != nil && e.GetHttp2ProtocolOptions() != nil {
			c.HTTP2 = true
		}
	}
	return nil
}

func checkCommonLB(cl *clusterv3.Cluster_CommonLbConfig) error {
	if cl == nil {
		return nil
	}
	// The healthy panic threshold only matters with health checking, which skiff
	// does not do yet; every host that is not marked unhealthy is used.
	return cfgerr.OnlyFields(cl, "healthy_panic_threshold")
}

// Endpoints flattens a ClusterLoadAssignment into Endpoints, checking every
// address. Only IP socket addresses are supported (hostnames need DNS clusters).
func Endpoints(cla *endpointv3.ClusterLoadAssignment) ([]Endpoint, error) {
	if err := cfgerr.OnlyFields(cla, "cluster_name", "endpoints", "policy"); err != nil {
		return nil, err
	}
	if p := cla.GetPolicy(); p != nil {
		// overprovisioning_factor and weighted_priority_health shape priority
		// spill-over, which skiff implements in its simplest form (see lb.go).
		if err := cfgerr.OnlyFields(p, "overprovisioning_factor", "weighted_priority_health"); err != nil {
			return nil, cfgerr.Field("policy", err)
		}
	}
	var out []Endpoint
	for i, lle := range cla.GetEndpoints() {
		for j, lbe := range lle.GetLbEndpoints() {
			path := fmt.Sprintf("endpoints[%d].lb_endpoints[%d]", i, j)
			ep, err := endpoint(lle, lbe)
			if err != nil {
				return nil, cfgerr.Field(path, err)
			}
			out = append(out, ep)
		}
	}
	return out, nil
}

func endpoint(lle *endpointv3.LocalityLbEndpoints, lbe *endpointv3.LbEndpoint) (Endpoint, error) {
	e := lbe.GetEndpoint()
	if e == nil {
		return Endpoint{}, cfgerr.Errorf("endpoint", "must be set (named endpoints are not supported)")
	}
	sa := e.GetAddress().GetSocketAddress()
	if sa == nil {
		return Endpoint{}, cfgerr.Errorf("endpoint.address", "only socket_address is supported")
	}
	ap, err := SocketAddr(sa)
	if err != nil {
		return Endpoint{}, cfgerr.Field("endpoint.address.socket_address", err)
	}
	w := lbe.GetLoadBalancingWeight().GetValue()
	if w == 0 {
		w = 1
	}
	return Endpoint{Addr: ap, Weight: w, Priority: lle.GetPriority(), Health: lbe.GetHealthStatus(), Hostname: e.GetHostname()}, nil
}

// SocketAddr converts an Envoy SocketAddress naming an IP and a port into an
// AddrPort. Named ports, resolvers and UDP are refused.
func SocketAddr(sa *corev3.SocketAddress) (netip.AddrPort, error) {
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return netip.AddrPort{}, cfgerr.Errorf("protocol", "only TCP is supported")
	}
	if sa.GetResolverName() != "" {
		return netip.AddrPort{}, cfgerr.Errorf("resolver_name", "custom resolvers are not supported")
	}
	if _, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_NamedPort); ok {
		return netip.AddrPort{}, cfgerr.Errorf("named_port", "named ports are not supported")
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, cfgerr.Errorf("address", "%q is not an IP address (hostnames need a STRICT_DNS or LOGICAL_DNS cluster)", sa.GetAddress())
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, cfgerr.Errorf("address", "%q: zoned addresses are not supported", sa.GetAddress())
	}
	if sa.GetPortValue() > 65535 {
		return netip.AddrPort{}, cfgerr.Errorf("port_value", "%d is not a port", sa.GetPortValue())
	}
	return netip.AddrPortFrom(ip, uint16(sa.GetPortValue())), nil
}
