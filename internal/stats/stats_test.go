package stats

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(childMain(role))
	}
	goleak.VerifyTestMain(m)
}

// stores runs f against an in-memory Store and a file-backed one.
func stores(t *testing.T, f func(t *testing.T, s *Store)) {
	t.Run("memory", func(t *testing.T) { f(t, NewStore()) })
	t.Run("file", func(t *testing.T) {
		s := openTest(t, filepath.Join(t.TempDir(), "stats"), WithCapacity(1024))
		f(t, s)
		if err := s.reg.verify(); err != nil {
			t.Fatal(err)
		}
	})
}

func openTest(t *testing.T, path string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// userSamples leaves out the stats every file-backed Store has.
func userSamples(s *Store) []Sample {
	var out []Sample
	for _, sm := range s.Snapshot() {
		if sm.Name != "stats.overflow" {
			out = append(out, sm)
		}
	}
	return out
}

func TestSameNameSameValue(t *testing.T) {
	stores(t, func(t *testing.T, s *Store) {
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
		g.Add(-5)
		g.Set(1)
		if v, ok := s.Value("cluster.c.upstream_cx_active"); !ok || v != 1 {
			t.Fatalf("gauge = %d, %v", v, ok)
		}
		if _, ok := s.Value("nope"); ok {
			t.Fatal("Value of a missing stat")
		}
		snap := userSamples(s)
		if len(snap) != 2 || snap[0].Name != "cluster.c.upstream_cx_active" || snap[0].Kind != KindGauge || snap[1].Value != 3 {
			t.Fatalf("snapshot %+v", snap)
		}
	})
}

func TestConcurrentIncrements(t *testing.T) {
	stores(t, func(t *testing.T, s *Store) {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				c := s.Counter("x")
				g := s.Gauge("g")
				sc := s.Scope(fmt.Sprintf("scope%d.", i))
				own := sc.Counter("n")
				for range 1000 {
					c.Inc()
					g.Add(2)
					g.Dec()
					own.Inc()
				}
				sc.Close()
			})
		}
		wg.Wait()
		if v, _ := s.Value("x"); v != 8000 {
			t.Fatalf("x = %d, want 8000", v)
		}
		if v, _ := s.Value("g"); v != 8000 {
			t.Fatalf("g = %d, want 8000", v)
		}
		if _, ok := s.Value("scope0.n"); ok {
			t.Fatal("a closed scope's counter is still there")
		}
	})
}

func TestScopes(t *testing.T) {
	stores(t, func(t *testing.T, s *Store) {
		a := s.Scope("cluster.a.")
		b := s.Scope("cluster.a.")
		ca, cb := a.Counter("upstream_cx_total"), b.Counter("upstream_cx_total")
		ca.Inc()
		if cb.Value() != 1 || a.Counter("upstream_cx_total").Value() != 1 {
			t.Fatal("two scopes with one prefix do not share")
		}
		a.Histogram("upstream_cx_length_ms").Record(3)
		a.GaugeMode("membership_total", NeverImport).Set(4)
		a.Close()
		if v, ok := s.Value("cluster.a.upstream_cx_total"); !ok || v != 1 {
			t.Fatalf("b still holds the counter: %d, %v", v, ok)
		}
		if _, ok := s.Value("cluster.a.membership_total"); ok {
			t.Fatal("a gauge only a held survived a.Close")
		}
		b.Close()
		b.Close()
		if len(userSamples(s)) != 0 {
			t.Fatalf("stats left after closing every scope: %+v", userSamples(s))
		}
		// A closed scope still hands out working, detached handles.
		c := a.Counter("late")
		c.Inc()
		if c.Value() != 1 || len(userSamples(s)) != 0 {
			t.Fatal("a closed scope created a stat")
		}
		// The Store's own hold keeps a stat a scope gives up.
		root := s.Counter("cluster.b.x")
		sc := s.Scope("cluster.b.")
		sc.Counter("x").Add(7)
		sc.Close()
		if root.Value() != 7 {
			t.Fatalf("root-held counter = %d after the scope closed", root.Value())
		}
	})
}

