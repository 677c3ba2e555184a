package engine

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/netip"
	"net/url"
	"testing"
)

// benchRules looks like what a mesh control plane sends: a deny list by IP,
// then allow policies by path, method header and source, the one that
// matches the benchmark's request coming last by name.
const benchRules = `
action: ALLOW
policies:
  a-admins:
    permissions: [{and_rules: {rules: [{url_path: {path: {prefix: /admin}}}, {header: {name: ":method", string_match: {exact: POST}}}]}}]
    principals: [{remote_ip: {address_prefix: 10.10.0.0, prefix_len: 16}}]
  b-health:
    permissions: [{url_path: {path: {exact: /healthz}}}]
    principals: [{any: true}]
  c-blocked:
    permissions: [{destination_port: 9999}]
    principals: [{not_id: {any: true}}]
  d-api:
    permissions:
      - {or_rules: {rules: [{url_path: {path: {prefix: /api/v1/}}}, {url_path: {path: {prefix: /api/v2/}}}]}}
    principals:
      - {and_ids: {ids: [{remote_ip: {address_prefix: 192.168.0.0, prefix_len: 16}}, {header: {name: x-tenant, string_match: {exact: acme}}}, {not_id: {direct_remote_ip: {address_prefix: 172.16.0.0, prefix_len: 12}}}]}}
`

func benchInput() *Input {
	return request{
		path:   "/api/v2/items?limit=10",
		kv:     []string{"x-tenant", "acme", "user-agent", "bench"},
		local:  "10.0.0.1:8080",
		source: "192.168.3.4:41000", directRemote: "192.168.3.4:41000", remote: "192.168.3.4:41000",
	}.input()
}

func BenchmarkEvaluate(b *testing.B) {
	e := compile(b, benchRules, HTTP)
	in := benchInput()
	b.ReportAllocs()
	for b.Loop() {
		if ok, p := e.Evaluate(in); !ok || p != 3 {
			b.Fatalf("Evaluate = %v, %d", ok, p)
		}
	}
}

func BenchmarkEvaluateDenied(b *testing.B) {
	e := compile(b, benchRules, HTTP)
	in := benchInput()
	in.Remote = netip.MustParseAddrPort("203.0.113.9:41000") // no policy matches
	b.ReportAllocs()
	for b.Loop() {
		if ok, p := e.Evaluate(in); ok || p != -1 {
			b.Fatalf("Evaluate = %v, %d", ok, p)
		}
	}
}

// BenchmarkEvaluateAuthenticated is a mesh's policy: the client's SPIFFE ID
// among the allowed service accounts, from its certificate's URI SAN.
func BenchmarkEvaluateAuthenticated(b *testing.B) {
	e := compile(b, `
policies:
  ns-default:
    permissions: [{any: true}]
    principals:
      - {authenticated: {principal_name: {exact: spiffe://cluster.local/ns/default/sa/frontend}}}
      - {authenticated: {principal_name: {exact: spiffe://cluster.local/ns/default/sa/backend}}}
`, Network)
	peer := peerCert(b, pkix.Name{}, []*url.URL{mustURL(b, "spiffe://cluster.local/ns/default/sa/backend")})
	in := &Input{TLS: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{peer}}}
	b.ReportAllocs()
	for b.Loop() {
		if ok, p := e.Evaluate(in); !ok || p != 0 {
			b.Fatalf("Evaluate = %v, %d", ok, p)
		}
	}
}
