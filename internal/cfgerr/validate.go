package cfgerr

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Validate checks m against the protoc-gen-validate (PGV) rules generated into its
// Go type (the Validate/ValidateAll methods of go-control-plane's Envoy protos) and
// returns the first violation as an *Error at the violating field's path, e.g.
//
//	address.socket_address.port_value: value must be less than or equal to 65535
//
// PGV names fields the Go way ("FilterChains[0]", "SocketAddress") and nests each
// violation in an "embedded message failed validation" error for every enclosing
// message; Validate follows that chain down through m's descriptors, turning each
// Go name back into the protobuf field name users write, and keeps the innermost
// reason. Violations come in PGV's order (fields as generated, map keys sorted), so
// the one reported is the same on every run. The returned error unwraps to the PGV
// error of the violation itself.
//
// Like PGV, Validate does not look inside google.protobuf.Any: a typed_config is
// checked by whoever unpacks it. A message without generated rules is valid.
func Validate(m proto.Message) error {
	if m == nil {
		return nil
	}
	var err error
	switch v := m.(type) {
	case interface{ ValidateAll() error }:
		err = v.ValidateAll()
	case interface{ Validate() error }:
		err = v.Validate()
	default:
		return nil
	}
	if err == nil {
		return nil
	}
	return fromPGV(err, m.ProtoReflect().Descriptor())
}

// pgvError is the method set of every generated XValidationError.
type pgvError interface {
	error
	Field() string
	Reason() string
	Key() bool
	Cause() error
}

// pgvMultiError is the method set of every generated XMultiError (from ValidateAll).
type pgvMultiError interface {
	error
	AllErrors() []error
}

// embeddedReason is the reason PGV gives when the violation is inside a field's
// message; its Cause is that message's own error.
const embeddedReason = "embedded message failed validation"

// fromPGV walks a PGV error chain from the message md down to the violation.
func fromPGV(err error, md protoreflect.MessageDescriptor) error {
	var path string
	for {
		if me, ok := err.(pgvMultiError); ok {
			all := me.AllErrors()
			if len(all) == 0 {
				break
			}
			err = all[0]
			continue
		}
		ve, ok := err.(pgvError)
		if !ok {
			break
		}
		name, suffix := splitIndex(ve.Field())
		seg, fd, od := goNameToProto(md, name)
		if ve.Reason() == embeddedReason && ve.Cause() != nil {
			path = Join(path, seg+suffix)
			md = nil
			if fd != nil {
				md = fd.Message()
				if fd.IsMap() {
					md = fd.MapValue().Message()
				}
			}
			err = ve.Cause()
			continue
		}
		return &Error{Path: leafPath(path, seg, suffix, od), Err: &violation{reason: leafReason(ve, od), pgv: ve}}
	}
	// Not a PGV error (or an empty MultiError): report it as it is, where we got to.
	return &Error{Path: path, Err: err}
}

// leafPath places a violation. A rule on a oneof as a whole ("value is required")
// is reported at the enclosing message, since a oneof's name never appears in YAML.
func leafPath(path, seg, suffix string, od protoreflect.OneofDescriptor) string {
	if od != nil {
		return path
	}
	return Join(path, seg+suffix)
}

// leafReason words a violation: PGV's reason, with its cause when it has one (a
// malformed Duration says why), for a map key marked as such, and for a whole oneof
// naming the fields to choose from.
func leafReason(ve pgvError, od protoreflect.OneofDescriptor) string {
	reason := ve.Reason()
	if od != nil {
		fields := od.Fields()
		names := make([]string, fields.Len())
		for i := range names {
			names[i] = string(fields.Get(i).Name())
		}
		if reason == "value is required" {
			reason = fmt.Sprintf("one of %s is required (oneof %s)", strings.Join(names, ", "), od.Name())
		} else {
			reason = fmt.Sprintf("%s (oneof %s of %s)", reason, od.Name(), strings.Join(names, ", "))
		}
	}
	if ve.Key() {
		reason = "map key: " + reason
	}
	if c := ve.Cause(); c != nil {
		reason += ": " + c.Error()
	}
	return reason
}

// violation is the innermost PGV error, reworded; it unwraps to that error.
type violation struct {
	reason string
	pgv    error
}

func (v *violation) Error() string { return v.reason }
func (v *violation) Unwrap() error { return v.pgv }

// splitIndex splits PGV's "FilterChains[0]" or "Metadata[key]" into the Go name and
// the "[...]" suffix, which is kept as it is in the path.
func splitIndex(field string) (name, suffix string) {
	if i := strings.IndexByte(field, '['); i >= 0 {
		return field[:i], field[i:]
	}
	return field, ""
}

// goNameToProto maps a Go field name used by PGV back to md's field (or oneof) and
// returns the protobuf name to put in the path. It prefers protoc-gen-go's exact
// spelling and falls back to comparing names without case and underscores, which
// covers the generators' small differences. When md is nil or has no such field
// (descriptors and generated code disagree), it guesses the snake_case name.
func goNameToProto(md protoreflect.MessageDescriptor, goName string) (string, protoreflect.FieldDescriptor, protoreflect.OneofDescriptor) {
	if md == nil {
		return snakeCase(goName), nil, nil
	}
	fields, oneofs := md.Fields(), md.Oneofs()
	for _, match := range []func(protoreflect.Name) bool{
		func(n protoreflect.Name) bool { return goCamelCase(string(n)) == goName },
		func(n protoreflect.Name) bool { return loose(string(n)) == loose(goName) },
	} {
		for i := range fields.Len() {
			if fd := fields.Get(i); match(fd.Name()) {
				return string(fd.Name()), fd, nil
			}
		}
		for i := range oneofs.Len() {
			if od := oneofs.Get(i); match(od.Name()) {
				return string(od.Name()), nil, od
			}
		}
	}
	return snakeCase(goName), nil, nil
}

func loose(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }

// goCamelCase is protoc-gen-go's field name mangling (internal/strs.GoCamelCase).
func goCamelCase(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' && i+1 < len(s) && isLower(s[i+1]):
			// Skip over '.' in ".{{lowercase}}".
		case c == '.':
			b = append(b, '_')
		case c == '_' && (i == 0 || s[i-1] == '.'):
			b = append(b, 'X')
		case c == '_' && i+1 < len(s) && isLower(s[i+1]):
			// Skip over '_' in "_{{lowercase}}".
		case c >= '0' && c <= '9':
			b = append(b, c)
		default:
			if isLower(c) {
				c -= 'a' - 'A'
			}
			b = append(b, c)
			for ; i+1 < len(s) && isLower(s[i+1]); i++ {
				b = append(b, s[i+1])
			}
		}
	}
	return string(b)
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }

// snakeCase turns "SocketAddress" into "socket_address", for names the descriptors
// cannot resolve.
func snakeCase(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}
