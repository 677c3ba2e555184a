package router

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/h1"
	"github.com/skiffproxy/skiff/dataplane/http/h2"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

// Why an attempt was interrupted.
var (
	errGlobalTimeout     = errors.New("router: upstream request timeout")
	errPerTryTimeout     = errors.New("router: upstream per-try timeout")
	errPerTryIdleTimeout = errors.New("router: upstream per-try idle timeout")
)

// senderGrace is how long a finished response waits for the request side to
// finish before the upstream stream is reset (an upstream that answered
// before reading the whole request).
const senderGrace = 100 * time.Millisecond

// maxTransparentRetries bounds the retries of requests an upstream did not
// process, which do not count against num_retries.
const maxTransparentRetries = 2

// defaultRetryPolicy is the policy of a route without one whose request asks
// for retries with x-envoy-retry-on.
var defaultRetryPolicy = &route.RetryPolicy{
	NumRetries:               1,
	HostSelectionMaxAttempts: 1,
}

func init() {
	defaultRetryPolicy.Backoff.Base = route.DefaultRetryBackoffBase
	defaultRetryPolicy.Backoff.Max = 10 * route.DefaultRetryBackoffBase
}

// outcome is what an attempt leads to.
type outcome uint8

const (
	done        outcome = iota // the exchange is over (answered, reset, or abandoned)
	retry                      // try again, counting a retry
	transparent                // try again on a new connection, not counting a retry
)

// rq is the router's state for one request. Router keeps them in a
// sync.Pool; everything in it is reset by begin.
type rq struct {
	r  *Router
	e  *http.Exchange
	rt *route.Route
	cl *upstream.Cluster
	hs *upstream.HTTPStats

	// Timeouts and retries, fixed at the start.
	timeout, perTry time.Duration
	timeoutCode     int                // what a timeout answers: 504, or 204 (x-envoy-upstream-rq-timeout-alt-response)
	perTryIdle      time.Duration      // the retry policy's per_try_idle_timeout
	policy          *route.RetryPolicy // nil: no retries
	retryOn         route.RetryOn
	retriesLeft     uint32
	retries         int // retries done
	// The request's x-envoy-retriable-status-codes and
	// x-envoy-retriable-header-names (lower case).
	extraCodes   []uint32
	extraHeaders []string
	transparent  int
	tried        [4]*upstream.Host
	host         *upstream.Host // the current attempt's, for outlier detection
	// The request's hash from the route's hash_policy, on a consistent hash
	// cluster, and the cookie a policy made for the response.
	hash      uint64
	hasHash   bool
	setCookie string
	// The SNI and certificate name of the upstream TLS connection, from the
	// request's host (auto_sni, auto_san_validation), set by the first
	// attempt.
	sni, san string
	namesSet bool

	// The current attempt, guarded by mu (the timers and Interrupt reach it
	// from other goroutines).
	mu        sync.Mutex
	us        http.ClientStream
	reason    error     // sticky: a global timeout or the exchange's interruption
	tryReason error     // the current attempt's per-try (or per-try idle) timeout
	globalAt  time.Time // the global timeout's deadline (zero: none)
	tryAt     time.Time // the per-try timeout's
	// When the timers are set to fire (zero: not running). A timer is reset
	// only when a deadline comes before its firing; otherwise it fires late,
	// finds the deadline still ahead (or gone) and goes again (or stops), so
	// that a request costs no timer operation in steady state.
	globalFire, tryFire time.Time
	onGlobalFn, onTryFn func() // the timers' functions, made once
	// per_try_idle_timeout: the attempt's idle deadline, pushed back by each
	// byte of response.
	idleAt, idleFire time.Time
	idleTimer        *time.Timer
	onIdleFn         func()
	abort            chan struct{} // closed when reason is set; nil until needed
	aborted          bool
	complete         bool // the whole request was read from downstream (or has no body)

	globalTimer, tryTimer, grace *time.Timer

	// The request body.
	bodyStarted  bool              // reading it began (by a sender)
	bodyDone     bool              // it was read to its end (set by the sender before senderDone)
	bodyTooLarge bool              // it did not fit the router's bodyLimit: no retry
	buffering    bool              // keep it for retries
	chunks       []*bufpool.Buffer // the body kept for retries
	last         int               // bytes used in the last chunk
	bodyLen      int
	trailers     http.Header // the request's trailers, kept for a retry
	senderDone   chan struct{}
	sending      bool
	sendWriteErr bool  // the sender could not write upstream
	readErr      error // why reading the downstream body failed (the client went away, or a refusal)

	tunneling   bool // after a 101: both sides are raw (guarded by mu)
	respStarted bool // the response headers went downstream
	replied     bool // a local reply (or a reset) answered
	buf         *bufpool.Buffer

	shadow *shadow // the copies request_mirror_policies send once the body is in
}

// begin readies q for a request.
func (q *rq) begin(r *Router, e *http.Exchange, rt *route.Route) {
	// A timer of the request before (the state is reused) may still fire:
	// what the timers read is set under the lock.
	q.mu.Lock()
	defer q.mu.Unlock()
	q.r, q.e, q.rt = r, e, rt
	q.cl, q.hs = nil, nil
	q.timeout, q.perTry, q.perTryIdle = 0, 0, 0
	q.policy, q.retryOn, q.retriesLeft, q.retries, q.transparent = nil, 0, 0, 0, 0
	q.extraCodes, q.extraHeaders = q.extraCodes[:0], q.extraHeaders[:0]
	q.tried, q.host = [4]*upstream.Host{}, nil
	q.hash, q.hasHash, q.setCookie = 0, false, ""
	q.sni, q.san, q.namesSet = "", "", false
	q.us, q.reason, q.tryReason = nil, nil, nil
	q.globalAt, q.tryAt, q.idleAt = time.Time{}, time.Time{}, time.Time{}
	if q.aborted {
		q.abort, q.aborted = nil, false
	}
	q.complete = false
	q.bodyStarted, q.bodyDone, q.bodyTooLarge, q.buffering = false, false, false, false
	q.last, q.bodyLen = 0, 0
	q.trailers.Reset()
	q.sending, q.sendWriteErr, q.readErr = false, false, nil
	q.respStarted, q.replied, q.tunneling = false, false, false
	q.shadow = nil
	if q.senderDone == nil {
		q.senderDone = make(chan struct{}, 1)
		q.onGlobalFn, q.onTryFn, q.onIdleFn = q.onGlobal, q.onTry, q.onIdle
	}
}

// end releases what the request held.
func (q *rq) end() {
	q.stopTimers()
	for i, c := range q.chunks {
		q.r.buffers.Put(c)
		q.chunks[i] = nil
	}
	q.chunks = q.chunks[:0]
	if q.buf != nil {
		q.r.buffers.Put(q.buf)
		q.buf = nil
	}
	q.mu.Lock()
	q.e, q.rt, q.cl, q.hs = nil, nil, nil, nil
	q.mu.Unlock()
}

