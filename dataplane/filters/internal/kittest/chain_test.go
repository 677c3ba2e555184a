package kittest_test

// This test runs skiff's fault, local_ratelimit, cors and rbac filters as a
// chain over a real HTTP/1.1 connection (the h1 codec on a TCP listener, a
// net/http client), with a minimal stand-in for the HTTP connection manager:
// it checks that local replies reach a real client intact and that the
// connection's addresses reach the filters through filter.WithConn.

import (
	"context"
	"errors"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/h1"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chain is a stand-in connection manager: filters in order, response filters
// in reverse, then a 200 "ok" when no filter stopped.
type chain struct {
	filters []http.Filter
}

func (c *chain) ServeStream(s http.ServerStream) {
	e := http.NewExchange(s.Context(), s)
	e.Route = &route.Route{}
	if conn := filter.ConnFrom(s.Context()); conn != nil {
		e.Info.DownstreamRemote, e.Info.DownstreamLocal = conn.Remote, conn.Local
	}
	for _, f := range c.filters {
		if f.OnRequest(e) == http.Stop {
			return
		}
	}
	e.Response.Add(http.Status, "200")
	for i := len(c.filters) - 1; i >= 0; i-- {
		if rf, ok := c.filters[i].(http.ResponseFilter); ok {
			rf.OnResponse(e)
		}
	}
	e.Response.Add("content-length", "2")
	if s.WriteHeader(&e.Response, false) == nil {
		s.Write([]byte("ok"))
		s.End()
	}
}

func typed(t *testing.T, y string, m proto.Message) *anypb.Any {
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

type server struct {
	addr string
	st   *stats.Store
	stop func()
}

func start(t *testing.T) *server {
	reg, err := filters.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	fc, st := kittest.Context()
	var c chain
	for _, cfg := range []struct {
		name string
		a    *anypb.Any
	}{
		{"envoy.filters.http.fault", typed(t, `abort: {header_abort: {}, percentage: {numerator: 100}}
delay: {header_delay: {}, percentage: {numerator: 100}}`, &faultv3.HTTPFault{})},
		{"envoy.filters.http.cors", typed(t, `allow_origin_string_match: [{exact: "https://app.example.com"}]
allow_methods: "GET, PUT"`, &corsv3.CorsPolicy{})},
		{"envoy.filters.http.local_ratelimit", typed(t, `stat_prefix: edge
token_bucket: {max_tokens: 3, fill_interval: 3600s}
filter_enabled: {default_value: {numerator: 100}}
filter_enforced: {default_value: {numerator: 100}}
enable_x_ratelimit_headers: DRAFT_VERSION_03`, &lrlv3.LocalRateLimit{})},
		{"envoy.filters.http.rbac", typed(t, `rules:
  policies:
    loopback-public:
      permissions: [{not_rule: {url_path: {path: {prefix: /admin}}}}]
      principals: [{remote_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]`, &httprbacv3.RBAC{})},
	} {
		f, err := reg.HTTPFilter(cfg.name, cfg.a, fc)
		if err != nil {
			t.Fatalf("%s: %v", cfg.name, err)
		}
		c.filters = append(c.filters, f)
	}
	bufs := bufpool.New()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		var id uint64
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			id++
			conn := filter.NewConn(nc, id, "test", fc.Logger)
			wg.Go(func() {
				h1.NewServerConn(&h1.Options{Buffers: bufs}).Serve(filter.WithConn(ctx, conn), conn, &c)
			})
		}
	})
	return &server{addr: ln.Addr().String(), st: st, stop: func() {
		ln.Close()
		cancel()
		wg.Wait()
	}}
}

func TestChainOverHTTP1(t *testing.T) {
	srv := start(t)
	defer srv.stop()
	tr := &nethttp.Transport{}
	defer tr.CloseIdleConnections()
	client := &nethttp.Client{Transport: tr}
	do := func(method, path string, kv ...string) (*nethttp.Response, string) {
		t.Helper()
		req, err := nethttp.NewRequest(method, "http://"+srv.addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			req.Header.Set(kv[i], kv[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}

	// RBAC denies /admin (the rate limiter, before it, spends a token).
	resp, body := do("GET", "/admin/users")
	if resp.StatusCode != 403 || body != "RBAC: access denied" {
		t.Fatalf("/admin: %d %q", resp.StatusCode, body)
	}
	// The CORS preflight is answered before the rate limiter.
	resp, body = do("OPTIONS", "/x", "Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT")
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		resp.Header.Get("Access-Control-Allow-Methods") != "GET, PUT" || body != "" {
		t.Fatalf("preflight: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	// An actual CORS request passes and gets allow-origin and rate limit headers.
	resp, body = do("GET", "/x", "Origin", "https://app.example.com")
	if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		resp.Header.Get("X-Ratelimit-Limit") != "3" || resp.Header.Get("X-Ratelimit-Remaining") != "1" {
		t.Fatalf("GET: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	// A fault asked for by header aborts before anything else.
	resp, body = do("GET", "/x", "x-envoy-fault-abort-request", "503")
	if resp.StatusCode != 503 || body != "fault filter abort" {
		t.Fatalf("fault: %d %q", resp.StatusCode, body)
	}
	// The last token, then 429.
	if resp, _ = do("GET", "/x"); resp.StatusCode != 200 {
		t.Fatalf("last token: %d", resp.StatusCode)
	}
	resp, body = do("GET", "/x")
	if resp.StatusCode != 429 || body != "local_rate_limited" || resp.Header.Get("X-Ratelimit-Remaining") != "0" {
		t.Fatalf("429: %d %v %q", resp.StatusCode, resp.Header, body)
	}

	// A delayed request whose client gives up ends the delay.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := nethttp.NewRequestWithContext(ctx, "GET", "http://"+srv.addr+"/slow", nil)
	req.Header.Set("x-envoy-fault-delay-request", "60000")
	started := time.Now()
	if _, err := client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("delayed request: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		active, _ := kittest.Value(srv.st, "http.test.fault.active_faults")
		if active == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the delay went on after the client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if time.Since(started) > 30*time.Second {
		t.Error("delay not cut short")
	}

	for name, want := range map[string]int64{
		"http.test.rbac.denied":                   1,
		"http.test.rbac.allowed":                  2,
		"http.test.cors.origin_valid":             2,
		"edge.http_local_rate_limit.rate_limited": 1,
		"http.test.fault.aborts_injected":         1,
		"http.test.fault.delays_injected":         1,
	} {
		if got, _ := kittest.Value(srv.st, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	if !strings.HasPrefix(srv.addr, "127.0.0.1:") {
		t.Fatal(srv.addr)
	}
}
