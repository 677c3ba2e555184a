package tlscontext

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/tlstest"
)

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(b)}}
}

// fixture is a CA, a server certificate for server.test and client
// certificates.
type fixture struct {
	ca             *tlstest.CA
	server, client *tlstest.Leaf
}

func newFixture(t *testing.T) *fixture {
	ca := tlstest.NewCA(t, "test CA")
	return &fixture{ca: ca, server: ca.Issue(t, "server", "server.test"), client: ca.Issue(t, "client", "spiffe://test/client", "client.test")}
}

func (f *fixture) context(configure func(*tlsv3.DownstreamTlsContext)) *tlsv3.DownstreamTlsContext {
	pb := &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: inline(f.server.CertPEM), PrivateKey: inline(f.server.KeyPEM)}},
	}}
	if configure != nil {
		configure(pb)
	}
	return pb
}

func (f *fixture) validation(configure func(*tlsv3.CertificateValidationContext)) func(*tlsv3.DownstreamTlsContext) {
	return func(pb *tlsv3.DownstreamTlsContext) {
		vc := &tlsv3.CertificateValidationContext{TrustedCa: inline(f.ca.PEM)}
		if configure != nil {
			configure(vc)
		}
		pb.RequireClientCertificate = wrapperspb.Bool(true)
		pb.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
	}
}

// handshake runs a handshake between s and a client configured by cc over
// loopback TCP and returns the server's error, or its state.
func handshake(t *testing.T, s *Server, cc *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := tls.Dial("tcp", ln.Addr().String(), cc)
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1)) // TLS 1.3: the server's verdict on the client's certificate
		c.Close()
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { raw.Close(); <-done }()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	sc := tls.Server(raw, s.Config)
	err = sc.Handshake()
	return sc.ConnectionState(), err
}

func (f *fixture) clientConfig(configure func(*tls.Config)) *tls.Config {
	cc := &tls.Config{RootCAs: f.ca.Pool(), ServerName: "server.test"}
	if configure != nil {
		configure(cc)
	}
	return cc
}

