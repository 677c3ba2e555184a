package engine

import (
	"net/netip"
	"strings"
	"testing"

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
		{"authenticated never matches", `policies: {p: {permissions: [{any: true}], principals: [{authenticated: {}}]}}`,
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
