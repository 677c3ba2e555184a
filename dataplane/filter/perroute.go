package filter

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// RouteConfigFactory is an HTTPFactory whose filters take a per-route
// configuration: Envoy's typed_per_filter_config of a route, a weighted
// cluster, a virtual host or a route configuration, keyed by the filter's name
// in http_filters. The route table compiles each entry once, through the
// Registry (see RouteConfigs), and the filter finds the result at request time
// with PerRoute.Lookup.
type RouteConfigFactory interface {
	HTTPFactory
	// RouteConfigType returns an empty message of the per-route config type
	// (which may be the filter's own config type, as for fault and
	// local_ratelimit). Its type URL keys the factory among per-route types.
	RouteConfigType() proto.Message
	// NewRouteConfig builds the per-route configuration from its decoded
	// config, which the Registry has already checked against its proto
	// constraints. fc has HTTPFilterName set; its HTTPStatPrefix is empty,
	// since a route configuration (RDS) does not belong to one connection
	// manager. Errors should be located with cfgerr.
	NewRouteConfig(cfg proto.Message, fc *Context) (any, error)
}

// RouteConfigs returns the builder that route.Compile uses for
// typed_per_filter_config entries (route.Options.FilterConfigs): a value
// (or a FilterConfig's config) is built by the RouteConfigFactory of its type
// URL, with fc. A type no factory takes as a per-route configuration is a
// *route.UnsupportedFilterConfigError, as is the config type of a filter
// without per-route configuration. A nil Registry has none (nil).
func (r *Registry) RouteConfigs(fc *Context) route.FilterConfigBuilder {
	if r == nil {
		return nil
	}
	if fc == nil {
		fc = &Context{}
	}
	return func(name string, cfg *anypb.Any) (any, error) {
		return r.routeConfig(name, cfg, fc)
	}
}

func (r *Registry) routeConfig(name string, a *anypb.Any, fc *Context) (any, error) {
	url := a.GetTypeUrl()
	f, ok := byTypeURL(r.perRoute, url)
	if !ok {
		if hf, ok := byTypeURL(r.http, url); ok {
			if rf, ok := hf.(RouteConfigFactory); ok {
				return nil, cfgerr.Errorf("", "%s is the filter config of %s, whose per-route config is %s", typeName(url), hf.Name(), typeURLOf(rf.RouteConfigType()))
			}
			return nil, &route.UnsupportedFilterConfigError{Reason: hf.Name() + " does not support virtual host or route specific configurations"}
		}
		return nil, &route.UnsupportedFilterConfigError{Reason: "no HTTP filter skiff supports takes " + url + " as a per-route configuration"}
	}
	cfg := f.RouteConfigType().ProtoReflect().New().Interface()
	if err := a.UnmarshalTo(cfg); err != nil {
		return nil, cfgerr.Errorf("", "decoding %s: %w", url, err)
	}
	if err := cfgerr.Validate(cfg); err != nil {
		return nil, err
	}
	rfc := *fc
	rfc.HTTPFilterName, rfc.HTTPFilterDisabled, rfc.HTTPStatPrefix = name, false, ""
	return f.NewRouteConfig(cfg, &rfc)
}

// byTypeURL finds the factory of a type URL, whatever its host part.
func byTypeURL[F Factory](m map[string]F, url string) (F, bool) {
	f, ok := m[url]
	if !ok {
		f, ok = m["type.googleapis.com/"+typeName(url)]
	}
	return f, ok
}

func typeName(url string) string {
	return url[strings.LastIndexByte(url, '/')+1:]
}

// PerRoute is what an HTTP filter needs to honour its per-route
// configuration: its name in http_filters, which keys its
// typed_per_filter_config entries, and whether it is disabled unless a route
// enables it (HttpFilter.disabled).
type PerRoute struct {
	name              string
	disabledByDefault bool
}

// PerRoute returns the per-route view of the HTTP filter fc builds.
func (fc *Context) PerRoute() PerRoute {
	return PerRoute{name: fc.HTTPFilterName, disabledByDefault: fc.HTTPFilterDisabled}
}

// NewPerRoute returns the PerRoute of a filter named name (for tests and
// filters built without a Registry).
func NewPerRoute(name string, disabledByDefault bool) PerRoute {
	return PerRoute{name: name, disabledByDefault: disabledByDefault}
}

// Name is the filter's name in http_filters.
func (p PerRoute) Name() string { return p.name }

// Lookup returns what e's route says about the filter (nil: nothing; see
// route.PerFilter) and whether the filter runs for e: as the most specific
// entry that names the filter says (FilterConfig's disabled), else unless the
// filter is disabled by default. It does not allocate.
func (p PerRoute) Lookup(e *http.Exchange) (*route.PerFilterConfig, bool) {
	c := route.PerFilter(e, p.name)
	return c, c.Enabled(p.disabledByDefault)
}

// RouteAware is an HTTP filter that calls PerRoute.Lookup itself and does
// nothing for an exchange it is not enabled for (on both halves, when it is a
// ResponseFilter). The Registry wraps every other HTTP filter but the
// terminal one in a gate that does it for them.
type RouteAware interface {
	http.Filter
	// PerRoute returns the filter's PerRoute.
	PerRoute() PerRoute
}

// gate returns f wrapped so that it runs only for the exchanges its
// PerRoute enables it for.
func gate(f http.Filter, p PerRoute) http.Filter {
	g := gated{f: f, p: p}
	if rf, ok := f.(http.ResponseFilter); ok {
		return &gatedResponse{gated: g, rf: rf}
	}
	return &g
}

type gated struct {
	f http.Filter
	p PerRoute
}

// OnRequest implements http.Filter.
func (g *gated) OnRequest(e *http.Exchange) http.Action {
	if _, on := g.p.Lookup(e); !on {
		return http.Continue
	}
	return g.f.OnRequest(e)
}

// PerRoute implements RouteAware.
func (g *gated) PerRoute() PerRoute { return g.p }

// Unwrap returns the gated filter.
func (g *gated) Unwrap() http.Filter { return g.f }

type gatedResponse struct {
	gated
	rf http.ResponseFilter
}

// OnResponse implements http.ResponseFilter.
func (g *gatedResponse) OnResponse(e *http.Exchange) {
	if _, on := g.p.Lookup(e); on {
		g.rf.OnResponse(e)
	}
}
