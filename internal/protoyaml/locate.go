package protoyaml

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// walker finds, in JSON that protojson refused, the smallest value at fault.
//
// It follows protojson's own rules (field lookup by JSON or proto name, null meaning
// "unset", Any with "@type", the well-known types' special JSON forms) over the
// structure, and hands each leaf (a scalar, an enum, a well-known type other than Any)
// back to protojson inside the smallest message that can hold it, so a verdict on a
// value is always protojson's. Members are visited in input order, as protojson reads
// them, so the error found is the one protojson stopped at. Each method returns nil
// when it finds nothing wrong.
type walker struct {
	resolver Resolver
}

func (w walker) unmarshalOptions() protojson.UnmarshalOptions {
	// AllowPartial: a leaf decoded alone leaves its message's other fields unset,
	// which must not count against it.
	return protojson.UnmarshalOptions{Resolver: w.resolver, AllowPartial: true}
}

// message checks n as the JSON form of a message of type md.
func (w walker) message(n *node, md protoreflect.MessageDescriptor, p *path) error {
	switch {
	case md.FullName() == "google.protobuf.Any":
		return w.any(n, p)
	case isLeafWKT(md):
		if err := w.unmarshalOptions().Unmarshal(n.raw, dynamicpb.NewMessage(md)); err != nil {
			return errorf(p, "%s", leafReason(err, n.raw, string(md.FullName())))
		}
		return nil
	}
	if n.kind != '{' {
		return errorf(p, "expected a mapping for %s, got %s", md.FullName(), describe(n.raw))
	}
	return w.fields(n.members, md, p)
}

// fields checks the members of an object against the fields of md.
func (w walker) fields(members []member, md protoreflect.MessageDescriptor, p *path) error {
	seen := make(map[protoreflect.FieldNumber]string, len(members))
	oneofs := make(map[protoreflect.Name]string)
	for _, mb := range members {
		fd, err := w.lookup(md, mb.key)
		if err != nil {
			return errorf(p.field(mb.key), "%w", err)
		}
		if fd == nil {
			return errorf(p.field(mb.key), "unknown field%s", suggest(md, mb.key))
		}
		fpath := p.field(fd.TextName())
		if prev, dup := seen[fd.Number()]; dup {
			if prev == mb.key {
				return errorf(fpath, "field given twice")
			}
			return errorf(fpath, "field given twice (as %q and %q)", prev, mb.key)
		}
		seen[fd.Number()] = mb.key
		if isNull(mb.val.raw) && !acceptsNull(fd) {
			continue // protojson: null leaves the field unset
		}
		if od := fd.ContainingOneof(); od != nil {
			if other, set := oneofs[od.Name()]; set {
				return errorf(fpath, "only one of %s and %s may be set (oneof %s)", other, fd.Name(), od.Name())
			}
			oneofs[od.Name()] = string(fd.Name())
		}
		if err := w.field(mb.val, fd, fpath); err != nil {
			return err
		}
	}
	return nil
}

// lookup finds the field a JSON key names, as protojson does: JSON name first, then
// proto name, and "[full.name]" for an extension.
func (w walker) lookup(md protoreflect.MessageDescriptor, key string) (protoreflect.FieldDescriptor, error) {
	if strings.HasPrefix(key, "[") && strings.HasSuffix(key, "]") {
		xt, err := w.resolver.FindExtensionByName(protoreflect.FullName(key[1 : len(key)-1]))
		if errors.Is(err, protoregistry.NotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("resolving extension: %w", err)
		}
		xd := xt.TypeDescriptor()
		if !md.ExtensionRanges().Has(xd.Number()) || xd.ContainingMessage().FullName() != md.FullName() {
			return nil, fmt.Errorf("%s cannot be extended by %s", md.FullName(), xd.FullName())
		}
		return xd, nil
	}
	fields := md.Fields()
	if fd := fields.ByJSONName(key); fd != nil {
		return fd, nil
	}
	return fields.ByTextName(key), nil
}

