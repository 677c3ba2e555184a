package hcm

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/h1"
	"github.com/skiffproxy/skiff/dataplane/http/route"
)

// Why the connection manager interrupts an exchange.
var (
	errStreamIdle     = errors.New("hcm: stream idle timeout")
	errRequestTimeout = errors.New("hcm: request timeout")
	errMaxDuration    = errors.New("hcm: max stream duration reached")
	errDownstreamGone = errors.New("hcm: the downstream went away")
)

// epoch is the origin of the monotonic clock activity is measured on.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// stream is one exchange as the connection manager runs it, and the
// http.ServerStream the filters and the router see as Exchange.Downstream:
// it wraps the codec's stream, runs the response filters and the manager's
// response headers in WriteHeader, and keeps the StreamInfo and the stream
// timeouts up to date. An HTTP/1.1 connection reuses one; HTTP/2 takes them
// from the Manager's pool.
type stream struct {
	m    *Manager
	c    *conn
	down http.ServerStream
	ex   http.Exchange

	headerSent, ended bool        // the response side, on the handler's goroutine
	resetFlag         atomic.Bool // Reset was called (from any goroutine)
	matched           bool
	upgradeType       string // the request's upgrade (lower case), "" if none; decided once routed
	// tunnelReq: an HTTP/1.1 upgrade or CONNECT request, which Envoy's codec
	// never sees complete (its body is the tunnel's).
	tunnelReq   bool
	upgraded    bool   // the upgrade was allowed (downstream_cx_upgrades_active counts it)
	decoratorOp string // x-envoy-decorator-operation for the response (tracing, ingress)
	// closeConn: the HTTP/1.x connection closes after this exchange's
	// response, which says "connection: close" (Envoy's saw_connection_close_).
	closeConn bool
	// reqDone: the whole request is in (Read returned io.EOF, or it had no
	// body); atomic, as the router's sender reads the body.
	reqDone atomic.Bool
	// bodyErr is the HTTP/1.x codec's error that ended the request body
	// half-way with a status to answer (a protocol error, not the client
	// going away); set by Read, on the router's sender.
	bodyErr atomic.Pointer[h1.Error]

	mu       sync.Mutex // the timers' view
	active   bool
	idle     time.Duration
	reqAt    time.Time
	durAt    time.Time // when max_stream_duration runs out; zero: never
	activity atomic.Int64
	started  int64 // the exchange's start on activity's clock
	// The timers of the stream idle, request and duration timeouts; under mu.
	idleTimer, reqTimer, durTimer lazyTimer

	downstreamGoneFn func() // st.downstreamGone, made once
	// exGen is st.ex's generation while active (under mu): the timers and
	// downstreamGone interrupt only that exchange (Exchange.InterruptGen),
	// not the next one st serves if they run late.
	exGen uint64
}

func newStream(m *Manager) *stream {
	st := &stream{m: m}
	st.downstreamGoneFn = st.downstreamGone
	st.idleTimer.f, st.reqTimer.f, st.durTimer.f = st.onIdle, st.onRequestTimeout, st.onMaxDuration
	return st
}

// downstreamGone runs when the downstream stream's context ends: the client
// went away or reset the stream. The exchange in progress is interrupted
// (the router resets its upstream stream), unless skiff reset it itself.
func (st *stream) downstreamGone() {
	if st.resetFlag.Load() {
		return
	}
	st.mu.Lock()
	active, gen := st.active, st.exGen
	st.mu.Unlock()
	if active {
		st.ex.InterruptGen(gen, errDownstreamGone)
	}
}

// close stops the stream's timers for good.
func (st *stream) close() {
	st.mu.Lock()
	st.active = false
	st.idleTimer.stop()
	st.reqTimer.stop()
	st.durTimer.stop()
	st.mu.Unlock()
}

// serve runs one exchange.
func (st *stream) serve(c *conn, s http.ServerStream) {
	st.start(c, s)
	if st.prepare() {
		st.armTimers()
		st.run()
	}
	st.finish()
}

