package h2

import (
	"errors"
	"fmt"

	"golang.org/x/net/http2"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// HTTP/2 error codes (RFC 9113 section 7), as dataplane/http names them; kept
// here so the codec reads as the RFC does.
const (
	ResetFlowControlError   = http.ResetFlowControlError
	ResetSettingsTimeout    = http.ResetSettingsTimeout
	ResetStreamClosed       = http.ResetStreamClosed
	ResetFrameSizeError     = http.ResetFrameSizeError
	ResetCompressionError   = http.ResetCompressionError
	ResetConnectError       = http.ResetConnectError
	ResetEnhanceYourCalm    = http.ResetEnhanceYourCalm
	ResetInadequateSecurity = http.ResetInadequateSecurity
	ResetHTTP11Required     = http.ResetHTTP11Required
)

// codeString names an error code as RFC 9113 does (PROTOCOL_ERROR, ...).
func codeString(c http.ResetCode) string { return http2.ErrCode(c).String() }

// ErrConnClosed is returned (wrapped, with the reason) by NewStream when the
// connection takes no more streams, and by stream operations when the
// connection ended under them. It is dataplane/http's ErrConnClosed.
var ErrConnClosed = http.ErrConnClosed

// ErrNotProcessed is what errors.Is finds in the error of a client stream that
// the server did not process: the server refused it (RST_STREAM with
// REFUSED_STREAM) or went away (GOAWAY) before the stream's id. Such a request
// is safe to retry on another connection, whatever its method (RFC 9113
// section 8.7). It is dataplane/http's ErrNotProcessed.
var ErrNotProcessed = http.ErrNotProcessed

// StreamError is why a stream ended abnormally: an RST_STREAM received from
// the peer (Remote) or sent by this end.
type StreamError struct {
	StreamID uint32
	Code     http.ResetCode
	Remote   bool
}

func (e *StreamError) Error() string {
	who := "local"
	if e.Remote {
		who = "remote"
	}
	return fmt.Sprintf("h2: stream %d reset (%s): %s", e.StreamID, who, codeString(e.Code))
}

// Is reports REFUSED_STREAM from the peer as ErrNotProcessed.
func (e *StreamError) Is(target error) bool {
	return target == ErrNotProcessed && e.Remote && e.Code == http.ResetRefusedStream
}

// GoAwayError is the error of a client stream that the server's GOAWAY cut
// off: one above LastStreamID (never processed: errors.Is(err,
// ErrNotProcessed)), or, when the connection then closed, one at or below it.
type GoAwayError struct {
	StreamID     uint32 // 0: the stream had not been sent yet
	LastStreamID uint32
	Code         http.ResetCode
	Debug        string
}

func (e *GoAwayError) Error() string {
	s := fmt.Sprintf("h2: server sent GOAWAY (%s, last stream %d)", codeString(e.Code), e.LastStreamID)
	if e.Debug != "" {
		s += ": " + e.Debug
	}
	return s
}

// Is reports a stream the server never processed as ErrNotProcessed, and
// every GOAWAY error as ErrConnClosed.
func (e *GoAwayError) Is(target error) bool {
	switch target {
	case ErrNotProcessed:
		return e.StreamID == 0 || e.StreamID > e.LastStreamID
	case ErrConnClosed:
		return true
	}
	return false
}

// ConnError is a connection error (RFC 9113 section 5.4.1): the GOAWAY code
// this end sent because the peer broke the protocol, or (Remote) the code of a
// GOAWAY the peer sent.
type ConnError struct {
	Code   http.ResetCode
	Remote bool
	Reason string
}

func (e *ConnError) Error() string {
	who := "sent"
	if e.Remote {
		who = "received"
	}
	s := fmt.Sprintf("h2: connection error %s (GOAWAY %s)", codeString(e.Code), who)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is makes every connection error an ErrConnClosed.
func (e *ConnError) Is(target error) bool { return target == ErrConnClosed }

// connErr returns a connection error to send.
func connErr(code http.ResetCode, format string, args ...any) *ConnError {
	return &ConnError{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// errClosed wraps ErrConnClosed with a reason.
func errClosed(reason error) error {
	if reason == nil || errors.Is(reason, ErrConnClosed) {
		if reason == nil {
			return ErrConnClosed
		}
		return reason
	}
	return fmt.Errorf("%w: %w", ErrConnClosed, reason)
}
