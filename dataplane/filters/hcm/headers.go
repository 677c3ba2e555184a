package hcm

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"
	"unsafe"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// sanitize applies the connection manager's request header mutations, as
// Envoy's ConnectionManagerUtility::mutateRequestHeaders: hop-by-hop fields
// go (connection and upgrade stay on an upgrade that goes on), the trusted
// client address is found (use_remote_address, xff_num_trusted_hops) and
// x-forwarded-for, x-forwarded-proto, x-envoy-internal,
// x-envoy-external-address and x-request-id are set; an external request
// loses the x-envoy-* fields only internal ones may set.
func (st *stream) sanitize(keepUpgrade bool) {
	m, e := st.m, &st.ex
	req := e.Request
	fc := st.c.fc
	xff, hasXFF := req.Get("x-forwarded-for") // one field: see JoinInline in prepare
	var trusted netip.Addr
	fromConn := false
	single := false
	if m.useRemote {
		single = !hasXFF
		if m.trustedHops > 0 {
			trusted, _ = lastXFF(xff, m.trustedHops-1)
		}
		if !trusted.IsValid() {
			trusted, fromConn = fc.Remote.Addr(), true
		}
	} else {
		trusted, single = lastXFF(xff, m.trustedHops)
	}
	internal := single && trusted.IsValid() && isInternal(trusted)
	edge := !internal && m.useRemote

	// One pass removes every field that goes.
	dropXFCC := m.dropsXFCC(fc)
	teTrailers := false
	req.DeleteFunc(func(name, value string) bool {
		if len(name) < 2 {
			return false
		}
		switch name[0] {
		case 'c':
			return name == "connection" && !keepUpgrade
		case 'u':
			return name == "upgrade" && !keepUpgrade
		case 'k':
			return name == "keep-alive"
		case 'p':
			return name == "proxy-connection"
		case 't':
			switch name {
			case "transfer-encoding":
				return true
			case "te":
				teTrailers = teTrailers || hasTokenFold(value, "trailers")
				return true
			}
		case 'x':
			if name == "x-forwarded-client-cert" {
				return dropXFCC
			}
			if len(name) > 8 && name[:8] == "x-envoy-" {
				switch name[8:] {
				case "internal":
					return true
				case "decorator-operation", "downstream-service-cluster", "downstream-service-node":
					return edge
				case "retriable-status-codes", "retriable-header-names", "retry-on", "retry-grpc-on", "max-retries",
					"upstream-alt-stat-name", "upstream-rq-timeout-ms", "upstream-rq-per-try-timeout-ms",
					"upstream-rq-timeout-alt-response", "expected-rq-timeout-ms", "force-trace", "ip-tags",
					"original-url", "hedge-on-per-try-timeout":
					// Envoy's cleanInternalHeaders.
					return !internal
				}
			}
		}
		return false
	})
	if teTrailers {
		req.Add("te", "trailers")
	}
	if x := st.c.xfcc; x != "" {
		if m.xfcc == hcmv3.HttpConnectionManager_APPEND_FORWARD {
			// Every field the request has, joined (an inline header in
			// Envoy), then this connection's element.
			var vs []string
			for _, v := range req.Values(nil, "x-forwarded-client-cert") {
				if v != "" {
					vs = append(vs, v)
				}
			}
			x = strings.Join(append(vs, x), ",")
		}
		req.Set("x-forwarded-client-cert", x)
	}
	var buf [256]byte
	scheme := "http"
	if fc.TLS != nil {
		scheme = "https"
	}
	if m.useRemote {
		if !m.skipXFFAppend {
			a := fc.Remote.Addr()
			if a.IsLoopback() && fc.Local.IsValid() {
				a = fc.Local.Addr() // as Envoy: a loopback peer is this host
			}
			// Appended with "," and no space (Envoy's Utility::appendXff).
			v := buf[:0]
			if xff != "" {
				v = append(v, xff...)
				v = append(v, ',')
			}
			v = a.AppendTo(v)
			req.Set("x-forwarded-for", bytesString(v))
		}
		// A trusted proxy's x-forwarded-proto stays; an untrusted peer's is
		// overwritten.
		if m.trustedHops == 0 || !req.Has("x-forwarded-proto") {
			req.Set("x-forwarded-proto", scheme)
		}
	} else if !req.Has("x-forwarded-proto") {
		req.Add("x-forwarded-proto", scheme)
	}
	if internal {
		req.Add("x-envoy-internal", "true")
	}
	if edge && trusted.IsValid() {
		req.Set("x-envoy-external-address", bytesString(trusted.AppendTo(buf[:0])))
	}
	if m.generateID {
		if id, ok := req.Get("x-request-id"); !ok || id == "" || edge && !m.preserveExtID {
			req.Set("x-request-id", bytesString(appendUUID(buf[:0])))
		}
	}
	if m.tracing != nil {
		m.tracing.decide(req)
	}
	e.Info.RequestID = req.Value("x-request-id")
	if m.via != "" {
		appendVia(req, m.via, buf[:0])
	}
	switch {
	case fromConn:
		e.Info.DownstreamRemote = fc.Remote
	case trusted.IsValid():
		e.Info.DownstreamRemote = netip.AddrPortFrom(trusted, 0)
	}
}

