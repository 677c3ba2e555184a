package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func parse(t testing.TB, y string) *rbacv3.RBAC {
	t.Helper()
	var pb rbacv3.RBAC
	if err := protoyaml.Unmarshal([]byte(y), &pb); err != nil {
		t.Fatalf("parsing %s: %v", y, err)
	}
	return &pb
}

func compile(t testing.TB, y string, mode Mode) *Engine {
	t.Helper()
	pb := parse(t, y)
	if err := cfgerr.Validate(pb); err != nil {
		t.Fatalf("validating: %v", err)
	}
	e, err := New(pb, mode)
	if err != nil {
		t.Fatalf("compiling: %v", err)
	}
	return e
}

// request builds an Input: method, path and header pairs, plus addresses.
type request struct {
	path                                string
	kv                                  []string
	local, source, directRemote, remote string
	sni                                 string
	noHeaders                           bool
}

func (r request) input() *Input {
	in := &Input{ServerName: r.sni}
	if !r.noHeaders {
		var h http.Header
		h.Add(http.Method, "GET")
		p := r.path
		if p == "" {
			p = "/"
		}
		h.Add(http.Path, p)
		h.Add(http.Authority, "example.com")
		for i := 0; i+1 < len(r.kv); i += 2 {
			h.Add(r.kv[i], r.kv[i+1])
		}
		in.Headers = &h
	}
	ap := func(s string) netip.AddrPort {
		if s == "" {
			return netip.AddrPort{}
		}
		return netip.MustParseAddrPort(s)
	}
	in.Local, in.Source, in.DirectRemote, in.Remote = ap(r.local), ap(r.source), ap(r.directRemote), ap(r.remote)
	return in
}

