package tlscontext

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Client is a built UpstreamTlsContext: how skiff originates TLS to a
// cluster's hosts. As in Envoy, the server's certificate is verified only
// when the context has a validation context (trusted_ca), and then against
// its subject alt name matchers and pins, not against the SNI (unless
// auto_sni_san_validation asks for that).
type Client struct {
	sni               string
	autoHostSNI       bool
	autoSANValidation bool
	sessionKeys       int // max_session_keys: the session cache's size, 0 for none

	built *following[*clientState]
}

// clientState is an UpstreamTlsContext built from given secrets.
type clientState struct {
	config *tls.Config // no ServerName; NextProtos is alpn_protocols
	v      *validator  // nil: the server's certificate is not verified
}

// NewClient builds an UpstreamTlsContext, taking the secrets it names by SDS
// from secrets. Errors name the field.
func NewClient(pb *tlsv3.UpstreamTlsContext, secrets Secrets) (*Client, error) {
	if err := cfgerr.OnlyFields(pb, "common_tls_context", "sni", "auto_host_sni", "auto_sni_san_validation",
		"allow_renegotiation", "max_session_keys", "enforce_rsa_key_usage"); err != nil {
		return nil, err
	}
	c := &Client{
		sni:               pb.GetSni(),
		autoHostSNI:       pb.GetAutoHostSni(),
		autoSANValidation: pb.GetAutoSniSanValidation(),
	}
	c.sessionKeys = 1
	if n := pb.GetMaxSessionKeys(); n != nil {
		c.sessionKeys = int(n.GetValue())
	}
	f, err := follow(secrets, func(secrets Secrets) (*clientState, error) { return c.build(pb, secrets) })
	if err != nil {
		return nil, err
	}
	c.built = f
	return c, nil
}

// build builds the context's configuration from secrets.
func (c *Client) build(pb *tlsv3.UpstreamTlsContext, secrets Secrets) (*clientState, error) {
	ctc := pb.GetCommonTlsContext()
	if ctc == nil {
		ctc = &tlsv3.CommonTlsContext{}
	}
	cfg, v, err := common(ctc, false, secrets)
	if err != nil {
		return nil, cfgerr.Field("common_tls_context", err)
	}
	if len(cfg.Certificates) > 1 {
		return nil, cfgerr.Errorf("common_tls_context.tls_certificates", "a client context takes one certificate, not %d (as in Envoy)", len(cfg.Certificates))
	}
	if c.autoSANValidation && v == nil {
		return nil, cfgerr.Errorf("auto_sni_san_validation", "needs common_tls_context.validation_context with trusted_ca: without it the server's certificate is not verified")
	}
	st := &clientState{config: cfg, v: v}
	// The chain, the names and the pins are checked by verify, as Envoy's
	// certificate validator does, not by Go's default (which would also
	// match the certificate against the SNI).
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error { return c.verify(st, cs) }
	if c.sessionKeys > 0 {
		// A cache per version of the secrets, as Envoy makes a new context
		// for each: a session is not resumed past a rotation.
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(c.sessionKeys)
	}
	if pb.GetAllowRenegotiation() {
		cfg.Renegotiation = tls.RenegotiateFreelyAsClient
	}
	return st, nil
}

// Ready returns an error wrapping ErrSecretNotReady if the context's SDS
// secrets have not all come (handshakes would fail), else nil.
func (c *Client) Ready() error {
	_, err := c.built.current()
	return err
}

// Upstream builds a cluster's transport_socket (or a transport_socket_matches
// entry's): an UpstreamTlsContext (nil Client for raw_buffer, the plain
// default).
func Upstream(ts *corev3.TransportSocket, secrets Secrets) (*Client, error) {
	u := &tlsv3.UpstreamTlsContext{}
	isTLS, err := DecodeTransportSocket(ts, u)
	if err != nil || !isTLS {
		return nil, err
	}
	c, err := NewClient(u, secrets)
	if err != nil {
		return nil, cfgerr.Field("typed_config", err)
	}
	return c, nil
}

// LocalCertificate is the client certificate (tls_certificates), nil if
// there is none (or its SDS secret has not come).
func (c *Client) LocalCertificate() *x509.Certificate {
	st, err := c.built.current()
	if err != nil || len(st.config.Certificates) == 0 {
		return nil
	}
	return st.config.Certificates[0].Leaf
}

