package stats

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// Histograms use log-linear buckets over the whole uint64 range: values 0..15
// have a bucket each, and every power-of-two range [2^e, 2^(e+1)) above is cut
// into 8 equal buckets, so a bucket is at most 1/8 (12.5%) of its lower bound
// wide. That is 496 buckets (4 KiB) per histogram, whatever the unit
// (milliseconds, bytes).
const (
	histSubBits = 3
	histSub     = 1 << histSubBits
	histBuckets = (64 - histSubBits + 1) * histSub
)

type histogram struct {
	sum     atomic.Uint64
	buckets [histBuckets]atomic.Uint64
}

// Histogram is a handle to a distribution of values.
type Histogram struct{ h *histogram }

// Record adds one value.
func (h Histogram) Record(v uint64) {
	h.h.buckets[bucketOf(v)].Add(1)
	h.h.sum.Add(v)
}

func bucketOf(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	e := bits.Len64(v) - 1 // >= histSubBits+1
	return (e-histSubBits+1)<<histSubBits | int(v>>(e-histSubBits))&(histSub-1)
}

// bucketBounds returns the smallest and largest value of bucket i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < 2*histSub {
		return uint64(i), uint64(i)
	}
	e := i>>histSubBits + histSubBits - 1
	width := uint64(1) << (e - histSubBits)
	lo = uint64(histSub+i&(histSub-1)) << (e - histSubBits)
	return lo, lo + width - 1
}

// Bucket is one non-empty histogram bucket: Count values v with
// Lower <= v <= Upper.
type Bucket struct {
	Lower, Upper uint64
	Count        uint64
}

// HistogramSnapshot is a histogram's state at the time of a Snapshot. A
// Prometheus exporter turns Buckets into cumulative `le="Upper"` buckets.
type HistogramSnapshot struct {
	Count   uint64
	Sum     uint64
	Buckets []Bucket // the non-empty ones, in increasing order
}

func (h *histogram) snapshot() *HistogramSnapshot {
	hs := &HistogramSnapshot{Sum: h.sum.Load()}
	for i := range h.buckets {
		if n := h.buckets[i].Load(); n > 0 {
			lo, hi := bucketBounds(i)
			hs.Buckets = append(hs.Buckets, Bucket{Lower: lo, Upper: hi, Count: n})
			hs.Count += n
		}
	}
	return hs
}

// Quantile estimates the q-quantile (0 <= q <= 1) by interpolating inside the
// bucket it falls in; NaN for an empty histogram. P50, P90 and P99 are
// Quantile(0.5), Quantile(0.9) and Quantile(0.99).
func (hs *HistogramSnapshot) Quantile(q float64) float64 {
	if hs.Count == 0 || math.IsNaN(q) {
		return math.NaN()
	}
	q = min(max(q, 0), 1)
	rank := q * float64(hs.Count)
	var seen float64
	for _, b := range hs.Buckets {
		n := float64(b.Count)
		if seen+n >= rank {
			frac := (rank - seen) / n
			width := float64(b.Upper-b.Lower) + 1
			return min(float64(b.Lower)+frac*width, float64(b.Upper))
		}
		seen += n
	}
	return float64(hs.Buckets[len(hs.Buckets)-1].Upper)
}