// mutateResponse applies the connection manager's response header
// mutations: hop-by-hop fields go (but a 101's upgrade), date is added if
// missing, server as server_header_transformation says, x-request-id with
// always_set_request_id_in_response, via.
func (st *stream) mutateResponse(status int) {
	m, e := st.m, &st.ex
	r := &e.Response
	upgrade := status == 101
	r.DeleteFunc(func(name, _ string) bool {
		switch name {
		case "connection", "upgrade":
			return !upgrade
		case "keep-alive", "proxy-connection", "transfer-encoding":
			return true
		}
		return false
	})
	if !r.Has("date") {
		r.Add("date", m.httpDate())
	}
	switch m.serverHeader {
	case serverOverwrite:
		r.Set("server", m.serverName)
	case serverAppendIfAbsent:
		if !r.Has("server") {
			r.Add("server", m.serverName)
		}
	}
	if st.decoratorOp != "" {
		r.Set("x-envoy-decorator-operation", st.decoratorOp)
	}
	if m.alwaysSetID && e.Info.RequestID != "" {
		r.Set("x-request-id", e.Info.RequestID)
	}
	if m.via != "" {
		var buf [256]byte
		appendVia(r, m.via, buf[:0])
	}
}

// appendVia appends via to the via field of h.
func appendVia(h *http.Header, via string, buf []byte) {
	if old, ok := h.Get("via"); ok && old != "" {
		buf = append(buf, old...)
		buf = append(buf, ", "...)
	}
	buf = append(buf, via...)
	h.Set("via", bytesString(buf))
}

// lastXFF returns the address skip entries from the right of an
// x-forwarded-for value, and whether the value holds a single address
// (Envoy's Utility::getLastAddressFromXFF).
func lastXFF(xff string, skip uint32) (netip.Addr, bool) {
	if xff == "" {
		return netip.Addr{}, false
	}
	single := strings.IndexByte(xff, ',') < 0
	rest := xff
	for i := uint32(0); ; i++ {
		j := strings.LastIndexByte(rest, ',')
		entry := rest[j+1:]
		if i == skip {
			a, err := netip.ParseAddr(strings.TrimSpace(entry))
			if err != nil {
				return netip.Addr{}, single
			}
			return a.Unmap(), single
		}
		if j < 0 {
			return netip.Addr{}, single
		}
		rest = rest[:j]
	}
}

// Internal addresses, as Envoy's Network::Utility::isInternalAddress.
var internalPrefixes = [...]netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("fd00::/8"),
	netip.MustParsePrefix("::1/128"),
}

func isInternal(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range internalPrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// appendUUID appends a random (version 4) UUID.
func appendUUID(dst []byte) []byte {
	const hex = "0123456789abcdef"
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i] = byte(hi >> (56 - 8*i))
		b[8+i] = byte(lo >> (56 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hex[c>>4], hex[c&15])
	}
	return dst
}

