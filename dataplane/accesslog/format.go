package accesslog

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// DefaultFormat is Envoy's default access log format.
const DefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// Commands lists the %COMMAND%s skiff's formats know, sorted.
func Commands() []string {
	out := make([]string, 0, len(commands)+4)
	for name := range commands {
		out = append(out, name)
	}
	out = append(out, "REQ", "RESP", "TRAILER", "START_TIME")
	sortStrings(out)
	return out
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// kind is how a command's value is typed in a JSON format.
type kind uint8

const (
	kindString kind = iota
	kindNumber
)

// command renders one %COMMAND%. It appends the value to dst and reports
// whether there is one (absent values render as "-" in text, null in JSON).
type command struct {
	name string
	kind kind
	fn   func(dst []byte, e *http.Exchange) ([]byte, bool)
}

var commands = map[string]command{}

func def(name string, k kind, fn func(dst []byte, e *http.Exchange) ([]byte, bool)) {
	commands[name] = command{name: name, kind: k, fn: fn}
}

func init() {
	def("PROTOCOL", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return appendIf(d, e.Info.Protocol)
	})
	def("RESPONSE_CODE", kindNumber, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return strconv.AppendInt(d, int64(e.Info.ResponseCode), 10), true
	})
	def("RESPONSE_CODE_DETAILS", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return appendIf(d, e.Info.ResponseCodeDetails)
	})
	def("LOCAL_REPLY_BODY", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return append(d, e.Info.LocalReplyBody...), true // Envoy's: empty, never "-"
	})
	def("RESPONSE_FLAGS", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return e.Info.AppendResponseFlags(d, false), true
	})
	def("RESPONSE_FLAGS_LONG", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return e.Info.AppendResponseFlags(d, true), true
	})
	def("BYTES_RECEIVED", kindNumber, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return strconv.AppendInt(d, e.Info.BytesReceived, 10), true
	})
	def("BYTES_SENT", kindNumber, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return strconv.AppendInt(d, e.Info.BytesSent, 10), true
	})
	def("DURATION", kindNumber, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return strconv.AppendInt(d, e.Info.Duration.Milliseconds(), 10), true
	})
	def("REQUEST_DURATION", kindNumber, durationOf(func(i *http.StreamInfo) time.Duration { return i.RequestComplete }))
	def("RESPONSE_DURATION", kindNumber, durationOf(func(i *http.StreamInfo) time.Duration { return i.ResponseStart }))
	def("RESPONSE_TX_DURATION", kindNumber, func(d []byte, e *http.Exchange) ([]byte, bool) {
		if e.Info.ResponseStart == 0 || e.Info.ResponseComplete == 0 {
			return d, false
		}
		return strconv.AppendInt(d, (e.Info.ResponseComplete - e.Info.ResponseStart).Milliseconds(), 10), true
	})
	def("UPSTREAM_HOST", kindString, upstreamHost)
	def("UPSTREAM_REMOTE_ADDRESS", kindString, upstreamHost)
	def("UPSTREAM_LOCAL_ADDRESS", kindString, addrOf(func(i *http.StreamInfo) netip.AddrPort { return i.UpstreamLocal }, true))
	def("UPSTREAM_CLUSTER", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return appendIf(d, e.Info.UpstreamCluster)
	})
	def("UPSTREAM_TRANSPORT_FAILURE_REASON", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return appendIf(d, e.Info.UpstreamTransportFailureReason)
	})
	def("UPSTREAM_REQUEST_ATTEMPT_COUNT", kindNumber, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return strconv.AppendInt(d, int64(e.Info.UpstreamAttempts), 10), true
	})
	for _, a := range []struct {
		name string
		get  func(i *http.StreamInfo) netip.AddrPort
	}{
		{"DOWNSTREAM_REMOTE_ADDRESS", func(i *http.StreamInfo) netip.AddrPort { return i.DownstreamRemote }},
		{"DOWNSTREAM_LOCAL_ADDRESS", func(i *http.StreamInfo) netip.AddrPort { return i.DownstreamLocal }},
		{"DOWNSTREAM_DIRECT_REMOTE_ADDRESS", func(i *http.StreamInfo) netip.AddrPort { return i.DownstreamDirectRemote }},
	} {
		def(a.name, kindString, addrOf(a.get, true))
		def(a.name+"_WITHOUT_PORT", kindString, addrOf(a.get, false))
	}
	def("DOWNSTREAM_REMOTE_PORT", kindNumber, portOf(func(i *http.StreamInfo) netip.AddrPort { return i.DownstreamRemote }))
	def("DOWNSTREAM_LOCAL_PORT", kindNumber, portOf(func(i *http.StreamInfo) netip.AddrPort { return i.DownstreamLocal }))
	def("DOWNSTREAM_DIRECT_REMOTE_PORT", kindNumber, portOf(func(i *http.StreamInfo) netip.AddrPort { return i.DownstreamDirectRemote }))
	def("REQUESTED_SERVER_NAME", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return appendIf(d, e.Info.RequestedServerName)
	})
	def("ROUTE_NAME", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return appendIf(d, e.Info.RouteName)
	})
	def("VIRTUAL_HOST_NAME", kindString, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return appendIf(d, e.Info.VirtualHostName)
	})
	def("CONNECTION_ID", kindNumber, func(d []byte, e *http.Exchange) ([]byte, bool) {
		return strconv.AppendUint(d, e.Info.ConnectionID, 10), true
	})
	hostname, _ := os.Hostname()
	def("HOSTNAME", kindString, func(d []byte, _ *http.Exchange) ([]byte, bool) { return appendIf(d, hostname) })
}

