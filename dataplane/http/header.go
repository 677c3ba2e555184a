// Package http is skiff's HTTP model, shared by the codecs (HTTP/1.1 and
// HTTP/2, downstream and upstream), the HTTP connection manager, the HTTP
// filters and the router. It follows Envoy's model rather than net/http's: a
// request is a stream of headers (with the :method, :path, :authority and
// :scheme pseudo-headers, as HTTP/2 carries them, whatever the codec), body
// data and trailers; a response likewise, with :status.
//
// # Memory
//
// Headers keep their bytes in one buffer they own and hand out strings that
// point into it, so that a codec can fill a Header without allocating and a
// reused Header allocates nothing in steady state. The price is a rule: a string
// obtained from a Header (Get, Range, Method, ...) is valid only until the
// Header is Reset or released with its stream. Code that keeps a value longer
// (an access log written later, a cache) copies it with strings.Clone.
package http

import (
	"strconv"
	"strings"
	"unsafe"
)

// Pseudo-header names.
const (
	Method    = ":method"
	Path      = ":path"
	Authority = ":authority"
	Scheme    = ":scheme"
	Status    = ":status"
	Protocol  = ":protocol" // extended CONNECT (RFC 8441)
)

// field is one header field: offsets into the Header's buffer.
type field struct {
	nameStart, nameEnd, valueEnd uint32
	deleted                      bool
}

// Header is an ordered list of header fields with lower-case names. The zero
// value is an empty Header ready to use.
type Header struct {
	buf    []byte
	fields []field
	n      int // fields not deleted
}

// Reset empties the Header, keeping its memory for reuse.
func (h *Header) Reset() {
	h.buf = h.buf[:0]
	h.fields = h.fields[:0]
	h.n = 0
}

// Len is the number of fields.
func (h *Header) Len() int { return h.n }

// Size is the number of bytes of names and values, the measure Envoy's
// max_request_headers_kb limits.
func (h *Header) Size() int {
	size := 0
	for _, f := range h.fields {
		if !f.deleted {
			size += int(f.valueEnd - f.nameStart)
		}
	}
	return size
}

// str returns a string over b[i:j] without copying (see the package comment).
func (h *Header) str(i, j uint32) string {
	if i == j {
		return ""
	}
	return unsafe.String(&h.buf[i], int(j-i))
}

// Add appends a field. name must already be lower case (codecs lower-case
// names as they parse; AddCanonical lower-cases it).
func (h *Header) Add(name, value string) {
	start := uint32(len(h.buf))
	h.buf = append(h.buf, name...)
	mid := uint32(len(h.buf))
	h.buf = append(h.buf, value...)
	h.fields = append(h.fields, field{nameStart: start, nameEnd: mid, valueEnd: uint32(len(h.buf))})
	h.n++
}

// AddUint appends a field whose value is v in decimal, without allocating.
func (h *Header) AddUint(name string, v uint64) {
	start := uint32(len(h.buf))
	h.buf = append(h.buf, name...)
	mid := uint32(len(h.buf))
	h.buf = strconv.AppendUint(h.buf, v, 10)
	h.fields = append(h.fields, field{nameStart: start, nameEnd: mid, valueEnd: uint32(len(h.buf))})
	h.n++
}

// SetUint replaces the fields called name with one whose value is v in
// decimal, without allocating.
func (h *Header) SetUint(name string, v uint64) {
	h.Del(name)
	h.AddUint(name, v)
}

// AddBytes is Add for byte slices, as a codec has them.
func (h *Header) AddBytes(name, value []byte) {
	start := uint32(len(h.buf))
	h.buf = append(h.buf, name...)
	mid := uint32(len(h.buf))
	h.buf = append(h.buf, value...)
	h.fields = append(h.fields, field{nameStart: start, nameEnd: mid, valueEnd: uint32(len(h.buf))})
	h.n++
}

// AddLower appends a field, lower-casing name.
func (h *Header) AddLower(name, value string) {
	start := uint32(len(h.buf))
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		h.buf = append(h.buf, c)
	}
	mid := uint32(len(h.buf))
	h.buf = append(h.buf, value...)
	h.fields = append(h.fields, field{nameStart: start, nameEnd: mid, valueEnd: uint32(len(h.buf))})
	h.n++
}

// Get returns the value of the first field called name (lower case), and
// whether there is one.
func (h *Header) Get(name string) (string, bool) {
	for _, f := range h.fields {
		if !f.deleted && h.str(f.nameStart, f.nameEnd) == name {
			return h.str(f.nameEnd, f.valueEnd), true
		}
	}
	return "", false
}

// Value returns the value of the first field called name, or "".
func (h *Header) Value(name string) string {
	v, _ := h.Get(name)
	return v
}

// Has reports whether a field called name exists.
func (h *Header) Has(name string) bool {
	_, ok := h.Get(name)
	return ok
}

// Del removes every field called name and reports how many there were.
func (h *Header) Del(name string) int {
	n := 0
	for i := range h.fields {
		f := &h.fields[i]
		if !f.deleted && h.str(f.nameStart, f.nameEnd) == name {
			f.deleted = true
			n++
		}
	}
	h.n -= n
	return n
}

// Set replaces every field called name by one with value.
func (h *Header) Set(name, value string) {
	h.Del(name)
	h.Add(name, value)
}

// Range calls f for each field in order until f returns false.
func (h *Header) Range(f func(name, value string) bool) {
	for _, fl := range h.fields {
		if fl.deleted {
			continue
		}
		if !f(h.str(fl.nameStart, fl.nameEnd), h.str(fl.nameEnd, fl.valueEnd)) {
			return
		}
	}
}

// Values appends the values of every field called name to dst.
func (h *Header) Values(dst []string, name string) []string {
	for _, f := range h.fields {
		if !f.deleted && h.str(f.nameStart, f.nameEnd) == name {
			dst = append(dst, h.str(f.nameEnd, f.valueEnd))
		}
	}
	return dst
}

// CopyTo replaces dst's fields with h's (copying the bytes).
func (h *Header) CopyTo(dst *Header) {
	dst.Reset()
	h.Range(func(name, value string) bool {
		dst.Add(name, value)
		return true
	})
}

// Method returns :method.
func (h *Header) Method() string { return h.Value(Method) }

// Path returns :path.
func (h *Header) Path() string { return h.Value(Path) }

// Authority returns :authority (the Host header of HTTP/1.1).
func (h *Header) Authority() string { return h.Value(Authority) }

// Scheme returns :scheme.
func (h *Header) Scheme() string { return h.Value(Scheme) }

// String renders the fields one per line, for logs and tests.
func (h *Header) String() string {
	var b strings.Builder
	h.Range(func(name, value string) bool {
		b.WriteString(name)
		b.WriteString(": ")
		b.WriteString(value)
		b.WriteByte('\n')
		return true
	})
	return b.String()
}

// DeleteFunc removes every field for which del returns true and reports how
// many it removed.
func (h *Header) DeleteFunc(del func(name, value string) bool) int {
	n := 0
	for i := range h.fields {
		f := &h.fields[i]
		if !f.deleted && del(h.str(f.nameStart, f.nameEnd), h.str(f.nameEnd, f.valueEnd)) {
			f.deleted = true
			n++
		}
	}
	h.n -= n
	return n
}
