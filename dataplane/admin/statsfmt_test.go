package admin

import (
	"slices"
	"strings"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/statsconfig"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestPrometheusName(t *testing.T) {
	for in, want := range map[string]string{
		"cluster.upstream_cx_total": "envoy_cluster_upstream_cx_total",
		"a-b.c:d/e":                 "envoy_a_b_c_d_e",
	} {
		if got := PrometheusName(in); got != want {
			t.Errorf("PrometheusName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWritePrometheus(t *testing.T) {
	samples := []stats.Sample{
		{Name: "cluster.backend.upstream_cx_total", Kind: stats.KindCounter, Value: 3},
		{Name: "cluster.alpha.upstream_cx_total", Kind: stats.KindCounter, Value: 1},
		{Name: "cluster.backend.upstream_cx_active", Kind: stats.KindGauge, Value: 2},
		{Name: "listener.127.0.0.1_10000.downstream_cx_total", Kind: stats.KindCounter, Value: 7},
		{Name: "tcp.in.downstream_cx_total", Kind: stats.KindCounter, Value: 5},
		{Name: "server.live", Kind: stats.KindGauge, Value: 1},
		{Name: `cluster.we"ird\.x`, Kind: stats.KindCounter, Value: 0},
	}
	var b strings.Builder
	if err := writePrometheus(&b, samples, statsconfig.DefaultTags()); err != nil {
		t.Fatal(err)
	}
	want := `# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{envoy_cluster_name="alpha"} 1
envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 3

# TYPE envoy_cluster_x counter
envoy_cluster_x{envoy_cluster_name="we\"ird\\"} 0

# TYPE envoy_listener_downstream_cx_total counter
envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_10000"} 7

# TYPE envoy_tcp_downstream_cx_total counter
envoy_tcp_downstream_cx_total{envoy_tcp_prefix="in"} 5

# TYPE envoy_cluster_upstream_cx_active gauge
envoy_cluster_upstream_cx_active{envoy_cluster_name="backend"} 2

# TYPE envoy_server_live gauge
envoy_server_live{} 1

`
	if got := b.String(); got != want {
		t.Errorf("writePrometheus:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteStatsText(t *testing.T) {
	var b strings.Builder
	writeStatsText(&b, []stats.Sample{
		{Name: "cluster.c.upstream_cx_total", Kind: stats.KindCounter, Value: 3},
		{Name: "server.state", Kind: stats.KindGauge, Value: -1},
	})
	if want := "cluster.c.upstream_cx_total: 3\nserver.state: -1\n"; b.String() != want {
		t.Errorf("writeStatsText = %q, want %q", b.String(), want)
	}
}

func TestStatFilter(t *testing.T) {
	samples := []stats.Sample{
		{Name: "cluster.a.upstream_cx_total", Kind: stats.KindCounter, Value: 0},
		{Name: "cluster.b.upstream_cx_total", Kind: stats.KindCounter, Value: 2, Used: true},
		{Name: "listener.x.downstream_cx_active", Kind: stats.KindGauge, Value: 1, Used: true},
		{Name: "server.state", Kind: stats.KindGauge, Value: 0, Used: true}, // Set to 0: used
	}
	names := func(ss []stats.Sample) (out []string) {
		for _, s := range ss {
			out = append(out, s.Name)
		}
		return out
	}
	for _, tt := range []struct {
		expr     string
		usedOnly bool
		want     []string
	}{
		{"", false, []string{"cluster.a.upstream_cx_total", "cluster.b.upstream_cx_total", "listener.x.downstream_cx_active", "server.state"}},
		{"", true, []string{"cluster.b.upstream_cx_total", "listener.x.downstream_cx_active", "server.state"}},
		{`^cluster\.`, false, []string{"cluster.a.upstream_cx_total", "cluster.b.upstream_cx_total"}},
		{`cx_total$`, true, []string{"cluster.b.upstream_cx_total"}},
	} {
		f, err := newStatFilter(tt.expr, tt.usedOnly)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(f.apply(samples)); !slices.Equal(got, tt.want) {
			t.Errorf("filter %q used-only %t: %v, want %v", tt.expr, tt.usedOnly, got, tt.want)
		}
	}
	if _, err := newStatFilter("(", false); err == nil {
		t.Error("newStatFilter(\"(\") succeeded, want an error")
	}
}

func TestHistograms(t *testing.T) {
	st := stats.NewStore()
	h := st.Histogram("cluster.c.upstream_cx_length_ms")
	for _, v := range []uint64{1, 2, 2, 100} {
		h.Record(v)
	}
	st.Histogram("server.idle_ms")
	samples := st.Snapshot()

	var b strings.Builder
	if err := writePrometheus(&b, samples, statsconfig.DefaultTags()); err != nil {
		t.Fatal(err)
	}
	want := `# TYPE envoy_cluster_upstream_cx_length_ms histogram
envoy_cluster_upstream_cx_length_ms_bucket{envoy_cluster_name="c",le="1"} 1
envoy_cluster_upstream_cx_length_ms_bucket{envoy_cluster_name="c",le="2"} 3
envoy_cluster_upstream_cx_length_ms_bucket{envoy_cluster_name="c",le="103"} 4
envoy_cluster_upstream_cx_length_ms_bucket{envoy_cluster_name="c",le="+Inf"} 4
envoy_cluster_upstream_cx_length_ms_sum{envoy_cluster_name="c"} 105
envoy_cluster_upstream_cx_length_ms_count{envoy_cluster_name="c"} 4

# TYPE envoy_server_idle_ms histogram
envoy_server_idle_ms_bucket{le="+Inf"} 0
envoy_server_idle_ms_sum{} 0
envoy_server_idle_ms_count{} 0

`
	if got := b.String(); got != want {
		t.Errorf("writePrometheus of histograms:\n%s\nwant:\n%s", got, want)
	}

	b.Reset()
	writeStatsText(&b, samples)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "cluster.c.upstream_cx_length_ms: P0(nan,1) P25(nan,") ||
		!strings.Contains(lines[0], " P100(nan,") || lines[1] != "server.idle_ms: No recorded values" {
		t.Errorf("writeStatsText of histograms:\n%s", b.String())
	}

	f, _ := newStatFilter("", true)
	if got := f.apply(samples); len(got) != 1 || got[0].Name != "cluster.c.upstream_cx_length_ms" {
		t.Errorf("used-only histograms: %v, want only the one that recorded values", got)
	}
}
