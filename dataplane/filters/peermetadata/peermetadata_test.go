package peermetadata

import (
	"encoding/base64"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestWorkloadMetadata: the x-envoy-peer-metadata value is istio-proxy's
// struct of the node metadata.
func TestWorkloadMetadata(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{
		"NAME": "gw-0", "NAMESPACE": "istio-system", "CLUSTER_ID": "Kubernetes", "WORKLOAD_NAME": "gw",
		"OWNER":         "kubernetes://apis/apps/v1/namespaces/istio-system/deployments/gw",
		"LABELS":        map[string]any{"app": "gw", "istio": "ingressgateway", "service.istio.io/canonical-name": "gw"},
		"ISTIO_VERSION": "1.29.0",
	})
	v, err := WorkloadMetadata(&corev3.Node{Id: "router~x", Metadata: md}, []string{"istio"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		t.Fatal(err)
	}
	var got structpb.Struct
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want, _ := structpb.NewStruct(map[string]any{
		"NAME": "gw-0", "NAMESPACE": "istio-system", "CLUSTER_ID": "Kubernetes", "WORKLOAD_NAME": "gw",
		"OWNER":  "kubernetes://apis/apps/v1/namespaces/istio-system/deployments/gw",
		"LABELS": map[string]any{"app": "gw", "istio": "ingressgateway", "service.istio.io/canonical-name": "gw"},
	})
	if !proto.Equal(&got, want) {
		t.Fatalf("got %v\nwant %v", &got, want)
	}
}
