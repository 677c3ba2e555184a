package route

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Formatters are the %COMMAND% substitutions a header value may use. Envoy
// accepts its whole access-log command language here; skiff accepts the
// commands below and refuses any other by name, so a value is never sent
// with a command left unexpanded or silently dropped. A command with nothing
// to say (no address known yet) yields "", and an empty value is not added
// unless keep_empty_value is set, as in Envoy.
var formatters = map[string]func(dst []byte, info *http.StreamInfo) []byte{
	"DOWNSTREAM_REMOTE_ADDRESS": func(dst []byte, info *http.StreamInfo) []byte {
		if !info.DownstreamRemote.IsValid() {
			return dst
		}
		return info.DownstreamRemote.AppendTo(dst)
	},
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": func(dst []byte, info *http.StreamInfo) []byte {
		if !info.DownstreamRemote.IsValid() {
			return dst
		}
		return info.DownstreamRemote.Addr().AppendTo(dst)
	},
	"DOWNSTREAM_REMOTE_PORT": func(dst []byte, info *http.StreamInfo) []byte {
		if !info.DownstreamRemote.IsValid() {
			return dst
		}
		return strconv.AppendUint(dst, uint64(info.DownstreamRemote.Port()), 10)
	},
	"DOWNSTREAM_LOCAL_ADDRESS": func(dst []byte, info *http.StreamInfo) []byte {
		if !info.DownstreamLocal.IsValid() {
			return dst
		}
		return info.DownstreamLocal.AppendTo(dst)
	},
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": func(dst []byte, info *http.StreamInfo) []byte {
		if !info.DownstreamLocal.IsValid() {
			return dst
		}
		return info.DownstreamLocal.Addr().AppendTo(dst)
	},
	"DOWNSTREAM_LOCAL_PORT": func(dst []byte, info *http.StreamInfo) []byte {
		if !info.DownstreamLocal.IsValid() {
			return dst
		}
		return strconv.AppendUint(dst, uint64(info.DownstreamLocal.Port()), 10)
	},
	"PROTOCOL": func(dst []byte, info *http.StreamInfo) []byte {
		return append(dst, info.Protocol...)
	},
	"ROUTE_NAME": func(dst []byte, info *http.StreamInfo) []byte {
		return append(dst, info.RouteName...)
	},
	"UPSTREAM_CLUSTER": func(dst []byte, info *http.StreamInfo) []byte {
		return append(dst, info.UpstreamCluster...)
	},
}

// FormatterCommands lists the %COMMAND%s header values may use, sorted.
func FormatterCommands() []string {
	return slices.Sorted(maps.Keys(formatters))
}

// valuePart is literal text or a formatter command.
type valuePart struct {
	lit string
	fn  func(dst []byte, info *http.StreamInfo) []byte
}

// headerValue is a header value to add: a literal, or parts to format.
type headerValue struct {
	lit   string
	parts []valuePart // nil for a literal
}

// parseHeaderValue splits an Envoy header value into literal text ("%%" is
// a literal "%") and %COMMAND%s.
func parseHeaderValue(s string) (headerValue, error) {
	if !strings.Contains(s, "%") {
		return headerValue{lit: s}, nil
	}
	var parts []valuePart
	var lit strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			lit.WriteByte(c)
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			lit.WriteByte('%')
			i++
			continue
		}
		end := strings.IndexByte(s[i+1:], '%')
		if end < 0 {
			return headerValue{}, fmt.Errorf("unescaped %% at position %d (write %%%% for a literal %%)", i)
		}
		cmd := s[i+1 : i+1+end]
		fn, ok := formatters[cmd]
		if !ok {
			return headerValue{}, fmt.Errorf("%%%s%% is not supported by skiff (supported: %s; write %%%% for a literal %%)", cmd, strings.Join(FormatterCommands(), ", "))
		}
		if lit.Len() > 0 {
			parts = append(parts, valuePart{lit: lit.String()})
			lit.Reset()
		}
		parts = append(parts, valuePart{fn: fn})
		i += end + 1
	}
	if parts == nil {
		return headerValue{lit: lit.String()}, nil
	}
	if lit.Len() > 0 {
		parts = append(parts, valuePart{lit: lit.String()})
	}
	return headerValue{parts: parts}, nil
}

// format returns the value, using buf for formatted ones (allocating it on
// first use: a literal needs none). The result may point into buf and is only
// valid until buf is reused.
func (v *headerValue) format(buf []byte, info *http.StreamInfo) ([]byte, string) {
	if v.parts == nil {
		return buf, v.lit
	}
	var zero http.StreamInfo
	if info == nil {
		info = &zero
	}
	if buf == nil {
		buf = make([]byte, 0, 64)
	}
	buf = buf[:0]
	for _, p := range v.parts {
		if p.fn != nil {
			buf = p.fn(buf, info)
		} else {
			buf = append(buf, p.lit...)
		}
	}
	if len(buf) == 0 {
		return buf, ""
	}
	// Header.Add copies the bytes, so a string over buf is safe to hand it.
	return buf, unsafe.String(&buf[0], len(buf))
}

// headerAdd is one of request/response_headers_to_add.
type headerAdd struct {
	name      string
	value     headerValue
	action    corev3.HeaderValueOption_HeaderAppendAction
	keepEmpty bool
}

