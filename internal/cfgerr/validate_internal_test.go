package cfgerr

import (
	"errors"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

// fakePGV mimics a generated XValidationError, to reach the paths real messages
// cannot: names the descriptors do not know, causes that are not PGV errors.
type fakePGV struct {
	field, reason string
	key           bool
	cause         error
}

func (e fakePGV) Error() string  { return "invalid " + e.field + ": " + e.reason }
func (e fakePGV) Field() string  { return e.field }
func (e fakePGV) Reason() string { return e.reason }
func (e fakePGV) Key() bool      { return e.key }
func (e fakePGV) Cause() error   { return e.cause }

type fakeMulti []error

func (m fakeMulti) Error() string      { return "multi" }
func (m fakeMulti) AllErrors() []error { return m }

func TestFromPGV(t *testing.T) {
	md := (&listenerv3.Listener{}).ProtoReflect().Descriptor()
	tests := []struct {
		name string
		err  error
		want string
	}{
		{
			name: "unknown Go name falls back to snake_case below it",
			err: fakePGV{field: "NoSuchField[2]", reason: embeddedReason, cause: fakeMulti{
				fakePGV{field: "InnerThing", reason: "value is required"},
			}},
			want: "no_such_field[2].inner_thing: value is required",
		},
		{
			name: "loose match tolerates another generator's spelling",
			err:  fakePGV{field: "Filter_chains[0]", reason: "value is required"},
			want: "filter_chains[0]: value is required",
		},
		{
			name: "map key flagged",
			err:  fakePGV{field: "Metadata[x]", reason: "value length must be at least 1 runes", key: true},
			want: "metadata[x]: map key: value length must be at least 1 runes",
		},
		{
			name: "cause of a leaf is kept",
			err:  fakePGV{field: "ListenerFiltersTimeout", reason: "value is not a valid duration", cause: errors.New("seconds out of range")},
			want: "listener_filters_timeout: value is not a valid duration: seconds out of range",
		},
		{
			name: "non-PGV cause stops the walk",
			err:  fakePGV{field: "Address", reason: embeddedReason, cause: errors.New("boom")},
			want: "address: boom",
		},
		{
			name: "empty multi error",
			err:  fakeMulti{},
			want: "multi",
		},
		{
			name: "other oneof rule",
			err:  fakePGV{field: "ListenerSpecifier", reason: "oneof value cannot be a typed-nil"},
			want: "oneof value cannot be a typed-nil (oneof listener_specifier of internal_listener)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromPGV(tt.err, md).Error(); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestGoCamelCase(t *testing.T) {
	for in, want := range map[string]string{
		"filter_chains":          "FilterChains",
		"http2_protocol_options": "Http2ProtocolOptions",
		"port_value":             "PortValue",
		"_leading":               "XLeading",
		"ipv4_compat":            "Ipv4Compat",
		"name":                   "Name",
	} {
		if got := goCamelCase(in); got != want {
			t.Errorf("goCamelCase(%q) = %q, want %q", in, got, want)
		}
	}
}
