package listener

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/filter"
)

// TestConnSetDrainRunsHooks: a drain is in effect when Drain returns (every
// connection's hook has run, once), a connection whose hook comes later runs
// it at once, and DrainNow (a shutdown) runs the hooks once more, asking idle
// connections to end, or only that for a connection whose hook comes after.
func TestConnSetDrainRunsHooks(t *testing.T) {
	s := NewConnSet()
	newConn := func() (*filter.Conn, *[]bool) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		c := filter.NewConn(a, 1, "l", nil)
		if _, ok := s.add(c); !ok {
			t.Fatal("add refused")
		}
		c.SetDrain(s)
		return c, new([]bool)
	}
	hook := func(calls *[]bool) func(bool) {
		return func(closeIdle bool) { *calls = append(*calls, closeIdle) }
	}
	c1, n1 := newConn()
	c1.OnDrain(hook(n1))
	c2, n2 := newConn()

	s.Drain()
	if !slices.Equal(*n1, []bool{false}) {
		t.Fatalf("hook calls by the time Drain returned: %v, want [false]", *n1)
	}
	c2.OnDrain(hook(n2)) // after the drain: runs at once
	if !slices.Equal(*n2, []bool{false}) {
		t.Fatalf("a hook set after the drain: %v, want [false]", *n2)
	}
	s.Drain()
	c1.Drain(false)
	if len(*n1) != 1 || len(*n2) != 1 {
		t.Fatalf("hook calls %v and %v, want one each", *n1, *n2)
	}

	s.DrainNow()
	s.DrainNow()
	c1.Drain(true)
	if !slices.Equal(*n1, []bool{false, true}) || !slices.Equal(*n2, []bool{false, true}) {
		t.Fatalf("after DrainNow: hook calls %v and %v, want [false true] each", *n1, *n2)
	}
	c3, n3 := newConn()
	c3.OnDrain(hook(n3)) // after DrainNow: only the closing call
	c3.Drain(false)
	if !slices.Equal(*n3, []bool{true}) {
		t.Fatalf("a hook set after DrainNow: %v, want [true]", *n3)
	}
	s.Close()
}

// TestConnSetDrainClose: DrainClose says no until the set drains; yes at once
// with the immediate strategy (Drain) and at a shutdown; with the gradual one,
// rarely at first, about half the time half way through the window, always
// after it.
func TestConnSetDrainClose(t *testing.T) {
	immediate := NewConnSet()
	defer immediate.Close()
	if immediate.DrainClose() {
		t.Fatal("DrainClose before any drain")
	}
	immediate.Drain()
	if !immediate.DrainClose() {
		t.Fatal("DrainClose after an immediate drain: no")
	}

	count := func(s *ConnSet) int {
		n := 0
		for range 1000 {
			if s.DrainClose() {
				n++
			}
		}
		return n
	}
	early := NewConnSet()
	defer early.Close()
	early.DrainGradually(time.Hour)
	if n := count(early); n > 5 {
		t.Errorf("at the start of an hour-long gradual drain: %d of 1000 yes, want about 0", n)
	}
	early.DrainNow()
	if n := count(early); n != 1000 {
		t.Errorf("after DrainNow: %d of 1000 yes, want all", n)
	}

	mid := NewConnSet()
	defer mid.Close()
	mid.DrainGradually(time.Hour)
	mid.drainStart = mid.drainStart.Add(-30 * time.Minute) // half way through
	if n := count(mid); n < 400 || n > 600 {
		t.Errorf("half way through a gradual drain: %d of 1000 yes, want about 500", n)
	}
	mid.drainStart = mid.drainStart.Add(-31 * time.Minute) // past the end
	if n := count(mid); n != 1000 {
		t.Errorf("after the drain window: %d of 1000 yes, want all", n)
	}
}
