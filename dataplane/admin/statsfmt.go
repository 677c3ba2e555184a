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

	"github.com/skiffproxy/skiff/dataplane/statsconfig"
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

// match reports whether s passes the filter; ?usedonly keeps the stats
// that were written (stats.Sample.Used: server.state at 0 once live is, as
// istio-agent's readiness check expects).
func (f statFilter) match(s stats.Sample) bool {
	if !known(s) {
		return false
	}
	if f.usedOnly && !s.Used {
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
// Envoy's /stats/prometheus does: the tags that producer finds in a stat name
// become labels, the rest of the name, prefixed with envoy_ and
// with every character outside [a-zA-Z0-9_] replaced by _, the metric name:
//
//	# TYPE envoy_cluster_upstream_cx_total counter
//	envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 3
//
// Counters come first, then gauges, then histograms (cumulative buckets named
// by their upper bound, _sum and _count); within each, metrics are sorted by
// their tag-extracted name and the lines of one metric by stat name, and each
// metric ends with an empty line.
func writePrometheus(w io.Writer, samples []stats.Sample, producer *statsconfig.Tags) error {
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
		extracted, tags := producer.Extract(s.Name)
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

func formatLabels(tags []statsconfig.Tag) string {
	var b strings.Builder
	for i, t := range tags {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(sanitizeName(t.Name))
		b.WriteString(`="`)
		labelEscaper.WriteString(&b, t.Value)
		b.WriteByte('"')
	}
	return b.String()
}