// run forwards the request.
func (q *rq) run() {
	e, rt := q.e, q.rt
	// The exchange's random value, which HTTP filters looked up the weighted
	// cluster's typed_per_filter_config with.
	name := rt.ClusterFor(e.Request, route.ExchangeRandom(e))
	var cl *upstream.Cluster
	if name != "" {
		cl = q.r.clusters.Get(name)
	}
	if cl == nil || !cl.Acquire() {
		q.r.stats.noCluster.Inc()
		q.localReply(rt.ClusterNotFoundCode, "", "cluster_not_found", http.FlagNoClusterFound)
		return
	}
	defer cl.Release()
	q.cl, q.hs = cl, cl.HTTPStats()
	// The cluster's own name: name may be a string over the request's
	// header (cluster_header), and StreamInfo goes to access logs that may
	// send it after the header served the connection's next request.
	e.Info.UpstreamCluster = cl.Name()

	// As in Envoy's router, the host is placed by the request's hash from
	// the client's own headers, the timeouts read the x-envoy headers the
	// client sent, and the router's own request headers go on, all before
	// the route's header mutations and rewrites (finalizeRequestHeaders),
	// which may then change or remove them; the retry policy reads the
	// request after them.
	if len(rt.HashPolicies) > 0 && cl.HashBased() {
		q.hash, q.hasHash, q.setCookie = rt.Hash(e.Request, route.HashInput{
			Remote: e.Info.DownstreamRemote, DirectRemote: e.Info.DownstreamDirectRemote, Local: e.Info.DownstreamLocal})
	}
	q.setupTimeouts()
	if vh := rt.VirtualHost; vh != nil && vh.IncludeRequestAttemptCount {
		e.Request.SetUint("x-envoy-attempt-count", 1)
	}
	rt.MutateRequest(e.Request, &e.Info)
	rt.RewriteRequest(e.Request, !q.r.suppressHeaders)
	q.setupRetries()
	if e.Request.Has("expect") {
		// As Envoy without proxy_100_continue: skiff answers the expectation
		// itself (the downstream codec sends 100 Continue when the body is
		// first read) and the upstream gets the body without asking.
		e.Request.Del("expect")
	}
	if len(rt.Mirrors) > 0 {
		q.prepareMirrors()
	}
	if err := e.SetInterrupter(q); err != nil {
		return // the connection manager gave up on it already
	}
	defer e.SetInterrupter(nil)
	if e.Downstream.EndedWithHeader() {
		q.requestComplete()
	}
	for {
		switch q.attempt() {
		case done:
			return
		case retry:
			q.retries++
			q.retriesLeft--
			if !q.backoff() {
				q.interrupted()
				return
			}
		case transparent:
			q.transparent++
		}
	}
}

// setupTimeouts computes the global and per-try timeouts from the route and
// the request's x-envoy headers (Envoy's FilterUtility::finalTimeout).
func (q *rq) setupTimeouts() {
	e, rt := q.e, q.rt
	req := e.Request
	q.timeout = rt.Timeout
	if q.grpcTimeouts() {
		q.timeout = 0 // infinity, unless grpc-timeout or max_grpc_timeout say otherwise
		if v, ok := req.Get("grpc-timeout"); ok {
			if d, ok := http.ParseGRPCTimeout(v); ok {
				q.timeout = d
			}
		}
		if m := *rt.MaxGRPCTimeout; m > 0 && (q.timeout == 0 || q.timeout > m) {
			q.timeout = m
		}
		if off := rt.GRPCTimeoutOffset; off != nil && q.timeout > *off {
			q.timeout -= *off
		}
	}
	if rt.Retry != nil {
		q.perTry = rt.Retry.PerTryTimeout
		q.perTryIdle = rt.Retry.PerTryIdleTimeout
	}
	// With respect_expected_rq_timeout, an x-envoy-expected-rq-timeout-ms
	// (from an Envoy before) comes first, and x-envoy-upstream-rq-timeout-ms
	// then stays on the request, as in Envoy's finalTimeout.
	if v, ok := req.Get("x-envoy-expected-rq-timeout-ms"); ok && q.r.respectExpected {
		if ms, err := strconv.ParseUint(v, 10, 32); err == nil {
			q.timeout = time.Duration(ms) * time.Millisecond
		}
	} else if v, ok := req.Get("x-envoy-upstream-rq-timeout-ms"); ok {
		if ms, err := strconv.ParseUint(v, 10, 32); err == nil {
			q.timeout = time.Duration(ms) * time.Millisecond
		}
		req.Del("x-envoy-upstream-rq-timeout-ms")
	}
	if v, ok := req.Get("x-envoy-upstream-rq-per-try-timeout-ms"); ok {
		if ms, err := strconv.ParseUint(v, 10, 32); err == nil {
			q.perTry = time.Duration(ms) * time.Millisecond
		}
		req.Del("x-envoy-upstream-rq-per-try-timeout-ms")
	}
	if q.perTry >= q.timeout && q.timeout > 0 {
		q.perTry = 0 // the global timeout comes first anyway
	}
	q.setTimeoutHeaders(0)
	// Any value asks for a 204 instead of the timeouts' 504.
	q.timeoutCode = 504
	if req.Del("x-envoy-upstream-rq-timeout-alt-response") > 0 {
		q.timeoutCode = 204
	}
}

// setTimeoutHeaders tells the upstream how long it has, in
// x-envoy-expected-rq-timeout-ms (unless suppress_envoy_headers) and, under
// max_grpc_timeout, in grpc-timeout: the per-try timeout, else the global
// one, less elapsed (the time since the request ended, for a retry), as
// Envoy's FilterUtility::setTimeoutHeaders.
func (q *rq) setTimeoutHeaders(elapsed time.Duration) {
	expected := q.timeout
	if q.perTry > 0 {
		expected = q.perTry
	}
	if expected <= 0 {
		return
	}
	if q.timeout > 0 {
		if elapsed >= q.timeout {
			expected = time.Millisecond // out of time, but 0 would mean none
		} else {
			expected = min(expected, q.timeout-elapsed)
		}
	}
	if !q.r.suppressHeaders {
		q.e.Request.SetUint("x-envoy-expected-rq-timeout-ms", uint64(expected/time.Millisecond))
	}
	if q.grpcTimeouts() {
		// The upstream gRPC server learns the deadline it really has, the
		// per-try timeout included, as from Envoy (whatever
		// suppress_envoy_headers says).
		q.e.Request.Set("grpc-timeout", http.FormatGRPCTimeout(expected))
	}
}

// grpcTimeouts reports whether the route's max_grpc_timeout governs this
// request's timeouts: a gRPC request, on a route with max_grpc_timeout and
// without max_stream_duration (Envoy's usingNewTimeouts then takes over).
func (q *rq) grpcTimeouts() bool {
	return q.rt.MaxGRPCTimeout != nil && q.rt.MaxStreamDuration == nil && q.e.IsGRPC()
}

