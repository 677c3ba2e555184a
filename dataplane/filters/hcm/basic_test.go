package hcm_test

import (
	"io"
	nethttp "net/http"
	"strings"
	"testing"
)

func TestProxyGET(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("x-upstream", "yes")
		w.Header().Set("x-seen-xff", r.Header.Get("x-forwarded-for"))
		w.Header().Set("x-seen-id", r.Header.Get("x-request-id"))
		io.WriteString(w, "hello "+r.URL.Path)
	}))
	e := newEnv(t, hcmYAML("backend", ""), cluster(t, "backend", false, up))
	c := h1Client(t)
	for i := range 3 {
		resp, err := c.Get("http://" + e.addr + "/p" + strings.Repeat("x", i))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "hello /p"+strings.Repeat("x", i) {
			t.Fatalf("status %d body %q", resp.StatusCode, b)
		}
		if resp.Header.Get("server") != "envoy" || resp.Header.Get("date") == "" || resp.Header.Get("x-upstream") != "yes" {
			t.Errorf("headers %v", resp.Header)
		}
		if resp.Header.Get("x-envoy-upstream-service-time") == "" || len(resp.Header.Get("x-seen-id")) != 36 {
			t.Errorf("headers %v", resp.Header)
		}
	}
	e.waitStat("http.ingress.downstream_rq_2xx", 3)
	e.waitStat("http.ingress.downstream_cx_total", 1) // keep-alive
	e.waitStat("cluster.backend.upstream_rq_total", 3)
	e.waitStat("cluster.backend.upstream_cx_total", 1) // the pool reuses the connection
}
