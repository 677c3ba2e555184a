package http

import (
	"context"
	"net/netip"
	"time"
)

// Exchange is one request and its response as the HTTP connection manager runs
// them through its HTTP filters and the router. The manager creates it when a
// codec hands over a stream, fills Route, runs the filters' OnRequest in order,
// then the router (the last filter), and runs ResponseFilters' OnResponse, in
// reverse order, just before response headers go downstream.
type Exchange struct {
	// Downstream is the codec's stream: the request body is read from it and the
	// response written to it.
	Downstream ServerStream
	// Request is the request headers; filters may change them before the
	// router sees them.
	Request *Header
	// Response is the response headers being built (by the router from the
	// upstream's, or by a local reply); ResponseFilters may change them.
	Response Header
	// Route is the route the request matched (a *route.Route), or nil.
	Route any
	// Info is what access logs and stats report.
	Info StreamInfo

	ctx context.Context
}

// NewExchange returns an Exchange for a stream.
func NewExchange(ctx context.Context, s ServerStream) *Exchange {
	return &Exchange{Downstream: s, Request: s.Header(), ctx: ctx, Info: StreamInfo{Start: time.Now(), Protocol: s.Protocol()}}
}

// Context is canceled when the exchange must end (the downstream went away,
// the stream was reset, or skiff is closing the connection).
func (e *Exchange) Context() context.Context { return e.ctx }

// Action is what a filter's OnRequest says happens next.
type Action int

// Actions.
const (
	// Continue passes the request to the next filter.
	Continue Action = iota
	// Stop ends the chain: the filter answered (a local reply) or reset the
	// stream.
	Stop
)

// Filter is an HTTP filter (Envoy's decoder filter): it sees every request
// of its HTTP connection manager. A Filter value serves all streams
// concurrently and keeps no per-stream state of its own.
type Filter interface {
	OnRequest(e *Exchange) Action
}

// ResponseFilter is a Filter that also sees response headers (Envoy's encoder
// filter), just before they are sent downstream.
type ResponseFilter interface {
	Filter
	OnResponse(e *Exchange)
}

// Terminal is the filter that answers the request: the router. It must be
// the last of the chain.
type Terminal interface {
	Filter
	// Serve sends the request upstream (or answers it) and streams the response
	// back, running respond just before the response headers are sent.
	Serve(e *Exchange, respond func(*Exchange))
}

// ResponseFlag is one of Envoy's response flags (%RESPONSE_FLAGS%): why a
// response is not simply the upstream's.
type ResponseFlag uint32

// Response flags, with Envoy's short names (see ResponseFlag.String).
const (
	FlagNoHealthyUpstream               ResponseFlag = 1 << iota // UH
	FlagUpstreamConnectionFailure                                // UF
	FlagUpstreamOverflow                                         // UO
	FlagNoRouteFound                                             // NR
	FlagUpstreamRequestTimeout                                   // UT
	FlagLocalReset                                               // LR
	FlagUpstreamRemoteReset                                      // UR
	FlagUpstreamConnectionTermination                            // UC
	FlagDownstreamConnectionTermination                          // DC
	FlagFaultInjected                                            // FI
	FlagDelayInjected                                            // DI
	FlagRateLimited                                              // RL
	FlagUnauthorized                                             // UAEX
	FlagStreamIdleTimeout                                        // SI
	FlagNoClusterFound                                           // NC
	FlagDownstreamProtocolError                                  // DPE
	FlagUpstreamRetryLimitExceeded                               // URX
	FlagDurationTimeout                                          // DT
)

var flagNames = [...]string{"UH", "UF", "UO", "NR", "UT", "LR", "UR", "UC", "DC", "FI", "DI", "RL", "UAEX", "SI", "NC", "DPE", "URX", "DT"}

// String renders the flags as Envoy's %RESPONSE_FLAGS% does: short names joined
// by commas, or "-" for none.
func (f ResponseFlag) String() string {
	if f == 0 {
		return "-"
	}
	var b []byte
	for i, name := range flagNames {
		if f&(1<<i) != 0 {
			if len(b) > 0 {
				b = append(b, ',')
			}
			b = append(b, name...)
		}
	}
	return string(b)
}

// StreamInfo is what is known about an exchange, for access logs and stats
// (Envoy's StreamInfo).
type StreamInfo struct {
	Start    time.Time
	Duration time.Duration
	Protocol string

	DownstreamRemote, DownstreamLocal netip.AddrPort

	RouteName       string
	UpstreamCluster string
	UpstreamHost    netip.AddrPort

	ResponseCode        int
	ResponseFlags       ResponseFlag
	ResponseCodeDetails string // e.g. "via_upstream", "route_not_found"

	BytesReceived, BytesSent int64
	RequestID                string
	UpstreamAttempts         int
}
