package stats

import (
	"path/filepath"
	"testing"
)

func benchStores(b *testing.B, f func(b *testing.B, s *Store)) {
	b.Run("memory", func(b *testing.B) { f(b, NewStore()) })
	b.Run("mmap", func(b *testing.B) {
		s, err := Open(filepath.Join(b.TempDir(), "stats"), WithCapacity(1024))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		f(b, s)
	})
}

func BenchmarkCounterInc(b *testing.B) {
	benchStores(b, func(b *testing.B, s *Store) {
		c := s.Counter("listener.127.0.0.1_10000.downstream_cx_total")
		b.ReportAllocs()
		for b.Loop() {
			c.Inc()
		}
	})
}

func BenchmarkCounterIncParallel(b *testing.B) {
	benchStores(b, func(b *testing.B, s *Store) {
		c := s.Counter("listener.127.0.0.1_10000.downstream_cx_total")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Inc()
			}
		})
	})
}

func BenchmarkGaugeAdd(b *testing.B) {
	benchStores(b, func(b *testing.B, s *Store) {
		g := s.Gauge("cluster.c.upstream_cx_active")
		b.ReportAllocs()
		for b.Loop() {
			g.Add(1)
		}
	})
}

func BenchmarkHistogramRecord(b *testing.B) {
	h := NewStore().Histogram("cluster.c.upstream_cx_length_ms")
	b.ReportAllocs()
	v := uint64(1)
	for b.Loop() {
		h.Record(v)
		v = v*7 + 3 // spread over the buckets
	}
}

// Creating a stat (the cost paid when a listener or cluster is built).
func BenchmarkCreateRelease(b *testing.B) {
	benchStores(b, func(b *testing.B, s *Store) {
		b.ReportAllocs()
		for b.Loop() {
			sc := s.Scope("cluster.outbound|9080||reviews.bookinfo.svc.cluster.local.")
			sc.Counter("upstream_cx_total")
			sc.Close()
		}
	})
}

func TestUpdatesDoNotAllocate(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "stats"), WithCapacity(64))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, g, h := s.Counter("c"), s.Gauge("g"), s.Histogram("h")
	if n := testing.AllocsPerRun(100, func() {
		c.Inc()
		c.Add(2)
		g.Add(-1)
		g.Set(3)
		g.Inc()
		g.Dec()
		h.Record(12345)
	}); n != 0 {
		t.Fatalf("%v allocations per update", n)
	}
}
