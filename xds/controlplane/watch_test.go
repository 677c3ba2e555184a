package controlplane

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestDebounce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		pokes := make(chan struct{}, 1)
		calls := make(chan time.Duration, 100)
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			debounce(ctx, pokes, 100*time.Millisecond, time.Second, func() { calls <- time.Since(start) })
		}()
		poke := func() { pokes <- struct{}{}; synctest.Wait() }
		expect := func(want ...time.Duration) {
			t.Helper()
			synctest.Wait()
			var got []time.Duration
			for len(calls) > 0 {
				got = append(got, <-calls)
			}
			if len(got) != len(want) {
				t.Fatalf("calls at %v, want %v", got, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("calls at %v, want %v", got, want)
				}
			}
		}

		// A burst makes one call, settle after its last event.
		poke()
		time.Sleep(50 * time.Millisecond)
		poke()
		time.Sleep(70 * time.Millisecond)
		poke()
		expect()
		time.Sleep(time.Second)
		expect(220 * time.Millisecond)

		// Events that never stop still make a call every maxDelay.
		start = time.Now()
		for range 50 {
			poke()
			time.Sleep(50 * time.Millisecond)
		}
		expect(time.Second, 2*time.Second)

		cancel()
		<-done
	})
}