// setupRetries takes the route's retry policy, widened by the request's
// x-envoy-retry-on, x-envoy-retry-grpc-on and x-envoy-max-retries.
func (q *rq) setupRetries() {
	q.readRetryHeaders()
	// As Envoy's RetryStateImpl::create, the retry headers go no further.
	q.e.Request.DeleteFunc(isRetryHeader)
}

// retryOnGRPC are the conditions of x-envoy-retry-grpc-on (Envoy's
// parseRetryGrpcOn); x-envoy-retry-on takes the others (parseRetryOn).
const retryOnGRPC = route.RetryGRPCCancelled | route.RetryGRPCDeadlineExceeded | route.RetryGRPCInternal |
	route.RetryGRPCResourceExhausted | route.RetryGRPCUnavailable

// isRetryHeader reports whether a request header is one of the retry
// headers Envoy's router consumes.
func isRetryHeader(name, _ string) bool {
	switch name {
	case "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-hedge-on-per-try-timeout",
		"x-envoy-retriable-header-names", "x-envoy-retriable-status-codes", "x-envoy-upstream-rq-per-try-timeout-ms":
		return true
	}
	return false
}

// readRetryHeaders sets the request's retry policy up (see setupRetries).
func (q *rq) readRetryHeaders() {
	req := q.e.Request
	p := q.rt.Retry
	var on route.RetryOn
	if p != nil {
		on = p.On
	}
	if v, ok := req.Get("x-envoy-retry-on"); ok {
		extra, _ := route.ParseRetryOn(v)
		on |= extra &^ retryOnGRPC
	}
	if v, ok := req.Get("x-envoy-retry-grpc-on"); ok {
		extra, _ := route.ParseRetryOn(v)
		on |= extra & retryOnGRPC
	}
	if on == 0 {
		return
	}
	if p == nil {
		p = defaultRetryPolicy
	}
	if !p.AllowsRequest(req) {
		return
	}
	n := p.NumRetries
	if v, ok := req.Get("x-envoy-max-retries"); ok {
		if m, err := strconv.ParseUint(v, 10, 32); err == nil {
			n = uint32(m)
		}
	}
	q.policy, q.retryOn, q.retriesLeft = p, on, n
	q.buffering = n > 0
	// More status codes and header names to retry on, for
	// retriable-status-codes and retriable-headers.
	if v, ok := req.Get("x-envoy-retriable-status-codes"); ok {
		for c := range strings.SplitSeq(v, ",") {
			if code, err := strconv.ParseUint(strings.TrimSpace(c), 10, 32); err == nil {
				q.extraCodes = append(q.extraCodes, uint32(code))
			}
		}
	}
	if v, ok := req.Get("x-envoy-retriable-header-names"); ok {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				q.extraHeaders = append(q.extraHeaders, strings.Clone(strings.ToLower(name)))
			}
		}
	}
}

// retriableResponse reports whether the request's retry policy retries the
// response headers resp: the route's policy, with the status codes and
// header names of the request's x-envoy-retriable-status-codes and
// x-envoy-retriable-header-names (Envoy's wouldRetryFromHeaders).
func (q *rq) retriableResponse(resp *http.Header, status int) bool {
	if q.policy.RetriableResponse(q.retryOn, resp) {
		return true
	}
	if resp.Has("x-envoy-ratelimited") {
		return false // for envoy-ratelimited alone
	}
	if q.retryOn&route.RetryRetriableStatusCodes != 0 {
		for _, c := range q.extraCodes {
			if int(c) == status {
				return true
			}
		}
	}
	if q.retryOn&route.RetryRetriableHeaders != 0 {
		for _, name := range q.extraHeaders {
			if resp.Has(name) {
				return true
			}
		}
	}
	return false
}

// attempt makes one try at the upstream.
func (q *rq) attempt() outcome {
	e := q.e
	host := q.pickHost()
	if host == nil {
		return q.fail(503, "no healthy upstream", "no_healthy_upstream", http.FlagNoHealthyUpstream)
	}
	e.Info.UpstreamHost, e.Info.UpstreamPipe = host.Addr, host.Pipe
	e.Info.UpstreamAttempts++
	q.host = host
	if !q.namesSet {
		// From the request's own host, before auto_host_rewrite changes it.
		q.sni, q.san = upstreamNames(q.cl, e.Request)
		q.namesSet = true
	}
	if q.rt.AutoHostRewrite {
		if name := host.Hostname(); name != "" {
			route.UpdateAuthority(e.Request, name, q.rt.AppendXForwardedHost, !q.r.suppressHeaders)
		}
	}
	if q.retries+q.transparent < len(q.tried) {
		q.tried[q.retries+q.transparent] = host
	}
	return q.attemptOn(host)
}

// attemptOn is the rest of attempt, on host. (A function of its own, so that
// attempt's defers are open-coded: with these returns too, the compiler would
// fall back to the runtime's defer records, 1.5 % of skiff's CPU under h1ka.)
func (q *rq) attemptOn(host *upstream.Host) outcome {
	e := q.e
	// The attempt's times are offsets from the exchange's start: a monotonic
	// clock read each, half of what time.Now costs.
	start := time.Since(e.Info.Start)
	if e.Info.UpstreamStart == 0 {
		e.Info.UpstreamStart = max(start, 1)
	}
	if q.terminatesConnect() {
		return q.terminateOn(host)
	}

	cfg := q.cl.Config()
	http2 := cfg.UpstreamHTTP2(e.Info.Protocol)
	o := pool.TLSOptions{SNI: q.sni, SAN: q.san}
	if e.ALPN != nil {
		// HTTP/1.0 only where the downstream's protocol goes upstream, as
		// istio-proxy's alpn filter reads it.
		http10 := !http2 && cfg.DownstreamProtocol && e.Info.Protocol == "HTTP/1.0"
		o.ALPN, o.ALPNKey = e.ALPN.ApplicationProtocols(http2, http10)
	}
	p := q.r.pools.PoolAs(q.cl, host, o, http2)
	if p == nil { // max_connection_pools
		return q.fail(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow",
			"upstream_reset_before_response_started{overflow}", http.FlagUpstreamOverflow)
	}
	if p.HTTP2() && e.Request.Has("upgrade") {
		// An HTTP/1.1 upgrade would need extended CONNECT (RFC 8441) to an
		// HTTP/2 upstream, which skiff does not speak yet.
		return q.fail(503, "", "upgrade_failed", 0)
	}
	// The upstream stream's context is not the downstream's: the connection
	// manager interrupts the exchange (Interrupt) when the downstream goes
	// away, which resets the stream, so the codec need not watch a context
	// per request.
	//
	// The pool counts the request against max_requests once it has a
	// connection (a request waiting for one is pending, not active), and
	// it counts in upstream_rq_total and _active from then on, as Envoy's
	// attachStreamToClient counts them.
	conn, us, err := p.Acquire(context.Background(), q.stopChan())
	if err != nil {
		if _, ok := errors.AsType[*pool.ConnectError](err); ok {
			q.cl.ReportOutcome(host, upstream.ConnectFailed)
		}
		return q.acquireFailed(err)
	}
	hs := q.hs
	hs.RqTotal.Inc()
	hs.RqActive.Inc()
	// What LEAST_REQUEST balances on: as Envoy's host rq_active, counted
	// once the request has a connection (attachStreamToClient), not while
	// it is pending.
	host.RqActive.Add(1)
	q.cl.ReportOutcome(host, upstream.Connected)
	e.Info.UpstreamLocal = conn.LocalAddrPort()
	e.Info.UpstreamTLS, e.Info.UpstreamLocalCert = conn.TLS()
	if !q.setStream(us) {
		us.Close()
		hs.RqActive.Dec()
		host.RqActive.Add(-1)
		p.Release(conn)
		return q.interrupted()
	}
	out := q.exchange(conn, us, start)
	q.stopSender(us)
	q.clearStream()
	us.Close()
	hs.RqActive.Dec()
	host.RqActive.Add(-1)
	p.Release(conn)
	return out
}