// dateValue is an HTTP date and the second it was formatted for.
type dateValue struct {
	sec int64
	val string
}

// httpDate returns the current time as an HTTP date, formatted once a
// second (the Manager keeps the last one).
func (m *Manager) httpDate() string {
	now := time.Now()
	sec := now.Unix()
	if d := m.date.Load(); d != nil && d.sec == sec {
		return d.val
	}
	d := &dateValue{sec: sec, val: now.UTC().Format("Mon, 02 Jan 2006 15:04:05 GMT")}
	m.date.Store(d)
	return d.val
}

// maxNominated is the number of tokens from which Envoy refuses a
// connection header (Utility::sanitizeConnectionHeader).
const maxNominated = 10

// maxNominatedTE is the length from which a te field the connection header
// nominates is refused.
const maxNominatedTE = 256

// connectionNominated removes the fields an HTTP/1.x request's connection
// header nominates, as Envoy's HTTP/1 codec does (sanitizeConnectionHeader;
// not for an upgrade or CONNECT): close, keep-alive, upgrade,
// http2-settings and connection itself stay, and te stays if it holds
// trailers (sanitize keeps that of it). A connection header with 10 tokens
// or more, or nominating x-forwarded-for, x-forwarded-host,
// x-forwarded-proto, a pseudo-header or a te of 256 bytes or more, is
// refused with 400 and the connection closes; false means it was.
func (st *stream) connectionNominated() bool {
	req := st.ex.Request
	tokens, hasConn := 0, false
	req.Range(func(name, value string) bool {
		if name == "connection" {
			hasConn = true
			tokens += countTokens(value)
		}
		return true
	})
	if !hasConn {
		return true
	}
	ok := tokens < maxNominated
	req.Range(func(name, value string) bool {
		if name == "connection" && ok {
			ok = st.removeNominated(value)
		}
		return ok
	})
	if !ok {
		st.m.stats.cxProtocolError.Inc()
		st.closeConn = true
		_ = st.ex.LocalReply(400, "Bad Request", "http1.connection_header_rejected", http.FlagDownstreamProtocolError)
	}
	return ok
}

// countTokens counts the non-empty elements of a comma-separated list (a
// blank one counts, as in Envoy's splitToken).
func countTokens(list string) int {
	n := 0
	for list != "" {
		i := strings.IndexByte(list, ',')
		if i < 0 {
			return n + 1
		}
		if i > 0 {
			n++
		}
		list = list[i+1:]
	}
	return n
}

// removeNominated removes the fields a connection field's value nominates;
// false means the value is refused.
func (st *stream) removeNominated(list string) bool {
	req := st.ex.Request
	for list != "" {
		var t string
		t, list = nextToken(list)
		switch {
		case t == "":
		case t[0] == ':':
			return false
		case http.EqualFoldLower(t, "close"), http.EqualFoldLower(t, "keep-alive"),
			http.EqualFoldLower(t, "upgrade"), http.EqualFoldLower(t, "http2-settings"),
			http.EqualFoldLower(t, "connection"):
		case http.EqualFoldLower(t, "x-forwarded-for"), http.EqualFoldLower(t, "x-forwarded-host"),
			http.EqualFoldLower(t, "x-forwarded-proto"):
			// Removing them could hide where the request comes from.
			return false
		case http.EqualFoldLower(t, "te"):
			if teLen(req) >= maxNominatedTE {
				return false
			}
		default:
			req.DeleteFunc(func(name, _ string) bool { return http.EqualFoldLower(t, name) })
		}
	}
	return true
}

// teLen is the length of the request's te fields joined with "," (an inline
// header in Envoy).
func teLen(req *http.Header) int {
	n := 0
	req.Range(func(name, value string) bool {
		if name == "te" && value != "" {
			if n > 0 {
				n++
			}
			n += len(value)
		}
		return true
	})
	return n
}

