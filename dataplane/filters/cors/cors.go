// Package cors is the HTTP filter envoy.filters.http.cors: it answers CORS
// preflight requests (OPTIONS with Origin and Access-Control-Request-Method)
// itself and adds access-control-allow-origin and its companions to the
// responses of cross-origin requests whose origin the policy allows.
//
// Envoy takes the policy from the route (typed_per_filter_config, or the
// deprecated cors field of a route or virtual host) and its filter config,
// envoy.extensions.filters.http.cors.v3.Cors, is empty. skiff's route table
// does not take per-filter configs yet, so the filter also accepts a
// envoy.extensions.filters.http.cors.v3.CorsPolicy as its typed_config: that
// policy then applies to every route of the connection manager. With the
// empty Cors config there is no policy and the filter lets everything through
// untouched, as Envoy does on a route without one.
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
	allowCredentials bool
	allowPNA         bool
	forwardNotMatch  bool
	enabled          runtime.RuntimeFraction
	shadow           runtime.RuntimeFraction
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
		allowCredentials: pb.GetAllowCredentials().GetValue(),
		allowPNA:         pb.GetAllowPrivateNetworkAccess().GetValue(),
		forwardNotMatch:  true,
		// Without filter_enabled a policy is enabled for every request; without
		// shadow_enabled it shadows none.
		enabled: runtime.RuntimeFractionOf(pb.GetFilterEnabled(), runtime.Percent(100)),
		shadow:  runtime.RuntimeFractionOf(pb.GetShadowEnabled(), runtime.Percent(0)),
	}
	if v := pb.GetForwardNotMatchingPreflights(); v != nil {
		p.forwardNotMatch = v.GetValue()
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

// originAllowed is Envoy's isOriginAllowed: a matcher that matches "*" (or
// the origin itself) allows it.
func (p *Policy) originAllowed(origin string) bool {
	for _, m := range p.origins {
		if m.Match("*") || m.Match(origin) {
			return true
		}
	}
	return false
}

type corsStats struct {
	valid, invalid stats.Counter
}

// Filter is a built CORS filter.
type Filter struct {
	policy *Policy // nil: no policy, nothing to do
	stats  corsStats
	rt     *runtime.Loader
	log    *slog.Logger
}

func newFilter(p *Policy, fc *filter.Context) *Filter {
	prefix := kit.StatPrefixJoin(fc.HTTPStatPrefix, "cors.")
	return &Filter{
		policy: p,
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
// counting.
func (f *Filter) decide(e *http.Exchange) state {
	p := f.policy
	if p == nil || !hasRoute(e) {
		return state{} // Envoy ignores requests without a route
	}
	snap := f.rt.Current()
	enabled := p.enabled.Enabled(snap, kit.Sample(e, saltEnabled))
	if !enabled && !p.shadow.Enabled(snap, kit.Sample(e, saltShadow)) {
		return state{}
	}
	origin, _ := e.Request.Get(HeaderOrigin)
	if origin == "" {
		return state{}
	}
	return state{origin: origin, allowed: p.originAllowed(origin), cors: enabled}
}

// OnRequest implements http.Filter: it counts origin_valid or
// origin_invalid, and answers a preflight request itself with 200 and the
// policy's access-control-* headers (a preflight from an origin the policy
// does not allow is passed upstream, unless forward_not_matching_preflights
// is false: then it gets the 200 without access-control-allow-origin).
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	st := f.decide(e)
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
	p := f.policy
	if !st.allowed && p.forwardNotMatch {
		return http.Continue
	}
	h := &e.Response
	if st.allowed {
		h.Set(HeaderAllowOrigin, st.origin)
	}
	if p.allowCredentials {
		h.Set(HeaderAllowCredentials, "true")
	}
	switch p.allowMethods {
	case "":
	case "*":
		h.Set(HeaderAllowMethods, reqMethod)
	default:
		h.Set(HeaderAllowMethods, p.allowMethods)
	}
	switch p.allowHeaders {
	case "":
	case "*":
		h.Set(HeaderAllowHeaders, e.Request.Value(HeaderRequestHeaders))
	default:
		h.Set(HeaderAllowHeaders, p.allowHeaders)
	}
	if p.maxAge != "" {
		h.Set(HeaderMaxAge, p.maxAge)
	}
	if p.allowPNA && e.Request.Value(HeaderRequestPrivateNetwork) == "true" {
		h.Set(HeaderAllowPrivateNetwork, "true")
	}
	// Envoy's own encodeHeaders then runs on this response too: an allowed
	// origin gets expose-headers as well.
	f.decorate(st, h)
	if err := e.LocalReply(200, "", ResponseCodeDetailsCorsResponse, 0); err != nil {
		f.log.Debug("cors: sending the preflight response failed", "error", err)
	}
	return http.Stop
}

// OnResponse implements http.ResponseFilter: the response to a CORS request
// from an allowed origin gets access-control-allow-origin (the origin),
// -allow-credentials and -expose-headers per the policy.
func (f *Filter) OnResponse(e *http.Exchange) {
	if f.policy == nil {
		return
	}
	f.decorate(f.decide(e), &e.Response)
}

func (f *Filter) decorate(st state, h *http.Header) {
	if !st.cors || !st.allowed {
		return
	}
	p := f.policy
	h.Set(HeaderAllowOrigin, st.origin)
	if p.allowCredentials {
		h.Set(HeaderAllowCredentials, "true")
	}
	if p.exposeHeaders != "" {
		h.Set(HeaderExposeHeaders, p.exposeHeaders)
	}
}

// hasRoute reports whether the request matched a route.
func hasRoute(e *http.Exchange) bool {
	if r, ok := e.Route.(*route.Route); ok {
		return r != nil
	}
	return e.Route != nil
}
