package controlplane

import (
	"cmp"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// validate checks m against its protoc-gen-validate rules and, since those stop at
// a google.protobuf.Any, every message packed in an Any inside it (typed_config
// and the like) against its own, as Envoy does when it builds what they configure.
// The error is at the violating field's path below m.
func validate(m proto.Message, r resolver) error {
	if err := cfgerr.Validate(m); err != nil {
		return err
	}
	return validateAnys(m.ProtoReflect(), "", r)
}

// validateAnys validates the messages packed in the Anys below m, in field order
// so that the error reported is the same on every run.
func validateAnys(m protoreflect.Message, at string, r resolver) error {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.Message() == nil || !m.Has(fd) { // a map's entries are messages
			continue
		}
		p := cfgerr.Join(at, fd.TextName())
		v := m.Get(fd)
		switch {
		case fd.IsList():
			list := v.List()
			for j := range list.Len() {
				if err := validateMessage(list.Get(j).Message(), fmt.Sprintf("%s[%d]", p, j), r); err != nil {
					return err
				}
			}
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				continue
			}
			var keys []protoreflect.MapKey
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return cmp.Compare(a.String(), b.String()) })
			for _, k := range keys {
				if err := validateMessage(v.Map().Get(k).Message(), fmt.Sprintf("%s[%s]", p, k.String()), r); err != nil {
					return err
				}
			}
		default:
			if err := validateMessage(v.Message(), p, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// validateMessage validates what an Any at p holds, or looks for Anys below any
// other message.
func validateMessage(m protoreflect.Message, p string, r resolver) error {
	if m.Descriptor().FullName() != "google.protobuf.Any" {
		return validateAnys(m, p, r)
	}
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		// An Any inside a dynamic message (a type described at run time).
		a = new(anypb.Any)
		b, err := proto.Marshal(m.Interface())
		if err != nil {
			return cfgerr.Field(p, err)
		}
		if err := proto.Unmarshal(b, a); err != nil {
			return cfgerr.Field(p, err)
		}
	}
	if a.GetTypeUrl() == "" {
		return nil
	}
	inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{Resolver: r})
	if err != nil {
		return cfgerr.Errorf(p, "%v", err)
	}
	if err := cfgerr.Validate(inner); err != nil {
		return cfgerr.Field(p, err)
	}
	return validateAnys(inner.ProtoReflect(), p, r)
}
