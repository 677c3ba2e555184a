package router

import (
	nethttp "net/http"
	"sync"
	"testing"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/statstest"
)

// TestMaxRequestsCountsAttachedRequests: max_requests counts the requests
// that have a connection, not those waiting for one, as Envoy's pool counts
// them when it attaches a request to a connection: with one connection and
// max_requests 1, two more concurrent requests wait as pending requests and
// are answered in turn, instead of 503 UO. All three were pending (the first
// while its connection was made, as in Envoy's pool).
func TestMaxRequestsCountsAttachedRequests(t *testing.T) {
	up, release := heldBackend(t)
	f := newFixtureWith(t, routeAllToC, &routerv3.Router{}, clusterYAML("c",
		"circuit_breakers: { thresholds: [{ max_connections: 1, max_pending_requests: 5, max_requests: 1 }] }, ", up))
	var wg sync.WaitGroup
	statuses := make([]string, 3)
	for i := range statuses {
		wg.Go(func() {
			d := newDown("GET", "/", nil)
			f.serve(d)
			statuses[i] = d.resp.Value(":status")
		})
	}
	statstest.Wait(t, f.st, "cluster.c.upstream_rq_active", 1)
	statstest.Wait(t, f.st, "cluster.c.upstream_rq_pending_active", 2)
	// The host's count, which LEAST_REQUEST balances on, is Envoy's
	// rq_active: the requests attached to a connection, not the pending.
	if n := f.clusters.Get("c").Hosts()[0].RqActive.Load(); n != 1 {
		t.Errorf("host RqActive = %d with one request attached and two pending, want 1", n)
	}
	close(release)
	wg.Wait()
	for i, s := range statuses {
		if s != "200" {
			t.Errorf("request %d: %s, want 200", i, s)
		}
	}
	statstest.Expect(t, f.st, map[string]int64{
		"cluster.c.upstream_rq_total": 3, "cluster.c.upstream_rq_pending_total": 3,
		"cluster.c.upstream_rq_pending_overflow": 0, "cluster.c.upstream_rq_active": 0,
	})
}

// TestMaxRequestsOnAttach: a request that gets a connection while
// max_requests are in flight is refused (503 UO, upstream_rq_pending_overflow)
// as Envoy's attachStreamToClient refuses it, after the connection was made
// for it; it is not counted in upstream_rq_total.
func TestMaxRequestsOnAttach(t *testing.T) {
	up, release := heldBackend(t)
	f := newFixtureWith(t, routeAllToC, &routerv3.Router{}, clusterYAML("c",
		"circuit_breakers: { thresholds: [{ max_connections: 5, max_requests: 1 }] }, ", up))
	first := make(chan string, 1)
	go func() {
		d := newDown("GET", "/", nil)
		f.serve(d)
		first <- d.resp.Value(":status")
	}()
	statstest.Wait(t, f.st, "cluster.c.upstream_rq_active", 1)
	d := newDown("GET", "/", nil)
	e := f.serve(d)
	if d.resp.Value(":status") != "503" || e.Info.ResponseFlags&http.FlagUpstreamOverflow == 0 {
		t.Errorf("second request: %s, flags %v; want 503 UO", d.resp.Value(":status"), e.Info.ResponseFlags)
	}
	close(release)
	if s := <-first; s != "200" {
		t.Errorf("first request: %s", s)
	}
	statstest.Expect(t, f.st, map[string]int64{
		"cluster.c.upstream_rq_total": 1, "cluster.c.upstream_rq_pending_overflow": 1, "cluster.c.upstream_cx_http1_total": 2,
	})
}

// TestPendingOverflowNotInRqTotal: a request the pending limit refuses never
// had a connection: it is not counted in upstream_rq_total (Envoy counts a
// request there when it attaches it to a connection). The second request
// waits (max_connections keeps it from making a connection:
// upstream_cx_overflow), the third finds the one pending place taken.
func TestPendingOverflowNotInRqTotal(t *testing.T) {
	up, release := heldBackend(t)
	f := newFixtureWith(t, routeAllToC, &routerv3.Router{}, clusterYAML("c",
		"circuit_breakers: { thresholds: [{ max_connections: 1, max_pending_requests: 1 }] }, ", up))
	statuses := make(chan string, 2)
	send := func() {
		go func() {
			d := newDown("GET", "/", nil)
			f.serve(d)
			statuses <- d.resp.Value(":status")
		}()
	}
	// One at a time: while the first is pending for its connection, a
	// second would find the one pending place taken (as in Envoy).
	send()
	statstest.Wait(t, f.st, "cluster.c.upstream_rq_active", 1)
	send()
	statstest.Wait(t, f.st, "cluster.c.upstream_rq_pending_active", 1)
	d := newDown("GET", "/", nil)
	if f.serve(d); d.resp.Value(":status") != "503" {
		t.Errorf("third request: %s, want 503", d.resp.Value(":status"))
	}
	close(release)
	for range 2 {
		if s := <-statuses; s != "200" {
			t.Errorf("waiting request: %s", s)
		}
	}
	statstest.Expect(t, f.st, map[string]int64{"cluster.c.upstream_rq_total": 2, "cluster.c.upstream_rq_pending_overflow": 1,
		"cluster.c.upstream_rq_pending_total": 2, "cluster.c.upstream_cx_overflow": 1})
}

// TestZeroPendingRequestsRefusesNewConnections: with max_pending_requests 0 a
// request that finds no ready connection is refused, also when it could make
// one, as Envoy's pool refuses it (the pending check comes before the
// connect).
func TestZeroPendingRequestsRefusesNewConnections(t *testing.T) {
	up := backend(t, func(nethttp.ResponseWriter, *nethttp.Request) {})
	f := newFixtureWith(t, routeAllToC, &routerv3.Router{}, clusterYAML("c",
		"circuit_breakers: { thresholds: [{ max_pending_requests: 0 }] }, ", up))
	d := newDown("GET", "/", nil)
	if f.serve(d); d.resp.Value(":status") != "503" {
		t.Errorf("request needing a new connection: %s, want 503", d.resp.Value(":status"))
	}
	statstest.Expect(t, f.st, map[string]int64{"cluster.c.upstream_rq_pending_overflow": 1, "cluster.c.upstream_cx_total": 0})
}
