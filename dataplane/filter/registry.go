package filter

import (
	"fmt"
	"log/slog"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/accesslog"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Context is what a factory may use to build a filter. It is shared by every
// filter of a listener; factories must not modify it.
type Context struct {
	Logger   *slog.Logger
	Stats    *stats.Store
	Clusters *upstream.Manager
	Buffers  *bufpool.Pool
	Pipes    *netio.PipePool // nil when splice(2) is unavailable
	// Listener is the name of the listener being built.
	Listener string
	// TrafficDirection is the listener's traffic_direction (what an HTTP
	// connection manager's tracing calls egress or ingress).
	TrafficDirection corev3.TrafficDirection
	// BufferLimit is the listener's per_connection_buffer_limit_bytes (0:
	// unset, Envoy's default of 1 MiB): the router keeps that much of a
	// request body for retries and mirrors.
	BufferLimit int
	// HTTPStatPrefix is set when HTTP filters are built: the stats prefix of the
	// HTTP connection manager that owns them, "http.<stat_prefix>.", under which
	// Envoy roots HTTP filters' stats (http.<stat_prefix>.fault.*, .rbac.*, .cors.*).
	HTTPStatPrefix string
	// HTTPFilterName is set when an HTTP filter (or its per-route
	// configuration) is built: its name in the connection manager's
	// http_filters, which keys its typed_per_filter_config entries (see
	// PerRoute).
	HTTPFilterName string
	// HTTPFilterDisabled is set when an HTTP filter is built: its HttpFilter's
	// disabled, which means the filter runs only for the routes that enable it.
	HTTPFilterDisabled bool
	// Secrets are the static secrets (static_resources.secrets, by name) that
	// TLS transport sockets may name in their SDS secret configs.
	Secrets tlscontext.Secrets
	// Runtime is the layered runtime filters read fractions and overrides from
	// at request time (Envoy's runtime keys); nil means no runtime, so every
	// key takes its default.
	Runtime *runtime.Loader

	// The HTTP connection manager's and the router's surroundings.

	// Routes holds the route configurations RDS delivered: a connection
	// manager with rds takes the Slot of its route_config_name. Nil: a
	// connection manager with rds answers 404 until it has routes.
	Routes *route.Provider
	// HTTPPools are the upstream HTTP connection pools, shared by every router
	// of the process. Nil: each router makes its own.
	HTTPPools *pool.Manager
	// ClusterExists reports whether the configuration being built has a
	// cluster of that name (what an inline route_config's validate_clusters
	// checks). Nil: the check is skipped.
	ClusterExists func(name string) bool
	// Node is the bootstrap's node, for what reports to a control plane (the
	// gRPC access log service). Nil: an empty node.
	Node *corev3.Node
	// AccessLogs are the process's access log writers (files, stdout, gRPC
	// streams), shared by every HTTP connection manager. Nil: access logs are
	// built and checked but write nowhere (validation).
	AccessLogs *accesslog.Sinks
	// Server is the server's own health, which the health_check HTTP filter
	// answers with. Nil: always healthy.
	Server ServerHealth
}

// ServerHealth is the server's own health as health check requests see it.
type ServerHealth interface {
	// HealthCheckFailed reports whether health checks are to fail: the
	// admin API asked so (Envoy's /healthcheck/fail), or the server is
	// draining.
	HealthCheckFailed() bool
}

// Registry maps typed_config type URLs to factories. It is built once at start-up
// (see the builtin package for skiff's list) and read-only afterwards.
type Registry struct {
	network  map[string]NetworkFactory
	listener map[string]ListenerFactory
	http     map[string]HTTPFactory
	perRoute map[string]RouteConfigFactory // by the type URL of RouteConfigType
	upstream map[string]UpstreamNetworkFactory
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	return &Registry{network: map[string]NetworkFactory{}, listener: map[string]ListenerFactory{}, http: map[string]HTTPFactory{},
		perRoute: map[string]RouteConfigFactory{}, upstream: map[string]UpstreamNetworkFactory{}}
}

// TypeURL returns the type URL that keys f.
func TypeURL(f Factory) string {
	return typeURLOf(f.ConfigType())
}

func typeURLOf(m proto.Message) string {
	return "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName())
}

// RegisterNetwork adds a network filter factory. Registering a type URL twice is
// an error.
func (r *Registry) RegisterNetwork(f NetworkFactory) error {
	return register(r.network, f)
}

// RegisterUpstreamNetwork adds an upstream network filter factory (for a
// cluster's filters).
func (r *Registry) RegisterUpstreamNetwork(f UpstreamNetworkFactory) error {
	return register(r.upstream, f)
}

// UpstreamNetworkFilter builds the upstream network filter (an entry of a
// cluster's filters) described by typedConfig.
func (r *Registry) UpstreamNetworkFilter(name string, typedConfig *anypb.Any, fc *Context) (upstream.ConnFilter, error) {
	if r == nil {
		return nil, cfgerr.Errorf("typed_config", "no filter registry")
	}
	f, cfg, err := lookup(r.upstream, "upstream network", name, typedConfig)
	if err != nil {
		return nil, err
	}
	uf, err := f.Create(cfg, fc)
	return uf, cfgerr.Field("typed_config", err)
}

// RegisterListener adds a listener filter factory.
func (r *Registry) RegisterListener(f ListenerFactory) error {
	return register(r.listener, f)
}

func register[F Factory](m map[string]F, f F) error {
	url := TypeURL(f)
	if old, ok := m[url]; ok {
		return fmt.Errorf("filter registry: %s: type URL %s already registered by %s", f.Name(), url, old.Name())
	}
	m[url] = f
	return nil
}

// RegisterHTTP adds an HTTP filter factory. A RouteConfigFactory is also
// registered under the type URL of its per-route configuration, which must
// not be another factory's per-route type.
func (r *Registry) RegisterHTTP(f HTTPFactory) error {
	rf, perRoute := f.(RouteConfigFactory)
	var url string
	if perRoute {
		url = typeURLOf(rf.RouteConfigType())
		if old, ok := r.perRoute[url]; ok {
			return fmt.Errorf("filter registry: %s: per-route type URL %s already registered by %s", f.Name(), url, old.Name())
		}
	}
	if err := register(r.http, f); err != nil {
		return err
	}
	if perRoute {
		r.perRoute[url] = rf
	}
	return nil
}

// HasHTTP reports whether an HTTP filter factory is registered for typeURL
// (what an is_optional HTTP filter's presence depends on).
func (r *Registry) HasHTTP(typeURL string) bool {
	if _, ok := r.http[typeURL]; ok {
		return true
	}
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		_, ok := r.http["type.googleapis.com/"+typeURL[i+1:]]
		return ok
	}
	return false
}

