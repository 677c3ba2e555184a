// Package peermetadata is Istio's HTTP istio.metadata_exchange filter
// (io.istio.http.peer_metadata.Config, an istio-proxy extension that istiod
// sends inside a udpa.type.v1.TypedStruct), doing what istio-proxy's
// peer_metadata filter does:
//
//   - upstream_propagation istio_headers: every request sent upstream gets
//     x-envoy-peer-metadata-id (the node id) and x-envoy-peer-metadata (the
//     proxy's workload metadata: a google.protobuf.Struct built from the
//     node metadata's NAME, NAMESPACE, CLUSTER_ID, WORKLOAD_NAME, OWNER and
//     LABELS, serialized deterministically and base64-encoded), unless the
//     route's cluster has istio metadata disable_mx, or external with
//     skip_external_clusters (PassthroughCluster counts as external);
//   - upstream_discovery / downstream_discovery istio_headers: those two
//     headers are removed from the response / the request once read;
//   - downstream_propagation istio_headers: a response gets the node id if
//     the request came with x-envoy-peer-metadata-id, and the workload
//     metadata if it came with x-envoy-peer-metadata (a peer proxy asked),
//     under the same cluster conditions.
//
// What istio-proxy does with the peer metadata it discovers is store it in
// the request's filter state for its telemetry filters (istio.stats); skiff
// has neither filter state nor those filters, so discovery only removes the
// headers. workload_discovery needs istio-proxy's workload metadata xDS
// bootstrap extension, which skiff does not have: as in istio-proxy without
// it, it finds nothing. baggage discovery is deprecated and ignored by
// istio-proxy too.
package peermetadata

import (
	"encoding/base64"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiometa"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Name is the filter's name in istiod's resources.
const Name = "istio.metadata_exchange"

// The exchange headers.
const (
	HeaderID       = istiometa.KeyID
	HeaderMetadata = istiometa.KeyMetadata
)

// Factory builds the filter.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return istiotypes.New(istiotypes.PeerMetadataConfig) }

// Filter is a built filter.
type Filter struct {
	removeRequest  bool // downstream_discovery has istio_headers
	removeResponse bool // upstream_discovery has istio_headers
	propagate      bool // upstream_propagation has istio_headers
	answer         bool // downstream_propagation has istio_headers
	skipExternal   bool
	id, value      string
	clusters       *upstream.Manager
}

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	if err := cfgerr.OnlyFields(m, "downstream_discovery", "upstream_discovery", "upstream_propagation",
		"downstream_propagation", "shared_with_upstream", "additional_labels"); err != nil {
		return nil, err
	}
	r := m.ProtoReflect()
	f := &Filter{clusters: fc.Clusters}
	var err error
	if f.removeRequest, err = discovery(r, "downstream_discovery"); err != nil {
		return nil, err
	}
	if f.removeResponse, err = discovery(r, "upstream_discovery"); err != nil {
		return nil, err
	}
	if f.propagate, err = f.propagation(r, "upstream_propagation"); err != nil {
		return nil, err
	}
	if f.answer, err = f.propagation(r, "downstream_propagation"); err != nil {
		return nil, err
	}
	if f.propagate || f.answer {
		f.id = fc.Node.GetId()
		v, err := WorkloadMetadata(fc.Node, istiometa.AdditionalLabels(r))
		if err != nil {
			return nil, cfgerr.Errorf("additional_labels", "encoding the node's metadata: %v", err)
		}
		f.value = v
	}
	return f, nil
}

// propagation reports whether the named list of PropagationMethods has
// istio_headers (the only method skiff has), checking every entry names it.
func (f *Filter) propagation(r protoreflect.Message, name string) (bool, error) {
	props := r.Get(fd(r, name)).List()
	for i := range props.Len() {
		p := props.Get(i).Message()
		ih := fd(p, "istio_headers")
		if !p.Has(ih) {
			return false, cfgerr.Errorf(fmt.Sprintf("%s[%d]", name, i), "needs a method skiff has (istio_headers)")
		}
		h := p.Get(ih).Message()
		if h.Get(fd(h, "skip_external_clusters")).Bool() {
			f.skipExternal = true
		}
	}
	return props.Len() > 0, nil
}

func fd(m protoreflect.Message, name string) protoreflect.FieldDescriptor {
	return m.Descriptor().Fields().ByName(protoreflect.Name(name))
}

// discovery reports whether the named list of DiscoveryMethods has
// istio_headers, checking every entry names a method.
func discovery(r protoreflect.Message, name string) (bool, error) {
	l := r.Get(fd(r, name)).List()
	headers := false
	for i := range l.Len() {
		dm := l.Get(i).Message()
		od := dm.Descriptor().Oneofs().ByName("method_specifier")
		set := dm.WhichOneof(od)
		if set == nil {
			return false, cfgerr.Errorf(fmt.Sprintf("%s[%d]", name, i), "needs a method (workload_discovery, istio_headers, baggage)")
		}
		if set.Name() == "istio_headers" {
			headers = true
		}
	}
	return headers, nil
}

// WorkloadMetadata is the x-envoy-peer-metadata value of a proxy with node
// n: its workload metadata (istiometa.Workload), serialized
// deterministically, base64-encoded.
func WorkloadMetadata(n *corev3.Node, additionalLabels []string) (string, error) {
	s, err := istiometa.Workload(n, additionalLabels)
	if err != nil {
		return "", err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// askedKey is the filter state of an exchange whose request carried the
// exchange headers: askedID | askedMetadata.
const askedKey = "io.istio.peer_metadata.asked"

const (
	askedID = 1 << iota
	askedMetadata
)

// OnRequest implements http.Filter.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	req := e.Request
	if f.answer {
		var asked uint8
		if req.Has(HeaderID) {
			asked |= askedID
		}
		if req.Has(HeaderMetadata) {
			asked |= askedMetadata
		}
		if asked != 0 {
			e.Info.SetFilterState(askedKey, asked)
		}
	}
	if f.removeRequest {
		req.Del(HeaderID)
		req.Del(HeaderMetadata)
	}
	if f.propagate && !f.skip(e) {
		req.Set(HeaderID, f.id)
		req.Set(HeaderMetadata, f.value)
	}
	return http.Continue
}

// OnResponse implements http.ResponseFilter.
func (f *Filter) OnResponse(e *http.Exchange) {
	if f.removeResponse {
		e.Response.Del(HeaderID)
		e.Response.Del(HeaderMetadata)
	}
	if !f.answer {
		return
	}
	asked, _ := e.Info.FilterState[askedKey].(uint8)
	if asked == 0 || f.skip(e) {
		return
	}
	if asked&askedID != 0 {
		e.Response.Set(HeaderID, f.id)
	}
	if asked&askedMetadata != 0 {
		e.Response.Set(HeaderMetadata, f.value)
	}
}

// skip is istio-proxy's skipMXHeaders: the route's cluster says disable_mx,
// or is external (or PassthroughCluster) with skip_external_clusters.
func (f *Filter) skip(e *http.Exchange) bool {
	r, _ := e.Route.(*route.Route)
	if r == nil || f.clusters == nil {
		return false
	}
	name := r.ClusterFor(e.Request, route.ExchangeRandom(e))
	if f.skipExternal && name == "PassthroughCluster" {
		return true
	}
	cl := f.clusters.Get(name)
	if cl == nil {
		return false
	}
	istio := cl.Config().Proto().GetMetadata().GetFilterMetadata()["istio"].GetFields()
	if f.skipExternal && istio["external"].GetBoolValue() {
		return true
	}
	return istio["disable_mx"].GetBoolValue()
}
