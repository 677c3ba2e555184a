package h1

import (
	"bytes"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// Byte classes of RFC 9110 and RFC 3986, as bits in one table.
const (
	classToken     = 1 << iota // tchar: a byte of a token (method, field name, coding)
	classValue                 // a byte allowed in a field value: HTAB, SP, VCHAR, obs-text
	classTarget                // a byte allowed in a request target: VCHAR except '#'
	classAuthority             // a byte allowed in uri-host [":" port]
)

// classes is read-only after package initialization.
var classes = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		alnum := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9'
		if alnum || bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), b) >= 0 {
			t[c] |= classToken
		}
		if b == '\t' || b >= 0x20 && b != 0x7f {
			t[c] |= classValue
		}
		if b > 0x20 && b < 0x7f && b != '#' {
			t[c] |= classTarget
		}
		// unreserved, pct-encoded, sub-delims, ':' and IP-literal brackets; no
		// userinfo ('@') and nothing that would end an authority ('/', '?', '#').
		if alnum || bytes.IndexByte([]byte("-._~%!$&'()*+,;=:[]"), b) >= 0 {
			t[c] |= classAuthority
		}
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if classes[c]&classToken == 0 {
			return false
		}
	}
	return true
}

func isTokenString(s string) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if classes[s[i]]&classToken == 0 {
			return false
		}
	}
	return true
}

// validValue reports whether s can be sent as a field value: no CR, LF, NUL
// or other control byte but HTAB, and no leading or trailing whitespace
// (which a recipient would strip, so the value would not arrive as sent).
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if classes[s[i]]&classValue == 0 {
			return false
		}
	}
	return len(s) == 0 || !isOWS(s[0]) && !isOWS(s[len(s)-1])
}

func validTarget(s string) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if classes[s[i]]&classTarget == 0 {
			return false
		}
	}
	return true
}

// validAuthority reports whether b is a plausible uri-host [":" port]: the
// bytes RFC 3986 allows there, no userinfo, not empty.
func validAuthority(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if classes[c]&classAuthority == 0 {
			return false
		}
	}
	return true
}

func isOWS(c byte) bool { return c == ' ' || c == '\t' }

func trimOWS(b []byte) []byte {
	for len(b) > 0 && isOWS(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isOWS(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// lower lower-cases ASCII letters of b in place.
func lower(b []byte) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
}

// equalFold reports whether b equals the lower-case ASCII string s, ignoring
// the case of b.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// nextElement splits a comma-separated list (RFC 9110 section 5.6.1): it
// returns the first non-empty element, trimmed of whitespace, and the rest.
// An empty element means the list is exhausted.
func nextElement(b []byte) (elem, rest []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, ',')
		if i < 0 {
			return trimOWS(b), nil
		}
		elem, b = trimOWS(b[:i]), b[i+1:]
		if len(elem) > 0 {
			return elem, b
		}
	}
	return nil, nil
}

// connTokens are the connection options skiff acts on.
type connTokens struct{ close, keepAlive, upgrade bool }

func (t *connTokens) add(value []byte) {
	for elem, rest := nextElement(value); len(elem) > 0; elem, rest = nextElement(rest) {
		switch {
		case equalFold(elem, "close"):
			t.close = true
		case equalFold(elem, "keep-alive"):
			t.keepAlive = true
		case equalFold(elem, "upgrade"):
			t.upgrade = true
		}
	}
}

func (t *connTokens) addString(value string) {
	for len(value) > 0 {
		var elem string
		if i := indexByteString(value, ','); i >= 0 {
			elem, value = value[:i], value[i+1:]
		} else {
			elem, value = value, ""
		}
		for len(elem) > 0 && isOWS(elem[0]) {
			elem = elem[1:]
		}
		for len(elem) > 0 && isOWS(elem[len(elem)-1]) {
			elem = elem[:len(elem)-1]
		}
		switch {
		case http.EqualFoldLower(elem, "close"):
			t.close = true
		case http.EqualFoldLower(elem, "keep-alive"):
			t.keepAlive = true
		case http.EqualFoldLower(elem, "upgrade"):
			t.upgrade = true
		}
	}
}

