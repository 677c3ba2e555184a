package istioalpn

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/dataplane/http"
)

// TestOverride: istiod's config (as pushed to a gateway) makes each
// exchange's upstream TLS offer the list of the protocol the router sends
// it in; a config without overrides leaves the exchange alone.
func TestOverride(t *testing.T) {
	m := istiotypes.New(istiotypes.AlpnFilterConfig)
	if err := protojson.Unmarshal([]byte(`{"alpnOverride": [
		{"alpnOverride": ["istio-http/1.0", "istio", "http/1.0"]},
		{"upstreamProtocol": "HTTP11", "alpnOverride": ["istio-http/1.1", "istio", "http/1.1"]},
		{"upstreamProtocol": "HTTP2", "alpnOverride": ["istio-h2", "istio", "h2"]}]}`), m); err != nil {
		t.Fatal(err)
	}
	hf, err := Factory{}.Create(m, &filter.Context{})
	if err != nil {
		t.Fatal(err)
	}
	e := &http.Exchange{}
	hf.OnRequest(e)
	if e.ALPN == nil {
		t.Fatal("the exchange has no ALPN override")
	}
	for _, tt := range []struct {
		http2, http10 bool
		want          []string
	}{
		{false, false, []string{"istio-http/1.1", "istio", "http/1.1"}},
		{true, false, []string{"istio-h2", "istio", "h2"}},
		{false, true, []string{"istio-http/1.0", "istio", "http/1.0"}},
	} {
		got, key := e.ALPN.ApplicationProtocols(tt.http2, tt.http10)
		if !slices.Equal(got, tt.want) || key != tt.want[0]+","+tt.want[1]+","+tt.want[2] {
			t.Errorf("http2 %v http10 %v: %q (key %q), want %q", tt.http2, tt.http10, got, key, tt.want)
		}
	}
	empty, err := Factory{}.Create(istiotypes.New(istiotypes.AlpnFilterConfig), &filter.Context{})
	if err != nil {
		t.Fatal(err)
	}
	e = &http.Exchange{}
	empty.OnRequest(e)
	if e.ALPN != nil {
		t.Error("a config without overrides set an ALPN override")
	}
}
