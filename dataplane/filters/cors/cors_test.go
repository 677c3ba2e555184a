package cors

import (
	"strings"
	"testing"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func build(t testing.TB, y string, m proto.Message) (*Filter, *stats.Store, error) {
	t.Helper()
	if err := protoyaml.Unmarshal([]byte(y), m); err != nil {
		t.Fatalf("parsing %s: %v", y, err)
	}
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	r := filter.NewRegistry()
	for _, f := range []filter.HTTPFactory{Factory{}, PolicyFactory{}} {
		if err := r.RegisterHTTP(f); err != nil {
			t.Fatal(err)
		}
	}
	fc, st := kittest.Context()
	f, err := r.HTTPFilter(Name, a, fc)
	if err != nil {
		return nil, st, err
	}
	return f.(*Filter), st, nil
}

func policy(t testing.TB, y string) (*Filter, *stats.Store) {
	t.Helper()
	f, st, err := build(t, y, &corsv3.CorsPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	return f, st
}

// exchange returns an exchange that matched a route.
func exchange(method string, kv ...string) (*http.Exchange, *kittest.Stream) {
	e, s := kittest.Exchange(method, "/api", kv...)
	e.Route = &route.Route{}
	return e, s
}

const example = `
allow_origin_string_match: [{exact: "https://app.example.com"}, {suffix: ".trusted.org"}]
allow_methods: "GET, POST"
allow_headers: "content-type, x-token"
expose_headers: "x-request-id"
max_age: "600"
allow_credentials: true
`

func TestPreflight(t *testing.T) {
	f, st := policy(t, example)
	e, s := exchange("OPTIONS", "origin", "https://app.example.com", "access-control-request-method", "POST")
	if f.OnRequest(e) != http.Stop {
		t.Fatal("preflight not answered")
	}
	_, h, body, ended := s.Response()
	want := map[string]string{
		":status":              "200",
		HeaderAllowOrigin:      "https://app.example.com",
		HeaderAllowMethods:     "GET, POST",
		HeaderAllowHeaders:     "content-type, x-token",
		HeaderMaxAge:           "600",
		HeaderAllowCredentials: "true",
		HeaderExposeHeaders:    "x-request-id",
	}
	for k, v := range want {
		if got := h.Value(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if h.Has("content-type") || body != "" || !ended || e.Info.ResponseCodeDetails != ResponseCodeDetailsCorsResponse {
		t.Errorf("body %q ended %v details %q", body, ended, e.Info.ResponseCodeDetails)
	}
	if v, _ := kittest.Value(st, "http.test.cors.origin_valid"); v != 1 {
		t.Errorf("origin_valid = %d", v)
	}
}

// rewriteAll is a local_reply_config that rewrites every local reply's body.
type rewriteAll struct{}

func (rewriteAll) MapLocalReply(e *http.Exchange, body string) (string, string) {
	return "mapped[" + body + "]", "text/plain"
}

// TestPreflightNotMapped: the preflight answer is not a local reply, so
// local_reply_config leaves it alone, as Envoy's (encodeHeaders, not
// sendLocalReply).
func TestPreflightNotMapped(t *testing.T) {
	f, _ := policy(t, example)
	e, s := exchange("OPTIONS", "origin", "https://app.example.com", "access-control-request-method", "POST")
	e.LocalReplies = rewriteAll{}
	if f.OnRequest(e) != http.Stop {
		t.Fatal("preflight not answered")
	}
	_, h, body, ended := s.Response()
	if h.Value(":status") != "200" || body != "" || !ended || h.Has("content-type") || h.Value(HeaderAllowOrigin) != "https://app.example.com" {
		t.Errorf("status %q body %q ended %v content-type %q allow-origin %q", h.Value(":status"), body, ended, h.Value("content-type"), h.Value(HeaderAllowOrigin))
	}
	if e.Info.ResponseCode != 200 || e.Info.ResponseCodeDetails != ResponseCodeDetailsCorsResponse {
		t.Errorf("access log sees %d %q", e.Info.ResponseCode, e.Info.ResponseCodeDetails)
	}
}

func TestPreflightWildcards(t *testing.T) {
	f, _ := policy(t, `
allow_origin_string_match: [{exact: "*"}]
allow_methods: "*"
allow_headers: "*"
allow_private_network_access: true
`)
	e, s := exchange("OPTIONS", "origin", "https://any.where", "access-control-request-method", "DELETE",
		"access-control-request-headers", "x-a, x-b", "access-control-request-private-network", "true")
	if f.OnRequest(e) != http.Stop {
		t.Fatal("preflight not answered")
	}
	_, h, _, _ := s.Response()
	if h.Value(HeaderAllowOrigin) != "https://any.where" || h.Value(HeaderAllowMethods) != "DELETE" ||
		h.Value(HeaderAllowHeaders) != "x-a, x-b" || h.Value(HeaderAllowPrivateNetwork) != "true" || h.Has(HeaderAllowCredentials) {
		t.Errorf("reply:\n%s", h)
	}
}

func TestNotAllowedOrigin(t *testing.T) {
	f, st := policy(t, example)
	// A preflight from another origin goes upstream by default.
	e, s := exchange("OPTIONS", "origin", "https://evil.com", "access-control-request-method", "POST")
	if f.OnRequest(e) != http.Continue || s.Status() != "" {
		t.Fatal("preflight from a foreign origin answered")
	}
	e.Response.Add(http.Status, "204")
	f.OnResponse(e)
	if e.Response.Has(HeaderAllowOrigin) {
		t.Error("allow-origin for a foreign origin")
	}
	if v, _ := kittest.Value(st, "http.test.cors.origin_invalid"); v != 1 {
		t.Errorf("origin_invalid = %d", v)
	}

	// Unless forward_not_matching_preflights is false: a 200 without allow-origin.
	f, _ = policy(t, example+"forward_not_matching_preflights: false\n")
	e, s = exchange("OPTIONS", "origin", "https://evil.com", "access-control-request-method", "POST")
	if f.OnRequest(e) != http.Stop || s.Status() != "200" {
		t.Fatal("preflight not answered")
	}
	_, h, _, _ := s.Response()
	if h.Has(HeaderAllowOrigin) || h.Has(HeaderExposeHeaders) || h.Value(HeaderAllowMethods) != "GET, POST" {
		t.Errorf("reply:\n%s", h)
	}
}

func TestActualRequest(t *testing.T) {
	f, _ := policy(t, example)
	for _, tc := range []struct {
		name   string
		method string
		kv     []string
		origin string // expected allow-origin, "" for none
	}{
		{"allowed", "GET", []string{"origin", "https://app.example.com"}, "https://app.example.com"},
		{"suffix", "POST", []string{"origin", "https://x.trusted.org"}, "https://x.trusted.org"},
		{"other", "GET", []string{"origin", "https://other.org"}, ""},
		{"no origin", "GET", nil, ""},
		{"empty origin", "GET", []string{"origin", ""}, ""},
		{"OPTIONS without request method", "OPTIONS", []string{"origin", "https://app.example.com"}, "https://app.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, s := exchange(tc.method, tc.kv...)
			if f.OnRequest(e) != http.Continue || s.Status() != "" {
				t.Fatal("answered locally")
			}
			e.Response.Add(http.Status, "200")
			e.Response.Add(HeaderAllowOrigin, "upstream-value")
			f.OnResponse(e)
			if tc.origin == "" {
				if e.Response.Value(HeaderAllowOrigin) != "upstream-value" || e.Response.Has(HeaderExposeHeaders) {
					t.Errorf("response changed:\n%s", e.Response.String())
				}
				return
			}
			if got := e.Response.Values(nil, HeaderAllowOrigin); len(got) != 1 || got[0] != tc.origin {
				t.Errorf("allow-origin %q", got)
			}
			if e.Response.Value(HeaderAllowCredentials) != "true" || e.Response.Value(HeaderExposeHeaders) != "x-request-id" {
				t.Errorf("response:\n%s", e.Response.String())
			}
		})
	}
}

func TestNoRoute(t *testing.T) {
	f, st := policy(t, example)
	e, s := kittest.Exchange("OPTIONS", "/", "origin", "https://app.example.com", "access-control-request-method", "GET")
	if f.OnRequest(e) != http.Continue || s.Status() != "" {
		t.Fatal("a request without a route was handled")
	}
	e.Route = (*route.Route)(nil)
	if f.OnRequest(e) != http.Continue {
		t.Fatal("a request with a nil route was handled")
	}
	if v, _ := kittest.Value(st, "http.test.cors.origin_valid"); v != 0 {
		t.Error("counted")
	}
}

func TestShadow(t *testing.T) {
	f, st := policy(t, example+`
filter_enabled: {default_value: {numerator: 0}}
shadow_enabled: {default_value: {numerator: 100}}
`)
	e, s := exchange("OPTIONS", "origin", "https://app.example.com", "access-control-request-method", "POST")
	if f.OnRequest(e) != http.Continue || s.Status() != "" {
		t.Fatal("shadow mode answered a preflight")
	}
	e.Response.Add(http.Status, "200")
	f.OnResponse(e)
	if e.Response.Has(HeaderAllowOrigin) {
		t.Error("shadow mode changed the response")
	}
	if v, _ := kittest.Value(st, "http.test.cors.origin_valid"); v != 1 {
		t.Errorf("origin_valid = %d (shadow mode counts)", v)
	}
}

func TestDisabled(t *testing.T) {
	f, st := policy(t, example+`filter_enabled: {default_value: {numerator: 0}}`)
	e, _ := exchange("GET", "origin", "https://app.example.com")
	f.OnRequest(e)
	f.OnResponse(e)
	if e.Response.Has(HeaderAllowOrigin) {
		t.Error("disabled policy applied")
	}
	if v, _ := kittest.Value(st, "http.test.cors.origin_valid"); v != 0 {
		t.Error("disabled policy counted")
	}
}

// TestFractionConsistent checks that with filter_enabled at 50% the request
// and response halves always agree.
func TestFractionConsistent(t *testing.T) {
	f, _ := policy(t, example+`filter_enabled: {default_value: {numerator: 50}}`)
	applied := 0
	for range 2000 {
		e, s := exchange("OPTIONS", "origin", "https://app.example.com")
		if f.OnRequest(e) != http.Continue || s.Status() != "" {
			t.Fatal("not a preflight")
		}
		st, _ := f.decide(e)
		e.Response.Add(http.Status, "200")
		f.OnResponse(e)
		if e.Response.Has(HeaderAllowOrigin) != st.cors {
			t.Fatal("OnResponse disagrees with OnRequest")
		}
		if st.cors {
			applied++
		}
	}
	if applied < 800 || applied > 1200 {
		t.Errorf("applied to %d of 2000 at 50%%", applied)
	}
}

func TestEnvoyConfigPassesThrough(t *testing.T) {
	f, _, err := build(t, `{}`, &corsv3.Cors{})
	if err != nil {
		t.Fatal(err)
	}
	e, s := exchange("OPTIONS", "origin", "https://app.example.com", "access-control-request-method", "POST")
	if f.OnRequest(e) != http.Continue || s.Status() != "" {
		t.Fatal("no policy, yet answered")
	}
	f.OnResponse(e)
	if e.Response.Len() != 0 {
		t.Error("response changed")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, cfg, path, msg string
	}{
		{"bad regex", `allow_origin_string_match: [{safe_regex: {regex: "("}}]`,
			"typed_config.allow_origin_string_match[0].safe_regex.regex", "missing closing"},
		{"ignore case with regex", `allow_origin_string_match: [{safe_regex: {regex: "a"}, ignore_case: true}]`,
			"typed_config.allow_origin_string_match[0].ignore_case", "no effect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := build(t, tc.cfg, &corsv3.CorsPolicy{})
			if err == nil {
				t.Fatal("no error")
			}
			if p := cfgerr.PathOf(err); p != tc.path || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q at %q; want %q at %q", err, p, tc.msg, tc.path)
			}
		})
	}
}

func BenchmarkActualRequest(b *testing.B) {
	f, _ := policy(b, example)
	e, _ := exchange("GET", "origin", "https://x.trusted.org")
	b.ReportAllocs()
	for b.Loop() {
		e.Response.Reset()
		f.OnRequest(e)
		f.OnResponse(e)
	}
}
