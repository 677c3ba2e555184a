package bufpool

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestGetClass(t *testing.T) {
	p := New()
	for _, tc := range []struct{ n, want int }{
		{-1, Small},
		{0, Small},
		{1, Small},
		{Small, Small},
		{Small + 1, Medium},
		{Medium, Medium},
		{Medium + 1, Large},
		{Large, Large},
		{Large + 1, Large},
		{1 << 30, Large},
	} {
		b := p.Get(tc.n)
		if len(b.B) != tc.want || cap(b.B) != tc.want {
			t.Errorf("Get(%d): len %d cap %d, want %d", tc.n, len(b.B), cap(b.B), tc.want)
		}
		p.Put(b)
	}
}

func TestZeroPool(t *testing.T) {
	var p Pool
	b := p.Get(10)
	if len(b.B) != Small {
		t.Fatalf("len = %d, want %d", len(b.B), Small)
	}
	p.Put(b)
}

func TestPutRestoresLength(t *testing.T) {
	p := New()
	b := p.Get(Medium)
	b.B = b.B[100:200] // advanced and shortened
	p.Put(b)
	if len(b.B) != Medium || cap(b.B) != Medium {
		t.Fatalf("after Put: len %d cap %d, want %d", len(b.B), cap(b.B), Medium)
	}
	// A caller that replaced B entirely still gets the original memory back in the pool.
	b = p.Get(Small)
	orig := &b.B[0]
	b.B = make([]byte, 3)
	p.Put(b)
	if &b.B[0] != orig || len(b.B) != Small {
		t.Fatal("Put did not restore the buffer's own memory")
	}
}

func TestGetAfterPutIsOwned(t *testing.T) {
	p := New()
	b := p.Get(Small)
	p.Put(b)
	b2 := p.Get(Small) // may or may not be b; either way it must be Put-able once
	p.Put(b2)
}

func mustPanic(t *testing.T, name string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s: no panic", name)
		}
	}()
	f()
}

func TestPutMisuse(t *testing.T) {
	p, other := New(), New()
	mustPanic(t, "nil", func() { p.Put(nil) })
	mustPanic(t, "hand-made buffer", func() { p.Put(&Buffer{B: make([]byte, Small)}) })
	mustPanic(t, "other pool's buffer", func() {
		b := other.Get(Small)
		p.Put(b)
	})
	mustPanic(t, "double put", func() {
		b := p.Get(Large)
		p.Put(b)
		p.Put(b)
	})
}

func TestGetPutAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	p := New()
	p.Put(p.Get(Large)) // warm the pool
	allocs := testing.AllocsPerRun(1000, func() {
		b := p.Get(Large)
		b.B = b.B[:10]
		p.Put(b)
	})
	if allocs != 0 {
		t.Fatalf("Get/Put: %v allocs/op, want 0", allocs)
	}
}

func BenchmarkGetPut(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"4KiB", Small}, {"16KiB", Medium}, {"64KiB", Large}} {
		b.Run(size.name, func(b *testing.B) {
			p := New()
			p.Put(p.Get(size.n))
			b.ReportAllocs()
			for b.Loop() {
				buf := p.Get(size.n)
				buf.B[0] = 1
				p.Put(buf)
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		p := New()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				buf := p.Get(Large)
				buf.B[0] = 1
				p.Put(buf)
			}
		})
	})
}
