package filter

import (
	"strings"
	"testing"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

type routerFactory struct{ got *routerv3.Router }

func (routerFactory) Name() string              { return "envoy.filters.http.router" }
func (routerFactory) ConfigType() proto.Message { return &routerv3.Router{} }
func (f routerFactory) Create(m proto.Message, _ *Context) (http.Filter, error) {
	proto.Merge(f.got, m)
	return nil, nil
}

// TestTypedStruct: a TypedStruct selects the factory by its type_url and
// its value decodes as the message's JSON; unknown types and fields are
// errors naming the field.
func TestTypedStruct(t *testing.T) {
	got := &routerv3.Router{}
	r := NewRegistry()
	if err := r.RegisterHTTP(routerFactory{got: got}); err != nil {
		t.Fatal(err)
	}
	ts := func(url string, v map[string]any) *anypb.Any {
		s, _ := structpb.NewStruct(v)
		a, _ := anypb.New(&udpatypev1.TypedStruct{TypeUrl: url, Value: s})
		return a
	}
	if _, err := r.HTTPFilter("r", ts("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", map[string]any{"suppress_envoy_headers": true}), &Context{}); err != nil {
		t.Fatal(err)
	}
	if !got.GetSuppressEnvoyHeaders() {
		t.Fatal("the TypedStruct's value was not decoded")
	}
	_, err := r.HTTPFilter("r", ts("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", map[string]any{"nope": 1}), &Context{})
	if err == nil || cfgerr.PathOf(err) != "typed_config.value" {
		t.Fatalf("unknown field: %v at %q", err, cfgerr.PathOf(err))
	}
	_, err = r.HTTPFilter("x", ts("type.googleapis.com/some.Unknown", nil), &Context{})
	if err == nil || !strings.Contains(err.Error(), "some.Unknown is not a HTTP filter skiff supports") {
		t.Fatalf("unknown type: %v", err)
	}
}
