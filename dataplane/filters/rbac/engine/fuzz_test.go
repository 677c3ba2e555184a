package engine

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// fuzzPermissions and fuzzPrincipals are the leaf rules the fuzzer combines;
// each is YAML for one Permission or Principal.
func fuzzPermissions() []string {
	return []string{
		`{any: true}`,
		`{url_path: {path: {prefix: /a}}}`,
		`{url_path: {path: {exact: /a/b, ignore_case: true}}}`,
		`{header: {name: x-a, present_match: true}}`,
		`{header: {name: x-a, string_match: {exact: "1"}}}`,
		`{header: {name: x-b, string_match: {contains: z}, invert_match: true}}`,
		`{destination_port: 80}`,
		`{destination_port_range: {start: 1000, end: 2000}}`,
		`{destination_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}`,
		`{destination_ip: {address_prefix: "2001:db8::", prefix_len: 32}}`,
		`{requested_server_name: {suffix: .com}}`,
	}
}

func fuzzPrincipals() []string {
	return []string{
		`{any: true}`,
		`{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}`,
		`{source_ip: {address_prefix: "::", prefix_len: 0}}`,
		`{direct_remote_ip: {address_prefix: 192.168.0.0, prefix_len: 16}}`,
		`{header: {name: x-a, string_match: {prefix: a}}}`,
		`{url_path: {path: {safe_regex: {regex: "/[0-9]+"}}}}`,
		`{authenticated: {}}`,
	}
}

// fuzzSet is the engines the fuzzer evaluates: one per leaf and one per
// combination of two leaves.
type fuzzSet struct {
	leaf                 []*Engine
	and, or, nand, orNot [][]*Engine // [i][j]
	not, notNot          []*Engine
}

func permPolicy(rule string) string {
	return "policies: {p: {permissions: [" + rule + "], principals: [{any: true}]}}"
}

func princPolicy(id string) string {
	return "policies: {p: {permissions: [{any: true}], principals: [" + id + "]}}"
}

func buildSet(t testing.TB, leaves []string, policy func(string) string, and, or, not string) *fuzzSet {
	s := &fuzzSet{}
	for _, a := range leaves {
		s.leaf = append(s.leaf, compile(t, policy(a), HTTP))
		s.not = append(s.not, compile(t, policy(fmt.Sprintf("{%s: %s}", not, a)), HTTP))
		s.notNot = append(s.notNot, compile(t, policy(fmt.Sprintf("{%s: {%s: %s}}", not, not, a)), HTTP))
	}
	n := len(leaves)
	s.and, s.or, s.nand, s.orNot = make([][]*Engine, n), make([][]*Engine, n), make([][]*Engine, n), make([][]*Engine, n)
	for i, a := range leaves {
		for _, b := range leaves {
			pair := a + ", " + b
			s.and[i] = append(s.and[i], compile(t, policy(fmt.Sprintf(and, pair)), HTTP))
			s.or[i] = append(s.or[i], compile(t, policy(fmt.Sprintf(or, pair)), HTTP))
			s.nand[i] = append(s.nand[i], compile(t, policy(fmt.Sprintf("{%s: "+and+"}", not, pair)), HTTP))
			s.orNot[i] = append(s.orNot[i], compile(t, policy(fmt.Sprintf(or, fmt.Sprintf("{%s: %s}, {%s: %s}", not, a, not, b))), HTTP))
		}
	}
	return s
}

func matched(e *Engine, in *Input) bool { return e.Match(in) >= 0 }

// check verifies the NOT/AND/OR algebra of s on in.
func (s *fuzzSet) check(t *testing.T, in *Input, kind string) {
	for i, a := range s.leaf {
		va := matched(a, in)
		if got := matched(s.not[i], in); got != !va {
			t.Fatalf("%s %d: not = %v, leaf = %v", kind, i, got, va)
		}
		if got := matched(s.notNot[i], in); got != va {
			t.Fatalf("%s %d: not not = %v, leaf = %v", kind, i, got, va)
		}
		for j, b := range s.leaf {
			vb := matched(b, in)
			if got := matched(s.and[i][j], in); got != (va && vb) {
				t.Fatalf("%s %d and %d = %v; leaves %v %v", kind, i, j, got, va, vb)
			}
			if got := matched(s.or[i][j], in); got != (va || vb) {
				t.Fatalf("%s %d or %d = %v; leaves %v %v", kind, i, j, got, va, vb)
			}
			nand, orNot := matched(s.nand[i][j], in), matched(s.orNot[i][j], in)
			if nand != orNot || nand != !(va && vb) {
				t.Fatalf("%s %d, %d: not(and) = %v, or(not, not) = %v; leaves %v %v", kind, i, j, nand, orNot, va, vb)
			}
		}
	}
}

