package route

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// FilterConfigBuilder builds the per-route configuration of an HTTP filter
// from one typed_per_filter_config entry: name is the map key (the filter's
// name in its connection manager's http_filters) and cfg the value, or the
// config of a FilterConfig value. The HTTP filter registry provides one (see
// filter.Registry.RouteConfigs); what it returns is what the filter finds
// with PerFilter at request time.
//
// For an entry no HTTP filter takes (a type no filter knows, or a filter
// without per-route configuration) it returns an
// *UnsupportedFilterConfigError, which an is_optional FilterConfig makes
// Compile ignore. Other errors (a config that does not decode or validate)
// should be *cfgerr.Error located inside cfg.
type FilterConfigBuilder func(name string, cfg *anypb.Any) (any, error)

// UnsupportedFilterConfigError is the error of a FilterConfigBuilder for a
// per-route configuration that no HTTP filter takes.
type UnsupportedFilterConfigError struct {
	Reason string
}

func (e *UnsupportedFilterConfigError) Error() string { return e.Reason }

// filterConfigType is the wrapper a typed_per_filter_config value may be,
// to disable a filter or to mark its config optional.
const filterConfigType = "envoy.config.route.v3.FilterConfig"

// PerFilterConfig is what the typed_per_filter_config of a route's levels
// (its weighted cluster, the route, its virtual host, the route
// configuration) say about one HTTP filter. It is immutable and shared by
// every request of the route.
type PerFilterConfig struct {
	name     string
	disabled bool
	configs  []any
}

// Name is the filter's name (the typed_per_filter_config key).
func (c *PerFilterConfig) Name() string { return c.name }

// Disabled reports whether the most specific level that names the filter
// disables it (a FilterConfig with disabled: true). Any other entry enables
// the filter, also one that HttpFilter.disabled turns off by default.
func (c *PerFilterConfig) Disabled() bool { return c != nil && c.disabled }

// Enabled reports whether the filter runs for the route: as the most
// specific level that names it says, or, when no level does (c is nil), as
// the filter's own default (disabledByDefault is its HttpFilter.disabled).
func (c *PerFilterConfig) Enabled(disabledByDefault bool) bool {
	if c == nil {
		return !disabledByDefault
	}
	return !c.disabled
}

// Config is the most specific configuration the filter's factory built for
// the route, or nil: no level has one (or c is nil). Entries that only enable
// the filter (a FilterConfig with an empty config, or an is_optional one
// skiff does not support) have none, and a less specific level's config
// shows through them, as in Envoy.
func (c *PerFilterConfig) Config() any {
	if c == nil || len(c.configs) == 0 {
		return nil
	}
	return c.configs[0]
}

// Configs are all the levels' configurations, most specific first (what
// Envoy's CORS filter merges field by field). The slice must not be modified.
func (c *PerFilterConfig) Configs() []any {
	if c == nil {
		return nil
	}
	return c.configs
}

// PerFilter returns what the route says about the HTTP filter named name for
// a request with headers h, or nil when no level names it. rnd is the random
// value the router picks a weighted cluster with (see ExchangeRandom): a
// weighted cluster's own typed_per_filter_config is the most specific level.
// It does not allocate.
func (r *Route) PerFilter(name string, h *http.Header, rnd uint64) *PerFilterConfig {
	list := r.perFilter
	if w := r.clusters.weighted; w != nil && w.perFilter {
		list = w.entries[w.index(h, rnd)].perFilter
	}
	return find(list, name)
}

func find(list []PerFilterConfig, name string) *PerFilterConfig {
	for i := range list {
		if list[i].name == name {
			return &list[i]
		}
	}
	return nil
}

// PerFilter returns what the typed_per_filter_config of e's route (e.Route,
// a *Route) say about the HTTP filter named name, or nil when the exchange
// has no route or no level of it names the filter. A weighted cluster's
// entry counts for the cluster the router will pick (see ExchangeRandom). It
// does not allocate.
func PerFilter(e *http.Exchange, name string) *PerFilterConfig {
	r, _ := e.Route.(*Route)
	if r == nil {
		return nil
	}
	if w := r.clusters.weighted; w != nil && w.perFilter {
		return find(w.entries[w.index(e.Request, ExchangeRandom(e))].perFilter, name)
	}
	return find(r.perFilter, name)
}

// ExchangeRandom is the random value of an exchange that the router picks a
// weighted cluster with (ClusterFor's rnd), as Envoy uses its stream's random
// value: fixed for the exchange, so that HTTP filters, which run before the
// router, see the typed_per_filter_config of the cluster the request will go
// to.
func ExchangeRandom(e *http.Exchange) uint64 { return e.Random(0x5851f42d4c957f2d) }

