package cfgerr_test

import (
	"errors"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// The messages are written as JSON (protojson, not internal/protoyaml, which sits
// above this package) because that is how the violations reach skiff in practice.
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		msg  proto.Message
		json string
		want string // "" means valid
	}{
		{
			name: "valid listener",
			msg:  &listenerv3.Listener{},
			json: `{"name":"l","address":{"socket_address":{"address":"0.0.0.0","port_value":80}}}`,
		},
		{
			name: "port out of range",
			msg:  &listenerv3.Listener{},
			json: `{"name":"l","address":{"socket_address":{"address":"0.0.0.0","port_value":70000}}}`,
			want: "address.socket_address.port_value: value must be less than or equal to 65535",
		},
		{
			name: "required oneof is reported at its message",
			msg:  &listenerv3.Listener{},
			json: `{"name":"l","address":{}}`,
			want: "address: one of socket_address, pipe, envoy_internal_address is required (oneof address)",
		},
		{
			name: "list index kept",
			msg:  &listenerv3.Listener{},
			json: `{"name":"l","address":{"pipe":{"path":"/p"}},"filter_chains":[{},{"filters":[{"name":"a"},{"name":""}]}]}`,
			want: "filter_chains[1].filters[1].name: value length must be at least 1 runes",
		},
		{
			name: "enum out of range",
			msg:  &listenerv3.Listener{},
			json: `{"address":{"socket_address":{"address":"x","port_value":1,"protocol":7}}}`,
			want: "address.socket_address.protocol: value must be one of the defined enum values",
		},
		{
			name: "cluster name required",
			msg:  &clusterv3.Cluster{},
			json: `{"connect_timeout":"1s"}`,
			want: "name: value length must be at least 1 runes",
		},
		{
			name: "duration rule",
			msg:  &clusterv3.Cluster{},
			json: `{"name":"c","connect_timeout":"-1s"}`,
			want: "connect_timeout: value must be greater than 0s",
		},
		{
			name: "field name with a digit",
			msg:  &clusterv3.Cluster{},
			json: `{"name":"c","http2_protocol_options":{"initial_stream_window_size":10}}`,
			want: "http2_protocol_options.initial_stream_window_size: value must be inside range [65535, 2147483647]",
		},
		{
			name: "map key kept",
			msg:  &clusterv3.Cluster{},
			json: `{"name":"c","metadata":{"filter_metadata":{"":{}}}}`,
			want: "metadata.filter_metadata[]: value length must be at least 1 runes",
		},
		{
			name: "bootstrap nesting",
			msg:  &bootstrapv3.Bootstrap{},
			json: `{"static_resources":{"clusters":[{"name":"a"},{"name":"b","load_assignment":{"cluster_name":"b","endpoints":[{"lb_endpoints":[{"endpoint":{"address":{"socket_address":{"address":"h","port_value":99999}}}}]}]}}]}}`,
			want: "static_resources.clusters[1].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: value must be less than or equal to 65535",
		},
		{
			name: "bootstrap top-level rule",
			msg:  &bootstrapv3.Bootstrap{},
			json: `{"stats_flush_interval":"0.0001s"}`,
			want: "stats_flush_interval: value must be inside range [1ms, 5m0s)",
		},
		{
			name: "first violation in generated order",
			msg:  &bootstrapv3.Bootstrap{},
			json: `{"admin":{"address":{}},"static_resources":{"clusters":[{"name":""}]}}`,
			want: "static_resources.clusters[0].name: value length must be at least 1 runes",
		},
		{
			name: "typed_config content is not PGV's business",
			msg:  &listenerv3.Listener{},
			json: `{"address":{"pipe":{"path":"/p"}},"filter_chains":[{"filters":[{"name":"f","typed_config":{"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster"}}]}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := protojson.Unmarshal([]byte(tt.json), tt.msg); err != nil {
				t.Fatalf("test input: %v", err)
			}
			err := cfgerr.Validate(tt.msg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("Validate =\n  %s\nwant\n  %s", got, tt.want)
			}
			var ce *cfgerr.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Validate returned %T, want *cfgerr.Error", err)
			}
			// The innermost PGV error stays reachable for callers that want it.
			var pgv interface{ Reason() string }
			if !errors.As(err, &pgv) {
				t.Errorf("error does not unwrap to the PGV violation")
			}
		})
	}
}

func TestValidateDeterministic(t *testing.T) {
	// Many violations under a map: PGV sorts map keys, so the report is stable.
	c := &clusterv3.Cluster{}
	js := `{"name":"c","connect_timeout":"1s","metadata":{"filter_metadata":{"":{},"b":{}}},"typed_extension_protocol_options":{}}`
	if err := protojson.Unmarshal([]byte(js), c); err != nil {
		t.Fatal(err)
	}
	first := cfgerr.Validate(c).Error()
	for range 50 {
		if got := cfgerr.Validate(c).Error(); got != first {
			t.Fatalf("Validate changed its answer: %q then %q", first, got)
		}
	}
}

func TestValidateCallerPrefix(t *testing.T) {
	// The bootstrap loader and the xDS decoder place a resource's error under their
	// own path with Field.
	l := &listenerv3.Listener{}
	if err := protojson.Unmarshal([]byte(`{"address":{}}`), l); err != nil {
		t.Fatal(err)
	}
	err := cfgerr.Field("static_resources.listeners[3]", cfgerr.Validate(l))
	const want = "static_resources.listeners[3].address: one of socket_address, pipe, envoy_internal_address is required (oneof address)"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	if got := cfgerr.PathOf(err); got != "static_resources.listeners[3].address" {
		t.Errorf("PathOf = %q", got)
	}
}

func TestValidateWithoutRules(t *testing.T) {
	for _, m := range []proto.Message{nil, durationpb.New(-1), (*listenerv3.Listener)(nil)} {
		if err := cfgerr.Validate(m); err != nil {
			t.Errorf("Validate(%T) = %v, want nil", m, err)
		}
	}
}
