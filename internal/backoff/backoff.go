// Package backoff computes retry delays: exponential growth with full jitter,
// as gRPC and Envoy do for reconnecting streams, so that many clients that lost
// the same server do not come back in lockstep.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff with full jitter. The zero value is not
// useful; use Default or fill every field.
type Policy struct {
	Base time.Duration // the first ceiling
	Max  time.Duration // the ceiling never grows past this
}

// Default returns Envoy's default for xDS streams: 500 ms growing to 30 s.
func Default() Policy { return Policy{Base: 500 * time.Millisecond, Max: 30 * time.Second} }

// Delay returns the delay before retry number attempt (0 for the first retry):
// a uniformly random duration in [0, min(Max, Base*2^attempt)].
func (p Policy) Delay(attempt int) time.Duration {
	ceiling := p.Base
	for range min(attempt, 32) {
		if ceiling >= p.Max/2 {
			ceiling = p.Max
			break
		}
		ceiling *= 2
	}
	ceiling = min(ceiling, p.Max)
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}
