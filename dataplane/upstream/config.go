// Package upstream holds skiff's clusters: the sets of upstream hosts that filters
// connect to, with their load balancing and connection settings, and the Manager
// that owns them and applies updates in place.
package upstream

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	dnsclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dns/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/tlscontext"
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
	// OriginalDst is set for ORIGINAL_DST clusters, whose hosts are the
	// destinations their connections and requests ask for.
	OriginalDst *OriginalDstConfig
	// Source is upstream_bind_config's source_address: the local address
	// upstream connections are bound to (port 0: any), or the zero AddrPort.
	Source netip.AddrPort
	// Endpoints is the cluster's load assignment (STATIC clusters), and
	// Load its policy (STATIC and DNS clusters).
	Endpoints []Endpoint
	Load      LoadPolicy
	// EDS is set for clusters whose endpoints come from EDS.
	EDS *EDSConfig
	// DNS is set for STRICT_DNS and LOGICAL_DNS clusters, whose endpoints
	// are the addresses their load_assignment's names resolve to.
	DNS *DNSConfig
	// HTTP2 says the cluster's hosts speak HTTP/2 (http2_protocol_options or
	// an HttpProtocolOptions extension asking for it), as gRPC servers need.
	HTTP2 bool
	// DownstreamProtocol is use_downstream_protocol_config: a request goes
	// upstream in its own protocol, HTTP/2 or HTTP/1.1 (HTTP2 is the
	// protocol of what has no downstream: health checks, tunnels).
	DownstreamProtocol bool
	// HTTP are the cluster's HTTP connection pool settings (HttpProtocolOptions).
	HTTP HTTPOptions
	// Limits are the circuit breakers' thresholds (circuit_breakers, default
	// priority).
	Limits Limits
	// Filters are the cluster's upstream network filters (filters), run on
	// each new connection.
	Filters []ConnFilter
	// ChoiceCount is least_request_lb_config.choice_count (LEAST_REQUEST).
	ChoiceCount int
	// Hashing is the consistent hashing of RING_HASH and MAGLEV.
	Hashing Hashing
	// PanicThreshold is common_lb_config.healthy_panic_threshold, in percent
	// (Envoy's default 50): with fewer hosts than that healthy, the load
	// balancer uses them all.
	PanicThreshold float64
	// LocalityWeighted is common_lb_config.locality_weighted_lb_config:
	// localities share the traffic by their weights (see byLocality; not
	// for RING_HASH and MAGLEV, which place requests by host).
	LocalityWeighted bool
	// Outlier is outlier_detection, nil if the cluster has none.
	Outlier *OutlierConfig
	// HealthCheck is health_checks (active health checking), nil if the
	// cluster has none.
	HealthCheck *HealthCheckConfig

	transport *Transport   // transport_socket (raw_buffer by default)
	matches   []*Transport // transport_socket_matches
	proto     *clusterv3.Cluster
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
	Addr netip.AddrPort
	// Pipe is the path of the unix socket of an endpoint with a pipe
	// address (Addr is then the zero AddrPort).
	Pipe     string
	Weight   uint32 // load_balancing_weight, 1 when unset
	Priority uint32
	Health   corev3.HealthStatus
	Hostname string
	// Locality is the endpoint's locality ("region/zone/sub_zone") and
	// LocalityWeight the locality's load_balancing_weight (0: none), for
	// locality weighted load balancing.
	Locality       string
	LocalityWeight uint32
	// TransportMatch and LocalityTransportMatch are the endpoint's and its
	// locality's envoy.transport_socket_match metadata (nil if none), which
	// the cluster's transport_socket_matches select a transport with.
	TransportMatch, LocalityTransportMatch *structpb.Struct
}

// Options are what NewConfigWith needs beyond the Cluster itself.
type Options struct {
	// Filters builds an entry of the cluster's filters. Nil: a cluster with
	// filters is refused.
	Filters FilterBuilder
	// Resolver is the resolver of DNS clusters that set none of their own
	// (the bootstrap's; see BootstrapResolver). Nil: the system's.
	Resolver *Resolver
	// Secrets are the static secrets TLS transport sockets may name.
	Secrets tlscontext.Secrets
}

// NewConfig validates a Cluster resource and returns its Config. Errors name the
// offending field relative to the cluster.
func NewConfig(pb *clusterv3.Cluster) (*Config, error) {
	return NewConfigWith(pb, Options{})
}

