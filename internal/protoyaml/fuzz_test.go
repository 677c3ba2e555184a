package protoyaml_test

import (
	"errors"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

// FuzzUnmarshal feeds bootstrap-shaped YAML and JSON to both entry points. It checks
// that nothing panics, that every error is a *cfgerr.Error or a *SyntaxError with no
// protojson position left in it, and that whatever decodes survives a round trip.
func FuzzUnmarshal(f *testing.F) {
	for _, seed := range []string{
		filter + "          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          cluster: c\n          stat_prefix: s\n",
		filter + "          '@type': type.googleapis.com/xds.type.v3.TypedStruct\n          type_url: x\n          value: {a: [1, null, {b: c}]}\n",
		filter + "          '@type': type.googleapis.com/google.protobuf.Any\n          value: {'@type': type.googleapis.com/google.protobuf.Duration, value: 1s}\n",
		"static_resources:\n  clusters:\n  - &d {name: a, type: STATIC, connect_timeout: 1s}\n  - {<<: *d, name: b}\n",
		"static_resources: {clusters: [{name: c, metadata: {filter_metadata: {envoy.lb: {k: v}}}, typed_extension_protocol_options: {x: {}}}]}\n",
		"node: {id: a, cluster: b, metadata: {k: [1, 2.5, true, null]}, locality: {zone: z}}\nstats_flush_interval: 5s\n",
		`{"node": {"id": "a", "userAgentName": "x"}, "admin": {"address": {"socketAddress": {"portValue": 1}}}}`,
		`{"layered_runtime": {"layers": [{"name": "x", "static_layer": {"a": {"b": 1}}}]}}`,
		"node: {id: a}\n---\nnode: {id: b}\n",
		"admin: {address: {socket_address: {port_value: abc, protocol: UDPX}}}\n",
		"{\n\t\"node\": {\"id\": 1,}\n}",
		"- a\n- b\n",
		"? [1]\n: 2\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, decode := range []func([]byte, proto.Message) error{protoyaml.Unmarshal, protoyaml.UnmarshalJSON} {
			var b bootstrapv3.Bootstrap
			err := decode(data, &b)
			if err == nil {
				// What decoded must encode and decode again to the same message.
				js, err := protojson.Marshal(&b)
				if err != nil {
					t.Fatalf("decoded message does not encode: %v", err)
				}
				var again bootstrapv3.Bootstrap
				if err := protoyaml.UnmarshalJSON(js, &again); err != nil {
					t.Fatalf("round trip of %s: %v", js, err)
				}
				if !proto.Equal(&b, &again) {
					t.Fatalf("round trip changed the message:\n %v\n %v", &b, &again)
				}
				continue
			}
			var ce *cfgerr.Error
			var se *protoyaml.SyntaxError
			switch {
			case errors.As(err, &se):
			case errors.As(err, &ce):
				if strings.Contains(err.Error(), "(line ") {
					t.Fatalf("protojson position left in %q", err)
				}
			default:
				t.Fatalf("error %T is neither *cfgerr.Error nor *SyntaxError: %v", err, err)
			}
		}
	})
}
