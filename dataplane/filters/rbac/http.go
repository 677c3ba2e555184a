package rbac

import (
	"log/slog"

	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kit"
	"github.com/skiffproxy/skiff/dataplane/filters/rbac/engine"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// DeniedBody is the body of the 403 a denied request gets.
const DeniedBody = "RBAC: access denied"

// HTTPFactory builds envoy.filters.http.rbac filters.
type HTTPFactory struct{}

// Name implements filter.Factory.
func (HTTPFactory) Name() string { return HTTPName }

// ConfigType implements filter.Factory.
func (HTTPFactory) ConfigType() proto.Message { return &httprbacv3.RBAC{} }

// Create implements filter.HTTPFactory.
func (HTTPFactory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	cfg := m.(*httprbacv3.RBAC)
	if err := cfgerr.OnlyFields(cfg, "rules", "rules_stat_prefix", "shadow_rules", "shadow_rules_stat_prefix", "track_per_rule_stats"); err != nil {
		return nil, err
	}
	base := kit.StatPrefixJoin(fc.HTTPStatPrefix, "rbac.")
	f := &HTTPFilter{pr: fc.PerRoute(), log: fc.Logger}
	var err error
	if f.enforced, err = newRuleSet("rules", cfg.GetRules(), engine.HTTP, fc.Stats, base, cfg.GetRulesStatPrefix(), false, cfg.GetTrackPerRuleStats()); err != nil {
		return nil, err
	}
	if f.shadow, err = newRuleSet("shadow_rules", cfg.GetShadowRules(), engine.HTTP, fc.Stats, base, cfg.GetShadowRulesStatPrefix(), true, cfg.GetTrackPerRuleStats()); err != nil {
		return nil, err
	}
	if f.enforced != nil {
		f.details = denyDetails(f.enforced.engine)
	}
	// A route's rules are counted with the filter's counters, which exist
	// whether the filter has rules of its own or not.
	f.routeStats = counters{
		allowed: fc.Stats.Counter(kit.StatPrefixJoin(kit.StatPrefixJoin(base, cfg.GetRulesStatPrefix()), "allowed")),
		denied:  fc.Stats.Counter(kit.StatPrefixJoin(kit.StatPrefixJoin(base, cfg.GetRulesStatPrefix()), "denied")),
	}
	f.routeShadowStats = counters{
		allowed: fc.Stats.Counter(kit.StatPrefixJoin(kit.StatPrefixJoin(base, cfg.GetShadowRulesStatPrefix()), "shadow_allowed")),
		denied:  fc.Stats.Counter(kit.StatPrefixJoin(kit.StatPrefixJoin(base, cfg.GetShadowRulesStatPrefix()), "shadow_denied")),
	}
	return f, nil
}

// RouteConfigType implements filter.RouteConfigFactory.
func (HTTPFactory) RouteConfigType() proto.Message { return &httprbacv3.RBACPerRoute{} }

// NewRouteConfig implements filter.RouteConfigFactory: an RBACPerRoute's rbac
// replaces the filter's rules and shadow rules on the route (no rbac: none,
// the filter allows everything there), as in Envoy. Its stat prefixes and
// track_per_rule_stats are ignored, as Envoy ignores them: the filter's
// counters count.
func (HTTPFactory) NewRouteConfig(m proto.Message, _ *filter.Context) (any, error) {
	cfg := m.(*httprbacv3.RBACPerRoute)
	if err := cfgerr.OnlyFields(cfg, "rbac"); err != nil {
		return nil, err
	}
	rr := &routeRules{}
	pb := cfg.GetRbac()
	if pb == nil {
		return rr, nil
	}
	if err := cfgerr.OnlyFields(pb, "rules", "rules_stat_prefix", "shadow_rules", "shadow_rules_stat_prefix", "track_per_rule_stats"); err != nil {
		return nil, cfgerr.Field("rbac", err)
	}
	var err error
	if pb.GetRules() != nil {
		if rr.enforced, err = engine.New(pb.GetRules(), engine.HTTP); err != nil {
			return nil, cfgerr.Field("rbac.rules", err)
		}
		rr.details = denyDetails(rr.enforced)
	}
	if pb.GetShadowRules() != nil {
		if rr.shadow, err = engine.New(pb.GetShadowRules(), engine.HTTP); err != nil {
			return nil, cfgerr.Field("rbac.shadow_rules", err)
		}
	}
	return rr, nil
}

// routeRules are a route's RBACPerRoute.
type routeRules struct {
	enforced, shadow *engine.Engine // nil when not configured
	details          []string       // per policy of enforced, then "none"
}

// HTTPFilter is a built envoy.filters.http.rbac filter.
type HTTPFilter struct {
	enforced, shadow *ruleSet // nil when not configured
	details          []string // per policy of enforced, then "none"
	pr               filter.PerRoute
	log              *slog.Logger

	// The counters of a route's rules (no per-policy ones).
	routeStats, routeShadowStats counters
}

// PerRoute implements filter.RouteAware.
func (f *HTTPFilter) PerRoute() filter.PerRoute { return f.pr }

// OnRequest implements http.Filter: shadow rules are evaluated and counted;
// enforced rules decide, a denial answered with 403 "RBAC: access denied" and
// the details rbac_access_denied_matched_policy[<policy>|none]. A route's
// RBACPerRoute replaces the filter's rules.
func (f *HTTPFilter) OnRequest(e *http.Exchange) http.Action {
	pf, on := f.pr.Lookup(e)
	if !on {
		return http.Continue
	}
	if rr, ok := pf.Config().(*routeRules); ok {
		return f.onRequestRoute(e, rr)
	}
	var in engine.Input
	fill(&in, e)
	if f.shadow != nil {
		allowed, policy := f.shadow.engine.Evaluate(&in)
		f.shadow.stats.count(allowed, policy)
	}
	if f.enforced == nil {
		return http.Continue
	}
	allowed, policy := f.enforced.engine.Evaluate(&in)
	f.enforced.stats.count(allowed, policy)
	if allowed {
		return http.Continue
	}
	return f.deny(e, f.details, policy)
}

// onRequestRoute is OnRequest with a route's rules.
func (f *HTTPFilter) onRequestRoute(e *http.Exchange, rr *routeRules) http.Action {
	if rr.enforced == nil && rr.shadow == nil {
		return http.Continue
	}
	var in engine.Input
	fill(&in, e)
	if rr.shadow != nil {
		allowed, _ := rr.shadow.Evaluate(&in)
		f.routeShadowStats.count(allowed, -1)
	}
	if rr.enforced == nil {
		return http.Continue
	}
	allowed, policy := rr.enforced.Evaluate(&in)
	f.routeStats.count(allowed, -1)
	if allowed {
		return http.Continue
	}
	return f.deny(e, rr.details, policy)
}

// deny answers a denied request; details are the engine's denyDetails.
func (f *HTTPFilter) deny(e *http.Exchange, details []string, policy int) http.Action {
	detail := details[len(details)-1]
	if policy >= 0 {
		detail = details[policy]
	}
	if err := e.LocalReply(403, DeniedBody, detail, 0); err != nil {
		f.log.Debug("rbac: sending the 403 failed", "error", err)
	}
	return http.Stop
}

// fill sets in from an exchange: its headers, the addresses the connection
// manager recorded (DownstreamLocal for the destination, DownstreamRemote as
// remote_ip), the downstream TLS session (DownstreamTLS, for authenticated),
// and what the connection knows (source_ip, direct_remote_ip,
// requested_server_name, and its TLS session if the manager recorded none)
// when the manager put it in the exchange's context (filter.WithConn).
// Without a connection, source_ip and direct_remote_ip fall back to
// DownstreamRemote.
func fill(in *engine.Input, e *http.Exchange) {
	in.Headers = e.Request
	in.Local = e.Info.DownstreamLocal
	in.Remote = e.Info.DownstreamRemote
	in.Source, in.DirectRemote = in.Remote, in.Remote
	in.TLS = e.Info.DownstreamTLS
	if c := filter.ConnFrom(e.Context()); c != nil {
		in.Source, in.DirectRemote, in.ServerName = c.Remote, c.DirectRemote, c.ServerName
		if !in.Local.IsValid() {
			in.Local = c.Local
		}
		if !in.Remote.IsValid() {
			in.Remote = c.Remote
		}
		if in.TLS == nil {
			in.TLS = c.TLS
		}
	}
}
