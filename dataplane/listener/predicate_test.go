package listener

import (
	"context"
	"net/netip"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

// countingFilter counts the connections it was run on.
type countingFilter struct{ n *int }

func (f countingFilter) OnAccept(context.Context, *filter.Conn) error { *f.n++; return nil }

// TestFilterDisabled: a listener filter's filter_disabled predicate, as
// istiod writes them (the HTTP inspector off for ports whose protocol it
// knows), decides per connection on its destination port whether the filter
// runs.
func TestFilterDisabled(t *testing.T) {
	var p listenerv3.ListenerFilterChainMatchPredicate
	// Off for 15006 and for 80..89, except 85.
	if err := protoyaml.Unmarshal([]byte(`
or_match:
  rules:
  - destination_port_range: { start: 15006, end: 15007 }
  - and_match:
      rules:
      - destination_port_range: { start: 80, end: 90 }
      - not_match: { destination_port_range: { start: 85, end: 86 } }
`), &p); err != nil {
		t.Fatal(err)
	}
	disabled, err := compilePredicate(&p)
	if err != nil {
		t.Fatal(err)
	}
	var ran int
	f := disabledWhen{countingFilter{&ran}, disabled}
	for port, want := range map[uint16]bool{15006: true, 15007: false, 80: true, 89: true, 85: false, 90: false, 8080: false} {
		before := ran
		c := &filter.Conn{Local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port)}
		if err := f.OnAccept(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		if skipped := ran == before; skipped != want {
			t.Errorf("port %d: skipped %v, want %v", port, skipped, want)
		}
	}
	if _, err := compilePredicate(&listenerv3.ListenerFilterChainMatchPredicate{Rule: &listenerv3.ListenerFilterChainMatchPredicate_NotMatch{
		NotMatch: &listenerv3.ListenerFilterChainMatchPredicate{}}}); cfgerr.PathOf(err) != "not_match" {
		t.Errorf("an empty rule: %v at %q, want an error at not_match", err, cfgerr.PathOf(err))
	}
}
