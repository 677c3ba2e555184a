// Package router is the HTTP filter envoy.filters.http.router: the last filter
// of every HTTP connection manager. For each request it takes the route the
// connection manager matched, answers redirects and direct responses itself,
// and forwards the rest to a host of the route's cluster over a pooled
// upstream connection (HTTP/1.1 or HTTP/2, as the cluster says), with the
// route's rewrites, header mutations, timeouts and retry policy, streaming
// the bodies both ways and passing trailers on.
//
// # Local replies
//
// As Envoy's router, with the details (%RESPONSE_CODE_DETAILS%) and response
// flags in the StreamInfo:
//
//	404 route_not_found                                      NR
//	503 cluster_not_found (the route's cluster_not_found_response_code)  NC
//	503 no_healthy_upstream "no healthy upstream"            UH
//	503 upstream_reset_before_response_started{overflow}     UO (circuit breakers; x-envoy-overloaded: true)
//	503 upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused} UF
//	503 upstream_reset_before_response_started{connection_timeout}     UF
//	503 upstream_reset_before_response_started{connection_termination} UC
//	503 upstream_reset_before_response_started{remote_reset}           UR
//	502 upstream_reset_before_response_started{protocol_error}         UPE
//	504 response_timeout "upstream request timeout"                     UT
//	504 upstream_per_try_timeout, upstream_per_try_idle_timeout         UT
//
// They carry the route's response header mutations, as Envoy's filter
// manager applies them to every local reply once a route was chosen, and
// x-envoy-attempt-count with include_attempt_count_in_response. A failure
// after the response began resets the downstream stream instead.
//
// # Retries
//
// retry_on 5xx, gateway-error, reset, reset-before-request, connect-failure,
// retriable-4xx, refused-stream, retriable-status-codes, retriable-headers,
// envoy-ratelimited and the gRPC conditions, with num_retries,
// per_try_timeout, the jittered exponential back-off and the previous_hosts
// predicate; x-envoy-retry-on, x-envoy-retry-grpc-on (gRPC conditions only),
// x-envoy-max-retries, x-envoy-retriable-status-codes and
// x-envoy-retriable-header-names on the request widen the route's policy, as
// in Envoy, and go no further upstream. The request body is buffered for a
// retry up to 1 MiB (Envoy's default buffer limit); a larger one, or one
// still arriving when the attempt fails, is not retried. Retries count
// against the cluster's max_retries circuit breaker. An HTTP/2
// REFUSED_STREAM is retried only as the policy says (refused-stream, reset,
// 5xx, ...). A request an upstream did not otherwise process (HTTP/2 GOAWAY,
// or an HTTP/1.1 keep-alive connection the upstream closed as the request
// was sent) is retried on a new connection without counting as a retry,
// when it is safe.
//
// # Timeouts
//
// The route's timeout (15 s by default) runs from the end of the request to
// the end of the response; per_try_timeout bounds each attempt from the end
// of the request to the response headers; max_grpc_timeout makes a gRPC
// request's grpc-timeout the timeout. x-envoy-upstream-rq-timeout-ms and
// x-envoy-upstream-rq-per-try-timeout-ms override them (with
// respect_expected_rq_timeout, x-envoy-expected-rq-timeout-ms first), and
// x-envoy-expected-rq-timeout-ms tells the upstream (unless
// suppress_envoy_headers), less the time spent on a retry.
// x-envoy-upstream-rq-timeout-alt-response makes a timeout an empty 204.
// After a 101 (a WebSocket tunnel) no route timeout applies. Stream idle
// timeouts are the connection manager's.
//
// # Header order
//
// As in Envoy, the router reads the request's x-envoy headers, places it by
// its hash_policy and adds its own headers before the route's request
// header mutations and rewrites, and adds its response headers
// (x-envoy-upstream-service-time, from the end of the request, and
// x-envoy-attempt-count) before the route's response header mutations, so
// that these may change or remove them.
package router

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.http.router"

