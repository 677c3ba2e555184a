package admin

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/skiffproxy/skiff/internal/stats"
)

// statFilter selects stats as Envoy's ?filter= and ?usedonly do.
type statFilter struct {
	re       *regexp.Regexp // nil: every name
	usedOnly bool
}

func newStatFilter(expr string, usedOnly bool) (statFilter, error) {
	f := statFilter{usedOnly: usedOnly}
	if expr != "" {
		re, err := regexp.Compile(expr)
		if err != nil {
			return f, fmt.Errorf("filter: %w", err)
		}
		f.re = re
	}
	return f, nil
}

// match reports whether s passes the filter. A counter or gauge counts as
// used once it is not 0 (the store does not record whether a stat was ever
// written, and one still at 0 carries no information anyway), a histogram
// once it recorded a value.
func (f statFilter) match(s stats.Sample) bool {
	if !known(s) {
		return false
	}
	if f.usedOnly && !used(s) {
		return false
	}
	return f.re == nil || f.re.MatchString(s.Name)
}

// known reports whether the admin API can show s.
func known(s stats.Sample) bool {
	switch s.Kind {
	case stats.KindCounter, stats.KindGauge:
		return true
	case stats.KindHistogram:
		return s.Histogram != nil
	}
	return false
}

func used(s stats.Sample) bool {
	if s.Kind == stats.KindHistogram {
		return s.Histogram.Count > 0
	}
	return s.Value != 0
}

// envoyQuantiles are the quantiles Envoy's /stats shows for a histogram.
var envoyQuantiles = []struct {
	name string
	q    float64
}{
	{"P0", 0}, {"P25", 0.25}, {"P50", 0.5}, {"P75", 0.75}, {"P90", 0.9},
	{"P95", 0.95}, {"P99", 0.99}, {"P99.5", 0.995}, {"P99.9", 0.999}, {"P100", 1},
}

// histogramText is a histogram as Envoy's /stats shows it: each quantile as
// P50(interval,cumulative). skiff keeps no interval histograms, so the first
// number is always nan.
func histogramText(h *stats.HistogramSnapshot) string {
	if h.Count == 0 {
		return "No recorded values"
	}
	var b strings.Builder
	for i, q := range envoyQuantiles {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(q.name)
		b.WriteString("(nan,")
		b.WriteString(strconv.FormatFloat(h.Quantile(q.q), 'g', -1, 64))
		b.WriteByte(')')
	}
	return b.String()
}

func (f statFilter) apply(samples []stats.Sample) []stats.Sample {
	out := samples[:0:0]
	for _, s := range samples {
		if f.match(s) {
			out = append(out, s)
		}
	}
	return out
}