// serveRefused runs the exchange of a request the HTTP/1.1 codec refused
// with he: as Envoy's connection manager answers its codec's
// sendProtocolError, a local reply of he's status whose body is the
// status's text (408's is "request header timeout", as Envoy's
// onRequestHeaderTimeout says it), with he's details and response flags;
// "connection: close", as the request is not complete. It is counted and
// logged as any exchange: once, with no request headers (the head was not
// parsed; Envoy's are null).
func (st *stream) serveRefused(c *conn, s http.ServerStream, he *h1.Error) {
	st.start(c, s)
	if he.Kind == h1.KindHeadersTooLarge || he.Kind == h1.KindTooManyHeaders {
		st.m.stats.rqTooLarge.Inc()
	}
	body := protocolErrorBody(he.Status)
	if he.Kind == h1.KindHeadersTimeout {
		body = "request header timeout"
	}
	st.closeConn = true
	_ = st.ex.LocalReply(he.Status, body, he.Details, he.Flags())
	st.finish()
}

// start readies the stream for an exchange on s and counts it.
func (st *stream) start(c *conn, s http.ServerStream) {
	m := st.m
	st.c, st.down = c, s
	st.headerSent, st.ended, st.matched, st.closeConn, st.tunnelReq, st.upgraded = false, false, false, false, false, false
	st.decoratorOp, st.upgradeType = "", ""
	st.resetFlag.Store(false)
	st.reqDone.Store(false)
	st.bodyErr.Store(nil)
	e := &st.ex
	e.Reset(st)
	e.LocalReplies = m.localReplies
	in := &e.Info
	in.ConnectionID = c.fc.ID
	in.DownstreamLocal, in.DownstreamLocalRestored = c.fc.Local, c.fc.LocalRestored
	in.DownstreamRemote = c.fc.Remote
	in.DownstreamDirectRemote = c.fc.DirectRemote
	in.RequestedServerName = c.fc.ServerName
	in.DownstreamTLS, in.DownstreamLocalCert = c.fc.TLS, c.fc.TLSLocal
	m.stats.rqTotal.Inc()
	if c.http2 {
		m.stats.rqHTTP2Total.Inc()
	} else {
		m.stats.rqHTTP1Total.Inc()
	}
	m.stats.rqActive.Inc()
	st.started = int64(e.Info.Start.Sub(epoch))
	st.activity.Store(st.started)
	if s.EndedWithHeader() {
		in.RequestComplete = 1
		st.reqDone.Store(true)
	}
}

// run matches the route and runs the filters and the router.
func (st *stream) run() {
	m, e := st.m, &st.ex
	t := m.routes()
	var rt *route.Route
	if t != nil {
		if rt = t.Match(e.Request, route.ExchangeRandom(e)); rt != nil {
			e.Route = rt
			st.matched = true
			st.routeIdle(rt)
			st.routeDuration(rt)
		}
	}
	if st.upgradeType != "" {
		if !route.UpgradeAllowed(rt, m.upgrades, st.upgradeType) {
			// As Envoy decides it: once the route is known, before any
			// filter. The connection closes after the 403, as in Envoy:
			// bytes the client sent after the refused upgrade's head are
			// never read as another request (a smuggled one).
			st.closeConn = true
			m.stats.rqWsOnNonWs.Inc()
			_ = e.LocalReply(403, "", "upgrade_failed", 0)
			return
		}
		// Envoy's upgradeFilterChainCreated: an upgrade (CONNECT included)
		// counts from here to the stream's end, whatever the upstream says.
		st.upgraded = true
		m.stats.cxUpgradesTotal.Inc()
		m.stats.cxUpgradesActive.Inc()
	}
	if m.tracing != nil {
		st.decoratorOp = m.tracing.decorate(e.Request, rt)
	}
	for _, f := range m.filters {
		if f.OnRequest(e) == http.Stop {
			return
		}
	}
	if e.Route == nil && st.matched && t != nil {
		// A filter cleared the route (it changed what routing depends on).
		if r := t.Match(e.Request, route.ExchangeRandom(e)); r != nil {
			e.Route = r
			st.routeDuration(r)
		}
	}
	m.router.Serve(e)
}

