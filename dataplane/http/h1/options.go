package h1

import (
	"time"

	"github.com/skiffproxy/skiff/internal/bufpool"
)

// Defaults for Options' zero fields.
const (
	// DefaultMaxHeaderBytes is Envoy's max_request_headers_kb default (60 KiB).
	DefaultMaxHeaderBytes = 60 << 10
	// DefaultMaxHeaders is Envoy's max_headers_count default.
	DefaultMaxHeaders = 100
	// DefaultExpectContinueTimeout is how long the client codec holds a
	// request body back waiting for "100 Continue" (net/http's transport
	// waits as long).
	DefaultExpectContinueTimeout = time.Second
	// DefaultCloseDelay is Envoy's delayed_close_timeout default.
	DefaultCloseDelay = time.Second
)

// Options configure a connection of either side. One Options value is
// typically shared, read-only, by every connection of a listener or cluster;
// the constructors copy it.
type Options struct {
	// Buffers supplies read and write buffers. Required.
	Buffers *bufpool.Pool

	// MaxHeaderBytes limits a head: request (or status) line, header fields
	// and the empty line that ends them, counted as they arrive, line ends
	// included; and, separately, a trailer section. Larger: 431 (server), a
	// KindHeadersTooLarge error (client). Zero means DefaultMaxHeaderBytes.
	// Heads up to bufpool.Large are parsed in pooled buffers; a limit above
	// that costs a one-off allocation for each head that needs more.
	MaxHeaderBytes int
	// MaxHeaders limits the number of fields of a head, and of a trailer
	// section. More: 431 (server), a KindTooManyHeaders error (client). Zero
	// means DefaultMaxHeaders.
	MaxHeaders int

	// RequestHeadersTimeout (server) bounds the time from a request's first
	// byte to the end of its head (Envoy's request_headers_timeout). When it
	// expires the codec answers 408 and closes the connection. Zero means no
	// limit.
	RequestHeadersTimeout time.Duration
	// IdleTimeout (server) closes a connection on which no request began
	// within this time of the last response (or of its start), Envoy's
	// idle_timeout for HTTP/1.1. Zero means no limit.
	IdleTimeout time.Duration
	// CloseDelay (server) bounds how long the codec, after an error response,
	// keeps reading and discarding what the client still sends before it
	// closes, so that the client reads the response instead of a reset
	// (Envoy's delayed_close_timeout). Zero means DefaultCloseDelay; negative
	// means close at once.
	CloseDelay time.Duration

	// AllowCustomMethods (server) accepts any token as a method (Envoy's
	// http_protocol_options.allow_custom_methods). Off, as in Envoy, a
	// method other than the ones Envoy's parser knows (RFC 9110's, PATCH,
	// WebDAV's and a few more, upper case) is refused with 400.
	AllowCustomMethods bool
	// AcceptHTTP10 (server) answers HTTP/1.0 requests with an "HTTP/1.0"
	// status line, as Envoy does under accept_http_10; otherwise responses
	// say "HTTP/1.1" (the connection manager refuses HTTP/1.0 with 426).
	AcceptHTTP10 bool
	// EnableTrailers keeps HTTP/1.1 trailers (Envoy's
	// http_protocol_options.enable_trailers). Off, as in Envoy, the trailers
	// of a received chunked body are parsed and dropped (Trailers stays
	// empty), and EndWithTrailers sends none: on the server, request and
	// response trailers; on the client, response and request trailers.
	EnableTrailers bool
	// RejectUnderscores (server) refuses, with 400, a request with a header
	// field whose name has an underscore, as Envoy's codec does under
	// headers_with_underscores_action REJECT_REQUEST: as the field is parsed,
	// so before the checks of the complete head (Host, framing, ...) and
	// before the connection manager's (HTTP/1.0's 426, ...).
	RejectUnderscores bool
	// ValidateScheme (server) refuses, with 403, a request whose
	// absolute-form target is an https URL on a connection without TLS, as
	// Envoy's codec does for an edge proxy (use_remote_address with no
	// trusted hops).
	ValidateScheme bool

	// ExpectContinueTimeout (client) is how long a request body sent with
	// "expect: 100-continue" waits for "100 Continue" before it is sent
	// anyway. Zero means DefaultExpectContinueTimeout.
	ExpectContinueTimeout time.Duration
}

func (o *Options) withDefaults() Options {
	v := *o
	if v.Buffers == nil {
		panic("h1: Options.Buffers is nil")
	}
	if v.MaxHeaderBytes <= 0 {
		v.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if v.MaxHeaders <= 0 {
		v.MaxHeaders = DefaultMaxHeaders
	}
	if v.CloseDelay == 0 {
		v.CloseDelay = DefaultCloseDelay
	}
	if v.ExpectContinueTimeout <= 0 {
		v.ExpectContinueTimeout = DefaultExpectContinueTimeout
	}
	return v
}

func (o *Options) limits() limits { return limits{o.MaxHeaderBytes, o.MaxHeaders, o.EnableTrailers} }
