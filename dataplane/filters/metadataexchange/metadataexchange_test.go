package metadataexchange

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/internal/stats"
)

// TestExchangeRefused: a connection without the exchange's ALPN passes;
// one that negotiated it fails (skiff does not implement the exchange),
// each counted as istio-proxy counts them.
func TestExchangeRefused(t *testing.T) {
	st := stats.NewStore()
	if _, err := create(istiotypes.New(istiotypes.MetadataExchange), &filter.Context{Stats: st}); err == nil {
		t.Fatal("a config without protocol was accepted")
	}
	m := istiotypes.New(istiotypes.MetadataExchange)
	r := m.ProtoReflect()
	r.Set(r.Descriptor().Fields().ByName("protocol"), protoreflect.ValueOfString("istio-peer-exchange"))
	f, err := create(m, &filter.Context{Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	for _, alpn := range []string{"", "istio-http/1.1", "istio"} {
		if err := f.UpstreamConnected(nil, alpn); err != nil {
			t.Errorf("ALPN %q: %v", alpn, err)
		}
	}
	if err := f.UpstreamConnected(nil, "istio-peer-exchange"); !errors.Is(err, ErrExchangeUnsupported) {
		t.Errorf("ALPN istio-peer-exchange: %v, want ErrExchangeUnsupported", err)
	}
	if f.stats.ALPNNotFound.Value() != 3 || f.stats.ALPNFound.Value() != 1 {
		t.Errorf("alpn_protocol_not_found %d, alpn_protocol_found %d; want 3 and 1", f.stats.ALPNNotFound.Value(), f.stats.ALPNFound.Value())
	}
}
