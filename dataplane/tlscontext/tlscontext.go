// Package tlscontext builds crypto/tls configurations from Envoy's TLS
// transport socket (envoy.transport_sockets.tls): a DownstreamTlsContext
// becomes the tls.Config that terminates TLS on a filter chain, an
// UpstreamTlsContext the Client that originates TLS to a cluster's hosts, checked as
// Envoy checks it (certificates, protocol versions, cipher suites, curves,
// ALPN, client certificate validation with trusted CAs, subject alt names,
// certificate hashes and SPKI pins).
//
// Secrets come inline, from files (DataSource), from the bootstrap's static
// secrets or by SDS (see SecretStore: a context built from SDS secrets
// follows their updates); private key providers, CRLs and the other fields
// skiff does not implement are refused by name, so that a configuration is
// never half applied.
package tlscontext

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// SocketName is the transport socket's name in Envoy.
const SocketName = "envoy.transport_sockets.tls"

// Server is a built DownstreamTlsContext.
type Server struct {
	// Config terminates TLS. Its VerifyPeerCertificate applies the
	// validation context's checks beyond the chain (subject alt names,
	// hashes, SPKI pins), and records which failed in the error.
	Config *tls.Config
	// RequireClientCert is require_client_certificate.
	RequireClientCert bool
	// RequireSNI is require_sni: handshakes without a server name fail.
	RequireSNI bool

	built *following[*serverState]
}

// serverState is a DownstreamTlsContext built from given secrets.
type serverState struct {
	config *tls.Config
	certs  []tls.Certificate
}

// VerifyError is a client certificate that the validation context refused;
// Reason is Envoy's stat for it (fail_verify_san, fail_verify_cert_hash,
// fail_verify_error).
type VerifyError struct {
	Reason string
	Err    error
}

func (e *VerifyError) Error() string { return e.Err.Error() }
func (e *VerifyError) Unwrap() error { return e.Err }

// NewServer builds a DownstreamTlsContext, taking the secrets it names by
// SDS from secrets. Errors name the field.
func NewServer(pb *tlsv3.DownstreamTlsContext, secrets Secrets) (*Server, error) {
	if err := cfgerr.OnlyFields(pb, "common_tls_context", "require_client_certificate", "require_sni",
		"disable_stateless_session_resumption", "disable_stateful_session_resumption", "ocsp_staple_policy",
		"prefer_client_ciphers", "full_scan_certs_on_sni_mismatch"); err != nil {
		return nil, err
	}
	if pb.GetOcspStaplePolicy() != tlsv3.DownstreamTlsContext_LENIENT_STAPLING {
		return nil, cfgerr.Errorf("ocsp_staple_policy", "only LENIENT_STAPLING (without staples) is supported by skiff")
	}
	if pb.GetPreferClientCiphers() {
		return nil, cfgerr.Errorf("prefer_client_ciphers", "is not supported: Go's TLS picks the cipher suite itself")
	}
	s := &Server{RequireClientCert: pb.GetRequireClientCertificate().GetValue(), RequireSNI: pb.GetRequireSni().GetValue()}
	ctc := pb.GetCommonTlsContext()
	if ctc == nil {
		return nil, cfgerr.Errorf("common_tls_context", "is required: it holds the certificate")
	}
	if len(ctc.GetTlsCertificates())+len(ctc.GetTlsCertificateSdsSecretConfigs()) == 0 {
		return nil, cfgerr.Errorf("common_tls_context.tls_certificates", "a server needs at least one certificate")
	}
	f, err := follow(secrets, func(secrets Secrets) (*serverState, error) { return s.build(pb, secrets) })
	if err != nil {
		return nil, err
	}
	s.built = f
	if !f.bySDS() {
		st, _ := f.current()
		s.Config = st.config
		return s, nil
	}
	// Each handshake takes the configuration built from the secrets' current
	// versions (crypto/tls's way to change certificates on a live server).
	s.Config = &tls.Config{GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		st, err := f.current()
		if err != nil {
			return nil, err
		}
		if pick := st.config.GetConfigForClient; pick != nil {
			if cfg, err := pick(hi); cfg != nil || err != nil {
				return cfg, err
			}
		}
		return st.config, nil
	}}
	return s, nil
}