func (f *fixture) withCert(l *tlstest.Leaf, t *testing.T) func(*tls.Config) {
	cert := l.TLS(t)
	return func(c *tls.Config) {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
}

func TestServerHandshakes(t *testing.T) {
	f := newFixture(t)
	other := f.ca.Issue(t, "other", "spiffe://test/other")
	stranger := tlstest.NewCA(t, "stranger").Issue(t, "client", "spiffe://test/client")
	leafHash := sha256.Sum256(f.client.Cert.Raw)
	spki := sha256.Sum256(f.client.Cert.RawSubjectPublicKeyInfo)
	uri := func(v string) *tlsv3.SubjectAltNameMatcher {
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}
	}
	dns := func(v string) *tlsv3.SubjectAltNameMatcher {
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}
	}
	wildcard := f.ca.Issue(t, "wild", "*.client.test")
	for _, tt := range []struct {
		name    string
		server  func(*tlsv3.DownstreamTlsContext)
		client  func(*tls.Config)
		reason  string // VerifyError.Reason, or "error" for another failure, "" for success
		version uint16
		alpn    string
	}{
		{name: "plain", version: tls.VersionTLS13},
		{name: "alpn", server: func(pb *tlsv3.DownstreamTlsContext) { pb.CommonTlsContext.AlpnProtocols = []string{"h2", "http/1.1"} },
			client: func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }, alpn: "http/1.1", version: tls.VersionTLS13},
		{name: "alpn without a common protocol goes on without ALPN", server: func(pb *tlsv3.DownstreamTlsContext) { pb.CommonTlsContext.AlpnProtocols = []string{"h2"} },
			client: func(c *tls.Config) { c.NextProtos = []string{"spdy/3"} }, version: tls.VersionTLS13},
		{name: "Envoy's default cipher list refuses CBC", client: func(c *tls.Config) {
			c.MaxVersion, c.CipherSuites = tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
		}, reason: "error"},
		{name: "Envoy's default curves refuse P-384 alone", client: func(c *tls.Config) { c.CurvePreferences = []tls.CurveID{tls.CurveP384} }, reason: "error"},
		{name: "an ECDHE GCM cipher of the default list", client: func(c *tls.Config) {
			c.MaxVersion, c.CipherSuites = tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}
		}, version: tls.VersionTLS12},
		{name: "max TLS 1.2 and a cipher", server: func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
				CipherSuites: []string{"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]"}}
		}, version: tls.VersionTLS12},
		{name: "min TLS 1.3 against a TLS 1.2 client", server: func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3}
		}, client: func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }, reason: "error"},
		{name: "require_sni without a name", server: func(pb *tlsv3.DownstreamTlsContext) { pb.RequireSni = wrapperspb.Bool(true) },
			client: func(c *tls.Config) { c.ServerName = ""; c.InsecureSkipVerify = true }, reason: "error"},
		{name: "require_sni with a name", server: func(pb *tlsv3.DownstreamTlsContext) { pb.RequireSni = wrapperspb.Bool(true) }, version: tls.VersionTLS13},
		{name: "client certificate", server: f.validation(nil), client: f.withCert(f.client, t), version: tls.VersionTLS13},
		{name: "no client certificate", server: f.validation(nil), reason: "error"},
		{name: "client certificate of another CA", server: f.validation(nil), client: f.withCert(stranger, t), reason: "error"},
		{name: "URI SAN matches", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{uri("spiffe://test/nobody"), uri("spiffe://test/client")}
		}), client: f.withCert(f.client, t), version: tls.VersionTLS13},
		{name: "URI SAN differs", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{uri("spiffe://test/client")}
		}), client: f.withCert(other, t), reason: "fail_verify_san"},
		{name: "DNS SAN of the other type", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{dns("spiffe://test/client")}
		}), client: f.withCert(f.client, t), reason: "fail_verify_san"},
		{name: "SAN matcher without require_client_certificate, no certificate", server: func(pb *tlsv3.DownstreamTlsContext) {
			f.validation(func(vc *tlsv3.CertificateValidationContext) {
				vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{uri("spiffe://test/client")}
			})(pb)
			pb.RequireClientCertificate = nil
		}, reason: "error"},
		{name: "no pins, no require_client_certificate, no certificate", server: func(pb *tlsv3.DownstreamTlsContext) {
			f.validation(nil)(pb)
			pb.RequireClientCertificate = nil
		}, version: tls.VersionTLS13},
		{name: "DNS SAN exact, other case", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{dns("CLIENT.test")}
		}), client: f.withCert(f.client, t), version: tls.VersionTLS13},
		{name: "wildcard certificate name", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{dns("a.client.test")}
		}), client: f.withCert(wildcard, t), version: tls.VersionTLS13},
		{name: "certificate hash", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			h := strings.ToUpper(hex.EncodeToString(leafHash[:]))
			var colons []string
			for i := 0; i < len(h); i += 2 {
				colons = append(colons, h[i:i+2])
			}
			vc.VerifyCertificateHash = []string{strings.Join(colons, ":")}
		}), client: f.withCert(f.client, t), version: tls.VersionTLS13},
		{name: "certificate hash differs", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.VerifyCertificateHash = []string{hex.EncodeToString(leafHash[:])}
		}), client: f.withCert(other, t), reason: "fail_verify_cert_hash"},
		{name: "SPKI pin", server: f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.VerifyCertificateSpki = []string{base64.StdEncoding.EncodeToString(spki[:])}
		}), client: f.withCert(f.client, t), version: tls.VersionTLS13},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewServer(f.context(tt.server), Secrets{})
			if err != nil {
				t.Fatal(err)
			}
			cs, err := handshake(t, s, f.clientConfig(tt.client))
			var ve *VerifyError
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tt.reason == "error" && err == nil:
				t.Fatal("handshake succeeded; want it refused")
			case tt.reason != "" && tt.reason != "error" && (!errors.As(err, &ve) || ve.Reason != tt.reason):
				t.Fatalf("handshake: %v; want a VerifyError %s", err, tt.reason)
			case tt.reason == "" && (cs.Version != tt.version || cs.NegotiatedProtocol != tt.alpn):
				t.Errorf("version %x, ALPN %q; want %x, %q", cs.Version, cs.NegotiatedProtocol, tt.version, tt.alpn)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	f := newFixture(t)
	sds := &tlsv3.SdsSecretConfig{Name: "cert", SdsConfig: &corev3.ConfigSource{}}
	for _, tt := range []struct {
		name      string
		configure func(*tlsv3.DownstreamTlsContext)
		want      string
	}{
		{"no common context", func(pb *tlsv3.DownstreamTlsContext) { pb.CommonTlsContext = nil }, "common_tls_context: is required"},
		{"no certificate", func(pb *tlsv3.DownstreamTlsContext) { pb.CommonTlsContext.TlsCertificates = nil }, "common_tls_context.tls_certificates: a server needs"},
		{"SDS", func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{sds}
		}, "common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: secrets by SDS are not available here"},
		{"bad PEM", func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsCertificates[0].CertificateChain = inline([]byte("not a certificate"))
		}, "common_tls_context.tls_certificates[0].certificate_chain: with private_key"},
		{"missing file", func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsCertificates[0].PrivateKey = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/nonexistent/key.pem"}}
		}, "tls_certificates[0].private_key.filename: open /nonexistent/key.pem"},
		{"password", func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsCertificates[0].Password = inline([]byte("x"))
		}, "tls_certificates[0].password"},
		{"unknown cipher", func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{CipherSuites: []string{"ECDHE-RSA-AES128-GCM-SHA256", "RC4-MD5"}}
		}, `tls_params.cipher_suites[1]: unknown cipher suite "RC4-MD5"`},
		{"unknown curve", func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{EcdhCurves: []string{"P-224"}}
		}, `tls_params.ecdh_curves[0]: unknown curve "P-224"`},
		{"versions upside down", func(pb *tlsv3.DownstreamTlsContext) {
			pb.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3, TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_2}
		}, "tls_params.tls_minimum_protocol_version: is above"},
		{"empty ALPN", func(pb *tlsv3.DownstreamTlsContext) { pb.CommonTlsContext.AlpnProtocols = []string{"h2", ""} }, "common_tls_context.alpn_protocols[1]"},
		{"client certificate without a CA", func(pb *tlsv3.DownstreamTlsContext) { pb.RequireClientCertificate = wrapperspb.Bool(true) },
			"require_client_certificate: needs"},
		{"validation without trusted_ca", f.validation(func(vc *tlsv3.CertificateValidationContext) { vc.TrustedCa = nil }),
			"common_tls_context.validation_context.trusted_ca: is required"},
		{"bad hash", f.validation(func(vc *tlsv3.CertificateValidationContext) { vc.VerifyCertificateHash = []string{"abcd"} }),
			"validation_context.verify_certificate_hash[0]"},
		{"CRL", f.validation(func(vc *tlsv3.CertificateValidationContext) { vc.Crl = inline([]byte("x")) }), "validation_context.crl"},
		{"ACCEPT_UNTRUSTED", f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.TrustChainVerification = tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED
		}), "validation_context.trust_chain_verification"},
		{"OTHER_NAME SAN", f.validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_OTHER_NAME, Matcher: &matcherv3.StringMatcher{}}}
		}), "match_typed_subject_alt_names[0].san_type"},
		{"stapling", func(pb *tlsv3.DownstreamTlsContext) { pb.OcspStaplePolicy = tlsv3.DownstreamTlsContext_MUST_STAPLE }, "ocsp_staple_policy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewServer(f.context(tt.configure), Secrets{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewServer: %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDownstream(t *testing.T) {
	f := newFixture(t)
	a, err := anypb.New(f.context(nil))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Downstream(&corev3.TransportSocket{Name: SocketName, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, Secrets{})
	if err != nil || s == nil || len(s.Config.Certificates) != 1 {
		t.Fatalf("Downstream(DownstreamTlsContext) = %v, %v", s, err)
	}
	raw, _ := anypb.New(&corev3.Address{})
	if _, err := Downstream(&corev3.TransportSocket{Name: "x", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: raw}}, Secrets{}); err == nil ||
		!strings.Contains(err.Error(), "typed_config") {
		t.Errorf("Downstream(an Address): %v; want an error naming typed_config", err)
	}
	if _, err := Downstream(&corev3.TransportSocket{Name: SocketName}, Secrets{}); err == nil {
		t.Error("Downstream without typed_config: no error")
	}
}

