package listener

import (
	"net"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/filter"
)

// TestConnSetDrainRunsHooks: a drain is in effect when Drain returns (every
// connection's hook has run, once), and a connection whose hook comes later
// runs it at once.
func TestConnSetDrainRunsHooks(t *testing.T) {
	s := NewConnSet()
	newConn := func() (*filter.Conn, *int) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		c := filter.NewConn(a, 1, "l", nil)
		if _, ok := s.add(c); !ok {
			t.Fatal("add refused")
		}
		c.SetDraining(s.Draining())
		n := new(int)
		return c, n
	}
	c1, n1 := newConn()
	c1.OnDrain(func() { *n1++ })
	c2, n2 := newConn()

	s.Drain()
	if *n1 != 1 {
		t.Fatalf("the hook ran %d times by the time Drain returned, want 1", *n1)
	}
	c2.OnDrain(func() { *n2++ }) // after the drain: runs at once
	if *n2 != 1 {
		t.Fatalf("a hook set after the drain ran %d times, want 1", *n2)
	}
	s.Drain()
	c1.Drain()
	if *n1 != 1 || *n2 != 1 {
		t.Fatalf("hooks ran %d and %d times, want once each", *n1, *n2)
	}
	s.Close()
}
