// Package metadataexchange is Istio's TCP metadata exchange filter,
// istio.metadata_exchange with an envoy.tcp.metadataexchange.config.MetadataExchange
// config (istio-proxy's extension; istiod sends it inside a
// udpa.type.v1.TypedStruct), as a network filter of a listener and as an
// upstream network filter of a cluster (Cluster.filters).
//
// In istio-proxy the filter exchanges workload metadata with the peer proxy
// in-band, but only on a connection whose ALPN is the config's protocol
// (istio-peer-exchange), which only Istio mutual TLS negotiates. On any other
// connection it counts metadata_exchange.alpn_protocol_not_found and lets
// the bytes through untouched, as skiff does. skiff does not implement the
// exchange: a connection that negotiated the protocol (mTLS with a sidecar
// that picked istio-peer-exchange) is counted in
// metadata_exchange.alpn_protocol_found and closed, since its peer expects
// the exchange's bytes first and passing the stream through would corrupt
// it. HTTP to a sidecar does not get there: istio.alpn makes it offer
// istio-http/1.1 or istio-h2 instead.
package metadataexchange

import (
	"context"
	"errors"
	"net"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's name in istiod's resources.
const Name = "istio.metadata_exchange"

// Stats are istio-proxy's metadata_exchange.* counters.
type Stats struct {
	ALPNNotFound, ALPNFound stats.Counter
}

// Filter is a built filter.
type Filter struct {
	protocol string
	stats    Stats
}

func create(m proto.Message, fc *filter.Context) (*Filter, error) {
	if err := cfgerr.OnlyFields(m, "protocol", "enable_discovery", "additional_labels"); err != nil {
		return nil, err
	}
	r := m.ProtoReflect()
	f := &Filter{protocol: r.Get(field(r, "protocol")).String()}
	if f.protocol == "" {
		return nil, cfgerr.Errorf("protocol", "must be set (istiod sends istio-peer-exchange)")
	}
	st := fc.Stats
	if st == nil {
		st = stats.NewStore()
	}
	f.stats = Stats{
		ALPNNotFound: st.Counter("metadata_exchange.alpn_protocol_not_found"),
		ALPNFound:    st.Counter("metadata_exchange.alpn_protocol_found"),
	}
	return f, nil
}

func field(r protoreflect.Message, name string) protoreflect.FieldDescriptor {
	return r.Descriptor().Fields().ByName(protoreflect.Name(name))
}

// ErrExchangeUnsupported is the error of a connection that negotiated the
// exchange's protocol.
var ErrExchangeUnsupported = errors.New("the connection negotiated Istio's metadata exchange (ALPN istio-peer-exchange), which skiff does not implement; closing it rather than corrupting its stream")

// check is the filter's whole effect on a connection whose negotiated ALPN
// is alpn: without the exchange protocol it passes the connection through,
// with it the connection fails.
func (f *Filter) check(alpn string) error {
	if alpn != f.protocol {
		f.stats.ALPNNotFound.Inc()
		return nil
	}
	f.stats.ALPNFound.Inc()
	return ErrExchangeUnsupported
}

// OnConnection implements filter.NetworkFilter.
func (f *Filter) OnConnection(_ context.Context, c *filter.Conn) error {
	alpn := ""
	if c.TransportProtocol == "tls" && len(c.ApplicationProtocols) > 0 {
		alpn = c.ApplicationProtocols[0]
	}
	return f.check(alpn)
}

// UpstreamConnected implements upstream.ConnFilter.
func (f *Filter) UpstreamConnected(_ net.Conn, alpn string) error {
	return f.check(alpn)
}

// NetworkFactory builds the filter for a listener's filter chain.
type NetworkFactory struct{}

// Name implements filter.Factory.
func (NetworkFactory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (NetworkFactory) ConfigType() proto.Message { return istiotypes.New(istiotypes.MetadataExchange) }

// Create implements filter.NetworkFactory.
func (NetworkFactory) Create(m proto.Message, fc *filter.Context) (filter.NetworkFilter, error) {
	return create(m, fc)
}

// UpstreamFactory builds the filter for a cluster's filters.
type UpstreamFactory struct{}

// Name implements filter.Factory.
func (UpstreamFactory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (UpstreamFactory) ConfigType() proto.Message { return istiotypes.New(istiotypes.MetadataExchange) }

// Create implements filter.UpstreamNetworkFactory.
func (UpstreamFactory) Create(m proto.Message, fc *filter.Context) (upstream.ConnFilter, error) {
	return create(m, fc)
}
