package tlscontext

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"

	"github.com/skiffproxy/skiff/internal/stats"
)

// Stats are the TLS stats of a listener (listener.<address>.ssl.*) or a
// cluster (cluster.<name>.ssl.*), named as Envoy's.
type Stats struct {
	handshake, connectionError, sessionReused, noCertificate, failVerifyNoCert,
	failVerifyError, failVerifySAN, failVerifyCertHash stats.Counter
	versions [4]stats.Counter // TLSv1 to TLSv1.3, by version - tls.VersionTLS10
	// secretsNotReady is server_ssl_socket_factory.
	// downstream_context_secrets_not_ready (a listener's) or
	// client_ssl_socket_factory.upstream_context_secrets_not_ready (a
	// cluster's).
	secretsNotReady stats.Counter
}

// NewStats makes the ssl.* stats in sc, a listener's (server) or a
// cluster's.
func NewStats(sc *stats.Scope, server bool) *Stats {
	s := &Stats{
		handshake:          sc.Counter("ssl.handshake"),
		connectionError:    sc.Counter("ssl.connection_error"),
		sessionReused:      sc.Counter("ssl.session_reused"),
		noCertificate:      sc.Counter("ssl.no_certificate"),
		failVerifyNoCert:   sc.Counter("ssl.fail_verify_no_cert"),
		failVerifyError:    sc.Counter("ssl.fail_verify_error"),
		failVerifySAN:      sc.Counter("ssl.fail_verify_san"),
		failVerifyCertHash: sc.Counter("ssl.fail_verify_cert_hash"),
	}
	for i := range s.versions {
		s.versions[i] = sc.Counter("ssl.versions." + VersionName(uint16(tls.VersionTLS10+i)))
	}
	if server {
		s.secretsNotReady = sc.Counter("server_ssl_socket_factory.downstream_context_secrets_not_ready")
	} else {
		s.secretsNotReady = sc.Counter("client_ssl_socket_factory.upstream_context_secrets_not_ready")
	}
	return s
}

// SecretsNotReady counts a connection closed (downstream) or not made
// (upstream) because the context's SDS secrets have not come.
func (s *Stats) SecretsNotReady() { s.secretsNotReady.Inc() }

// Handshake counts a completed handshake.
func (s *Stats) Handshake(cs *tls.ConnectionState) {
	s.handshake.Inc()
	if cs.DidResume {
		s.sessionReused.Inc()
	}
	if len(cs.PeerCertificates) == 0 {
		s.noCertificate.Inc()
	}
	if v := int(cs.Version) - tls.VersionTLS10; v >= 0 && v < len(s.versions) {
		s.versions[v].Inc()
	}
}

// Failed counts a failed handshake, and the check that refused the peer's
// certificate, if one did.
func (s *Stats) Failed(err error) {
	s.connectionError.Inc()
	var ve *VerifyError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var he x509.HostnameError
	switch {
	case errors.As(err, &ve):
		switch ve.Reason {
		case "fail_verify_san":
			s.failVerifySAN.Inc()
		case "fail_verify_cert_hash":
			s.failVerifyCertHash.Inc()
		case "fail_verify_no_cert":
			s.failVerifyNoCert.Inc()
		default:
			s.failVerifyError.Inc()
		}
	case errors.As(err, &ua), errors.As(err, &ci), errors.As(err, &he):
		s.failVerifyError.Inc()
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		s.failVerifyNoCert.Inc()
	}
}
