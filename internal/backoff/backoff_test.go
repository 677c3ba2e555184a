package backoff

import (
	"testing"
	"time"
)

func TestDelayGrowsAndIsBounded(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Max: time.Second}
	for attempt, ceiling := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		ceiling *= time.Millisecond
		var maxSeen time.Duration
		for range 2000 {
			d := p.Delay(attempt)
			if d < 0 || d > ceiling {
				t.Fatalf("attempt %d: delay %v outside [0, %v]", attempt, d, ceiling)
			}
			maxSeen = max(maxSeen, d)
		}
		if maxSeen < ceiling/2 {
			t.Errorf("attempt %d: largest of 2000 delays %v; jitter should reach toward %v", attempt, maxSeen, ceiling)
		}
	}
	if d := p.Delay(1 << 20); d > time.Second {
		t.Fatalf("huge attempt: %v", d)
	}
}
