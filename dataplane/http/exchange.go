package http

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/bits"
	"net/netip"
	"sync"
	"time"
	"unsafe"
)

// Exchange is one request and its response as the HTTP connection manager runs
// them through its HTTP filters and the router. The manager fills it when a
// codec hands over a stream (Route included), runs the filters' OnRequest in
// order, then the router (the last filter). Response filters' OnResponse run,
// in reverse order, when the response headers go downstream: the manager's
// Downstream stream runs them inside WriteHeader, whoever answers (the router
// with the upstream's response, a filter with a local reply).
//
// A manager reuses its Exchanges (see Reset): nothing may keep a pointer to one,
// or to a string of its Headers, past the end of its request.
type Exchange struct {
	// Downstream is the request's stream: the request body is read from it and
	// the response written to it. Under the HTTP connection manager it is the
	// manager's view of the codec's stream, which runs the response filters,
	// adds the manager's response headers and keeps the StreamInfo up to date.
	Downstream ServerStream
	// Request is the request headers; filters may change them before the
	// router sees them. A filter that changes what routing depends on (the
	// :authority, the :path, a header a route matches on) sets Route to nil;
	// the router then matches again.
	Request *Header
	// Response is the response headers being built (by the router from the
	// upstream's, or by a local reply); ResponseFilters may change them.
	Response Header
	// Route is the route the request matched (a *route.Route), or nil.
	Route any
	// Info is what access logs and stats report.
	Info StreamInfo
	// LocalReplies, when set, rewrites the exchange's local replies (the
	// connection manager's local_reply_config). Reset keeps it.
	LocalReplies LocalReplyMapper
	// ALPN, when a filter sets it, chooses the protocols that TLS to the
	// upstream offers for this request (istio.alpn does).
	ALPN ALPNOverride

	ctx          context.Context
	respTrailers Header
	taps         []BodyTap // AddBodyTap's, in tapArr
	tapArr       [2]BodyTap

	// Interruption (see Interrupt).
	imu         sync.Mutex
	interrupted error
	interrupter Interrupter
	gen         uint64 // counts Resets, under imu (see InterruptGen)
}

// ALPNOverride replaces the alpn_protocols of an exchange's upstream TLS
// connection, as Envoy's envoy.network.application_protocols filter state
// does. The router asks it for the protocol it sends the request in.
type ALPNOverride interface {
	// ApplicationProtocols returns the protocols to offer to an upstream
	// spoken to in HTTP/2 (http2), else HTTP/1.0 (http10) or HTTP/1.1, and
	// a key naming that list (for connection pool lookups); nil keeps the
	// context's own.
	ApplicationProtocols(http2, http10 bool) (protos []string, key string)
}

// A BodyTap watches an exchange's body bytes as the router moves them, as
// an Envoy HTTP filter that only looks sees them in decodeData and
// encodeData (grpc_stats counts the gRPC messages). It must not keep p.
// RequestData and ResponseData may run at the same time (a request body may
// still stream while the response does), each on one goroutine at a time.
type BodyTap interface {
	// RequestData is called with each chunk of the request body as it is
	// read from the downstream stream: once, whatever retries send again.
	RequestData(p []byte)
	// ResponseData is called with each chunk of the response body as it is
	// written to the downstream stream.
	ResponseData(p []byte)
}

// AddBodyTap makes t see the exchange's body bytes from now on (a filter
// calls it from OnRequest). Reset drops the taps.
func (e *Exchange) AddBodyTap(t BodyTap) {
	e.taps = append(e.tapArr[:len(e.taps):len(e.tapArr)], t)
}

// BodyTaps are the taps AddBodyTap added (a filter finds its own at the
// end of the exchange).
func (e *Exchange) BodyTaps() []BodyTap { return e.taps }

// TapRequestBody passes p, request body bytes read from the downstream
// stream, to the exchange's taps. The router calls it.
func (e *Exchange) TapRequestBody(p []byte) {
	for _, t := range e.taps {
		t.RequestData(p)
	}
}