// levelConfig is one compiled typed_per_filter_config entry.
type levelConfig struct {
	name     string
	config   any // nil: the entry only enables or disables the filter
	disabled bool
}

// filterConfigs compiles a typed_per_filter_config map; where names the
// level for errors ("route \"r\" of virtual host ...").
func (c *compiler) filterConfigs(m map[string]*anypb.Any, where string) ([]levelConfig, error) {
	if len(m) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	slices.Sort(names) // the first error is the same every time
	out := make([]levelConfig, 0, len(m))
	for _, name := range names {
		field := "typed_per_filter_config[" + name + "]"
		if c.opts.FilterConfigs == nil {
			return nil, cfgerr.Errorf(field, "per-filter configurations need the HTTP filter registry, which this route configuration was compiled without (%s)", where)
		}
		lc, err := c.filterConfig(name, m[name])
		if err != nil {
			return nil, locate(field, fmt.Sprintf("HTTP filter %q on %s", name, where), err)
		}
		out = append(out, lc)
	}
	return out, nil
}

// filterConfig compiles one entry, as Envoy's PerFilterConfigs does: a
// FilterConfig wrapper may disable the filter, enable it with no config (an
// empty config), or carry an is_optional config; any other value is the
// filter's per-route config itself.
func (c *compiler) filterConfig(name string, a *anypb.Any) (levelConfig, error) {
	lc := levelConfig{name: name}
	if a == nil {
		return lc, cfgerr.Errorf("", "no value")
	}
	if !isType(a.GetTypeUrl(), filterConfigType) {
		cfg, err := c.opts.FilterConfigs(name, a)
		lc.config = cfg
		return lc, err
	}
	var fc routev3.FilterConfig
	if err := a.UnmarshalTo(&fc); err != nil {
		return lc, cfgerr.Errorf("", "decoding %s: %v", a.GetTypeUrl(), err)
	}
	if err := cfgerr.OnlyFields(&fc, "config", "is_optional", "disabled"); err != nil {
		return lc, err
	}
	if fc.GetDisabled() {
		lc.disabled = true
		return lc, nil
	}
	if fc.GetConfig() == nil {
		return lc, cfgerr.Errorf("config", "is required unless disabled is true (an empty config enables the filter)")
	}
	if fc.GetConfig().GetTypeUrl() == "" {
		return lc, nil // enabled, with no config of its own
	}
	cfg, err := c.opts.FilterConfigs(name, fc.GetConfig())
	if _, unsupported := errors.AsType[*UnsupportedFilterConfigError](err); unsupported && fc.GetIsOptional() {
		// As Envoy: an optional config skiff cannot use is ignored, and the
		// entry still enables the filter.
		return lc, nil
	}
	lc.config = cfg
	return lc, cfgerr.Field("config", err)
}

// isType reports whether typeURL names the message fullName (the part after
// the last '/').
func isType(typeURL, fullName string) bool {
	i := strings.LastIndexByte(typeURL, '/')
	return typeURL[i+1:] == fullName
}

// locate puts err at field, below the path it already has, and appends what
// it concerns to its message.
func locate(field, what string, err error) error {
	if ce, ok := errors.AsType[*cfgerr.Error](err); ok && ce == err {
		return &cfgerr.Error{Path: cfgerr.Join(field, ce.Path), Err: fmt.Errorf("%w (%s)", ce.Err, what)}
	}
	return &cfgerr.Error{Path: field, Err: fmt.Errorf("%w (%s)", err, what)}
}

// mergeFilterConfigs joins the levels' entries, most specific level first,
// into one PerFilterConfig per filter name: the first level that names a
// filter decides whether it is disabled; the configs are every level's, in
// order. nil when no level has an entry.
func mergeFilterConfigs(levels ...[]levelConfig) []PerFilterConfig {
	var out []PerFilterConfig
	for _, lvl := range levels {
		for _, lc := range lvl {
			i := slices.IndexFunc(out, func(p PerFilterConfig) bool { return p.name == lc.name })
			if i < 0 {
				out = append(out, PerFilterConfig{name: lc.name, disabled: lc.disabled})
				i = len(out) - 1
			}
			if lc.config != nil {
				out[i].configs = append(out[i].configs, lc.config)
			}
		}
	}
	return out
}

// describe names a level of the configuration for errors: kind and name,
// then what it belongs to.
func describe(kind, name, parent string) string {
	s := kind + " " + quoteName(name)
	if parent != "" {
		s += " of " + parent
	}
	return s
}

func quoteName(name string) string {
	if name == "" {
		return "(unnamed)"
	}
	return fmt.Sprintf("%q", name)
}
