package localratelimit

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const on = `
stat_prefix: lrl
filter_enabled: {default_value: {numerator: 100}}
filter_enforced: {default_value: {numerator: 100}}
`

func build(t testing.TB, y string) (*Filter, *stats.Store, error) {
	t.Helper()
	return buildWith(t, y, nil)
}

func buildWith(t testing.TB, y string, rt *runtime.Loader) (*Filter, *stats.Store, error) {
	t.Helper()
	var cfg lrlv3.LocalRateLimit
	if err := protoyaml.Unmarshal([]byte(y), &cfg); err != nil {
		t.Fatalf("parsing %s: %v", y, err)
	}
	a, err := anypb.New(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := filter.NewRegistry()
	if err := r.RegisterHTTP(Factory{}); err != nil {
		t.Fatal(err)
	}
	fc, st := kittest.Context()
	fc.Runtime = rt
	f, err := r.HTTPFilter(Name, a, fc)
	if err != nil {
		return nil, st, err
	}
	return f.(*Filter), st, nil
}

func mustBuild(t testing.TB, y string) (*Filter, *stats.Store) {
	t.Helper()
	f, st, err := build(t, y)
	if err != nil {
		t.Fatal(err)
	}
	return f, st
}

func stat(t *testing.T, st *stats.Store, name string) int64 {
	t.Helper()
	n, ok := kittest.Value(st, name)
	if !ok {
		t.Fatalf("no stat %s", name)
	}
	return n
}

func TestBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBucket(3, 1, time.Second, nil)
		for i := range 3 {
			if !b.Consume() {
				t.Fatalf("token %d refused", i)
			}
		}
		if b.Consume() || b.Remaining() != 0 {
			t.Fatal("an empty bucket gave a token")
		}
		if d := b.NextToken(); d != time.Second {
			t.Errorf("next token in %v", d)
		}
		time.Sleep(1500 * time.Millisecond)
		if b.Remaining() != 1 || !b.Consume() || b.Consume() {
			t.Error("1.5 s should have refilled one token")
		}
		if d := b.NextToken(); d != 500*time.Millisecond {
			t.Errorf("next token in %v, want 500ms", d)
		}
		time.Sleep(time.Hour)
		if b.Remaining() != 3 {
			t.Errorf("remaining %d after an hour, want max 3", b.Remaining())
		}
	})
}

func TestBucketConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBucket(1000, 100, time.Second, nil)
		var granted atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 500 {
					if b.Consume() {
						granted.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if granted.Load() != 1000 { // time does not move in the bubble
			t.Errorf("granted %d of 4000, want exactly 1000", granted.Load())
		}
	})
}

func TestLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, st := mustBuild(t, on+`
token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 1s}
response_headers_to_add:
  - {header: {key: x-local-rate-limit, value: "true"}}
  - {header: {key: x-extra, value: ""}, keep_empty_value: true}
`)
		for i := range 2 {
			e, s := kittest.Exchange("GET", "/")
			if f.OnRequest(e) != http.Continue || s.Status() != "" {
				t.Fatalf("request %d limited", i)
			}
		}
		e, s := kittest.Exchange("GET", "/")
		if f.OnRequest(e) != http.Stop {
			t.Fatal("third request not limited")
		}
		_, h, body, _ := s.Response()
		if h.Value(":status") != "429" || body != Body || h.Value("x-local-rate-limit") != "true" || !h.Has("x-extra") {
			t.Errorf("reply %s%q", h, body)
		}
		if h.Has(HeaderLimit) || h.Has(HeaderRetry) {
			t.Errorf("headers not asked for:\n%s", h)
		}
		if e.Info.ResponseFlags != http.FlagRateLimited || e.Info.ResponseCodeDetails != ResponseCodeDetails {
			t.Errorf("flags %v details %q", e.Info.ResponseFlags, e.Info.ResponseCodeDetails)
		}
		time.Sleep(500 * time.Millisecond) // one token back
		e, _ = kittest.Exchange("GET", "/")
		if f.OnRequest(e) != http.Continue {
			t.Fatal("refilled token refused")
		}
		for name, want := range map[string]int64{
			"lrl.http_local_rate_limit.enabled":      4,
			"lrl.http_local_rate_limit.ok":           3,
			"lrl.http_local_rate_limit.rate_limited": 1,
			"lrl.http_local_rate_limit.enforced":     1,
		} {
			if got := stat(t, st, name); got != want {
				t.Errorf("%s = %d, want %d", name, got, want)
			}
		}
	})
}

