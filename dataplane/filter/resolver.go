package filter

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// TypeResolver resolves the types a configuration may hold in its Anys:
// those linked into the binary, and the config types of the registry's
// factories, some of which (Istio's) exist only as descriptors skiff builds
// itself. protojson needs it to print a config dump that holds them.
type TypeResolver struct {
	byName map[protoreflect.FullName]protoreflect.MessageType
}

// Resolver returns r's TypeResolver.
func (r *Registry) Resolver() *TypeResolver {
	tr := &TypeResolver{byName: map[protoreflect.FullName]protoreflect.MessageType{}}
	add := func(m proto.Message) {
		mt := m.ProtoReflect().Type()
		tr.byName[mt.Descriptor().FullName()] = mt
	}
	for _, f := range r.network {
		add(f.ConfigType())
	}
	for _, f := range r.listener {
		add(f.ConfigType())
	}
	for _, f := range r.http {
		add(f.ConfigType())
	}
	for _, f := range r.perRoute {
		add(f.RouteConfigType())
	}
	for _, f := range r.upstream {
		add(f.ConfigType())
	}
	return tr
}

// FindMessageByName implements protoregistry.MessageTypeResolver.
func (tr *TypeResolver) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(name); err == nil {
		return mt, nil
	}
	if mt, ok := tr.byName[name]; ok {
		return mt, nil
	}
	return nil, protoregistry.NotFound
}

// FindMessageByURL implements protoregistry.MessageTypeResolver.
func (tr *TypeResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	name := url
	if i := strings.LastIndexByte(url, '/'); i >= 0 {
		name = url[i+1:]
	}
	return tr.FindMessageByName(protoreflect.FullName(name))
}

// FindExtensionByName implements protoregistry.ExtensionTypeResolver.
func (tr *TypeResolver) FindExtensionByName(name protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(name)
}

// FindExtensionByNumber implements protoregistry.ExtensionTypeResolver.
func (tr *TypeResolver) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}
