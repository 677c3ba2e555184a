package http

// Envoy keeps the headers it knows best (its "inline" headers) in one slot
// each, and a second field of one of those names is appended to the first,
// after a comma (HeaderMapImpl::insertByKey): a request with two user-agent
// fields reaches routing, filters, access logs and the upstream with one,
// "a,b". Other repeated fields stay separate. JoinInline does the same to a
// Header, so that skiff sees and forwards what Envoy would.

// JoinInline joins the repeated fields of h that are inline headers of
// Envoy's request header map (of its response header map if resp): each
// such name's non-empty values, in order and separated by ",", become the
// value of its first field, and the later fields go. Pseudo-headers are left
// alone (the codecs refuse repeated ones), and so is content-length, which
// frames the body: HTTP/1.1's codec takes one field only, HTTP/2's repeated
// identical ones, which joined would read "5,5". It allocates nothing when
// no inline header is repeated, and otherwise only when h's buffer must
// grow.
func (h *Header) JoinInline(resp bool) {
	if !h.mayRepeat() {
		return
	}
	fs := h.fields
	for i := 1; i < len(fs); i++ {
		if fs[i].deleted || fs[i].nameEnd == fs[i].nameStart {
			continue
		}
		n, c := fs[i].nameEnd-fs[i].nameStart, h.buf[fs[i].nameStart]
		if c == ':' {
			continue
		}
		for j := 0; j < i; j++ {
			if fs[j].deleted || fs[j].nameEnd-fs[j].nameStart != n || h.buf[fs[j].nameStart] != c {
				continue
			}
			name := h.str(fs[j].nameStart, fs[j].nameEnd)
			if name != h.str(fs[i].nameStart, fs[i].nameEnd) {
				continue
			}
			if name != "content-length" && IsInline(name, resp) {
				h.join(j)
			}
			break // j is the first field of the name: the others were compared with it
		}
	}
}

// mayRepeat reports whether two fields of h other than pseudo-headers might
// have the same name: a one-pass filter on their lengths and first and last
// bytes, so that the common header without repeats costs no comparison of
// every pair.
func (h *Header) mayRepeat() bool {
	var seen uint64
	for _, f := range h.fields {
		if f.deleted || f.nameEnd == f.nameStart || h.buf[f.nameStart] == ':' {
			continue
		}
		bit := uint64(1) << ((uint32(h.buf[f.nameStart]) + uint32(h.buf[f.nameEnd-1])*7 + (f.nameEnd-f.nameStart)*13) & 63)
		if seen&bit != 0 {
			return true
		}
		seen |= bit
	}
	return false
}

// join appends the values of the later fields named as h.fields[first] to
// its own, skipping empty ones, and deletes those fields. The joined field's
// bytes go at the end of h.buf.
func (h *Header) join(first int) {
	f := h.fields[first]
	start := uint32(len(h.buf))
	h.buf = append(h.buf, h.buf[f.nameStart:f.valueEnd]...)
	mid := start + (f.nameEnd - f.nameStart)
	name := h.str(f.nameStart, f.nameEnd)
	for k := first + 1; k < len(h.fields); k++ {
		g := &h.fields[k]
		if g.deleted || h.str(g.nameStart, g.nameEnd) != name {
			continue
		}
		if g.valueEnd > g.nameEnd {
			if uint32(len(h.buf)) > mid {
				h.buf = append(h.buf, ',')
			}
			h.buf = append(h.buf, h.buf[g.nameEnd:g.valueEnd]...)
		}
		g.deleted = true
		h.n--
	}
	h.fields[first] = field{nameStart: start, nameEnd: mid, valueEnd: uint32(len(h.buf))}
}

// IsInline reports whether name (lower case, not a pseudo-header) is one of
// the inline headers of Envoy's request header map, or of its response
// header map if resp (INLINE_REQ_HEADERS, INLINE_REQ_RESP_HEADERS,
// INLINE_RESP_HEADERS and INLINE_RESP_HEADERS_TRAILERS of Envoy's
// envoy/http/header_map.h). Headers that extensions register as inline are
// not among them.
func IsInline(name string, resp bool) bool {
	switch name {
	// Both maps.
	case "connection", "content-type", "x-envoy-decorator-operation", "keep-alive",
		"proxy-connection", "proxy-status", "x-request-id", "transfer-encoding", "upgrade", "via",
		"content-length", "x-envoy-attempt-count":
		return true
	// Requests.
	case "x-client-trace-id", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node",
		"x-envoy-external-address", "x-envoy-force-trace", "x-envoy-hedge-on-per-try-timeout",
		"x-envoy-internal", "x-envoy-ip-tags", "x-envoy-retry-on", "x-envoy-retry-grpc-on",
		"x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-original-path",
		"x-envoy-original-url", "x-envoy-upstream-alt-stat-name",
		"x-envoy-upstream-rq-timeout-alt-response", "expect", "x-forwarded-client-cert",
		"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "grpc-timeout", "te", "user-agent",
		"x-envoy-expected-rq-timeout-ms", "x-envoy-max-retries", "x-envoy-upstream-rq-timeout-ms",
		"x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-stream-duration-ms":
		return !resp
	// Responses.
	case "date", "x-envoy-degraded", "x-envoy-immediate-health-check-fail", "x-envoy-ratelimited",
		"x-envoy-upstream-canary", "x-envoy-upstream-healthchecked-cluster", "location", "server",
		"x-envoy-upstream-service-time", "grpc-message", "grpc-status":
		return resp
	}
	return false
}
