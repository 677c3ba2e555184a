package accesslog

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"net"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/x509name"
)

// The downstream and upstream TLS sessions' commands, as Envoy's: "-" on a
// plain connection, or when the certificate lacks what is asked.
func init() {
	for _, side := range []struct {
		prefix  string
		session func(*http.StreamInfo) (*tls.ConnectionState, *x509.Certificate)
	}{
		{"DOWNSTREAM_", func(i *http.StreamInfo) (*tls.ConnectionState, *x509.Certificate) {
			return i.DownstreamTLS, i.DownstreamLocalCert
		}},
		{"UPSTREAM_", func(i *http.StreamInfo) (*tls.ConnectionState, *x509.Certificate) {
			return i.UpstreamTLS, i.UpstreamLocalCert
		}},
	} {
		tlsDefs(side.prefix, side.session)
	}
}

func tlsDefs(prefix string, session func(*http.StreamInfo) (*tls.ConnectionState, *x509.Certificate)) {
	tlsDef := func(name string, fn func(d []byte, cs *tls.ConnectionState, local *x509.Certificate) ([]byte, bool)) {
		def(prefix+name, kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
			cs, local := session(&e.Info)
			if cs == nil {
				return d, false
			}
			return fn(d, cs, local)
		})
	}
	peerDef := func(name string, fn func(d []byte, c *x509.Certificate) ([]byte, bool)) {
		tlsDef(name, func(d []byte, cs *tls.ConnectionState, _ *x509.Certificate) ([]byte, bool) {
			if len(cs.PeerCertificates) == 0 {
				return d, false
			}
			return fn(d, cs.PeerCertificates[0])
		})
	}
	localDef := func(name string, fn func(d []byte, c *x509.Certificate) ([]byte, bool)) {
		tlsDef(name, func(d []byte, _ *tls.ConnectionState, local *x509.Certificate) ([]byte, bool) {
			if local == nil {
				return d, false
			}
			return fn(d, local)
		})
	}
	tlsDef("TLS_VERSION", func(d []byte, cs *tls.ConnectionState, _ *x509.Certificate) ([]byte, bool) {
		return appendIf(d, tlscontext.VersionName(cs.Version))
	})
	tlsDef("TLS_CIPHER", func(d []byte, cs *tls.ConnectionState, _ *x509.Certificate) ([]byte, bool) {
		return appendIf(d, tlscontext.CipherName(cs.CipherSuite))
	})
	for _, which := range []struct {
		prefix string
		def    func(string, func([]byte, *x509.Certificate) ([]byte, bool))
	}{{"PEER_", peerDef}, {"LOCAL_", localDef}} {
		which.def(which.prefix+"URI_SAN", appendURISANs)
		which.def(which.prefix+"DNS_SAN", func(d []byte, c *x509.Certificate) ([]byte, bool) {
			return appendJoined(d, c.DNSNames, func(n string) string { return n })
		})
		which.def(which.prefix+"IP_SAN", func(d []byte, c *x509.Certificate) ([]byte, bool) {
			return appendJoined(d, c.IPAddresses, net.IP.String)
		})
		which.def(which.prefix+"SUBJECT", func(d []byte, c *x509.Certificate) ([]byte, bool) {
			return appendName(d, c.RawSubject)
		})
	}
	peerDef("PEER_ISSUER", func(d []byte, c *x509.Certificate) ([]byte, bool) {
		return appendName(d, c.RawIssuer)
	})
	if prefix != "DOWNSTREAM_" {
		return // Envoy has these for the downstream peer only
	}
	peerDef("PEER_FINGERPRINT_256", func(d []byte, c *x509.Certificate) ([]byte, bool) {
		h := sha256.Sum256(c.Raw)
		return hex.AppendEncode(d, h[:]), true
	})
	peerDef("PEER_SERIAL", func(d []byte, c *x509.Certificate) ([]byte, bool) {
		return hex.AppendEncode(d, c.SerialNumber.Bytes()), true
	})
}

// appendURISANs appends c's URI SANs as the certificate spells them, comma
// separated, as Envoy lists them; false if there are none.
func appendURISANs(d []byte, c *x509.Certificate) ([]byte, bool) {
	n := len(d)
	x509name.URISANs(c, func(uri string) bool {
		if len(d) > n {
			d = append(d, ',')
		}
		d = append(d, uri...)
		return true
	})
	return d, len(d) > n
}

// appendName appends a distinguished name as Envoy prints one (BoringSSL's
// RFC 2253 form); false if it is empty or malformed.
func appendName(d, raw []byte) ([]byte, bool) {
	n := len(d)
	d, err := x509name.Append(d, raw)
	return d, err == nil && len(d) > n
}

// appendJoined appends the names of xs, comma-separated, as Envoy lists a
// certificate's SANs; false if there are none.
func appendJoined[T any](d []byte, xs []T, name func(T) string) ([]byte, bool) {
	for i, x := range xs {
		if i > 0 {
			d = append(d, ',')
		}
		d = append(d, name(x)...)
	}
	return d, len(xs) > 0
}