// exchange sends the request on us and forwards the response. start is when
// the attempt began, as an offset from the exchange's start.
func (q *rq) exchange(conn *pool.Conn, us http.ClientStream, start time.Duration) outcome {
	e, hs, vh := q.e, q.hs, q.rt.VirtualHost
	req := e.Request
	if q.retries > 0 {
		// As Envoy's doRetry: these go on again, over the route's mutations.
		if vh != nil && vh.IncludeRequestAttemptCount {
			req.SetUint("x-envoy-attempt-count", uint64(e.Info.UpstreamAttempts))
		}
		elapsed, _ := q.sinceRequestComplete(time.Since(e.Info.Start))
		q.setTimeoutHeaders(elapsed)
	}
	// An upgrade or a CONNECT becomes a tunnel if the upstream agrees.
	connect := req.Method() == "CONNECT"
	upgrade := connect || req.Has("upgrade")
	end := q.requestEnded() && !connect
	var resp *http.Header
	var err error
	if ex, ok := us.(http.HeaderExchanger); ok && end && !upgrade {
		// The common case, a request without a body, in one step.
		q.armTry()
		q.touchIdle()
		var sent bool
		if resp, sent, err = ex.ExchangeHeader(req); err != nil {
			return q.upstreamFailed(conn, err, sent)
		}
	} else {
		if err := us.WriteHeader(req, end); err != nil {
			return q.upstreamFailed(conn, err, false)
		}
		if !end && !upgrade {
			q.startSender(us)
		}
		q.armTry()
		q.touchIdle()
		if resp, err = us.ReadHeader(); err != nil {
			q.settleSender()
			return q.upstreamFailed(conn, err, true)
		}
	}
	q.stopTry()
	resp.JoinInline(true) // as Envoy's codec adds the fields to its header map
	status, _ := strconv.Atoi(resp.Value(http.Status))
	q.reportResponse(resp, status)
	respAt := time.Since(e.Info.Start)
	if e.Info.UpstreamResponseStart == 0 {
		e.Info.UpstreamResponseStart = respAt
	}
	if q.retryOn != 0 && q.retriableResponse(resp, status) {
		q.settleSender()
		if q.canRetry(true) {
			hs.Response(status)
			us.Reset(http.ResetCancel)
			return retry
		}
	} else {
		q.retryDeclined()
	}
	if status == 101 && !upgrade {
		us.Reset(http.ResetProtocolError)
		return q.fail(503, "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
			"upstream_reset_before_response_started{protocol_error}", http.FlagUpstreamProtocolError)
	}
	hs.Response(status)

	// The response goes downstream: with the router's headers first, then
	// the route's mutations (which may change or remove them), as in
	// Envoy's onUpstreamHeaders.
	r := &e.Response
	resp.CopyTo(r)
	if vh != nil && vh.IncludeAttemptCountInResponse {
		r.SetUint("x-envoy-attempt-count", uint64(e.Info.UpstreamAttempts))
	}
	if !q.r.suppressHeaders {
		// From the end of the request, and only once it ended.
		if since, ok := q.sinceRequestComplete(respAt); ok {
			r.SetUint("x-envoy-upstream-service-time", uint64(since/time.Millisecond))
		}
	}
	if q.setCookie != "" {
		r.Add("set-cookie", q.setCookie)
	}
	q.rt.MutateResponse(r, &e.Info)
	e.Info.ResponseCodeDetails = http.DetailsViaUpstream
	respEnd := us.EndedWithHeader()
	q.respStarted = true
	if err := e.Downstream.WriteHeader(r, respEnd); err != nil {
		us.Reset(http.ResetCancel)
		e.Info.SetFlags(http.FlagDownstreamConnectionTermination)
		return done
	}
	if status == 101 || connect && status/100 == 2 {
		q.stopTimers()
		q.tunnel(us)
		hs.RqCompleted.Inc()
		return done
	}
	if !respEnd && !q.pumpResponse(us) {
		return done
	}
	q.stopTimers()
	hs.RqCompleted.Inc()
	last := e.Info.ResponseComplete // the connection manager noted the last byte out
	if last == 0 {
		last = time.Since(e.Info.Start)
	}
	hs.RqTime.Record(uint64((last - start) / time.Millisecond))
	return done
}

// pumpResponse copies the response body and trailers downstream. It reports
// whether the response went out complete.
func (q *rq) pumpResponse(us http.ClientStream) bool {
	e := q.e
	if q.buf == nil {
		q.buf = q.r.buffers.Get(bufpool.Medium)
	}
	buf := q.buf.B
	for {
		n, err := us.Read(buf)
		if n > 0 {
			q.touchIdle()
			e.TapResponseBody(buf[:n])
			if _, werr := e.Downstream.Write(buf[:n]); werr != nil {
				us.Reset(http.ResetCancel)
				e.Info.SetFlags(http.FlagDownstreamConnectionTermination)
				return false
			}
		}
		if err == io.EOF {
			tr := us.Trailers()
			if tr.Len() > 0 {
				err = e.Downstream.EndWithTrailers(tr)
			} else {
				err = e.Downstream.End()
			}
			return err == nil
		}
		if err != nil {
			q.midResponseFailure(err)
			return false
		}
	}
}

// midResponseFailure ends a response that failed after it began downstream:
// the downstream stream is reset, with the flags saying why.
func (q *rq) midResponseFailure(err error) {
	e := q.e
	q.r.stats.resetAfterStart.Inc()
	switch reason := q.why(); {
	case reason == errGlobalTimeout:
		q.hs.RqTimeout.Inc()
		e.Info.SetFlags(http.FlagUpstreamRequestTimeout)
		e.Info.ResponseCodeDetails = "response_timeout"
	case q.takeTryReason() != nil: // (only the idle timeout runs once the response began)
		q.hs.RqPerTryIdleTimeout.Inc()
		e.Info.SetFlags(http.FlagUpstreamRequestTimeout)
		e.Info.ResponseCodeDetails = "upstream_per_try_idle_timeout"
	case reason != nil:
	case e.Context().Err() != nil:
		e.Info.SetFlags(http.FlagDownstreamConnectionTermination)
	default:
		flag, details := resetKind(err)
		e.Info.SetFlags(flag)
		e.Info.ResponseCodeDetails = "upstream_reset_after_response_started{" + details + "}"
		q.hs.RqRxReset.Inc()
	}
	e.Downstream.Reset(http.ResetInternalError)
}

