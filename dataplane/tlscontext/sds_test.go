package tlscontext

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/skiffproxy/skiff/internal/tlstest"
)

// bySDS is an SdsSecretConfig naming a secret by SDS (over ADS).
func bySDS(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
}

// TestSDSSecrets: contexts whose secrets come by SDS refuse handshakes until
// the secrets come, then follow each new version from the next handshake on
// (a certificate rotated in place, as Envoy does), while connections made
// before keep theirs. A secret of the wrong kind is refused by Check.
func TestSDSSecrets(t *testing.T) {
	f := newFixture(t)
	store := NewSecretStore(slog.New(slog.DiscardHandler))
	secrets := Secrets{SDS: store}
	s, err := NewServer(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{bySDS("server-cert")},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{},
			ValidationContextSdsSecretConfig: bySDS("ROOTCA"),
		}},
	}}, secrets)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(&tlsv3.UpstreamTlsContext{Sni: "server.test", CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{bySDS("client-cert")},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: bySDS("ROOTCA")},
	}}, secrets)
	if err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{"server": s.Ready(), "client": c.Ready()} {
		if !errors.Is(err, ErrSecretNotReady) {
			t.Errorf("%s context before its secrets: Ready() = %v, want ErrSecretNotReady", what, err)
		}
	}
	if _, err := handshake(t, s, f.clientConfig(f.withCert(f.client, t))); !errors.Is(err, ErrSecretNotReady) || !strings.Contains(err.Error(), "server-cert") {
		t.Fatalf("handshake before the secrets: %v, want ErrSecretNotReady naming server-cert", err)
	}

	store.Set(map[string]*tlsv3.Secret{"server-cert": f.server.Secret("server-cert"), "ROOTCA": f.ca.Secret("ROOTCA"),
		"client-cert": f.client.Secret("client-cert")})
	addr := serve(t, s.Config)
	before, err := dialClient(t, c, addr, "", nil)
	if err != nil {
		t.Fatalf("handshake once the secrets came: %v", err)
	}
	defer before.Close()
	if got := before.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "server" {
		t.Fatalf("server certificate %q, want the secret's (server)", got)
	}
	if got := c.LocalCertificate(); got == nil || got.Subject.CommonName != "client" {
		t.Fatalf("client LocalCertificate %v, want the secret's", got)
	}

	// Rotation: a new server certificate, from a new CA that both sides
	// are told about in the same update.
	ca2 := tlstest.NewCA(t, "rotated CA")
	store.Set(map[string]*tlsv3.Secret{"server-cert": ca2.Issue(t, "server-2", "server.test").Secret("server-cert"),
		"client-cert": ca2.Issue(t, "client-2", "client.test").Secret("client-cert"), "ROOTCA": ca2.Secret("ROOTCA")})
	after, err := dialClient(t, c, addr, "", nil)
	if err != nil {
		t.Fatalf("handshake after the rotation: %v", err)
	}
	after.Close()
	if got := after.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "server-2" {
		t.Fatalf("server certificate after the rotation %q, want server-2", got)
	}
	if got := c.LocalCertificate(); got == nil || got.Subject.CommonName != "client-2" {
		t.Fatalf("client LocalCertificate after the rotation %v, want client-2", got)
	}
	// The connection made before goes on.
	if _, err := before.Write([]byte("z")); err != nil {
		t.Fatalf("the connection made before the rotation: %v", err)
	}
	// A client trusting only the old CA no longer gets through.
	if _, err := handshake(t, s, f.clientConfig(nil)); err == nil {
		t.Fatal("a client that trusts only the old CA completed a handshake with the rotated certificate")
	}

	if name, err := store.Check(map[string]*tlsv3.Secret{"ROOTCA": f.server.Secret("ROOTCA")}); name != "ROOTCA" || err == nil {
		t.Errorf("Check of a certificate where a validation context is used: %q, %v", name, err)
	}
	if name, err := store.Check(map[string]*tlsv3.Secret{"server-cert": f.ca.Secret("server-cert")}); name != "server-cert" || err == nil {
		t.Errorf("Check of a validation context where a certificate is used: %q, %v", name, err)
	}
	if _, err := store.Check(map[string]*tlsv3.Secret{"server-cert": f.server.Secret("server-cert")}); err != nil {
		t.Errorf("Check of a certificate: %v", err)
	}
}

// TestSDSServerConfigErrors: what a context says beside its SDS secrets is
// checked before they come.
func TestSDSServerConfigErrors(t *testing.T) {
	secrets := Secrets{SDS: NewSecretStore(slog.New(slog.DiscardHandler))}
	_, err := NewServer(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{bySDS("cert")},
		TlsParams:                      &tlsv3.TlsParameters{CipherSuites: []string{"NOT-A-CIPHER"}},
	}}, secrets)
	if err == nil || !strings.Contains(err.Error(), "tls_params.cipher_suites") {
		t.Errorf("NewServer: %v, want the cipher suite refused", err)
	}
	_, err = NewServer(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{SdsConfig: bySDS("x").GetSdsConfig()}},
	}}, secrets)
	if err == nil || !strings.Contains(err.Error(), "tls_certificate_sds_secret_configs[0].name") {
		t.Errorf("NewServer: %v, want the nameless secret refused", err)
	}
}
