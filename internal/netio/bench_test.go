package netio

import (
	"io"
	"testing"
	"time"
)

const chunk = 64 << 10

// echoThrough starts a pair in mode m whose server echoes everything back, and
// returns a function that streams one chunk through the pair and back.
func echoThrough(tb testing.TB, m mode) (roundTrip func()) {
	h := newHarness(tb, m, time.Minute)
	h.start(tb.Context(), NewPair(h.down, h.up, h.cfg))
	go func() {
		buf := make([]byte, chunk)
		for {
			n, err := h.server.Read(buf)
			if n > 0 {
				if _, werr := h.server.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				h.server.CloseWrite()
				return
			}
		}
	}()
	msg, got := randomBytes(10, chunk), make([]byte, chunk)
	return func() {
		if _, err := h.client.Write(msg); err != nil {
			tb.Fatalf("write: %v", err)
		}
		if _, err := io.ReadFull(h.client, got); err != nil {
			tb.Fatalf("read: %v", err)
		}
	}
}

// BenchmarkPair streams 64 KiB chunks through a loopback pair and back (so the
// pair moves 128 KiB per op) in each copy mode, in steady state.
func BenchmarkPair(b *testing.B) {
	for _, m := range testModes() {
		b.Run(m.name, func(b *testing.B) {
			roundTrip := echoThrough(b, m)
			for range 16 { // warm the pools
				roundTrip()
			}
			b.SetBytes(2 * chunk)
			b.ReportAllocs()
			for b.Loop() {
				roundTrip()
			}
		})
	}
}

// TestSteadyStateAllocs checks what the benchmark shows: moving chunks through a
// running pair allocates nothing, in any mode.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	forEachMode(t, func(t *testing.T, m mode) {
		roundTrip := echoThrough(t, m)
		for range 16 {
			roundTrip()
		}
		if allocs := testing.AllocsPerRun(200, roundTrip); allocs != 0 {
			t.Errorf("%v allocs per 64 KiB round trip, want 0", allocs)
		}
	})
}