// RetryBufferLimit is how much of a request body is kept for a retry or a
// mirror when the listener sets no per_connection_buffer_limit_bytes
// (Envoy's default, 1 MiB).
const RetryBufferLimit = 1 << 20

// Factory builds router filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &routerv3.Router{} }

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	cfg := m.(*routerv3.Router)
	// dynamic_stats and start_child_span have nothing to do without
	// per-virtual-cluster stats and a tracer; accepting them changes nothing.
	if err := cfgerr.OnlyFields(cfg, "dynamic_stats", "start_child_span", "suppress_envoy_headers",
		"respect_expected_rq_timeout", "suppress_grpc_request_failure_code_stats"); err != nil {
		return nil, err
	}
	r := &Router{
		clusters:        fc.Clusters,
		pools:           fc.HTTPPools,
		buffers:         fc.Buffers,
		log:             fc.Logger,
		suppressHeaders: cfg.GetSuppressEnvoyHeaders(),
		respectExpected: cfg.GetRespectExpectedRqTimeout(),
		bodyLimit:       RetryBufferLimit,
	}
	if fc.BufferLimit > 0 {
		// As Envoy's router, which keeps for retries and shadows what the
		// connection's buffer limit allows (retry_shadow_buffer_limit).
		r.bodyLimit = fc.BufferLimit
	}
	if r.buffers == nil {
		r.buffers = bufpool.New()
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.pools == nil {
		r.pools = pool.NewManager(pool.Options{Buffers: r.buffers, Logger: r.log})
		r.ownPools = true
	}
	st := fc.Stats
	if st == nil {
		st = stats.NewStore()
	}
	prefix := fc.HTTPStatPrefix
	if prefix == "" {
		prefix = "http.router."
	}
	r.stats = routerStats{
		rqTotal:          st.Counter(prefix + "rq_total"),
		noRoute:          st.Counter(prefix + "no_route"),
		noCluster:        st.Counter(prefix + "no_cluster"),
		rqRedirect:       st.Counter(prefix + "rq_redirect"),
		rqDirectResponse: st.Counter(prefix + "rq_direct_response"),
		resetAfterStart:  st.Counter(prefix + "rq_reset_after_downstream_response_started"),
		rqShadow:         st.Counter(prefix + "rq_shadow"),
		rqShadowFailed:   st.Counter(prefix + "rq_shadow_failed"),
	}
	r.shadowCtx, r.closeShadows = context.WithCancel(context.Background())
	r.rqs.New = func() any { return &rq{} }
	return r, nil
}

type routerStats struct {
	rqTotal, noRoute, noCluster, rqRedirect, rqDirectResponse, resetAfterStart stats.Counter
	// Copies sent by request_mirror_policies, and those that failed (no
	// such cluster or healthy host, a connection or stream failure).
	rqShadow, rqShadowFailed stats.Counter
}

// Router is a built router filter. It keeps no per-request state of its own;
// what a request needs comes from a pool of request states.
type Router struct {
	clusters        *upstream.Manager
	pools           *pool.Manager
	buffers         *bufpool.Pool
	log             *slog.Logger
	suppressHeaders bool
	respectExpected bool
	bodyLimit       int // the most of a request body kept for a retry or mirror
	ownPools        bool
	stats           routerStats
	rqs             sync.Pool // of *rq
	// The copies request_mirror_policies send run on their own, until their
	// timeout or Close.
	shadows      sync.WaitGroup
	shadowCtx    context.Context
	closeShadows context.CancelFunc
}

// OnRequest implements http.Filter; the router does its work in Serve.
func (*Router) OnRequest(*http.Exchange) http.Action { return http.Continue }