func TestHistogram(t *testing.T) {
	for v := range uint64(100000) {
		i := bucketOf(v)
		lo, hi := bucketBounds(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d [%d,%d]", v, i, lo, hi)
		}
		if hi-lo > max(lo/8, 1) {
			t.Fatalf("bucket %d [%d,%d] wider than 1/8", i, lo, hi)
		}
	}
	for _, v := range []uint64{1 << 63, math.MaxUint64, 1<<40 + 12345} {
		lo, hi := bucketBounds(bucketOf(v))
		if v < lo || v > hi {
			t.Fatalf("value %d not in [%d,%d]", v, lo, hi)
		}
	}
	if bucketOf(math.MaxUint64) != histBuckets-1 {
		t.Fatal("the largest value is not in the last bucket")
	}

	s := NewStore()
	h := s.Histogram("cluster.c.upstream_cx_connect_ms")
	for v := uint64(1); v <= 1000; v++ {
		h.Record(v)
	}
	snap := s.Snapshot()
	if len(snap) != 1 || snap[0].Kind != KindHistogram || snap[0].Histogram == nil {
		t.Fatalf("snapshot %+v", snap)
	}
	hs := snap[0].Histogram
	if hs.Count != 1000 || hs.Sum != 500500 {
		t.Fatalf("count %d sum %d", hs.Count, hs.Sum)
	}
	var n uint64
	for i, b := range hs.Buckets {
		n += b.Count
		if i > 0 && b.Lower <= hs.Buckets[i-1].Upper {
			t.Fatal("buckets out of order")
		}
	}
	if n != 1000 {
		t.Fatalf("buckets add up to %d", n)
	}
	for _, q := range []struct{ q, want float64 }{{0.5, 500}, {0.9, 900}, {0.99, 990}} {
		if got := hs.Quantile(q.q); math.Abs(got-q.want)/q.want > 0.07 {
			t.Errorf("p%v = %v, want about %v", q.q*100, got, q.want)
		}
	}
	if !math.IsNaN((&HistogramSnapshot{}).Quantile(0.5)) {
		t.Fatal("quantile of an empty histogram")
	}
}

func TestKindsAndModesPrint(t *testing.T) {
	for _, s := range []fmt.Stringer{KindCounter, KindGauge, KindHistogram, Kind(9), Accumulate, NeverImport, ImportMode(7)} {
		if s.String() == "" {
			t.Fatal("empty name")
		}
	}
	if !strings.Contains((&VersionError{Path: "p", Version: 9}).Error(), "version 9") {
		t.Fatal("VersionError does not name the version")
	}
}

// A Store with WithAccept keeps only the stats it accepts: the others count
// into values of their own handles, outside the region and every Snapshot.
func TestAccept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(1024), WithAccept(func(name string) bool { return strings.HasPrefix(name, "cluster.") }))
	kept := s.Counter("cluster.c.upstream_cx_total")
	dropped := s.Counter("http.h.downstream_rq_total")
	sc := s.Scope("listener.l.")
	scoped, scopedGauge, hist := sc.Counter("downstream_cx_total"), sc.Gauge("downstream_cx_active"), sc.Histogram("downstream_cx_length_ms")
	for _, c := range []Counter{kept, dropped, scoped} {
		c.Inc()
	}
	scopedGauge.Inc()
	hist.Record(3)
	if dropped.Value() != 1 || scoped.Value() != 1 || scopedGauge.Value() != 1 {
		t.Errorf("a rejected stat's handle does not count: %d %d %d", dropped.Value(), scoped.Value(), scopedGauge.Value())
	}
	var names []string
	for _, sm := range userSamples(s) {
		names = append(names, sm.Name)
	}
	if !slices.Equal(names, []string{"cluster.c.upstream_cx_total"}) {
		t.Errorf("snapshot has %q, want only the accepted stat", names)
	}
	snap, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	names = nil
	for _, st := range snap.Stats {
		names = append(names, st.Name)
	}
	if slices.Contains(names, "http.h.downstream_rq_total") || slices.Contains(names, "listener.l.downstream_cx_total") ||
		!slices.Contains(names, "cluster.c.upstream_cx_total") {
		t.Errorf("the region has %q", names)
	}
	sc.Close()
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

// Sample.Used: a counter not at 0, a gauge written to (set to 0 as
// server.state once live, or back at 0 after its Inc and Dec), a
// histogram that recorded something.
func TestUsed(t *testing.T) {
	stores(t, func(t *testing.T, s *Store) {
		s.Counter("c.zero")
		s.Counter("c.one").Inc()
		s.Gauge("g.set_zero").Set(0)
		g := s.Scope("s.").Gauge("g.back_to_zero")
		g.Inc()
		g.Dec()
		s.Gauge("g.two").Add(2)
		s.Histogram("h.empty")
		s.Histogram("h.one").Record(1)
		s.Gauge("g.never")
		var used []string
		for _, sm := range userSamples(s) {
			if sm.Used {
				used = append(used, sm.Name)
			}
		}
		if want := []string{"c.one", "g.set_zero", "g.two", "h.one", "s.g.back_to_zero"}; !slices.Equal(used, want) {
			t.Errorf("used: %q, want %q", used, want)
		}
	})
}