// build builds the context's configuration from secrets.
func (s *Server) build(pb *tlsv3.DownstreamTlsContext, secrets Secrets) (*serverState, error) {
	cfg, v, err := common(pb.GetCommonTlsContext(), true, secrets)
	if err != nil {
		return nil, cfgerr.Field("common_tls_context", err)
	}
	switch {
	case v != nil && (s.RequireClientCert || v.pins()):
		// As Envoy: subject alt name matchers and certificate pins make a
		// client certificate required.
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	case v != nil:
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	case s.RequireClientCert:
		return nil, cfgerr.Errorf("require_client_certificate", "needs common_tls_context.validation_context with trusted_ca to verify the certificate against")
	}
	if v != nil {
		cfg.ClientCAs = v.roots
		cfg.VerifyPeerCertificate = v.verify
	}
	cfg.SessionTicketsDisabled = pb.GetDisableStatelessSessionResumption()
	st := &serverState{config: cfg, certs: cfg.Certificates}
	if s.RequireSNI {
		// Go asks GetCertificate without a server name only when there are
		// no Certificates.
		certs := cfg.Certificates
		cfg.Certificates = nil
		cfg.GetCertificate = func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hi.ServerName == "" {
				return nil, errors.New("the client sent no server name (require_sni)")
			}
			return pickCertificate(certs, hi)
		}
	}
	if len(cfg.NextProtos) > 0 {
		// As Envoy (BoringSSL's ALPN callback answering NOACK): a client whose
		// protocols share none with alpn_protocols goes on without ALPN,
		// where Go's server would end the handshake.
		protos := cfg.NextProtos
		noALPN := cfg.Clone()
		noALPN.NextProtos = nil
		cfg.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			if len(hi.SupportedProtos) == 0 || slices.ContainsFunc(hi.SupportedProtos, func(p string) bool { return slices.Contains(protos, p) }) {
				return nil, nil
			}
			return noALPN, nil
		}
	}
	return st, nil
}

// Ready returns an error wrapping ErrSecretNotReady if the context's SDS
// secrets have not all come (handshakes would fail), else nil.
func (s *Server) Ready() error {
	_, err := s.built.current()
	return err
}

// LocalCertificate is the certificate the server presented in the session
// cs: the one for its server name (the first without a match).
//
// A context built from SDS secrets answers from their current versions.
func (s *Server) LocalCertificate(cs *tls.ConnectionState) *x509.Certificate {
	st, err := s.built.current()
	if err != nil {
		return nil
	}
	var first *x509.Certificate
	for _, c := range st.certs {
		if c.Leaf == nil {
			continue
		}
		if first == nil {
			first = c.Leaf
		}
		if cs.ServerName != "" && c.Leaf.VerifyHostname(cs.ServerName) == nil {
			return c.Leaf
		}
	}
	return first
}

// pickCertificate is crypto/tls's own choice among certs.
func pickCertificate(certs []tls.Certificate, hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	for i := range certs {
		if hi.SupportsCertificate(&certs[i]) == nil {
			return &certs[i], nil
		}
	}
	return &certs[0], nil
}

