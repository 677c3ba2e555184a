package rbac

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func registry(t testing.TB) *filter.Registry {
	t.Helper()
	r := filter.NewRegistry()
	if err := r.RegisterHTTP(HTTPFactory{}); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterNetwork(NetworkFactory{}); err != nil {
		t.Fatal(err)
	}
	return r
}

func anyOf(t testing.TB, y string, m proto.Message) *anypb.Any {
	t.Helper()
	if err := protoyaml.Unmarshal([]byte(y), m); err != nil {
		t.Fatalf("parsing %s: %v", y, err)
	}
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func buildHTTP(t testing.TB, y string) (*HTTPFilter, *stats.Store) {
	t.Helper()
	fc, st := kittest.Context()
	f, err := registry(t).HTTPFilter(HTTPName, anyOf(t, y, &httprbacv3.RBAC{}), fc)
	if err != nil {
		t.Fatal(err)
	}
	return f.(*HTTPFilter), st
}

func buildNetwork(t testing.TB, y string) (*NetworkFilter, *stats.Store) {
	t.Helper()
	fc, st := kittest.Context()
	f, err := registry(t).NetworkFilter(NetworkName, anyOf(t, y, &netrbacv3.RBAC{}), fc)
	if err != nil {
		t.Fatal(err)
	}
	return f.(*NetworkFilter), st
}

func counter(t *testing.T, st *stats.Store, name string) int64 {
	t.Helper()
	v, ok := kittest.Value(st, name)
	if !ok {
		t.Fatalf("no stat %s", name)
	}
	return v
}

const adminOnly = `
rules:
  action: ALLOW
  policies:
    "admin users":
      permissions: [{url_path: {path: {prefix: /admin}}}]
      principals: [{header: {name: x-user, string_match: {exact: root}}}]
    public:
      permissions: [{not_rule: {url_path: {path: {prefix: /admin}}}}]
      principals: [{any: true}]
`

func TestHTTP(t *testing.T) {
	f, st := buildHTTP(t, adminOnly+`
shadow_rules:
  action: DENY
  policies:
    from-ten:
      permissions: [{any: true}]
      principals: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
track_per_rule_stats: true
`)
	for _, tc := range []struct {
		name    string
		path    string
		kv      []string
		remote  string
		allowed bool
		details string
	}{
		{"public", "/index.html", nil, "192.0.2.1:1000", true, ""},
		{"admin as root", "/admin/x", []string{"x-user", "root"}, "10.0.0.1:1000", true, ""},
		{"admin as someone else", "/admin/x", []string{"x-user", "bob"}, "192.0.2.1:1000", false, "rbac_access_denied_matched_policy[none]"},
		{"gRPC admin", "/admin/x", []string{"content-type", "application/grpc"}, "192.0.2.1:1000", false, "rbac_access_denied_matched_policy[none]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, s := kittest.Exchange("GET", tc.path, tc.kv...)
			e.Info.DownstreamRemote = kittest.Addr(tc.remote)
			got := f.OnRequest(e)
			if tc.allowed {
				if got != http.Continue {
					t.Fatalf("OnRequest = %v, want Continue", got)
				}
				if wrote, _, _, _ := s.Response(); wrote {
					t.Fatal("an allowed request got a response")
				}
				return
			}
			if got != http.Stop {
				t.Fatalf("OnRequest = %v, want Stop", got)
			}
			_, h, body, ended := s.Response()
			if e.Info.ResponseCodeDetails != tc.details || !ended {
				t.Errorf("details %q, ended %v; want %q", e.Info.ResponseCodeDetails, ended, tc.details)
			}
			if http.IsGRPC(e.Request) {
				if h.Value(":status") != "200" || h.Value("grpc-status") != "7" || h.Value("grpc-message") != "RBAC: access denied" {
					t.Errorf("gRPC reply:\n%s", h)
				}
				return
			}
			if h.Value(":status") != "403" || body != DeniedBody || h.Value("content-length") != "19" {
				t.Errorf("reply %s %q", h, body)
			}
		})
	}
	for name, want := range map[string]int64{
		"http.test.rbac.allowed":                           2,
		"http.test.rbac.denied":                            2,
		"http.test.rbac.shadow_allowed":                    3,
		"http.test.rbac.shadow_denied":                     1,
		"http.test.rbac.policy.public.allowed":             1,
		"http.test.rbac.policy.admin users.allowed":        1,
		"http.test.rbac.policy.from-ten.shadow_denied":     1,
		"http.test.rbac.policy.from-ten.shadow_allowed":    0,
		"http.test.rbac.policy.admin users.denied":         0,
		"http.test.rbac.policy.public.denied":              0,
		"http.test.rbac.policy.from-ten.shadow_allowed.xx": -1,
	} {
		if want < 0 {
			if _, ok := kittest.Value(st, name); ok {
				t.Errorf("unexpected stat %s", name)
			}
			continue
		}
		if got := counter(t, st, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

func TestHTTPDenyPolicyDetails(t *testing.T) {
	f, st := buildHTTP(t, `
rules:
  action: DENY
  policies:
    "no bots":
      permissions: [{header: {name: user-agent, string_match: {contains: bot}}}]
      principals: [{any: true}]
rules_stat_prefix: edge_
shadow_rules_stat_prefix: try_
shadow_rules: {action: ALLOW}
`)
	e, s := kittest.Exchange("GET", "/", "user-agent", "a bot")
	if f.OnRequest(e) != http.Stop || s.Status() != "403" {
		t.Fatalf("bot not denied: %q", s.Status())
	}
	if e.Info.ResponseCodeDetails != "rbac_access_denied_matched_policy[no_bots]" {
		t.Errorf("details %q", e.Info.ResponseCodeDetails)
	}
	e, _ = kittest.Exchange("GET", "/", "user-agent", "curl")
	if f.OnRequest(e) != http.Continue {
		t.Fatal("curl denied")
	}
	// Envoy's statPrefixJoin puts a dot after the rules prefix.
	for name, want := range map[string]int64{
		"http.test.rbac.edge_.allowed":       1,
		"http.test.rbac.edge_.denied":        1,
		"http.test.rbac.try_.shadow_denied":  2,
		"http.test.rbac.try_.shadow_allowed": 0,
	} {
		if got := counter(t, st, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

func TestHTTPNoRules(t *testing.T) {
	f, _ := buildHTTP(t, `shadow_rules: {action: ALLOW}`)
	e, _ := kittest.Exchange("GET", "/")
	if f.OnRequest(e) != http.Continue {
		t.Fatal("no rules must allow")
	}
}

func TestHTTPConnectionAttributes(t *testing.T) {
	f, _ := buildHTTP(t, `
rules:
  policies:
    p:
      permissions: [{and_rules: {rules: [{requested_server_name: {exact: api.example.com}}, {destination_port: 8443}]}}]
      principals: [{and_ids: {ids: [{direct_remote_ip: {address_prefix: 192.168.0.0, prefix_len: 16}}, {source_ip: {address_prefix: 172.16.0.0, prefix_len: 12}}, {remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]}}]
`)
	c := &filter.Conn{
		Local: kittest.Addr("127.0.0.1:8443"), Remote: kittest.Addr("172.16.0.9:4000"),
		DirectRemote: kittest.Addr("192.168.1.1:4000"), ServerName: "api.example.com",
	}
	ctx := filter.WithConn(context.Background(), c)
	e, _ := kittest.ExchangeCtx(ctx, "GET", "/")
	e.Info.DownstreamRemote = kittest.Addr("10.1.1.1:0") // from x-forwarded-for
	if f.OnRequest(e) != http.Continue {
		t.Fatal("denied")
	}
	e, _ = kittest.ExchangeCtx(ctx, "GET", "/")
	e.Info.DownstreamRemote = kittest.Addr("11.1.1.1:0")
	if f.OnRequest(e) != http.Stop {
		t.Fatal("allowed with remote_ip outside 10/8")
	}
}

// TestHTTPTLSSources: the filter takes the TLS session from
// StreamInfo.DownstreamTLS, or else from the connection in the context.
func TestHTTPTLSSources(t *testing.T) {
	f, _ := buildHTTP(t, `rules: {policies: {tls: {permissions: [{any: true}], principals: [{authenticated: {}}]}}}`)
	cs := &tls.ConnectionState{}
	e, _ := kittest.Exchange("GET", "/")
	if f.OnRequest(e) != http.Stop {
		t.Fatal("allowed without TLS")
	}
	e, _ = kittest.Exchange("GET", "/")
	e.Info.DownstreamTLS = cs
	if f.OnRequest(e) != http.Continue {
		t.Fatal("denied with StreamInfo.DownstreamTLS")
	}
	e, _ = kittest.ExchangeCtx(filter.WithConn(context.Background(), &filter.Conn{TLS: cs}), "GET", "/")
	if f.OnRequest(e) != http.Continue {
		t.Fatal("denied with the connection's TLS")
	}
}

func TestConfigErrors(t *testing.T) {
	fc, _ := kittest.Context()
	r := registry(t)
	for _, tc := range []struct {
		name, y, path, msg string
		network            bool
	}{
		{"matcher", `matcher: {on_no_match: {action: {name: a, typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: x}}}}`,
			"typed_config.matcher", "not supported", false},
		{"metadata deep", `rules: {policies: {p: {permissions: [{and_rules: {rules: [{metadata: {filter: f, path: [{key: k}], value: {present_match: true}}}]}}], principals: [{any: true}]}}}`,
			"typed_config.rules.policies[p].permissions[0].and_rules.rules[0].metadata", "not supported", false},
		{"shadow bad cidr", `shadow_rules: {policies: {p: {permissions: [{any: true}], principals: [{remote_ip: {address_prefix: nope}}]}}}`,
			"typed_config.shadow_rules.policies[p].principals[0].remote_ip.address_prefix", "not an IP", false},
		{"network header", `stat_prefix: tcp
rules: {policies: {p: {permissions: [{header: {name: x, present_match: true}}], principals: [{any: true}]}}}`,
			"typed_config.rules.policies[p].permissions[0].header", "network RBAC", true},
		{"network no stat prefix", `rules: {}`, "typed_config.stat_prefix", "", true},
		{"network shadow matcher", `stat_prefix: s
shadow_matcher: {on_no_match: {action: {name: a, typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: x}}}}`,
			"typed_config.shadow_matcher", "not supported", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.network {
				_, err = r.NetworkFilter(NetworkName, anyOf(t, tc.y, &netrbacv3.RBAC{}), fc)
			} else {
				_, err = r.HTTPFilter(HTTPName, anyOf(t, tc.y, &httprbacv3.RBAC{}), fc)
			}
			if err == nil {
				t.Fatal("no error")
			}
			if p := cfgerr.PathOf(err); p != tc.path || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q at %q; want %q at %q", err, p, tc.msg, tc.path)
			}
		})
	}
}

func conn(local, remote, sni string) *filter.Conn {
	return &filter.Conn{Local: kittest.Addr(local), Remote: kittest.Addr(remote), DirectRemote: kittest.Addr(remote), ServerName: sni}
}

func TestNetwork(t *testing.T) {
	f, st := buildNetwork(t, `
stat_prefix: tcp_in
rules:
  action: DENY
  policies:
    blocked-net:
      permissions: [{any: true}]
      principals: [{source_ip: {address_prefix: 203.0.113.0, prefix_len: 24}}]
    internal-sni:
      permissions: [{requested_server_name: {suffix: .internal}}]
      principals: [{not_id: {remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}}]
shadow_rules_stat_prefix: dry_
shadow_rules:
  action: ALLOW
  policies:
    port-443:
      permissions: [{destination_port: 443}]
      principals: [{any: true}]
`)
	ctx := context.Background()
	if err := f.OnConnection(ctx, conn("10.0.0.1:443", "192.0.2.1:5000", "www.example.com")); err != nil {
		t.Fatalf("allowed connection refused: %v", err)
	}
	err := f.OnConnection(ctx, conn("10.0.0.1:80", "203.0.113.7:5000", ""))
	var de *DeniedError
	if !errors.As(err, &de) || de.Policy != "blocked-net" {
		t.Fatalf("err = %v", err)
	}
	err = f.OnConnection(ctx, conn("10.0.0.1:443", "192.0.2.1:5000", "db.internal"))
	if !errors.As(err, &de) || de.Policy != "internal-sni" {
		t.Fatalf("err = %v", err)
	}
	if err := f.OnConnection(ctx, conn("10.0.0.1:443", "10.9.9.9:5000", "db.internal")); err != nil {
		t.Fatalf("internal client refused: %v", err)
	}
	for name, want := range map[string]int64{
		"tcp_in.rbac.allowed":             2,
		"tcp_in.rbac.denied":              2,
		"tcp_in.rbac.dry_.shadow_allowed": 3,
		"tcp_in.rbac.dry_.shadow_denied":  1,
	} {
		if got := counter(t, st, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

func TestNetworkDelayDeny(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, _ := buildNetwork(t, `
stat_prefix: s
delay_deny: 5s
rules: {action: ALLOW}
`)
		start := time.Now()
		err := f.OnConnection(context.Background(), conn("10.0.0.1:443", "192.0.2.1:5000", ""))
		if err == nil || time.Since(start) != 5*time.Second {
			t.Fatalf("err %v after %v", err, time.Since(start))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start = time.Now()
		err = f.OnConnection(ctx, conn("10.0.0.1:443", "192.0.2.1:5000", ""))
		if err == nil || time.Since(start) != time.Second {
			t.Fatalf("err %v after %v (ctx ends first)", err, time.Since(start))
		}
	})
}

// TestNetworkOnRealConnection closes a denied connection through the filter
// as a listener would: the filter's error closes it.
func TestNetworkOnRealConnection(t *testing.T) {
	f, _ := buildNetwork(t, `
stat_prefix: s
rules:
  policies:
    loopback-only:
      permissions: [{any: true}]
      principals: [{direct_remote_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		fc := filter.NewConn(c, 1, "test", nil)
		err = f.OnConnection(context.Background(), fc)
		c.Close()
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-done; err != nil {
		t.Fatalf("loopback client denied: %v", err)
	}
}

func BenchmarkHTTPOnRequest(b *testing.B) {
	f, _ := buildHTTP(b, adminOnly)
	e, _ := kittest.Exchange("GET", "/api/items", "user-agent", "bench")
	e.Info.DownstreamRemote = kittest.Addr("192.0.2.1:1000")
	b.ReportAllocs()
	for b.Loop() {
		if f.OnRequest(e) != http.Continue {
			b.Fatal("denied")
		}
	}
}

func BenchmarkHTTPOnRequestDenied(b *testing.B) {
	f, _ := buildHTTP(b, adminOnly)
	e, s := kittest.Exchange("GET", "/admin", "user-agent", "bench")
	b.ReportAllocs()
	for b.Loop() {
		s.Clear()
		e.Response.Reset()
		if f.OnRequest(e) != http.Stop {
			b.Fatal("allowed")
		}
	}
}

func BenchmarkNetworkOnConnection(b *testing.B) {
	f, _ := buildNetwork(b, `
stat_prefix: s
rules:
  policies:
    p:
      permissions: [{destination_port_range: {start: 8000, end: 9000}}]
      principals: [{or_ids: {ids: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}, {remote_ip: {address_prefix: 192.0.2.0, prefix_len: 24}}]}}]
`)
	c := conn("10.0.0.1:8080", "192.0.2.1:5000", "")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := f.OnConnection(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}
