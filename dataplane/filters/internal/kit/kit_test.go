package kit

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/http"
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