// TapResponseBody passes p, response body bytes written to the downstream
// stream, to the exchange's taps. The router calls it.
func (e *Exchange) TapResponseBody(p []byte) {
	for _, t := range e.taps {
		t.ResponseData(p)
	}
}

// Interrupter is what Interrupt stops: the router registers its upstream
// request, which it then abandons.
type Interrupter interface {
	// Interrupt makes the work in progress stop soon (an upstream stream is
	// reset, a wait ends). It must not block, and must not call the
	// Exchange's Interrupt, Interrupted or SetInterrupter.
	Interrupt(reason error)
}

// Interrupt ends the exchange's work early, for reason (a stream timeout of
// the connection manager): what registered with SetInterrupter is
// interrupted, and what registers later is refused. The one that interrupts
// answers downstream itself (a local reply, or a reset) once Serve returns.
func (e *Exchange) Interrupt(reason error) {
	// The interrupter runs under the lock, so that once SetInterrupter(nil)
	// returns no Interrupt reaches what was registered (the router reuses
	// its request state for other exchanges).
	e.imu.Lock()
	defer e.imu.Unlock()
	e.interruptLocked(reason)
}

func (e *Exchange) interruptLocked(reason error) {
	if e.interrupted != nil {
		return
	}
	e.interrupted = reason
	if e.interrupter != nil {
		e.interrupter.Interrupt(reason)
	}
}

// Gen is the exchange's generation: Reset changes it.
func (e *Exchange) Gen() uint64 {
	e.imu.Lock()
	defer e.imu.Unlock()
	return e.gen
}

// InterruptGen is Interrupt if the exchange is still the one of generation
// gen, not Reset for another stream since: for a timer or callback that
// decided to interrupt the exchange it saw and may run after an Exchange
// that is reused (the connection manager's) moved on to the next one.
func (e *Exchange) InterruptGen(gen uint64, reason error) {
	e.imu.Lock()
	defer e.imu.Unlock()
	if e.gen == gen {
		e.interruptLocked(reason)
	}
}

// Interrupted returns the reason Interrupt gave, or nil.
func (e *Exchange) Interrupted() error {
	e.imu.Lock()
	defer e.imu.Unlock()
	return e.interrupted
}

// SetInterrupter makes i what Interrupt interrupts (nil: nothing). It
// returns the reason if the exchange was interrupted already, in which case
// i is not registered and its work should not start.
func (e *Exchange) SetInterrupter(i Interrupter) error {
	e.imu.Lock()
	defer e.imu.Unlock()
	if e.interrupted != nil {
		return e.interrupted
	}
	e.interrupter = i
	return nil
}