// connectionHasUpgrade reports whether a connection field lists "upgrade".
func connectionHasUpgrade(h *http.Header) bool {
	found := false
	h.Range(func(name, value string) bool {
		if name == "connection" && hasTokenFold(value, "upgrade") {
			found = true
			return false
		}
		return true
	})
	return found
}

// nextToken splits the first element off a comma-separated list: the
// element without surrounding whitespace, and the rest after its comma.
func nextToken(list string) (token, rest string) {
	if i := strings.IndexByte(list, ','); i >= 0 {
		return strings.TrimSpace(list[:i]), list[i+1:]
	}
	return strings.TrimSpace(list), ""
}

// hasTokenFold reports whether a comma-separated list holds token
// (case-insensitively).
func hasTokenFold(list, token string) bool {
	for list != "" {
		var t string
		t, list = nextToken(list)
		if http.EqualFoldLower(t, token) {
			return true
		}
	}
	return false
}

// normalize applies path_with_escaped_slashes_action, normalize_path (RFC
// 3986 dot-segment removal) and merge_slashes to :path, in Envoy's order;
// false means the request was answered: 400 for a path that cannot be
// normalized or has escaped slashes REJECT_REQUEST refuses, a 307 to the
// unescaped path for UNESCAPE_AND_REDIRECT.
func (st *stream) normalize() bool {
	m, e := st.m, &st.ex
	req := e.Request
	p, ok := req.Get(http.Path)
	if !ok || p == "" || p[0] != '/' {
		return true // CONNECT, "*", or no path: nothing to normalize
	}
	path, query := p, ""
	if i := strings.IndexByte(p, '?'); i >= 0 {
		path, query = p[:i], p[i:]
	}
	np, redirect := path, false
	if m.escapedSlashes > hcmv3.HttpConnectionManager_KEEP_UNCHANGED {
		if u, found := unescapeSlashes(np); found {
			switch m.escapedSlashes {
			case hcmv3.HttpConnectionManager_REJECT_REQUEST:
				m.stats.rqFailedNormalize.Inc()
				_ = e.LocalReply(400, "", "path_normalization_failed", 0)
				return false
			case hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT:
				redirect = true
			}
			np = u
		}
	}
	if m.normalizePath {
		np = removeDotSegments(np)
	}
	if m.mergeSlashes {
		np = mergeSlashes(np)
	}
	if np == path {
		return true
	}
	if np == "" || np[0] != '/' {
		m.stats.rqFailedNormalize.Inc()
		_ = e.LocalReply(400, "", "path_normalization_failed", 0)
		return false
	}
	req.Set(http.Path, np+query)
	if redirect {
		// Envoy's answer: the client asks again for the path as it is now,
		// given as is (not an absolute URL).
		m.stats.rqNormalizedRedirect.Inc()
		e.Response.Set("location", np+query)
		_ = e.LocalReply(307, "", "path_normalization_failed", 0)
		return false
	}
	return true
}

// unescapeSlashes replaces the escaped slashes and backslashes of a path
// (%2F, %5C, either case) with the characters, and reports whether it found
// any, as Envoy's PathUtil::unescapeSlashes.
func unescapeSlashes(p string) (string, bool) {
	if !strings.Contains(p, "%") {
		return p, false
	}
	var b strings.Builder
	found := false
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			switch p[i+1 : i+3] {
			case "2F", "2f":
				b.WriteByte('/')
				i += 2
				found = true
				continue
			case "5C", "5c":
				b.WriteByte('\\')
				i += 2
				found = true
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String(), found
}

// removeDotSegments is RFC 3986 section 5.2.4's algorithm.
func removeDotSegments(p string) string {
	if !strings.Contains(p, "/.") {
		return p
	}
	segs := strings.Split(p, "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		switch s {
		case ".":
			if i == len(segs)-1 {
				out = append(out, "")
			}
		case "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if i == len(segs)-1 {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	r := strings.Join(out, "/")
	if r == "" {
		return "/"
	}
	return r
}

func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// bytesString returns b's bytes as a string without copying; the caller
// passes it only to Header methods, which copy.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
