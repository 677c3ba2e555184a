// Package runtime is Envoy's layered runtime: key/value settings that routes and
// filters read at request time (feature flags, fractions, limits) and that can
// change without a config push. Layers are stacked in bootstrap order, later
// layers overriding earlier ones: static layers from the bootstrap, RTDS layers
// delivered over xDS, and the admin layer set through the admin API.
package runtime

import (
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// LayerKind says where a layer's values come from.
type LayerKind int

// Layer kinds.
const (
	StaticLayer LayerKind = iota
	RTDSLayer
	AdminLayer
)

func (k LayerKind) String() string {
	switch k {
	case StaticLayer:
		return "static"
	case RTDSLayer:
		return "rtds"
	}
	return "admin"
}

// RTDS is an RTDS layer declared by the bootstrap: the Runtime resource to
// subscribe to and where it comes from.
type RTDS struct {
	Name   string
	Source *corev3.ConfigSource
}

type layer struct {
	name   string
	kind   LayerKind
	rtds   string // for RTDS layers: the Runtime resource's name
	values map[string]*structpb.Value
}

// Loader holds the layers and the merged view readers use. Reads are lock-free.
type Loader struct {
	mu     sync.Mutex // serialises writers
	layers []layer
	merged atomic.Pointer[Snapshot]
}

// New builds a Loader from the bootstrap's layered_runtime (nil: no layers, as
// in Envoy without one). Errors name the field relative to layered_runtime.
func New(lr *bootstrapv3.LayeredRuntime) (*Loader, error) {
	l := &Loader{}
	for i, ly := range lr.GetLayers() {
		path := fmt.Sprintf("layers[%d]", i)
		switch spec := ly.GetLayerSpecifier().(type) {
		case *bootstrapv3.RuntimeLayer_StaticLayer:
			l.layers = append(l.layers, layer{name: ly.GetName(), kind: StaticLayer, values: flatten(spec.StaticLayer.GetFields())})
		case *bootstrapv3.RuntimeLayer_RtdsLayer_:
			if spec.RtdsLayer.GetName() == "" {
				return nil, cfgerr.Errorf(path+".rtds_layer.name", "must not be empty")
			}
			l.layers = append(l.layers, layer{name: ly.GetName(), kind: RTDSLayer, rtds: spec.RtdsLayer.GetName()})
		case *bootstrapv3.RuntimeLayer_AdminLayer_:
			l.layers = append(l.layers, layer{name: ly.GetName(), kind: AdminLayer, values: map[string]*structpb.Value{}})
		case *bootstrapv3.RuntimeLayer_DiskLayer_:
			return nil, cfgerr.Errorf(path+".disk_layer", "disk layers are not supported by skiff (use an RTDS or static layer)")
		default:
			return nil, cfgerr.Errorf(path, "a layer needs one of static_layer, rtds_layer, admin_layer")
		}
	}
	l.merge()
	return l, nil
}

// RTDSLayers returns the RTDS layers the bootstrap declares.
func RTDSLayers(lr *bootstrapv3.LayeredRuntime) []RTDS {
	var out []RTDS
	for _, ly := range lr.GetLayers() {
		if r := ly.GetRtdsLayer(); r != nil {
			out = append(out, RTDS{Name: r.GetName(), Source: r.GetRtdsConfig()})
		}
	}
	return out
}

// SetRTDS replaces the values of the RTDS layers fed by the Runtime resource
// called name; nil clears them.
func (l *Loader) SetRTDS(name string, values *structpb.Struct) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.layers {
		if l.layers[i].kind == RTDSLayer && l.layers[i].rtds == name {
			l.layers[i].values = flatten(values.GetFields())
		}
	}
	l.merge()
}

// SetAdmin sets (or, with an empty value, removes) a key in the admin layer, as
// Envoy's /runtime_modify does. It fails if the bootstrap has no admin layer.
func (l *Loader) SetAdmin(key, value string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.layers {
		if l.layers[i].kind != AdminLayer {
			continue
		}
		m := maps.Clone(l.layers[i].values)
		if value == "" {
			delete(m, key)
		} else {
			m[key] = structpb.NewStringValue(value)
		}
		l.layers[i].values = m
		l.merge()
		return nil
	}
	return fmt.Errorf("runtime: the bootstrap has no admin layer")
}

// Snapshot returns the current merged values.
func (l *Loader) Snapshot() *Snapshot { return l.merged.Load() }

func (l *Loader) merge() {
	s := &Snapshot{values: map[string]*structpb.Value{}}
	for _, ly := range l.layers {
		maps.Copy(s.values, ly.values)
	}
	l.merged.Store(s)
}

// flatten turns nested structs into Envoy's dotted keys: {a: {b: 1}} is "a.b".
func flatten(fields map[string]*structpb.Value) map[string]*structpb.Value {
	out := map[string]*structpb.Value{}
	var walk func(prefix string, fields map[string]*structpb.Value)
	walk = func(prefix string, fields map[string]*structpb.Value) {
		for k, v := range fields {
			if st := v.GetStructValue(); st != nil {
				walk(prefix+k+".", st.GetFields())
				continue
			}
			out[prefix+k] = v
		}
	}
	walk("", fields)
	return out
}

// Snapshot is an immutable view of the merged runtime.
type Snapshot struct {
	values map[string]*structpb.Value
}

// Keys returns the number of keys.
func (s *Snapshot) Keys() int { return len(s.values) }

// Get returns the raw value of key.
func (s *Snapshot) Get(key string) (*structpb.Value, bool) {
	v, ok := s.values[key]
	return v, ok
}

// Uint returns key as an unsigned integer, or def when it is absent or not one.
func (s *Snapshot) Uint(key string, def uint64) uint64 {
	v, ok := s.values[key]
	if !ok {
		return def
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		if k.NumberValue >= 0 {
			return uint64(k.NumberValue)
		}
	case *structpb.Value_StringValue:
		if n, err := strconv.ParseUint(k.StringValue, 10, 64); err == nil {
			return n
		}
	}
	return def
}

// Bool returns key as a boolean, or def.
func (s *Snapshot) Bool(key string, def bool) bool {
	v, ok := s.values[key]
	if !ok {
		return def
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_BoolValue:
		return k.BoolValue
	case *structpb.Value_StringValue:
		switch strings.ToLower(k.StringValue) {
		case "true":
			return true
		case "false":
			return false
		}
	}
	return def
}