// field checks the value of one field, which may be a list or a map.
func (w walker) field(n *node, fd protoreflect.FieldDescriptor, p *path) error {
	switch {
	case fd.IsList():
		if n.kind != '[' {
			return errorf(p, "expected a list, got %s", describe(n.raw))
		}
		wrap := func(v json.RawMessage) []byte { return wrapField(fd, append(append([]byte("["), v...), ']')) }
		for i, e := range n.elems {
			if err := w.value(e, fd, fd, p.index(i), wrap); err != nil {
				return err
			}
		}
		return nil
	case fd.IsMap():
		if n.kind != '{' {
			return errorf(p, "expected a mapping, got %s", describe(n.raw))
		}
		seen := make(map[string]string, len(n.members))
		for _, mb := range n.members {
			epath := p.key(mb.key)
			canon, ok := mapKey(mb.key, fd.MapKey().Kind())
			if !ok {
				return errorf(epath, "invalid map key %q: not a %s", mb.key, fd.MapKey().Kind())
			}
			if prev, dup := seen[canon]; dup {
				return errorf(epath, "map key given twice (as %q and %q)", prev, mb.key)
			}
			seen[canon] = mb.key
			key, _ := json.Marshal(mb.key)
			wrap := func(v json.RawMessage) []byte {
				return wrapField(fd, bytes.Join([][]byte{[]byte("{"), key, []byte(":"), v, []byte("}")}, nil))
			}
			if err := w.value(mb.val, fd, fd.MapValue(), epath, wrap); err != nil {
				return err
			}
		}
		return nil
	default:
		return w.value(n, fd, fd, p, func(v json.RawMessage) []byte { return wrapField(fd, v) })
	}
}

// value checks one value of field fd whose type is described by vd (fd itself, or
// its map value). Messages are walked; anything else is decoded by protojson as
// wrap(raw) in the message that holds fd.
func (w walker) value(n *node, fd, vd protoreflect.FieldDescriptor, p *path, wrap func(json.RawMessage) []byte) error {
	if md := vd.Message(); md != nil {
		return w.message(n, md, p)
	}
	holder := dynamicpb.NewMessage(fd.ContainingMessage())
	if err := w.unmarshalOptions().Unmarshal(wrap(n.raw), holder); err != nil {
		reason := leafReason(err, n.raw, kindName(vd))
		if ed := vd.Enum(); ed != nil {
			reason += enumNames(ed)
		}
		return errorf(p, "%s", reason)
	}
	return nil
}

// any checks a google.protobuf.Any: {"@type": URL, ...fields of the named message},
// or {"@type": URL, "value": ...} when the named message has a special JSON form.
func (w walker) any(n *node, p *path) error {
	if n.kind != '{' {
		return errorf(p, "expected a mapping for google.protobuf.Any, got %s", describe(n.raw))
	}
	if len(n.members) == 0 {
		return nil // protojson: {} is an empty Any
	}
	var (
		typeURL string
		found   bool
		rest    []member
	)
	for _, mb := range n.members {
		if mb.key != "@type" {
			rest = append(rest, mb)
			continue
		}
		tpath := p.field("@type")
		if found {
			return errorf(tpath, "field given twice")
		}
		found = true
		if err := json.Unmarshal(mb.val.raw, &typeURL); err != nil || !bytes.HasPrefix(mb.val.raw, []byte(`"`)) {
			return errorf(tpath, "expected a type URL string, got %s", describe(mb.val.raw))
		}
		if typeURL == "" {
			return errorf(tpath, "empty type URL")
		}
	}
	if !found {
		return errorf(p, `missing "@type": an Any names the type of its content with "@type": type.googleapis.com/<message full name>`)
	}
	mt, err := w.resolver.FindMessageByURL(typeURL)
	if errors.Is(err, protoregistry.NotFound) {
		return errorf(p, "unknown type URL %q (not linked into skiff)", typeURL)
	}
	if err != nil {
		return errorf(p, "resolving type URL %q: %w", typeURL, err)
	}
	md := mt.Descriptor()
	if md.FullName() != "google.protobuf.Any" && !isLeafWKT(md) {
		return w.fields(rest, md, p)
	}
	var value *node
	for _, mb := range rest {
		if mb.key != "value" {
			return errorf(p.field(mb.key), `unknown field (an Any holding %s has only "@type" and "value")`, md.FullName())
		}
		if value != nil {
			return errorf(p.field("value"), "field given twice")
		}
		value = mb.val
	}
	if value == nil {
		return errorf(p, `missing "value" holding the %s`, md.FullName())
	}
	return w.message(value, md, p.field("value"))
}

