package healthcheck

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	healthcheckv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/health_check/v3"
	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type server struct{ failed atomic.Bool }

func (s *server) HealthCheckFailed() bool { return s.failed.Load() }

// clusters is a cluster manager with clusters "none" (no hosts), "half"
// (one of two hosts unhealthy by EDS) and "all" (healthy).
func clusters(t *testing.T) *upstream.Manager {
	t.Helper()
	m := upstream.NewManager(stats.NewStore())
	cluster := func(name string, health ...corev3.HealthStatus) upstream.Assignment {
		cfg := &upstream.Config{Name: name, StatName: name, ConnectTimeout: time.Second, PanicThreshold: 50}
		for i, h := range health {
			cfg.Endpoints = append(cfg.Endpoints, upstream.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(1000+i)), Weight: 1, Health: h})
		}
		return upstream.Static(cfg)
	}
	m.Set([]upstream.Assignment{
		cluster("none"),
		cluster("half", corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNHEALTHY),
		cluster("all", corev3.HealthStatus_HEALTHY, corev3.HealthStatus_HEALTHY),
	})
	t.Cleanup(func() { m.Set(nil) })
	return m
}

func TestHealthCheck(t *testing.T) {
	srv := &server{}
	for _, tc := range []struct {
		name, cfg, path string
		failed          bool
		action          http.Action
		status, details string
	}{
		{"ok", `{pass_through_mode: false, headers: [{name: ":path", string_match: {exact: /hc}}]}`, "/hc", false, http.Stop, "200", "health_check_ok"},
		{"not a health check", `{pass_through_mode: false, headers: [{name: ":path", string_match: {exact: /hc}}]}`, "/x", false, http.Continue, "", ""},
		{"failing", `{pass_through_mode: false, headers: [{name: ":path", string_match: {exact: /hc}}]}`, "/hc", true, http.Stop, "503", "health_check_failed"},
		{"pass through", `{pass_through_mode: true, headers: [{name: ":path", string_match: {exact: /hc}}]}`, "/hc", false, http.Continue, "", ""},
		{"pass through failing", `{pass_through_mode: true, headers: [{name: ":path", string_match: {exact: /hc}}]}`, "/hc", true, http.Stop, "503", "health_check_failed"},
		{"clusters healthy", `{pass_through_mode: false, cluster_min_healthy_percentages: {all: {value: 100}, half: {value: 50}, none: {value: 0}}}`, "/", false, http.Stop, "200", "health_check_ok_cluster_healthy"},
		{"cluster unhealthy", `{pass_through_mode: false, cluster_min_healthy_percentages: {all: {value: 100}, half: {value: 51}}}`, "/", false, http.Stop, "503", "health_check_failed_cluster_unhealthy"},
		{"cluster empty", `{pass_through_mode: false, cluster_min_healthy_percentages: {none: {value: 1}}}`, "/", false, http.Stop, "503", "health_check_failed_cluster_empty"},
		{"cluster missing", `{pass_through_mode: false, cluster_min_healthy_percentages: {gone: {value: 1}}}`, "/", false, http.Stop, "503", "health_check_failed_no_cluster_found"},
	} {
		var cfg healthcheckv3.HealthCheck
		if err := protoyaml.Unmarshal([]byte(tc.cfg), &cfg); err != nil {
			t.Fatal(err)
		}
		fc, st := kittest.Context()
		fc.Server, fc.Clusters = srv, clusters(t)
		f, err := Factory{}.Create(&cfg, fc)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		srv.failed.Store(tc.failed)
		e, s := kittest.Exchange("GET", tc.path)
		if got := f.OnRequest(e); got != tc.action {
			t.Errorf("%s: action %v, want %v", tc.name, got, tc.action)
		}
		if tc.action == http.Continue {
			if want := tc.name == "pass through"; e.Info.HealthCheck != want {
				t.Errorf("%s: marked a health check: %v, want %v", tc.name, e.Info.HealthCheck, want)
			}
			continue
		}
		if s.Status() != tc.status || e.Info.ResponseCodeDetails != tc.details || !e.Info.HealthCheck {
			t.Errorf("%s: %s %q (health check %v), want %s %q", tc.name, s.Status(), e.Info.ResponseCodeDetails, e.Info.HealthCheck, tc.status, tc.details)
		}
		if failedFlag := e.Info.ResponseFlags&http.FlagFailedLocalHealthCheck != 0; failedFlag != (tc.status == "503") {
			t.Errorf("%s: LH flag %v", tc.name, failedFlag)
		}
		counter := "http.test.health_check.ok"
		if tc.status == "503" {
			counter = "http.test.health_check.failed"
		}
		if v, _ := kittest.Value(st, counter); v != 1 {
			t.Errorf("%s: %s = %d, want 1", tc.name, counter, v)
		}
	}
}

func TestCacheTimeRefused(t *testing.T) {
	var cfg healthcheckv3.HealthCheck
	if err := protoyaml.Unmarshal([]byte(`{pass_through_mode: true, cache_time: 5s}`), &cfg); err != nil {
		t.Fatal(err)
	}
	fc, _ := kittest.Context()
	if _, err := (Factory{}).Create(&cfg, fc); err == nil {
		t.Fatal("cache_time accepted")
	}
}
