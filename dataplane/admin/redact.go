package admin

import (
	"strings"

	udpaannotations "github.com/cncf/xds/go/udpa/annotations"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/structpb"
)

// redacted replaces the value of sensitive string and bytes fields.
const redacted = "[redacted]"

// Redact removes secrets from m in place, as Envoy's MessageUtil::redact does
// before it shows configuration in a config dump: every field marked
// (udpa.annotations.sensitive), and everything below it, is redacted (strings
// and bytes become "[redacted]", other values are cleared), and the contents of
// google.protobuf.Any, xds.type.v3.TypedStruct and udpa.type.v1.TypedStruct are
// unpacked, redacted and packed again. An Any or TypedStruct of a type that is
// not linked into the binary is left as it is, as in Envoy.
//
// Redact changes m: callers redact their own copy, never a message the data
// plane or the xDS client holds.
func Redact(m proto.Message) {
	redact(m.ProtoReflect(), false)
}

func redact(m protoreflect.Message, sensitiveAncestor bool) {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Any":
		if redactAny(m, sensitiveAncestor) {
			return
		}
	case "xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct":
		if redactTypedStruct(m, sensitiveAncestor) {
			return
		}
	}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		sensitive := sensitiveAncestor || isSensitive(fd)
		switch {
		case fd.IsMap():
			if !m.Has(fd) {
				continue
			}
			// Only the values: redacting the keys would leave many "[redacted]" keys.
			mv := m.Mutable(fd).Map()
			vd := fd.MapValue()
			mv.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				switch {
				case vd.Message() != nil:
					redact(v.Message(), sensitive)
				case sensitive && vd.Kind() == protoreflect.StringKind:
					mv.Set(k, protoreflect.ValueOfString(redacted))
				case sensitive && vd.Kind() == protoreflect.BytesKind:
					mv.Set(k, protoreflect.ValueOfBytes([]byte(redacted)))
				case sensitive:
					mv.Set(k, vd.Default())
				}
				return true
			})
		case fd.Message() != nil:
			if !m.Has(fd) {
				continue
			}
			if fd.IsList() {
				l := m.Mutable(fd).List()
				for j := 0; j < l.Len(); j++ {
					redact(l.Get(j).Message(), sensitive)
				}
			} else {
				redact(m.Mutable(fd).Message(), sensitive)
			}
		case sensitive:
			if !m.Has(fd) {
				continue
			}
			switch fd.Kind() {
			case protoreflect.StringKind, protoreflect.BytesKind:
				v := protoreflect.ValueOfString(redacted)
				if fd.Kind() == protoreflect.BytesKind {
					v = protoreflect.ValueOfBytes([]byte(redacted))
				}
				if fd.IsList() {
					l := m.Mutable(fd).List()
					for j := 0; j < l.Len(); j++ {
						l.Set(j, v)
					}
				} else {
					m.Set(fd, v)
				}
			default:
				m.Clear(fd)
			}
		}
	}
}

func isSensitive(fd protoreflect.FieldDescriptor) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	v, _ := proto.GetExtension(opts, udpaannotations.E_Sensitive).(bool)
	return v
}

// concrete returns a new message of the type a type URL names, or nil if the
// type is not linked into the binary.
func concrete(typeURL string) protoreflect.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(typeURL)
	if err != nil {
		return nil
	}
	return mt.New()
}

// redactAny redacts the message packed in an Any and reports whether it did
// (false: the Any is treated as any other message).
func redactAny(m protoreflect.Message, sensitive bool) bool {
	fields := m.Descriptor().Fields()
	typeURL, value := fields.ByName("type_url"), fields.ByName("value")
	if !m.Has(typeURL) && !m.Has(value) {
		return true
	}
	if !m.Has(typeURL) || !m.Has(value) {
		return false
	}
	inner := concrete(m.Get(typeURL).String())
	if inner == nil {
		return false
	}
	if err := proto.Unmarshal(m.Get(value).Bytes(), inner.Interface()); err != nil {
		return false
	}
	redact(inner, sensitive)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(inner.Interface())
	if err != nil {
		return false
	}
	m.Set(value, protoreflect.ValueOfBytes(b))
	return true
}

// redactTypedStruct redacts a TypedStruct through the message type its
// type_url names: its value is that message in JSON form.
func redactTypedStruct(m protoreflect.Message, sensitive bool) bool {
	fields := m.Descriptor().Fields()
	typeURL, value := fields.ByName("type_url"), fields.ByName("value")
	if !m.Has(typeURL) && !m.Has(value) {
		return true
	}
	if !m.Has(typeURL) || !m.Has(value) {
		return false
	}
	url := m.Get(typeURL).String()
	if !strings.Contains(url, "/") {
		url = "type.googleapis.com/" + url
	}
	inner := concrete(url)
	if inner == nil {
		return false
	}
	st, ok := m.Get(value).Message().Interface().(*structpb.Struct)
	if !ok {
		return false
	}
	js, err := protojson.Marshal(st)
	if err != nil {
		return false
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, inner.Interface()); err != nil {
		return false
	}
	redact(inner, sensitive)
	js, err = protojson.Marshal(inner.Interface())
	if err != nil {
		return false
	}
	out := &structpb.Struct{}
	if err := protojson.Unmarshal(js, out); err != nil {
		return false
	}
	m.Set(value, protoreflect.ValueOfMessage(out.ProtoReflect()))
	return true
}
