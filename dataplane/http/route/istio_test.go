package route

import (
	"os"
	"reflect"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/internal/backoff"
)

// The RouteConfigurations istiod sent for testdata/README's mesh: decoded
// from the exact bytes (.pb) and from the protojson rendering, they must give
// the same table.
func loadIstio(t *testing.T, name string) *Table {
	t.Helper()
	raw, err := os.ReadFile("testdata/" + name + ".pb")
	if err != nil {
		t.Fatal(err)
	}
	fromPB := &routev3.RouteConfiguration{}
	if err := proto.Unmarshal(raw, fromPB); err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile("testdata/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	fromJSON := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal(js, fromJSON); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(fromPB, fromJSON) {
		t.Fatalf("%s: .pb and .json differ", name)
	}
	tbl, err := Compile(fromPB, Options{})
	if err != nil {
		t.Fatalf("Compile(%s): %v", name, err)
	}
	return tbl
}

// istioRetry is the retry policy istiod derives from the VirtualService's
// "retries: {attempts: 2}" (and its defaults for retry_on).
var istioRetry = &RetryPolicy{
	On:                       RetryConnectFailure | RetryRefusedStream | RetryGRPCUnavailable | RetryGRPCCancelled | RetryRetriableStatusCodes,
	NumRetries:               2,
	Backoff:                  backoff.Policy{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond},
	AvoidPreviousHosts:       true,
	HostSelectionMaxAttempts: 5,
}

// TestIstioGateway routes through what the ingress gateway receives for the
// Gateway on port 8080 and the VirtualService sending /api to
// backend.example.com:80 with a 3 s timeout and 2 retries.
func TestIstioGateway(t *testing.T) {
	tbl := loadIstio(t, "istio-router-RouteConfiguration-http.8080")
	if tbl.Name() != "http.8080" {
		t.Errorf("Name = %q", tbl.Name())
	}
	for _, tt := range []struct{ host, path string }{
		{"gw.example.com", "/api"},
		{"gw.example.com:8080", "/api/v1/users?id=7"},
		{"10.0.0.1:8080", "/apix"}, // Istio's uri prefix is Envoy's prefix: no segment boundary
		{"", "/api"},
	} {
		h := req(tt.host, tt.path)
		r := tbl.Match(h, 0)
		if r == nil {
			t.Fatalf("%s%s: no route", tt.host, tt.path)
		}
		if r.VirtualHost.Name != "*:8080" || !r.VirtualHost.IncludeRequestAttemptCount || r.Action != Forward {
			t.Errorf("%s%s: virtual host %+v, action %v", tt.host, tt.path, r.VirtualHost, r.Action)
		}
		if got := r.ClusterFor(h, 12345); got != "outbound|80||backend.example.com" {
			t.Errorf("%s%s: cluster %q", tt.host, tt.path, got)
		}
		if r.Timeout != 3*time.Second || r.MaxGRPCTimeout == nil || *r.MaxGRPCTimeout != 3*time.Second ||
			r.IdleTimeout != nil || r.GRPCTimeoutOffset != nil {
			t.Errorf("timeouts: %v, grpc max %v, idle %v", r.Timeout, r.MaxGRPCTimeout, r.IdleTimeout)
		}
		if !reflect.DeepEqual(r.Retry, istioRetry) {
			t.Errorf("retry policy %+v\nwant %+v", r.Retry, istioRetry)
		}
		if r.Decorator == nil || r.Decorator.Operation != "backend.example.com:80/api*" || !r.Decorator.Propagate {
			t.Errorf("decorator %+v", r.Decorator)
		}
		if got := r.Metadata.GetFilterMetadata()["istio"].GetFields()["config"].GetStringValue(); got != "/apis/networking.istio.io/v1/namespaces/istio-system/virtual-service/backend" {
			t.Errorf("metadata %q", got)
		}
		// Nothing to rewrite or add.
		before := h.String()
		r.MutateRequest(h, nil)
		if r.RewriteRequest(h, true) || h.String() != before {
			t.Errorf("request changed:\n%s", h.String())
		}
	}
	for _, path := range []string{"/", "/API", "/ap", "/healthz"} {
		if r := tbl.Match(req("gw.example.com", path), 0); r != nil {
			t.Errorf("%s matched (want 404 NR)", path)
		}
	}
}

// TestIstioSidecar routes through what a sidecar receives for port 80: the
// ServiceEntry's host (with and without the port, and with a trailing dot)
// goes to the service with Istio's default retries and no timeout, anything
// else passes through.
func TestIstioSidecar(t *testing.T) {
	tbl := loadIstio(t, "istio-sidecar-RouteConfiguration-80")
	for _, host := range []string{"backend.example.com", "backend.example.com:80", "Backend.Example.COM:8080", "backend.example.com."} {
		h := req(host, "/anything?x=1")
		r := tbl.Match(h, 0)
		if r == nil || r.Name != "default" || r.VirtualHost.Name != "backend.example.com:80" {
			t.Fatalf("%s: route %v", host, r)
		}
		if got := r.ClusterFor(h, 0); got != "outbound|80||backend.example.com" {
			t.Errorf("%s: cluster %q", host, got)
		}
		if r.Timeout != 0 || r.MaxGRPCTimeout == nil || *r.MaxGRPCTimeout != 0 {
			t.Errorf("%s: timeout %v, grpc max %v; want none, uncapped", host, r.Timeout, r.MaxGRPCTimeout)
		}
		if !reflect.DeepEqual(r.Retry, istioRetry) {
			t.Errorf("%s: retry policy %+v", host, r.Retry)
		}
		if r.Decorator.GetOperation() != "backend.example.com:80/*" {
			t.Errorf("%s: decorator %+v", host, r.Decorator)
		}
	}
	for _, host := range []string{"other.example.com", "10.1.2.3:80", "backend.example.co", ""} {
		h := req(host, "/")
		r := tbl.Match(h, 0)
		if r == nil || r.Name != "allow_any" || r.VirtualHost.Name != "allow_any" {
			t.Fatalf("%s: route %v", host, r)
		}
		if got := r.ClusterFor(h, 0); got != "PassthroughCluster" || r.Retry != nil || r.Timeout != 0 {
			t.Errorf("%s: cluster %q retry %v timeout %v", host, got, r.Retry, r.Timeout)
		}
	}
	// Without :authority there is no virtual host to pick.
	if r := tbl.Match(hdr(":path", "/"), 0); r != nil {
		t.Errorf("request without :authority matched %s", r.Name)
	}
}
