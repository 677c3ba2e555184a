package fault

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	fc *filter.Context
	st *stats.Store
}

func newEnv() *env {
	fc, st := kittest.Context()
	return &env{fc: fc, st: st}
}

// withRuntime gives the env a runtime with a static layer (YAML).
func (v *env) withRuntime(t testing.TB, layer string) *env {
	t.Helper()
	var lr bootstrapv3.LayeredRuntime
	if err := protoyaml.Unmarshal([]byte("layers: [{name: static, static_layer: "+layer+"}]"), &lr); err != nil {
		t.Fatal(err)
	}
	l, err := runtime.New(&lr)
	if err != nil {
		t.Fatal(err)
	}
	v.fc.Runtime = l
	return v
}

func (v *env) build(t testing.TB, y string) (*Filter, error) {
	t.Helper()
	var cfg faultv3.HTTPFault
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
	f, err := r.HTTPFilter(Name, a, v.fc)
	if err != nil {
		return nil, err
	}
	return f.(*Filter), nil
}

func (v *env) mustBuild(t testing.TB, y string) *Filter {
	t.Helper()
	f, err := v.build(t, y)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (v *env) stat(t *testing.T, name string) int64 {
	t.Helper()
	n, ok := kittest.Value(v.st, name)
	if !ok {
		t.Fatalf("no stat %s", name)
	}
	return n
}

const always = "percentage: {numerator: 100}"

func TestAbort(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cfg        string
		kv         []string
		status     string
		grpcStatus string
		body       string
	}{
		{"http status", `abort: {http_status: 503, ` + always + `}`, nil, "503", "", DefaultAbortBody},
		{"custom body", `abort: {http_status: 418, response_body: teapot, ` + always + `}`, nil, "418", "", "teapot"},
		{"grpc status to a gRPC request", `abort: {grpc_status: 5, ` + always + `}`,
			[]string{"content-type", "application/grpc"}, "200", "5", ""},
		{"http status to a gRPC request", `abort: {http_status: 503, ` + always + `}`,
			[]string{"content-type", "application/grpc+proto"}, "200", "14", ""},
		{"grpc status to a plain request", `abort: {grpc_status: 5, ` + always + `}`, nil, "200", "", DefaultAbortBody},
		{"header abort", `abort: {header_abort: {}, ` + always + `}`, []string{HeaderAbort, "429"}, "429", "", DefaultAbortBody},
		{"header abort grpc", `abort: {header_abort: {}, ` + always + `}`,
			[]string{HeaderAbortGRPC, "0", "content-type", "application/grpc"}, "200", "0", ""},
		{"header abort http wins", `abort: {header_abort: {}, ` + always + `}`,
			[]string{HeaderAbort, "500", HeaderAbortGRPC, "3"}, "500", "", DefaultAbortBody},
		{"header abort out of range", `abort: {header_abort: {}, ` + always + `}`, []string{HeaderAbort, "600"}, "", "", ""},
		{"header abort not a number", `abort: {header_abort: {}, ` + always + `}`, []string{HeaderAbort, "5xx"}, "", "", ""},
		{"header abort, no header", `abort: {header_abort: {}, ` + always + `}`, nil, "", "", ""},
		{"header percentage 0", `abort: {header_abort: {}, ` + always + `}`,
			[]string{HeaderAbort, "500", HeaderAbortPercentage, "0"}, "", "", ""},
		{"unset percentage is 0%", `abort: {http_status: 503}`, nil, "", "", ""},
		{"empty config (istiod's) never fires", `{}`, []string{HeaderAbort, "503"}, "", "", ""},
		{"headers match", `abort: {http_status: 503, ` + always + `}
headers: [{name: x-chaos, string_match: {exact: "on"}}]`, []string{"x-chaos", "on"}, "503", "", DefaultAbortBody},
		{"headers do not match", `abort: {http_status: 503, ` + always + `}
headers: [{name: x-chaos, string_match: {exact: "on"}}]`, []string{"x-chaos", "off"}, "", "", ""},
		{"downstream node listed", `abort: {http_status: 503, ` + always + `}
downstream_nodes: [a, b]`, []string{HeaderDownstreamNode, "b"}, "503", "", DefaultAbortBody},
		{"downstream node not listed", `abort: {http_status: 503, ` + always + `}
downstream_nodes: [a, b]`, []string{HeaderDownstreamNode, "c"}, "", "", ""},
		{"downstream node missing", `abort: {http_status: 503, ` + always + `}
downstream_nodes: [a]`, nil, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv()
			f := v.mustBuild(t, tc.cfg)
			e, s := kittest.Exchange("GET", "/", tc.kv...)
			act := f.OnRequest(e)
			if tc.status == "" {
				if act != http.Continue || s.Status() != "" {
					t.Fatalf("OnRequest = %v, status %q; want Continue", act, s.Status())
				}
				if e.Info.ResponseFlags != 0 {
					t.Errorf("flags %v", e.Info.ResponseFlags)
				}
				return
			}
			if act != http.Stop {
				t.Fatal("OnRequest did not stop")
			}
			_, h, body, ended := s.Response()
			if h.Value(":status") != tc.status || h.Value("grpc-status") != tc.grpcStatus || body != tc.body || !ended {
				t.Errorf("got %s body %q ended %v", h, body, ended)
			}
			if tc.grpcStatus != "" && h.Value("grpc-message") != DefaultAbortBody {
				t.Errorf("grpc-message %q", h.Value("grpc-message"))
			}
			if e.Info.ResponseFlags != http.FlagFaultInjected || e.Info.ResponseCodeDetails != ResponseCodeDetailsAbort {
				t.Errorf("flags %v details %q", e.Info.ResponseFlags, e.Info.ResponseCodeDetails)
			}
			if v.stat(t, "http.test.fault.aborts_injected") != 1 || v.stat(t, "http.test.fault.active_faults") != 0 {
				t.Error("stats not counted")
			}
		})
	}
}