// common builds a CommonTlsContext; the validator is nil without a
// validation context.
func common(pb *tlsv3.CommonTlsContext, server bool, secrets Secrets) (*tls.Config, *validator, error) {
	if err := cfgerr.OnlyFields(pb, "tls_params", "tls_certificates", "tls_certificate_sds_secret_configs", "alpn_protocols",
		"validation_context", "validation_context_sds_secret_config", "combined_validation_context"); err != nil {
		return nil, nil, err
	}
	// Envoy's defaults: TLS 1.2 to 1.3 for servers, 1.2 only for clients.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS13}
	if !server {
		cfg.MaxVersion = tls.VersionTLS12
	}
	if p := pb.GetTlsParams(); p != nil {
		if err := params(p, cfg); err != nil {
			return nil, nil, cfgerr.Field("tls_params", err)
		}
	}
	if len(cfg.CipherSuites) == 0 {
		// Envoy's default cipher list, servers' and clients' alike (TLS 1.0
		// to 1.2; Go's own would add the ECDHE CBC suites).
		cfg.CipherSuites = []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		}
	}
	if len(cfg.CurvePreferences) == 0 {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256} // Envoy's default ecdh_curves
	}
	for i, c := range pb.GetTlsCertificates() {
		cert, err := certificate(c)
		if err != nil {
			return nil, nil, cfgerr.Index("tls_certificates", i, err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	for i, sc := range pb.GetTlsCertificateSdsSecretConfigs() {
		sec, err := secrets.lookup(sc, true)
		if err == nil && sec == nil {
			continue // by SDS, not received yet
		}
		if err == nil && sec.GetTlsCertificate() == nil {
			err = cfgerr.Errorf("name", "secret %q is not a tls_certificate", sc.GetName())
		}
		if err != nil {
			return nil, nil, cfgerr.Index("tls_certificate_sds_secret_configs", i, err)
		}
		cert, err := certificate(sec.GetTlsCertificate())
		if err != nil {
			// The secret's own errors were reported where it is defined.
			return nil, nil, cfgerr.Errorf(fmt.Sprintf("tls_certificate_sds_secret_configs[%d].name", i), "secret %q: %w", sc.GetName(), err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	for i, p := range pb.GetAlpnProtocols() {
		if p == "" || len(p) > 255 {
			return nil, nil, cfgerr.Errorf(fmt.Sprintf("alpn_protocols[%d]", i), "%q is not a protocol name of 1 to 255 bytes", p)
		}
	}
	cfg.NextProtos = slices.Clone(pb.GetAlpnProtocols())
	var vc *tlsv3.CertificateValidationContext
	path := "validation_context"
	switch t := pb.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_ValidationContext:
		vc = t.ValidationContext
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		path = "validation_context_sds_secret_config"
		var err error
		if vc, err = secrets.validationContext(t.ValidationContextSdsSecretConfig); err != nil {
			return nil, nil, cfgerr.Field(path, err)
		}
		if vc == nil {
			return cfg, &validator{}, nil // by SDS, not received yet: the context is not ready
		}
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		path = "combined_validation_context"
		cvc := t.CombinedValidationContext
		if err := cfgerr.OnlyFields(cvc, "default_validation_context", "validation_context_sds_secret_config"); err != nil {
			return nil, nil, cfgerr.Field(path, err)
		}
		vc = cvc.GetDefaultValidationContext()
		if sc := cvc.GetValidationContextSdsSecretConfig(); sc != nil {
			dyn, err := secrets.validationContext(sc)
			if err != nil {
				return nil, nil, cfgerr.Field(path+".validation_context_sds_secret_config", err)
			}
			if dyn == nil {
				return cfg, &validator{}, nil // by SDS, not received yet: the context is not ready
			}
			// As Envoy: the secret's fields merged over the default
			// context's (its singular fields win, its lists are appended).
			merged := &tlsv3.CertificateValidationContext{}
			if vc != nil {
				merged = proto.Clone(vc).(*tlsv3.CertificateValidationContext)
			}
			proto.Merge(merged, dyn)
			vc = merged
		} else {
			path += ".default_validation_context"
		}
	}
	if vc == nil {
		return cfg, nil, nil
	}
	v, err := newValidator(vc, server)
	if err != nil {
		return nil, nil, cfgerr.Field(path, err)
	}
	return cfg, v, nil
}

// version is crypto/tls's version of a TlsParameters protocol.
func version(v tlsv3.TlsParameters_TlsProtocol) (uint16, bool) {
	switch v {
	case tlsv3.TlsParameters_TLSv1_0:
		return tls.VersionTLS10, true
	case tlsv3.TlsParameters_TLSv1_1:
		return tls.VersionTLS11, true
	case tlsv3.TlsParameters_TLSv1_2:
		return tls.VersionTLS12, true
	case tlsv3.TlsParameters_TLSv1_3:
		return tls.VersionTLS13, true
	}
	return 0, false
}

func params(pb *tlsv3.TlsParameters, cfg *tls.Config) error {
	if err := cfgerr.OnlyFields(pb, "tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites", "ecdh_curves"); err != nil {
		return err
	}
	if v := pb.GetTlsMinimumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		var ok bool
		if cfg.MinVersion, ok = version(v); !ok {
			return cfgerr.Errorf("tls_minimum_protocol_version", "unknown version %v", v)
		}
	}
	if v := pb.GetTlsMaximumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		var ok bool
		if cfg.MaxVersion, ok = version(v); !ok {
			return cfgerr.Errorf("tls_maximum_protocol_version", "unknown version %v", v)
		}
	}
	if cfg.MinVersion > cfg.MaxVersion {
		return cfgerr.Errorf("tls_minimum_protocol_version", "is above tls_maximum_protocol_version (%s above %s; unless set, the maximum is TLSv1.2 for clients and TLSv1.3 for servers, as in Envoy)",
			VersionName(cfg.MinVersion), VersionName(cfg.MaxVersion))
	}
	for i, s := range pb.GetCipherSuites() {
		// BoringSSL's equal-preference groups, [A|B], as Envoy's defaults
		// write them: Go orders suites itself.
		for name := range strings.SplitSeq(strings.Trim(s, "[]"), "|") {
			id, ok := CipherSuite(name)
			if !ok {
				return cfgerr.Errorf(fmt.Sprintf("cipher_suites[%d]", i), "unknown cipher suite %q (want an OpenSSL name such as ECDHE-RSA-AES128-GCM-SHA256)", name)
			}
			cfg.CipherSuites = append(cfg.CipherSuites, id)
		}
	}
	for i, name := range pb.GetEcdhCurves() {
		id, ok := curve(name)
		if !ok {
			return cfgerr.Errorf(fmt.Sprintf("ecdh_curves[%d]", i), "unknown curve %q (want X25519, P-256, P-384, P-521 or X25519MLKEM768)", name)
		}
		cfg.CurvePreferences = append(cfg.CurvePreferences, id)
	}
	return nil
}

// VersionName is Envoy's name of a TLS version (TLSv1 to TLSv1.3), as its
// ssl.versions stats and %DOWNSTREAM_TLS_VERSION% give it; "" if unknown.
func VersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return ""
}

// curve is the curve of an ecdh_curves name Envoy (BoringSSL) accepts.
func curve(name string) (tls.CurveID, bool) {
	switch name {
	case "X25519":
		return tls.X25519, true
	case "P-256", "prime256v1":
		return tls.CurveP256, true
	case "P-384", "secp384r1":
		return tls.CurveP384, true
	case "P-521", "secp521r1":
		return tls.CurveP521, true
	case "X25519MLKEM768":
		return tls.X25519MLKEM768, true
	}
	return 0, false
}

// CipherSuite is the TLS 1.0-1.2 cipher suite of an OpenSSL name, as
// Envoy's cipher_suites and its ssl.ciphers stats spell them.
func CipherSuite(name string) (uint16, bool) {
	for _, c := range cipherNames() {
		if c.name == name {
			return c.id, true
		}
	}
	return 0, false
}

// CipherName is the OpenSSL name of a cipher suite (TLS 1.3's as Envoy
// names them), or "" if unknown.
func CipherName(id uint16) string {
	for _, c := range cipherNames() {
		if c.id == id {
			return c.name
		}
	}
	return ""
}

type cipherName struct {
	name string
	id   uint16
}

func cipherNames() [17]cipherName {
	return [...]cipherName{
		{"ECDHE-ECDSA-AES128-GCM-SHA256", tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		{"ECDHE-RSA-AES128-GCM-SHA256", tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
		{"ECDHE-ECDSA-AES256-GCM-SHA384", tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384},
		{"ECDHE-RSA-AES256-GCM-SHA384", tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384},
		{"ECDHE-ECDSA-CHACHA20-POLY1305", tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
		{"ECDHE-RSA-CHACHA20-POLY1305", tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256},
		{"ECDHE-ECDSA-AES128-SHA", tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA},
		{"ECDHE-RSA-AES128-SHA", tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA},
		{"ECDHE-ECDSA-AES256-SHA", tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA},
		{"ECDHE-RSA-AES256-SHA", tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA},
		{"AES128-GCM-SHA256", tls.TLS_RSA_WITH_AES_128_GCM_SHA256},
		{"AES256-GCM-SHA384", tls.TLS_RSA_WITH_AES_256_GCM_SHA384},
		{"AES128-SHA", tls.TLS_RSA_WITH_AES_128_CBC_SHA},
		{"AES256-SHA", tls.TLS_RSA_WITH_AES_256_CBC_SHA},
		{"TLS_AES_128_GCM_SHA256", tls.TLS_AES_128_GCM_SHA256},
		{"TLS_AES_256_GCM_SHA384", tls.TLS_AES_256_GCM_SHA384},
		{"TLS_CHACHA20_POLY1305_SHA256", tls.TLS_CHACHA20_POLY1305_SHA256},
	}
}

func certificate(pb *tlsv3.TlsCertificate) (tls.Certificate, error) {
	if err := cfgerr.OnlyFields(pb, "certificate_chain", "private_key"); err != nil {
		return tls.Certificate{}, err
	}
	chain, err := dataSource(pb.GetCertificateChain())
	if err != nil {
		return tls.Certificate{}, cfgerr.Field("certificate_chain", err)
	}
	key, err := dataSource(pb.GetPrivateKey())
	if err != nil {
		return tls.Certificate{}, cfgerr.Field("private_key", err)
	}
	if len(chain) == 0 || len(key) == 0 {
		return tls.Certificate{}, cfgerr.Errorf("", "certificate_chain and private_key are both required")
	}
	cert, err := tls.X509KeyPair(chain, key)
	if err != nil {
		return tls.Certificate{}, cfgerr.Errorf("certificate_chain", "with private_key: %v", err)
	}
	return cert, nil
}

// ChannelTLS is the TLS of a google_grpc service's ssl_credentials, as
// Envoy's Google gRPC client takes them: root_certs to verify the server
// with (the system's roots if unset), and cert_chain and private_key to
// present (none if unset). Errors name the field.
func ChannelTLS(pb *corev3.GrpcService_GoogleGrpc_SslCredentials) (*tls.Config, error) {
	if err := cfgerr.OnlyFields(pb, "root_certs", "private_key", "cert_chain"); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if pb.GetRootCerts() != nil {
		roots, err := dataSource(pb.GetRootCerts())
		if err != nil {
			return nil, cfgerr.Field("root_certs", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(roots) {
			return nil, cfgerr.Errorf("root_certs", "no PEM certificate in it")
		}
	}
	if (pb.GetCertChain() == nil) != (pb.GetPrivateKey() == nil) {
		return nil, cfgerr.Errorf("cert_chain", "cert_chain and private_key go together")
	}
	if pb.GetCertChain() != nil {
		chain, err := dataSource(pb.GetCertChain())
		if err != nil {
			return nil, cfgerr.Field("cert_chain", err)
		}
		key, err := dataSource(pb.GetPrivateKey())
		if err != nil {
			return nil, cfgerr.Field("private_key", err)
		}
		cert, err := tls.X509KeyPair(chain, key)
		if err != nil {
			return nil, cfgerr.Errorf("cert_chain", "with private_key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// dataSource reads a DataSource: a file, inline bytes or an inline string.
func dataSource(pb *corev3.DataSource) ([]byte, error) {
	if pb == nil {
		return nil, nil
	}
	if err := cfgerr.OnlyFields(pb, "filename", "inline_bytes", "inline_string"); err != nil {
		return nil, err
	}
	switch s := pb.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(s.Filename)
		if err != nil {
			return nil, cfgerr.Field("filename", err)
		}
		return b, nil
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	}
	return nil, nil
}

// validator is a CertificateValidationContext's checks of a peer
// certificate beyond its chain to trusted_ca.
type validator struct {
	roots  *x509.CertPool
	sans   []sanMatcher
	hashes [][]byte // SHA-256 of the certificate (DER)
	spki   [][]byte // SHA-256 of the SubjectPublicKeyInfo
}

type sanMatcher struct {
	typ tlsv3.SubjectAltNameMatcher_SanType
	m   *route.StringMatcher
	// exact is the exact value of an exact, case-sensitive DNS matcher,
	// which a wildcard certificate name (*.example.com) matches too.
	exact string
}

func newValidator(pb *tlsv3.CertificateValidationContext, server bool) (*validator, error) {
	if err := cfgerr.OnlyFields(pb, "trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names",
		"verify_certificate_hash", "verify_certificate_spki", "trust_chain_verification"); err != nil {
		return nil, err
	}
	if pb.GetTrustChainVerification() != tlsv3.CertificateValidationContext_VERIFY_TRUST_CHAIN {
		return nil, cfgerr.Errorf("trust_chain_verification", "only VERIFY_TRUST_CHAIN is supported by skiff")
	}
	v := &validator{}
	ca, err := dataSource(pb.GetTrustedCa())
	if err != nil {
		return nil, cfgerr.Field("trusted_ca", err)
	}
	if len(ca) == 0 {
		return nil, cfgerr.Errorf("trusted_ca", "is required: skiff verifies peer certificates against it")
	}
	v.roots = x509.NewCertPool()
	if !v.roots.AppendCertsFromPEM(ca) {
		return nil, cfgerr.Errorf("trusted_ca", "holds no PEM certificate")
	}
	for i, m := range pb.GetMatchTypedSubjectAltNames() {
		if err := cfgerr.OnlyFields(m, "san_type", "matcher"); err != nil {
			return nil, cfgerr.Index("match_typed_subject_alt_names", i, err)
		}
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_DNS, tlsv3.SubjectAltNameMatcher_EMAIL, tlsv3.SubjectAltNameMatcher_URI, tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
		default:
			return nil, cfgerr.Errorf(fmt.Sprintf("match_typed_subject_alt_names[%d].san_type", i), "want DNS, EMAIL, URI or IP_ADDRESS, not %v", m.GetSanType())
		}
		sm, err := newSANMatcher(m.GetSanType(), m.GetMatcher())
		if err != nil {
			return nil, cfgerr.Field(fmt.Sprintf("match_typed_subject_alt_names[%d].matcher", i), err)
		}
		v.sans = append(v.sans, sm)
	}
	// The deprecated form matches any type of name.
	//lint:ignore SA1019 deprecated for match_typed_subject_alt_names, still honoured by Envoy
	for i, m := range pb.GetMatchSubjectAltNames() {
		sm, err := newSANMatcher(tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED, m)
		if err != nil {
			return nil, cfgerr.Index("match_subject_alt_names", i, err)
		}
		v.sans = append(v.sans, sm)
	}
	for i, h := range pb.GetVerifyCertificateHash() {
		b, err := hex.DecodeString(strings.ReplaceAll(h, ":", ""))
		if err != nil || len(b) != sha256.Size {
			return nil, cfgerr.Errorf(fmt.Sprintf("verify_certificate_hash[%d]", i), "%q is not a hex SHA-256 (colons allowed)", h)
		}
		v.hashes = append(v.hashes, b)
	}
	for i, h := range pb.GetVerifyCertificateSpki() {
		b, err := base64.StdEncoding.DecodeString(h)
		if err != nil || len(b) != sha256.Size {
			return nil, cfgerr.Errorf(fmt.Sprintf("verify_certificate_spki[%d]", i), "%q is not a base64 SHA-256", h)
		}
		v.spki = append(v.spki, b)
	}
	return v, nil
}

func newSANMatcher(typ tlsv3.SubjectAltNameMatcher_SanType, pb *matcherv3.StringMatcher) (sanMatcher, error) {
	sm := sanMatcher{typ: typ}
	m, err := route.NewStringMatcher(pb)
	if err != nil {
		return sm, err
	}
	sm.m = m
	if typ == tlsv3.SubjectAltNameMatcher_DNS || typ == tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED {
		sm.exact = pb.GetExact()
	}
	return sm, nil
}

// pins reports whether the validation context checks more than the chain.
func (v *validator) pins() bool { return len(v.sans)+len(v.hashes)+len(v.spki) > 0 }

// verify is tls.Config.VerifyPeerCertificate: the chain is verified already
// (verified holds it) when a certificate was given.
func (v *validator) verify(raw [][]byte, verified [][]*x509.Certificate) error {
	if len(verified) == 0 || len(verified[0]) == 0 {
		return nil // no certificate: ClientAuth decides
	}
	leaf := verified[0][0]
	// Envoy's order: the names, then the pins.
	if len(v.sans) > 0 && !slices.ContainsFunc(v.sans, func(m sanMatcher) bool { return m.matches(leaf) }) {
		return &VerifyError{Reason: "fail_verify_san", Err: errors.New("no subject alt name of the certificate matches match_typed_subject_alt_names")}
	}
	return v.verifyPins(leaf)
}

// verifyPins checks leaf against verify_certificate_hash and
// verify_certificate_spki: it must match one of them, if there are any.
func (v *validator) verifyPins(leaf *x509.Certificate) error {
	if len(v.hashes) == 0 && len(v.spki) == 0 {
		return nil
	}
	h := sha256.Sum256(leaf.Raw)
	s := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	if !slices.ContainsFunc(v.hashes, func(b []byte) bool { return string(b) == string(h[:]) }) &&
		!slices.ContainsFunc(v.spki, func(b []byte) bool { return string(b) == string(s[:]) }) {
		return &VerifyError{Reason: "fail_verify_cert_hash", Err: errors.New("the certificate matches no verify_certificate_hash or verify_certificate_spki")}
	}
	return nil
}

func (m sanMatcher) matches(c *x509.Certificate) bool {
	all := m.typ == tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED
	if all || m.typ == tlsv3.SubjectAltNameMatcher_DNS {
		for _, n := range c.DNSNames {
			// An exact DNS matcher compares as Envoy's dnsNameMatch: case
			// insensitive, a wildcard certificate name covering one label.
			if m.m.Match(n) || m.exact != "" && dnsNameMatch(n, m.exact) {
				return true
			}
		}
	}
	if all || m.typ == tlsv3.SubjectAltNameMatcher_EMAIL {
		if slices.ContainsFunc(c.EmailAddresses, m.m.Match) {
			return true
		}
	}
	if all || m.typ == tlsv3.SubjectAltNameMatcher_URI {
		for _, u := range c.URIs {
			if m.m.Match(u.String()) {
				return true
			}
		}
	}
	if all || m.typ == tlsv3.SubjectAltNameMatcher_IP_ADDRESS {
		for _, ip := range c.IPAddresses {
			if m.m.Match(ip.String()) {
				return true
			}
		}
	}
	return false
}

// dnsNameMatch reports whether the certificate's DNS name certName is for
// name, as Envoy's dnsNameMatch: equal but for case, or a wildcard covering
// it.
func dnsNameMatch(certName, name string) bool {
	return strings.EqualFold(certName, name) || wildcardMatch(certName, name)
}

// wildcardMatch reports whether the certificate name pattern, such as
// *.example.com, covers name (one label), as Envoy's dnsNameMatch.
func wildcardMatch(pattern, name string) bool {
	rest, ok := strings.CutPrefix(pattern, "*.")
	if !ok {
		return false
	}
	label, domain, ok := strings.Cut(name, ".")
	return ok && label != "" && strings.EqualFold(domain, rest)
}

// Downstream builds a filter chain's transport_socket: a DownstreamTlsContext
// (nil Server for raw_buffer, the plain default).
func Downstream(ts *corev3.TransportSocket, secrets Secrets) (*Server, error) {
	d := &tlsv3.DownstreamTlsContext{}
	isTLS, err := DecodeTransportSocket(ts, d)
	if err != nil || !isTLS {
		return nil, err
	}
	s, err := NewServer(d, secrets)
	if err != nil {
		return nil, cfgerr.Field("typed_config", err)
	}
	return s, nil
}

// DecodeTransportSocket reads a transport_socket (a listener's or a
// cluster's): its typed_config is a RawBuffer, the plain default (false), or
// a message of tlsConfig's type, which it fills (true). Both are validated;
// errors name the field.
func DecodeTransportSocket(ts *corev3.TransportSocket, tlsConfig proto.Message) (bool, error) {
	if err := cfgerr.OnlyFields(ts, "name", "typed_config"); err != nil {
		return false, err
	}
	a := ts.GetTypedConfig()
	if a == nil {
		return false, cfgerr.Errorf("typed_config", "a transport socket needs a typed_config")
	}
	var m proto.Message
	tlsName := tlsConfig.ProtoReflect().Descriptor().FullName()
	switch a.MessageName() {
	case "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer":
		m = &rawbufferv3.RawBuffer{}
	case tlsName:
		m = tlsConfig
	default:
		return false, cfgerr.Errorf("typed_config", "transport socket %q: type %s is not supported by skiff (%s and RawBuffer are)", ts.GetName(), a.GetTypeUrl(), tlsName.Name())
	}
	if err := a.UnmarshalTo(m); err != nil {
		return false, cfgerr.Errorf("typed_config", "decoding %s: %w", a.GetTypeUrl(), err)
	}
	if err := cfgerr.Validate(m); err != nil {
		return false, cfgerr.Field("typed_config", err)
	}
	return m == tlsConfig, nil
}
