package admin

import (
	"strings"
	"testing"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

func inline(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}

// tlsListener is a listener whose filter chain terminates TLS with a private
// key given inline, the key packed in an Any two levels down.
func tlsListener(t *testing.T) *listenerv3.Listener {
	t.Helper()
	tlsCtx, err := anypb.New(&tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates: []*tlsv3.TlsCertificate{{
				CertificateChain: inline("PUBLIC-CERTIFICATE"),
				PrivateKey:       inline("PRIVATE-KEY"),
				Password:         inline("KEY-PASSWORD"),
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name: "tls",
		FilterChains: []*listenerv3.FilterChain{{
			TransportSocket: &corev3.TransportSocket{
				Name:       "envoy.transport_sockets.tls",
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx},
			},
		}},
	}
}

func TestRedactAny(t *testing.T) {
	l := tlsListener(t)
	a, err := anypb.New(l)
	if err != nil {
		t.Fatal(err)
	}
	Redact(a)
	got := &listenerv3.Listener{}
	if err := a.UnmarshalTo(got); err != nil {
		t.Fatal(err)
	}
	tc := &tlsv3.DownstreamTlsContext{}
	if err := got.GetFilterChains()[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
		t.Fatal(err)
	}
	cert := tc.GetCommonTlsContext().GetTlsCertificates()[0]
	if k := cert.GetPrivateKey().GetInlineString(); k != redacted {
		t.Errorf("private_key.inline_string = %q, want %q", k, redacted)
	}
	if p := cert.GetPassword().GetInlineString(); p != redacted {
		t.Errorf("password.inline_string = %q, want %q", p, redacted)
	}
	if c := cert.GetCertificateChain().GetInlineString(); c != "PUBLIC-CERTIFICATE" {
		t.Errorf("certificate_chain.inline_string = %q, want it kept (it is not secret)", c)
	}
	if got.GetName() != "tls" {
		t.Errorf("name = %q, want it kept", got.GetName())
	}
	// The listener that was packed is untouched: Redact works on the Any's bytes.
	if strings.Contains(prototext.Format(l), redacted) {
		t.Error("Redact changed the message that was packed into the Any")
	}
}

func TestRedactTypedStructAndBytes(t *testing.T) {
	value, err := structpb.NewStruct(map[string]any{
		"name":           "s",
		"generic_secret": map[string]any{"secret": map[string]any{"inline_string": "TOKEN"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := &xdstypev3.TypedStruct{TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", Value: value}
	Redact(ts)
	if s := prototext.Format(ts); strings.Contains(s, "TOKEN") || !strings.Contains(s, redacted) || !strings.Contains(s, `"s"`) {
		t.Errorf("TypedStruct after Redact:\n%s\nwant the secret redacted and the name kept", s)
	}

	// Bytes and everything below a sensitive field.
	sec := &tlsv3.Secret{Name: "b", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("RAW")}},
	}}}
	Redact(sec)
	if b := sec.GetGenericSecret().GetSecret().GetInlineBytes(); string(b) != redacted {
		t.Errorf("generic_secret.secret.inline_bytes = %q, want %q", b, redacted)
	}

	// An Any of a type this binary does not know is left alone.
	unknown := &anypb.Any{TypeUrl: "type.googleapis.com/not.a.Type", Value: []byte{1, 2, 3}}
	before := proto.Clone(unknown)
	Redact(unknown)
	if !proto.Equal(before, unknown) {
		t.Errorf("Redact changed an Any of an unknown type: %v", unknown)
	}
}
