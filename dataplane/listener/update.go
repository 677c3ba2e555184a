package listener

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// isChainField reports whether name is one of the Listener fields that a
// filter-chain-only update may change (those Envoy's
// ListenerMessageUtil::filterChainOnlyChange ignores).
func isChainField(name protoreflect.Name) bool {
	switch name {
	case "filter_chains", "default_filter_chain", "filter_chain_matcher":
		return true
	}
	return false
}

// FilterChainOnlyChange reports whether next may replace prev as an in-place
// filter chain update, as Envoy's ListenerImpl::supportUpdateFilterChain
// decides: next has at least one of filter_chains, and the two listeners are
// equivalent once filter_chains, default_filter_chain and filter_chain_matcher
// are set aside (ListenerMessageUtil::filterChainOnlyChange: a field set to its
// default equals an unset one, repeated fields compare as sets, Any messages
// by their content). Then unchanged chains keep their connections. Otherwise
// the update replaces the whole listener and every chain of prev drains.
func FilterChainOnlyChange(prev, next *listenerv3.Listener) bool {
	if len(next.GetFilterChains()) == 0 {
		return false
	}
	return equivalent(prev.ProtoReflect(), next.ProtoReflect(), isChainField)
}

// equivalent compares two messages of the same type the way protobuf's
// MessageDifferencer does with EQUIVALENT field comparison and AS_SET repeated
// field comparison, skipping the top-level fields ignore (if not nil) reports.
func equivalent(a, b protoreflect.Message, ignore func(protoreflect.Name) bool) bool {
	if a.Descriptor().FullName() != b.Descriptor().FullName() {
		return false
	}
	if a.Descriptor().FullName() == "google.protobuf.Any" {
		return equivalentAny(a, b)
	}
	fields := a.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if ignore != nil && ignore(fd.Name()) || !a.Has(fd) && !b.Has(fd) {
			continue // (an unset field equals an unset one: this ends the recursion)
		}
		if !equivalentField(fd, a.Get(fd), b.Get(fd)) {
			return false
		}
	}
	return true
}

// equivalentAny compares two Any messages by what they hold when the type is
// known, and by their encoding otherwise.
func equivalentAny(a, b protoreflect.Message) bool {
	x, okx := a.Interface().(*anypb.Any)
	y, oky := b.Interface().(*anypb.Any)
	if !okx || !oky {
		return proto.Equal(a.Interface(), b.Interface())
	}
	if x.GetTypeUrl() != y.GetTypeUrl() {
		return false
	}
	mx, errx := x.UnmarshalNew()
	my, erry := y.UnmarshalNew()
	if errx != nil || erry != nil {
		return proto.Equal(x, y)
	}
	return equivalent(mx.ProtoReflect(), my.ProtoReflect(), nil)
}

func equivalentField(fd protoreflect.FieldDescriptor, x, y protoreflect.Value) bool {
	switch {
	case fd.IsList():
		return equivalentSet(fd, x.List(), y.List())
	case fd.IsMap():
		mx, my := x.Map(), y.Map()
		if mx.Len() != my.Len() {
			return false
		}
		eq := true
		mx.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
			eq = my.Has(k) && equivalentValue(fd.MapValue(), v, my.Get(k))
			return eq
		})
		return eq
	}
	return equivalentValue(fd, x, y)
}

// equivalentSet compares two lists as sets: each element of one is matched to
// a distinct equivalent element of the other.
func equivalentSet(fd protoreflect.FieldDescriptor, x, y protoreflect.List) bool {
	if x.Len() != y.Len() {
		return false
	}
	used := make([]bool, y.Len())
	for i := range x.Len() {
		found := false
		for j := range y.Len() {
			if !used[j] && equivalentValue(fd, x.Get(i), y.Get(j)) {
				used[j], found = true, true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// equivalentValue compares one (non-repeated) value of fd's kind.
func equivalentValue(fd protoreflect.FieldDescriptor, x, y protoreflect.Value) bool {
	if fd.Message() != nil {
		return equivalent(x.Message(), y.Message(), nil)
	}
	return x.Equal(y)
}