func appendIf(d []byte, s string) ([]byte, bool) {
	if s == "" {
		return d, false
	}
	return append(d, s...), true
}

func durationOf(get func(*http.StreamInfo) time.Duration) func([]byte, *http.Exchange) ([]byte, bool) {
	return func(d []byte, e *http.Exchange) ([]byte, bool) {
		v := get(&e.Info)
		if v == 0 {
			return d, false
		}
		return strconv.AppendInt(d, v.Milliseconds(), 10), true
	}
}

func addrOf(get func(*http.StreamInfo) netip.AddrPort, withPort bool) func([]byte, *http.Exchange) ([]byte, bool) {
	return func(d []byte, e *http.Exchange) ([]byte, bool) {
		ap := get(&e.Info)
		if !ap.IsValid() {
			return d, false
		}
		if withPort {
			return ap.AppendTo(d), true
		}
		return ap.Addr().AppendTo(d), true
	}
}

// upstreamHost is the upstream host's address, or its unix socket's path.
func upstreamHost(d []byte, e *http.Exchange) ([]byte, bool) {
	if p := e.Info.UpstreamPipe; p != "" {
		return append(d, p...), true
	}
	if ap := e.Info.UpstreamHost; ap.IsValid() {
		return ap.AppendTo(d), true
	}
	return d, false
}

func portOf(get func(*http.StreamInfo) netip.AddrPort) func([]byte, *http.Exchange) ([]byte, bool) {
	return func(d []byte, e *http.Exchange) ([]byte, bool) {
		ap := get(&e.Info)
		if !ap.IsValid() {
			return d, false
		}
		return strconv.AppendUint(d, uint64(ap.Port()), 10), true
	}
}

// part is a literal or a command of a parsed format.
type part struct {
	literal string
	cmd     *command
	// REQ, RESP, TRAILER: the header and its alternative.
	hdr     byte // 'q' request, 'p' response, 't' trailers
	name    string
	alt     string
	maxLen  int // :Z, 0 for none
	timeFmt *timeFormat
	isStart bool
}

// Format is a parsed text format: literals and %COMMAND%s.
type Format struct {
	parts []part
}

// ParseFormat parses an access log format string with Envoy's %COMMAND%
// syntax. Unknown commands are errors naming them.
func ParseFormat(s string) (*Format, error) {
	f := &Format{}
	var lit strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		if c != '%' {
			lit.WriteByte(c)
			i++
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			lit.WriteByte('%')
			i += 2
			continue
		}
		end := commandEnd(s[i+1:])
		if end < 0 {
			return nil, fmt.Errorf("unterminated %%COMMAND%% at offset %d: %q", i, s[i:])
		}
		p, err := parseCommand(s[i+1 : i+1+end])
		if err != nil {
			return nil, err
		}
		if lit.Len() > 0 {
			f.parts = append(f.parts, part{literal: lit.String()})
			lit.Reset()
		}
		f.parts = append(f.parts, p)
		i += end + 2
	}
	if lit.Len() > 0 {
		f.parts = append(f.parts, part{literal: lit.String()})
	}
	return f, nil
}

// commandEnd returns the index of the '%' that ends the command s starts
// with (after its opening '%'): past a parenthesized argument, which may hold
// '%'s of its own (START_TIME's format), or -1.
func commandEnd(s string) int {
	i := 0
	for i < len(s) && (s[i] >= 'A' && s[i] <= 'Z' || s[i] >= '0' && s[i] <= '9' || s[i] == '_') {
		i++
	}
	if i < len(s) && s[i] == '(' {
		j := strings.IndexByte(s[i:], ')')
		if j < 0 {
			return -1
		}
		i += j
	}
	k := strings.IndexByte(s[i:], '%')
	if k < 0 {
		return -1
	}
	return i + k
}

