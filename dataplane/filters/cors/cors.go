// Package cors is the HTTP filter envoy.filters.http.cors: it answers CORS
// preflight requests (OPTIONS with Origin and Access-Control-Request-Method)
// itself and adds access-control-allow-origin and its companions to the
// responses of cross-origin requests whose origin the policy allows.
//
// As Envoy, the filter takes its policy from the route: the CorsPolicy
// entries of typed_per_filter_config on the route (or its weighted cluster),
// its virtual host and the route configuration, merged field by field, the
// most specific level's field winning (filter_enabled and shadow_enabled are
// the most specific policy's). Its own filter config,
// envoy.extensions.filters.http.cors.v3.Cors, is empty. As a skiff extension
// the filter also accepts a CorsPolicy as its typed_config: that policy then
// applies to every route of the connection manager, as the least specific
// level below the routes' own. The deprecated cors field of a route or
// virtual host is refused by the route table. Without any policy the filter
// lets everything through untouched, as Envoy does on a route without one.
package cors

import (
	"log/slog"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kit"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.http.cors"

// Header names.
const (
	HeaderOrigin                    = "origin"
	HeaderRequestMethod             = "access-control-request-method"
	HeaderRequestHeaders            = "access-control-request-headers"
	HeaderRequestPrivateNetwork     = "access-control-request-private-network"
	HeaderAllowOrigin               = "access-control-allow-origin"
	HeaderAllowCredentials          = "access-control-allow-credentials"
	HeaderAllowMethods              = "access-control-allow-methods"
	HeaderAllowHeaders              = "access-control-allow-headers"
	HeaderMaxAge                    = "access-control-max-age"
	HeaderExposeHeaders             = "access-control-expose-headers"
	HeaderAllowPrivateNetwork       = "access-control-allow-private-network"
	ResponseCodeDetailsCorsResponse = "cors_response"
)

// Factory builds the filter from Envoy's (empty) Cors config.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &corsv3.Cors{} }

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	if err := cfgerr.OnlyFields(m); err != nil {
		return nil, err
	}
	return newFilter(nil, fc), nil
}

// RouteConfigType implements filter.RouteConfigFactory: a route's policy is a
// CorsPolicy.
func (Factory) RouteConfigType() proto.Message { return &corsv3.CorsPolicy{} }

// NewRouteConfig implements filter.RouteConfigFactory.
func (Factory) NewRouteConfig(m proto.Message, _ *filter.Context) (any, error) {
	return NewPolicy(m.(*corsv3.CorsPolicy))
}

// PolicyFactory builds the filter from a CorsPolicy given as the filter's
// typed_config: a policy for every route (a skiff extension, see the package
// comment).
type PolicyFactory struct{}