// headerMutation is one level's (route, virtual host, route configuration)
// headers_to_add and headers_to_remove, applied as Envoy's HeaderParser does:
// removals first; then every value to add is decided against the headers as
// they are after the removals (ADD_IF_ABSENT and OVERWRITE_IF_EXISTS look at
// those, not at what this level adds); then the overwrites are applied, then
// the additions, each in configuration order.
//
// A field added to a request (a response if resp) whose name is one of
// Envoy's inline headers and which is already there is joined to it, after
// a comma, as Envoy's header map appends to an inline header (see
// http.Header.JoinInline).
type headerMutation struct {
	remove []string
	add    []headerAdd
	resp   bool
}

// compileMutation compiles one level's lists, of a request's headers or (resp)
// a response's. addField and removeField are the lists' field names, for
// errors.
func compileMutation(resp bool, addField string, adds []*corev3.HeaderValueOption, removeField string, removes []string) (*headerMutation, error) {
	if len(adds) == 0 && len(removes) == 0 {
		return nil, nil
	}
	m := &headerMutation{resp: resp}
	for i, hvo := range adds {
		a, err := compileHeaderAdd(hvo)
		if err != nil {
			return nil, cfgerr.Index(addField, i, err)
		}
		m.add = append(m.add, a)
	}
	for i, name := range removes {
		name = http.LowerASCII(name)
		if name == "" || name[0] == ':' || name == "host" {
			return nil, cfgerr.Index(removeField, i, fmt.Errorf(":-prefixed or host headers may not be removed"))
		}
		m.remove = append(m.remove, name)
	}
	return m, nil
}

func compileHeaderAdd(hvo *corev3.HeaderValueOption) (headerAdd, error) {
	if err := cfgerr.OnlyFields(hvo, "header", "append", "append_action", "keep_empty_value"); err != nil {
		return headerAdd{}, err
	}
	hv := hvo.GetHeader()
	if err := cfgerr.OnlyFields(hv, "key", "value"); err != nil {
		return headerAdd{}, cfgerr.Field("header", err)
	}
	name := http.LowerASCII(hv.GetKey())
	if name == "" || name[0] == ':' || name == "host" {
		return headerAdd{}, cfgerr.Errorf("header.key", ":-prefixed or host headers may not be modified")
	}
	val, err := parseHeaderValue(hv.GetValue())
	if err != nil {
		return headerAdd{}, cfgerr.Field("header.value", err)
	}
	a := headerAdd{name: name, value: val, action: hvo.GetAppendAction(), keepEmpty: hvo.GetKeepEmptyValue()}
	//lint:ignore SA1019 append is deprecated but still Envoy's API, with this meaning
	if app := hvo.GetAppend(); app != nil {
		if a.action != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			return headerAdd{}, cfgerr.Errorf("append", "both append and append_action are set")
		}
		if !app.GetValue() {
			a.action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		}
	}
	switch a.action {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, corev3.HeaderValueOption_ADD_IF_ABSENT,
		corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
	default:
		return headerAdd{}, cfgerr.Errorf("append_action", "unknown action %d", a.action)
	}
	return a, nil
}

// Decisions for one headerAdd.
const (
	decSkip uint8 = iota
	decAdd
	decOverwrite
)

// apply mutates h. It does not allocate when the values are literals and
// the level adds at most 16 headers (beyond what h itself needs to grow);
// formatted values cost one buffer per level.
func (m *headerMutation) apply(h *http.Header, info *http.StreamInfo) {
	for _, name := range m.remove {
		h.Del(name)
	}
	if len(m.add) == 0 {
		return
	}
	var stackDec [16]uint8
	dec := stackDec[:0]
	var buf []byte
	var v string
	for i := range m.add {
		a := &m.add[i]
		d := decSkip
		buf, v = a.value.format(buf, info)
		if v != "" || a.keepEmpty {
			switch a.action {
			case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
				d = decAdd
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				if !h.Has(a.name) {
					d = decAdd
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				if h.Has(a.name) {
					d = decOverwrite
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
				d = decOverwrite
			}
		}
		dec = append(dec, d)
	}
	// Formatted values depend only on info, so formatting them again below
	// gives what was decided on.
	for i, d := range dec {
		if d == decOverwrite {
			a := &m.add[i]
			buf, v = a.value.format(buf, info)
			h.Set(a.name, v)
		}
	}
	added := false
	for i, d := range dec {
		if d == decAdd {
			a := &m.add[i]
			buf, v = a.value.format(buf, info)
			h.Add(a.name, v)
			added = true
		}
	}
	if added {
		h.JoinInline(m.resp)
	}
}

// HeadersToAdd is a compiled headers_to_add list of an HTTP filter's own
// (local_ratelimit's response_headers_to_add, ...), applied as the route
// table applies its own: Envoy's HeaderParser semantics, the same value
// syntax (%COMMAND%s as FormatterCommands lists them) and errors.
type HeadersToAdd struct{ m *headerMutation }

// CompileHeadersToAdd compiles list, for a request's headers or (resp) a
// response's; field is its name, for errors.
func CompileHeadersToAdd(resp bool, field string, list []*corev3.HeaderValueOption) (HeadersToAdd, error) {
	m, err := compileMutation(resp, field, list, "", nil)
	return HeadersToAdd{m}, err
}

// Apply adds the headers to h; info is the exchange's, for formatted values.
// It does not allocate for literal values and lists of up to 16.
func (a HeadersToAdd) Apply(h *http.Header, info *http.StreamInfo) {
	if a.m != nil {
		a.m.apply(h, info)
	}
}

// applyAll applies levels in order, skipping nil ones.
func applyAll(levels []*headerMutation, h *http.Header, info *http.StreamInfo) {
	for _, m := range levels {
		if m != nil {
			m.apply(h, info)
		}
	}
}
