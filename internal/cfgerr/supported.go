package cfgerr

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// OnlyFields reports the first field of msg that is set but not among supported,
// as an error at that field's name. It is how skiff refuses configuration it would
// otherwise silently ignore: a field Envoy honours and skiff does not is an error,
// never a no-op. Fields are compared by their protobuf names.
func OnlyFields(msg proto.Message, supported ...string) error {
	if msg == nil {
		return nil
	}
	var first protoreflect.FieldDescriptor // lowest-numbered offender, so the error is deterministic
	msg.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(supported, string(fd.Name())) && (first == nil || fd.Number() < first.Number()) {
			first = fd
		}
		return true
	})
	if first == nil {
		return nil
	}
	return &Error{Path: string(first.Name()), Err: fmt.Errorf("not supported by skiff (field %d of %s)", first.Number(), first.ContainingMessage().FullName())}
}