// NewConfigWith is NewConfig with the cluster's filters built by opts.Filters.
func NewConfigWith(pb *clusterv3.Cluster, opts Options) (*Config, error) {
	if err := cfgerr.OnlyFields(pb,
		"name", "alt_stat_name", "type", "connect_timeout", "lb_policy", "load_assignment",
		"per_connection_buffer_limit_bytes", "upstream_connection_options", "metadata",
		"common_lb_config", "round_robin_lb_config", "least_request_lb_config", "ring_hash_lb_config",
		"maglev_lb_config", "dns_lookup_family",
		"eds_cluster_config", "http2_protocol_options", "typed_extension_protocol_options", "circuit_breakers",
		"transport_socket", "transport_socket_matches", "filters", "outlier_detection",
		"health_checks", "dns_refresh_rate", "dns_failure_refresh_rate", "dns_jitter", "respect_dns_ttl",
		"dns_resolvers", "use_tcp_for_dns_lookups", "dns_resolution_config", "typed_dns_resolver_config",
		"wait_for_warm_on_init", "cluster_type", "load_balancing_policy",
		"common_http_protocol_options", "http_protocol_options", "max_requests_per_connection",
		"upstream_bind_config", "cleanup_interval", "original_dst_lb_config",
	); err != nil {
		return nil, err
	}
	if err := cfgerr.Validate(pb); err != nil {
		return nil, err
	}
	src := pb
	if pb.GetLoadBalancingPolicy() != nil {
		var err error
		if pb, err = withLoadBalancingPolicy(pb); err != nil {
			return nil, err
		}
	}
	if pb.GetName() == "" {
		return nil, cfgerr.Errorf("name", "must not be empty")
	}
	c := &Config{
		Name:           pb.GetName(),
		StatName:       pb.GetName(),
		ConnectTimeout: DefaultConnectTimeout,
		LBPolicy:       pb.GetLbPolicy(),
		PanicThreshold: 50,
		proto:          src,
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
	case clusterv3.Cluster_LEAST_REQUEST:
		c.ChoiceCount = 2 // Envoy's default
	case clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV:
	case clusterv3.Cluster_CLUSTER_PROVIDED:
		if pb.GetType() != clusterv3.Cluster_ORIGINAL_DST {
			return nil, cfgerr.Errorf("lb_policy", "CLUSTER_PROVIDED is only for ORIGINAL_DST clusters")
		}
	default:
		return nil, cfgerr.Errorf("lb_policy", "%s is not supported by skiff yet (ROUND_ROBIN, RANDOM, LEAST_REQUEST, RING_HASH, MAGLEV, and CLUSTER_PROVIDED for ORIGINAL_DST, are)", c.LBPolicy)
	}
	if err := c.Hashing.compile(pb); err != nil {
		return nil, err
	}
	if lr := pb.GetLeastRequestLbConfig(); lr != nil {
		// active_request_bias and slow start shape weighted hosts, which
		// skiff's least request does not do yet.
		if err := cfgerr.OnlyFields(lr, "choice_count"); err != nil {
			return nil, cfgerr.Field("least_request_lb_config", err)
		}
		if c.LBPolicy != clusterv3.Cluster_LEAST_REQUEST {
			return nil, cfgerr.Errorf("least_request_lb_config", "only for lb_policy LEAST_REQUEST")
		}
		if v := lr.GetChoiceCount(); v != nil {
			c.ChoiceCount = int(v.GetValue())
		}
	}
	if err := c.transportSockets(pb, opts.Secrets); err != nil {
		return nil, err
	}
	for i, f := range pb.GetFilters() {
		if opts.Filters == nil {
			return nil, cfgerr.Errorf(fmt.Sprintf("filters[%d]", i), "upstream network filters need a filter registry")
		}
		if err := cfgerr.OnlyFields(f, "name", "typed_config"); err != nil {
			return nil, cfgerr.Index("filters", i, err)
		}
		cf, err := opts.Filters(f)
		if err != nil {
			return nil, cfgerr.Index("filters", i, err)
		}
		c.Filters = append(c.Filters, cf)
	}
	if cl := pb.GetCommonLbConfig(); cl != nil {
		if err := cfgerr.OnlyFields(cl, "healthy_panic_threshold", "consistent_hashing_lb_config", "locality_weighted_lb_config"); err != nil {
			return nil, cfgerr.Field("common_lb_config", err)
		}
		c.LocalityWeighted = cl.GetLocalityWeightedLbConfig() != nil
		if t := cl.GetHealthyPanicThreshold(); t != nil {
			c.PanicThreshold = t.GetValue()
		}
	}
	if od := pb.GetOutlierDetection(); od != nil {
		oc, err := newOutlierConfig(od)
		if err != nil {
			return nil, cfgerr.Field("outlier_detection", err)
		}
		c.Outlier = oc
	}
	if hcs := pb.GetHealthChecks(); len(hcs) > 0 {
		hc, err := newHealthCheckConfig(hcs)
		if err != nil {
			return nil, err
		}
		c.HealthCheck = hc
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
	if bc := pb.GetUpstreamBindConfig(); bc != nil {
		if err := cfgerr.OnlyFields(bc, "source_address"); err != nil {
			return nil, cfgerr.Field("upstream_bind_config", err)
		}
		var err error
		if c.Source, err = SocketAddr(bc.GetSourceAddress()); err != nil {
			return nil, cfgerr.Field("upstream_bind_config.source_address", err)
		}
	}
	if err := c.protocolOptions(pb); err != nil {
		return nil, err
	}
	if err := c.circuitBreakers(pb.GetCircuitBreakers()); err != nil {
		return nil, cfgerr.Field("circuit_breakers", err)
	}
	if ct := pb.GetClusterType(); ct != nil {
		// The oneof with type: the extension's type decides.
		if err := c.clusterType(pb, ct, opts.Resolver); err != nil {
			return nil, err
		}
		return c, nil
	}
	switch pb.GetType() {
	case clusterv3.Cluster_STATIC:
		// Without a load_assignment the cluster has no hosts, as in Envoy
		// (istiod's BlackHoleCluster): requests get 503, connections close.
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
	case clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		if pb.GetEdsClusterConfig() != nil {
			return nil, cfgerr.Errorf("eds_cluster_config", "only EDS clusters take an eds_cluster_config")
		}
		var err error
		if c.DNS, err = dnsConfig(pb, legacyDNSCluster(pb), "", opts.Resolver); err != nil {
			return nil, err
		}
	case clusterv3.Cluster_ORIGINAL_DST:
		var err error
		if c.OriginalDst, err = originalDstConfig(pb); err != nil {
			return nil, err
		}
	default:
		return nil, cfgerr.Errorf("type", "%s clusters are not supported by skiff yet (STATIC, STRICT_DNS, LOGICAL_DNS, EDS and ORIGINAL_DST are)", pb.GetType())
	}
	if pb.GetType() != clusterv3.Cluster_ORIGINAL_DST {
		if pb.CleanupInterval != nil {
			return nil, cfgerr.Errorf("cleanup_interval", "only for ORIGINAL_DST clusters")
		}
		if pb.GetOriginalDstLbConfig() != nil {
			return nil, cfgerr.Errorf("original_dst_lb_config", "only for ORIGINAL_DST clusters")
		}
	}
	c.Load = PolicyOf(pb.GetLoadAssignment())
	return c, nil
}

// UpstreamHTTP2 reports whether a request that came in downstream (its
// protocol: "HTTP/1.1", "HTTP/2", ...) goes to the cluster's hosts over
// HTTP/2: the downstream's protocol with use_downstream_protocol_config,
// else the cluster's.
func (c *Config) UpstreamHTTP2(downstream string) bool {
	if c.DownstreamProtocol {
		return downstream == "HTTP/2"
	}
	return c.HTTP2
}

// clusterType reads a cluster_type extension: envoy.cluster.dns (DnsCluster)
// is skiff's one.
func (c *Config) clusterType(pb *clusterv3.Cluster, ct *clusterv3.Cluster_CustomClusterType, def *Resolver) error {
	if err := cfgerr.OnlyFields(ct, "name", "typed_config"); err != nil {
		return cfgerr.Field("cluster_type", err)
	}
	m, err := ct.GetTypedConfig().UnmarshalNew()
	if err != nil {
		return cfgerr.Errorf("cluster_type.typed_config", "%v", err)
	}
	dc, ok := m.(*dnsclusterv3.DnsCluster)
	if !ok {
		return cfgerr.Errorf("cluster_type", "cluster type %s (%s) is not supported by skiff (DnsCluster is)", ct.GetName(), ct.GetTypedConfig().GetTypeUrl())
	}
	if err := cfgerr.Validate(dc); err != nil {
		return cfgerr.Field("cluster_type.typed_config", err)
	}
	if pb.GetEdsClusterConfig() != nil {
		return cfgerr.Errorf("eds_cluster_config", "only EDS clusters take an eds_cluster_config")
	}
	c.DNS, err = dnsConfig(pb, dc, "cluster_type.typed_config", def)
	return err
}

// httpProtocolOptionsName is the extension key of HttpProtocolOptions in
// typed_extension_protocol_options.
const httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// protocolOptions reads the HTTP protocol the cluster's hosts speak and the
// settings of its HTTP connection pools, refusing what skiff cannot honour.
func (c *Config) protocolOptions(pb *clusterv3.Cluster) error {
	//lint:ignore SA1019 deprecated in Envoy but still accepted there, and bootstraps use it
	if h2 := pb.GetHttp2ProtocolOptions(); h2 != nil {
		c.HTTP2 = true
		if err := c.HTTP.http2Options(h2); err != nil {
			return cfgerr.Field("http2_protocol_options", err)
		}
	}
	if err := c.deprecatedHTTPOptions(pb); err != nil {
		return err
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
		if err := cfgerr.OnlyFields(&hpo, "explicit_http_config", "use_downstream_protocol_config", "common_http_protocol_options", "upstream_http_protocol_options"); err != nil {
			return cfgerr.Field(path, err)
		}
		if u := hpo.GetUpstreamHttpProtocolOptions(); u != nil {
			if err := cfgerr.OnlyFields(u, "auto_sni", "auto_san_validation", "override_auto_sni_header"); err != nil {
				return cfgerr.Field(path+".upstream_http_protocol_options", err)
			}
			c.HTTP.AutoSNI, c.HTTP.AutoSANValidation = u.GetAutoSni(), u.GetAutoSanValidation()
			c.HTTP.AutoSNIHeader = strings.ToLower(u.GetOverrideAutoSniHeader())
		}
		if e := hpo.GetExplicitHttpConfig(); e != nil {
			switch {
			case e.GetHttp2ProtocolOptions() != nil:
				c.HTTP2 = true
				if err := c.HTTP.http2Options(e.GetHttp2ProtocolOptions()); err != nil {
					return cfgerr.Field(path+".explicit_http_config.http2_protocol_options", err)
				}
			case e.GetHttpProtocolOptions() != nil:
				if err := c.HTTP.http1Options(e.GetHttpProtocolOptions()); err != nil {
					return cfgerr.Field(path+".explicit_http_config.http_protocol_options", err)
				}
			default:
				return cfgerr.Errorf(path+".explicit_http_config", "only http_protocol_options and http2_protocol_options are supported (not HTTP/3)")
			}
		}
		if d := hpo.GetUseDownstreamProtocolConfig(); d != nil {
			if err := cfgerr.OnlyFields(d, "http_protocol_options", "http2_protocol_options"); err != nil {
				return cfgerr.Field(path+".use_downstream_protocol_config", err)
			}
			c.DownstreamProtocol = true
			if o := d.GetHttp2ProtocolOptions(); o != nil {
				if err := c.HTTP.http2Options(o); err != nil {
					return cfgerr.Field(path+".use_downstream_protocol_config.http2_protocol_options", err)
				}
			}
			if o := d.GetHttpProtocolOptions(); o != nil {
				if err := c.HTTP.http1Options(o); err != nil {
					return cfgerr.Field(path+".use_downstream_protocol_config.http_protocol_options", err)
				}
			}
		}
		if co := hpo.GetCommonHttpProtocolOptions(); co != nil {
			if err := c.HTTP.common(co); err != nil {
				return cfgerr.Field(path+".common_http_protocol_options", err)
			}
		}
	}
	return nil
}

// deprecatedHTTPOptions reads the cluster-level HTTP settings that
// HttpProtocolOptions replaced (common_http_protocol_options,
// http_protocol_options, max_requests_per_connection), which older Envoy
// configurations still carry. The first two do not mix with an
// HttpProtocolOptions extension (Envoy ignores them then; skiff says so).
// max_requests_per_connection does, as in Envoy (istio-agent's bootstrap
// sets it on xds-grpc), unless the extension sets it too.
func (c *Config) deprecatedHTTPOptions(pb *clusterv3.Cluster) error {
	//lint:ignore SA1019 deprecated in Envoy for HttpProtocolOptions, still honoured there
	common, h1, maxRequests := pb.GetCommonHttpProtocolOptions(), pb.GetHttpProtocolOptions(), pb.GetMaxRequestsPerConnection()
	ext, hasExt := pb.GetTypedExtensionProtocolOptions()[httpProtocolOptionsName]
	var field string
	switch {
	case common != nil:
		field = "common_http_protocol_options"
	case h1 != nil:
		field = "http_protocol_options"
	}
	if field != "" && hasExt {
		return cfgerr.Errorf(field, "is deprecated and cannot be combined with typed_extension_protocol_options[%s]; set it there", httpProtocolOptionsName)
	}
	if maxRequests != nil && hasExt {
		var hpo httpv3.HttpProtocolOptions
		if ext.UnmarshalTo(&hpo) == nil && hpo.GetCommonHttpProtocolOptions().GetMaxRequestsPerConnection() != nil {
			return cfgerr.Errorf("max_requests_per_connection", "only one of max_requests_per_connection from Cluster or HttpProtocolOptions can be specified (as in Envoy)")
		}
	}
	if common != nil {
		if err := c.HTTP.common(common); err != nil {
			return cfgerr.Field("common_http_protocol_options", err)
		}
	}
	if h1 != nil {
		if err := c.HTTP.http1Options(h1); err != nil {
			return cfgerr.Field("http_protocol_options", err)
		}
	}
	if maxRequests != nil {
		c.HTTP.MaxRequestsPerConnection = maxRequests.GetValue()
	}
	return nil
}

// Envoy's defaults for upstream HTTP connection pools and circuit breakers.
const (
	DefaultUpstreamIdleTimeout = time.Hour
	DefaultCircuitBreakerLimit = 1024 // max_connections, max_pending_requests, max_requests
	DefaultMaxRetries          = 3
)

// HTTPOptions are the settings of a cluster's HTTP connection pools
// (HttpProtocolOptions). Zero values take Envoy's defaults.
type HTTPOptions struct {
	// IdleTimeout closes an upstream connection that carried no request for
	// this long (common_http_protocol_options.idle_timeout; 1 h by default, as
	// in Envoy; negative disables it).
	IdleTimeout time.Duration
	// MaxConnectionDuration closes a connection this long after it was made,
	// once it is idle (0: no limit).
	MaxConnectionDuration time.Duration
	// MaxRequestsPerConnection closes a connection after it carried this many
	// requests (0: no limit).
	MaxRequestsPerConnection uint32
	// MaxHeadersCount limits the fields of a response head (0: 100).
	MaxHeadersCount uint32
	// EnableTrailers keeps the trailers of HTTP/1.1 chunked bodies
	// (http_protocol_options.enable_trailers); without it they are dropped,
	// as Envoy drops them.
	EnableTrailers bool
	// HTTP/2: SETTINGS and windows (0: the codec's defaults, Envoy's).
	MaxConcurrentStreams        uint32
	InitialStreamWindowSize     uint32
	InitialConnectionWindowSize uint32
	// AutoSNI (upstream_http_protocol_options.auto_sni): a request's TLS
	// connection sends the request's host (its :authority, or the
	// AutoSNIHeader header, without the port) as SNI; AutoSANValidation
	// (auto_san_validation) checks the server's certificate for that name.
	AutoSNI, AutoSANValidation bool
	AutoSNIHeader              string // override_auto_sni_header, lower case ("" for :authority)
}

// Idle returns the idle timeout to apply (0: none).
func (o *HTTPOptions) Idle() time.Duration {
	switch {
	case o.IdleTimeout < 0:
		return 0
	case o.IdleTimeout == 0:
		return DefaultUpstreamIdleTimeout
	}
	return o.IdleTimeout
}

func (o *HTTPOptions) common(co *corev3.HttpProtocolOptions) error {
	if err := cfgerr.OnlyFields(co, "idle_timeout", "max_connection_duration", "max_headers_count", "max_requests_per_connection"); err != nil {
		return err
	}
	// Negative durations are errors, as Envoy's
	// DurationUtil::durationToMilliseconds has them ("Expected positive
	// duration").
	if d := co.GetIdleTimeout(); d != nil {
		o.IdleTimeout = d.AsDuration()
		switch {
		case o.IdleTimeout < 0:
			return cfgerr.Errorf("idle_timeout", "must not be negative, got %v", o.IdleTimeout)
		case o.IdleTimeout == 0:
			o.IdleTimeout = -1 // 0s disables it, as in Envoy
		}
	}
	if d := co.GetMaxConnectionDuration(); d != nil {
		if o.MaxConnectionDuration = d.AsDuration(); o.MaxConnectionDuration < 0 {
			return cfgerr.Errorf("max_connection_duration", "must not be negative, got %v", o.MaxConnectionDuration)
		}
	}
	if v := co.GetMaxHeadersCount(); v != nil {
		o.MaxHeadersCount = v.GetValue()
	}
	if v := co.GetMaxRequestsPerConnection(); v != nil {
		o.MaxRequestsPerConnection = v.GetValue()
	}
	return nil
}

func (o *HTTPOptions) http1Options(h1 *corev3.Http1ProtocolOptions) error {
	if err := cfgerr.OnlyFields(h1, "enable_trailers"); err != nil {
		return err
	}
	o.EnableTrailers = h1.GetEnableTrailers()
	return nil
}

func (o *HTTPOptions) http2Options(h2 *corev3.Http2ProtocolOptions) error {
	// hpack_table_size and the flood limits are the codec's own, fixed.
	if err := cfgerr.OnlyFields(h2, "max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"); err != nil {
		return err
	}
	o.MaxConcurrentStreams = h2.GetMaxConcurrentStreams().GetValue()
	o.InitialStreamWindowSize = h2.GetInitialStreamWindowSize().GetValue()
	o.InitialConnectionWindowSize = h2.GetInitialConnectionWindowSize().GetValue()
	return nil
}

// Limits are a cluster's circuit breakers (Envoy's default-priority
// thresholds). Zero values take Envoy's defaults; see the methods.
type Limits struct {
	MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries uint32
	MaxConnectionPools                                          uint32
	// TrackRemaining (track_remaining) publishes the room each limit
	// leaves: cluster.<name>.circuit_breakers.default.remaining_cx, ...
	TrackRemaining bool
	// set records which fields were configured (a configured 0 is 0).
	set uint8
}

const (
	setConnections = 1 << iota
	setPending
	setRequests
	setRetries
	setPools
)

// ConnectionPools is max_connection_pools, and false when it is not set
// (no limit, as in Envoy).
func (l Limits) ConnectionPools() (uint32, bool) {
	return l.MaxConnectionPools, l.set&setPools != 0
}

func (l Limits) get(v uint32, bit uint8, def uint32) uint32 {
	if l.set&bit != 0 {
		return v
	}
	return def
}

// Connections is max_connections (1024 by default).
func (l Limits) Connections() uint32 {
	return l.get(l.MaxConnections, setConnections, DefaultCircuitBreakerLimit)
}

// Pending is max_pending_requests (1024 by default).
func (l Limits) Pending() uint32 {
	return l.get(l.MaxPendingRequests, setPending, DefaultCircuitBreakerLimit)
}

// Requests is max_requests (1024 by default).
func (l Limits) Requests() uint32 {
	return l.get(l.MaxRequests, setRequests, DefaultCircuitBreakerLimit)
}

// Retries is max_retries (3 by default).
func (l Limits) Retries() uint32 { return l.get(l.MaxRetries, setRetries, DefaultMaxRetries) }

func (c *Config) circuitBreakers(cb *clusterv3.CircuitBreakers) error {
	if cb == nil {
		return nil
	}
	if err := cfgerr.OnlyFields(cb, "thresholds"); err != nil {
		return err
	}
	for i, t := range cb.GetThresholds() {
		if err := cfgerr.OnlyFields(t, "priority", "max_connections", "max_pending_requests", "max_requests", "max_retries",
			"max_connection_pools", "track_remaining"); err != nil {
			return cfgerr.Index("thresholds", i, err)
		}
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue // routes use the default priority only (skiff refuses others)
		}
		l := &c.Limits
		if v := t.GetMaxConnections(); v != nil {
			l.MaxConnections, l.set = v.GetValue(), l.set|setConnections
		}
		if v := t.GetMaxPendingRequests(); v != nil {
			l.MaxPendingRequests, l.set = v.GetValue(), l.set|setPending
		}
		if v := t.GetMaxRequests(); v != nil {
			l.MaxRequests, l.set = v.GetValue(), l.set|setRequests
		}
		if v := t.GetMaxRetries(); v != nil {
			l.MaxRetries, l.set = v.GetValue(), l.set|setRetries
		}
		if v := t.GetMaxConnectionPools(); v != nil {
			l.MaxConnectionPools, l.set = v.GetValue(), l.set|setPools
		}
		l.TrackRemaining = t.GetTrackRemaining()
	}
	return nil
}