func TestUpstreamCluster(t *testing.T) {
	v := newEnv()
	f := v.mustBuild(t, `abort: {http_status: 503, `+always+`}
upstream_cluster: backend`)
	e, _ := kittest.Exchange("GET", "/")
	if f.OnRequest(e) != http.Continue {
		t.Error("aborted a request with no route")
	}
	e, _ = kittest.Exchange("GET", "/")
	e.Info.UpstreamCluster = "backend"
	if f.OnRequest(e) != http.Stop {
		t.Error("did not abort a request to backend")
	}
	e, _ = kittest.Exchange("GET", "/")
	e.Route = &route.Route{Action: route.Redirect}
	if f.OnRequest(e) != http.Continue {
		t.Error("aborted a redirect")
	}
}

func TestPercentage(t *testing.T) {
	v := newEnv()
	f := v.mustBuild(t, `abort: {http_status: 503, percentage: {numerator: 25, denominator: TEN_THOUSAND}}`)
	var r uint64
	f.rand = func() uint64 { r++; return r - 1 }
	aborted := 0
	for range 20000 {
		e, _ := kittest.Exchange("GET", "/")
		if f.OnRequest(e) == http.Stop {
			aborted++
		}
	}
	if aborted != 50 { // 25 in every 10 000
		t.Errorf("aborted %d of 20000, want 50", aborted)
	}
}

func TestHeaderPercentageCapped(t *testing.T) {
	v := newEnv()
	f := v.mustBuild(t, `abort: {header_abort: {}, percentage: {numerator: 10}}`)
	for _, tc := range []struct {
		header string
		r      uint64
		abort  bool
	}{
		{"50", 9, true},    // capped at 10: 9 < 10
		{"50", 10, false},  // capped: 10 is not below 10
		{"5", 6, false},    // 6 is not below 5
		{"bad", 9, true},   // unparsable: the configured 10
		{"", 9, true},      // absent: the configured 10
		{"100", 99, false}, // capped at 10
	} {
		kv := []string{HeaderAbort, "503"}
		if tc.header != "" {
			kv = append(kv, HeaderAbortPercentage, tc.header)
		}
		f.rand = func() uint64 { return tc.r }
		e, _ := kittest.Exchange("GET", "/", kv...)
		if got := f.OnRequest(e) == http.Stop; got != tc.abort {
			t.Errorf("percentage header %q, random %d: abort %v, want %v", tc.header, tc.r, got, tc.abort)
		}
	}
}

