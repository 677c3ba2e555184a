// Package tlsinspector is the listener filter envoy.filters.listener.tls_inspector:
// it peeks at a new connection's first bytes and, when they are a TLS
// ClientHello, sets the connection's transport protocol to "tls" and its server
// name (SNI) and application protocols (ALPN) from it, so that filter chains
// can match on server_names, transport_protocol and application_protocols.
// Nothing is consumed: the ClientHello stays in the socket for the chain's
// terminal filter (a tcp_proxy passing TLS through, typically).
package tlsinspector

import (
	"context"
	"errors"
	"fmt"
	"strings"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/peek"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.listener.tls_inspector"

// DefaultMaxClientHelloSize is Envoy's limit on the bytes the inspector reads
// for a ClientHello (TLS_MAX_CLIENT_HELLO, max_client_hello_size's default and
// upper bound).
const DefaultMaxClientHelloSize = 16384

// Factory builds tls_inspector filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &tlsv3.TlsInspector{} }

// Create implements filter.ListenerFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (filter.ListenerFilter, error) {
	cfg := m.(*tlsv3.TlsInspector)
	if err := cfgerr.OnlyFields(cfg, "enable_ja3_fingerprinting", "enable_ja4_fingerprinting", "initial_read_buffer_size",
		"close_connection_on_client_hello_parsing_errors", "max_client_hello_size"); err != nil {
		return nil, err
	}
	if cfg.GetEnableJa3Fingerprinting().GetValue() {
		return nil, cfgerr.Errorf("enable_ja3_fingerprinting", "JA3 fingerprinting is not supported by skiff (false is)")
	}
	if cfg.GetEnableJa4Fingerprinting().GetValue() {
		return nil, cfgerr.Errorf("enable_ja4_fingerprinting", "JA4 fingerprinting is not supported by skiff (false is)")
	}
	f := &Filter{max: DefaultMaxClientHelloSize, closeOnError: cfg.GetCloseConnectionOnClientHelloParsingErrors()}
	if v := cfg.GetMaxClientHelloSize(); v != nil {
		if v.GetValue() <= 255 || v.GetValue() > DefaultMaxClientHelloSize { // also checked by the proto's rules
			return nil, cfgerr.Errorf("max_client_hello_size", "must be in (255, %d]", DefaultMaxClientHelloSize)
		}
		f.max = int(v.GetValue())
	}
	f.initial = f.max
	if v := cfg.GetInitialReadBufferSize(); v != nil {
		f.initial = min(int(v.GetValue()), f.max)
	}
	st := fc.Stats
	if st == nil {
		st = stats.NewStore()
	}
	// Envoy roots the filter's stats at tls_inspector. in the listener
	// factory's (global) scope.
	const p = "tls_inspector."
	f.stats = filterStats{
		tooLarge:     st.Counter(p + "client_hello_too_large"),
		tlsFound:     st.Counter(p + "tls_found"),
		tlsNotFound:  st.Counter(p + "tls_not_found"),
		alpnFound:    st.Counter(p + "alpn_found"),
		alpnNotFound: st.Counter(p + "alpn_not_found"),
		sniFound:     st.Counter(p + "sni_found"),
		sniNotFound:  st.Counter(p + "sni_not_found"),
	}
	return f, nil
}

type filterStats struct {
	tooLarge, tlsFound, tlsNotFound, alpnFound, alpnNotFound, sniFound, sniNotFound stats.Counter
}

// Filter is a built tls_inspector.
type Filter struct {
	max, initial int
	closeOnError bool
	stats        filterStats
}

// ErrClientHelloTooLarge is what OnAccept returns (closing the connection)
// when max_client_hello_size bytes do not hold the whole ClientHello.
var ErrClientHelloTooLarge = errors.New("tls_inspector: ClientHello too large")

// OnAccept implements filter.ListenerFilter. It only inspects a connection
// that is a plain TCP socket; others go on unchanged.
func (f *Filter) OnAccept(ctx context.Context, c *filter.Conn) error {
	tc, ok := peek.Socket(c.Conn)
	if !ok {
		return nil
	}
	var hello *ClientHello
	var perr error
	err := peek.Peek(tc, f.initial, f.max, func(b []byte) peek.Decision {
		hello, perr = ParseClientHello(b)
		if perr == ErrNeedMore {
			return peek.More
		}
		return peek.Done
	})
	switch {
	case errors.Is(err, peek.ErrFull):
		f.stats.tooLarge.Inc()
		return ErrClientHelloTooLarge
	case err != nil:
		return fmt.Errorf("tls_inspector: %w", err)
	case perr != nil:
		// Plain text, or a ClientHello BoringSSL would refuse: Envoy lets the
		// connection go on as raw_buffer.
		f.stats.tlsNotFound.Inc()
		if f.closeOnError {
			return perr
		}
		return nil
	}
	f.stats.tlsFound.Inc()
	c.TransportProtocol = "tls"
	if hello.ServerName != "" {
		f.stats.sniFound.Inc()
		c.ServerName = strings.ToLower(hello.ServerName)
	} else {
		f.stats.sniNotFound.Inc()
	}
	if len(hello.ALPN) > 0 {
		f.stats.alpnFound.Inc()
		c.ApplicationProtocols = hello.ALPN
	} else {
		f.stats.alpnNotFound.Inc()
	}
	return nil
}
