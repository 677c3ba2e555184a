package route

import (
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// compileRegex compiles an Envoy RegexMatcher for a full match (Envoy's
// Regex::CompiledMatcher::match is RE2::FullMatch). Go's regexp implements
// RE2's syntax and guarantees, so what RE2 accepts Go accepts too, except \C
// (any byte), which Go refuses with an error naming it.
func compileRegex(pb *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if err := checkRegexEngine(pb); err != nil {
		return nil, err
	}
	if _, err := regexp.Compile(pb.GetRegex()); err != nil {
		return nil, cfgerr.Errorf("regex", "%v", err)
	}
	// The user's expression is valid on its own, so wrapping it in a group
	// cannot change its meaning; \A and \z anchor at the text's ends only.
	return regexp.MustCompile(`\A(?:` + pb.GetRegex() + `)\z`), nil
}

// compileSearchRegex compiles an Envoy RegexMatcher for searching, as
// RegexMatchAndSubstitute uses it (RE2::GlobalReplace).
func compileSearchRegex(pb *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if err := checkRegexEngine(pb); err != nil {
		return nil, err
	}
	re, err := regexp.Compile(pb.GetRegex())
	if err != nil {
		return nil, cfgerr.Errorf("regex", "%v", err)
	}
	return re, nil
}

func checkRegexEngine(pb *matcherv3.RegexMatcher) error {
	if err := cfgerr.OnlyFields(pb, "google_re2", "regex"); err != nil {
		return err
	}
	// google_re2 is deprecated and empty but for max_program_size, an RE2
	// measure Go's regexp has no equivalent of.
	//lint:ignore SA1019 google_re2 is deprecated; set, it must be empty
	return cfgerr.Field("google_re2", cfgerr.OnlyFields(pb.GetGoogleRe2()))
}

// strKind is how a StringMatcher compares.
type strKind uint8

const (
	strExact strKind = iota
	strPrefix
	strSuffix
	strContains
	strRegex
)

// StringMatcher is a compiled envoy.type.matcher.v3.StringMatcher.
type StringMatcher struct {
	kind       strKind
	value      string // lower case when ignoreCase
	ignoreCase bool
	re         *regexp.Regexp
}

// NewStringMatcher compiles a StringMatcher. Errors name the field inside it.
func NewStringMatcher(pb *matcherv3.StringMatcher) (*StringMatcher, error) {
	if err := cfgerr.OnlyFields(pb, "exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"); err != nil {
		return nil, err
	}
	m := &StringMatcher{ignoreCase: pb.GetIgnoreCase()}
	switch p := pb.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		m.kind, m.value = strExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		m.kind, m.value = strPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		m.kind, m.value = strSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		m.kind, m.value = strContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		if m.ignoreCase {
			return nil, cfgerr.Errorf("ignore_case", "has no effect with safe_regex (use (?i) in the expression)")
		}
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return nil, cfgerr.Field("safe_regex", err)
		}
		m.kind, m.re = strRegex, re
	default:
		return nil, cfgerr.Errorf("", "one of exact, prefix, suffix, safe_regex, contains is required")
	}
	if m.ignoreCase {
		m.value = http.LowerASCII(m.value)
	}
	return m, nil
}

// Match reports whether s matches.
func (m *StringMatcher) Match(s string) bool {
	switch m.kind {
	case strExact:
		if m.ignoreCase {
			return http.EqualFoldLower(s, m.value)
		}
		return s == m.value
	case strPrefix:
		if m.ignoreCase {
			return hasPrefixFoldASCII(s, m.value)
		}
		return strings.HasPrefix(s, m.value)
	case strSuffix:
		if m.ignoreCase {
			return len(s) >= len(m.value) && http.EqualFoldLower(s[len(s)-len(m.value):], m.value)
		}
		return strings.HasSuffix(s, m.value)
	case strContains:
		if m.ignoreCase {
			return containsFoldASCII(s, m.value)
		}
		return strings.Contains(s, m.value)
	default:
		return m.re.MatchString(s)
	}
}

// hdrKind is how a HeaderMatcher compares.
type hdrKind uint8