func TestRuntimeOverrides(t *testing.T) {
	v := newEnv().withRuntime(t, `{fault: {http: {abort: {abort_percent: 100, http_status: 502}, max_active_faults: 7}}, custom: {pct: 0}}`)
	f := v.mustBuild(t, `abort: {http_status: 503}`) // 0% unless the runtime says otherwise
	e, s := kittest.Exchange("GET", "/")
	if f.OnRequest(e) != http.Stop || s.Status() != "502" {
		t.Fatalf("status %q, want the runtime's 502 at the runtime's 100%%", s.Status())
	}
	// A configured runtime key replaces the default one.
	f = v.mustBuild(t, `abort: {http_status: 503, `+always+`}
abort_percent_runtime: custom.pct`)
	e, _ = kittest.Exchange("GET", "/")
	if f.OnRequest(e) != http.Continue {
		t.Fatal("custom.pct: 0 did not disable the abort")
	}
}

func TestRuntimeFractionalPercentStruct(t *testing.T) {
	v := newEnv().withRuntime(t, `{fault: {http: {abort: {abort_percent: {numerator: 1, denominator: MILLION}}}}}`)
	f := v.mustBuild(t, `abort: {http_status: 503, `+always+`}`)
	for _, tc := range []struct {
		r     uint64
		abort bool
	}{{0, true}, {1, false}, {1_000_000, true}, {99, false}} {
		f.rand = func() uint64 { return tc.r }
		e, _ := kittest.Exchange("GET", "/")
		if got := f.OnRequest(e) == http.Stop; got != tc.abort {
			t.Errorf("random %d: abort %v, want %v", tc.r, got, tc.abort)
		}
	}
}

func TestDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newEnv()
		f := v.mustBuild(t, `delay: {fixed_delay: 2.5s, `+always+`}`)
		e, _ := kittest.Exchange("GET", "/")
		start := time.Now()
		if f.OnRequest(e) != http.Continue {
			t.Fatal("a delay stopped the request")
		}
		if d := time.Since(start); d != 2500*time.Millisecond {
			t.Errorf("delayed %v", d)
		}
		if e.Info.ResponseFlags != http.FlagDelayInjected {
			t.Errorf("flags %v", e.Info.ResponseFlags)
		}
		if v.stat(t, "http.test.fault.delays_injected") != 1 || v.stat(t, "http.test.fault.active_faults") != 0 {
			t.Error("stats")
		}
	})
}

func TestHeaderDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newEnv().mustBuild(t, `delay: {header_delay: {}, `+always+`}`)
		for _, tc := range []struct {
			value string
			want  time.Duration
		}{{"150", 150 * time.Millisecond}, {"0", 0}, {"-1", 0}, {"x", 0}, {"", 0}} {
			var kv []string
			if tc.value != "" {
				kv = []string{HeaderDelay, tc.value}
			}
			e, _ := kittest.Exchange("GET", "/", kv...)
			start := time.Now()
			f.OnRequest(e)
			if d := time.Since(start); d != tc.want {
				t.Errorf("%s: %q delayed %v, want %v", HeaderDelay, tc.value, d, tc.want)
			}
		}
	})
}

func TestDelayThenAbort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newEnv()
		f := v.mustBuild(t, `delay: {fixed_delay: 1s, `+always+`}
abort: {http_status: 504, `+always+`}
max_active_faults: 1`)
		e, s := kittest.Exchange("GET", "/")
		start := time.Now()
		if f.OnRequest(e) != http.Stop || s.Status() != "504" || time.Since(start) != time.Second {
			t.Fatalf("status %q after %v", s.Status(), time.Since(start))
		}
		if e.Info.ResponseFlags != http.FlagDelayInjected|http.FlagFaultInjected || string(e.Info.AppendResponseFlags(nil, false)) != "DI,FI" {
			t.Errorf("flags %v", e.Info.ResponseFlags)
		}
		// One active fault for both, so max_active_faults: 1 let the abort through.
		if v.stat(t, "http.test.fault.faults_overflow") != 0 {
			t.Error("overflow counted")
		}
	})
}

func TestDelayClientGone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newEnv()
		f := v.mustBuild(t, `delay: {fixed_delay: 10s, `+always+`}`)
		ctx, cancel := context.WithCancel(context.Background())
		e, s := kittest.ExchangeCtx(ctx, "GET", "/")
		var act http.Action
		done := make(chan struct{})
		go func() {
			act = f.OnRequest(e)
			close(done)
		}()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if v.stat(t, "http.test.fault.active_faults") != 1 {
			t.Error("the delay is not an active fault")
		}
		cancel()
		<-done
		if act != http.Stop {
			t.Error("OnRequest continued after the client went away")
		}
		if code, ok := s.ResetCode(); !ok || code != http.ResetCancel {
			t.Errorf("stream reset %v %v", ok, code)
		}
		if v.stat(t, "http.test.fault.active_faults") != 0 {
			t.Error("active_faults not released")
		}
	})
}