func TestEvaluate(t *testing.T) {
	const anyone = "principals: [{any: true}]"
	for _, tc := range []struct {
		name    string
		rules   string
		req     request
		allowed bool
		policy  string
	}{
		{"allow, no policies: deny all", "action: ALLOW", request{}, false, ""},
		{"deny, no policies: allow all", "action: DENY", request{}, true, ""},
		{"allow any", `policies: {p: {permissions: [{any: true}], ` + anyone + `}}`, request{}, true, "p"},
		{"deny any", `action: DENY
policies: {p: {permissions: [{any: true}], ` + anyone + `}}`, request{}, false, "p"},
		{"log any allows", `action: LOG
policies: {p: {permissions: [{any: true}], ` + anyone + `}}`, request{}, true, "p"},
		{"first policy by name", `policies:
  zz: {permissions: [{any: true}], ` + anyone + `}
  aa: {permissions: [{any: true}], ` + anyone + `}`, request{}, true, "aa"},
		{"header exact", `policies: {p: {permissions: [{header: {name: x-user, string_match: {exact: alice}}}], ` + anyone + `}}`,
			request{kv: []string{"x-user", "alice"}}, true, "p"},
		{"header exact, other value", `policies: {p: {permissions: [{header: {name: x-user, string_match: {exact: alice}}}], ` + anyone + `}}`,
			request{kv: []string{"x-user", "bob"}}, false, ""},
		{"header missing", `policies: {p: {permissions: [{header: {name: x-user, present_match: true}}], ` + anyone + `}}`,
			request{}, false, ""},
		{"header absent wanted", `policies: {p: {permissions: [{header: {name: x-user, present_match: false}}], ` + anyone + `}}`,
			request{}, true, "p"},
		{"url_path prefix ignores query", `policies: {p: {permissions: [{url_path: {path: {exact: /admin}}}], ` + anyone + `}}`,
			request{path: "/admin?x=1"}, true, "p"},
		{"url_path ignores fragment", `policies: {p: {permissions: [{url_path: {path: {exact: /admin}}}], ` + anyone + `}}`,
			request{path: "/admin#top"}, true, "p"},
		{"url_path other", `policies: {p: {permissions: [{url_path: {path: {prefix: /admin}}}], ` + anyone + `}}`,
			request{path: "/public"}, false, ""},
		{"url_path without headers", `policies: {p: {permissions: [{url_path: {path: {prefix: /}}}], ` + anyone + `}}`,
			request{noHeaders: true}, false, ""},
		{"destination_ip", `policies: {p: {permissions: [{destination_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}], ` + anyone + `}}`,
			request{local: "10.1.2.3:80"}, true, "p"},
		{"destination_ip other family", `policies: {p: {permissions: [{destination_ip: {address_prefix: "::", prefix_len: 0}}], ` + anyone + `}}`,
			request{local: "10.1.2.3:80"}, false, ""},
		{"destination_ip mapped range", `policies: {p: {permissions: [{destination_ip: {address_prefix: "::ffff:10.0.0.0", prefix_len: 104}}], ` + anyone + `}}`,
			request{local: "10.1.2.3:80"}, true, "p"},
		{"destination_ip unknown", `policies: {p: {permissions: [{destination_ip: {address_prefix: 0.0.0.0}}], ` + anyone + `}}`,
			request{}, false, ""},
		{"destination_port", `policies: {p: {permissions: [{destination_port: 8080}], ` + anyone + `}}`,
			request{local: "10.1.2.3:8080"}, true, "p"},
		{"destination_port other", `policies: {p: {permissions: [{destination_port: 8080}], ` + anyone + `}}`,
			request{local: "10.1.2.3:80"}, false, ""},
		{"destination_port_range in", `policies: {p: {permissions: [{destination_port_range: {start: 8000, end: 9000}}], ` + anyone + `}}`,
			request{local: "10.1.2.3:8999"}, true, "p"},
		{"destination_port_range end excluded", `policies: {p: {permissions: [{destination_port_range: {start: 8000, end: 9000}}], ` + anyone + `}}`,
			request{local: "10.1.2.3:9000"}, false, ""},
		{"requested_server_name", `policies: {p: {permissions: [{requested_server_name: {suffix: .example.com}}], ` + anyone + `}}`,
			request{sni: "api.example.com"}, true, "p"},
		{"and_rules", `policies: {p: {permissions: [{and_rules: {rules: [{destination_port: 80}, {url_path: {path: {prefix: /a}}}]}}], ` + anyone + `}}`,
			request{local: "1.2.3.4:80", path: "/b"}, false, ""},
		{"or_rules", `policies: {p: {permissions: [{or_rules: {rules: [{destination_port: 80}, {url_path: {path: {prefix: /a}}}]}}], ` + anyone + `}}`,
			request{local: "1.2.3.4:81", path: "/a"}, true, "p"},
		{"not_rule", `policies: {p: {permissions: [{not_rule: {url_path: {path: {prefix: /a}}}}], ` + anyone + `}}`,
			request{path: "/b"}, true, "p"},
		{"permissions are or'ed", `policies: {p: {permissions: [{destination_port: 1}, {destination_port: 2}], ` + anyone + `}}`,
			request{local: "1.2.3.4:2"}, true, "p"},
		{"source_ip", `policies: {p: {permissions: [{any: true}], principals: [{source_ip: {address_prefix: 192.168.0.0, prefix_len: 16}}]}}`,
			request{source: "192.168.1.1:5000", remote: "8.8.8.8:1", directRemote: "8.8.8.8:1"}, true, "p"},
		{"direct_remote_ip", `policies: {p: {permissions: [{any: true}], principals: [{direct_remote_ip: {address_prefix: 192.168.0.0, prefix_len: 16}}]}}`,
			request{source: "8.8.8.8:1", remote: "8.8.8.8:1", directRemote: "192.168.1.1:5000"}, true, "p"},
		{"remote_ip", `policies: {p: {permissions: [{any: true}], principals: [{remote_ip: {address_prefix: "2001:db8::", prefix_len: 32}}]}}`,
			request{source: "8.8.8.8:1", remote: "[2001:db8::1]:1", directRemote: "8.8.8.8:1"}, true, "p"},
		{"remote_ip /32 exact", `policies: {p: {permissions: [{any: true}], principals: [{remote_ip: {address_prefix: 1.2.3.4, prefix_len: 32}}]}}`,
			request{remote: "1.2.3.5:1"}, false, ""},
		{"principal header", `policies: {p: {permissions: [{any: true}], principals: [{header: {name: x-id, string_match: {prefix: svc-}}}]}}`,
			request{kv: []string{"x-id", "svc-a"}}, true, "p"},
		{"principal url_path", `policies: {p: {permissions: [{any: true}], principals: [{url_path: {path: {exact: /x}}}]}}`,
			request{path: "/x"}, true, "p"},
		{"authenticated: not on a plain connection", `policies: {p: {permissions: [{any: true}], principals: [{authenticated: {}}]}}`,
			request{}, false, ""},
		{"not authenticated", `policies: {p: {permissions: [{any: true}], principals: [{not_id: {authenticated: {principal_name: {exact: spiffe://a}}}}]}}`,
			request{}, true, "p"},
		{"and_ids", `policies: {p: {permissions: [{any: true}], principals: [{and_ids: {ids: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}, {header: {name: x, present_match: true}}]}}]}}`,
			request{remote: "10.0.0.1:1"}, false, ""},
		{"or_ids", `policies: {p: {permissions: [{any: true}], principals: [{or_ids: {ids: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}, {header: {name: x, present_match: true}}]}}]}}`,
			request{kv: []string{"x", ""}}, true, "p"},
		{"permission and principal both needed", `policies: {p: {permissions: [{destination_port: 80}], principals: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]}}`,
			request{local: "1.1.1.1:80", remote: "11.0.0.1:1"}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := compile(t, tc.rules, HTTP)
			allowed, i := e.Evaluate(tc.req.input())
			if allowed != tc.allowed || e.Policy(i) != tc.policy {
				t.Errorf("Evaluate = %v, policy %q; want %v, %q", allowed, e.Policy(i), tc.allowed, tc.policy)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, rules string
		mode        Mode
		path, msg   string
	}{
		{"metadata permission", `policies: {p: {permissions: [{metadata: {filter: f, path: [{key: k}], value: {present_match: true}}}], principals: [{any: true}]}}`,
			HTTP, "policies[p].permissions[0].metadata", "not supported"},
		{"nested metadata principal", `policies: {p: {permissions: [{any: true}], principals: [{not_id: {or_ids: {ids: [{any: true}, {metadata: {filter: f, path: [{key: k}], value: {present_match: true}}}]}}}]}}`,
			HTTP, "policies[p].principals[0].not_id.or_ids.ids[1].metadata", "not supported"},
		{"filter_state", `policies: {p: {permissions: [{any: true}], principals: [{filter_state: {key: k, string_match: {exact: v}}}]}}`,
			HTTP, "policies[p].principals[0].filter_state", "not supported"},
		{"condition", `policies: {p: {permissions: [{any: true}], principals: [{any: true}], condition: {const_expr: {bool_value: true}}}}`,
			HTTP, "policies[p].condition", "not supported"},
		{"audit logging", `audit_logging_options: {audit_condition: ON_DENY}`, HTTP, "audit_logging_options", "not supported"},
		{"bad cidr", `policies: {p: {permissions: [{destination_ip: {address_prefix: 10.0.0.300, prefix_len: 8}}], principals: [{any: true}]}}`,
			HTTP, "policies[p].permissions[0].destination_ip.address_prefix", "not an IP address"},
		{"long prefix", `policies: {p: {permissions: [{any: true}], principals: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 33}}]}}`,
			HTTP, "policies[p].principals[0].remote_ip.prefix_len", "longer than the 32 bits"},
		{"bad regex", `policies: {p: {permissions: [{url_path: {path: {safe_regex: {regex: "("}}}}], principals: [{any: true}]}}`,
			HTTP, "policies[p].permissions[0].url_path.path.safe_regex.regex", "missing closing"},
		{"network header permission", `policies: {p: {permissions: [{header: {name: x, present_match: true}}], principals: [{any: true}]}}`,
			Network, "policies[p].permissions[0].header", "not supported by the network RBAC filter"},
		{"network header principal", `policies: {p: {permissions: [{any: true}], principals: [{and_ids: {ids: [{any: true}, {header: {name: x, present_match: true}}]}}]}}`,
			Network, "policies[p].principals[0].and_ids.ids[1].header", "not supported by the network RBAC filter"},
		{"port range backwards", `policies: {p: {permissions: [{destination_port_range: {start: 9, end: 8}}], principals: [{any: true}]}}`,
			HTTP, "policies[p].permissions[0].destination_port_range", "above end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(parse(t, tc.rules), tc.mode)
			if err == nil {
				t.Fatal("no error")
			}
			if p := cfgerr.PathOf(err); p != tc.path || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q at %q; want %q at %q", err, p, tc.msg, tc.path)
			}
		})
	}
}

