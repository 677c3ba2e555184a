package http

import (
	"math"
	"strconv"
	"time"
)

// ParseGRPCTimeout parses a grpc-timeout header value: at most 8 digits and a
// unit (H, M, S, m, u, n), as the gRPC over HTTP/2 spec defines it. A value
// longer than a time.Duration can hold (about 292 years) is the longest one.
func ParseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if n > math.MaxInt64/uint64(unit) {
		return math.MaxInt64, true // 8 digits of hours outlast a time.Duration
	}
	return time.Duration(n) * unit, true
}

// FormatGRPCTimeout renders d, in whole milliseconds, as a grpc-timeout header
// value, as Envoy's Grpc::Common::toGrpcTimeout does: in milliseconds, or in
// the smallest of seconds, minutes and hours that fits the spec's 8 digits
// (rounded down).
func FormatGRPCTimeout(d time.Duration) string {
	const maxDigits = 99999999
	n, unit := uint64(max(d, 0)/time.Millisecond), byte('m')
	for _, u := range [...]struct {
		div  uint64
		unit byte
	}{{1000, 'S'}, {60, 'M'}, {60, 'H'}} {
		if n <= maxDigits {
			break
		}
		n, unit = n/u.div, u.unit
	}
	n = min(n, maxDigits)
	return strconv.FormatUint(n, 10) + string(unit)
}
