package filter

import (
	"fmt"
	"net"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/upstream"
)

// The type URLs of xDS's TypedStruct: a typed_config given as a JSON-like
// Struct with the type URL of the message it stands for. Envoy accepts it
// anywhere a typed_config goes, converting the value to the named message as
// its JSON form; istiod configures its own extensions
// (istio.metadata_exchange) with one.
const (
	udpaTypedStructURL = "type.googleapis.com/udpa.type.v1.TypedStruct"
	xdsTypedStructURL  = "type.googleapis.com/xds.type.v3.TypedStruct"
)

func isTypedStruct(url string) bool {
	n := typeName(url)
	return n == "udpa.type.v1.TypedStruct" || n == "xds.type.v3.TypedStruct"
}

// unwrapTypedStruct returns the type URL and value of a TypedStruct.
func unwrapTypedStruct(a *anypb.Any) (string, *structpb.Struct, error) {
	var url string
	var value *structpb.Struct
	if typeName(a.GetTypeUrl()) == "udpa.type.v1.TypedStruct" {
		var ts udpatypev1.TypedStruct
		if err := a.UnmarshalTo(&ts); err != nil {
			return "", nil, fmt.Errorf("decoding %s: %w", udpaTypedStructURL, err)
		}
		url, value = ts.GetTypeUrl(), ts.GetValue()
	} else {
		var ts xdstypev3.TypedStruct
		if err := a.UnmarshalTo(&ts); err != nil {
			return "", nil, fmt.Errorf("decoding %s: %w", xdsTypedStructURL, err)
		}
		url, value = ts.GetTypeUrl(), ts.GetValue()
	}
	if url == "" {
		return "", nil, fmt.Errorf("TypedStruct without a type_url")
	}
	if value == nil {
		value = &structpb.Struct{}
	}
	return url, value, nil
}

// TypedConfigURL is the type URL a typed_config stands for: its own, or the
// type_url of the TypedStruct it is ("" if that does not decode).
func TypedConfigURL(a *anypb.Any) string {
	if !isTypedStruct(a.GetTypeUrl()) {
		return a.GetTypeUrl()
	}
	url, _, err := unwrapTypedStruct(a)
	if err != nil {
		return ""
	}
	return url
}

// DecodeTypedConfig decodes a typed_config into m, given as m's own type or
// as a TypedStruct, as Envoy accepts either.
func DecodeTypedConfig(a *anypb.Any, m proto.Message) error {
	if !isTypedStruct(a.GetTypeUrl()) {
		return a.UnmarshalTo(m)
	}
	_, value, err := unwrapTypedStruct(a)
	if err != nil {
		return err
	}
	return structToMessage(value, m)
}

// structToMessage converts a TypedStruct's value into m through its JSON
// form, as Envoy does. Unknown fields are errors.
func structToMessage(v *structpb.Struct, m proto.Message) error {
	b, err := protojson.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(b, m)
}

// UpstreamNetworkFactory builds upstream network filters: the filters of a
// cluster (Envoy's envoy.filters.upstream_network extensions), which see
// each connection made to the cluster's hosts.
type UpstreamNetworkFactory interface {
	Factory
	Create(cfg proto.Message, fc *Context) (upstream.ConnFilter, error)
}

// UpstreamConnFilterFunc adapts a function to upstream.ConnFilter.
type UpstreamConnFilterFunc func(c net.Conn, alpn string) error

// UpstreamConnected implements upstream.ConnFilter.
func (f UpstreamConnFilterFunc) UpstreamConnected(c net.Conn, alpn string) error { return f(c, alpn) }