// HTTPFilter builds the HTTP filter described by typedConfig; name is its
// name in http_filters (see HTTPFilterFor).
func (r *Registry) HTTPFilter(name string, typedConfig *anypb.Any, fc *Context) (http.Filter, error) {
	return r.HTTPFilterFor(&hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typedConfig}}, fc)
}

// HTTPFilterFor builds the HTTP filter of an HTTP connection manager's
// http_filters entry (its name, typed_config and disabled; is_optional is
// the caller's business). The factory gets fc with HTTPFilterName and
// HTTPFilterDisabled set. The filter honours its per-route configuration
// (typed_per_filter_config, and FilterConfig's disabled), as a RouteAware
// filter does itself, or through a wrapper that skips it on the routes that
// disable it (or, with disabled, on those that do not enable it). A terminal
// filter (the router) is returned as is, and cannot be disabled.
func (r *Registry) HTTPFilterFor(hf *hcmv3.HttpFilter, fc *Context) (http.Filter, error) {
	name := hf.GetName()
	f, cfg, err := lookup(r.http, "HTTP", name, hf.GetTypedConfig())
	if err != nil {
		return nil, err
	}
	hfc := *fc
	hfc.HTTPFilterName, hfc.HTTPFilterDisabled = name, hf.GetDisabled()
	flt, err := f.Create(cfg, &hfc)
	if err != nil {
		return nil, cfgerr.Field("typed_config", err)
	}
	if _, terminal := flt.(http.Terminal); terminal {
		if hf.GetDisabled() {
			return nil, cfgerr.Errorf("disabled", "the terminal filter %s cannot be disabled by default", name)
		}
		return flt, nil
	}
	if _, aware := flt.(RouteAware); aware {
		return flt, nil
	}
	return gate(flt, hfc.PerRoute()), nil
}

// NetworkFilter builds the network filter described by typedConfig. name is the
// filter's name in the config, used in errors.
func (r *Registry) NetworkFilter(name string, typedConfig *anypb.Any, fc *Context) (NetworkFilter, error) {
	f, cfg, err := lookup(r.network, "network", name, typedConfig)
	if err != nil {
		return nil, err
	}
	nf, err := f.Create(cfg, fc)
	return nf, cfgerr.Field("typed_config", err)
}

// ListenerFilter builds the listener filter described by typedConfig.
func (r *Registry) ListenerFilter(name string, typedConfig *anypb.Any, fc *Context) (ListenerFilter, error) {
	f, cfg, err := lookup(r.listener, "listener", name, typedConfig)
	if err != nil {
		return nil, err
	}
	lf, err := f.Create(cfg, fc)
	return lf, cfgerr.Field("typed_config", err)
}

// lookup finds the factory for typedConfig and decodes and validates the config.
func lookup[F Factory](m map[string]F, kind, name string, typedConfig *anypb.Any) (F, proto.Message, error) {
	var zero F
	if typedConfig == nil {
		return zero, nil, cfgerr.Errorf("typed_config", "%s filter %q has no typed_config (skiff, like current Envoy, selects filters by type URL, not by name)", kind, name)
	}
	url := typedConfig.GetTypeUrl()
	var typed *structpb.Struct // the value of a TypedStruct
	if isTypedStruct(url) {
		inner, value, err := unwrapTypedStruct(typedConfig)
		if err != nil {
			return zero, nil, cfgerr.Errorf("typed_config", "%s filter %q: %w", kind, name, err)
		}
		url, typed = inner, value
	}
	f, ok := m[url]
	if !ok {
		if i := strings.LastIndexByte(url, '/'); i >= 0 {
			f, ok = m["type.googleapis.com/"+url[i+1:]]
		}
	}
	if !ok {
		return zero, nil, cfgerr.Errorf("typed_config", "%s filter %q: type %s is not a %s filter skiff supports", kind, name, url, kind)
	}
	cfg := f.ConfigType().ProtoReflect().New().Interface()
	if typed != nil {
		if err := structToMessage(typed, cfg); err != nil {
			return zero, nil, cfgerr.Errorf("typed_config.value", "%s filter %q: decoding %s from a TypedStruct: %w", kind, name, url, err)
		}
	} else if err := typedConfig.UnmarshalTo(cfg); err != nil {
		return zero, nil, cfgerr.Errorf("typed_config", "%s filter %q: decoding %s: %w", kind, name, url, err)
	}
	if err := cfgerr.Validate(cfg); err != nil {
		return zero, nil, cfgerr.Field("typed_config", err)
	}
	return f, cfg, nil
}
