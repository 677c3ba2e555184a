// Package istiotypes describes the configuration messages of Istio's own
// proxy extensions (istio-proxy's, not Envoy's), which istiod puts in the
// resources it pushes: skiff has no Go package for them (istio.io/api and
// istio/proxy are not dependencies), so each is built here, at init, as a
// dynamic message type from a descriptor that copies the .proto field for
// field (names, numbers, types), so that both the binary form (a typed_config
// Any) and the JSON form (a TypedStruct's value) decode as istio-proxy
// decodes them.
package istiotypes

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// Full names of the messages.
const (
	// AlpnFilterConfig is istio.alpn's config (istio.io/api
	// envoy/config/filter/http/alpn/v2alpha1/config.proto).
	AlpnFilterConfig = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"
	// PeerMetadataConfig is the HTTP istio.metadata_exchange's config
	// (istio/proxy source/extensions/filters/http/peer_metadata/config.proto).
	PeerMetadataConfig = "io.istio.http.peer_metadata.Config"
	// MetadataExchange is the network istio.metadata_exchange's config
	// (istio/proxy source/extensions/filters/network/metadata_exchange/config/metadata_exchange.proto).
	MetadataExchange = "envoy.tcp.metadataexchange.config.MetadataExchange"
)

var types = build()

// New returns an empty message of the named type.
func New(name string) proto.Message {
	mt, err := types.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		panic(fmt.Sprintf("istiotypes: %s: %v", name, err))
	}
	return mt.New().Interface()
}

type field struct {
	name  string
	num   int32
	typ   descriptorpb.FieldDescriptorProto_Type
	ref   string // message or enum type name, fully qualified with a leading dot
	rep   bool
	oneof *int32
}

func fields(fs ...field) []*descriptorpb.FieldDescriptorProto {
	out := make([]*descriptorpb.FieldDescriptorProto, len(fs))
	for i, f := range fs {
		label := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL
		if f.rep {
			label = descriptorpb.FieldDescriptorProto_LABEL_REPEATED
		}
		fd := &descriptorpb.FieldDescriptorProto{
			Name: proto.String(f.name), Number: proto.Int32(f.num), Label: label.Enum(), Type: f.typ.Enum(),
			JsonName: proto.String(jsonName(f.name)), OneofIndex: f.oneof,
		}
		if f.ref != "" {
			fd.TypeName = proto.String(f.ref)
		}
		out[i] = fd
	}
	return out
}

func jsonName(s string) string {
	b := make([]byte, 0, len(s))
	up := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' {
			up = true
			continue
		}
		if up && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		up = false
		b = append(b, c)
	}
	return string(b)
}

const (
	tMsg  = descriptorpb.FieldDescriptorProto_TYPE_MESSAGE
	tStr  = descriptorpb.FieldDescriptorProto_TYPE_STRING
	tBool = descriptorpb.FieldDescriptorProto_TYPE_BOOL
	tEnum = descriptorpb.FieldDescriptorProto_TYPE_ENUM
)

func msg(name string, fs []*descriptorpb.FieldDescriptorProto, nested ...*descriptorpb.DescriptorProto) *descriptorpb.DescriptorProto {
	return &descriptorpb.DescriptorProto{Name: proto.String(name), Field: fs, NestedType: nested}
}

func build() *protoregistry.Types {
	zero := proto.Int32(0)
	alpn := msg("FilterConfig", fields(field{name: "alpn_override", num: 1, typ: tMsg, rep: true,
		ref: ".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.AlpnOverride"}),
		msg("AlpnOverride", fields(
			field{name: "upstream_protocol", num: 1, typ: tEnum, ref: ".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.Protocol"},
			field{name: "alpn_override", num: 2, typ: tStr, rep: true},
		)))
	alpn.EnumType = []*descriptorpb.EnumDescriptorProto{{
		Name: proto.String("Protocol"),
		Value: []*descriptorpb.EnumValueDescriptorProto{
			{Name: proto.String("HTTP10"), Number: proto.Int32(0)},
			{Name: proto.String("HTTP11"), Number: proto.Int32(1)},
			{Name: proto.String("HTTP2"), Number: proto.Int32(2)},
		},
	}}

	const pm = ".io.istio.http.peer_metadata.Config."
	peer := msg("Config", fields(
		field{name: "downstream_discovery", num: 1, typ: tMsg, rep: true, ref: pm + "DiscoveryMethod"},
		field{name: "upstream_discovery", num: 2, typ: tMsg, rep: true, ref: pm + "DiscoveryMethod"},
		field{name: "downstream_propagation", num: 3, typ: tMsg, rep: true, ref: pm + "PropagationMethod"},
		field{name: "upstream_propagation", num: 4, typ: tMsg, rep: true, ref: pm + "PropagationMethod"},
		field{name: "shared_with_upstream", num: 5, typ: tBool},
		field{name: "additional_labels", num: 6, typ: tStr, rep: true},
	),
		msg("Baggage", nil),
		msg("WorkloadDiscovery", nil),
		msg("IstioHeaders", fields(field{name: "skip_external_clusters", num: 1, typ: tBool})),
		msg("DiscoveryMethod", fields(
			field{name: "baggage", num: 1, typ: tMsg, ref: pm + "Baggage", oneof: zero},
			field{name: "workload_discovery", num: 2, typ: tMsg, ref: pm + "WorkloadDiscovery", oneof: zero},
			field{name: "istio_headers", num: 3, typ: tMsg, ref: pm + "IstioHeaders", oneof: zero},
		)),
		msg("PropagationMethod", fields(
			field{name: "istio_headers", num: 1, typ: tMsg, ref: pm + "IstioHeaders", oneof: zero},
		)),
	)
	for _, n := range peer.NestedType[3:] {
		n.OneofDecl = []*descriptorpb.OneofDescriptorProto{{Name: proto.String("method_specifier")}}
	}

	mx := msg("MetadataExchange", fields(
		field{name: "protocol", num: 1, typ: tStr},
		// Newer istio-proxy versions; istiod 1.29 sends enable_discovery.
		field{name: "enable_discovery", num: 2, typ: tBool},
		field{name: "additional_labels", num: 3, typ: tStr, rep: true},
	))

	files := []*descriptorpb.FileDescriptorProto{
		{Name: proto.String("envoy/config/filter/http/alpn/v2alpha1/config.proto"), Package: proto.String("istio.envoy.config.filter.http.alpn.v2alpha1"),
			Syntax: proto.String("proto3"), MessageType: []*descriptorpb.DescriptorProto{alpn}},
		{Name: proto.String("source/extensions/filters/http/peer_metadata/config.proto"), Package: proto.String("io.istio.http.peer_metadata"),
			Syntax: proto.String("proto3"), MessageType: []*descriptorpb.DescriptorProto{peer}},
		{Name: proto.String("source/extensions/filters/network/metadata_exchange/config/metadata_exchange.proto"), Package: proto.String("envoy.tcp.metadataexchange.config"),
			Syntax: proto.String("proto3"), MessageType: []*descriptorpb.DescriptorProto{mx}},
	}
	reg := new(protoregistry.Types)
	for _, fdp := range files {
		fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
		if err != nil {
			panic(fmt.Sprintf("istiotypes: describing %s: %v", fdp.GetName(), err))
		}
		register(reg, fd.Messages())
	}
	return reg
}

func register(reg *protoregistry.Types, mds protoreflect.MessageDescriptors) {
	for i := range mds.Len() {
		md := mds.Get(i)
		if err := reg.RegisterMessage(dynamicpb.NewMessageType(md)); err != nil {
			panic(err)
		}
		register(reg, md.Messages())
	}
}
