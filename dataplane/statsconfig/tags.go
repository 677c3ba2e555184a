package statsconfig

import (
	"regexp"
	"slices"
	"strings"

	"github.com/dlclark/regexp2/v2"
)

// Tag is a name and value extracted from a stat name (a Prometheus label).
type Tag struct{ Name, Value string }

// Tags splits stat names into a tag-extracted name and tags, as Envoy's
// TagProducer does with a bootstrap's stats_config: Envoy's default
// extractors (unless use_all_default_tags is false), then the stats_tags in
// their order. A Tags is read-only once made and safe for concurrent use.
type Tags struct {
	extractors []extractor
}

// DefaultTags is the Tags of a bootstrap without stats_config: Envoy's
// default extractors.
func DefaultTags() *Tags { return &Tags{extractors: defaultExtractors()} }

// Extract returns name without every part an extractor removed, and the
// tags found, in the extractors' order. Each extractor is matched against
// the full name; when two find a tag of the same name, the first one's is
// kept and the other is skipped, its part of the name left in (Envoy logs
// "Skipping duplicate tag" then).
func (t *Tags) Extract(name string) (string, []Tag) {
	var tags []Tag
	var cut [][2]int
	for i := range t.extractors {
		e := &t.extractors[i]
		value, start, end, ok := e.extract(name)
		if !ok || slices.ContainsFunc(tags, func(found Tag) bool { return found.Name == e.name }) {
			continue
		}
		tags = append(tags, Tag{Name: e.name, Value: value})
		if end > start {
			cut = append(cut, [2]int{start, end})
		}
	}
	if len(cut) == 0 {
		return name, tags
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if !slices.ContainsFunc(cut, func(c [2]int) bool { return i >= c[0] && i < c[1] }) {
			b.WriteByte(name[i])
		}
	}
	return b.String(), tags
}

// extractor is one tag rule. It is one of: a regular expression whose
// first group is the part of the name to remove and whose second group (or
// the first, if it has one group) is the value, as Go's regexp (Envoy's
// defaults, written for RE2) or as ECMAScript (stats_tags, which Envoy
// compiles with std::regex); a token pattern such as "cluster.$.**" where $
// is the value (removed with its dot), * any one token, and a final ** one
// or more tokens; or a fixed value (stats_tags' fixed_value), which every
// name gets and which removes nothing.
type extractor struct {
	name   string
	substr string // the name must contain it, a cheap test before the regexp
	re     *regexp.Regexp
	ecma   *regexp2.Regexp
	tokens []string
	fixed  *string
	not    string // a value that does not count as a match
}

// extract returns the value the rule finds in name and the byte range of name
// it removes.
func (e *extractor) extract(name string) (value string, start, end int, ok bool) {
	if e.substr != "" && !strings.Contains(name, e.substr) {
		return "", 0, 0, false
	}
	switch {
	case e.fixed != nil:
		return *e.fixed, 0, 0, true
	case e.re != nil:
		m := e.re.FindStringSubmatchIndex(name)
		if m == nil || m[2] < 0 || m[4] < 0 {
			return "", 0, 0, false
		}
		value = name[m[4]:m[5]]
		if value == e.not {
			return "", 0, 0, false
		}
		return value, m[2], m[3], true
	case e.ecma != nil:
		return e.extractECMA(name)
	}
	return e.extractTokens(name)
}

// extractECMA is extract for a stats_tags regex, as Envoy's
// TagExtractorStdRegexImpl: the regex must match somewhere in the name and
// have a group; a group that took no part in the match stands for an empty
// value, or an empty part to remove.
func (e *extractor) extractECMA(name string) (value string, start, end int, ok bool) {
	m, err := e.ecma.FindStringMatch(name)
	if err != nil || m == nil || m.GroupCount() < 2 {
		return "", 0, 0, false
	}
	remove := m.GroupByNumber(1)
	valueGroup := remove
	if m.GroupCount() > 2 {
		valueGroup = m.GroupByNumber(2)
	}
	if len(valueGroup.Captures) > 0 {
		value = valueGroup.String()
	}
	if len(remove.Captures) > 0 {
		var n int
		start, n = remove.ByteRange()
		end = start + n
	}
	return value, start, end, true
}

func (e *extractor) extractTokens(name string) (value string, start, end int, ok bool) {
	tokens := strings.Split(name, ".")
	last := len(e.tokens) - 1 // a final "**": one or more tokens
	if len(tokens) < len(e.tokens) || e.tokens[last] != "**" && len(tokens) != len(e.tokens) {
		return "", 0, 0, false
	}
	pos := 0
	for i, want := range e.tokens {
		if want == "**" && i == last {
			break
		}
		switch want {
		case "$":
			value, start = tokens[i], pos
		case "*":
		default:
			if tokens[i] != want {
				return "", 0, 0, false
			}
		}
		pos += len(tokens[i]) + 1
	}
	end = start + len(value)
	if end < len(name) {
		end++ // the dot after the value
	} else if start > 0 {
		start-- // the value is last: the dot before it
	}
	return value, start, end, true
}

// Envoy's pattern pieces, as in well_known_names.cc.
const (
	reAddress  = `(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)`
	reTagValue = `[^\.]+`
	reRouteCfg = `[\w\-./]+`
)

func reExtractor(name, expr, substr string) extractor {
	expr = strings.NewReplacer("<ADDRESS>", reAddress, "<TAG_VALUE>", reTagValue, "<ROUTE_CONFIG_NAME>", reRouteCfg).Replace(expr)
	return extractor{name: name, re: regexp.MustCompile(expr), substr: substr}
}

func tokenExtractor(name, pattern string) extractor {
	return extractor{name: name, tokens: strings.Split(pattern, ".")}
}

// defaultExtractors are Envoy's default tag extractors
// (source/common/config/well_known_names.cc) that apply to the stats skiff
// has or is about to have, in Envoy's order (which fixes the order of the
// labels).
func defaultExtractors() []extractor {
	listenerAddress := reExtractor("envoy.listener_address", `^listener\.((<ADDRESS>|<TAG_VALUE>)\.)`, "")
	listenerAddress.not = "admin"
	return []extractor{
		reExtractor("envoy.response_code", `_rq(_(\d{3}))$`, "_rq_"),
		reExtractor("envoy.response_code_class", `_rq_((\d))xx$`, "_rq_"),
		tokenExtractor("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
		tokenExtractor("envoy.tcp_prefix", "tcp.$.**"),
		tokenExtractor("envoy.udp_prefix", "udp.$.**"),
		tokenExtractor("envoy.cluster_name", "cluster.$.**"),
		reExtractor("envoy.http_conn_manager_prefix", `^listener\..*?\.http\.((<TAG_VALUE>)\.)`, ".http."),
		tokenExtractor("envoy.http_conn_manager_prefix", "http.$.**"),
		reExtractor("envoy.worker_id", `^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager|thread_local_cluster_manager)\.worker_((\d+)\.)`, ""),
		listenerAddress,
		tokenExtractor("envoy.virtual_host", "vhost.$.**"),
		reExtractor("envoy.rds_route_config", `^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$`, ".rds."),
		tokenExtractor("envoy.route", "vhost.*.route.$.**"),
		tokenExtractor("envoy.connection_limit_prefix", "connection_limit.$.**"),
		tokenExtractor("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
	}
}