func errorf(p *path, format string, args ...any) error {
	return &cfgerr.Error{Path: p.String(), Err: fmt.Errorf(format, args...)}
}

// isLeafWKT reports whether md is a well-known type with its own JSON form (a
// string, number, list or free-form object), which the walker does not descend
// into. Any also has its own form but is walked, since it holds configuration.
func isLeafWKT(md protoreflect.MessageDescriptor) bool {
	if md.FullName().Parent() != "google.protobuf" {
		return false
	}
	switch md.Name() {
	case "Timestamp", "Duration", "Struct", "ListValue", "Value", "FieldMask", "Empty",
		"BoolValue", "Int32Value", "Int64Value", "UInt32Value", "UInt64Value",
		"FloatValue", "DoubleValue", "StringValue", "BytesValue":
		return true
	}
	return false
}

// acceptsNull reports whether JSON null is a value for fd rather than "unset".
func acceptsNull(fd protoreflect.FieldDescriptor) bool {
	if md := fd.Message(); md != nil {
		return md.FullName() == "google.protobuf.Value"
	}
	if ed := fd.Enum(); ed != nil {
		return ed.FullName() == "google.protobuf.NullValue"
	}
	return false
}

// mapKey returns the canonical form of a map key of the given kind, parsed as
// protojson parses it, so that "1" and "01" are the same int key.
func mapKey(key string, kind protoreflect.Kind) (string, bool) {
	var err error
	switch kind {
	case protoreflect.StringKind:
		return key, true
	case protoreflect.BoolKind:
		return key, key == "true" || key == "false"
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		var n int64
		n, err = strconv.ParseInt(key, 10, 32)
		key = strconv.FormatInt(n, 10)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		var n int64
		n, err = strconv.ParseInt(key, 10, 64)
		key = strconv.FormatInt(n, 10)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		var n uint64
		n, err = strconv.ParseUint(key, 10, 32)
		key = strconv.FormatUint(n, 10)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		var n uint64
		n, err = strconv.ParseUint(key, 10, 64)
		key = strconv.FormatUint(n, 10)
	default:
		return "", false
	}
	return key, err == nil
}

// kindName names the type of a scalar or enum field for an error message.
func kindName(fd protoreflect.FieldDescriptor) string {
	if ed := fd.Enum(); ed != nil {
		return "enum " + string(ed.FullName())
	}
	return fd.Kind().String()
}

// leafReason words protojson's verdict on a leaf. Its "invalid value for uint32
// field portValue: "abc"" names the field by its JSON name, which the path already
// gives in proto form, so that family is rephrased; other reasons are kept.
func leafReason(err error, raw json.RawMessage, typeName string) string {
	reason := cleanReason(err)
	if !strings.HasPrefix(reason, "invalid value for ") && !strings.HasPrefix(reason, "unexpected token") {
		return reason
	}
	s := fmt.Sprintf("invalid value %s for %s", shorten(raw), typeName)
	if trimmed := bytes.TrimSpace(raw); typeName == "string" && len(trimmed) > 0 && strings.IndexByte("-0123456789tf", trimmed[0]) >= 0 {
		// YAML turns unquoted 123, true or yes into a number or a bool.
		s += " (quote it to make it a string)"
	}
	return s
}

// enumNames lists the value names of ed for an error message, or "" when there
// are too many to be helpful.
func enumNames(ed protoreflect.EnumDescriptor) string {
	const most = 16
	values := ed.Values()
	if values.Len() > most {
		return ""
	}
	names := make([]string, values.Len())
	for i := range names {
		names[i] = string(values.Get(i).Name())
	}
	return " (one of " + strings.Join(names, ", ") + ")"
}

