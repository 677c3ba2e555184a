package http

import (
	"strings"
	"unsafe"
)

// LocalReply answers the request from skiff itself, as Envoy's
// sendLocalReply does: a filter that denies a request (RBAC, a rate limit, an
// injected fault) or the connection manager (no route, no healthy upstream)
// calls it and then returns Stop.
//
// It records status, details (Envoy's %RESPONSE_CODE_DETAILS%, e.g.
// "rbac_access_denied_matched_policy[none]") and flags in e.Info, and sends
// e.Response through e.Downstream with :status set to status and, when body
// is not empty, content-length and content-type text/plain (a HEAD request gets
// the headers only). Fields a caller put in e.Response before the call are sent
// too: that is how a filter adds its own headers to its reply (Envoy's
// modify_headers callback); a content-type among them stays, and with an empty
// body content-type and content-length are removed, as in Envoy. A gRPC request (content-type application/grpc...)
// gets a gRPC trailers-only reply instead: :status 200, grpc-status mapped from
// status as Envoy maps it (403 PERMISSION_DENIED, 429 and 503 UNAVAILABLE, ...)
// and grpc-message set to body.
//
// The reply goes through e.Downstream.WriteHeader, so a connection manager that
// wants its ResponseFilters to see local replies (as Envoy's encoder filters
// do) sets e.Downstream to a ServerStream that runs them on WriteHeader.
//
// e.LocalReplies, when set, rewrites the reply first (status, body, content
// type, headers), as Envoy's local_reply_config does, the gRPC form included.
//
// With literal arguments and no LocalReplies, LocalReply does not allocate
// beyond what e.Response needs to grow.
func (e *Exchange) LocalReply(status int, body, details string, flags ResponseFlag) error {
	return e.localReply(status, -1, body, details, flags)
}

// LocalReplyGRPC is LocalReply with the grpc-status a gRPC request gets given
// explicitly (Envoy's sendLocalReply grpc_status argument) instead of derived
// from status. A request that is not gRPC gets status and body as with
// LocalReply.
func (e *Exchange) LocalReplyGRPC(status int, grpcStatus uint32, body, details string, flags ResponseFlag) error {
	return e.localReply(status, int64(grpcStatus), body, details, flags)
}

// LocalReplyMapper rewrites local replies: Envoy's local_reply_config.
type LocalReplyMapper interface {
	// MapLocalReply is given a local reply about to be sent: its status in
	// e.Info.ResponseCode and e.Response's :status, and its body. It may
	// change the status (in both places) and add response headers, and
	// returns the body to send and its content type.
	MapLocalReply(e *Exchange, body string) (newBody, contentType string)
}

// MapLocalReply runs e.LocalReplies, if any, on a reply of status and body
// that is about to be sent, and returns the status, body and content type to
// send (text/plain when there is no mapper). The router answers redirects
// and direct responses through it, which Envoy's local_reply_config
// rewrites too.
func (e *Exchange) MapLocalReply(status int, body string) (int, string, string) {
	e.Info.LocalReplyBody = body
	if e.LocalReplies == nil {
		return status, body, "text/plain"
	}
	e.Info.ResponseCode = status
	e.Response.SetUint(Status, uint64(status))
	body, ct := e.LocalReplies.MapLocalReply(e, body)
	return e.Info.ResponseCode, body, ct
}

func (e *Exchange) localReply(status int, grpcStatus int64, body, details string, flags ResponseFlag) error {
	e.Info.ResponseCodeDetails = details
	e.Info.SetFlags(flags)
	h := &e.Response
	original := body
	var ctBefore string
	if e.LocalReplies != nil {
		ctBefore = strings.Clone(h.Value("content-type"))
	}
	status, body, ct := e.MapLocalReply(status, body)
	if e.Request != nil && IsGRPC(e.Request) {
		if grpcStatus < 0 {
			grpcStatus = int64(GRPCStatusFromHTTP(status))
		}
		e.Info.ResponseCode = 200
		h.SetUint(Status, 200)
		h.Set("content-type", "application/grpc")
		h.SetUint("grpc-status", uint64(grpcStatus))
		if body != "" {
			h.Del("grpc-message")
			h.addGRPCMessage(body)
		}
		return e.Downstream.WriteHeader(h, true)
	}
	e.Info.ResponseCode = status
	h.SetUint(Status, uint64(status))
	if body == "" {
		// As Envoy's prepareLocalReply: no body, no content headers, whoever
		// added them.
		h.Del("content-length")
		h.Del("content-type")
		return e.Downstream.WriteHeader(h, true)
	}
	h.SetUint("content-length", uint64(len(body)))
	// A content-type the caller (or a route's response_headers_to_add) set
	// stays, unless local_reply_config changed the body without setting one
	// itself (Envoy's prepareLocalReply).
	if !h.Has("content-type") || (body != original && h.Value("content-type") == ctBefore) {
		h.Set("content-type", ct)
	}
	if e.Request != nil && e.Request.Method() == "HEAD" {
		return e.Downstream.WriteHeader(h, true)
	}
	if err := e.Downstream.WriteHeader(h, false); err != nil {
		return err
	}
	// Write must not keep or modify p (io.Writer's contract), so the body's
	// bytes are lent without a copy.
	if _, err := e.Downstream.Write(unsafe.Slice(unsafe.StringData(body), len(body))); err != nil {
		return err
	}
	return e.Downstream.End()
}

// addGRPCMessage adds grpc-message with msg percent-encoded as gRPC requires
// (bytes outside printable ASCII, and '%').
func (h *Header) addGRPCMessage(msg string) {
	start := uint32(len(h.buf))
	h.buf = append(h.buf, "grpc-message"...)
	mid := uint32(len(h.buf))
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c < ' ' || c > '~' || c == '%' {
			h.buf = append(h.buf, '%', hex[c>>4], hex[c&15])
			continue
		}
		h.buf = append(h.buf, c)
	}
	h.fields = append(h.fields, field{nameStart: start, nameEnd: mid, valueEnd: uint32(len(h.buf))})
	h.n++
}

// IsGRPC reports whether request headers h are a gRPC request's: content-type
// application/grpc, alone or followed by '+' or ';' (Envoy's
// Grpc::Common::isGrpcRequestHeaders).
func IsGRPC(h *Header) bool {
	ct, ok := h.Get("content-type")
	if !ok || !strings.HasPrefix(ct, "application/grpc") {
		return false
	}
	return len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';'
}

// GRPCStatusFromHTTP maps an HTTP status to the gRPC status a local reply to a
// gRPC request carries (Envoy's Grpc::Utility::httpToGrpcStatus).
func GRPCStatusFromHTTP(status int) uint32 {
	switch status {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503, 504:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// HTTPStatusFromGRPC maps a grpc-status to the HTTP status it stands for
// (Envoy's Grpc::Utility::grpcToHttpStatus), e.g. for outlier detection.
func HTTPStatusFromGRPC(status uint32) int {
	switch status {
	case 0: // OK
		return 200
	case 1: // CANCELLED
		return 499
	case 3, 9, 11: // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
		return 400
	case 4: // DEADLINE_EXCEEDED
		return 504
	case 5: // NOT_FOUND
		return 404
	case 6, 10: // ALREADY_EXISTS, ABORTED
		return 409
	case 7: // PERMISSION_DENIED
		return 403
	case 8: // RESOURCE_EXHAUSTED
		return 429
	case 12: // UNIMPLEMENTED
		return 501
	case 14: // UNAVAILABLE
		return 503
	case 16: // UNAUTHENTICATED
		return 401
	}
	return 500 // UNKNOWN, INTERNAL, DATA_LOSS and the rest
}
