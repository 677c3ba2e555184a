// Package istioalpn is Istio's istio.alpn HTTP filter
// (istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig, an istio-proxy
// extension istiod puts in every gateway and sidecar HTTP filter chain).
//
// In istio-proxy the filter looks at the protocol a request will use
// upstream (HTTP/1.0, HTTP/1.1, HTTP/2) and stores the matching
// alpn_override list in the request's filter state, where the upstream TLS
// transport socket takes it as the ALPN to offer (istio-http/1.1, istio-h2,
// ... so that the peer sidecar knows it talks to a mesh proxy). It changes
// nothing else: not the request, not the routing, and nothing at all on a
// plaintext upstream connection, which negotiates no ALPN.
//
// skiff does the same through the exchange's http.ALPNOverride: the router
// asks the filter for the list of the protocol it sends the request in, and
// the request's connection pool (one per list) offers it on its TLS
// connections instead of the context's alpn_protocols. A sidecar at the
// other end then picks its HTTP filter chain (istio-http/1.1, istio-h2),
// where the context's own list (istio-peer-exchange, istio) would take it
// to its TCP chain and its in-band metadata exchange.
package istioalpn

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Name is the filter's name in istiod's resources.
const Name = "istio.alpn"

// Factory builds the filter.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return istiotypes.New(istiotypes.AlpnFilterConfig) }

// Filter is a built istio.alpn filter. Overrides are its alpn_override
// lists by upstream protocol (HTTP10, HTTP11, HTTP2), and keys each list
// joined, for pool lookups.
type Filter struct {
	Overrides map[string][]string
	keys      map[string]string
}

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, _ *filter.Context) (http.Filter, error) {
	if err := cfgerr.OnlyFields(m, "alpn_override"); err != nil {
		return nil, err
	}
	r := m.ProtoReflect()
	list := r.Get(r.Descriptor().Fields().ByName("alpn_override")).List()
	f := &Filter{Overrides: map[string][]string{}, keys: map[string]string{}}
	for i := range list.Len() {
		o := list.Get(i).Message()
		if err := cfgerr.OnlyFields(o.Interface(), "upstream_protocol", "alpn_override"); err != nil {
			return nil, cfgerr.Index("alpn_override", i, err)
		}
		fds := o.Descriptor().Fields()
		ev := o.Get(fds.ByName("upstream_protocol")).Enum()
		evd := fds.ByName("upstream_protocol").Enum().Values().ByNumber(ev)
		if evd == nil {
			return nil, cfgerr.Errorf(fmt.Sprintf("alpn_override[%d].upstream_protocol", i), "unknown protocol %d", ev)
		}
		proto := string(evd.Name())
		if _, dup := f.Overrides[proto]; dup {
			return nil, cfgerr.Errorf(fmt.Sprintf("alpn_override[%d].upstream_protocol", i), "%s is given twice", proto)
		}
		var alpn []string
		vals := o.Get(fds.ByName("alpn_override")).List()
		for j := range vals.Len() {
			alpn = append(alpn, vals.Get(j).String())
		}
		f.Overrides[proto] = alpn
		f.keys[proto] = strings.Join(alpn, ",")
	}
	return f, nil
}

// OnRequest implements http.Filter: the exchange's upstream TLS offers the
// filter's list.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	if len(f.Overrides) > 0 {
		e.ALPN = f
	}
	return http.Continue
}

// ApplicationProtocols implements http.ALPNOverride.
func (f *Filter) ApplicationProtocols(http2, http10 bool) ([]string, string) {
	proto := "HTTP11"
	switch {
	case http2:
		proto = "HTTP2"
	case http10:
		proto = "HTTP10"
	}
	return f.Overrides[proto], f.keys[proto]
}