// Endpoints flattens a ClusterLoadAssignment into Endpoints, checking every
// address. Only IP socket addresses are supported (hostnames need DNS clusters).
func Endpoints(cla *endpointv3.ClusterLoadAssignment) ([]Endpoint, error) {
	if err := cfgerr.OnlyFields(cla, "cluster_name", "endpoints", "policy"); err != nil {
		return nil, err
	}
	if p := cla.GetPolicy(); p != nil {
		// overprovisioning_factor and weighted_priority_health shape how
		// the priority levels share the traffic (PolicyOf, lb.go).
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
	if lbe.GetEndpoint() == nil {
		return Endpoint{}, cfgerr.Errorf("endpoint", "must be set (named endpoints are not supported)")
	}
	addr := lbe.GetEndpoint().GetAddress()
	if p := addr.GetPipe(); p != nil {
		if err := cfgerr.OnlyFields(p, "path", "mode"); err != nil {
			return Endpoint{}, cfgerr.Field("endpoint.address.pipe", err)
		}
		if p.GetPath() == "" {
			return Endpoint{}, cfgerr.Errorf("endpoint.address.pipe.path", "must not be empty")
		}
		ep := endpointTemplate(lle, lbe)
		ep.Pipe = p.GetPath()
		return ep, nil
	}
	sa := addr.GetSocketAddress()
	if sa == nil {
		return Endpoint{}, cfgerr.Errorf("endpoint.address", "only socket_address and pipe are supported")
	}
	ap, err := SocketAddr(sa)
	if err != nil {
		return Endpoint{}, cfgerr.Field("endpoint.address.socket_address", err)
	}
	ep := endpointTemplate(lle, lbe)
	ep.Addr = ap
	return ep, nil
}

// endpointTemplate is an lb_endpoint's Endpoint but for its address.
func endpointTemplate(lle *endpointv3.LocalityLbEndpoints, lbe *endpointv3.LbEndpoint) Endpoint {
	w := lbe.GetLoadBalancingWeight().GetValue()
	if w == 0 {
		w = 1
	}
	l := lle.GetLocality()
	return Endpoint{Weight: w, Priority: lle.GetPriority(), Health: lbe.GetHealthStatus(), Hostname: lbe.GetEndpoint().GetHostname(),
		Locality: l.GetRegion() + "/" + l.GetZone() + "/" + l.GetSubZone(), LocalityWeight: lle.GetLoadBalancingWeight().GetValue(),
		TransportMatch: transportMetadata(lbe.GetMetadata()), LocalityTransportMatch: transportMetadata(lle.GetMetadata())}
}

// checkSocketAddr refuses what skiff cannot connect to: named ports,
// custom resolvers, UDP, ports out of range.
func checkSocketAddr(sa *corev3.SocketAddress) error {
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return cfgerr.Errorf("protocol", "only TCP is supported")
	}
	if sa.GetResolverName() != "" {
		return cfgerr.Errorf("resolver_name", "custom resolvers are not supported")
	}
	if _, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_NamedPort); ok {
		return cfgerr.Errorf("named_port", "named ports are not supported")
	}
	if sa.GetPortValue() > 65535 {
		return cfgerr.Errorf("port_value", "%d is not a port", sa.GetPortValue())
	}
	return nil
}

// SocketAddr converts an Envoy SocketAddress naming an IP and a port into an
// AddrPort. Named ports, resolvers and UDP are refused.
func SocketAddr(sa *corev3.SocketAddress) (netip.AddrPort, error) {
	if err := checkSocketAddr(sa); err != nil {
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, cfgerr.Errorf("address", "%q is not an IP address (hostnames need a STRICT_DNS or LOGICAL_DNS cluster)", sa.GetAddress())
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, cfgerr.Errorf("address", "%q: zoned addresses are not supported", sa.GetAddress())
	}
	return netip.AddrPortFrom(ip, uint16(sa.GetPortValue())), nil
}