// routeIdle applies the route's idle_timeout, which overrides the manager's
// stream_idle_timeout. A timer running for a longer timeout is made to fire
// in time for this one.
func (st *stream) routeIdle(r *route.Route) {
	if r.IdleTimeout == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.idle = *r.IdleTimeout
	if st.idle > 0 {
		// No earlier than the deadline, which counts from the last activity.
		st.idleTimer.by(st.ex.Info.Start.Add(st.idle))
	} // else a running timer stops when it fires
}

// routeDuration applies route r's stream duration limit (its
// max_stream_duration, or the manager's), counted from the exchange's start,
// as Envoy does when it picks a route. On a route with max_stream_duration a
// gRPC request's grpc-timeout header says the limit to the upstream.
func (st *stream) routeDuration(r *route.Route) {
	e := &st.ex
	limit, ok := r.StreamLimit(e.Request, st.m.maxStreamDur)
	if ok && r.MaxStreamDuration != nil && http.IsGRPC(e.Request) {
		e.Request.Set("grpc-timeout", http.FormatGRPCTimeout(limit))
	}
	var at time.Time
	if ok {
		at = e.Info.Start.Add(limit)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.setDurationLocked(at)
}

// setDurationLocked makes at when the stream's duration runs out (zero:
// never).
func (st *stream) setDurationLocked(at time.Time) {
	st.durAt = at
	if !at.IsZero() {
		st.durTimer.by(at)
	} // else a running timer stops when it fires
}

// finish ends what the exchange left undone, then counts and logs it.
func (st *stream) finish() {
	m, e := st.m, &st.ex
	st.stopTimers()
	reason := e.Interrupted()
	if reason == errDownstreamGone && st.ended {
		// The client went away after the whole response: nothing was cut
		// short (the router may still have been tidying its upstream
		// request up after a local reply).
		reason = nil
	}
	if reason == errDownstreamGone {
		st.noteDownstreamGone()
		m.stats.rqRxReset.Inc()
		st.Reset(http.ResetCancel)
	} else if reason != nil {
		switch reason {
		case errStreamIdle:
			m.stats.rqIdleTimeout.Inc()
		case errMaxDuration:
			m.stats.rqMaxDuration.Inc()
		default:
			m.stats.rqTimeout.Inc()
		}
		switch {
		case !st.headerSent && !st.resetFlag.Load():
			st.timeoutReply(reason)
		case !st.ended:
			if reason == errStreamIdle {
				e.Info.SetFlags(http.FlagStreamIdleTimeout)
			}
			st.Reset(http.ResetCancel)
		}
	}
	switch {
	case st.resetFlag.Load():
	case !st.headerSent && st.bodyErr.Load() != nil:
		st.bodyRefused(st.bodyErr.Load())
	case !st.headerSent:
		// A filter stopped the chain with a Response but no answer, or the
		// client went away before there was one.
		if _, ok := e.Response.Get(http.Status); ok && e.Context().Err() == nil {
			_ = st.WriteHeader(&e.Response, true)
		} else {
			if e.Context().Err() != nil {
				st.noteDownstreamGone()
				m.stats.rqRxReset.Inc()
			}
			st.Reset(http.ResetInternalError)
		}
	case !st.ended:
		st.Reset(http.ResetInternalError)
	}
	if st.ended && e.Info.ResponseComplete > 0 {
		// Envoy's duration ends with the last byte out, when End noted it.
		e.Info.Duration = e.Info.ResponseComplete
	} else {
		e.Info.Duration = time.Since(e.Info.Start)
	}
	if code := e.Info.ResponseCode; code >= 100 && code < 600 {
		m.stats.rqClass[code/100-1].Inc()
	}
	m.stats.rqCompleted.Inc()
	if st.upgraded {
		m.stats.cxUpgradesActive.Dec()
	}
	m.stats.rqTime.Record(uint64(e.Info.Duration / time.Millisecond))
	for _, f := range m.doneFilters {
		f.OnComplete(e)
	}
	for _, l := range m.logs {
		l.Log(e)
	}
	m.stats.rqActive.Dec()
	st.down, st.c = nil, nil
}

// timeoutReply answers for the manager's timeout that interrupted the
// exchange, and reports whether reason is one: as Envoy's
// (Utility::maybeRequestTimeoutCode), 504 once the whole request is in (the
// upstream is late), else 408, and then an HTTP/1.x connection closes after
// the answer (the rest of the request is not read).
func (st *stream) timeoutReply(reason error) bool {
	switch reason {
	case errStreamIdle, errMaxDuration, errRequestTimeout:
	default:
		return false
	}
	e := &st.ex
	code := 504
	if !st.reqDone.Load() {
		code = 408
		st.closeConn = true
	}
	switch reason {
	case errStreamIdle:
		_ = e.LocalReply(code, "stream timeout", "stream_idle_timeout", http.FlagStreamIdleTimeout)
	case errMaxDuration:
		// DEADLINE_EXCEEDED to gRPC.
		_ = e.LocalReplyGRPC(code, 4, "downstream duration timeout", "max_duration_timeout", 0)
	default:
		_ = e.LocalReply(code, "request timeout", "request_overall_timeout", 0)
	}
	return true
}

// bodyRefused answers a request whose body the HTTP/1.x codec refused
// half-way (a bad chunk, too many trailers), as Envoy's sendProtocolError:
// the codec's status with its reason phrase for a body, and the connection
// closes after it.
func (st *stream) bodyRefused(he *h1.Error) {
	e := &st.ex
	st.closeConn = true
	_ = e.LocalReply(he.Status, protocolErrorBody(he.Status), he.Details, he.Flags())
}

// protocolErrorBody is the body of an answer to a protocol error: the
// status's text as Envoy's CodeUtility::toString spells it.
func protocolErrorBody(status int) string {
	switch status {
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 413:
		return "Payload Too Large"
	case 431:
		return "Request Header Fields Too Large"
	case 501:
		return "Not Implemented"
	case 505:
		return "HTTP Version Not Supported"
	}
	return ""
}

// prepare checks and sanitizes the request; false means it was answered.
func (st *stream) prepare() bool {
	m, e := st.m, &st.ex
	req := e.Request
	// As Envoy's codecs add the fields to its header map: a repeated inline
	// header is one field from here on.
	req.JoinInline(false)
	proto := e.Info.Protocol
	if proto == "HTTP/1.0" {
		if !m.acceptHTTP10 {
			_ = e.LocalReply(426, "", "low_version", http.FlagDownstreamProtocolError)
			return false
		}
		if !req.Has(http.Authority) && m.defaultHost10 != "" {
			req.Add(http.Authority, m.defaultHost10)
		}
	}
	if m.underscores != corev3.HttpProtocolOptions_ALLOW && !st.underscores() {
		return false
	}
	st.upgradeType = st.upgrade()
	if !st.c.http2 {
		st.tunnelReq = st.upgradeType != "" || req.Method() == "CONNECT"
		if !st.tunnelReq && !st.connectionNominated() {
			return false
		}
	}
	if !req.Has(http.Authority) {
		// HTTP/1.0 without a default host, or HTTP/2 with neither
		// :authority nor host (HTTP/1.1's codec refuses it already), as
		// Envoy's connection manager.
		_ = e.LocalReply(400, "", "missing_host_header", 0)
		return false
	}
	if m.normalizePath || m.mergeSlashes || m.escapedSlashes > hcmv3.HttpConnectionManager_KEEP_UNCHANGED {
		if !st.normalize() {
			return false
		}
	}
	if m.stripHostDot {
		route.StripTrailingHostDot(req)
	}
	if m.stripPort == -1 {
		route.StripPort(req, -1)
	} else if m.stripMatching {
		route.StripPort(req, int(st.c.fc.Local.Port()))
	}
	st.sanitize(st.upgradeType != "" && st.upgradeType != "connect")
	return true
}

// underscores applies headers_with_underscores_action; false means the
// request was refused. (HTTP/1.1's codec refuses a request under
// REJECT_REQUEST already, as Envoy's does: see h1.Options.RejectUnderscores.)
func (st *stream) underscores() bool {
	e := &st.ex
	reject := st.m.underscores == corev3.HttpProtocolOptions_REJECT_REQUEST
	bad := false
	e.Request.DeleteFunc(func(name, _ string) bool {
		if name == "" || name[0] == ':' {
			return false
		}
		for i := 0; i < len(name); i++ {
			if name[i] == '_' {
				bad = true
				return !reject
			}
		}
		return false
	})
	if bad && reject {
		details := "http1.unexpected_underscore"
		if st.c.http2 {
			details = "http2.unexpected_underscore"
		}
		_ = e.LocalReply(400, "", details, http.FlagDownstreamProtocolError)
		return false
	}
	return true
}

// upgrade returns the type of upgrade an HTTP/1.1 request asks for (lower
// case), or "" for none: h2c upgrades are ignored (the request goes on as
// HTTP/1.1, as in Envoy). Its upgrade and connection headers are kept until
// run decides, once the route is known, whether the upgrade is allowed
// (tunneled) or refused with 403, as Envoy does. A CONNECT request, on
// either protocol, is the upgrade "connect", as Envoy treats it.
func (st *stream) upgrade() string {
	req := st.ex.Request
	if req.Method() == "CONNECT" {
		return "connect"
	}
	up, has := req.Get("upgrade")
	if !has || st.c.http2 || !connectionHasUpgrade(req) || http.EqualFoldLower(up, "h2c") {
		return ""
	}
	return http.LowerASCII(up)
}

// armTimers starts the stream idle and request timeouts. The exchange is
// active (for the timers and downstreamGone) from here to finish.
func (st *stream) armTimers() {
	m := st.m
	gen := st.ex.Gen()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.active = true
	st.exGen = gen
	st.idle = m.streamIdle
	start := st.ex.Info.Start
	if st.idle > 0 {
		st.idleTimer.by(start.Add(st.idle))
	}
	if m.maxStreamDur > 0 {
		st.setDurationLocked(start.Add(m.maxStreamDur))
	}
	if m.requestTimeout > 0 && st.ex.Info.RequestComplete == 0 {
		st.reqAt = start.Add(m.requestTimeout)
		st.reqTimer.by(st.reqAt)
	}
}

// stopTimers ends the exchange for the timers, which stop when they next
// fire.
func (st *stream) stopTimers() {
	st.mu.Lock()
	st.active = false
	st.reqAt, st.durAt = time.Time{}, time.Time{}
	st.mu.Unlock()
}

// onIdle runs when the idle timer fires: it interrupts the exchange if
// nothing moved for the idle timeout, and waits the rest otherwise. Between
// exchanges (the stream is reused) it stops.
func (st *stream) onIdle() {
	st.mu.Lock()
	if !st.active || st.idle <= 0 {
		st.idleTimer.done()
		st.mu.Unlock()
		return
	}
	quiet := time.Duration(nanotime() - st.activity.Load())
	if quiet < st.idle {
		st.idleTimer.again(time.Now().Add(st.idle - quiet))
		st.mu.Unlock()
		return
	}
	st.idleTimer.done()
	st.active = false
	gen := st.exGen
	st.mu.Unlock()
	st.ex.InterruptGen(gen, errStreamIdle)
}

func (st *stream) onRequestTimeout() {
	st.mu.Lock()
	if !st.active || st.reqAt.IsZero() {
		st.reqTimer.done()
		st.mu.Unlock()
		return
	}
	if time.Now().Before(st.reqAt) {
		st.reqTimer.again(st.reqAt)
		st.mu.Unlock()
		return
	}
	st.reqTimer.done()
	gen := st.exGen
	st.mu.Unlock()
	st.ex.InterruptGen(gen, errRequestTimeout)
}

// onMaxDuration runs when the duration timer fires: it interrupts the
// exchange once its time is up, and waits the rest otherwise.
func (st *stream) onMaxDuration() {
	st.mu.Lock()
	if !st.active || st.durAt.IsZero() {
		st.durTimer.done()
		st.mu.Unlock()
		return
	}
	if time.Until(st.durAt) > 0 {
		st.durTimer.again(st.durAt)
		st.mu.Unlock()
		return
	}
	st.durTimer.done()
	gen := st.exGen
	st.mu.Unlock()
	st.ex.InterruptGen(gen, errMaxDuration)
}

// requestDone stops the request timeout once the request is all in.
func (st *stream) requestDone() {
	e := &st.ex
	if e.Info.RequestComplete == 0 {
		e.Info.RequestComplete = max(time.Since(e.Info.Start), 1)
	}
	st.reqDone.Store(true)
	st.mu.Lock()
	st.reqAt = time.Time{}
	st.mu.Unlock()
}

// The http.ServerStream the filters and the router see.

// Header implements http.ServerStream.
func (st *stream) Header() *http.Header { return st.down.Header() }

// EndedWithHeader implements http.ServerStream.
func (st *stream) EndedWithHeader() bool { return st.down.EndedWithHeader() }

// Trailers implements http.ServerStream.
func (st *stream) Trailers() *http.Header { return st.down.Trailers() }

// Context implements http.ServerStream.
func (st *stream) Context() context.Context { return st.down.Context() }

// Protocol implements http.ServerStream.
func (st *stream) Protocol() string { return st.down.Protocol() }

// Read implements http.ServerStream: the request body, counted.
func (st *stream) Read(p []byte) (int, error) {
	n, err := st.down.Read(p)
	if n > 0 {
		st.ex.Info.BytesReceived += int64(n)
		st.activity.Store(nanotime())
	}
	if err == io.EOF {
		st.requestDone()
	} else if he, ok := err.(*h1.Error); ok && he.RefusalStatus() != 0 {
		st.bodyErr.Store(he)
	}
	return n, err
}

// WriteHeader implements http.ServerStream: the response filters run, then
// the manager's response headers go in, then the codec sends it.
func (st *stream) WriteHeader(h *http.Header, end bool) error {
	m, e := st.m, &st.ex
	if st.headerSent {
		return st.down.WriteHeader(h, end)
	}
	status, _ := strconv.Atoi(h.Value(http.Status))
	if status > 0 && status < 200 && status != 101 {
		return st.down.WriteHeader(h, end) // informational
	}
	r := &e.Response
	if h != r {
		h.CopyTo(r)
	}
	for i := len(m.respFilters) - 1; i >= 0; i-- {
		m.respFilters[i].OnResponse(e)
	}
	if v, err := strconv.Atoi(r.Value(http.Status)); err == nil {
		status = v
	}
	st.mutateResponse(status)
	if status == 400 && !st.c.http2 && !m.h1StreamError && e.Info.ResponseCodeDetails != http.DetailsViaUpstream {
		// A local 400 is a messaging error: as Envoy's onLocalReply, the
		// HTTP/1.x connection closes after it unless
		// stream_error_on_invalid_http_message.
		st.closeConn = true
	}
	if !st.requestReceived() {
		// As Envoy's encodeHeaders: a response before the whole request is
		// in closes an HTTP/1.x connection (the rest of the request is not
		// read), but for a tunnel's.
		m.stats.rqRespBeforeComplete.Inc()
		if status != 101 && (status/100 != 2 || e.Request.Method() != "CONNECT") {
			st.closeConn = true
		}
	}
	if st.closeConn && !st.c.http2 {
		r.Set("connection", "close") // the codec closes the connection after it
	}
	if c := st.c; !c.drainApplied.Load() && c.fc.DrainClose() {
		// As Envoy's encodeHeaders, the drain is decided as a response head
		// goes out (with the gradual strategy a draw that grows likelier
		// over the drain time): this response is HTTP/1.1's last
		// ("connection: close" from the codec), HTTP/2 sends GOAWAY.
		c.applyDrain()
	}
	e.Info.ResponseCode = status
	e.Info.ResponseStart = max(time.Since(e.Info.Start), 1)
	st.headerSent = true
	st.activity.Store(st.started + int64(e.Info.ResponseStart)) // the same clock read
	err := st.down.WriteHeader(r, end)
	if end {
		st.ended = true
		e.Info.ResponseComplete = e.Info.ResponseStart
	}
	return err
}

// requestReceived reports whether the whole request was received when the
// response begins (Envoy's remoteDecodeComplete): read to its end, or, on
// HTTP/1.1, all in the codec (see h1's RequestReceived) and not a tunnel's.
func (st *stream) requestReceived() bool {
	switch {
	case st.tunnelReq:
		return false
	case st.reqDone.Load():
		return true
	}
	rr, ok := st.down.(interface{ RequestReceived() bool })
	return ok && rr.RequestReceived()
}

// Write implements http.ServerStream.
func (st *stream) Write(p []byte) (int, error) {
	n, err := st.down.Write(p)
	if n > 0 {
		st.ex.Info.BytesSent += int64(n)
		st.activity.Store(nanotime())
	}
	return n, err
}

// End implements http.ServerStream.
func (st *stream) End() error {
	st.ended = true
	st.ex.Info.ResponseComplete = max(time.Since(st.ex.Info.Start), 1)
	return st.down.End()
}

// peerResetter is implemented by downstream streams that can tell a reset by
// the client (HTTP/2 RST_STREAM) from the connection going away.
type peerResetter interface {
	PeerReset() (http.ResetCode, bool)
}

// noteDownstreamGone flags an exchange the client cut short as Envoy's
// connection manager does: a stream the client reset is DownstreamRemoteReset
// (DR) with the codec's details, "http2.remote_reset" ("http2.remote_refuse"
// for REFUSED_STREAM, which Envoy does not flag); a connection that went away
// is DownstreamConnectionTermination (DC).
func (st *stream) noteDownstreamGone() {
	info := &st.ex.Info
	if pr, ok := st.down.(peerResetter); ok {
		if code, ok := pr.PeerReset(); ok {
			if code == http.ResetRefusedStream {
				info.ResponseCodeDetails = "http2.remote_refuse"
			} else {
				info.SetFlags(http.FlagDownstreamRemoteReset)
				info.ResponseCodeDetails = "http2.remote_reset"
			}
			return
		}
	}
	info.SetFlags(http.FlagDownstreamConnectionTermination)
}

// EndWithTrailers implements http.ServerStream.
func (st *stream) EndWithTrailers(t *http.Header) error {
	st.ended = true
	st.ex.Info.ResponseComplete = max(time.Since(st.ex.Info.Start), 1)
	if t != nil && t.Len() > 0 {
		t.CopyTo(st.ex.ResponseTrailers())
	}
	return st.down.EndWithTrailers(t)
}

// Reset implements http.ServerStream. The router resets the stream to
// stop reading a request body that is still arriving once the exchange is
// over: if a timeout of the manager's ended it and nothing was answered
// yet, the timeout's answer goes first, as in Envoy, and the reset then
// ends a stream whose response is complete.
func (st *stream) Reset(code http.ResetCode) {
	if !st.headerSent && !st.resetFlag.Load() && st.timeoutReply(st.ex.Interrupted()) {
		code = http.ResetNoError
	}
	if st.resetFlag.Swap(true) {
		return
	}
	if code != http.ResetNoError {
		st.m.stats.rqTxReset.Inc()
	}
	st.down.Reset(wireResetCode(code))
}

// wireResetCode is the code a reset of the downstream stream goes out with.
// Envoy's HTTP/2 codec (reasonToReset) sends RST_STREAM(NO_ERROR) for every
// reset reason but a refused stream (REFUSED_STREAM) and a CONNECT error
// (CONNECT_ERROR): an upstream reset after the response started, a timeout or
// a filter's reset all reach an HTTP/2 client as NO_ERROR.
func wireResetCode(code http.ResetCode) http.ResetCode {
	switch code {
	case http.ResetRefusedStream, http.ResetConnectError:
		return code
	}
	return http.ResetNoError
}

var _ http.ServerStream = (*stream)(nil)
