package listener

import (
	"net"
	"slices"
	"testing"

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
		c.SetDraining(s.Draining(), s.ClosingIdle())
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
