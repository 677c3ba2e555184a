// Package rbac is the role-based access control filters:
// envoy.filters.http.rbac, which answers a denied request with 403, and
// envoy.filters.network.rbac, which closes a denied connection. Both compile
// their envoy.config.rbac.v3.RBAC rules with package engine.
package rbac

import (
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"

	"github.com/skiffproxy/skiff/dataplane/filters/internal/kit"
	"github.com/skiffproxy/skiff/dataplane/filters/rbac/engine"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Names of the filters.
const (
	HTTPName    = "envoy.filters.http.rbac"
	NetworkName = "envoy.filters.network.rbac"
)

// counters are the stats of one engine (enforced or shadow), with one pair per
// policy when per-rule stats are on.
type counters struct {
	allowed, denied stats.Counter
	perPolicy       []policyCounters // nil unless track_per_rule_stats
}

type policyCounters struct{ allowed, denied stats.Counter }

// count records a decision.
func (c *counters) count(allowed bool, policy int) {
	if allowed {
		c.allowed.Inc()
	} else {
		c.denied.Inc()
	}
	if c.perPolicy != nil && policy >= 0 {
		if allowed {
			c.perPolicy[policy].allowed.Inc()
		} else {
			c.perPolicy[policy].denied.Inc()
		}
	}
}

// ruleSet is a compiled engine with its stats.
type ruleSet struct {
	engine *engine.Engine
	stats  counters
}

// newRuleSet compiles rules (nil: none) with stats named as Envoy's
// generateStats names them: <prefix>rbac.[<rules_prefix>.]allowed and
// ...denied (shadow_allowed and shadow_denied for shadow rules), and per
// policy ...policy.<name>.allowed.
func newRuleSet(field string, rules *rbacv3.RBAC, mode engine.Mode, st *stats.Store, base, rulesPrefix string, shadow, perRule bool) (*ruleSet, error) {
	if rules == nil {
		return nil, nil
	}
	e, err := engine.New(rules, mode)
	if err != nil {
		return nil, cfgerr.Field(field, err)
	}
	prefix := kit.StatPrefixJoin(base, rulesPrefix)
	allowed, denied := "allowed", "denied"
	if shadow {
		allowed, denied = "shadow_allowed", "shadow_denied"
	}
	rs := &ruleSet{engine: e, stats: counters{
		allowed: st.Counter(kit.StatPrefixJoin(prefix, allowed)),
		denied:  st.Counter(kit.StatPrefixJoin(prefix, denied)),
	}}
	if perRule {
		pp := kit.StatPrefixJoin(prefix, "policy.")
		for _, name := range e.Policies() {
			rs.stats.perPolicy = append(rs.stats.perPolicy, policyCounters{
				allowed: st.Counter(pp + name + "." + allowed),
				denied:  st.Counter(pp + name + "." + denied),
			})
		}
	}
	return rs, nil
}

// denyDetails returns the response code details of a denial by each policy of
// e, and (last) by none: Envoy's responseDetail, built once.
func denyDetails(e *engine.Engine) []string {
	names := e.Policies()
	out := make([]string, 0, len(names)+1)
	for _, name := range append(names, "none") {
		out = append(out, "rbac_access_denied_matched_policy["+sanitize(name)+"]")
	}
	return out
}

// sanitize replaces whitespace in a policy name with '_', as Envoy does so
// that access logs keep their field count.
func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\v', '\f', '\r':
			return '_'
		}
		return r
	}, name)
}
