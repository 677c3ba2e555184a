package http

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
)

// ResetCode says why a stream was reset; HTTP/2 sends it as RST_STREAM's error
// code (RFC 9113 section 7), HTTP/1.1 closes the connection.
type ResetCode uint32

// Reset codes, with HTTP/2's values (RFC 9113 section 7).
const (
	ResetNoError            ResetCode = 0x0
	ResetProtocolError      ResetCode = 0x1
	ResetInternalError      ResetCode = 0x2
	ResetFlowControlError   ResetCode = 0x3
	ResetSettingsTimeout    ResetCode = 0x4
	ResetStreamClosed       ResetCode = 0x5
	ResetFrameSizeError     ResetCode = 0x6
	ResetRefusedStream      ResetCode = 0x7
	ResetCancel             ResetCode = 0x8
	ResetCompressionError   ResetCode = 0x9
	ResetConnectError       ResetCode = 0xa
	ResetEnhanceYourCalm    ResetCode = 0xb
	ResetInadequateSecurity ResetCode = 0xc
	ResetHTTP11Required     ResetCode = 0xd
)

var resetNames = [...]string{
	"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
	"STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
	"CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
}

// String names the code as RFC 9113 does (PROTOCOL_ERROR, ...).
func (c ResetCode) String() string {
	if int(c) < len(resetNames) {
		return resetNames[c]
	}
	return "unknown error code"
}

// Errors the codecs share, so that the router can tell what happened to an
// upstream stream without knowing which codec carried it.
var (
	// ErrConnClosed is found (errors.Is) in the error of ClientConn.NewStream
	// when the connection takes no more streams, and in the errors of stream
	// operations when the connection ended under them.
	ErrConnClosed = errors.New("http: connection closed")
	// ErrNotProcessed is found (errors.Is) in the error of a client stream the
	// upstream did not process at all: HTTP/2's REFUSED_STREAM, or a GOAWAY
	// below the stream's id. The request is safe to retry elsewhere, whatever
	// its method (RFC 9113 section 8.7).
	ErrNotProcessed = errors.New("http: request not processed by the upstream (safe to retry)")
)

// A Refusal is the error of a request a server codec refused part-way
// through its body (a malformed chunk, too many trailers): the connection
// manager answers it with RefusalStatus, so whoever reads the body (the
// router) must not take it for the client going away.
type Refusal interface {
	error
	// RefusalStatus is the status the request is answered with, 0 if none
	// (then the error is no refusal).
	RefusalStatus() int
}

// IsRefusal reports whether err, or an error it wraps, is a Refusal with a
// status.
func IsRefusal(err error) bool {
	var r Refusal
	return errors.As(err, &r) && r.RefusalStatus() != 0
}

// ServerStream is one request arriving on a downstream connection and the
// response to it, as a server codec presents them. A codec hands each stream to
// a Handler on its own goroutine (HTTP/1.1 one at a time per connection, in
// order; HTTP/2 concurrently) and finishes the stream when ServeStream returns.
//
// The request side: Header is complete when the stream is handed over; the body
// is read with Read until io.EOF; Trailers are valid after that (and may be
// empty). The response side: WriteHeader once (informational 1xx responses
// aside), then Write for the body, then End or EndWithTrailers; or Reset.
// The two sides may be used from two goroutines at once, each side calling
// its methods in order.
type ServerStream interface {
	// Header returns the request headers, with :method, :path, :authority and
	// :scheme (HTTP/1.1's request line and Host are presented this way too).
	Header() *Header
	// EndedWithHeader reports whether the request ended with its header: it
	// has no body and no trailers (HTTP/2 END_STREAM on HEADERS; HTTP/1.1
	// without Content-Length or Transfer-Encoding, or with Content-Length 0).
	// A proxy passes it on as WriteHeader's end.
	EndedWithHeader() bool
	// Read reads the request body.
	Read(p []byte) (int, error)
	// Trailers returns the request trailers once Read returned io.EOF.
	Trailers() *Header
	// WriteHeader sends the response headers (with :status). If end is true
	// the response has no body.
	WriteHeader(h *Header, end bool) error
	// Write sends response body bytes.
	Write(p []byte) (int, error)
	// End ends the response (after WriteHeader and any Write).
	End() error
	// EndWithTrailers ends the response with trailers.
	EndWithTrailers(t *Header) error
	// Reset abandons the stream: HTTP/2 sends RST_STREAM, HTTP/1.1 closes the
	// connection after whatever was written. Reset(ResetNoError) after End is
	// HTTP/2's polite "stop sending the request" (RFC 9113 section 8.1).
	Reset(code ResetCode)
	// Context is canceled when the downstream goes away or the stream is reset.
	Context() context.Context
	// Protocol is "HTTP/1.0", "HTTP/1.1" or "HTTP/2".
	Protocol() string
}

