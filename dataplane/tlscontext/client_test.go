package tlscontext

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/tlstest"
)

// upstreamServer is a TLS server on loopback TCP: it completes handshakes
// with cfg and reports each one's state (or error).
func upstreamServer(t *testing.T, cfg *tls.Config) (addr string, states <-chan serverResult) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan serverResult, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			sc := tls.Server(c, cfg)
			err = sc.Handshake()
			if err == nil {
				// TLS 1.3: the client's verdict on our certificate, and the
				// session ticket reaching it.
				sc.Write([]byte("x"))
				sc.Read(make([]byte, 1))
			}
			ch <- serverResult{sc.ConnectionState(), err}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), ch
}

type serverResult struct {
	cs  tls.ConnectionState
	err error
}

// dialClient handshakes with c over a new connection to addr.
func dialClient(t *testing.T, c *Client, addr, hostname string, alpn []string) (*tls.Conn, error) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tc, err := c.Handshake(ctx, raw, HandshakeOptions{Hostname: hostname, ALPN: alpn})
	if err != nil {
		raw.Close()
		return nil, err
	}
	tc.Read(make([]byte, 1)) // the server's byte (and TLS 1.3 session ticket)
	tc.Write([]byte("y"))
	return tc, nil
}

func TestClientHandshakes(t *testing.T) {
	f := newFixture(t)
	stranger := tlstest.NewCA(t, "stranger").Issue(t, "server", "server.test")
	serverHash := sha256.Sum256(f.server.Cert.Raw)
	dns := func(v string) *tlsv3.SubjectAltNameMatcher {
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}
	}
	validation := func(configure func(*tlsv3.CertificateValidationContext)) func(*tlsv3.UpstreamTlsContext) {
		return func(pb *tlsv3.UpstreamTlsContext) {
			vc := &tlsv3.CertificateValidationContext{TrustedCa: inline(f.ca.PEM)}
			if configure != nil {
				configure(vc)
			}
			pb.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
		}
	}
	serverCert := func(l *tlstest.Leaf) func(*tls.Config) {
		return func(c *tls.Config) { c.Certificates = []tls.Certificate{l.TLS(t)} }
	}
	for _, tt := range []struct {
		name     string
		client   func(*tlsv3.UpstreamTlsContext)
		server   func(*tls.Config)
		hostname string
		alpn     []string // the caller's fallback
		reason   string   // VerifyError.Reason, "error" for another failure, "" for success
		version  uint16
		sni      string // what the server saw
		proto    string // negotiated
	}{
		{name: "no validation context accepts any certificate", server: serverCert(stranger), version: tls.VersionTLS12},
		{name: "sni", client: func(pb *tlsv3.UpstreamTlsContext) { pb.Sni = "server.test" }, sni: "server.test", version: tls.VersionTLS12},
		{name: "auto_host_sni", client: func(pb *tlsv3.UpstreamTlsContext) { pb.Sni = "x.test"; pb.AutoHostSni = true },
			hostname: "host.test", sni: "host.test", version: tls.VersionTLS12},
		{name: "auto_host_sni without a hostname keeps sni", client: func(pb *tlsv3.UpstreamTlsContext) { pb.Sni = "x.test"; pb.AutoHostSni = true },
			sni: "x.test", version: tls.VersionTLS12},
		{name: "TLS 1.3 by tls_params", client: func(pb *tlsv3.UpstreamTlsContext) {
			pb.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3}
		}, version: tls.VersionTLS13},
		{name: "ALPN fallback", alpn: []string{"h2"}, server: func(c *tls.Config) { c.NextProtos = []string{"h2", "http/1.1"} },
			proto: "h2", version: tls.VersionTLS12},
		{name: "alpn_protocols win over the fallback", client: func(pb *tlsv3.UpstreamTlsContext) { pb.CommonTlsContext.AlpnProtocols = []string{"http/1.1"} },
			alpn: []string{"h2"}, server: func(c *tls.Config) { c.NextProtos = []string{"h2", "http/1.1"} }, proto: "http/1.1", version: tls.VersionTLS12},
		{name: "trusted_ca", client: validation(nil), version: tls.VersionTLS12},
		{name: "trusted_ca refuses another CA's certificate", client: validation(nil), server: serverCert(stranger), reason: "fail_verify_error"},
		{name: "SAN matches", client: validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{dns("other.test"), dns("server.test")}
		}), version: tls.VersionTLS12},
		{name: "SAN differs", client: validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{dns("other.test")}
		}), reason: "fail_verify_san"},
		{name: "no SNI check without auto_sni_san_validation", client: func(pb *tlsv3.UpstreamTlsContext) {
			validation(nil)(pb)
			pb.Sni = "elsewhere.test"
		}, sni: "elsewhere.test", version: tls.VersionTLS12},
		{name: "auto_sni_san_validation", client: func(pb *tlsv3.UpstreamTlsContext) {
			validation(func(vc *tlsv3.CertificateValidationContext) {
				vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{dns("other.test")} // replaced
			})(pb)
			pb.Sni, pb.AutoSniSanValidation = "SERVER.test", true
		}, sni: "SERVER.test", version: tls.VersionTLS12},
		{name: "auto_sni_san_validation refuses", client: func(pb *tlsv3.UpstreamTlsContext) {
			validation(nil)(pb)
			pb.Sni, pb.AutoSniSanValidation = "elsewhere.test", true
		}, reason: "fail_verify_san"},
		{name: "certificate hash", client: validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.VerifyCertificateHash = []string{hex.EncodeToString(serverHash[:])}
		}), version: tls.VersionTLS12},
		{name: "certificate hash differs", client: validation(func(vc *tlsv3.CertificateValidationContext) {
			vc.VerifyCertificateHash = []string{strings.Repeat("ab", 32)}
		}), reason: "fail_verify_cert_hash"},
		{name: "client certificate", client: func(pb *tlsv3.UpstreamTlsContext) {
			pb.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{CertificateChain: inline(f.client.CertPEM), PrivateKey: inline(f.client.KeyPEM)}}
		}, server: func(c *tls.Config) { c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, f.ca.Pool() }, version: tls.VersionTLS12},
		{name: "server requires a client certificate", server: func(c *tls.Config) { c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, f.ca.Pool() },
			reason: "error"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pb := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{}}
			if tt.client != nil {
				tt.client(pb)
			}
			c, err := NewClient(pb, Secrets{})
			if err != nil {
				t.Fatal(err)
			}
			sc := &tls.Config{Certificates: []tls.Certificate{f.server.TLS(t)}}
			if tt.server != nil {
				tt.server(sc)
			}
			addr, results := upstreamServer(t, sc)
			tc, err := dialClient(t, c, addr, tt.hostname, tt.alpn)
			var ve *VerifyError
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tt.reason == "error" && err == nil:
				t.Fatal("handshake succeeded; want it refused")
			case tt.reason != "" && tt.reason != "error" && (!errors.As(err, &ve) || ve.Reason != tt.reason):
				t.Fatalf("handshake: %v; want a VerifyError %s", err, tt.reason)
			case tt.reason != "":
				return
			}
			defer tc.Close()
			cs := tc.ConnectionState()
			if cs.Version != tt.version || cs.NegotiatedProtocol != tt.proto {
				t.Errorf("version %x, ALPN %q; want %x, %q", cs.Version, cs.NegotiatedProtocol, tt.version, tt.proto)
			}
			r := <-results
			if r.err != nil || r.cs.ServerName != tt.sni {
				t.Errorf("server: %v, saw SNI %q; want %q", r.err, r.cs.ServerName, tt.sni)
			}
		})
	}
}