func TestDeepNesting(t *testing.T) {
	y := "{any: true}"
	for range maxDepth + 2 {
		y = "{not_rule: " + y + "}"
	}
	_, err := New(parse(t, "policies: {p: {permissions: ["+y+"], principals: [{any: true}]}}"), HTTP)
	if err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Fatalf("err = %v", err)
	}
}

func TestEvaluateDoesNotAllocate(t *testing.T) {
	e := compile(t, benchRules, HTTP)
	in := benchInput()
	if n := testing.AllocsPerRun(100, func() { e.Evaluate(in) }); n != 0 {
		t.Errorf("Evaluate allocates %v times", n)
	}
	in.Headers = nil
	if n := testing.AllocsPerRun(100, func() { e.Evaluate(in) }); n != 0 {
		t.Errorf("Evaluate without headers allocates %v times", n)
	}
}

// peerCert makes a self-signed certificate (the engine verifies nothing) with
// subject subj and the SANs uris and dns.
func peerCert(t testing.TB, subj pkix.Name, uris []*url.URL, dns ...string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      subj,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         uris,
		DNSNames:     dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestAuthenticated checks the authenticated principal against Envoy's
// AuthenticatedMatcher: no TLS never matches; TLS without principal_name
// always does, peer certificate or not; principal_name is tried against the
// URI SANs, then the DNS SANs, then the subject ("" without a certificate).
func TestAuthenticated(t *testing.T) {
	client := peerCert(t, pkix.Name{CommonName: "client", Organization: []string{"Test Org"}},
		[]*url.URL{mustURL(t, "spiffe://test/other"), mustURL(t, "spiffe://test/client")}, "client.test", "alt.test")
	// The certificate spells its URI SAN's scheme in capitals; crypto/x509
	// parses it lower-cased, Envoy matches what the certificate says.
	upper := peerCert(t, pkix.Name{CommonName: "upper"}, []*url.URL{{Scheme: "SPIFFE", Host: "test", Path: "/client"}})
	if upper.URIs[0].String() != "spiffe://test/client" {
		t.Fatalf("crypto/x509 renders the URI SAN %q; the test expects it lower-cased", upper.URIs[0])
	}
	noSANs := peerCert(t, pkix.Name{CommonName: "bare"}, nil)
	mtls := func(c *x509.Certificate) *tls.ConnectionState {
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
	}
	principal := func(id string) string {
		return `policies: {p: {permissions: [{any: true}], principals: [` + id + `]}}`
	}
	named := func(m string) string { return principal(`{authenticated: {principal_name: {` + m + `}}}`) }
	for _, tc := range []struct {
		name  string
		rules string
		tls   *tls.ConnectionState
		want  bool
	}{
		{"no TLS", principal(`{authenticated: {}}`), nil, false},
		{"no TLS, principal_name", named(`safe_regex: {regex: ".*"}`), nil, false},
		{"no TLS, not authenticated", principal(`{not_id: {authenticated: {}}}`), nil, true},
		{"TLS without a certificate", principal(`{authenticated: {}}`), &tls.ConnectionState{}, true},
		{"TLS with a certificate", principal(`{authenticated: {}}`), mtls(client), true},
		{"TLS, not authenticated", principal(`{not_id: {authenticated: {}}}`), mtls(client), false},
		{"no certificate: the subject is empty", named(`exact: ""`), &tls.ConnectionState{}, true},
		{"no certificate, principal_name", named(`prefix: spiffe://`), &tls.ConnectionState{}, false},
		{"URI SAN", named(`exact: spiffe://test/client`), mtls(client), true},
		{"URI SAN prefix", named(`prefix: spiffe://test/`), mtls(client), true},
		{"URI SAN as spelt", named(`exact: SPIFFE://test/client`), mtls(upper), true},
		{"URI SAN not as parsed", named(`exact: spiffe://test/client`), mtls(upper), false},
		{"DNS SAN", named(`exact: alt.test`), mtls(client), true},
		{"DNS SAN, no URI SAN", named(`suffix: .test`), mtls(peerCert(t, pkix.Name{}, nil, "x.test")), true},
		{"subject", named(`exact: "CN=client,O=Test Org"`), mtls(client), true},
		{"subject without SANs", named(`exact: CN=bare`), mtls(noSANs), true},
		{"no match", named(`exact: spiffe://test/nobody`), mtls(client), false},
		{"the subject is not the CN", named(`exact: client`), mtls(client), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := compile(t, tc.rules, Network)
			in := &Input{TLS: tc.tls}
			if allowed, _ := e.Evaluate(in); allowed != tc.want {
				t.Errorf("Evaluate = %v, want %v", allowed, tc.want)
			}
		})
	}
}

