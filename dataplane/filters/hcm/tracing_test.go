package hcm

import (
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/stats"
)

// TestTracingDecision: istiod's tracing (no provider; random_sampling 1%)
// packs Envoy's trace reason into x-request-id and counts it.
func TestTracingDecision(t *testing.T) {
	st := stats.NewStore()
	tr, err := newTracing(&hcmv3.HttpConnectionManager{Tracing: &hcmv3.HttpConnectionManager_Tracing{
		RandomSampling: &typev3.Percent{Value: 1}}}, true, st, "http.x.")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id, extra string
		want      string
		stat      string
	}{
		// 0x00000063 % 10000 = 99 < 100: sampled.
		{"00000063-0000-4000-8000-000000000000", "", "00000063-0000-9000-8000-000000000000", "random_sampling"},
		// 0x00002710 % 10000 = 0... 0x000003e8 = 1000 >= 100: not sampled.
		{"000003e8-0000-4000-8000-000000000000", "", "000003e8-0000-4000-8000-000000000000", "not_traceable"},
		{"000003e8-0000-4000-8000-000000000000", "x-envoy-force-trace", "000003e8-0000-a000-8000-000000000000", "service_forced"},
		{"000003e8-0000-4000-8000-000000000000", "x-client-trace-id", "000003e8-0000-b000-8000-000000000000", "client_enabled"},
		{"not-a-uuid", "", "not-a-uuid", "not_traceable"},
	} {
		var h http.Header
		h.Add("x-request-id", tc.id)
		if tc.extra != "" {
			h.Add(tc.extra, "1")
		}
		before := st.Counter("http.x.tracing." + tc.stat).Value()
		tr.decide(&h)
		if got := h.Value("x-request-id"); got != tc.want {
			t.Errorf("%s (%s): x-request-id %s, want %s", tc.id, tc.extra, got, tc.want)
		}
		if st.Counter("http.x.tracing."+tc.stat).Value() != before+1 {
			t.Errorf("%s (%s): tracing.%s not counted", tc.id, tc.extra, tc.stat)
		}
	}
	var h http.Header
	h.Add("x-request-id", "00000063-0000-4000-8000-000000000000")
	r := &route.Route{Decorator: &route.Decorator{Operation: "svc:80/api*", Propagate: true}}
	if allocs := testing.AllocsPerRun(100, func() {
		h.Set("x-request-id", "00000063-0000-4000-8000-000000000000")
		tr.decide(&h)
		tr.decorate(&h, r)
	}); allocs != 0 {
		t.Errorf("tracing costs %v allocations per request", allocs)
	}
	if got := h.Value("x-envoy-decorator-operation"); got != "svc:80/api*" {
		t.Errorf("egress x-envoy-decorator-operation %q", got)
	}
	// Ingress: the request's operation is removed; the response gets the decorator's.
	in := *tr
	in.egress = false
	if op := in.decorate(&h, r); op != "" || h.Has("x-envoy-decorator-operation") {
		t.Errorf("ingress with a caller's operation: %q, header kept %v", op, h.Has("x-envoy-decorator-operation"))
	}
	if op := in.decorate(&h, r); op != "svc:80/api*" {
		t.Errorf("ingress response operation %q", op)
	}
}
