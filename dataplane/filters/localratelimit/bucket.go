package localratelimit

import (
	"math"
	"sync/atomic"
	"time"
)

// Bucket is a token bucket that refills continuously at TokensPerFill per
// FillInterval up to MaxTokens, shared by every goroutine that uses it without
// a lock: Envoy's AtomicTokenBucketImpl. Its whole state is one word, the time
// (in seconds since the bucket's epoch, as a float64) at which the bucket was,
// or would have been, empty; the tokens at time t are (t - that) * rate,
// capped at MaxTokens. Consuming moves that time forward with a
// compare-and-swap.
type Bucket struct {
	empty atomic.Uint64 // math.Float64bits of the empty time
	max   float64
	rate  float64 // tokens per second
	epoch time.Time
	now   func() time.Time
}

// NewBucket returns a full bucket. now is the clock (nil: time.Now).
func NewBucket(maxTokens, tokensPerFill uint32, fillInterval time.Duration, now func() time.Time) *Bucket {
	if now == nil {
		now = time.Now
	}
	b := &Bucket{
		max:   float64(maxTokens),
		rate:  float64(tokensPerFill) / fillInterval.Seconds(),
		epoch: now(),
		now:   now,
	}
	// Full from the start: empty max/rate seconds before the epoch.
	b.empty.Store(math.Float64bits(-b.max / b.rate))
	return b
}

// seconds is the time since the epoch (monotonic when now is time.Now).
func (b *Bucket) seconds() float64 { return b.now().Sub(b.epoch).Seconds() }

// Consume takes a token if there is one.
func (b *Bucket) Consume() bool {
	t := b.seconds()
	for {
		oldBits := b.empty.Load()
		old := math.Float64frombits(oldBits)
		tokens := min(b.max, (t-old)*b.rate)
		if tokens < 1 {
			return false
		}
		// The new empty time leaves tokens-1 tokens at t.
		next := t - (tokens-1)/b.rate
		if b.empty.CompareAndSwap(oldBits, math.Float64bits(next)) {
			return true
		}
	}
}

// tokens is the (fractional) number of tokens in the bucket now.
func (b *Bucket) tokens() float64 {
	return min(b.max, (b.seconds()-math.Float64frombits(b.empty.Load()))*b.rate)
}

// Remaining is the number of whole tokens in the bucket now.
func (b *Bucket) Remaining() uint64 {
	r, _ := b.State()
	return r
}

// State returns Remaining and NextToken as of one reading of the clock.
func (b *Bucket) State() (remaining uint64, next time.Duration) {
	tokens := b.tokens()
	if tokens >= 1 {
		return uint64(tokens), 0
	}
	return 0, time.Duration((1 - max(tokens, 0)) / b.rate * float64(time.Second))
}

// Max is the bucket's capacity.
func (b *Bucket) Max() uint64 { return uint64(b.max) }

// NextToken is how long until a token is available (0 if one is now).
func (b *Bucket) NextToken() time.Duration {
	_, next := b.State()
	return next
}