// tunnel copies both ways after a 101: the sender takes the downstream's
// bytes upstream, this goroutine the upstream's downstream.
func (q *rq) tunnel(us http.ClientStream) {
	e := q.e
	q.mu.Lock()
	q.sending = true
	q.tunneling = q.reason == nil
	q.mu.Unlock()
	go q.tunnelUp(us)
	if q.buf == nil {
		q.buf = q.r.buffers.Get(bufpool.Medium)
	}
	buf := q.buf.B
	for {
		n, err := us.Read(buf)
		if n > 0 {
			e.TapResponseBody(buf[:n])
			if _, werr := e.Downstream.Write(buf[:n]); werr != nil {
				us.Reset(http.ResetCancel)
				e.Downstream.Reset(http.ResetCancel)
				break
			}
		}
		if err != nil {
			if err == io.EOF {
				_ = e.Downstream.End()
			} else {
				e.Downstream.Reset(http.ResetCancel)
			}
			break
		}
	}
	<-q.senderDone
	q.mu.Lock()
	q.sending = false
	q.tunneling = false
	q.mu.Unlock()
}

func (q *rq) tunnelUp(us http.ClientStream) {
	defer func() { q.senderDone <- struct{}{} }()
	buf := q.r.buffers.Get(bufpool.Medium)
	defer q.r.buffers.Put(buf)
	for {
		n, err := q.e.Downstream.Read(buf.B)
		if n > 0 {
			q.e.TapRequestBody(buf.B[:n])
			if _, werr := us.Write(buf.B[:n]); werr != nil {
				q.e.Downstream.Reset(http.ResetCancel)
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				_ = us.End()
			} else {
				us.Reset(http.ResetCancel)
			}
			return
		}
	}
}

// requestEnded reports whether the upstream request ends with its header.
func (q *rq) requestEnded() bool {
	if q.e.Downstream.EndedWithHeader() {
		return true
	}
	return q.bodyDone && q.bodyLen == 0 && q.trailers.Len() == 0
}

// startSender starts the goroutine that sends the request body: from the
// downstream for the first attempt that gets this far, from the buffer for a
// retry.
func (q *rq) startSender(us http.ClientStream) {
	q.mu.Lock()
	q.sending = true
	q.sendWriteErr = false
	q.mu.Unlock()
	if q.bodyStarted {
		go q.replay(us)
		return
	}
	q.bodyStarted = true
	go q.send(us)
}

// send reads the request body from downstream, sends it upstream and keeps
// it for a retry.
func (q *rq) send(us http.ClientStream) {
	e := q.e
	buf := q.r.buffers.Get(bufpool.Medium)
	defer func() {
		q.r.buffers.Put(buf)
		q.senderDone <- struct{}{}
	}()
	writeFailed := false
	for {
		n, err := e.Downstream.Read(buf.B)
		if n > 0 {
			e.TapRequestBody(buf.B[:n])
			q.keep(buf.B[:n])
			if !writeFailed {
				if _, werr := us.Write(buf.B[:n]); werr != nil {
					writeFailed = true
					q.mu.Lock()
					q.sendWriteErr = true
					q.mu.Unlock()
					if !q.buffering {
						return
					}
				}
			}
		}
		if err == io.EOF {
			tr := e.Downstream.Trailers()
			if tr.Len() > 0 && q.buffering {
				tr.CopyTo(&q.trailers)
			}
			q.requestComplete()
			q.mirrorBody()
			if !writeFailed {
				if tr.Len() > 0 {
					_ = us.EndWithTrailers(tr)
				} else {
					_ = us.End()
				}
			}
			return
		}
		if err != nil {
			q.mu.Lock()
			q.readErr = err
			q.mu.Unlock()
			us.Reset(http.ResetCancel)
			return
		}
	}
}

// keep adds body bytes to the retry buffer.
func (q *rq) keep(p []byte) {
	q.bodyLen += len(p)
	if !q.buffering {
		return
	}
	if q.bodyLen > q.r.bodyLimit {
		q.buffering, q.bodyTooLarge = false, true
		for i, c := range q.chunks {
			q.r.buffers.Put(c)
			q.chunks[i] = nil
		}
		q.chunks = q.chunks[:0]
		return
	}
	for len(p) > 0 {
		if len(q.chunks) == 0 || q.last == len(q.chunks[len(q.chunks)-1].B) {
			q.chunks = append(q.chunks, q.r.buffers.Get(bufpool.Medium))
			q.last = 0
		}
		k := copy(q.chunks[len(q.chunks)-1].B[q.last:], p)
		q.last += k
		p = p[k:]
	}
}

// replay sends the kept body and trailers on a retry's stream.
func (q *rq) replay(us http.ClientStream) {
	defer func() { q.senderDone <- struct{}{} }()
	for i, c := range q.chunks {
		b := c.B
		if i == len(q.chunks)-1 {
			b = b[:q.last]
		}
		if _, err := us.Write(b); err != nil {
			return
		}
	}
	if q.trailers.Len() > 0 {
		_ = us.EndWithTrailers(&q.trailers)
	} else {
		_ = us.End()
	}
}

// isSending reports whether a sender runs (or ran and was not waited for).
func (q *rq) isSending() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.sending
}

// settleSender gives a running sender a moment to finish, and reports
// whether it did (its state may then be read).
func (q *rq) settleSender() bool {
	if !q.isSending() {
		return true
	}
	select {
	case <-q.senderDone:
	default:
		if q.grace == nil {
			q.grace = time.NewTimer(senderGrace)
		} else {
			q.grace.Reset(senderGrace)
		}
		select {
		case <-q.senderDone:
			q.grace.Stop()
		case <-q.grace.C:
			return false
		}
	}
	q.mu.Lock()
	q.sending = false
	q.mu.Unlock()
	return true
}

// stopSender ends the request side of an attempt that is over: a sender
// that does not finish within a moment is stopped by resetting the upstream
// stream and, if it is still reading the request, the downstream one
// (HTTP/1.1 closes the connection, after the response if one went out;
// HTTP/2 sends RST_STREAM, NO_ERROR after a response).
func (q *rq) stopSender(us http.ClientStream) {
	if q.settleSender() {
		return
	}
	us.Reset(http.ResetCancel)
	q.mu.Lock()
	bodyDone := q.bodyDone
	q.mu.Unlock()
	if !bodyDone {
		if q.respStarted || q.replied {
			q.e.Downstream.Reset(http.ResetNoError)
		} else {
			q.e.Downstream.Reset(http.ResetCancel)
		}
	}
	<-q.senderDone
	q.mu.Lock()
	q.sending = false
	q.mu.Unlock()
}

