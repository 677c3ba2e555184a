package hcm_test

import (
	"io"
	nethttp "net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/nettest"
)

// TestRequestMirror: a route's request_mirror_policies send each request's
// copy (headers as sent upstream, :authority with "-shadow", the body) to
// the mirror cluster, fire and forget; runtime_fraction 0 sends none;
// disable_shadow_host_suffix_append keeps the host; a mirror cluster that
// fails does not touch the response.
func TestRequestMirror(t *testing.T) {
	type seen struct{ method, host, path, body, added string }
	var mu sync.Mutex
	var copies []seen
	shadowSrv := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		copies = append(copies, seen{r.Method, r.Host, r.URL.Path, string(b), r.Header.Get("x-added")})
		mu.Unlock()
		w.Write([]byte("the shadow's answer, which nobody sees"))
	}))
	main := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write([]byte("main:" + string(b)))
	}))
	refused := nettest.RefusedAddr(t).String()
	cfg := `
stat_prefix: ingress
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    request_headers_to_add: [{ header: { key: x-added, value: "yes" } }]
    routes:
    - match: { prefix: "/none" }
      route:
        cluster: main
        request_mirror_policies:
        - { cluster: shadow, runtime_fraction: { default_value: { numerator: 0 } } }
    - match: { prefix: "/keep" }
      route:
        cluster: main
        request_mirror_policies: [{ cluster: shadow, disable_shadow_host_suffix_append: true }]
    - match: { prefix: "/broken" }
      route:
        cluster: main
        request_mirror_policies: [{ cluster: dead }, { cluster: nosuch }]
    - match: { prefix: "/" }
      route:
        cluster: main
        request_mirror_policies: [{ cluster: shadow }]
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg, cluster(t, "main", false, main), cluster(t, "shadow", false, shadowSrv), cluster(t, "dead", false, refused))
	c := h1Client(t)
	do := func(method, path, body string) string {
		t.Helper()
		req, _ := nethttp.NewRequest(method, "http://"+e.addr+path, strings.NewReader(body))
		req.Host = "shop.example:8080"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %q", method, path, resp.StatusCode, b)
		}
		return string(b)
	}
	if got := do("GET", "/a", ""); got != "main:" {
		t.Errorf("GET /a answered %q", got)
	}
	if got := do("POST", "/b", strings.Repeat("x", 100000)); got != "main:"+strings.Repeat("x", 100000) {
		t.Errorf("POST /b answered %d bytes", len(got))
	}
	do("GET", "/none", "")
	do("GET", "/keep", "")
	if got := do("GET", "/broken", ""); got != "main:" {
		t.Errorf("GET /broken answered %q with its mirrors failing", got)
	}
	e.waitStat("http.ingress.rq_shadow", 5) // /a, /b, /keep, and /broken's two
	e.waitStat("http.ingress.rq_shadow_failed", 2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(copies)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a copy /none should not have sent would be in by now
	mu.Lock()
	defer mu.Unlock()
	want := []seen{
		{"GET", "shop.example-shadow:8080", "/a", "", "yes"},
		{"POST", "shop.example-shadow:8080", "/b", strings.Repeat("x", 100000), "yes"},
		{"GET", "shop.example:8080", "/keep", "", "yes"},
	}
	if len(copies) != len(want) {
		t.Fatalf("the mirror cluster got %d copies, want %d: %+v", len(copies), len(want), copies)
	}
	// The copies go on their own: they may arrive in any order.
	slices.SortFunc(copies, func(a, b seen) int { return strings.Compare(a.path, b.path) })
	for i := range want {
		if copies[i] != want[i] {
			got := copies[i]
			got.body = got.body[:min(len(got.body), 20)]
			t.Errorf("copy %d: %+v, want %s %s %s with the body and x-added", i, got, want[i].method, want[i].host, want[i].path)
		}
	}
}
