package runtime

import (
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/skiffproxy/skiff/internal/protoyaml"
)

func TestFeatureEnabled(t *testing.T) {
	var lr bootstrapv3.LayeredRuntime
	if err := protoyaml.Unmarshal([]byte(`layers:
- name: s
  static_layer:
    pct: 30
    big: 250
    str: "7"
    neg: -1
    frac: {numerator: 5, denominator: TEN_THOUSAND}
    fracnum: {numerator: 2, denominator: 2}
    fracbare: {numerator: 40}
    words: "yes"
`), &lr); err != nil {
		t.Fatal(err)
	}
	l, err := New(&lr)
	if err != nil {
		t.Fatal(err)
	}
	s := l.Current()
	def := Fraction{Numerator: 1, Denominator: 1_000_000}
	for _, tc := range []struct {
		key  string
		want Fraction
	}{
		{"", def},
		{"absent", def},
		{"pct", Percent(30)},
		{"big", Percent(100)},
		{"str", Percent(7)},
		{"neg", def},
		{"words", def},
		{"frac", Fraction{5, 10_000}},
		{"fracnum", Fraction{2, 1_000_000}},
		{"fracbare", Percent(40)},
	} {
		if got := s.Fraction(NewKey(tc.key), def); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.key, got, tc.want)
		}
	}
	if !s.FeatureEnabled(NewKey("pct"), def, 129) || s.FeatureEnabled(NewKey("pct"), def, 130) {
		t.Error("30% samples r%100 < 30")
	}
	var none *Loader
	if none.Current() != nil || !none.Current().FeatureEnabled(NewKey("pct"), Percent(100), 99) || none.Current().Integer("pct", 3) != 3 {
		t.Error("a nil runtime must give defaults")
	}
	if s.Integer("str", 1) != 7 || s.Integer("absent", 1) != 1 {
		t.Error("Integer")
	}
}

func TestFractionOf(t *testing.T) {
	if f := FractionOf(nil); f.Sample(0) {
		t.Error("an unset percentage is 0%")
	}
	f := FractionOf(&typev3.FractionalPercent{Numerator: 3, Denominator: typev3.FractionalPercent_MILLION})
	if f != (Fraction{3, 1_000_000}) || !f.Sample(2_000_002) || f.Sample(3) {
		t.Errorf("%v", f)
	}
	if !Percent(150).Sample(99) || (Fraction{}).Sample(0) {
		t.Error("edge cases")
	}
	rf := RuntimeFractionOf(&corev3.RuntimeFractionalPercent{RuntimeKey: "k", DefaultValue: &typev3.FractionalPercent{Numerator: 50}}, Percent(0))
	if rf.Key.Name() != "k" || rf.Default != Percent(50) || !rf.Enabled(nil, 49) || rf.Enabled(nil, 50) {
		t.Errorf("%+v", rf)
	}
	if rf := RuntimeFractionOf(nil, Percent(100)); !rf.Enabled(nil, 12345) {
		t.Error("unset uses the default")
	}
}