// pickHost picks the attempt's host, avoiding those tried before when the
// policy's previous_hosts predicate asks.
func (q *rq) pickHost() *upstream.Host {
	h := q.pick(0)
	if h == nil || q.policy == nil || !q.policy.AvoidPreviousHosts || q.retries == 0 {
		return h
	}
	for i := range q.policy.HostSelectionMaxAttempts {
		if !q.triedHost(h) {
			return h
		}
		h = q.pick(uint32(i) + 1)
		if h == nil {
			return nil
		}
	}
	return h
}

// pick asks the cluster for a host: by the request's hash when it has one
// (attempt > 0: another place for it), else as its balancer picks.
func (q *rq) pick(attempt uint32) *upstream.Host {
	if od := q.cl.OriginalDst(); od != nil {
		return q.cl.PickOriginal(q.originalDst(od))
	}
	if q.hasHash {
		return q.cl.PickHash(q.hash, attempt)
	}
	return q.cl.Pick()
}

// originalDst is where an ORIGINAL_DST cluster sends the request, as Envoy's
// OriginalDstCluster load balancer picks it: the header's "IP:port" with
// use_http_header, else the downstream connection's original destination if
// a listener filter restored it; the zero AddrPort (no host) otherwise.
func (q *rq) originalDst(od *upstream.OriginalDstConfig) netip.AddrPort {
	e := q.e
	if od.Header != "" {
		if v, ok := e.Request.Get(od.Header); ok {
			if ap, err := netip.ParseAddrPort(v); err == nil {
				return ap
			}
		}
	}
	if e.Info.DownstreamLocalRestored {
		return e.Info.DownstreamLocal
	}
	return netip.AddrPort{}
}

func (q *rq) triedHost(h *upstream.Host) bool {
	for _, t := range q.tried {
		if t == h {
			return true
		}
	}
	return false
}

// acquireFailed handles a failure to get a connection.
func (q *rq) acquireFailed(err error) outcome {
	e := q.e
	if q.why() != nil {
		return q.interrupted()
	}
	if e.Context().Err() != nil {
		q.hs.RqCancelled.Inc()
		e.Info.SetFlags(http.FlagDownstreamConnectionTermination)
		return done
	}
	if errors.Is(err, pool.ErrOverflow) {
		return q.fail(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow",
			"upstream_reset_before_response_started{overflow}", http.FlagUpstreamOverflow)
	}
	resetReason, reason := connectFailure(err)
	e.Info.UpstreamTransportFailureReason = reason
	if q.retryOn != 0 && q.policy.RetriableReset(q.retryOn, route.ResetConnectFailure, false) {
		if q.canRetry(false) {
			return retry
		}
	} else {
		q.retryDeclined()
	}
	return q.fail(503, resetBody(q.retries > 0, resetReason, reason),
		resetDetails(resetReason, reason), http.FlagUpstreamConnectionFailure)
}

// connectFailure names a failure to connect as Envoy's connection pool
// does: its reset reason ("connection timeout" when connect_timeout
// expired, else "remote connection failure") and the transport failure
// reason (none for a timeout).
func connectFailure(err error) (resetReason, transportReason string) {
	if errors.Is(err, upstream.ErrConnectTimeout) {
		return "connection timeout", ""
	}
	if ce, ok := errors.AsType[*pool.ConnectError](err); ok {
		return "remote connection failure", ce.Reason()
	}
	return "remote connection failure", err.Error()
}

// resetBody is the body of the local reply to an upstream reset before the
// response headers, as Envoy's onUpstreamReset writes it.
func resetBody(retried bool, resetReason, transportReason string) string {
	var b strings.Builder
	b.WriteString("upstream connect error or disconnect/reset before headers. ")
	if retried {
		b.WriteString("retried and the latest ")
	}
	b.WriteString("reset reason: ")
	b.WriteString(resetReason)
	if transportReason != "" {
		b.WriteString(", transport failure reason: ")
		b.WriteString(transportReason)
	}
	return b.String()
}

// resetDetails is the %RESPONSE_CODE_DETAILS% of that reply:
// upstream_reset_before_response_started{reason|transport reason}, spaces
// replaced by underscores.
func resetDetails(resetReason, transportReason string) string {
	d := "upstream_reset_before_response_started{" + resetReason
	if transportReason != "" {
		d += "|" + transportReason
	}
	return strings.ReplaceAll(d+"}", " ", "_")
}

// upstreamFailed handles an attempt that ended without response headers.
func (q *rq) upstreamFailed(conn *pool.Conn, err error, sent bool) outcome {
	e := q.e
	tryTimeout := q.takeTryReason()
	if reason := q.why(); reason != nil {
		if reason == errGlobalTimeout {
			q.cl.ReportOutcome(q.host, upstream.TimedOut)
		}
		return q.interrupted()
	}
	if e.Context().Err() != nil {
		q.hs.RqCancelled.Inc()
		e.Info.SetFlags(http.FlagDownstreamConnectionTermination)
		return done
	}
	q.mu.Lock()
	readErr := q.readErr
	q.mu.Unlock()
	if readErr != nil {
		// A body the codec refused is the connection manager's to answer
		// (and flag); anything else means the client went away.
		if !http.IsRefusal(readErr) {
			e.Info.SetFlags(http.FlagDownstreamConnectionTermination)
		}
		return done
	}
	if tryTimeout != nil {
		// A per-try timeout stands for a 504 from the upstream: retried when
		// the policy retries those. As in Envoy's onPerTryTimeoutCommon, it
		// counts in its own stat only, not in upstream_rq_timeout.
		q.cl.ReportOutcome(q.host, upstream.TimedOut)
		details := "upstream_per_try_timeout"
		if tryTimeout == errPerTryIdleTimeout {
			details = "upstream_per_try_idle_timeout"
			q.hs.RqPerTryIdleTimeout.Inc()
		} else {
			q.hs.RqPerTryTimeout.Inc()
		}
		if q.retryOn&(route.Retry5xx|route.RetryGatewayError|route.RetryReset) != 0 {
			if q.canRetry(true) {
				return retry
			}
		} else {
			q.retryDeclined()
		}
		return q.timedOut(details)
	}
	q.cl.ReportOutcome(q.host, upstream.ConnectFailed) // a reset, as Envoy counts it
	// An HTTP/2 REFUSED_STREAM is retried only as the retry policy says
	// (refused-stream, reset, 5xx, ...), as in Envoy, whose connection pool
	// does not retry it by itself.
	kind := route.ResetOther
	if se, ok := errors.AsType[*h2.StreamError](err); ok && se.Remote && se.Code == http.ResetRefusedStream {
		kind = route.ResetRefusedStream
	}
	// Another request the upstream did not process goes again on a new
	// connection, if it can be sent again.
	if kind != route.ResetRefusedStream && q.transparent < maxTransparentRetries && q.replayable() &&
		notProcessed(conn, err, e.Request) {
		return transparent
	}
	q.hs.RqRxReset.Inc()
	if q.retryOn != 0 && q.policy.RetriableReset(q.retryOn, kind, sent) {
		if q.canRetry(true) {
			return retry
		}
	} else {
		q.retryDeclined()
	}
	flag, details := resetKind(err)
	// A protocol error is a 502, as in Envoy's onUpstreamReset.
	status := 503
	if flag == http.FlagUpstreamProtocolError {
		status = 502
	}
	return q.fail(status, resetBody(q.retries > 0, strings.ReplaceAll(details, "_", " "), ""),
		"upstream_reset_before_response_started{"+details+"}", flag)
}