func indexByteString(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// maxContentLength keeps Content-Length arithmetic far from overflow: 18
// decimal digits, about 1 EB.
const maxContentLengthDigits = 18

// parseDecimal parses 1*DIGIT, at most 18 digits. It returns -1 if b is
// anything else (a sign, whitespace, an empty string, too many digits).
func parseDecimal(b []byte) int64 {
	if len(b) == 0 || len(b) > maxContentLengthDigits {
		return -1
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func parseDecimalString(s string) int64 {
	if len(s) == 0 || len(s) > maxContentLengthDigits {
		return -1
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// contentLength accumulates Content-Length fields. RFC 9110 section 8.6 lets
// a recipient accept a list of identical values (a field repeated, or
// "5, 5"), but Envoy's parser (Balsa, with disallow_multiple_content_length)
// refuses both, and so does skiff: one field, one decimal value.
type contentLength struct {
	n     int64 // -1: none seen
	first []byte
}

func (cl *contentLength) reset() { cl.n, cl.first = -1, nil }

// add records one field value and reports an error message, or "".
func (cl *contentLength) add(value []byte) string {
	if cl.first != nil {
		return "more than one content-length field"
	}
	if len(value) == 0 {
		return "empty content-length"
	}
	n := parseDecimal(value)
	if n < 0 {
		return "invalid content-length"
	}
	cl.n, cl.first = n, value
	return ""
}

// transferEncoding accumulates Transfer-Encoding fields (RFC 9112 section 6.1).
type transferEncoding struct {
	seen        bool
	fields      int  // field lines
	codings     int  // codings listed, over all fields
	chunked     int  // how many of them are chunked
	lastChunked bool // the final coding is chunked
	onlyChunked bool // one field, whose whole value is "chunked" (any case)
}

func (te *transferEncoding) add(value []byte) {
	te.seen = true
	te.fields++
	te.onlyChunked = te.fields == 1 && equalFold(value, "chunked")
	for elem, rest := nextElement(value); len(elem) > 0; elem, rest = nextElement(rest) {
		te.codings++
		te.lastChunked = equalFold(elem, "chunked")
		if te.lastChunked {
			te.chunked++
		}
	}
}

// check returns the error for a request Transfer-Encoding skiff does not
// frame, or nil. As in Envoy (codec_impl.cc), the only one accepted is a
// single field whose value is "chunked" (in any case); any other (identity,
// gzip, "chunked, gzip", chunked twice, on one line or two) is answered 501
// (http1.invalid_transfer_encoding).
func (te *transferEncoding) check() *Error {
	if te.onlyChunked {
		return nil
	}
	return protoErr(KindFraming, 501, DetailsInvalidTransferEnc, "unsupported transfer-encoding")
}

// parseField splits a header field line (without its CRLF) into a lower-cased
// name and a value trimmed of whitespace. It lower-cases the name in place.
func parseField(line []byte) (name, value []byte, err *Error) {
	if len(line) > 0 && isOWS(line[0]) {
		// obs-fold (RFC 9112 section 5.2), or whitespace before the first field
		// (section 2.2): both rejected.
		return nil, nil, errMalformed("obs-fold or leading whitespace in a header field")
	}
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return nil, nil, errMalformed("header field without a colon")
	}
	name = line[:colon]
	if !isToken(name) {
		if len(name) > 0 && isOWS(name[len(name)-1]) {
			return nil, nil, errMalformed("whitespace between a field name and the colon")
		}
		return nil, nil, errInvalidChars("invalid header field name")
	}
	value = trimOWS(line[colon+1:])
	for _, c := range value {
		if classes[c]&classValue == 0 {
			return nil, nil, errInvalidChars("invalid byte in a header field value")
		}
	}
	lower(name)
	return name, value, nil
}

// parseVersion parses "HTTP/1.0" or "HTTP/1.1" and returns the minor version.
// Any other well-formed HTTP-version is a KindVersion error; anything else
// KindMalformed. It is for status lines: request lines take any version (see
// parseRequestVersion).
func parseVersion(b []byte) (minor int, err *Error) {
	if !wellFormedVersion(b) {
		return 0, errMalformed("invalid HTTP version")
	}
	if b[5] != '1' || b[7] > '1' {
		return 0, protoErr(KindVersion, 505, DetailsCodecError, "unsupported HTTP version")
	}
	return int(b[7] - '0'), nil
}

// wellFormedVersion reports whether b is "HTTP/" DIGIT "." DIGIT.
func wellFormedVersion(b []byte) bool {
	return len(b) == 8 && string(b[:5]) == "HTTP/" && b[6] == '.' && isDigit(b[5]) && isDigit(b[7])
}

// parseRequestVersion parses a request line's HTTP-version as Envoy does: any
// well-formed version is accepted, and every version but HTTP/1.1 is taken
// for HTTP/1.0 (minor 0), which the connection manager then refuses with 426
// unless accept_http_10 is set (Envoy's isHttp11 and its Http10 protocol).
func parseRequestVersion(b []byte) (minor int, err *Error) {
	if !wellFormedVersion(b) {
		return 0, errMalformed("invalid HTTP version")
	}
	if string(b) == "HTTP/1.1" {
		return 1, nil
	}
	return 0, nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// requestLine is a parsed request line.
type requestLine struct {
	method, target []byte
	minor          int
}

// parseRequestLine parses method SP request-target SP HTTP-version, with
// exactly one SP between the parts (RFC 9112 section 3). Unless
// customMethods, the method must be one knownMethod accepts.
func parseRequestLine(line []byte, customMethods bool) (rl requestLine, err *Error) {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return rl, errMalformed("malformed request line")
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return rl, errMalformed("malformed request line")
	}
	rl.method, rl.target = line[:sp1], rest[:sp2]
	if !isToken(rl.method) {
		return rl, errInvalidChars("invalid method")
	}
	if !customMethods && !knownMethod(rl.method) {
		return rl, errMalformed("unknown method")
	}
	for _, c := range rl.target {
		if classes[c]&classTarget == 0 {
			return rl, protoErr(KindMalformed, 400, DetailsInvalidURL, "invalid byte in the request target")
		}
	}
	rl.minor, err = parseRequestVersion(rest[sp2+1:])
	return rl, err
}

// knownMethod reports whether m is one of the methods Envoy's HTTP/1 parser
// accepts when allow_custom_methods is off (balsa_parser.cc isMethodValid):
// RFC 9110's, PATCH, WebDAV's and a few more, matched case-sensitively.
func knownMethod(m []byte) bool {
	switch string(m) {
	case "ACL", "BIND", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET",
		"HEAD", "LINK", "LOCK", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL",
		"MOVE", "MSEARCH", "NOTIFY", "OPTIONS", "PATCH", "POST", "PROPFIND",
		"PROPPATCH", "PURGE", "PUT", "REBIND", "REPORT", "SEARCH", "SOURCE",
		"SUBSCRIBE", "TRACE", "UNBIND", "UNLINK", "UNLOCK", "UNSUBSCRIBE":
		return true
	}
	return false
}

// statusLine is a parsed status line.
type statusLine struct {
	code  int
	minor int
}

// parseStatusLine parses HTTP-version SP 3DIGIT SP [reason-phrase]; a status
// line that ends right after the code (no SP) is accepted too, as many
// clients do.
func parseStatusLine(line []byte) (sl statusLine, err *Error) {
	if len(line) < 12 || line[8] != ' ' {
		return sl, errMalformed("malformed status line")
	}
	sl.minor, err = parseVersion(line[:8])
	if err != nil {
		return sl, err
	}
	code := line[9:12]
	if !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) || code[0] == '0' {
		return sl, errMalformed("invalid status code")
	}
	sl.code = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if len(line) > 12 {
		if line[12] != ' ' {
			return sl, errMalformed("malformed status line")
		}
		for _, c := range line[13:] {
			if classes[c]&classValue == 0 {
				return sl, errInvalidChars("invalid byte in the reason phrase")
			}
		}
	}
	return sl, nil
}

// parseStatus parses a :status value: three digits, 100 to 999.
func parseStatus(s string) int {
	if len(s) != 3 || !isDigit(s[0]) || !isDigit(s[1]) || !isDigit(s[2]) || s[0] == '0' {
		return 0
	}
	return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0')
}

// splitAbsolute splits an absolute-form target (RFC 9112 section 3.2.2) into
// its scheme (https or not), its authority and its path and query ("" when
// the path is empty). ok is false if target is not an http or https URI with
// an authority.
func splitAbsolute(target []byte) (https bool, authority, path []byte, ok bool) {
	i := bytes.Index(target, []byte("://"))
	if i < 0 {
		return false, nil, nil, false
	}
	scheme := target[:i]
	https = equalFold(scheme, "https")
	if !https && !equalFold(scheme, "http") {
		return false, nil, nil, false
	}
	rest := target[i+3:]
	end := len(rest)
	if j := bytes.IndexAny(rest, "/?"); j >= 0 {
		end = j
	}
	authority, path = rest[:end], rest[end:]
	if !validAuthority(authority) {
		return false, nil, nil, false
	}
	return https, authority, path, true
}

// Reason phrases for the status codes skiff is likely to send.
func reasonPhrase(code int) string {
	switch code {
	case 100:
		return "Continue"
	case 101:
		return "Switching Protocols"
	case 102:
		return "Processing"
	case 103:
		return "Early Hints"
	case 200:
		return "OK"
	case 201:
		return "Created"
	case 202:
		return "Accepted"
	case 203:
		return "Non-Authoritative Information"
	case 204:
		return "No Content"
	case 205:
		return "Reset Content"
	case 206:
		return "Partial Content"
	case 207:
		return "Multi-Status"
	case 300:
		return "Multiple Choices"
	case 301:
		return "Moved Permanently"
	case 302:
		return "Found"
	case 303:
		return "See Other"
	case 304:
		return "Not Modified"
	case 307:
		return "Temporary Redirect"
	case 308:
		return "Permanent Redirect"
	case 400:
		return "Bad Request"
	case 401:
		return "Unauthorized"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 406:
		return "Not Acceptable"
	case 408:
		return "Request Timeout"
	case 409:
		return "Conflict"
	case 410:
		return "Gone"
	case 411:
		return "Length Required"
	case 412:
		return "Precondition Failed"
	case 413:
		return "Content Too Large"
	case 414:
		return "URI Too Long"
	case 415:
		return "Unsupported Media Type"
	case 416:
		return "Range Not Satisfiable"
	case 417:
		return "Expectation Failed"
	case 421:
		return "Misdirected Request"
	case 422:
		return "Unprocessable Content"
	case 425:
		return "Too Early"
	case 426:
		return "Upgrade Required"
	case 428:
		return "Precondition Required"
	case 429:
		return "Too Many Requests"
	case 431:
		return "Request Header Fields Too Large"
	case 500:
		return "Internal Server Error"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	case 505:
		return "HTTP Version Not Supported"
	}
	return ""
}
