package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// TransportSocketMatchKey is the filter_metadata key of an endpoint's (or its
// locality's) metadata that a cluster's transport_socket_matches match
// against, as in Envoy.
const TransportSocketMatchKey = "envoy.transport_socket_match"

// Transport is what an upstream connection is wrapped in: Envoy's transport
// socket, raw_buffer (plain TCP) or TLS (an UpstreamTlsContext). A TLS
// context whose SDS secrets have not come makes no connection (see
// tlscontext.Client.Ready): skiff never sends plaintext to a host that
// expects TLS.
type Transport struct {
	// Name is the transport_socket_matches entry's name ("" for the
	// cluster's transport_socket or the raw_buffer default).
	Name string
	// Socket is the transport socket's name (envoy.transport_sockets.tls,
	// envoy.transport_sockets.raw_buffer).
	Socket string
	// TLS is the transport's UpstreamTlsContext (nil: plain TCP).
	TLS *tlscontext.Client

	match      *structpb.Struct // nil: matches every endpoint
	matchCount stats.Counter    // cluster.<name>.<match name>.total_match_count
}

// rawBuffer is the default transport: plain TCP.
var rawBuffer = &Transport{Socket: "envoy.transport_sockets.raw_buffer"}

// transportSockets reads transport_socket and transport_socket_matches.
func (c *Config) transportSockets(pb *clusterv3.Cluster, secrets tlscontext.Secrets) error {
	c.transport = rawBuffer
	if ts := pb.GetTransportSocket(); ts != nil {
		cl, err := tlscontext.Upstream(ts, secrets)
		if err != nil {
			return cfgerr.Field("transport_socket", err)
		}
		c.transport = &Transport{Socket: ts.GetName(), TLS: cl}
	}
	for i, m := range pb.GetTransportSocketMatches() {
		if err := cfgerr.OnlyFields(m, "name", "match", "transport_socket"); err != nil {
			return cfgerr.Index("transport_socket_matches", i, err)
		}
		path := fmt.Sprintf("transport_socket_matches[%d].transport_socket", i)
		if m.GetTransportSocket() == nil {
			return cfgerr.Errorf(path, "is required")
		}
		t := &Transport{Name: m.GetName(), Socket: m.GetTransportSocket().GetName()}
		var err error
		if t.TLS, err = tlscontext.Upstream(m.GetTransportSocket(), secrets); err != nil {
			return cfgerr.Field(path, err)
		}
		if len(m.GetMatch().GetFields()) > 0 {
			t.match = m.GetMatch()
		}
		c.matches = append(c.matches, t)
	}
	return nil
}

// bindTransportStats creates the match counters of a cluster's scope.
func bindTransportStats(cfg *Config, sc *stats.Scope) []*Transport {
	out := make([]*Transport, len(cfg.matches))
	for i, t := range cfg.matches {
		cp := *t
		cp.matchCount = sc.Counter(t.Name + ".total_match_count")
		out[i] = &cp
	}
	return out
}

// resolveTransport is Envoy's TransportSocketMatcher: the first match whose
// every key equals the endpoint's envoy.transport_socket_match metadata
// (else its locality's) wins; none matching, the cluster's transport_socket.
func resolveTransport(matches []*Transport, def *Transport, ep, locality *structpb.Struct) *Transport {
	for _, md := range []*structpb.Struct{ep, locality} {
		for _, t := range matches {
			if labelsMatch(t.match, md) {
				t.matchCount.Inc()
				return t
			}
		}
		if locality == nil {
			break
		}
	}
	return def
}

func labelsMatch(match, md *structpb.Struct) bool {
	for k, v := range match.GetFields() {
		got, ok := md.GetFields()[k]
		if !ok || !proto.Equal(got, v) {
			return false
		}
	}
	return true
}

// transportMetadata returns the envoy.transport_socket_match struct of md.
func transportMetadata(md *corev3.Metadata) *structpb.Struct {
	return md.GetFilterMetadata()[TransportSocketMatchKey]
}

// TLSSession is the TLS session of a connection Connect made with transport
// t, and the client certificate t presents (nil, nil for plain TCP), for
// access logs.
func TLSSession(c net.Conn, t *Transport) (*tls.ConnectionState, *x509.Certificate) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil
	}
	cs := tc.ConnectionState()
	if t.TLS == nil {
		return &cs, nil
	}
	return &cs, t.TLS.LocalCertificate()
}

// ConnFilter is an upstream network filter (a cluster's filters): it sees
// each new connection to the cluster's hosts once it is made, before any
// byte is written. alpn is the protocol the transport negotiated ("" on
// plain TCP). An error closes the connection.
type ConnFilter interface {
	UpstreamConnected(c net.Conn, alpn string) error
}

// FilterBuilder builds a cluster's filters entry (through the filter
// Registry, which this package cannot import).
type FilterBuilder func(f *clusterv3.Filter) (ConnFilter, error)