// reportResponse gives the response's status to the cluster's outlier
// detection: for a gRPC response that ends in its headers, the HTTP status
// its grpc-status stands for, as Envoy does. A response with
// x-envoy-immediate-health-check-fail fails the host's active health check
// (Cluster.ImmediateHealthCheckFail).
func (q *rq) reportResponse(resp *http.Header, status int) {
	if resp.Has("x-envoy-immediate-health-check-fail") {
		q.cl.ImmediateHealthCheckFail(q.host)
	}
	if status < 200 || !q.cl.DetectsOutliers() {
		return // 1xx: the response is still to come; or nobody to tell
	}
	if q.e.IsGRPC() { // (a scan of the request's fields)
		if v, ok := resp.Get("grpc-status"); ok {
			if gs, err := strconv.ParseUint(v, 10, 32); err == nil {
				status = http.HTTPStatusFromGRPC(uint32(gs))
			}
		}
	}
	q.cl.ReportStatus(q.host, status)
}

// notProcessed reports whether err says the upstream did not process the
// request: HTTP/2's REFUSED_STREAM or GOAWAY, or an HTTP/1.1 keep-alive
// connection closed before any response, for a method that may be repeated.
func notProcessed(conn *pool.Conn, err error, req *http.Header) bool {
	if errors.Is(err, http.ErrNotProcessed) {
		return true
	}
	var he *h1.Error
	if !conn.Reused() || !errors.As(err, &he) || he.Kind != h1.KindNoResponse {
		return false
	}
	switch req.Method() {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return req.Has("idempotency-key") || req.Has("x-idempotency-key")
}

// resetKind names an upstream failure as Envoy's reset reasons do.
func resetKind(err error) (http.ResponseFlag, string) {
	var se *h2.StreamError
	if errors.As(err, &se) && se.Remote {
		if se.Code == http.ResetRefusedStream {
			return http.FlagUpstreamRemoteReset, "remote_refused_stream_reset"
		}
		return http.FlagUpstreamRemoteReset, "remote_reset"
	}
	var he *h1.Error
	if errors.As(err, &he) && (he.Kind == h1.KindMalformed || he.Kind == h1.KindFraming ||
		he.Kind == h1.KindHeadersTooLarge || he.Kind == h1.KindTooManyHeaders || he.Kind == h1.KindVersion) {
		return http.FlagUpstreamProtocolError, "protocol_error"
	}
	var ce *h2.ConnError
	if errors.As(err, &ce) && !ce.Remote {
		return http.FlagUpstreamProtocolError, "protocol_error"
	}
	return http.FlagUpstreamConnectionTermination, "connection_termination"
}

// replayable reports whether the request can be sent again: it has no body,
// or all of it is kept (and its sender is done).
func (q *rq) replayable() bool {
	if q.e.Downstream.EndedWithHeader() || !q.bodyStarted {
		return true
	}
	if q.isSending() {
		return false
	}
	return q.bodyDone && !q.bodyTooLarge && (q.buffering || q.bodyLen == 0)
}

// canRetry reports whether a retry may go now, counting it if so. counted
// says whether the failed attempt went as far as the upstream (it then
// counts in upstream_rq_retry_limit_exceeded when no retry is left).
func (q *rq) canRetry(counted bool) bool {
	hs := q.hs
	switch {
	case q.retriesLeft == 0:
		if q.policy != nil {
			hs.RqRetryLimitExceeded.Inc()
			q.e.Info.SetFlags(http.FlagUpstreamRetryLimitExceeded)
		}
		return false
	case !q.replayable():
		return false
	case hs.Retries.Load() >= int64(q.cl.Config().Limits.Retries()):
		// RetryStatus::NoOverflow: the flag too, as Envoy's router sets it.
		hs.RqRetryOverflow.Inc()
		q.e.Info.SetFlags(http.FlagUpstreamOverflow)
		return false
	}
	hs.RqRetry.Inc()
	return true
}

// retryDeclined notes an attempt's end the retry policy (if any) does not
// retry: after a retry, that retry succeeded (upstream_rq_retry_success), as
// Envoy's RetryStateImpl::shouldRetry counts it.
func (q *rq) retryDeclined() {
	if q.retryOn != 0 && q.retries > 0 {
		q.hs.RqRetrySuccess.Inc()
	}
}

// backoff waits before a retry, as the policy's back-off says. It reports
// false if the request was interrupted meanwhile.
func (q *rq) backoff() bool {
	hs := q.hs
	hs.Retries.Add(1)
	defer hs.Retries.Add(-1)
	d := q.policy.Backoff.Delay(q.retries - 1)
	if d <= 0 {
		return q.why() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-q.stopChan():
	case <-q.e.Context().Done():
	}
	return q.why() == nil && q.e.Context().Err() == nil
}

// fail answers with a local reply, or resets the downstream stream if the
// response began.
func (q *rq) fail(status int, body, details string, flag http.ResponseFlag) outcome {
	q.replied = true
	if q.respStarted {
		q.e.Info.SetFlags(flag)
		q.e.Downstream.Reset(http.ResetInternalError)
		return done
	}
	q.localReply(status, body, details, flag)
	return done
}

// localReply sends a local reply of the router's with the headers Envoy
// gives it: the route's response header mutations (the filter manager's
// finalizeResponseHeaders), then x-envoy-overloaded on a circuit breaker's
// 503 (unless suppress_envoy_headers) and, once a host was picked for an
// attempt, x-envoy-attempt-count (include_attempt_count_in_response).
func (q *rq) localReply(status int, body, details string, flag http.ResponseFlag) {
	e := q.e
	q.rt.MutateResponse(&e.Response, &e.Info)
	if flag == http.FlagUpstreamOverflow && !q.r.suppressHeaders {
		e.Response.Set("x-envoy-overloaded", "true")
	}
	if vh := q.rt.VirtualHost; vh != nil && vh.IncludeAttemptCountInResponse && e.Info.UpstreamAttempts > 0 {
		e.Response.SetUint("x-envoy-attempt-count", uint64(e.Info.UpstreamAttempts))
	}
	_ = e.LocalReply(status, body, details, flag)
}

// interrupted ends an attempt a global timeout or the connection manager
// stopped.
func (q *rq) interrupted() outcome {
	reason := q.why()
	if reason == errGlobalTimeout {
		q.hs.RqTimeout.Inc()
		return q.timedOut("response_timeout")
	}
	// The connection manager's reason: it answers.
	return done
}

// timedOut answers a timeout: 504 "upstream request timeout", or an empty
// 204 for x-envoy-upstream-rq-timeout-alt-response (Envoy's
// onUpstreamTimeoutAbort).
func (q *rq) timedOut(details string) outcome {
	if q.timeoutCode == 204 {
		return q.fail(204, "", details, http.FlagUpstreamRequestTimeout)
	}
	return q.fail(504, "upstream request timeout", details, http.FlagUpstreamRequestTimeout)
}

// Interrupt implements http.Interrupter: the connection manager's timeouts
// stop the request.
func (q *rq) Interrupt(reason error) { q.interrupt(reason, false) }

func (q *rq) interrupt(reason error, perTry bool) {
	q.mu.Lock()
	q.interruptLocked(reason, perTry)
	q.mu.Unlock()
}

// interruptLocked is interrupt with q.mu held.
func (q *rq) interruptLocked(reason error, perTry bool) {
	if perTry {
		q.tryReason = reason
	} else if q.reason == nil {
		q.reason = reason
		if !q.aborted {
			q.aborted = true
			if q.abort == nil {
				q.abort = make(chan struct{})
			}
			close(q.abort)
		}
	}
	// The stream is reset under q.mu: clearStream waits for it, so that a
	// stream given back to its connection is never reset from here.
	if q.us != nil {
		q.us.Reset(http.ResetCancel)
	}
	if q.tunneling && !perTry {
		q.e.Downstream.Reset(http.ResetCancel)
	}
}

func (q *rq) why() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.reason
}