func TestNotEnforced(t *testing.T) {
	f, st := mustBuild(t, `
stat_prefix: lrl
filter_enabled: {default_value: {numerator: 100}}
token_bucket: {max_tokens: 1, fill_interval: 1s}
request_headers_to_add_when_not_enforced:
  - {header: {key: x-would-be-limited, value: "yes"}}
`)
	e, _ := kittest.Exchange("GET", "/")
	f.OnRequest(e)
	e, s := kittest.Exchange("GET", "/")
	if f.OnRequest(e) != http.Continue || s.Status() != "" {
		t.Fatal("limited though not enforced")
	}
	if e.Request.Value("x-would-be-limited") != "yes" {
		t.Errorf("request headers:\n%s", e.Request)
	}
	if stat(t, st, "lrl.http_local_rate_limit.rate_limited") != 1 || stat(t, st, "lrl.http_local_rate_limit.enforced") != 0 {
		t.Error("stats")
	}
}

func TestDisabledByDefault(t *testing.T) {
	f, st := mustBuild(t, `
stat_prefix: lrl
token_bucket: {max_tokens: 1, fill_interval: 1s}
`)
	for range 3 {
		e, _ := kittest.Exchange("GET", "/")
		if f.OnRequest(e) != http.Continue {
			t.Fatal("limited with filter_enabled unset (0%)")
		}
	}
	if stat(t, st, "lrl.http_local_rate_limit.enabled") != 0 {
		t.Error("counted as enabled")
	}
}

func TestRuntimeEnabled(t *testing.T) {
	var lr bootstrapv3.LayeredRuntime
	if err := protoyaml.Unmarshal([]byte(`layers: [{name: s, static_layer: {lrl_on: 0}}]`), &lr); err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(&lr)
	if err != nil {
		t.Fatal(err)
	}
	f, _, err := buildWith(t, `
stat_prefix: lrl
filter_enabled: {runtime_key: lrl_on, default_value: {numerator: 100}}
filter_enforced: {default_value: {numerator: 100}}
token_bucket: {max_tokens: 1, fill_interval: 1s}
`, rt)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e, _ := kittest.Exchange("GET", "/")
		if f.OnRequest(e) != http.Continue {
			t.Fatal("the runtime's 0% did not disable the filter")
		}
	}
}

func TestXRateLimitHeaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, _ := mustBuild(t, on+`
token_bucket: {max_tokens: 2, tokens_per_fill: 1, fill_interval: 10s}
enable_x_ratelimit_headers: DRAFT_VERSION_03
enable_retry_after_header: true
`)
		e, _ := kittest.Exchange("GET", "/")
		f.OnRequest(e)
		e.Response.Add(http.Status, "200")
		f.OnResponse(e)
		if e.Response.Value(HeaderLimit) != "2" || e.Response.Value(HeaderRemaining) != "1" || e.Response.Value(HeaderReset) != "0" {
			t.Errorf("first response:\n%s", e.Response.String())
		}
		e, _ = kittest.Exchange("GET", "/")
		f.OnRequest(e)
		e, s := kittest.Exchange("GET", "/")
		if f.OnRequest(e) != http.Stop {
			t.Fatal("not limited")
		}
		f.OnResponse(e) // a manager that runs response filters on local replies
		_, h, _, _ := s.Response()
		if h.Value(HeaderRemaining) != "0" || h.Value(HeaderReset) != "10" || h.Value(HeaderRetry) != "10" {
			t.Errorf("429:\n%s", h)
		}
		if got := e.Response.Values(nil, HeaderLimit); len(got) != 1 {
			t.Errorf("x-ratelimit-limit %q after OnResponse on our own reply", got)
		}
	})
}