func TestDelayInterrupted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newEnv()
		f := v.mustBuild(t, `delay: {fixed_delay: 10s, `+always+`}`)
		e, s := kittest.Exchange("GET", "/")
		var act http.Action
		done := make(chan struct{})
		go func() {
			act = f.OnRequest(e)
			close(done)
		}()
		time.Sleep(time.Second)
		e.Interrupt(errors.New("request timeout"))
		<-done
		if act != http.Stop {
			t.Error("OnRequest continued after an interrupt")
		}
		if _, reset := s.ResetCode(); reset {
			t.Error("reset the stream: the manager answers an interrupted exchange")
		}
		if v.stat(t, "http.test.fault.active_faults") != 0 {
			t.Error("active_faults not released")
		}
		// Interrupted before the delay: no wait at all.
		e, _ = kittest.Exchange("GET", "/")
		e.Interrupt(errors.New("gone"))
		start := time.Now()
		if f.OnRequest(e) != http.Stop || time.Since(start) != 0 {
			t.Error("waited on an interrupted exchange")
		}
	})
}

func TestMaxActiveFaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newEnv()
		f := v.mustBuild(t, `delay: {fixed_delay: 1s, `+always+`}
max_active_faults: 2`)
		var wg sync.WaitGroup
		flags := make([]http.ResponseFlag, 5)
		for i := range flags {
			wg.Go(func() {
				e, _ := kittest.Exchange("GET", "/")
				f.OnRequest(e)
				flags[i] = e.Info.ResponseFlags
			})
			synctest.Wait() // in order, each blocked before the next starts
		}
		wg.Wait()
		delayed := 0
		for _, fl := range flags {
			if fl == http.FlagDelayInjected {
				delayed++
			}
		}
		if delayed != 2 || v.stat(t, "http.test.fault.faults_overflow") != 3 || v.stat(t, "http.test.fault.delays_injected") != 2 {
			t.Errorf("delayed %d (flags %v), overflow %d", delayed, flags, v.stat(t, "http.test.fault.faults_overflow"))
		}
	})
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, cfg, path, msg string
	}{
		{"response rate limit", `delay: {fixed_delay: 1s}
response_rate_limit: {fixed_limit: {limit_kbps: 1}}`, "typed_config.response_rate_limit", "not supported"},
		{"filter metadata", `abort: {http_status: 500}
filter_metadata: {a: 1}`, "typed_config.filter_metadata", "not supported"},
		{"http status range", `abort: {http_status: 100}`, "typed_config.abort.http_status", ""},
		{"no error type", `abort: {percentage: {numerator: 1}}`, "typed_config.abort", "one of"},
		{"bad header matcher", `abort: {http_status: 500}
headers: [{name: x, string_match: {safe_regex: {regex: "["}}}]`, "typed_config.headers[0].string_match.safe_regex.regex", "missing closing"},
		{"no delay type", `delay: {percentage: {numerator: 1}}`, "typed_config.delay", "one of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newEnv().build(t, tc.cfg)
			if err == nil {
				t.Fatal("no error")
			}
			if p := cfgerr.PathOf(err); p != tc.path || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q at %q; want %q at %q", err, p, tc.msg, tc.path)
			}
		})
	}
}

func BenchmarkNoFault(b *testing.B) {
	f := newEnv().mustBuild(b, `abort: {http_status: 503, percentage: {numerator: 0}}
headers: [{name: x-chaos, present_match: true}]`)
	e, _ := kittest.Exchange("GET", "/", "x-chaos", "1")
	b.ReportAllocs()
	for b.Loop() {
		if f.OnRequest(e) != http.Continue {
			b.Fatal("aborted")
		}
	}
}

func BenchmarkAbort(b *testing.B) {
	f := newEnv().mustBuild(b, `abort: {http_status: 503, `+always+`}`)
	e, s := kittest.Exchange("GET", "/")
	b.ReportAllocs()
	for b.Loop() {
		s.Clear()
		e.Response.Reset()
		if f.OnRequest(e) != http.Stop {
			b.Fatal("not aborted")
		}
	}
}
