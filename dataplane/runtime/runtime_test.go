package runtime

import (
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLayersOverrideInOrder(t *testing.T) {
	lr := &bootstrapv3.LayeredRuntime{Layers: []*bootstrapv3.RuntimeLayer{
		{Name: "static", LayerSpecifier: &bootstrapv3.RuntimeLayer_StaticLayer{StaticLayer: mustStruct(t, map[string]any{
			"health_check": map[string]any{"min_interval": 5}, "feature": true, "limit": "10",
		})}},
		{Name: "rtds", LayerSpecifier: &bootstrapv3.RuntimeLayer_RtdsLayer_{RtdsLayer: &bootstrapv3.RuntimeLayer_RtdsLayer{Name: "dynamic"}}},
		{Name: "admin", LayerSpecifier: &bootstrapv3.RuntimeLayer_AdminLayer_{AdminLayer: &bootstrapv3.RuntimeLayer_AdminLayer{}}},
	}}
	l, err := New(lr)
	if err != nil {
		t.Fatal(err)
	}
	s := l.Snapshot()
	if got := s.Uint("health_check.min_interval", 0); got != 5 {
		t.Fatalf("nested static key flattened to %d", got)
	}
	if !s.Bool("feature", false) || s.Uint("limit", 0) != 10 {
		t.Fatal("static values not read")
	}
	l.SetRTDS("dynamic", mustStruct(t, map[string]any{"limit": 20, "feature": false}))
	if s := l.Snapshot(); s.Uint("limit", 0) != 20 || s.Bool("feature", true) {
		t.Fatal("the RTDS layer does not override the static one")
	}
	if err := l.SetAdmin("limit", "30"); err != nil {
		t.Fatal(err)
	}
	if got := l.Snapshot().Uint("limit", 0); got != 30 {
		t.Fatalf("admin layer: limit = %d", got)
	}
	l.SetAdmin("limit", "")
	l.SetRTDS("dynamic", nil)
	if got := l.Snapshot().Uint("limit", 0); got != 10 {
		t.Fatalf("after clearing the upper layers: limit = %d", got)
	}
	if s.Uint("limit", 0) != 10 {
		t.Fatal("an old snapshot changed")
	}
}

func TestDiskLayerRefused(t *testing.T) {
	_, err := New(&bootstrapv3.LayeredRuntime{Layers: []*bootstrapv3.RuntimeLayer{
		{Name: "disk", LayerSpecifier: &bootstrapv3.RuntimeLayer_DiskLayer_{DiskLayer: &bootstrapv3.RuntimeLayer_DiskLayer{SymlinkRoot: "/srv/runtime"}}},
	}})
	if cfgerr.PathOf(err) != "layers[0].disk_layer" {
		t.Fatalf("disk layer: %v", err)
	}
}
