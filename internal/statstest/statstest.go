// Package statstest has helpers for tests that check a stats.Store.
package statstest

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/stats"
)

// Expect reports an error for each stat in want whose value in st differs
// (an absent stat reads 0), in name order.
func Expect(t testing.TB, st *stats.Store, want map[string]int64) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if v, _ := st.Value(name); v != want[name] {
			t.Errorf("%s = %d, want %d", name, v, want[name])
		}
	}
}

// Wait waits until the stat name is want in st, polling, and fails the test
// if it is not within 5 seconds.
func Wait(t testing.TB, st *stats.Store, name string, want int64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if v, _ := st.Value(name); v == want {
			return
		}
		if time.Now().After(deadline) {
			v, _ := st.Value(name)
			t.Fatalf("%s = %d, want %d", name, v, want)
		}
	}
}