// HandshakeOptions are what a connection's user tells the TLS client, as
// Envoy's transport socket options do.
type HandshakeOptions struct {
	// Hostname is the host's name (the endpoint's hostname, or the DNS name
	// it was resolved from), the SNI with auto_host_sni; "" if none.
	Hostname string
	// SNI, if set, is the SNI whatever the context says (auto_sni).
	SNI string
	// VerifyName, if set, is the name the server's certificate must carry
	// (a DNS name, or an IP address as an IP SAN) instead of passing the
	// subject alt name matchers (auto_san_validation).
	VerifyName string
	// ALPN is offered when the context has no alpn_protocols of its own
	// (Envoy's ALPN fallback: h2 for an HTTP/2 connection pool, http/1.1
	// for an HTTP/1.1 one).
	ALPN []string
	// ALPNOverride, if set, is offered instead of the context's
	// alpn_protocols (Envoy's envoy.network.application_protocols filter
	// state: istio.alpn).
	ALPNOverride []string
}

// ServerName is the SNI sent to a host named hostname: sni, or hostname
// itself with auto_host_sni.
func (c *Client) ServerName(hostname string) string {
	if c.autoHostSNI && hostname != "" {
		return hostname
	}
	return c.sni
}

// Handshake starts TLS on conn and completes the handshake before ctx ends.
// On failure the caller still owns conn.
//
// A context whose SDS secrets have not come fails with ErrSecretNotReady.
func (c *Client) Handshake(ctx context.Context, conn net.Conn, o HandshakeOptions) (*tls.Conn, error) {
	st, err := c.built.current()
	if err != nil {
		return nil, err
	}
	cfg := st.config.Clone()
	cfg.ServerName = c.ServerName(o.Hostname)
	if o.SNI != "" {
		cfg.ServerName = o.SNI
	}
	switch {
	case len(o.ALPNOverride) > 0:
		cfg.NextProtos = o.ALPNOverride
	case len(cfg.NextProtos) == 0:
		cfg.NextProtos = o.ALPN
	}
	if o.VerifyName != "" {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error { return c.check(st, cs, o.VerifyName) }
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tc, nil
}

// verify is the connection's tls.Config.VerifyConnection: without a
// validation context it accepts any certificate (Envoy's default for
// upstreams); with one, the chain must lead to trusted_ca and the leaf pass
// the subject alt name matchers (or, with auto_sni_san_validation, carry the
// SNI as a DNS name) and the pins.
func (c *Client) verify(st *clientState, cs tls.ConnectionState) error {
	if !c.autoSANValidation {
		return c.check(st, cs, "")
	}
	if cs.ServerName == "" {
		return &VerifyError{Reason: "fail_verify_san", Err: errors.New("no SNI was sent for auto_sni_san_validation to check")}
	}
	return c.check(st, cs, cs.ServerName)
}

// check is verify with name, if set, in place of the subject alt name
// matchers: the leaf must carry it as a DNS name or, for an IP address, as
// an IP SAN. The name is checked even without a validation context (as
// Envoy's validator does), on a chain then unverified.
func (c *Client) check(st *clientState, cs tls.ConnectionState, name string) error {
	v := st.v
	if v == nil && name == "" {
		return nil
	}
	certs := cs.PeerCertificates
	if len(certs) == 0 {
		return &VerifyError{Reason: "fail_verify_no_cert", Err: errors.New("the server sent no certificate")}
	}
	var chains [][]*x509.Certificate
	if v != nil {
		opts := x509.VerifyOptions{Roots: v.roots, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		for _, ic := range certs[1:] {
			opts.Intermediates.AddCert(ic)
		}
		var err error
		if chains, err = certs[0].Verify(opts); err != nil {
			return &VerifyError{Reason: "fail_verify_error", Err: fmt.Errorf("verifying the server's certificate: %w", err)}
		}
	}
	if name == "" {
		return v.verify(nil, chains)
	}
	leaf := certs[0]
	if !certificateNames(leaf, name) {
		return &VerifyError{Reason: "fail_verify_san", Err: fmt.Errorf("the server's certificate is not for %q", name)}
	}
	if v == nil {
		return nil
	}
	return v.verifyPins(leaf)
}

// certificateNames reports whether c is for name: an IP SAN equal to it if
// it is an IP address, else a DNS SAN equal to it (case-insensitively) or a
// wildcard covering it.
func certificateNames(c *x509.Certificate, name string) bool {
	if ip, err := netip.ParseAddr(name); err == nil {
		return slices.ContainsFunc(c.IPAddresses, func(a net.IP) bool {
			b, ok := netip.AddrFromSlice(a)
			return ok && b.Unmap() == ip.Unmap()
		})
	}
	return slices.ContainsFunc(c.DNSNames, func(n string) bool { return dnsNameMatch(n, name) })
}
