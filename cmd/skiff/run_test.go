package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// TestTuneGC: skiff runs the collector at gcPercent unless GOGC is set.
func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC")
	tuneGC()
	if got := debug.SetGCPercent(50); got != gcPercent {
		t.Errorf("GOGC unset: collector at %d %%, want %d", got, gcPercent)
	}
	t.Setenv("GOGC", "50")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 50 {
		t.Errorf("GOGC=50: collector at %d %%, want the environment's 50", got)
	}
}