// ChannelTLS takes a google_grpc service's ssl_credentials: roots and a
// client certificate, or refuses them naming the field.
func TestChannelTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "control plane CA")
	leaf := ca.Issue(t, "skiff", "skiff.test")
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	cfg, err := ChannelTLS(&corev3.GrpcService_GoogleGrpc_SslCredentials{RootCerts: inline(ca.PEM), CertChain: inline(leaf.CertPEM), PrivateKey: inline(leaf.KeyPEM)})
	if err != nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
		t.Fatalf("ChannelTLS = %v, %v", cfg, err)
	}
	for _, tt := range []struct {
		pb   *corev3.GrpcService_GoogleGrpc_SslCredentials
		want string
	}{
		{&corev3.GrpcService_GoogleGrpc_SslCredentials{RootCerts: inline([]byte("nope"))}, "root_certs: no PEM certificate"},
		{&corev3.GrpcService_GoogleGrpc_SslCredentials{CertChain: inline(leaf.CertPEM)}, "cert_chain: cert_chain and private_key go together"},
		{&corev3.GrpcService_GoogleGrpc_SslCredentials{CertChain: inline(leaf.CertPEM), PrivateKey: inline(ca.PEM)}, "cert_chain: with private_key: "},
	} {
		if _, err := ChannelTLS(tt.pb); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("ChannelTLS(%v): %v, want an error starting %q", tt.pb, err, tt.want)
		}
	}
}
