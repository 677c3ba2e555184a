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
	f := &HTTPFilter{log: fc.Logger}
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
	return f, nil
}

// HTTPFilter is a built envoy.filters.http.rbac filter.
type HTTPFilter struct {
	enforced, shadow *ruleSet // nil when not configured
	details          []string // per policy of enforced, then "none"
	log              *slog.Logger
}

// OnRequest implements http.Filter: shadow rules are evaluated and counted;
// enforced rules decide, a denial answered with 403 "RBAC: access denied" and
// the details rbac_access_denied_matched_policy[<policy>|none].
func (f *HTTPFilter) OnRequest(e *http.Exchange) http.Action {
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
	detail := f.details[len(f.details)-1]
	if policy >= 0 {
		detail = f.details[policy]
	}
	if err := e.LocalReply(403, DeniedBody, detail, 0); err != nil {
		f.log.Debug("rbac: sending the 403 failed", "error", err)
	}
	return http.Stop
}

// fill sets in from an exchange: its headers, the addresses the connection
// manager recorded (DownstreamLocal for the destination, DownstreamRemote as
// remote_ip), and what the connection knows (source_ip, direct_remote_ip,
// requested_server_name) when the manager put it in the exchange's context
// (filter.WithConn). Without a connection, source_ip and direct_remote_ip
// fall back to DownstreamRemote.
func fill(in *engine.Input, e *http.Exchange) {
	in.Headers = e.Request
	in.Local = e.Info.DownstreamLocal
	in.Remote = e.Info.DownstreamRemote
	in.Source, in.DirectRemote = in.Remote, in.Remote
	if c := filter.ConnFrom(e.Context()); c != nil {
		in.Source, in.DirectRemote, in.ServerName = c.Remote, c.DirectRemote, c.ServerName
		if !in.Local.IsValid() {
			in.Local = c.Local
		}
		if !in.Remote.IsValid() {
			in.Remote = c.Remote
		}
	}
}
