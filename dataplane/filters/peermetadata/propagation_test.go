package peermetadata

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/dataplane/http"
)

// TestDownstreamPropagation: with downstream_propagation istio_headers (as
// istiod configures a sidecar's inbound listener), a response answers each
// exchange header the request came with by the node's own, as istio-proxy
// does; a request without them (not from a peer proxy) gets none.
func TestDownstreamPropagation(t *testing.T) {
	m := istiotypes.New(istiotypes.PeerMetadataConfig)
	if err := protojson.Unmarshal([]byte(`{"downstreamDiscovery": [{"istioHeaders": {}}, {"workloadDiscovery": {}}],
		"downstreamPropagation": [{"istioHeaders": {}}]}`), m); err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sidecar~10.0.0.1~app.default~default.svc.cluster.local"}
	hf, err := Factory{}.Create(m, &filter.Context{Node: node})
	if err != nil {
		t.Fatal(err)
	}
	f := hf.(*Filter)
	for _, tt := range []struct {
		name           string
		sent           map[string]string
		wantID, wantMD bool
	}{
		{"from a peer proxy", map[string]string{HeaderID: "router~x", HeaderMetadata: "Cg=="}, true, true},
		{"the id alone", map[string]string{HeaderID: "router~x"}, true, false},
		{"not from a peer", nil, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := &http.Exchange{Request: &http.Header{}}
			for k, v := range tt.sent {
				e.Request.Set(k, v)
			}
			f.OnRequest(e)
			if e.Request.Has(HeaderID) || e.Request.Has(HeaderMetadata) {
				t.Error("downstream_discovery left the exchange headers on the request")
			}
			f.OnResponse(e)
			id, hasID := e.Response.Get(HeaderID)
			md, hasMD := e.Response.Get(HeaderMetadata)
			if hasID != tt.wantID || (hasID && id != node.GetId()) {
				t.Errorf("response %s: %q (present %v), want present %v", HeaderID, id, hasID, tt.wantID)
			}
			if hasMD != tt.wantMD || (hasMD && md != f.value) {
				t.Errorf("response %s: %q (present %v), want present %v", HeaderMetadata, md, hasMD, tt.wantMD)
			}
		})
	}
}