// Serve implements http.Terminal.
func (r *Router) Serve(e *http.Exchange) {
	r.stats.rqTotal.Inc()
	rt, _ := e.Route.(*route.Route)
	if rt == nil {
		r.stats.noRoute.Inc()
		_ = e.LocalReply(404, "", "route_not_found", http.FlagNoRouteFound)
		return
	}
	e.Info.RouteName = rt.Name
	if rt.VirtualHost != nil {
		e.Info.VirtualHostName = rt.VirtualHost.Name
	}
	switch rt.Action {
	case route.Redirect, route.DirectResponse:
		if rt.Action == route.Redirect {
			r.stats.rqRedirect.Inc()
		} else {
			r.stats.rqDirectResponse.Inc()
		}
		r.reply(e, rt)
		return
	}
	q := r.rqs.Get().(*rq)
	q.begin(r, e, rt)
	q.run()
	q.end()
	r.rqs.Put(q)
}

// reply answers a redirect or direct response route.
func (r *Router) reply(e *http.Exchange, rt *route.Route) {
	e.Response.Reset()
	body := rt.Reply(e.Request, &e.Response, &e.Info)
	e.Info.ResponseCodeDetails = "direct_response"
	if e.LocalReplies != nil {
		// local_reply_config rewrites these too, as Envoy's router answers
		// them with sendLocalReply. As there, a content-type the route set
		// stays unless the body changed.
		_, mapped, ct := e.MapLocalReply(rt.Status, string(body))
		if mapped != string(body) || !e.Response.Has("content-type") {
			e.Response.Set("content-type", ct)
		}
		body = []byte(mapped)
	}
	// As Envoy's prepareLocalReply: without a body, no content headers
	// (whoever added them); with one, its content-length, which a HEAD
	// request gets without the body.
	if len(body) == 0 {
		e.Response.Del("content-length")
		e.Response.Del("content-type")
		_ = e.Downstream.WriteHeader(&e.Response, true)
		return
	}
	e.Response.SetUint("content-length", uint64(len(body)))
	if e.Request.Method() == "HEAD" {
		_ = e.Downstream.WriteHeader(&e.Response, true)
		return
	}
	if e.Downstream.WriteHeader(&e.Response, false) != nil {
		return
	}
	if _, err := e.Downstream.Write(body); err != nil {
		return
	}
	_ = e.Downstream.End()
}

// Close closes the router's own connection pools, if it made them (a
// router built without filter.Context.HTTPPools, as in tests).
func (r *Router) Close() {
	r.closeShadows()
	r.shadows.Wait()
	if r.ownPools {
		r.pools.Close()
	}
}

// upstreamNames are the SNI (auto_sni) a request's upstream TLS connection
// sends and the name (auto_san_validation) the server's certificate must
// carry, from the request's host: the override_auto_sni_header if the
// request has it, else :authority, without the port and in lower case. Each
// is "" when the cluster does not ask for it, and there is no SNI for an IP
// address (which the certificate is then checked for as an IP SAN), as in
// Envoy.
func upstreamNames(cl *upstream.Cluster, h *http.Header) (sni, san string) {
	hc := &cl.Config().HTTP
	if !hc.AutoSNI && !hc.AutoSANValidation {
		return "", ""
	}
	var host string
	if hc.AutoSNIHeader != "" {
		host, _ = h.Get(hc.AutoSNIHeader)
	}
	if host == "" {
		host = h.Authority()
	}
	host = strings.ToLower(hostWithoutPort(host))
	if host == "" {
		return "", ""
	}
	if hc.AutoSANValidation {
		san = host
	}
	if _, err := netip.ParseAddr(host); err != nil && hc.AutoSNI {
		sni = host
	}
	return sni, san
}

// hostWithoutPort is the host of an authority: a name, an IPv4 address, or
// an IPv6 address without its brackets.
func hostWithoutPort(authority string) string {
	if _, err := netip.ParseAddr(authority); err == nil {
		return authority // an IPv6 address without brackets or port
	}
	if i := route.PortStart(authority); i >= 0 {
		authority = authority[:i]
	}
	return strings.TrimSuffix(strings.TrimPrefix(authority, "["), "]")
}
