// Package metadataexchange is Istio's TCP metadata exchange filter,
// istio.metadata_exchange with an envoy.tcp.metadataexchange.config.MetadataExchange
// config (istio-proxy's extension; istiod sends it inside a
// udpa.type.v1.TypedStruct), as a network filter of a listener and as an
// upstream network filter of a cluster (Cluster.filters).
//
// As in istio-proxy, the filter exchanges workload metadata with the peer
// proxy in-band, but only on a connection whose ALPN is the config's
// protocol (istio-peer-exchange), which only Istio mutual TLS negotiates
// (TCP proxied to a sidecar; HTTP offers istio-http/1.1 instead, see
// istio.alpn). On any other connection it counts
// metadata_exchange.alpn_protocol_not_found and lets the bytes through
// untouched.
//
// The exchange: each side writes an initial header (a magic number and the
// data's length, big-endian) and a google.protobuf.Any holding a Struct of
// its workload metadata (x-envoy-peer-metadata) and node id
// (x-envoy-peer-metadata-id), then reads the peer's, before any byte of the
// stream. skiff writes its own at once on both ends (istio-proxy writes it
// when the first byte flows either way, which a peer answers the same), and
// reads the peer's before the proxy starts. The peer's metadata is checked
// and dropped: skiff has no telemetry filter to use it. Where istio-proxy
// would let a stream whose peer sent no valid header through (a peer
// without the filter), skiff closes the connection: the bytes it read to
// find out are gone, and the peer expects the exchange anyway.
package metadataexchange

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiometa"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's name in istiod's resources.
const Name = "istio.metadata_exchange"

const (
	// magic starts the exchange's initial header.
	magic = 0x3D230467
	// maxData bounds the peer's metadata (istio-proxy's are a few hundred
	// bytes).
	maxData = 1 << 20
	// exchangeTimeout bounds the wait for the peer's metadata.
	exchangeTimeout = 10 * time.Second
)

// ErrExchange wraps the errors of a failed exchange.
var ErrExchange = errors.New("istio metadata exchange failed")

// Stats are istio-proxy's metadata_exchange.* counters.
type Stats struct {
	ALPNNotFound, ALPNFound, MetadataAdded, InitialHeaderNotFound, HeaderNotFound stats.Counter
}

// Filter is a built filter.
type Filter struct {
	protocol string
	frame    []byte // the initial header and metadata skiff sends
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
	var err error
	if f.frame, err = frame(fc, istiometa.AdditionalLabels(r)); err != nil {
		return nil, cfgerr.Errorf("additional_labels", "encoding the node's metadata: %v", err)
	}
	st := fc.Stats
	if st == nil {
		st = stats.NewStore()
	}
	f.stats = Stats{
		ALPNNotFound:          st.Counter("metadata_exchange.alpn_protocol_not_found"),
		ALPNFound:             st.Counter("metadata_exchange.alpn_protocol_found"),
		MetadataAdded:         st.Counter("metadata_exchange.metadata_added"),
		InitialHeaderNotFound: st.Counter("metadata_exchange.initial_header_not_found"),
		HeaderNotFound:        st.Counter("metadata_exchange.header_not_found"),
	}
	return f, nil
}

// frame is what skiff sends: the initial header, then an Any of the Struct
// of the node's workload metadata and id.
func frame(fc *filter.Context, labels []string) ([]byte, error) {
	w, err := istiometa.Workload(fc.Node, labels)
	if err != nil {
		return nil, err
	}
	data := &structpb.Struct{Fields: map[string]*structpb.Value{istiometa.KeyMetadata: structpb.NewStructValue(w)}}
	if id := fc.Node.GetId(); id != "" {
		data.Fields[istiometa.KeyID] = structpb.NewStringValue(id)
	}
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(data)
	if err != nil {
		return nil, err
	}
	a, err := proto.MarshalOptions{Deterministic: true}.Marshal(&anypb.Any{TypeUrl: "type.googleapis.com/google.protobuf.Struct", Value: value})
	if err != nil {
		return nil, err
	}
	out := binary.BigEndian.AppendUint32(nil, magic)
	out = binary.BigEndian.AppendUint32(out, uint32(len(a)))
	return append(out, a...), nil
}

func field(r protoreflect.Message, name string) protoreflect.FieldDescriptor {
	return r.Descriptor().Fields().ByName(protoreflect.Name(name))
}

// handle is the filter's whole effect on a connection c whose negotiated
// ALPN is alpn: without the exchange's protocol it passes the connection
// through, with it it exchanges metadata with the peer.
func (f *Filter) handle(c net.Conn, alpn string) error {
	if alpn != f.protocol {
		f.stats.ALPNNotFound.Inc()
		return nil
	}
	f.stats.ALPNFound.Inc()
	return f.exchange(c)
}

// exchange writes the node's metadata to c and reads the peer's, leaving c
// at the first byte of the stream.
func (f *Filter) exchange(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(exchangeTimeout)); err != nil {
		return fmt.Errorf("%w: %w", ErrExchange, err)
	}
	if _, err := c.Write(f.frame); err != nil {
		return fmt.Errorf("%w: writing the metadata: %w", ErrExchange, err)
	}
	f.stats.MetadataAdded.Inc()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		f.stats.InitialHeaderNotFound.Inc()
		return fmt.Errorf("%w: reading the peer's initial header: %w", ErrExchange, err)
	}
	if binary.BigEndian.Uint32(hdr[:4]) != magic {
		f.stats.InitialHeaderNotFound.Inc()
		return fmt.Errorf("%w: the peer sent no initial header (magic %#x): is its TCP metadata exchange filter missing?", ErrExchange, binary.BigEndian.Uint32(hdr[:4]))
	}
	n := binary.BigEndian.Uint32(hdr[4:])
	if n > maxData {
		f.stats.HeaderNotFound.Inc()
		return fmt.Errorf("%w: the peer's metadata would take %d bytes", ErrExchange, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c, data); err != nil {
		f.stats.HeaderNotFound.Inc()
		return fmt.Errorf("%w: reading the peer's metadata: %w", ErrExchange, err)
	}
	var a anypb.Any
	var s structpb.Struct
	if err := proto.Unmarshal(data, &a); err != nil || a.UnmarshalTo(&s) != nil {
		f.stats.HeaderNotFound.Inc()
		return fmt.Errorf("%w: the peer's metadata is not a google.protobuf.Struct in an Any", ErrExchange)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("%w: %w", ErrExchange, err)
	}
	return nil
}

// OnConnection implements filter.NetworkFilter.
func (f *Filter) OnConnection(_ context.Context, c *filter.Conn) error {
	alpn := ""
	if c.TLS != nil {
		alpn = c.TLS.NegotiatedProtocol
	}
	return f.handle(c.Conn, alpn)
}

// UpstreamConnected implements upstream.ConnFilter.
func (f *Filter) UpstreamConnected(c net.Conn, alpn string) error {
	return f.handle(c, alpn)
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
