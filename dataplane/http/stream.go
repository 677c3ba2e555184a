package http

import (
	"context"
	"io"
	"net"
)

// ResetCode says why a stream was reset; HTTP/2 sends it as RST_STREAM's error
// code (RFC 9113 section 7), HTTP/1.1 closes the connection.
type ResetCode uint32

// Reset codes, with HTTP/2's values.
const (
	ResetNoError       ResetCode = 0x0
	ResetProtocolError ResetCode = 0x1
	ResetInternalError ResetCode = 0x2
	ResetRefusedStream ResetCode = 0x7
	ResetCancel        ResetCode = 0x8
)

// ServerStream is one request arriving on a downstream connection and the
// response to it, as a server codec presents them. A codec hands each stream to
// a Handler on its own goroutine (HTTP/1.1 one at a time per connection, in
// order; HTTP/2 concurrently) and finishes the stream when ServeStream returns.
//
// The request side: Header is complete when the stream is handed over; the body
// is read with Read until io.EOF; Trailers are valid after that (and may be
// empty). The response side: WriteHeader once (informational 1xx responses
// aside), then Write for the body, then End or EndWithTrailers; or Reset.
type ServerStream interface {
	// Header returns the request headers, with :method, :path, :authority and
	// :scheme (HTTP/1.1's request line and Host are presented this way too).
	Header() *Header
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
	// connection after whatever was written.
	Reset(code ResetCode)
	// Context is canceled when the downstream goes away or the stream is reset.
	Context() context.Context
	// Protocol is "HTTP/1.0", "HTTP/1.1" or "HTTP/2".
	Protocol() string
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

// ClientStream is one request sent on an upstream connection and the response
// to it, as a client codec presents them: the mirror of ServerStream.
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
	// Read reads the response body; Trailers are valid after io.EOF.
	Read(p []byte) (int, error)
	Trailers() *Header
	// Reset abandons the stream.
	Reset(code ResetCode)
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

// BodyReader is the part of a stream the router reads a body from.
type BodyReader interface {
	io.Reader
	Trailers() *Header
}