// GoneNotifier is implemented by server streams that can report, without a
// context, that they ended abnormally (the peer reset the stream, the
// connection ended) while the handler held them. It spares a connection
// manager the context.AfterFunc on Context that it would otherwise pay for
// per stream.
type GoneNotifier interface {
	// NotifyGone makes f run, on a goroutine of its own, when the stream ends
	// abnormally before the handler returns, or at once if it already has;
	// f runs at most once. NotifyGone(nil) withdraws it and returns once a
	// call of f already started has returned: after it f does not run, so
	// that what f works on can be reused (must not be called from f).
	NotifyGone(f func())
}

// Handler serves the streams of a downstream connection.
type Handler interface {
	ServeStream(s ServerStream)
}

// ServerCodec runs the downstream side of a connection: it reads requests and
// hands each to h until the connection ends, ctx is canceled, or Drain is
// called and the streams in flight are done.
type ServerCodec interface {
	// Serve runs until the connection is done and closes it.
	Serve(ctx context.Context, conn net.Conn, h Handler) error
	// Drain asks the connection to end gracefully: HTTP/2 sends GOAWAY,
	// HTTP/1.1 answers the request in flight with "Connection: close".
	Drain()
}

// ClientStream is one request sent on an upstream connection and the
// response to it, as a client codec presents them: the mirror of ServerStream.
// The request side (WriteHeader, Write, End) and the response side
// (ReadHeader, Read) may run on two goroutines at once.
//
// A stream is finished when the request was ended and the response body read
// to io.EOF, or abandoned with Reset; either way its user calls Close once it
// is done with it, which gives the stream's memory back to its connection.
type ClientStream interface {
	// WriteHeader sends the request headers (with the pseudo-headers; an
	// HTTP/1.1 codec turns them into the request line and Host). If end is true
	// the request has no body.
	WriteHeader(h *Header, end bool) error
	// Write sends request body bytes.
	Write(p []byte) (int, error)
	// End ends the request; EndWithTrailers ends it with trailers.
	End() error
	EndWithTrailers(t *Header) error
	// ReadHeader waits for the response headers (with :status). Informational
	// 1xx responses other than 101 are consumed by the codec (100 Continue
	// releases a request body held back by "Expect: 100-continue").
	ReadHeader() (*Header, error)
	// EndedWithHeader reports, after ReadHeader, whether the response ended
	// with its header (no body, no trailers): gRPC's trailers-only responses
	// keep their shape when a proxy passes it on as WriteHeader's end.
	EndedWithHeader() bool
	// Read reads the response body; Trailers are valid after io.EOF.
	Read(p []byte) (int, error)
	Trailers() *Header
	// Reset abandons the stream.
	Reset(code ResetCode)
	// Close ends the caller's use of the stream: one not finished is reset
	// (CANCEL). No method may be called after it; Close is idempotent.
	Close() error
}

// HeaderExchanger is implemented by client streams that can send a request
// without a body and wait for its response head as one step, in fewer system
// calls than WriteHeader(h, true) and ReadHeader make: the HTTP/1.1 codec on a
// raw TCP connection (netio.Conn) writes the request and waits for the answer
// without first trying a read that could only fail.
type HeaderExchanger interface {
	// ExchangeHeader does what WriteHeader(h, true) followed by ReadHeader
	// would, with their errors; sent reports whether the request was written
	// (an error with sent false is WriteHeader's).
	ExchangeHeader(h *Header) (resp *Header, sent bool, err error)
}

// ClientConn is an upstream connection that carries streams: one at a time
// (HTTP/1.1) or many (HTTP/2).
type ClientConn interface {
	// NewStream opens a stream. It fails with ErrConnClosed (wrapped) if the
	// connection can take no more streams.
	NewStream(ctx context.Context) (ClientStream, error)
	// Available reports whether NewStream would succeed now (an HTTP/1.1
	// connection is available when idle; HTTP/2 below max concurrent streams and
	// not going away).
	Available() bool
	// Close closes the connection.
	Close() error
}

// PeerGone reports whether err, from a read or a write on a connection,
// means that its peer closed or reset it: the end of the stream, or a
// reset. A connection that ended so is Envoy's RemoteClose, which its
// connection pools count in upstream_cx_destroy_remote; one this side
// closed (a response that ends it, a protocol error, a reset stream) is a
// LocalClose, counted in upstream_cx_destroy_local.
func PeerGone(err error) bool {
	return err != nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
}

// BodyReader is the part of a stream the router reads a body from.
type BodyReader interface {
	io.Reader
	Trailers() *Header
}
