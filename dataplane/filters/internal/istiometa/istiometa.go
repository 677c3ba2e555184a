// Package istiometa is what Istio's filters tell a peer proxy about the
// workload they serve (istio-proxy's extensions/common/metadata_object).
package istiometa

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

// The names a proxy tells its id and its workload metadata under: headers
// of the HTTP exchange, keys of the TCP exchange's Struct.
const (
	KeyID       = "x-envoy-peer-metadata-id"
	KeyMetadata = "x-envoy-peer-metadata"
)

// AdditionalLabels is the additional_labels list of an Istio filter's
// config (the peer metadata and metadata exchange filters both have one).
func AdditionalLabels(cfg protoreflect.Message) []string {
	var labels []string
	l := cfg.Get(cfg.Descriptor().Fields().ByName("additional_labels")).List()
	for i := range l.Len() {
		labels = append(labels, l.Get(i).String())
	}
	return labels
}

// Node metadata keys and labels istio-proxy reads (extensions/common/metadata_object.h).
const (
	keyName      = "NAME"
	keyNamespace = "NAMESPACE"
	keyCluster   = "CLUSTER_ID"
	keyLabels    = "LABELS"
	keyOwner     = "OWNER"
	keyWorkload  = "WORKLOAD_NAME"
	ownerPrefix  = "kubernetes://apis/apps/v1/namespaces/"
)

// Workload is the workload metadata a proxy with node n tells its peers:
// istio-proxy's convertWorkloadMetadataToStruct of the node metadata (with
// additional labels).
func Workload(n *corev3.Node, additionalLabels []string) (*structpb.Struct, error) {
	md := n.GetMetadata().GetFields()
	str := func(k string) string { return md[k].GetStringValue() }
	out := map[string]any{}
	for _, k := range []string{keyName, keyNamespace, keyWorkload, keyCluster} {
		if v := str(k); v != "" {
			out[k] = v
		}
	}
	labels := map[string]any{}
	in := md[keyLabels].GetStructValue().GetFields()
	for _, l := range []string{"service.istio.io/canonical-name", "service.istio.io/canonical-revision", "app", "version"} {
		if v := in[l].GetStringValue(); v != "" {
			labels[l] = v
		}
	}
	for _, l := range additionalLabels {
		if v, ok := in[l]; ok {
			labels[l] = v.GetStringValue()
		}
	}
	out[keyLabels] = labels
	if w := str(keyWorkload); w != "" {
		if kind := ownerKind(str(keyOwner), w); kind != "" {
			out[keyOwner] = ownerPrefix + str(keyNamespace) + "/" + kind + "s/" + w
		}
	}
	return structpb.NewStruct(out)
}

// ownerKind is istio-proxy's parseOwner: the workload type in an owner
// ".../<kind>s/<workload>" (pod, deployment, job, cronjob), or "".
func ownerKind(owner, workload string) string {
	if len(owner) <= len(workload)+2 {
		return ""
	}
	owner = owner[:len(owner)-len(workload)-2]
	i := strings.LastIndexByte(owner, '/')
	if i < 0 {
		return ""
	}
	switch k := owner[i+1:]; k {
	case "pod", "deployment", "job", "cronjob":
		return k
	}
	return ""
}