func TestStatusAndGRPC(t *testing.T) {
	for _, tc := range []struct {
		name, cfg       string
		grpc            bool
		status, grpcSts string
	}{
		{"custom status", `status: {code: ServiceUnavailable}`, false, "503", ""},
		{"status below 400", `status: {code: OK}`, false, "429", ""},
		{"gRPC", ``, true, "200", "14"},
		{"gRPC resource exhausted", `rate_limited_as_resource_exhausted: true`, true, "200", "8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := mustBuild(t, on+tc.cfg+"\ntoken_bucket: {max_tokens: 1, fill_interval: 1s}")
			var kv []string
			if tc.grpc {
				kv = []string{"content-type", "application/grpc"}
			}
			e, _ := kittest.Exchange("POST", "/", kv...)
			f.OnRequest(e)
			e, s := kittest.Exchange("POST", "/", kv...)
			if f.OnRequest(e) != http.Stop {
				t.Fatal("not limited")
			}
			_, h, _, _ := s.Response()
			if h.Value(":status") != tc.status || h.Value("grpc-status") != tc.grpcSts {
				t.Errorf("reply:\n%s", h)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, cfg, path, msg string
	}{
		{"descriptors", `stat_prefix: s
descriptors: [{entries: [{key: k, value: v}], token_bucket: {max_tokens: 1, fill_interval: 1s}}]`, "typed_config.descriptors", "not supported"},
		{"per connection", `stat_prefix: s
local_rate_limit_per_downstream_connection: true`, "typed_config.local_rate_limit_per_downstream_connection", "not supported"},
		{"short interval", `stat_prefix: s
token_bucket: {max_tokens: 1, fill_interval: 0.01s}`, "typed_config.token_bucket.fill_interval", "below the minimum"},
		{"no stat prefix", `token_bucket: {max_tokens: 1, fill_interval: 1s}`, "typed_config.stat_prefix", ""},
		{"formatter skiff lacks", `stat_prefix: s
response_headers_to_add: [{header: {key: x, value: "%START_TIME%"}}]`, "typed_config.response_headers_to_add[0].header.value", "%START_TIME% is not supported"},
		{"host header", `stat_prefix: s
request_headers_to_add_when_not_enforced: [{header: {key: Host, value: x}}]`, "typed_config.request_headers_to_add_when_not_enforced[0].header.key", "may not be modified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := build(t, tc.cfg)
			if err == nil {
				t.Fatal("no error")
			}
			if p := cfgerr.PathOf(err); p != tc.path || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q at %q; want %q at %q", err, p, tc.msg, tc.path)
			}
		})
	}
}

func BenchmarkBucketConsumeSerial(b *testing.B) {
	bk := NewBucket(1<<31, 1<<31, time.Second, nil)
	b.ReportAllocs()
	for b.Loop() {
		bk.Consume()
	}
}

func BenchmarkBucketConsume(b *testing.B) {
	bk := NewBucket(1<<31, 1<<31, time.Second, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bk.Consume()
		}
	})
}

func BenchmarkOnRequest(b *testing.B) {
	f, _ := mustBuild(b, on+`
token_bucket: {max_tokens: 4000000000, tokens_per_fill: 4000000000, fill_interval: 1s}
enable_x_ratelimit_headers: DRAFT_VERSION_03
`)
	e, _ := kittest.Exchange("GET", "/")
	b.ReportAllocs()
	for b.Loop() {
		e.Response.Reset()
		if f.OnRequest(e) != http.Continue {
			b.Fatal("limited")
		}
		f.OnResponse(e)
	}
}

func BenchmarkOnRequestLimited(b *testing.B) {
	f, _ := mustBuild(b, on+`
token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 1000s}
enable_x_ratelimit_headers: DRAFT_VERSION_03
response_headers_to_add: [{header: {key: x-local-rate-limit, value: "true"}}]
`)
	e, s := kittest.Exchange("GET", "/")
	f.OnRequest(e)
	b.ReportAllocs()
	for b.Loop() {
		s.Clear()
		e.Response.Reset()
		if f.OnRequest(e) != http.Stop {
			b.Fatal("not limited")
		}
	}
}