// TestClientSessionResumption: max_session_keys (default 1) keeps a session
// to resume, 0 none, over TLS 1.2 and 1.3.
func TestClientSessionResumption(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		name    string
		keys    *wrapperspb.UInt32Value
		max     tlsv3.TlsParameters_TlsProtocol
		resumed bool
	}{
		{"default, TLS 1.2", nil, tlsv3.TlsParameters_TLS_AUTO, true},
		{"default, TLS 1.3", nil, tlsv3.TlsParameters_TLSv1_3, true},
		{"max_session_keys 0", wrapperspb.UInt32(0), tlsv3.TlsParameters_TLSv1_3, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(&tlsv3.UpstreamTlsContext{Sni: "server.test", MaxSessionKeys: tt.keys, CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsParams: &tlsv3.TlsParameters{TlsMaximumProtocolVersion: tt.max}}}, Secrets{})
			if err != nil {
				t.Fatal(err)
			}
			addr, results := upstreamServer(t, &tls.Config{Certificates: []tls.Certificate{f.server.TLS(t)}})
			for i := range 2 {
				tc, err := dialClient(t, c, addr, "", nil)
				if err != nil {
					t.Fatal(err)
				}
				tc.Close()
				r := <-results
				if want := i == 1 && tt.resumed; r.cs.DidResume != want {
					t.Errorf("handshake %d: resumed %v, want %v", i+1, r.cs.DidResume, want)
				}
			}
		})
	}
}

