package kit

import (
	"context"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStatPrefixJoin(t *testing.T) {
	for _, tc := range [][3]string{
		{"", "rbac.", "rbac."},
		{"http.x.", "rbac.", "http.x.rbac."},
		{"tcp", "rbac.", "tcp.rbac."},
		{"http.x.rbac.", "", "http.x.rbac."},
		{"http.x.rbac.", "edge_", "http.x.rbac.edge_"},
	} {
		if got := StatPrefixJoin(tc[0], tc[1]); got != tc[2] {
			t.Errorf("StatPrefixJoin(%q, %q) = %q, want %q", tc[0], tc[1], got, tc[2])
		}
	}
}

func TestSample(t *testing.T) {
	a := http.NewExchange(context.Background(), nil)
	b := http.NewExchange(context.Background(), nil)
	first, second := Sample(a, 1), Sample(a, 1)
	if first != second {
		t.Error("not stable")
	}
	if Sample(a, 1) == Sample(b, 1) || Sample(a, 1) == Sample(a, 2) {
		t.Error("not varied")
	}
}

func hvo(key, value string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value}, AppendAction: action}
}

func TestHeaderAdds(t *testing.T) {
	adds, err := CompileHeaderAdds("h", []*corev3.HeaderValueOption{
		hvo("X-Append", "2", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
		hvo("x-absent", "new", corev3.HeaderValueOption_ADD_IF_ABSENT),
		hvo("x-present", "no", corev3.HeaderValueOption_ADD_IF_ABSENT),
		hvo("x-over", "o", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
		hvo("x-only-if", "o", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
		hvo("x-empty", "", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
		{Header: &corev3.HeaderValue{Key: "x-legacy", Value: "l"}, Append: wrapperspb.Bool(false)},
	})
	if err != nil {
		t.Fatal(err)
	}
	var h http.Header
	h.Add("x-append", "1")
	h.Add("x-present", "yes")
	h.Add("x-over", "1")
	h.Add("x-over", "2")
	h.Add("x-legacy", "old")
	adds.Apply(&h)
	want := "x-append: 1\nx-present: yes\nx-over: o\nx-legacy: l\nx-append: 2\nx-absent: new\n"
	if got := h.String(); got != want {
		t.Errorf("headers:\n%s\nwant:\n%s", got, want)
	}
	if n := testing.AllocsPerRun(10, func() { h.Reset(); adds.Apply(&h) }); n != 0 {
		t.Errorf("Apply allocates %v", n)
	}
}

func TestHeaderAddsErrors(t *testing.T) {
	for _, tc := range []struct {
		hvo       *corev3.HeaderValueOption
		path, msg string
	}{
		{hvo(":path", "x", 0), "h[0].header.key", "may not be modified"},
		{hvo("x", "%REQ(x)%", 0), "h[0].header.value", "not supported"},
		{&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x", RawValue: []byte("r")}}, "h[0].header.raw_value", "not supported"},
		//lint:ignore SA1019 append is deprecated but still Envoy's API
		{&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x"}, Append: wrapperspb.Bool(true), AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT}, "h[0].append", "both"},
	} {
		_, err := CompileHeaderAdds("h", []*corev3.HeaderValueOption{tc.hvo})
		if err == nil || cfgerr.PathOf(err) != tc.path || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("error %v; want %q at %q", err, tc.msg, tc.path)
		}
	}
}