// Name implements filter.Factory.
func (PolicyFactory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (PolicyFactory) ConfigType() proto.Message { return &corsv3.CorsPolicy{} }

// Create implements filter.HTTPFactory.
func (PolicyFactory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	p, err := NewPolicy(m.(*corsv3.CorsPolicy))
	if err != nil {
		return nil, err
	}
	return newFilter(p, fc), nil
}

// Policy is a compiled CorsPolicy.
type Policy struct {
	origins          []*route.StringMatcher
	allowMethods     string
	allowHeaders     string
	exposeHeaders    string
	maxAge           string
	allowCredentials optBool
	allowPNA         optBool
	forwardNotMatch  optBool
	enabled          runtime.RuntimeFraction
	shadow           runtime.RuntimeFraction
}

// optBool is a BoolValue field: unset, false or true. An unset field of a
// more specific policy lets a less specific one's show through.
type optBool uint8

const (
	unset optBool = iota
	isFalse
	isTrue
)

func optBoolOf(v interface{ GetValue() bool }, set bool) optBool {
	switch {
	case !set:
		return unset
	case v.GetValue():
		return isTrue
	}
	return isFalse
}

// NewPolicy compiles pb. Errors name the field inside it.
func NewPolicy(pb *corsv3.CorsPolicy) (*Policy, error) {
	if err := cfgerr.OnlyFields(pb, "allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers",
		"max_age", "allow_credentials", "filter_enabled", "shadow_enabled", "allow_private_network_access",
		"forward_not_matching_preflights"); err != nil {
		return nil, err
	}
	p := &Policy{
		allowMethods:     pb.GetAllowMethods(),
		allowHeaders:     pb.GetAllowHeaders(),
		exposeHeaders:    pb.GetExposeHeaders(),
		maxAge:           pb.GetMaxAge(),
		allowCredentials: optBoolOf(pb.GetAllowCredentials(), pb.AllowCredentials != nil),
		allowPNA:         optBoolOf(pb.GetAllowPrivateNetworkAccess(), pb.AllowPrivateNetworkAccess != nil),
		forwardNotMatch:  optBoolOf(pb.GetForwardNotMatchingPreflights(), pb.ForwardNotMatchingPreflights != nil),
		// Without filter_enabled a policy is enabled for every request; without
		// shadow_enabled it shadows none.
		enabled: runtime.RuntimeFractionOf(pb.GetFilterEnabled(), runtime.Percent(100)),
		shadow:  runtime.RuntimeFractionOf(pb.GetShadowEnabled(), runtime.Percent(0)),
	}
	for i, sm := range pb.GetAllowOriginStringMatch() {
		m, err := route.NewStringMatcher(sm)
		if err != nil {
			return nil, cfgerr.Index("allow_origin_string_match", i, err)
		}
		p.origins = append(p.origins, m)
	}
	return p, nil
}

// policies are the policies that apply to a request, most specific first:
// the route's (its levels', from route.PerFilterConfig.Configs), then the
// filter's own. Envoy's CorsFilter resolves each field from the first policy
// that sets it.
type policies struct {
	route []any   // *Policy values; others (a misplaced config) are skipped
	base  *Policy // the filter's typed_config CorsPolicy, or nil
}

// at returns the i-th policy, or nil past the end or for a value that is not
// a *Policy.
func (ps *policies) at(i int) *Policy {
	if i < len(ps.route) {
		p, _ := ps.route[i].(*Policy)
		return p
	}
	if i == len(ps.route) {
		return ps.base
	}
	return nil
}

func (ps *policies) n() int { return len(ps.route) + 1 }

// first is the most specific policy (whose filter_enabled and shadow_enabled
// decide), or nil when there is none.
func (ps *policies) first() *Policy {
	for i := range ps.n() {
		if p := ps.at(i); p != nil {
			return p
		}
	}
	return nil
}

// str is the first non-empty string field get returns.
func (ps *policies) str(get func(*Policy) string) string {
	for i := range ps.n() {
		if p := ps.at(i); p != nil {
			if v := get(p); v != "" {
				return v
			}
		}
	}
	return ""
}

// flag is the first set BoolValue field get returns, else def.
func (ps *policies) flag(get func(*Policy) optBool, def bool) bool {
	for i := range ps.n() {
		if p := ps.at(i); p != nil {
			if v := get(p); v != unset {
				return v == isTrue
			}
		}
	}
	return def
}

// originAllowed is Envoy's isOriginAllowed with the first policy that has
// allow_origin_string_match: a matcher that matches "*" (or the origin
// itself) allows it.
func (ps *policies) originAllowed(origin string) bool {
	for i := range ps.n() {
		p := ps.at(i)
		if p == nil || len(p.origins) == 0 {
			continue
		}
		for _, m := range p.origins {
			if m.Match("*") || m.Match(origin) {
				return true
			}
		}
		return false
	}
	return false
}

func (ps *policies) allowCredentials() bool {
	return ps.flag(func(p *Policy) optBool { return p.allowCredentials }, false)
}

func (ps *policies) exposeHeaders() string {
	return ps.str(func(p *Policy) string { return p.exposeHeaders })
}

type corsStats struct {
	valid, invalid stats.Counter
}

// Filter is a built CORS filter.
type Filter struct {
	policy *Policy // the filter's own (nil: only the routes' apply)
	pr     filter.PerRoute
	stats  corsStats
	rt     *runtime.Loader
	log    *slog.Logger
}

// PerRoute implements filter.RouteAware.
func (f *Filter) PerRoute() filter.PerRoute { return f.pr }

func newFilter(p *Policy, fc *filter.Context) *Filter {
	prefix := kit.StatPrefixJoin(fc.HTTPStatPrefix, "cors.")
	return &Filter{
		policy: p,
		pr:     fc.PerRoute(),
		stats: corsStats{
			valid:   fc.Stats.Counter(prefix + "origin_valid"),
			invalid: fc.Stats.Counter(prefix + "origin_invalid"),
		},
		rt:  fc.Runtime,
		log: fc.Logger,
	}
}

// Salts of the two fractional decisions (see kit.Sample).
const (
	saltEnabled = 0xc0125
	saltShadow  = 0xc0126
)

// state is what both halves of the filter derive from the request.
type state struct {
	origin  string
	allowed bool // origin allowed
	cors    bool // a CORS request the policy is enforced for
}

// decide looks at the request as Envoy's decodeHeaders does, without
// counting, and returns the policies that apply.
func (f *Filter) decide(e *http.Exchange) (state, policies) {
	if !hasRoute(e) {
		return state{}, policies{} // Envoy ignores requests without a route
	}
	pf, on := f.pr.Lookup(e)
	if !on {
		return state{}, policies{}
	}
	ps := policies{route: pf.Configs(), base: f.policy}
	p := ps.first()
	if p == nil {
		return state{}, ps
	}
	snap := f.rt.Current()
	enabled := p.enabled.Enabled(snap, kit.Sample(e, saltEnabled))
	if !enabled && !p.shadow.Enabled(snap, kit.Sample(e, saltShadow)) {
		return state{}, ps
	}
	origin, _ := e.Request.Get(HeaderOrigin)
	if origin == "" {
		return state{}, ps
	}
	return state{origin: origin, allowed: ps.originAllowed(origin), cors: enabled}, ps
}

// OnRequest implements http.Filter: it counts origin_valid or
// origin_invalid, and answers a preflight request itself with 200 and the
// policy's access-control-* headers (a preflight from an origin the policy
// does not allow is passed upstream, unless forward_not_matching_preflights
// is false: then it gets the 200 without access-control-allow-origin).
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	st, ps := f.decide(e)
	if st.origin == "" {
		return http.Continue
	}
	if st.allowed {
		f.stats.valid.Inc()
	} else {
		f.stats.invalid.Inc()
	}
	if !st.cors || e.Request.Method() != "OPTIONS" {
		return http.Continue
	}
	reqMethod, _ := e.Request.Get(HeaderRequestMethod)
	if reqMethod == "" {
		return http.Continue
	}
	if !st.allowed && ps.flag(func(p *Policy) optBool { return p.forwardNotMatch }, true) {
		return http.Continue
	}
	h := &e.Response
	if st.allowed {
		h.Set(HeaderAllowOrigin, st.origin)
	}
	if ps.allowCredentials() {
		h.Set(HeaderAllowCredentials, "true")
	}
	switch m := ps.str(func(p *Policy) string { return p.allowMethods }); m {
	case "":
	case "*":
		h.Set(HeaderAllowMethods, reqMethod)
	default:
		h.Set(HeaderAllowMethods, m)
	}
	switch hs := ps.str(func(p *Policy) string { return p.allowHeaders }); hs {
	case "":
	case "*":
		h.Set(HeaderAllowHeaders, e.Request.Value(HeaderRequestHeaders))
	default:
		h.Set(HeaderAllowHeaders, hs)
	}
	if maxAge := ps.str(func(p *Policy) string { return p.maxAge }); maxAge != "" {
		h.Set(HeaderMaxAge, maxAge)
	}
	if ps.flag(func(p *Policy) optBool { return p.allowPNA }, false) && e.Request.Value(HeaderRequestPrivateNetwork) == "true" {
		h.Set(HeaderAllowPrivateNetwork, "true")
	}
	// Envoy's own encodeHeaders then runs on this response too: an allowed
	// origin gets expose-headers as well.
	f.decorate(st, &ps, h)
	// Sent as Envoy sends it (encodeHeaders, not sendLocalReply): headers
	// only, untouched by local_reply_config.
	e.Info.ResponseCode, e.Info.ResponseCodeDetails = 200, ResponseCodeDetailsCorsResponse
	h.SetUint(http.Status, 200)
	if err := e.Downstream.WriteHeader(h, true); err != nil {
		f.log.Debug("cors: sending the preflight response failed", "error", err)
	}
	return http.Stop
}

// OnResponse implements http.ResponseFilter: the response to a CORS request
// from an allowed origin gets access-control-allow-origin (the origin),
// -allow-credentials and -expose-headers per the policy.
func (f *Filter) OnResponse(e *http.Exchange) {
	st, ps := f.decide(e)
	f.decorate(st, &ps, &e.Response)
}

func (f *Filter) decorate(st state, ps *policies, h *http.Header) {
	if !st.cors || !st.allowed {
		return
	}
	h.Set(HeaderAllowOrigin, st.origin)
	if ps.allowCredentials() {
		h.Set(HeaderAllowCredentials, "true")
	}
	if x := ps.exposeHeaders(); x != "" {
		h.Set(HeaderExposeHeaders, x)
	}
}

// hasRoute reports whether the request matched a route.
func hasRoute(e *http.Exchange) bool {
	if r, ok := e.Route.(*route.Route); ok {
		return r != nil
	}
	return e.Route != nil
}
