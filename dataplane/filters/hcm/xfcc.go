package hcm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"net/url"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/x509name"
)

// x-forwarded-client-cert, as Envoy's forward_client_cert_details:
//
//   - SANITIZE (the default): removed.
//   - FORWARD_ONLY: forwarded unchanged on a connection whose client presented
//     a certificate (mutual TLS), removed otherwise.
//   - APPEND_FORWARD: on mutual TLS, the client's certificate details are
//     appended; removed otherwise.
//   - SANITIZE_SET: on mutual TLS, set to the client's certificate details;
//     removed otherwise.
//   - ALWAYS_FORWARD_ONLY: always forwarded unchanged.

// mutualTLS reports whether the client of fc presented a certificate.
func mutualTLS(fc *filter.Conn) bool { return fc.TLS != nil && len(fc.TLS.PeerCertificates) > 0 }

// dropsXFCC reports whether the request's x-forwarded-client-cert goes.
func (m *Manager) dropsXFCC(fc *filter.Conn) bool {
	switch m.xfcc {
	case hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY:
		return false
	case hcmv3.HttpConnectionManager_FORWARD_ONLY, hcmv3.HttpConnectionManager_APPEND_FORWARD:
		return !mutualTLS(fc)
	}
	return true
}

// setsXFCC reports whether the connection manager writes the client's
// details into x-forwarded-client-cert.
func (m *Manager) setsXFCC() bool {
	return m.xfcc == hcmv3.HttpConnectionManager_APPEND_FORWARD || m.xfcc == hcmv3.HttpConnectionManager_SANITIZE_SET
}

// xfccElement is the x-forwarded-client-cert element of a mutual TLS
// connection, in Envoy's order: By (skiff's certificate's URI SANs), Hash
// (SHA-256 of the client's certificate), then what
// set_current_client_cert_details asks for: Cert and Chain (URL-encoded
// PEM), Subject, URI (each SAN; empty when there is none) and DNS (each
// SAN).
func xfccElement(fc *filter.Conn, d *hcmv3.HttpConnectionManager_SetCurrentClientCertDetails) string {
	peer := fc.TLS.PeerCertificates[0]
	var parts []string
	if fc.TLSLocal != nil {
		for _, u := range fc.TLSLocal.URIs {
			parts = append(parts, "By="+u.String())
		}
	}
	h := sha256.Sum256(peer.Raw)
	parts = append(parts, "Hash="+hex.EncodeToString(h[:]))
	if d.GetCert() {
		parts = append(parts, `Cert="`+urlEncode(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: peer.Raw})))+`"`)
	}
	if d.GetChain() {
		var chain strings.Builder
		for _, c := range fc.TLS.PeerCertificates {
			chain.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		}
		parts = append(parts, `Chain="`+urlEncode(chain.String())+`"`)
	}
	if d.GetSubject().GetValue() {
		parts = append(parts, `Subject="`+x509name.String(peer.RawSubject)+`"`)
	}
	if d.GetUri() {
		if len(peer.URIs) == 0 {
			parts = append(parts, "URI=")
		}
		x509name.URISANs(peer, func(uri string) bool {
			parts = append(parts, "URI="+uri) // as the certificate spells it, as Envoy's
			return true
		})
	}
	if d.GetDns() { // nothing when there is none, unlike URI
		for _, n := range peer.DNSNames {
			parts = append(parts, "DNS="+n)
		}
	}
	return strings.Join(parts, ";")
}

// urlEncode percent-encodes s as Envoy's XFCC Cert and Chain are: a space is
// %20, not '+'.
func urlEncode(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
