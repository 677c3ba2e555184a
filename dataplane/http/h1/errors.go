package h1

import (
	"errors"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// Kind says what went wrong with a message or a connection. Kind.String is a
// stable lower-case name, fit for a stat or a log field.
type Kind uint8

// Kinds of Error.
const (
	// KindMalformed: a request line, status line, header field, chunk or
	// trailer that breaks RFC 9112's grammar or carries a forbidden byte
	// (a control character, a bare CR or LF, obs-fold, whitespace before a
	// colon, a fragment or non-ASCII byte in the request target, an invalid
	// Host), a method Envoy's parser does not know (see
	// Options.AllowCustomMethods), or an underscore in a header name under
	// Options.RejectUnderscores. Server: 400.
	KindMalformed Kind = iota + 1
	// KindFraming: a message whose length cannot be determined safely, the
	// request-smuggling family: Content-Length with Transfer-Encoding, more
	// than one Content-Length field or a value that is not one decimal
	// number, a body on CONNECT (400); a request Transfer-Encoding other than
	// one field saying "chunked" (501, as Envoy answers); a response
	// Transfer-Encoding other than chunked alone.
	KindFraming
	// KindHeadersTooLarge: the head (request or status line, header fields
	// and the empty line) or a trailer section is longer than
	// Options.MaxHeaderBytes. Server: 431.
	KindHeadersTooLarge
	// KindTooManyHeaders: more than Options.MaxHeaders fields in a head or a
	// trailer section. Server: 431.
	KindTooManyHeaders
	// KindMissingHost: an HTTP/1.1 request without Host (or with an empty one,
	// or with two). Server: 400.
	KindMissingHost
	// KindVersion (client only): a status line with a well-formed HTTP
	// version other than 1.0 and 1.1. The server takes any well-formed
	// request version but HTTP/1.1 for HTTP/1.0, as Envoy does.
	KindVersion
	// KindHeadersTimeout: the request head was not complete within
	// Options.RequestHeadersTimeout of its first byte. Server: 408.
	KindHeadersTimeout
	// KindIdleTimeout: no request began within Options.IdleTimeout of the
	// previous response (or of the connection's start). The connection is
	// closed without a response.
	KindIdleTimeout
	// KindTruncated: the peer closed the connection in the middle of a
	// message: a partial head, or a body shorter than its Content-Length or
	// without its last chunk.
	KindTruncated
	// KindNoResponse (client only): the upstream closed the connection before
	// sending a byte of the response. On a reused connection this is usually
	// the upstream closing it as idle while the request was on its way, and a
	// request the upstream cannot have processed is safe to retry on a new
	// connection.
	KindNoResponse
)

var kindNames = [...]string{
	KindMalformed:       "malformed",
	KindFraming:         "framing",
	KindHeadersTooLarge: "headers_too_large",
	KindTooManyHeaders:  "too_many_headers",
	KindMissingHost:     "missing_host",
	KindVersion:         "version",
	KindHeadersTimeout:  "headers_timeout",
	KindIdleTimeout:     "idle_timeout",
	KindTruncated:       "truncated",
	KindNoResponse:      "no_response",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}

// Response code details, as Envoy spells them (%RESPONSE_CODE_DETAILS%).
const (
	DetailsCodecError           = "http1.codec_error"
	DetailsInvalidCharacters    = "http1.invalid_characters"
	DetailsInvalidURL           = "http1.invalid_url"
	DetailsHeadersTooLarge      = "http1.headers_too_large"
	DetailsTooManyHeaders       = "http1.too_many_headers"
	DetailsChunkedContentLen    = "http1.content_length_and_chunked_not_allowed"
	DetailsInvalidTransferEnc   = "http1.invalid_transfer_encoding"
	DetailsBodyDisallowed       = "http1.body_disallowed"
	DetailsHTTPSInPlaintext     = "http1.https_url_on_plaintext_connection"
	DetailsUnexpectedUnderscore = "http1.unexpected_underscore"
	DetailsMissingHost          = "missing_host_header"
	DetailsRequestHeaderTimeout = "request_header_timeout"
	DetailsDownstreamClosed     = "downstream_remote_disconnect"
)

// Error is an HTTP/1 protocol failure: a message the codec refused, or a
// connection it ended. Every Error ends its connection.
//
// The server codec has a refused request answered with Status (and
// "connection: close") before it closes the connection: by the Handler, if it
// is a RefusalHandler (the connection manager's local reply, as in Envoy),
// else by itself, without a body. ServerConn.Serve returns the Error, so the
// connection manager can count it (by Kind). An Error found
// in a request body after the stream was handed over is returned by the
// stream's Read, and again by Serve.
//
// The client codec returns Errors from ClientStream methods; Upstream is set.
type Error struct {
	Kind Kind
	// Status is the response the server codec sent, or 0 if it sent none
	// (the client gone, an idle timeout, an error on the client side).
	Status int
	// Details is Envoy's response code details for Status, or "".
	Details string
	// Upstream is true for errors of the client codec (the upstream's
	// response), false for the server codec (the downstream's request).
	Upstream bool
	// Msg says precisely what was wrong, e.g. "obs-fold in a header field".
	Msg string
	// Err is the I/O error behind the failure, if any.
	Err error
}

func (e *Error) Error() string {
	side := "downstream"
	if e.Upstream {
		side = "upstream"
	}
	s := "h1: " + side + " " + e.Kind.String() + ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// RefusalStatus implements http.Refusal: Status, for a refused request (0
// for any other Error).
func (e *Error) RefusalStatus() int {
	if e.Upstream {
		return 0
	}
	return e.Status
}

// Flags returns the Envoy response flags an access log should carry for the
// error: DPE for a downstream request the codec refused, DC for a downstream
// gone mid-request, UC for an upstream that closed before or during its
// response. Upstream protocol errors (Envoy's UPE) have no flag in package
// http yet and return 0; so do timeouts, which Envoy reports through
// Details instead.
func (e *Error) Flags() http.ResponseFlag {
	switch e.Kind {
	case KindMalformed, KindFraming, KindHeadersTooLarge, KindTooManyHeaders, KindMissingHost, KindVersion:
		if !e.Upstream {
			return http.FlagDownstreamProtocolError
		}
	case KindTruncated:
		if e.Upstream {
			return http.FlagUpstreamConnectionTermination
		}
		return http.FlagDownstreamConnectionTermination
	case KindNoResponse:
		return http.FlagUpstreamConnectionTermination
	}
	return 0
}

// Errors for misuse of a stream, and for connections that can take no stream.
var (
	// ErrConnClosed is returned (wrapped) by ClientConn.NewStream on a closed
	// connection. It is dataplane/http's ErrConnClosed.
	ErrConnClosed = http.ErrConnClosed
	// ErrConnBusy is returned by ClientConn.NewStream while a stream is in
	// flight: HTTP/1.1 carries one at a time.
	ErrConnBusy = errors.New("h1: connection busy")
	// ErrStreamDone is returned by a stream whose response (server) or
	// request (client) was already ended, or that was reset.
	ErrStreamDone = errors.New("h1: stream is done")
	// ErrNoHeader: Write or End before WriteHeader.
	ErrNoHeader = errors.New("h1: body or end before the header")
	// ErrHeaderSent: a second final WriteHeader.
	ErrHeaderSent = errors.New("h1: header already sent")
	// ErrInvalidHeader: a header the codec cannot send: no valid :status
	// (server) or :method/:path (client), a field name or value with bytes
	// that cannot be sent (CR, LF, NUL, ...), an invalid Content-Length, or a
	// status that does not fit the request (101 without an upgrade request).
	ErrInvalidHeader = errors.New("h1: invalid header")
	// ErrBodyNotAllowed: Write of body bytes for a response to which HTTP/1.1
	// allows none (1xx, 204, 304). Bytes for a response to HEAD are discarded
	// silently instead.
	ErrBodyNotAllowed = errors.New("h1: body not allowed for this status")
	// ErrContentLength: the body written is longer or shorter than the
	// Content-Length the header declared. The connection is closed after the
	// stream, so the peer sees a truncated message rather than a wrong one.
	ErrContentLength = errors.New("h1: body does not match content-length")
	// ErrNotTunnel (client): Write on an upgrade request before ReadHeader
	// returned 101.
	ErrNotTunnel = errors.New("h1: upgrade not accepted (yet)")
	// ErrExpectationFailed (client): the upstream answered a request sent with
	// "expect: 100-continue" with a final status instead of 100, so the body
	// was not sent; ReadHeader returns that response. The connection is not
	// reused.
	ErrExpectationFailed = errors.New("h1: upstream answered before 100 continue; body not sent")
)

func protoErr(k Kind, status int, details, msg string) *Error {
	return &Error{Kind: k, Status: status, Details: details, Msg: msg}
}

// Constructors for the common server-side errors.
func errMalformed(msg string) *Error {
	return protoErr(KindMalformed, 400, DetailsCodecError, msg)
}

func errInvalidChars(msg string) *Error {
	return protoErr(KindMalformed, 400, DetailsInvalidCharacters, msg)
}

func errFraming(details, msg string) *Error {
	return protoErr(KindFraming, 400, details, msg)
}