// Random returns a pseudo-random value fixed for the exchange: the same each
// time it is asked with the same salt during one exchange, different from one
// exchange to the next. Filters whose decisions must agree across the
// exchange (a fraction sampled in OnRequest and looked at again in
// OnResponse; the weighted cluster a filter looks up and the one the router
// picks) use it, since a Filter keeps no per-stream state; salt decorrelates
// unrelated decisions.
func (e *Exchange) Random(salt uint64) uint64 {
	x := uint64(e.Info.Start.UnixNano()) ^ uint64(uintptr(unsafe.Pointer(e)))<<1 ^ salt
	// splitmix64's finalizer.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// NewExchange returns an Exchange for a stream, or for no stream (s nil: a
// connection's access log entry) under ctx. A nil ctx means s's own.
func NewExchange(ctx context.Context, s ServerStream) *Exchange {
	e := new(Exchange)
	e.Reset(s)
	e.ctx = ctx
	return e
}

// Reset readies e for a new stream, keeping the memory of its Response
// headers: a connection manager reuses Exchanges, so that a request costs no
// allocation. The exchange's context is s's, asked for only when Context is
// called: most exchanges never need it, and an HTTP/2 stream makes its
// context (a cancelable child of its connection's) on the first request.
func (e *Exchange) Reset(s ServerStream) {
	resp, tr := e.Response, e.respTrailers
	resp.Reset()
	tr.Reset()
	e.imu.Lock()
	e.interrupted, e.interrupter = nil, nil
	e.gen++
	e.imu.Unlock()
	e.Downstream, e.Request, e.Response, e.Route, e.Info, e.ctx, e.ALPN = s, nil, resp, nil, StreamInfo{}, nil, nil
	e.respTrailers = tr
	e.tapArr, e.taps = [2]BodyTap{}, nil
	if s != nil {
		e.Request = s.Header()
		e.Info.Protocol = s.Protocol()
	}
	e.Info.Start = time.Now()
}

// ResponseTrailers are the trailers the response ended with, as the
// connection manager recorded them (for access logs); empty if none.
func (e *Exchange) ResponseTrailers() *Header { return &e.respTrailers }

// Context is canceled when the exchange must end (the downstream went away,
// the stream was reset, or skiff is closing the connection).
func (e *Exchange) Context() context.Context {
	if e.ctx != nil {
		return e.ctx
	}
	return e.Downstream.Context() // NewExchange without a stream has a ctx
}

// IsGRPC reports whether the request is a gRPC call (see IsGRPC).
func (e *Exchange) IsGRPC() bool { return e.Request != nil && IsGRPC(e.Request) }

// Action is what a filter's OnRequest says happens next.
type Action int

// Actions.
const (
	// Continue passes the request to the next filter.
	Continue Action = iota
	// Stop ends the chain: the filter answered (LocalReply, or Downstream's
	// WriteHeader) or reset the stream. A filter that returns Stop having only
	// set Response (with a :status) has that sent for it, without a body; one
	// that did neither has its stream reset.
	Stop
)

// Filter is an HTTP filter (Envoy's decoder filter): it sees every request
// of its HTTP connection manager. A Filter value serves all streams
// concurrently and keeps no per-stream state of its own. OnRequest runs on the
// stream's goroutine and may block (a fault delay), watching e.Context().
type Filter interface {
	OnRequest(e *Exchange) Action
}

// ResponseFilter is a Filter that also sees response headers (Envoy's encoder
// filter), just before they are sent downstream, local replies included. It
// may change e.Response, and read e.Info (ResponseCode is not yet set).
type ResponseFilter interface {
	Filter
	OnResponse(e *Exchange)
}

// CompleteFilter is a Filter that also sees the end of each exchange, once
// the response is complete (or the stream was reset), just before the
// access logs are written: e.Info is final and ResponseTrailers holds the
// response trailers. OnComplete must not block. The filter Registry does not
// gate it by route: a CompleteFilter is RouteAware and checks its route
// itself.
type CompleteFilter interface {
	Filter
	OnComplete(e *Exchange)
}

// Terminal is the filter that answers the request: the router. It must be
// the last of the chain.
type Terminal interface {
	Filter
	// Serve sends the request upstream (or answers it) and streams the
	// response back through e.Downstream, whose WriteHeader runs the response
	// filters. It returns when the exchange is over.
	Serve(e *Exchange)
}

// DetailsViaUpstream is the response code details of a response that came
// from the upstream (Envoy's ResponseCodeDetails::ViaUpstream); any other
// details are a local reply's or a reset's.
const DetailsViaUpstream = "via_upstream"

// ResponseFlag is one of Envoy's response flags (%RESPONSE_FLAGS%): why a
// response is not simply the upstream's.
type ResponseFlag uint32

// Response flags, with Envoy's short names (see ResponseFlag.String).
const (
	FlagNoHealthyUpstream                ResponseFlag = 1 << iota // UH
	FlagUpstreamConnectionFailure                                 // UF
	FlagUpstreamOverflow                                          // UO
	FlagNoRouteFound                                              // NR
	FlagUpstreamRequestTimeout                                    // UT
	FlagLocalReset                                                // LR
	FlagUpstreamRemoteReset                                       // UR
	FlagUpstreamConnectionTermination                             // UC
	FlagDownstreamConnectionTermination                           // DC
	FlagFaultInjected                                             // FI
	FlagDelayInjected                                             // DI
	FlagRateLimited                                               // RL
	FlagUnauthorized                                              // UAEX
	FlagStreamIdleTimeout                                         // SI
	FlagNoClusterFound                                            // NC
	FlagDownstreamProtocolError                                   // DPE
	FlagUpstreamRetryLimitExceeded                                // URX
	FlagDurationTimeout                                           // DT
	FlagUpstreamProtocolError                                     // UPE
	FlagRBACDenied                                                // RBAC (Envoy: UnauthorizedExternalService is UAEX)
	FlagUpstreamMaxStreamDurationReached                          // UMSDR
	FlagOverloadManager                                           // OM
	FlagFailedLocalHealthCheck                                    // LH
	FlagDownstreamRemoteReset                                     // DR
)

var flagNames = [...]string{"UH", "UF", "UO", "NR", "UT", "LR", "UR", "UC", "DC", "FI", "DI", "RL", "UAEX", "SI", "NC", "DPE", "URX", "DT", "UPE", "RBAC", "UMSDR", "OM", "LH", "DR"}

var flagLongNames = [...]string{
	"NoHealthyUpstream", "UpstreamConnectionFailure", "UpstreamOverflow", "NoRouteFound",
	"UpstreamRequestTimeout", "LocalReset", "UpstreamRemoteReset", "UpstreamConnectionTermination",
	"DownstreamConnectionTermination", "FaultInjected", "DelayInjected", "RateLimited",
	"UnauthorizedExternalService", "StreamIdleTimeout", "NoClusterFound", "DownstreamProtocolError",
	"UpstreamRetryLimitExceeded", "DurationTimeout", "UpstreamProtocolError", "RbacAccessDenied",
	"UpstreamMaxStreamDurationReached", "OverloadManagerTerminated", "FailedLocalHealthCheck",
	"DownstreamRemoteReset",
}

// String renders the flags as Envoy's %RESPONSE_FLAGS% does: short names joined
// by commas, or "-" for none.
func (f ResponseFlag) String() string {
	if f == 0 {
		return "-"
	}
	return string(f.Append(nil, false))
}

// Append appends the flags as %RESPONSE_FLAGS% (long: %RESPONSE_FLAGS_LONG%)
// renders them, in their fixed order, "-" for none, without allocating beyond
// dst's growth. StreamInfo.AppendResponseFlags renders an exchange's flags in
// the order they were set, as Envoy does.
func (f ResponseFlag) Append(dst []byte, long bool) []byte {
	if f == 0 {
		return append(dst, '-')
	}
	return f.appendNames(dst, long, false)
}

// appendNames appends the names of f's flags in their fixed order, each after
// a comma unless it is the first and first is false.
func (f ResponseFlag) appendNames(dst []byte, long, comma bool) []byte {
	for ; f != 0; f &= f - 1 {
		dst = appendFlagName(dst, bits.TrailingZeros32(uint32(f)), long, comma)
		comma = true
	}
	return dst
}

func appendFlagName(dst []byte, i int, long, comma bool) []byte {
	if comma {
		dst = append(dst, ',')
	}
	if long {
		return append(dst, flagLongNames[i]...)
	}
	return append(dst, flagNames[i]...)
}

// SetFlags adds f to ResponseFlags and records the order in which each flag
// was first set, in which Envoy renders %RESPONSE_FLAGS% (a delay injected
// and then an upstream connect failure: "DI,UF").
func (si *StreamInfo) SetFlags(f ResponseFlag) {
	for n := f &^ si.ResponseFlags; n != 0 && int(si.nFlags) < len(si.flagOrder); n &= n - 1 {
		si.flagOrder[si.nFlags] = uint8(bits.TrailingZeros32(uint32(n)))
		si.nFlags++
	}
	si.ResponseFlags |= f
}

// AppendResponseFlags appends %RESPONSE_FLAGS% (long: %RESPONSE_FLAGS_LONG%):
// the flags in the order SetFlags set them, then any set in ResponseFlags
// directly, in their fixed order; "-" for none.
func (si *StreamInfo) AppendResponseFlags(dst []byte, long bool) []byte {
	rest := si.ResponseFlags
	if rest == 0 {
		return append(dst, '-')
	}
	comma := false
	for _, i := range si.flagOrder[:si.nFlags] {
		if bit := ResponseFlag(1) << i; rest&bit != 0 { // (not cleared since)
			dst = appendFlagName(dst, int(i), long, comma)
			comma, rest = true, rest&^bit
		}
	}
	return rest.appendNames(dst, long, comma)
}

// StreamInfo is what is known about an exchange, for access logs and stats
// (Envoy's StreamInfo). Strings in it point into the exchange's Headers or
// into configuration, and are valid as long as the exchange is.
type StreamInfo struct {
	Start    time.Time
	Duration time.Duration // from Start to the end of the exchange
	Protocol string

	// RequestComplete is when the request's last byte arrived, and
	// ResponseStart and ResponseComplete when the response's first and last
	// were sent, as offsets from Start (0: not yet, or never).
	RequestComplete, ResponseStart, ResponseComplete time.Duration
	// UpstreamStart is when the first upstream attempt began, and
	// UpstreamResponseStart when its response headers arrived (offsets from
	// Start; 0: never).
	UpstreamStart, UpstreamResponseStart time.Duration

	ConnectionID                      uint64
	DownstreamRemote, DownstreamLocal netip.AddrPort
	// DownstreamLocalRestored: DownstreamLocal is the original destination a
	// listener filter restored (original_dst), which ORIGINAL_DST clusters
	// connect to.
	DownstreamLocalRestored bool
	// DownstreamDirectRemote is the socket peer, whatever PROXY protocol or
	// x-forwarded-for say DownstreamRemote is.
	DownstreamDirectRemote netip.AddrPort
	RequestedServerName    string
	// DownstreamTLS is the downstream connection's TLS session, nil on a
	// plain connection; DownstreamLocalCert the certificate skiff presented.
	DownstreamTLS       *tls.ConnectionState
	DownstreamLocalCert *x509.Certificate

	RouteName       string
	VirtualHostName string
	UpstreamCluster string
	UpstreamHost    netip.AddrPort
	// UpstreamPipe is the unix socket path of an upstream host with a pipe
	// address (UpstreamHost is then the zero AddrPort).
	UpstreamPipe  string
	UpstreamLocal netip.AddrPort
	// UpstreamTLS is the upstream connection's TLS session, nil on a plain
	// one; UpstreamLocalCert the client certificate skiff has for it.
	UpstreamTLS       *tls.ConnectionState
	UpstreamLocalCert *x509.Certificate
	// UpstreamTransportFailureReason says why the last connection attempt
	// failed, e.g. "delayed connect error: Connection refused".
	UpstreamTransportFailureReason string

	ResponseCode int
	// ResponseFlags are the response flags set so far; set them with
	// SetFlags, which also records their order for %RESPONSE_FLAGS%.
	ResponseFlags       ResponseFlag
	flagOrder           [len(flagNames)]uint8 // bit numbers, in the order SetFlags first set them
	nFlags              uint8
	ResponseCodeDetails string // e.g. "via_upstream", "route_not_found"
	// LocalReplyBody is the body of a local reply, before any body format
	// (Envoy's %LOCAL_REPLY_BODY%).
	LocalReplyBody string
	// HealthCheck says the request is a health check (the health_check
	// filter matched it), which access logs' not_health_check_filter skips.
	HealthCheck bool

	BytesReceived, BytesSent int64
	RequestID                string
	UpstreamAttempts         int

	// FilterState is what filters record of the exchange for a later phase
	// of it (Envoy's filter state), by key; nil until one does.
	FilterState map[string]any
}

// SetFilterState records v under key in FilterState.
func (i *StreamInfo) SetFilterState(key string, v any) {
	if i.FilterState == nil {
		i.FilterState = make(map[string]any, 1)
	}
	i.FilterState[key] = v
}
