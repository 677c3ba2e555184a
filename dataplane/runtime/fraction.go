package runtime

import (
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Current returns l's current snapshot, or nil when l is nil (no runtime:
// every key takes its default). The Snapshot methods in this file accept a
// nil Snapshot.
func (l *Loader) Current() *Snapshot {
	if l == nil {
		return nil
	}
	return l.Snapshot()
}

// Fraction is an envoy.type.v3.FractionalPercent: Numerator out of
// Denominator (100, 10 000 or 1 000 000).
type Fraction struct {
	Numerator, Denominator uint64
}

// FractionOf converts a FractionalPercent. nil is 0% (Envoy's default for an
// unset percentage).
func FractionOf(p *typev3.FractionalPercent) Fraction {
	return Fraction{Numerator: uint64(p.GetNumerator()), Denominator: denominator(p.GetDenominator())}
}

// Percent is n%.
func Percent(n uint64) Fraction { return Fraction{Numerator: n, Denominator: 100} }

func denominator(d typev3.FractionalPercent_DenominatorType) uint64 {
	switch d {
	case typev3.FractionalPercent_TEN_THOUSAND:
		return 10_000
	case typev3.FractionalPercent_MILLION:
		return 1_000_000
	}
	return 100
}

// Sample reports whether a request with random value r falls in the
// fraction, as Envoy's ProtobufPercentHelper::evaluateFractionalPercent does:
// r modulo the denominator is below the numerator (so a numerator at or above
// the denominator is always true).
func (f Fraction) Sample(r uint64) bool {
	if f.Denominator == 0 {
		return false
	}
	return r%f.Denominator < f.Numerator
}

// Key is a runtime key under which a Fraction may be overridden, with the
// derived keys a fractional percent given as a struct flattens to
// ("<key>.numerator", "<key>.denominator"), computed once so that a lookup
// does not build strings.
type Key struct {
	name, num, den string
}

// NewKey returns the Key for name ("" never overrides anything).
func NewKey(name string) Key {
	if name == "" {
		return Key{}
	}
	return Key{name: name, num: name + ".numerator", den: name + ".denominator"}
}

// Name is the key's name.
func (k Key) Name() string { return k.name }

// FeatureEnabled is Envoy's Snapshot::featureEnabled(key, default, random):
// when the runtime has a fractional percent under k (a struct with numerator
// and denominator) it is used; when it has a number, it is a percentage (above
// 100 means always); otherwise def is. The fraction is then sampled with r.
func (s *Snapshot) FeatureEnabled(k Key, def Fraction, r uint64) bool {
	return s.Fraction(k, def).Sample(r)
}

// Fraction returns the fraction FeatureEnabled samples.
func (s *Snapshot) Fraction(k Key, def Fraction) Fraction {
	if s == nil || k.name == "" {
		return def
	}
	if v, ok := s.values[k.num]; ok {
		if n, ok := uintValue(v); ok {
			f := Fraction{Numerator: n, Denominator: 100}
			if d, ok := s.values[k.den]; ok {
				f.Denominator = denominatorValue(d)
			}
			return f
		}
	}
	if v, ok := s.values[k.name]; ok {
		if n, ok := uintValue(v); ok {
			return Percent(min(n, 100))
		}
	}
	return def
}

// Integer is Envoy's Snapshot::getInteger: the unsigned integer under key,
// or def when there is none (or no runtime).
func (s *Snapshot) Integer(key string, def uint64) uint64 {
	if s == nil || key == "" {
		return def
	}
	return s.Uint(key, def)
}

func uintValue(v *structpb.Value) (uint64, bool) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		if k.NumberValue >= 0 && k.NumberValue < 1<<63 {
			return uint64(k.NumberValue), true
		}
	case *structpb.Value_StringValue:
		if n, err := strconv.ParseUint(k.StringValue, 10, 64); err == nil {
			return n, true
		}
	}
	return 0, false
}

// denominatorValue reads a DenominatorType given by name or number.
func denominatorValue(v *structpb.Value) uint64 {
	if s := v.GetStringValue(); s != "" {
		if d, ok := typev3.FractionalPercent_DenominatorType_value[strings.ToUpper(s)]; ok {
			return denominator(typev3.FractionalPercent_DenominatorType(d))
		}
	}
	if n, ok := uintValue(v); ok {
		return denominator(typev3.FractionalPercent_DenominatorType(n))
	}
	return 100
}

// RuntimeFraction is a compiled envoy.config.core.v3.RuntimeFractionalPercent.
type RuntimeFraction struct {
	Key     Key
	Default Fraction
}

// RuntimeFractionOf compiles p; when p is nil the result is def with no key.
func RuntimeFractionOf(p *corev3.RuntimeFractionalPercent, def Fraction) RuntimeFraction {
	if p == nil {
		return RuntimeFraction{Default: def}
	}
	return RuntimeFraction{Key: NewKey(p.GetRuntimeKey()), Default: FractionOf(p.GetDefaultValue())}
}

// Enabled samples the fraction (its runtime override, if any) with r.
func (f RuntimeFraction) Enabled(s *Snapshot, r uint64) bool {
	return s.FeatureEnabled(f.Key, f.Default, r)
}
