// Package kit holds the small pieces skiff's HTTP filters share: a random
// value that stays the same for the whole of an exchange, Envoy's stat-prefix
// joining, and literal header additions (headers_to_add lists).
package kit

import (
	"strings"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Sample returns a pseudo-random value fixed for the exchange e: the same in
// OnRequest and OnResponse, different from one exchange to the next. A filter
// whose response half must agree with a fractional decision its request half
// took (was the filter enabled for this request?) samples with it, since a
// Filter keeps no per-stream state. salt decorrelates two decisions of one
// filter.
func Sample(e *http.Exchange, salt uint64) uint64 {
	x := uint64(e.Info.Start.UnixNano()) ^ uint64(uintptr(unsafe.Pointer(e)))<<1 ^ salt*0x9e3779b97f4a7c15
	// splitmix64's finalizer.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// StatPrefixJoin is Envoy's statPrefixJoin: token appended to prefix with a
// dot between them unless prefix is empty or already ends with one.
func StatPrefixJoin(prefix, token string) string {
	switch {
	case prefix == "":
		return token
	case strings.HasSuffix(prefix, "."):
		return prefix + token
	}
	return prefix + "." + token
}

// HeaderAdd is one compiled HeaderValueOption with a literal value.
type HeaderAdd struct {
	Name, Value string
	Action      corev3.HeaderValueOption_HeaderAppendAction
	KeepEmpty   bool
}

// HeaderAdds is a compiled headers_to_add list, applied as Envoy's
// HeaderParser applies one: each value decided against the headers as they
// were before the list (ADD_IF_ABSENT and OVERWRITE_IF_EXISTS look at those),
// then overwrites, then additions, each in configuration order.
type HeaderAdds []HeaderAdd

// CompileHeaderAdds compiles list (field is its name, for errors). Values are
// literal: a value with a %COMMAND% substitution is refused, so that it is
// never sent unexpanded.
func CompileHeaderAdds(field string, list []*corev3.HeaderValueOption) (HeaderAdds, error) {
	var out HeaderAdds
	for i, hvo := range list {
		a, err := compileHeaderAdd(hvo)
		if err != nil {
			return nil, cfgerr.Index(field, i, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func compileHeaderAdd(hvo *corev3.HeaderValueOption) (HeaderAdd, error) {
	if err := cfgerr.OnlyFields(hvo, "header", "append", "append_action", "keep_empty_value"); err != nil {
		return HeaderAdd{}, err
	}
	hv := hvo.GetHeader()
	if err := cfgerr.OnlyFields(hv, "key", "value"); err != nil {
		return HeaderAdd{}, cfgerr.Field("header", err)
	}
	name := strings.ToLower(hv.GetKey())
	if name == "" || name[0] == ':' || name == "host" {
		return HeaderAdd{}, cfgerr.Errorf("header.key", ":-prefixed or host headers may not be modified")
	}
	if strings.Contains(hv.GetValue(), "%") {
		return HeaderAdd{}, cfgerr.Errorf("header.value", "%%COMMAND%% substitutions are not supported by skiff here (a literal %% is written %%%%, which is refused too)")
	}
	a := HeaderAdd{Name: name, Value: hv.GetValue(), Action: hvo.GetAppendAction(), KeepEmpty: hvo.GetKeepEmptyValue()}
	//lint:ignore SA1019 append is deprecated but still Envoy's API, with this meaning
	if app := hvo.GetAppend(); app != nil {
		if a.Action != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			return HeaderAdd{}, cfgerr.Errorf("append", "both append and append_action are set")
		}
		if !app.GetValue() {
			a.Action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		}
	}
	switch a.Action {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, corev3.HeaderValueOption_ADD_IF_ABSENT,
		corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
	default:
		return HeaderAdd{}, cfgerr.Errorf("append_action", "unknown action %d", a.Action)
	}
	return a, nil
}

const (
	decSkip uint8 = iota
	decAdd
	decOverwrite
)

// Apply adds the headers to h. It does not allocate for lists of up to 16
// (beyond what h needs to grow).
func (l HeaderAdds) Apply(h *http.Header) {
	if len(l) == 0 {
		return
	}
	var stack [16]uint8
	dec := stack[:0]
	for i := range l {
		a := &l[i]
		d := decSkip
		if a.Value != "" || a.KeepEmpty {
			switch a.Action {
			case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
				d = decAdd
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				if !h.Has(a.Name) {
					d = decAdd
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				if h.Has(a.Name) {
					d = decOverwrite
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
				d = decOverwrite
			}
		}
		dec = append(dec, d)
	}
	for i, d := range dec {
		if d == decOverwrite {
			h.Set(l[i].Name, l[i].Value)
		}
	}
	for i, d := range dec {
		if d == decAdd {
			h.Add(l[i].Name, l[i].Value)
		}
	}
}
