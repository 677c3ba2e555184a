package controlplane

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// resolver finds the message type a type URL names: first among the types linked
// into the binary (types_known.go links the commonly used Envoy and xDS API packages), then
// among extra, which holds types skiff has no Go package for (istioTypes).
type resolver struct {
	extra *protoregistry.Types
}

func newResolver() (resolver, error) {
	extra, err := istioTypes()
	if err != nil {
		return resolver{}, err
	}
	return resolver{extra: extra}, nil
}

func (r resolver) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if errors.Is(err, protoregistry.NotFound) {
		return r.extra.FindMessageByName(name)
	}
	return mt, err
}

func (r resolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if errors.Is(err, protoregistry.NotFound) {
		return r.extra.FindMessageByURL(url)
	}
	return mt, err
}

func (r resolver) FindExtensionByName(name protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(name)
}

func (r resolver) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}

// istioTypes describes the Istio extension types that istiod puts in the typed_config
// of the resources it pushes to a gateway or a sidecar and that are not Envoy's
// (Istio's istio.io/api module is not a dependency). Each is an exact copy of the
// message in istio.io/api, so that what decodes here encodes to the bytes istiod
// would send; testdata/istio holds resources istiod pushed, which checks it.
//
// Istio filters configured through a udpa.type.v1.TypedStruct (istio.metadata_exchange
// and others) need nothing here: TypedStruct is an xDS type.
func istioTypes() (*protoregistry.Types, error) {
	files := []*descriptorpb.FileDescriptorProto{
		// istio.io/api envoy/config/filter/http/alpn/v2alpha1/config.proto: the
		// istio.alpn HTTP filter of gateways and sidecars.
		{
			Name:    proto.String("envoy/config/filter/http/alpn/v2alpha1/config.proto"),
			Package: proto.String("istio.envoy.config.filter.http.alpn.v2alpha1"),
			Syntax:  proto.String("proto3"),
			MessageType: []*descriptorpb.DescriptorProto{{
				Name: proto.String("FilterConfig"),
				Field: []*descriptorpb.FieldDescriptorProto{
					{
						Name:     proto.String("alpn_override"),
						JsonName: proto.String("alpnOverride"),
						Number:   proto.Int32(1),
						Label:    descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(),
						Type:     descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(),
						TypeName: proto.String(".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.AlpnOverride"),
					},
				},
				NestedType: []*descriptorpb.DescriptorProto{{
					Name: proto.String("AlpnOverride"),
					Field: []*descriptorpb.FieldDescriptorProto{
						{
							Name:     proto.String("upstream_protocol"),
							JsonName: proto.String("upstreamProtocol"),
							Number:   proto.Int32(1),
							Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
							Type:     descriptorpb.FieldDescriptorProto_TYPE_ENUM.Enum(),
							TypeName: proto.String(".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.Protocol"),
						},
						{
							Name:     proto.String("alpn_override"),
							JsonName: proto.String("alpnOverride"),
							Number:   proto.Int32(2),
							Label:    descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(),
							Type:     descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
						},
					},
				}},
				EnumType: []*descriptorpb.EnumDescriptorProto{{
					Name: proto.String("Protocol"),
					Value: []*descriptorpb.EnumValueDescriptorProto{
						{Name: proto.String("HTTP10"), Number: proto.Int32(0)},
						{Name: proto.String("HTTP11"), Number: proto.Int32(1)},
						{Name: proto.String("HTTP2"), Number: proto.Int32(2)},
					},
				}},
			}},
		},
	}
	types := new(protoregistry.Types)
	for _, fdp := range files {
		fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
		if err != nil {
			return nil, fmt.Errorf("describing %s: %w", fdp.GetName(), err)
		}
		if err := registerMessages(types, fd.Messages()); err != nil {
			return nil, err
		}
	}
	return types, nil
}

func registerMessages(types *protoregistry.Types, mds protoreflect.MessageDescriptors) error {
	for i := range mds.Len() {
		md := mds.Get(i)
		if err := types.RegisterMessage(dynamicpb.NewMessageType(md)); err != nil {
			return err
		}
		if err := registerMessages(types, md.Messages()); err != nil {
			return err
		}
	}
	return nil
}
