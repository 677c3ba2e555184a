package route

import (
	"net/netip"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

func hvo(key, value string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value}, AppendAction: action}
}

// TestHeadersToAdd: a filter's own headers_to_add list (local_ratelimit's)
// follows Envoy's HeaderParser like the route table's lists, formatted
// values included.
func TestHeadersToAdd(t *testing.T) {
	adds, err := CompileHeadersToAdd(false, "h", []*corev3.HeaderValueOption{
		hvo("X-Append", "2", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
		hvo("x-absent", "new", corev3.HeaderValueOption_ADD_IF_ABSENT),
		hvo("x-present", "no", corev3.HeaderValueOption_ADD_IF_ABSENT),
		hvo("x-over", "o", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
		hvo("x-only-if", "o", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
		hvo("x-empty", "", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
		{Header: &corev3.HeaderValue{Key: "x-legacy", Value: "l"}, Append: wrapperspb.Bool(false)},
		hvo("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
		hvo("via", "1.1 skiff", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD), // an inline header: joined
	})
	if err != nil {
		t.Fatal(err)
	}
	info := &http.StreamInfo{DownstreamRemote: netip.MustParseAddrPort("192.0.2.7:5000")}
	var h http.Header
	h.Add("x-append", "1")
	h.Add("x-present", "yes")
	h.Add("x-over", "1")
	h.Add("x-over", "2")
	h.Add("x-legacy", "old")
	h.Add("via", "1.0 client")
	adds.Apply(&h, info)
	want := "x-append: 1\nx-present: yes\nvia: 1.0 client,1.1 skiff\nx-over: o\nx-legacy: l\nx-append: 2\nx-absent: new\nx-client: 192.0.2.7\n"
	if got := h.String(); got != want {
		t.Errorf("headers:\n%s\nwant:\n%s", got, want)
	}
	var none HeadersToAdd
	none.Apply(&h, info) // the zero value adds nothing
}

func TestHeadersToAddErrors(t *testing.T) {
	for _, tc := range []struct {
		hvo       *corev3.HeaderValueOption
		path, msg string
	}{
		{hvo(":path", "x", 0), "h[0].header.key", "may not be modified"},
		{&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x", RawValue: []byte("r")}}, "h[0].header.raw_value", "not supported"},
		//lint:ignore SA1019 append is deprecated but still Envoy's API
		{&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x"}, Append: wrapperspb.Bool(true), AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT}, "h[0].append", "both"},
	} {
		_, err := CompileHeadersToAdd(false, "h", []*corev3.HeaderValueOption{tc.hvo})
		if err == nil || cfgerr.PathOf(err) != tc.path || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("error %v; want %q at %q", err, tc.msg, tc.path)
		}
	}
}