// takeTryReason returns (and clears) the attempt's per-try timeout that
// fired, errPerTryTimeout or errPerTryIdleTimeout, or nil.
func (q *rq) takeTryReason() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	r := q.tryReason
	q.tryReason = nil
	return r
}

// stopChan is closed when the request is interrupted.
func (q *rq) stopChan() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.abort == nil {
		q.abort = make(chan struct{})
	}
	return q.abort
}

// setStream makes us the attempt's stream; false if the request was
// interrupted meanwhile.
func (q *rq) setStream(us http.ClientStream) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.reason != nil {
		return false
	}
	q.us = us
	q.tryReason = nil
	return true
}

func (q *rq) clearStream() {
	q.mu.Lock()
	q.us = nil
	q.tryAt, q.idleAt = time.Time{}, time.Time{}
	q.mu.Unlock()
}

// touchIdle pushes the attempt's idle deadline back (per_try_idle_timeout).
func (q *rq) touchIdle() {
	if q.perTryIdle <= 0 {
		return
	}
	now := time.Now()
	q.mu.Lock()
	q.idleAt = now.Add(q.perTryIdle)
	q.armLocked(&q.idleTimer, &q.idleFire, q.idleAt, now, q.onIdleFn)
	q.mu.Unlock()
}

func (q *rq) onIdle() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.firedLocked(&q.idleTimer, &q.idleFire, &q.idleAt, q.onIdleFn) {
		q.interruptLocked(errPerTryIdleTimeout, true)
	}
}

// requestComplete notes the end of the downstream request: the global
// timeout starts, and the per-try timeout of the attempt in progress.
func (q *rq) requestComplete() {
	now := time.Now()
	q.e.Info.RequestComplete = max(now.Sub(q.e.Info.Start), 1)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.complete = true
	if q.bodyStarted {
		q.bodyDone = true
	}
	if q.timeout > 0 {
		q.globalAt = now.Add(q.timeout)
		q.armLocked(&q.globalTimer, &q.globalFire, q.globalAt, now, q.onGlobalFn)
	}
	if q.perTry > 0 && q.us != nil && q.tryAt.IsZero() {
		q.tryAt = now.Add(q.perTry)
		q.armLocked(&q.tryTimer, &q.tryFire, q.tryAt, now, q.onTryFn)
	}
}

// sinceRequestComplete is how long before at (an offset from the
// exchange's start) the downstream request ended, and whether it did.
func (q *rq) sinceRequestComplete(at time.Duration) (time.Duration, bool) {
	q.mu.Lock()
	complete := q.complete
	q.mu.Unlock()
	if !complete { // (requestComplete sets RequestComplete before complete)
		return 0, false
	}
	return max(at-q.e.Info.RequestComplete, 0), true
}

// armLocked makes *t fire by deadline, resetting it only if it is not
// running or set to fire later.
func (q *rq) armLocked(t **time.Timer, fire *time.Time, deadline, now time.Time, f func()) {
	if !fire.IsZero() && !fire.After(deadline) {
		return
	}
	*fire = deadline
	if *t == nil {
		*t = time.AfterFunc(deadline.Sub(now), f)
	} else {
		(*t).Reset(deadline.Sub(now))
	}
}

// armTry starts the per-try timer of the attempt, if the request is
// complete (otherwise requestComplete will).
func (q *rq) armTry() {
	if q.perTry <= 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.complete {
		now := time.Now()
		q.tryAt = now.Add(q.perTry)
		q.armLocked(&q.tryTimer, &q.tryFire, q.tryAt, now, q.onTryFn)
	}
}

func (q *rq) stopTry() {
	q.mu.Lock()
	q.tryAt = time.Time{}
	q.mu.Unlock()
}

func (q *rq) stopTimers() {
	q.mu.Lock()
	q.globalAt, q.tryAt, q.idleAt = time.Time{}, time.Time{}, time.Time{}
	q.mu.Unlock()
}

// onGlobal runs when the global timer fires: the request times out if its
// deadline passed; a deadline still ahead (a later request, the state is
// reused) sets the timer again.
func (q *rq) onGlobal() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.firedLocked(&q.globalTimer, &q.globalFire, &q.globalAt, q.onGlobalFn) {
		q.interruptLocked(errGlobalTimeout, false)
	}
}

func (q *rq) onTry() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.firedLocked(&q.tryTimer, &q.tryFire, &q.tryAt, q.onTryFn) {
		q.interruptLocked(errPerTryTimeout, true)
	}
}

// firedLocked handles a timer firing: it reports whether the deadline
// passed (and clears it), or sets the timer for a deadline still ahead. The
// timer's callback holds q.mu from this check through its interrupt: let go
// in between, the request could end and q serve the next one (it is pooled),
// which the interrupt would then reach.
func (q *rq) firedLocked(t **time.Timer, fire, at *time.Time, f func()) bool {
	*fire = time.Time{}
	if at.IsZero() {
		return false
	}
	now := time.Now()
	if now.Before(*at) {
		q.armLocked(t, fire, *at, now, f)
		return false
	}
	*at = time.Time{}
	return true
}

var _ http.Interrupter = (*rq)(nil)