// writeStatsText writes samples in the format of Envoy's /stats: one
// "name: value" line each, in the order given (the store's is by name), a
// histogram's value being its quantiles.
func writeStatsText(w io.Writer, samples []stats.Sample) error {
	bw := bufio.NewWriter(w)
	for _, s := range samples {
		bw.WriteString(s.Name)
		bw.WriteString(": ")
		switch s.Kind {
		case stats.KindCounter, stats.KindGauge:
			bw.WriteString(strconv.FormatInt(s.Value, 10))
		case stats.KindHistogram:
			bw.WriteString(histogramText(s.Histogram))
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// writePrometheus writes samples in Prometheus' text exposition format as
// Envoy's /stats/prometheus does: the tags Envoy's default tag extractors find
// in a stat name become labels, the rest of the name, prefixed with envoy_ and
// with every character outside [a-zA-Z0-9_] replaced by _, the metric name:
//
//	# TYPE envoy_cluster_upstream_cx_total counter
//	envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 3
//
// Counters come first, then gauges, then histograms (cumulative buckets named
// by their upper bound, _sum and _count); within each, metrics are sorted by
// their tag-extracted name and the lines of one metric by stat name, and each
// metric ends with an empty line.
func writePrometheus(w io.Writer, samples []stats.Sample) error {
	type line struct {
		name   string // the stat's full name, for sorting
		labels string
		sample stats.Sample
	}
	type metric struct {
		extracted string
		kind      stats.Kind
		lines     []line
	}
	byKey := map[string]*metric{}
	var metrics []*metric
	for _, s := range samples {
		if !known(s) {
			continue
		}
		extracted, tags := extractTags(s.Name)
		key := s.Kind.String() + " " + extracted
		m := byKey[key]
		if m == nil {
			m = &metric{extracted: extracted, kind: s.Kind}
			byKey[key] = m
			metrics = append(metrics, m)
		}
		m.lines = append(m.lines, line{name: s.Name, labels: formatLabels(tags), sample: s})
	}
	slices.SortFunc(metrics, func(a, b *metric) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.extracted, b.extracted))
	})
	bw := bufio.NewWriter(w)
	for _, m := range metrics {
		slices.SortFunc(m.lines, func(a, b line) int { return cmp.Compare(a.name, b.name) })
		name := PrometheusName(m.extracted)
		fmt.Fprintf(bw, "# TYPE %s %s\n", name, m.kind)
		for _, l := range m.lines {
			if m.kind != stats.KindHistogram {
				fmt.Fprintf(bw, "%s{%s} %d\n", name, l.labels, l.sample.Value)
				continue
			}
			h, sep := l.sample.Histogram, ""
			if l.labels != "" {
				sep = ","
			}
			var cumulative uint64
			for _, b := range h.Buckets {
				cumulative += b.Count
				fmt.Fprintf(bw, "%s_bucket{%s%sle=\"%d\"} %d\n", name, l.labels, sep, b.Upper, cumulative)
			}
			fmt.Fprintf(bw, "%s_bucket{%s%sle=\"+Inf\"} %d\n", name, l.labels, sep, h.Count)
			fmt.Fprintf(bw, "%s_sum{%s} %d\n", name, l.labels, h.Sum)
			fmt.Fprintf(bw, "%s_count{%s} %d\n", name, l.labels, h.Count)
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// PrometheusName is the Prometheus metric name of a tag-extracted stat name.
func PrometheusName(extracted string) string { return "envoy_" + sanitizeName(extracted) }

// sanitizeName replaces every character Prometheus does not allow in a name by _.
func sanitizeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func formatLabels(tags []tag) string {
	var b strings.Builder
	for i, t := range tags {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(sanitizeName(t.name))
		b.WriteString(`="`)
		labelEscaper.WriteString(&b, t.value)
		b.WriteByte('"')
	}
	return b.String()
}

// tag is a name and value extracted from a stat name.
type tag struct{ name, value string }

// tagExtractor is one of Envoy's default tag extraction rules
// (source/common/config/well_known_names.cc). It is either a regular
// expression whose first group is the part of the name to remove and whose
// second group is the value, or a token pattern such as "cluster.$.**" where $
// is the value (removed with its dot), * any one token, and a final ** one or
// more tokens.
type tagExtractor struct {
	name   string
	substr string // the name must contain it, a cheap test before the regexp
	re     *regexp.Regexp
	tokens []string
	not    string // a value that does not count as a match
}

// Envoy's pattern pieces, as in well_known_names.cc.
const (
	reAddress  = `(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)`
	reTagValue = `[^\.]+`
	reRouteCfg = `[\w\-./]+`
)

func reExtractor(name, expr, substr string) tagExtractor {
	expr = strings.NewReplacer("<ADDRESS>", reAddress, "<TAG_VALUE>", reTagValue, "<ROUTE_CONFIG_NAME>", reRouteCfg).Replace(expr)
	return tagExtractor{name: name, re: regexp.MustCompile(expr), substr: substr}
}

func tokenExtractor(name, pattern string) tagExtractor {
	return tagExtractor{name: name, tokens: strings.Split(pattern, ".")}
}

// tagExtractors are Envoy's default tag extractors that apply to the stats
// skiff has or is about to have, in Envoy's order (which fixes the order of the
// labels).
var tagExtractors = []tagExtractor{
	reExtractor("envoy.response_code", `_rq(_(\d{3}))$`, "_rq_"),
	reExtractor("envoy.response_code_class", `_rq_((\d))xx$`, "_rq_"),
	tokenExtractor("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
	tokenExtractor("envoy.tcp_prefix", "tcp.$.**"),
	tokenExtractor("envoy.udp_prefix", "udp.$.**"),
	tokenExtractor("envoy.cluster_name", "cluster.$.**"),
	reExtractor("envoy.http_conn_manager_prefix", `^listener\..*?\.http\.((<TAG_VALUE>)\.)`, ".http."),
	tokenExtractor("envoy.http_conn_manager_prefix", "http.$.**"),
	reExtractor("envoy.worker_id", `^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager|thread_local_cluster_manager)\.worker_((\d+)\.)`, ""),
	func() tagExtractor {
		e := reExtractor("envoy.listener_address", `^listener\.((<ADDRESS>|<TAG_VALUE>)\.)`, "")
		e.not = "admin"
		return e
	}(),
	tokenExtractor("envoy.virtual_host", "vhost.$.**"),
	reExtractor("envoy.rds_route_config", `^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$`, ".rds."),
	tokenExtractor("envoy.route", "vhost.*.route.$.**"),
	tokenExtractor("envoy.connection_limit_prefix", "connection_limit.$.**"),
	tokenExtractor("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
}

// extract returns the value the rule finds in name and the byte range of name
// it removes.
func (e *tagExtractor) extract(name string) (value string, start, end int, ok bool) {
	if e.substr != "" && !strings.Contains(name, e.substr) {
		return "", 0, 0, false
	}
	if e.re != nil {
		m := e.re.FindStringSubmatchIndex(name)
		if m == nil || m[2] < 0 || m[4] < 0 {
			return "", 0, 0, false
		}
		value = name[m[4]:m[5]]
		if value == e.not {
			return "", 0, 0, false
		}
		return value, m[2], m[3], true
	}
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

// extractTags applies Envoy's default tag extractors to a stat name, as
// Envoy's TagProducer does: each rule is matched against the full name, and
// the tag-extracted name is the name without every part a rule removed.
func extractTags(name string) (string, []tag) {
	var tags []tag
	var cut [][2]int
	for i := range tagExtractors {
		e := &tagExtractors[i]
		value, start, end, ok := e.extract(name)
		if !ok {
			continue
		}
		tags = append(tags, tag{name: e.name, value: value})
		cut = append(cut, [2]int{start, end})
	}
	if len(cut) == 0 {
		return name, nil
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if !slices.ContainsFunc(cut, func(c [2]int) bool { return i >= c[0] && i < c[1] }) {
			b.WriteByte(name[i])
		}
	}
	return b.String(), tags
}
