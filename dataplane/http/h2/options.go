package h2

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/skiffproxy/skiff/internal/bufpool"
)

// Defaults. They are Envoy's: config.core.v3.Http2ProtocolOptions for the
// stream limit and the windows, and the HTTP connection manager's
// max_request_headers_kb (60 KiB) for the header list.
const (
	DefaultMaxConcurrentStreams        = 1024     // max_concurrent_streams
	DefaultInitialStreamWindowSize     = 16 << 20 // initial_stream_window_size (16 MiB)
	DefaultInitialConnectionWindowSize = 24 << 20 // initial_connection_window_size (24 MiB)
	DefaultMaxHeaderListSize           = 60 << 10 // max_request_headers_kb (60 KiB)
	DefaultDrainTimeout                = 5 * time.Second
	DefaultMaxHeaders                  = 100 // max_headers_count
)

// Limits of the options, from RFC 9113 (and Envoy, which does not accept
// windows below the protocol's initial 65,535 bytes).
const (
	MinWindowSize = 65535
	MaxWindowSize = 1<<31 - 1
)

// ServerOptions configure the downstream side. The zero value takes the
// defaults.
type ServerOptions struct {
	// MaxConcurrentStreams is SETTINGS_MAX_CONCURRENT_STREAMS: streams beyond
	// it are refused with REFUSED_STREAM. Default 1024 (Envoy's); the protocol
	// allows up to 2^31-1.
	MaxConcurrentStreams uint32
	// InitialStreamWindowSize is SETTINGS_INITIAL_WINDOW_SIZE: how much request
	// body a stream may have in flight, received but not yet read by the
	// handler. Default 16 MiB.
	InitialStreamWindowSize uint32
	// InitialConnectionWindowSize is the same for all streams together.
	// Default 24 MiB.
	InitialConnectionWindowSize uint32
	// MaxHeaderListSize is SETTINGS_MAX_HEADER_LIST_SIZE, measured as RFC 9113
	// does (name + value + 32 bytes per field). A request (or trailer) block
	// over it has its stream reset with RST_STREAM(INTERNAL_ERROR) without
	// reaching the handler, as Envoy does. Default 60 KiB.
	MaxHeaderListSize uint32
	// MaxHeaders limits the fields of a request header (pseudo-header fields
	// included) or trailer block (Envoy's max_headers_count): more, and the
	// stream is reset like one over MaxHeaderListSize. Default 100.
	MaxHeaders int
	// StreamErrorOnInvalidHTTPMessage makes a malformed request (RFC 9113
	// section 8.1.1: a connection-specific field, "te" other than
	// "trailers", an upper-case name, a pseudo-header field after a regular
	// one or missing, a content-length the DATA frames contradict, a second
	// header block that does not end the stream or carries pseudo-header
	// fields) reset only its stream, with RST_STREAM(PROTOCOL_ERROR). Off,
	// as in Envoy, such a request ends the connection: GOAWAY(PROTOCOL_ERROR),
	// then close. It is Envoy's http2_protocol_options
	// override_stream_error_on_invalid_http_message.
	StreamErrorOnInvalidHTTPMessage bool
	// IdleTimeout closes the connection (GOAWAY, then close) once it has had no
	// open stream for this long. 0 disables it.
	IdleTimeout time.Duration
	// DrainTimeout bounds the wait, after Drain's first GOAWAY, for the PING
	// that measures a round trip before the final GOAWAY. Default 5 s (Envoy's
	// drain_timeout).
	DrainTimeout time.Duration
	// RequestHeadersTimeout bounds the time from the HEADERS frame that opens
	// a stream to the end of its header block (Envoy's request_headers_timeout):
	// a block still open then has its stream reset with RST_STREAM(NO_ERROR),
	// as Envoy does, and OnRequestHeadersTimeout is called. The rest of the
	// block, if it comes, is decoded (HPACK stays in step) and dropped. 0
	// disables it.
	RequestHeadersTimeout time.Duration
	// OnRequestHeadersTimeout, if set, is called (on a timer's goroutine) for
	// each stream reset by RequestHeadersTimeout.
	OnRequestHeadersTimeout func()
	// Buffers is the pool buffers come from. Nil: a pool of the Server's own.
	Buffers *bufpool.Pool
	// Logger logs connection errors at debug level. Nil: slog.Default().
	Logger *slog.Logger
}

// ClientOptions configure the upstream side. The zero value takes the
// defaults.
type ClientOptions struct {
	// MaxConcurrentStreams caps the streams open at once; the server's
	// SETTINGS_MAX_CONCURRENT_STREAMS lowers it further (until the server's
	// SETTINGS arrive, 100 is assumed, as RFC 9113 recommends as a minimum).
	// Default 1024.
	MaxConcurrentStreams uint32
	// InitialStreamWindowSize and InitialConnectionWindowSize are how much
	// response body may be in flight, per stream and for the connection,
	// unread by the caller. Defaults 16 MiB and 24 MiB.
	InitialStreamWindowSize     uint32
	InitialConnectionWindowSize uint32
	// MaxHeaderListSize bounds response headers (and trailers), as for
	// ServerOptions. Default 60 KiB.
	MaxHeaderListSize uint32
	// Buffers is the pool buffers come from. Nil: a pool of the connection's
	// own.
	Buffers *bufpool.Pool
	// Logger logs connection errors at debug level. Nil: slog.Default().
	Logger *slog.Logger
}

// settings are the resolved options shared by both sides.
type settings struct {
	maxStreams    uint32
	streamWindow  uint32
	connWindow    uint32
	maxHeaderList uint32
	idleTimeout   time.Duration
	drainTimeout  time.Duration
	maxHeaders    int           // server: MaxHeaders
	streamErrors  bool          // malformed messages reset the stream only
	hdrTimeout    time.Duration // server: RequestHeadersTimeout
	onHdrTimeout  func()
	bufs          *bufpool.Pool
	log           *slog.Logger
}

func resolve(maxStreams, streamWindow, connWindow, maxHeaderList uint32, bufs *bufpool.Pool, log *slog.Logger) (settings, error) {
	s := settings{
		maxStreams:    def(maxStreams, DefaultMaxConcurrentStreams),
		streamWindow:  def(streamWindow, DefaultInitialStreamWindowSize),
		connWindow:    def(connWindow, DefaultInitialConnectionWindowSize),
		maxHeaderList: def(maxHeaderList, DefaultMaxHeaderListSize),
		bufs:          bufs,
		log:           log,
	}
	if s.maxStreams > MaxWindowSize {
		return s, fmt.Errorf("h2: max concurrent streams %d above 2^31-1", s.maxStreams)
	}
	for _, w := range []struct {
		name string
		v    uint32
	}{{"initial stream window size", s.streamWindow}, {"initial connection window size", s.connWindow}} {
		if w.v < MinWindowSize || w.v > MaxWindowSize {
			return s, fmt.Errorf("h2: %s %d out of range [%d, %d]", w.name, w.v, MinWindowSize, MaxWindowSize)
		}
	}
	if s.maxHeaderList < 1024 {
		return s, fmt.Errorf("h2: max header list size %d below 1024", s.maxHeaderList)
	}
	if s.bufs == nil {
		s.bufs = bufpool.New()
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s, nil
}

func def(v, d uint32) uint32 {
	if v == 0 {
		return d
	}
	return v
}