// parseCommand parses the inside of %...%: NAME, NAME(ARG) or NAME(ARG):Z.
func parseCommand(s string) (part, error) {
	name, arg, hasArg := s, "", false
	maxLen := 0
	if i := strings.IndexByte(s, '('); i >= 0 {
		j := strings.LastIndexByte(s, ')')
		if j < i {
			return part{}, fmt.Errorf("%%%s%%: missing ')'", s)
		}
		name, arg, hasArg = s[:i], s[i+1:j], true
		rest := s[j+1:]
		if rest != "" {
			if rest[0] != ':' {
				return part{}, fmt.Errorf("%%%s%%: unexpected %q after ')'", s, rest)
			}
			n, err := strconv.Atoi(rest[1:])
			if err != nil || n <= 0 {
				return part{}, fmt.Errorf("%%%s%%: invalid length %q", s, rest[1:])
			}
			maxLen = n
		}
	}
	switch name {
	case "REQ", "RESP", "TRAILER":
		if !hasArg || arg == "" {
			return part{}, fmt.Errorf("%%%s%%: needs a header name, as %s(X?Y):Z", s, name)
		}
		p := part{hdr: map[string]byte{"REQ": 'q', "RESP": 'p', "TRAILER": 't'}[name], maxLen: maxLen}
		main, alt, _ := strings.Cut(arg, "?")
		if strings.Contains(alt, "?") { // Envoy's header rules allow one alternative
			return part{}, fmt.Errorf("%%%s%%: more than 1 alternative header specified in %q", s, arg)
		}
		p.name, p.alt = strings.ToLower(main), strings.ToLower(alt)
		return p, nil
	case "START_TIME":
		tf, err := parseTimeFormat(arg)
		if err != nil {
			return part{}, fmt.Errorf("%%%s%%: %w", s, err)
		}
		return part{isStart: true, timeFmt: tf}, nil
	}
	cmd, ok := commands[name]
	if !ok {
		return part{}, fmt.Errorf("%%%s%% is not a command skiff supports (supported: %s)", name, strings.Join(Commands(), ", "))
	}
	if hasArg {
		return part{}, fmt.Errorf("%%%s%% takes no argument", name)
	}
	return part{cmd: &cmd, maxLen: maxLen}, nil
}

// Append renders the format for e, appending to dst.
func (f *Format) Append(dst []byte, e *http.Exchange) []byte { return f.appendEmpty(dst, e, "-") }

// appendEmpty is Append with empty in place of a missing value ("-" by
// default, "" with omit_empty_values).
func (f *Format) appendEmpty(dst []byte, e *http.Exchange, empty string) []byte {
	for i := range f.parts {
		p := &f.parts[i]
		if p.cmd == nil && p.hdr == 0 && !p.isStart {
			dst = append(dst, p.literal...)
			continue
		}
		start := len(dst)
		var ok bool
		dst, ok = p.value(dst, e)
		if !ok {
			dst = append(dst[:start], empty...)
			continue
		}
		if p.maxLen > 0 {
			dst = truncate(dst, start, p.maxLen)
		}
	}
	return dst
}

// truncate cuts dst[start:] to at most n bytes, not inside a UTF-8 sequence.
func truncate(dst []byte, start, n int) []byte {
	if len(dst)-start <= n {
		return dst
	}
	end := start + n
	for end > start && !utf8.RuneStart(dst[end]) {
		end--
	}
	return dst[:end]
}

// value appends the part's value (without the "-" for a missing one).
func (p *part) value(dst []byte, e *http.Exchange) ([]byte, bool) {
	switch {
	case p.isStart:
		return p.timeFmt.append(dst, e.Info.Start), true
	case p.hdr != 0:
		var h *http.Header
		switch p.hdr {
		case 'q':
			h = e.Request
		case 'p':
			h = &e.Response
		case 't':
			h = e.ResponseTrailers()
		}
		if h == nil {
			return dst, false
		}
		v, ok := h.Get(p.name)
		if !ok && p.alt != "" {
			v, ok = h.Get(p.alt)
		}
		if !ok {
			return dst, false
		}
		return append(dst, v...), true
	default:
		return p.cmd.fn(dst, e)
	}
}

// typed reports whether the format is a single command with a numeric value
// (JSON formats render it as a number).
func (f *Format) typed() bool {
	return len(f.parts) == 1 && f.parts[0].cmd != nil && f.parts[0].cmd.kind == kindNumber
}

// Literal reports whether the format is only literal text, without a
// command: it renders the same for every exchange.
func (f *Format) Literal() bool {
	for _, p := range f.parts {
		if p.cmd != nil || p.hdr != 0 || p.isStart {
			return false
		}
	}
	return true
}

// single reports whether the format is a single command (JSON formats render
// a missing value as null).
func (f *Format) single() bool {
	return len(f.parts) == 1 && (f.parts[0].cmd != nil || f.parts[0].hdr != 0 || f.parts[0].isStart)
}