// suggest returns " (did you mean X?)" when exactly one field of md is within a
// small edit distance of key, else "".
func suggest(md protoreflect.MessageDescriptor, key string) string {
	const maxDist = 2
	best, bestDist, ties := "", maxDist+1, 0
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		d := min(editDistance(key, string(fd.Name())), editDistance(key, fd.JSONName()))
		switch {
		case d < bestDist:
			best, bestDist, ties = string(fd.Name()), d, 1
		case d == bestDist:
			ties++
		}
	}
	if ties != 1 || len(key) <= bestDist {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// node is a parsed JSON value with its exact text. The tree is built in one pass,
// so walking it costs time linear in the input however deep it nests.
type node struct {
	raw     json.RawMessage // the value's text, exactly as in the input
	kind    byte            // '{', '[', or 0 for a scalar
	members []member        // kind '{': in input order, duplicates kept
	elems   []*node         // kind '['
}

// member is one key and value of a JSON object.
type member struct {
	key string
	val *node
}

// parse builds the tree of a well-formed JSON text.
func parse(data []byte) (*node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	return parseValue(dec, data)
}

func parseValue(dec *json.Decoder, data []byte) (*node, error) {
	// The decoder's offset is just past the previous token; the ':' or ',' and
	// the white space before this value are not part of it.
	start := int(dec.InputOffset())
	for start < len(data) && strings.IndexByte(" \t\r\n:,", data[start]) >= 0 {
		start++
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	n := &node{}
	switch tok {
	case json.Delim('{'):
		n.kind = '{'
		for dec.More() {
			keyTok, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, _ := keyTok.(string)
			val, err := parseValue(dec, data)
			if err != nil {
				return nil, err
			}
			n.members = append(n.members, member{key, val})
		}
		if _, err := dec.Token(); err != nil { // '}'
			return nil, err
		}
	case json.Delim('['):
		n.kind = '['
		for dec.More() {
			val, err := parseValue(dec, data)
			if err != nil {
				return nil, err
			}
			n.elems = append(n.elems, val)
		}
		if _, err := dec.Token(); err != nil { // ']'
			return nil, err
		}
	}
	n.raw = data[start:dec.InputOffset()]
	return n, nil
}

// path is a field path built as the walker descends. It is a list from the leaf up
// so that descending costs nothing; only the failing path is ever spelled out.
type path struct {
	parent *path
	seg    string // a field name, or "[i]" / "[key]"
}

func (p *path) field(name string) *path { return &path{p, name} }
func (p *path) index(i int) *path       { return &path{p, "[" + strconv.Itoa(i) + "]"} }
func (p *path) key(k string) *path      { return &path{p, "[" + k + "]"} }

func (p *path) String() string {
	var segs []string
	for ; p != nil; p = p.parent {
		segs = append(segs, p.seg)
	}
	var s string
	for i := len(segs) - 1; i >= 0; i-- {
		s = cfgerr.Join(s, segs[i])
	}
	return s
}

// wrapField returns {"<key of fd>": v}.
func wrapField(fd protoreflect.FieldDescriptor, v []byte) []byte {
	name := fd.JSONName()
	if fd.IsExtension() {
		name = "[" + string(fd.FullName()) + "]"
	}
	key, _ := json.Marshal(name)
	return bytes.Join([][]byte{[]byte("{"), key, []byte(":"), v, []byte("}")}, nil)
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// describe says what kind of JSON value raw is, for "expected X, got Y".
func describe(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "a mapping"
	case '[':
		return "a list"
	case '"':
		return "string " + shorten(raw)
	case 't', 'f':
		return "bool " + string(raw)
	case 'n':
		return "null"
	}
	return "number " + shorten(raw)
}

// shorten returns raw (JSON text) cut to a length fit for an error message.
func shorten(raw json.RawMessage) string {
	const limit = 64
	s := string(bytes.TrimSpace(raw))
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
