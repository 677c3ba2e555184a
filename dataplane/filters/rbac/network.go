package rbac

import (
	"context"
	"time"

	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kit"
	"github.com/skiffproxy/skiff/dataplane/filters/rbac/engine"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// NetworkFactory builds envoy.filters.network.rbac filters.
type NetworkFactory struct{}

// Name implements filter.Factory.
func (NetworkFactory) Name() string { return NetworkName }

// ConfigType implements filter.Factory.
func (NetworkFactory) ConfigType() proto.Message { return &netrbacv3.RBAC{} }

// Create implements filter.NetworkFactory.
func (NetworkFactory) Create(m proto.Message, fc *filter.Context) (filter.NetworkFilter, error) {
	cfg := m.(*netrbacv3.RBAC)
	if err := cfgerr.OnlyFields(cfg, "rules", "shadow_rules", "shadow_rules_stat_prefix", "stat_prefix", "enforcement_type", "delay_deny"); err != nil {
		return nil, err
	}
	switch cfg.GetEnforcementType() {
	case netrbacv3.RBAC_ONE_TIME_ON_FIRST_BYTE, netrbacv3.RBAC_CONTINUOUS:
	default:
		return nil, cfgerr.Errorf("enforcement_type", "unknown type %d", cfg.GetEnforcementType())
	}
	base := kit.StatPrefixJoin(cfg.GetStatPrefix(), "rbac.")
	f := &NetworkFilter{}
	var err error
	if f.enforced, err = newRuleSet("rules", cfg.GetRules(), engine.Network, fc.Stats, base, "", false, false); err != nil {
		return nil, err
	}
	if f.shadow, err = newRuleSet("shadow_rules", cfg.GetShadowRules(), engine.Network, fc.Stats, base, cfg.GetShadowRulesStatPrefix(), true, false); err != nil {
		return nil, err
	}
	if d := cfg.GetDelayDeny(); d != nil {
		f.delay = d.AsDuration()
		if f.delay < 0 {
			return nil, cfgerr.Errorf("delay_deny", "must not be negative")
		}
	}
	if f.enforced != nil {
		for _, name := range append(f.enforced.engine.Policies(), "") {
			f.errs = append(f.errs, &DeniedError{Policy: name})
		}
	}
	return f, nil
}

// NetworkFilter is a built envoy.filters.network.rbac filter. It decides when a
// connection's filter chain starts: after the listener filters (the SNI is
// known) and the chain's TLS handshake (the peer certificate is known, for
// authenticated), before the terminal filter runs. Envoy decides later, on
// the connection's first bytes (onData): the rules see the same attributes
// then, but a connection that never sends anything is counted here and not in
// Envoy, and a denied one never reaches the terminal filter, whereas Envoy's
// tcp_proxy has already connected upstream by the time its RBAC filter closes
// the connection. CONTINUOUS is accepted and decides the same, since nothing
// the supported rules look at changes during a connection.
type NetworkFilter struct {
	enforced, shadow *ruleSet
	delay            time.Duration
	errs             []error // per policy of enforced, then none
}

// DeniedError is what OnConnection returns for a denied connection.
type DeniedError struct {
	// Policy is the policy that matched, or "" for none.
	Policy string
}

func (e *DeniedError) Error() string {
	if e.Policy == "" {
		return "rbac: connection denied (no policy matched)"
	}
	return "rbac: connection denied by policy " + e.Policy
}

// OnConnection implements filter.NetworkFilter: a denied connection is
// closed (after delay_deny, if set, unless ctx ends first).
func (f *NetworkFilter) OnConnection(ctx context.Context, c *filter.Conn) error {
	in := engine.Input{Local: c.Local, Source: c.Remote, DirectRemote: c.DirectRemote, Remote: c.Remote, ServerName: c.ServerName, TLS: c.TLS}
	if f.shadow != nil {
		allowed, policy := f.shadow.engine.Evaluate(&in)
		f.shadow.stats.count(allowed, policy)
	}
	if f.enforced == nil {
		return nil
	}
	allowed, policy := f.enforced.engine.Evaluate(&in)
	f.enforced.stats.count(allowed, policy)
	if allowed {
		return nil
	}
	if f.delay > 0 {
		t := time.NewTimer(f.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if policy < 0 {
		return f.errs[len(f.errs)-1]
	}
	return f.errs[policy]
}