// TestAuthenticatedDoesNotAllocate: matching a peer's SANs copies nothing;
// rendering its subject allocates once per Input.
func TestAuthenticatedDoesNotAllocate(t *testing.T) {
	client := peerCert(t, pkix.Name{CommonName: "client"}, []*url.URL{mustURL(t, "spiffe://test/client")}, "client.test")
	in := &Input{TLS: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{client}}}
	for _, m := range []string{`exact: spiffe://test/client`, `exact: client.test`, `safe_regex: {regex: "spiffe://[a-z]+/client"}`} {
		e := compile(t, `policies: {p: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {`+m+`}}}]}}`, HTTP)
		if n := testing.AllocsPerRun(100, func() {
			if ok, _ := e.Evaluate(in); !ok {
				t.Fatalf("%s: denied", m)
			}
		}); n != 0 {
			t.Errorf("%s: Evaluate allocates %v times", m, n)
		}
	}
	e := compile(t, `policies: {p: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {exact: x}}}, {authenticated: {principal_name: {exact: CN=client}}}]}}`, HTTP)
	once := testing.AllocsPerRun(100, func() {
		in := &Input{TLS: in.TLS}
		e.Match(in)
	})
	if twice := testing.AllocsPerRun(100, func() {
		in := &Input{TLS: in.TLS}
		e.Match(in)
		e.Match(in)
	}); twice != once {
		t.Errorf("two evaluations of the subject matcher allocate %v times, one %v: the subject is rendered again", twice, once)
	}
}
