package hcm

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/tlstest"
)

func TestXFCCModes(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	client := ca.Issue(t, "client", "spiffe://td/client", "client.test")
	local := ca.Issue(t, "edge", "spiffe://td/edge")
	plain := &filter.Conn{}
	tlsOnly := &filter.Conn{TLS: &tls.ConnectionState{}}
	mtls := &filter.Conn{TLS: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{client.Cert, ca.Cert}}, TLSLocal: local.Cert}
	for _, tt := range []struct {
		mode                hcmv3.HttpConnectionManager_ForwardClientCertDetails
		dropPlain, dropMTLS bool
		sets                bool
	}{
		{hcmv3.HttpConnectionManager_SANITIZE, true, true, false},
		{hcmv3.HttpConnectionManager_FORWARD_ONLY, true, false, false},
		{hcmv3.HttpConnectionManager_APPEND_FORWARD, true, false, true},
		{hcmv3.HttpConnectionManager_SANITIZE_SET, true, true, true},
		{hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY, false, false, false},
	} {
		m := &Manager{xfcc: tt.mode}
		if m.dropsXFCC(plain) != tt.dropPlain || m.dropsXFCC(tlsOnly) != tt.dropPlain || m.dropsXFCC(mtls) != tt.dropMTLS || m.setsXFCC() != tt.sets {
			t.Errorf("%v: drops plain %v, TLS without a client certificate %v, mutual TLS %v, sets %v; want %v, %v, %v, %v", tt.mode,
				m.dropsXFCC(plain), m.dropsXFCC(tlsOnly), m.dropsXFCC(mtls), m.setsXFCC(), tt.dropPlain, tt.dropPlain, tt.dropMTLS, tt.sets)
		}
	}
	if mutualTLS(plain) || mutualTLS(tlsOnly) || !mutualTLS(mtls) {
		t.Error("mutualTLS: want only the connection with a client certificate")
	}

	h := sha256.Sum256(client.Cert.Raw)
	hash := hex.EncodeToString(h[:])
	if got, want := xfccElement(mtls, nil), "By=spiffe://td/edge;Hash="+hash; got != want {
		t.Errorf("xfccElement without details = %q, want %q", got, want)
	}
	all := &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Subject: wrapperspb.Bool(true), Cert: true, Chain: true, Dns: true, Uri: true}
	got := xfccElement(mtls, all)
	parts := strings.Split(got, ";")
	if len(parts) != 7 || parts[0] != "By=spiffe://td/edge" || parts[1] != "Hash="+hash || parts[4] != `Subject="CN=client"` ||
		parts[5] != "URI=spiffe://td/client" || parts[6] != "DNS=client.test" {
		t.Fatalf("xfccElement with all details = %q", got)
	}
	if strings.Contains(parts[2], "+") || !strings.Contains(parts[2], "BEGIN%20CERTIFICATE") {
		t.Errorf("Cert %q: want spaces as %%20, as Envoy", parts[2][:40])
	}
	cert, _ := url.QueryUnescape(strings.TrimSuffix(strings.TrimPrefix(parts[2], `Cert="`), `"`))
	chain, _ := url.QueryUnescape(strings.TrimSuffix(strings.TrimPrefix(parts[3], `Chain="`), `"`))
	if cert != string(client.CertPEM) || chain != string(client.CertPEM)+string(ca.PEM) {
		t.Errorf("Cert and Chain: %q, %q; want the client's certificate and the chain in PEM", cert, chain)
	}
}
