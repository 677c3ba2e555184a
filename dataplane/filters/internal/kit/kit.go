// Package kit holds the small pieces skiff's HTTP filters share: a random
// value that stays the same for the whole of an exchange and Envoy's
// stat-prefix joining. (Header additions of a filter's own are
// route.HeadersToAdd.)
package kit

import (
	"strings"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// Sample returns a pseudo-random value fixed for the exchange e: the same in
// OnRequest and OnResponse, different from one exchange to the next. A filter
// whose response half must agree with a fractional decision its request half
// took (was the filter enabled for this request?) samples with it, since a
// Filter keeps no per-stream state. salt decorrelates two decisions of one
// filter.
func Sample(e *http.Exchange, salt uint64) uint64 { return e.Random(salt * 0x9e3779b97f4a7c15) }

// StatPrefixJoin is Envoy's statPrefixJoin: token appended to prefix with a
// dot between them unless prefix is empty or already ends with one.
func StatPrefixJoin(prefix, token string) string {
	switch {
	case prefix == "":
		return token
	case strings.HasSuffix(prefix, "."):
		return prefix + token
	}
	return prefix + "." + token
}