const (
	hdrPresent hdrKind = iota
	hdrExact           // deprecated exact_match: "" matches any value
	hdrRegex
	hdrRange
	hdrPrefix
	hdrSuffix
	hdrContains
	hdrString
)

// HeaderMatcher is a compiled envoy.config.route.v3.HeaderMatcher, with
// Envoy's semantics (HeaderUtility::matchHeaders): several fields of the
// same name are matched as their values joined by ","; a missing header
// matches nothing but a present_match (which then says whether absence is
// wanted), unless treat_missing_header_as_empty makes it an empty value;
// invert_match inverts the result for a header that is there.
type HeaderMatcher struct {
	name           string
	kind           hdrKind
	value          string
	re             *regexp.Regexp
	start, end     int64
	sm             *StringMatcher
	present        bool
	invert         bool
	missingAsEmpty bool
}

// NewHeaderMatcher compiles a HeaderMatcher. Errors name the field inside it.
func NewHeaderMatcher(pb *routev3.HeaderMatcher) (*HeaderMatcher, error) {
	if err := cfgerr.OnlyFields(pb, "name", "exact_match", "safe_regex_match", "range_match", "present_match",
		"prefix_match", "suffix_match", "contains_match", "string_match", "invert_match", "treat_missing_header_as_empty"); err != nil {
		return nil, err
	}
	if pb.GetName() == "" {
		return nil, cfgerr.Errorf("name", "must not be empty")
	}
	m := &HeaderMatcher{
		name:           http.LowerASCII(pb.GetName()),
		invert:         pb.GetInvertMatch(),
		missingAsEmpty: pb.GetTreatMissingHeaderAsEmpty(),
	}
	// The deprecated forms are still Envoy's API and control planes send them.
	switch s := pb.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 deprecated but still Envoy's API
		m.kind, m.value = hdrExact, s.ExactMatch
	case *routev3.HeaderMatcher_SafeRegexMatch:
		//lint:ignore SA1019 deprecated but still Envoy's API
		re, err := compileRegex(s.SafeRegexMatch)
		if err != nil {
			return nil, cfgerr.Field("safe_regex_match", err)
		}
		m.kind, m.re = hdrRegex, re
	case *routev3.HeaderMatcher_RangeMatch:
		// An empty range (start >= end) is accepted and never matches, as
		// in Envoy (Int64Range has no validation rule).
		m.kind, m.start, m.end = hdrRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
	case *routev3.HeaderMatcher_PresentMatch:
		m.kind, m.present = hdrPresent, s.PresentMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 deprecated but still Envoy's API
		m.kind, m.value = hdrPrefix, s.PrefixMatch
	case *routev3.HeaderMatcher_SuffixMatch:
		//lint:ignore SA1019 deprecated but still Envoy's API
		m.kind, m.value = hdrSuffix, s.SuffixMatch
	case *routev3.HeaderMatcher_ContainsMatch:
		//lint:ignore SA1019 deprecated but still Envoy's API
		m.kind, m.value = hdrContains, s.ContainsMatch
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := NewStringMatcher(s.StringMatch)
		if err != nil {
			return nil, cfgerr.Field("string_match", err)
		}
		m.kind, m.sm = hdrString, sm
	default:
		// No specifier: the header must be present (Envoy's default).
		m.kind, m.present = hdrPresent, true
	}
	return m, nil
}

// Name is the (lower-case) header name the matcher looks at.
func (m *HeaderMatcher) Name() string { return m.name }

// Matches reports whether h satisfies the matcher.
func (m *HeaderMatcher) Matches(h *http.Header) bool {
	var stack [4]string
	vals := h.Values(stack[:0], m.name)
	var value string
	switch {
	case len(vals) == 0 && !m.missingAsEmpty:
		if m.kind != hdrPresent {
			return false
		}
		return m.present == m.invert
	case len(vals) == 1:
		value = vals[0]
	case len(vals) > 1:
		value = strings.Join(vals, ",")
	}
	var match bool
	switch m.kind {
	case hdrPresent:
		match = m.present
	case hdrExact:
		match = m.value == "" || value == m.value
	case hdrRegex:
		match = m.re.MatchString(value)
	case hdrRange:
		n, ok := simpleAtoi(value)
		match = ok && n >= m.start && n < m.end
	case hdrPrefix:
		match = strings.HasPrefix(value, m.value)
	case hdrSuffix:
		match = strings.HasSuffix(value, m.value)
	case hdrContains:
		match = strings.Contains(value, m.value)
	case hdrString:
		match = m.sm.Match(value)
	}
	return match != m.invert
}