func addrFrom(b []byte, port uint16) netip.AddrPort {
	var a netip.Addr
	switch {
	case len(b) >= 16:
		a = netip.AddrFrom16([16]byte(b[:16]))
	case len(b) >= 4:
		a = netip.AddrFrom4([4]byte(b[:4]))
	default:
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}

// refCIDR is an independent CidrRange match: same family, and the first bits
// bits equal.
func refCIDR(prefix netip.Addr, bits int, a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() != prefix.Is4() {
		return false
	}
	pb, ab := prefix.AsSlice(), a.AsSlice()
	for i := range bits {
		if pb[i/8]>>(7-i%8)&1 != ab[i/8]>>(7-i%8)&1 {
			return false
		}
	}
	return true
}

func FuzzEngine(f *testing.F) {
	perms := buildSet(f, fuzzPermissions(), permPolicy, "{and_rules: {rules: [%s]}}", "{or_rules: {rules: [%s]}}", "not_rule")
	princs := buildSet(f, fuzzPrincipals(), princPolicy, "{and_ids: {ids: [%s]}}", "{or_ids: {ids: [%s]}}", "not_id")

	f.Add("/a/b?q", "x-a", "1", []byte{10, 1, 2, 3}, uint16(80), []byte{192, 168, 0, 1}, "api.example.com", "10.0.0.0", uint8(8))
	f.Add("/A/B#f", "x-b", "zzz", []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(1500), []byte{}, "", "2001:db8::", uint8(32))
	f.Add("", "", "", []byte{}, uint16(0), []byte{1, 2}, ".com", "::ffff:10.0.0.0", uint8(104))
	f.Add("/123", "X-A", "abc", []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1}, uint16(2000), []byte{10, 0, 0, 1}, "x.com", "1.2.3.4", uint8(40))

	f.Fuzz(func(t *testing.T, path, name, value string, local []byte, port uint16, remote []byte, sni, cidr string, bits uint8) {
		var h http.Header
		h.Add(http.Method, "GET")
		if path != "" {
			h.Add(http.Path, path)
		}
		if name != "" {
			h.AddLower(name, value)
		}
		in := &Input{
			Headers:      &h,
			Local:        addrFrom(local, port),
			Source:       addrFrom(remote, port^0xffff),
			DirectRemote: addrFrom(remote, 1),
			Remote:       addrFrom(remote, 2),
			ServerName:   sni,
		}
		perms.check(t, in, "permission")
		princs.check(t, in, "principal")
		in.Headers = nil
		perms.check(t, in, "permission without headers")
		princs.check(t, in, "principal without headers")

		// Leaves against independent definitions.
		if got, want := matched(perms.leaf[7], in), in.Local.IsValid() && port >= 1000 && port < 2000; got != want {
			t.Fatalf("port range: %v, want %v", got, want)
		}
		in.Headers = &h
		p, _, _ := strings.Cut(path, "?")
		p, _, _ = strings.Cut(p, "#")
		if got, want := matched(perms.leaf[1], in), path != "" && strings.HasPrefix(p, "/a"); got != want {
			t.Fatalf("url_path prefix /a on %q: %v, want %v", path, got, want)
		}

		// An arbitrary CIDR compiles or fails cleanly, and matches like the
		// reference.
		rules := &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: &corev3.CidrRange{
				AddressPrefix: cidr, PrefixLen: wrapperspb.UInt32(uint32(bits)),
			}}}},
			Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
		}}}
		e, err := New(rules, Network)
		if err != nil {
			return
		}
		pa := netip.MustParseAddr(cidr)
		pbits := int(bits)
		if pa.Is4In6() && pbits >= 96 {
			pa, pbits = pa.Unmap(), pbits-96
		}
		want := in.Local.IsValid() && refCIDR(pa, pbits, in.Local.Addr())
		if got := matched(e, in); got != want {
			t.Fatalf("cidr %s/%d on %v: %v, want %v", cidr, bits, in.Local, got, want)
		}
	})
}
