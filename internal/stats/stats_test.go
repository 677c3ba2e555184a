package stats

import (
	"sync"
	"testing"
)

func TestSameNameSameValue(t *testing.T) {
	s := NewStore()
	a, b := s.Counter("cluster.c.upstream_cx_total"), s.Counter("cluster.c.upstream_cx_total")
	a.Inc()
	b.Add(2)
	if a.Value() != 3 || b.Value() != 3 {
		t.Fatalf("two handles of one counter: %d, %d", a.Value(), b.Value())
	}
	g := s.Gauge("cluster.c.upstream_cx_active")
	g.Inc()
	g.Inc()
	g.Dec()
	if v, ok := s.Value("cluster.c.upstream_cx_active"); !ok || v != 1 {
		t.Fatalf("gauge = %d, %v", v, ok)
	}
	snap := s.Snapshot()
	if len(snap) != 2 || snap[0].Name != "cluster.c.upstream_cx_active" || snap[0].Kind != KindGauge || snap[1].Value != 3 {
		t.Fatalf("snapshot %+v", snap)
	}
}

func TestConcurrentIncrements(t *testing.T) {
	s := NewStore()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.Counter("x")
			for range 1000 {
				c.Inc()
			}
		}()
	}
	wg.Wait()
	if v, _ := s.Value("x"); v != 8000 {
		t.Fatalf("x = %d, want 8000", v)
	}
}

func BenchmarkCounterInc(b *testing.B) {
	c := NewStore().Counter("listener.127.0.0.1_10000.downstream_cx_total")
	b.ReportAllocs()
	for b.Loop() {
		c.Inc()
	}
}