func compileHeaderMatchers(field string, pbs []*routev3.HeaderMatcher) ([]*HeaderMatcher, error) {
	var out []*HeaderMatcher
	for i, pb := range pbs {
		m, err := NewHeaderMatcher(pb)
		if err != nil {
			return nil, cfgerr.Index(field, i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// matchAll reports whether every matcher matches (true for none).
func matchAll(ms []*HeaderMatcher, h *http.Header) bool {
	for _, m := range ms {
		if !m.Matches(h) {
			return false
		}
	}
	return true
}

// queryMatcher is a compiled QueryParameterMatcher. Like Envoy's, it looks at
// the first parameter of that name in the query string as it is, without
// percent-decoding (QueryParamsMulti::parseQueryString).
type queryMatcher struct {
	name       string
	sm         *StringMatcher
	present    bool
	hasPresent bool
}

func newQueryMatcher(pb *routev3.QueryParameterMatcher) (*queryMatcher, error) {
	if err := cfgerr.OnlyFields(pb, "name", "string_match", "present_match"); err != nil {
		return nil, err
	}
	m := &queryMatcher{name: pb.GetName()}
	switch s := pb.GetQueryParameterMatchSpecifier().(type) {
	case *routev3.QueryParameterMatcher_StringMatch:
		sm, err := NewStringMatcher(s.StringMatch)
		if err != nil {
			return nil, cfgerr.Field("string_match", err)
		}
		m.sm = sm
	case *routev3.QueryParameterMatcher_PresentMatch:
		m.present, m.hasPresent = s.PresentMatch, true
	}
	return m, nil
}

// matches follows ConfigUtility::QueryParameterMatcher::matches: an absent
// parameter never matches, present_match answers with its own value (so
// present_match: false matches nothing), a string_match is applied to the
// value, and a matcher with neither only asks for the parameter.
func (m *queryMatcher) matches(query string, hasQuery bool) bool {
	if !hasQuery {
		return false
	}
	v, ok := queryParam(query, m.name)
	switch {
	case !ok:
		return false
	case m.hasPresent:
		return m.present
	case m.sm != nil:
		return m.sm.Match(v)
	}
	return true
}

// queryParam returns the value of the first parameter called name in query
// (the text after the '?', fragment included as Envoy keeps it).
func queryParam(query, name string) (string, bool) {
	for len(query) > 0 {
		seg := query
		if i := strings.IndexByte(query, '&'); i >= 0 {
			seg, query = query[:i], query[i+1:]
		} else {
			query = ""
		}
		k, v := seg, ""
		if i := strings.IndexByte(seg, '='); i >= 0 {
			k, v = seg[:i], seg[i+1:]
		}
		if k == name {
			return v, true
		}
	}
	return "", false
}

// simpleAtoi parses a base-10 int64 as absl::SimpleAtoi does: surrounding
// ASCII whitespace and a sign are allowed, overflow is not.
func simpleAtoi(s string) (int64, bool) {
	s = trimASCIISpace(s)
	neg := false
	if len(s) > 0 && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "" {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (1<<63)/10 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
		if n > 1<<63 {
			return 0, false
		}
	}
	if neg {
		return -int64(n), true // -(1<<63) wraps to itself, the minimum
	}
	if n > 1<<63-1 {
		return 0, false
	}
	return int64(n), true
}

func isASCIISpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func trimASCIISpace(s string) string {
	for len(s) > 0 && isASCIISpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isASCIISpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

// ASCII case folding, as Envoy's absl helpers do it (no Unicode folding).

func lowerByte(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func hasUpperASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

func hasPrefixFoldASCII(s, lower string) bool {
	return len(s) >= len(lower) && http.EqualFoldLower(s[:len(lower)], lower)
}

func containsFoldASCII(s, lower string) bool {
	for i := 0; i+len(lower) <= len(s); i++ {
		if http.EqualFoldLower(s[i:i+len(lower)], lower) {
			return true
		}
	}
	return false
}
