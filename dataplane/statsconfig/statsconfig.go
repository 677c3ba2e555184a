// Package statsconfig applies a bootstrap's stats_config as Envoy does:
// which stats exist (stats_matcher), and how a stat's name splits into a
// tag-extracted name and tags for the Prometheus output (use_all_default_tags,
// stats_tags, allow_default_tag_overrides).
package statsconfig

import (
	"fmt"
	"strings"

	"github.com/dlclark/regexp2/v2"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Config is a compiled stats_config. That of a bootstrap without one
// (New(nil)) keeps every stat and extracts Envoy's default tags.
type Config struct {
	// Accept reports whether a stat of this name is made (stats_matcher);
	// one that is not is never kept nor shown, as Envoy's null stats. Nil
	// accepts every name.
	Accept func(name string) bool
	// Tags extracts the tags of the Prometheus output.
	Tags *Tags
}

// New compiles pb (nil: no stats_config). Errors name the field under
// stats_config.
func New(pb *metricsv3.StatsConfig) (*Config, error) {
	if err := cfgerr.OnlyFields(pb, "stats_tags", "use_all_default_tags", "stats_matcher", "allow_default_tag_overrides"); err != nil {
		return nil, err
	}
	accept, err := newMatcher(pb.GetStatsMatcher())
	if err != nil {
		return nil, cfgerr.Field("stats_matcher", err)
	}
	tags, err := newTags(pb)
	if err != nil {
		return nil, err
	}
	return &Config{Accept: accept, Tags: tags}, nil
}

// newMatcher compiles a stats_matcher: reject_all, an inclusion list (only
// the names matching one of its patterns are made) or an exclusion list
// (those are not).
func newMatcher(pb *metricsv3.StatsMatcher) (func(string) bool, error) {
	switch m := pb.GetStatsMatcher().(type) {
	case nil:
		return nil, nil
	case *metricsv3.StatsMatcher_RejectAll:
		if !m.RejectAll {
			return nil, nil
		}
		return func(string) bool { return false }, nil
	case *metricsv3.StatsMatcher_InclusionList:
		return listMatcher("inclusion_list", m.InclusionList)
	case *metricsv3.StatsMatcher_ExclusionList:
		matches, err := listMatcher("exclusion_list", m.ExclusionList)
		if err != nil {
			return nil, err
		}
		return func(name string) bool { return !matches(name) }, nil
	}
	return nil, cfgerr.Errorf("", "unknown kind %T", pb.GetStatsMatcher())
}

// listMatcher returns whether a name matches one of a ListStringMatcher's
// patterns.
func listMatcher(field string, pb *matcherv3.ListStringMatcher) (func(string) bool, error) {
	ms := make([]*route.StringMatcher, len(pb.GetPatterns()))
	for i, p := range pb.GetPatterns() {
		m, err := route.NewStringMatcher(p)
		if err != nil {
			return nil, cfgerr.Field(field, cfgerr.Index("patterns", i, err))
		}
		ms[i] = m
	}
	return func(name string) bool {
		for _, m := range ms {
			if m.Match(name) {
				return true
			}
		}
		return false
	}, nil
}

// newTags compiles the tag part of a stats_config as Envoy's
// TagProducerImpl: the default extractors unless use_all_default_tags is
// false, then each stats_tags entry: its regex, its fixed_value, or, with
// neither, the default extractors of its name. A default whose name a
// stats_tags entry also has is left out when allow_default_tag_overrides is
// set; otherwise both are kept and the default's tag wins (see Extract).
func newTags(pb *metricsv3.StatsConfig) (*Tags, error) {
	t := &Tags{}
	defaults := defaultExtractors()
	useDefaults := pb.GetUseAllDefaultTags() == nil || pb.GetUseAllDefaultTags().GetValue()
	if useDefaults {
		overridden := map[string]bool{}
		if pb.GetAllowDefaultTagOverrides().GetValue() {
			for _, ts := range pb.GetStatsTags() {
				if ts.GetRegex() != "" || isFixed(ts) { // an empty regex is the default's
					overridden[ts.GetTagName()] = true
				}
			}
		}
		for _, e := range defaults {
			if !overridden[e.name] {
				t.extractors = append(t.extractors, e)
			}
		}
	}
	for i, ts := range pb.GetStatsTags() {
		name := ts.GetTagName()
		if name == "" {
			return nil, cfgerr.Index("stats_tags", i, cfgerr.Errorf("tag_name", "must not be empty"))
		}
		switch {
		case isFixed(ts):
			value := ts.GetFixedValue()
			t.extractors = append(t.extractors, extractor{name: name, fixed: &value})
		case ts.GetRegex() != "":
			re, err := compileECMA(ts.GetRegex())
			if err != nil {
				return nil, cfgerr.Index("stats_tags", i, cfgerr.Field("regex", err))
			}
			t.extractors = append(t.extractors, extractor{name: name, ecma: re})
		default: // the default extractors of that name
			present, found := hasExtractor(t.extractors, name), false
			for _, e := range defaults {
				if e.name == name {
					found = true
					if !present {
						t.extractors = append(t.extractors, e)
					}
				}
			}
			if !found {
				return nil, cfgerr.Index("stats_tags", i, fmt.Errorf("no regex specified for tag specifier and no default regex for name: '%s'", name))
			}
		}
	}
	return t, nil
}

func isFixed(ts *metricsv3.TagSpecifier) bool {
	_, ok := ts.GetTagValue().(*metricsv3.TagSpecifier_FixedValue)
	return ok
}

func hasExtractor(es []extractor, name string) bool {
	for _, e := range es {
		if e.name == name {
			return true
		}
	}
	return false
}

// compileECMA compiles a stats_tags regex as the ECMAScript grammar of
// std::regex, which Envoy uses for them (Istio's bootstrap has look-aheads,
// which Go's RE2 does not), with std::regex's character class names inside
// brackets ([[:digit:]]), which regexp2 does not have, spelled out as ASCII
// ranges first.
func compileECMA(expr string) (*regexp2.Regexp, error) {
	translated, err := expandClassNames(expr)
	if err != nil {
		return nil, err
	}
	re, err := regexp2.Compile(translated, regexp2.ECMAScript)
	if err != nil {
		return nil, err
	}
	return re, nil
}

// classNames are std::regex's character class names (in the "C" locale) as
// ECMAScript ranges.
var classNames = map[string]string{
	"alnum": `0-9A-Za-z`, "alpha": `A-Za-z`, "blank": ` \t`, "cntrl": `\x00-\x1f\x7f`,
	"digit": `0-9`, "d": `0-9`, "graph": `!-~`, "lower": `a-z`, "print": ` -~`,
	"punct": `!-\/:-@\[-\x60{-~`, "space": ` \t\n\v\f\r`, "s": ` \t\n\v\f\r`,
	"upper": `A-Z`, "xdigit": `0-9A-Fa-f`, "w": `0-9A-Za-z_`,
}

// expandClassNames replaces each [:name:] inside a bracket expression of an
// ECMAScript regex by its ranges.
func expandClassNames(expr string) (string, error) {
	if !strings.Contains(expr, "[:") && !strings.Contains(expr, "[.") && !strings.Contains(expr, "[=") {
		return expr, nil
	}
	var b strings.Builder
	inClass := false
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case c == '\\' && i+1 < len(expr):
			b.WriteString(expr[i : i+2])
			i++
			continue
		case !inClass && c == '[':
			inClass = true
		case inClass && c == '[' && i+1 < len(expr) && (expr[i+1] == ':' || expr[i+1] == '.' || expr[i+1] == '='):
			kind := expr[i+1]
			end := strings.Index(expr[i+2:], string(kind)+"]")
			if end < 0 {
				return "", fmt.Errorf("%q: unterminated [%c", expr, kind)
			}
			name := expr[i+2 : i+2+end]
			ranges, ok := classNames[name]
			if kind != ':' || !ok {
				return "", fmt.Errorf("%q: [%c%s%c] is not supported", expr, kind, name, kind)
			}
			b.WriteString(ranges)
			i += 2 + end + 1
			continue
		case inClass && c == ']':
			inClass = false
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}