func TestClientConfigErrors(t *testing.T) {
	f := newFixture(t)
	cert := &tlsv3.TlsCertificate{CertificateChain: inline(f.client.CertPEM), PrivateKey: inline(f.client.KeyPEM)}
	for _, tt := range []struct {
		name string
		pb   *tlsv3.UpstreamTlsContext
		want string
	}{
		{"two certificates", &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{cert, cert}}},
			"common_tls_context.tls_certificates: a client context takes one certificate, not 2"},
		{"auto_sni_san_validation without a CA", &tlsv3.UpstreamTlsContext{AutoSniSanValidation: true}, "auto_sni_san_validation: needs"},
		{"SDS", &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: &corev3.ConfigSource{}}}}},
			"common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: secrets by SDS are not available here"},
		{"no such static secret", &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default"}}}},
			`common_tls_context.tls_certificate_sds_secret_configs[0].name: no secret "default" in static_resources.secrets`},
		{"min above the client's default max", &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3}}}, "tls_params.tls_minimum_protocol_version: is above"},
		{"bad trusted_ca", &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline([]byte("x"))}}}}, "validation_context.trusted_ca: holds no PEM"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient(tt.pb, Secrets{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewClient: %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestStaticSecrets: TLS contexts take certificates and validation contexts
// from static_resources.secrets by name (an SdsSecretConfig without
// sds_config); a combined validation context merges the secret over its
// default, as Envoy.
func TestStaticSecrets(t *testing.T) {
	f := newFixture(t)
	secrets := Secrets{Static: map[string]*tlsv3.Secret{
		"server": {Name: "server", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(f.server.CertPEM), PrivateKey: inline(f.server.KeyPEM)}}},
		"ca": {Name: "ca", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(f.ca.PEM)}}},
	}}
	s, err := NewServer(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "server"}}}}, secrets)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s.Config)
	for _, tt := range []struct {
		name string
		vc   *tlsv3.CommonTlsContext
		ok   bool
	}{
		{"validation_context_sds_secret_config", &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ca"}}}, true},
		{"combined, the default's SAN matcher matches", combined("ca", "server.test"), true},
		{"combined, the default's SAN matcher refuses", combined("ca", "other.test"), false},
		{"combined, the secret's trusted_ca wins over the default's", func() *tlsv3.CommonTlsContext {
			c := combined("ca", "server.test")
			c.GetCombinedValidationContext().DefaultValidationContext.TrustedCa = inline(tlstest.NewCA(t, "other").PEM)
			return c
		}(), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(&tlsv3.UpstreamTlsContext{Sni: "server.test", CommonTlsContext: tt.vc}, secrets)
			if err != nil {
				t.Fatal(err)
			}
			tc, err := dialClient(t, c, addr, "", nil)
			if (err == nil) != tt.ok {
				t.Fatalf("handshake: %v, want success %v", err, tt.ok)
			}
			if tc != nil {
				tc.Close()
			}
		})
	}
	for _, tt := range []struct {
		name string
		ctc  *tlsv3.CommonTlsContext
		want string
	}{
		{"a validation context as a certificate", &tlsv3.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "ca"}}},
			`tls_certificate_sds_secret_configs[0].name: secret "ca" is not a tls_certificate`},
		{"a certificate as a validation context", &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "server"}}}, `validation_context_sds_secret_config.name: secret "server" is not a validation_context`},
		{"a missing validation context", combined("nope", "x"), `combined_validation_context.validation_context_sds_secret_config.name: no secret "nope"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient(&tlsv3.UpstreamTlsContext{CommonTlsContext: tt.ctc}, secrets)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewClient: %v; want an error containing %q", err, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		name string
		sec  *tlsv3.Secret
		want string
	}{
		{"no name", &tlsv3.Secret{Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(f.ca.PEM)}}}, "name: a secret needs a name"},
		{"bad key", &tlsv3.Secret{Name: "x", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(f.server.CertPEM), PrivateKey: inline(f.client.KeyPEM)}}}, "tls_certificate.certificate_chain: with private_key"},
		{"generic", &tlsv3.Secret{Name: "x", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{}}}, "generic_secret"},
		{"empty", &tlsv3.Secret{Name: "x"}, "a secret needs a tls_certificate or a validation_context"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckSecret(tt.sec); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("CheckSecret: %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// combined is a combined validation context: the secret named secret, and a
// default context with an exact DNS SAN matcher.
func combined(secret, san string) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: san}}}}},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: secret},
		}}}
}

// serve is upstreamServer for tests that do not look at the server's side
// of the handshakes.
func serve(t *testing.T, cfg *tls.Config) string {
	addr, results := upstreamServer(t, cfg)
	go func() {
		for range results {
		}
	}()
	return addr
}

// TestHandshakeOptions: a per-connection SNI (auto_sni) replaces the
// context's, and VerifyName (auto_san_validation) checks the server's
// certificate for a name (a DNS SAN, or an IP SAN for an address), with a
// validation context or without one.
func TestHandshakeOptions(t *testing.T) {
	f := newFixture(t)
	ipLeaf := f.ca.Issue(t, "by address", "127.0.0.1")
	byName := serve(t, &tls.Config{Certificates: []tls.Certificate{f.server.TLS(t)}})
	byIP := serve(t, &tls.Config{Certificates: []tls.Certificate{ipLeaf.TLS(t)}})
	withCA := &tlsv3.UpstreamTlsContext{Sni: "default.test", CommonTlsContext: &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
		ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(f.ca.PEM)}}}}
	bare := &tlsv3.UpstreamTlsContext{Sni: "default.test"}
	for _, tt := range []struct {
		name string
		pb   *tlsv3.UpstreamTlsContext
		addr string
		o    HandshakeOptions
		sni  string // sent; "" for a refused handshake
	}{
		{"the context's SNI", withCA, byName, HandshakeOptions{}, "default.test"},
		{"SNI replaced", withCA, byName, HandshakeOptions{SNI: "server.test"}, "server.test"},
		{"name checked", withCA, byName, HandshakeOptions{SNI: "server.test", VerifyName: "server.test"}, "server.test"},
		{"name refused", withCA, byName, HandshakeOptions{SNI: "other.test", VerifyName: "other.test"}, ""},
		{"name checked without a validation context", bare, byName, HandshakeOptions{SNI: "server.test", VerifyName: "server.test"}, "server.test"},
		{"name refused without a validation context", bare, byName, HandshakeOptions{VerifyName: "other.test"}, ""},
		{"IP address checked", withCA, byIP, HandshakeOptions{VerifyName: "127.0.0.1"}, "default.test"},
		{"IP address refused", withCA, byName, HandshakeOptions{VerifyName: "127.0.0.1"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.pb, Secrets{})
			if err != nil {
				t.Fatal(err)
			}
			raw, err := net.Dial("tcp", tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			tc, err := c.Handshake(ctx, raw, tt.o)
			var ve *VerifyError
			switch {
			case tt.sni == "" && (!errors.As(err, &ve) || ve.Reason != "fail_verify_san"):
				t.Fatalf("handshake: %v, want fail_verify_san", err)
			case tt.sni != "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tt.sni != "" && tc.ConnectionState().ServerName != tt.sni:
				t.Errorf("SNI %q, want %q", tc.ConnectionState().ServerName, tt.sni)
			}
		})
	}
}
