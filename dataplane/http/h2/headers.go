package h2

import (
	"github.com/skiffproxy/skiff/dataplane/http"
)

// connectionSpecific reports the fields HTTP/2 forbids (RFC 9113 section
// 8.2.2); "te" is allowed with the value "trailers" only, checked apart.
func connectionSpecific(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// tokenLower marks the bytes allowed in a field name: RFC 9110's tchar, lower
// case only (RFC 9113 section 8.2.1 forbids upper case).
var tokenLower = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func validName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !tokenLower[name[i]] {
			return false
		}
	}
	return true
}

// validValue applies RFC 9113 section 8.2.1: no NUL, CR or LF, and no
// whitespace at either end.
func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case 0, '\r', '\n':
			return false
		}
	}
	if n := len(v); n > 0 && (v[0] == ' ' || v[0] == '\t' || v[n-1] == ' ' || v[n-1] == '\t') {
		return false
	}
	return true
}

// parseContentLength parses a content-length value: digits only, not
// overflowing.
func parseContentLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// fieldCheck is the state of one pass over a received header block.
type fieldCheck struct {
	sawRegular    bool
	bad           bool
	method        string
	scheme        string
	path          string
	authority     string
	status        string
	host          string
	hasMethod     bool
	hasScheme     bool
	hasPath       bool
	hasAuthority  bool
	hasStatus     bool
	hasHost       bool
	contentLength int64
}

// regular checks a regular (non-pseudo) field.
func (fc *fieldCheck) regular(name, value string) {
	fc.sawRegular = true
	if !validName(name) || !validValue(value) || connectionSpecific(name) {
		fc.bad = true
		return
	}
	switch name {
	case "te":
		if value != "trailers" {
			fc.bad = true
		}
	case "content-length":
		n, ok := parseContentLength(value)
		if !ok || (fc.contentLength >= 0 && n != fc.contentLength) {
			fc.bad = true
		}
		fc.contentLength = n
	case "host":
		if fc.hasHost {
			fc.bad = true
		}
		fc.hasHost, fc.host = true, value
	}
}

// validateRequest checks a request header (RFC 9113 sections 8.2 and 8.3.1)
// and normalizes it: Host becomes :authority. It returns the content-length
// (-1 if none).
func validateRequest(h *http.Header) (int64, bool) {
	fc := fieldCheck{contentLength: -1}
	h.Range(func(name, value string) bool {
		if len(name) > 0 && name[0] == ':' {
			if fc.sawRegular || !validValue(value) {
				fc.bad = true
				return false
			}
			var seen *bool
			switch name {
			case http.Method:
				seen, fc.method = &fc.hasMethod, value
			case http.Scheme:
				seen, fc.scheme = &fc.hasScheme, value
			case http.Path:
				seen, fc.path = &fc.hasPath, value
			case http.Authority:
				seen, fc.authority = &fc.hasAuthority, value
			default: // :status, :protocol (extended CONNECT is not offered), unknown
				fc.bad = true
				return false
			}
			if *seen {
				fc.bad = true
				return false
			}
			*seen = true
			return true
		}
		fc.regular(name, value)
		return !fc.bad
	})
	if fc.bad || !fc.hasMethod || !methodChars(fc.method) {
		return 0, false
	}
	if fc.method == "CONNECT" {
		if fc.hasScheme || fc.hasPath || !fc.hasAuthority {
			return 0, false
		}
	} else {
		if !fc.hasScheme || !fc.hasPath || fc.path == "" || fc.scheme == "" {
			return 0, false
		}
		if (fc.scheme == "http" || fc.scheme == "https") && fc.path[0] != '/' && !(fc.path == "*" && fc.method == "OPTIONS") {
			return 0, false
		}
	}
	if fc.hasHost {
		if fc.hasAuthority && fc.host != fc.authority {
			return 0, false
		}
		if !fc.hasAuthority {
			h.Add(http.Authority, fc.host)
		}
		h.Del("host")
	}
	return fc.contentLength, true
}

// methodChars reports whether m is a token (methods are case-sensitive, so
// upper case is allowed here).
func methodChars(m string) bool {
	for i := 0; i < len(m); i++ {
		c := m[i]
		if 'A' <= c && c <= 'Z' {
			continue
		}
		if !tokenLower[c] {
			return false
		}
	}
	return m != ""
}

// validateResponse checks a response header (RFC 9113 sections 8.2 and 8.3.2)
// and returns its status and content-length (-1 if none).
func validateResponse(h *http.Header) (status int, contentLength int64, ok bool) {
	fc := fieldCheck{contentLength: -1}
	h.Range(func(name, value string) bool {
		if len(name) > 0 && name[0] == ':' {
			if fc.sawRegular || name != http.Status || fc.hasStatus {
				fc.bad = true
				return false
			}
			fc.hasStatus, fc.status = true, value
			return true
		}
		fc.regular(name, value)
		return !fc.bad
	})
	if fc.bad || !fc.hasStatus || len(fc.status) != 3 {
		return 0, 0, false
	}
	for i := 0; i < 3; i++ {
		c := fc.status[i]
		if c < '0' || c > '9' {
			return 0, 0, false
		}
		status = status*10 + int(c-'0')
	}
	if status < 100 || status == 101 {
		return 0, 0, false
	}
	return status, fc.contentLength, true
}

// validateTrailers checks trailers: no pseudo-header fields, valid fields.
func validateTrailers(h *http.Header) bool {
	fc := fieldCheck{contentLength: -1}
	h.Range(func(name, value string) bool {
		if len(name) > 0 && name[0] == ':' {
			fc.bad = true
			return false
		}
		fc.regular(name, value)
		return !fc.bad
	})
	return !fc.bad
}
