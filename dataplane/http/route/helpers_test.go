package route

import (
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// hdr builds request headers from name, value pairs.
func hdr(kv ...string) *http.Header {
	h := &http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// req builds a GET request for host and path, with more headers.
func req(host, path string, kv ...string) *http.Header {
	h := hdr(":method", "GET", ":scheme", "http", ":authority", host, ":path", path)
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// parseRC decodes a RouteConfiguration written in YAML, as Envoy reads it.
func parseRC(t testing.TB, y string) *routev3.RouteConfiguration {
	t.Helper()
	rc := &routev3.RouteConfiguration{}
	if err := protoyaml.Unmarshal([]byte(y), rc); err != nil {
		t.Fatalf("test config: %v", err)
	}
	return rc
}

// mustCompile compiles a YAML RouteConfiguration.
func mustCompile(t testing.TB, y string) *Table {
	t.Helper()
	tbl, err := Compile(parseRC(t, y), Options{})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return tbl
}

// routeName returns the name of the matched route, or "<nil>".
func routeName(r *Route) string {
	if r == nil {
		return "<nil>"
	}
	return r.Name
}

func parseHeaderMatcher(t testing.TB, y string) *routev3.HeaderMatcher {
	t.Helper()
	m := &routev3.HeaderMatcher{}
	if err := protoyaml.Unmarshal([]byte(y), m); err != nil {
		t.Fatalf("test matcher: %v", err)
	}
	return m
}
