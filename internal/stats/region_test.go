package stats

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func statOf(snap *FileSnapshot, name string, kind Kind) (FileStat, bool) {
	for _, st := range snap.Stats {
		if st.Name == name && st.Kind == kind {
			return st, true
		}
	}
	return FileStat{}, false
}

func readTest(t *testing.T, path string) *FileSnapshot {
	t.Helper()
	snap, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// Two Stores on one file model a hot restart in one process: OFD locks make
// them as separate as two processes (the multi-process tests do it for real).
func TestGenerationsShareCounters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	parent := openTest(t, path, WithCapacity(256))
	if parent.Generation() != 1 {
		t.Fatalf("first generation = %d", parent.Generation())
	}
	c := parent.Counter("listener.0.0.0.0_80.downstream_cx_total")
	c.Add(10)
	active := parent.Gauge("listener.0.0.0.0_80.downstream_cx_active")
	active.Add(3)
	live := parent.GaugeMode("server.live", NeverImport)
	live.Set(1)
	gone := parent.Scope("cluster.old.")
	gone.Counter("upstream_cx_total").Add(5)

	child := openTest(t, path)
	if child.Generation() != 2 {
		t.Fatalf("successor generation = %d", child.Generation())
	}
	c2 := child.Counter("listener.0.0.0.0_80.downstream_cx_total")
	if c2.Value() != 10 {
		t.Fatalf("successor sees %d, want the parent's 10", c2.Value())
	}
	c2.Inc()
	c.Inc() // the draining parent still counts
	if c.Value() != 12 || c2.Value() != 12 {
		t.Fatalf("shared counter: parent %d, child %d", c.Value(), c2.Value())
	}
	active2 := child.Gauge("listener.0.0.0.0_80.downstream_cx_active")
	active2.Inc()
	if active2.Value() != 4 {
		t.Fatalf("Accumulate gauge = %d, want 3+1", active2.Value())
	}
	live2 := child.GaugeMode("server.live", NeverImport)
	if live2.Value() != 0 {
		t.Fatalf("NeverImport gauge carried over: %d", live2.Value())
	}
	live2.Set(1)
	live.Set(0) // the parent starts draining
	if live2.Value() != 1 {
		t.Fatal("the parent's NeverImport gauge is the successor's")
	}
	snap := readTest(t, path)
	if st, _ := statOf(snap, "server.live", KindGauge); st.Value != 1 || len(st.Generations) != 1 || st.Generations[0] != 2 {
		t.Fatalf("reader shows server.live %+v, want the successor's", st)
	}
	if st, _ := statOf(snap, "listener.0.0.0.0_80.downstream_cx_total", KindCounter); len(st.Generations) != 2 {
		t.Fatalf("shared counter held by %v", st.Generations)
	}
	if len(snap.Generations) != 2 || !snap.Generations[0].Live || !snap.Generations[1].Live {
		t.Fatalf("generations %+v", snap.Generations)
	}

	active.Add(-3)
	if err := parent.Close(); err != nil {
		t.Fatal(err)
	}
	c.Inc() // after Close: harmless, private
	if c2.Value() != 12 || active2.Value() != 1 {
		t.Fatalf("after the parent left: counter %d, gauge %d", c2.Value(), active2.Value())
	}
	snap = readTest(t, path)
	if _, ok := statOf(snap, "cluster.old.upstream_cx_total", KindCounter); ok {
		t.Fatal("a stat only the exited parent held is still in the region")
	}
	if len(snap.Generations) != 1 || snap.Generations[0].Generation != 2 {
		t.Fatalf("generations after the parent left: %+v", snap.Generations)
	}
	if err := child.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

func TestLastGenerationLeavesStatsForInspection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(64))
	s.Counter("a").Add(42)
	s.GaugeMode("server.live", NeverImport).Set(1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	snap := readTest(t, path)
	if st, ok := statOf(snap, "a", KindCounter); !ok || st.Value != 42 {
		t.Fatalf("stale file: a = %+v", st)
	}
	if len(snap.Generations) != 1 || snap.Generations[0].Live || !snap.Generations[0].Exited || snap.Generations[0].PID != os.Getpid() {
		t.Fatalf("generations %+v", snap.Generations)
	}
	// A cold start reclaims them: counters start over.
	s2 := openTest(t, path)
	if s2.Generation() != 2 || s2.Counter("a").Value() != 0 {
		t.Fatalf("cold restart: generation %d, a = %d", s2.Generation(), s2.Counter("a").Value())
	}
	if err := s2.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

func TestWrongVersionRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(64))
	s.Counter("a").Inc()
	s.Close()
	b, _ := os.ReadFile(path)
	binary.NativeEndian.PutUint32(b[hVersion:], 7)
	os.WriteFile(path, b, 0o600)

	var ve *VersionError
	if _, err := Open(path); !errors.As(err, &ve) || ve.Version != 7 || !strings.Contains(err.Error(), "version 7") {
		t.Fatalf("Open of a version-7 region: %v", err)
	}
	if _, err := ReadFile(path); !errors.As(err, &ve) {
		t.Fatalf("ReadFile of a version-7 region: %v", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(after, b) {
		t.Fatal("Open modified a region of another version")
	}

	binary.NativeEndian.PutUint32(b[hVersion:], layoutVersion)
	binary.NativeEndian.PutUint32(b[hByteOrder:], 0x04030201)
	os.WriteFile(path, b, 0o600)
	if _, err := Open(path); !errors.As(err, &ve) || !ve.ByteOrder {
		t.Fatalf("Open of a foreign-byte-order region: %v", err)
	}
}

func TestCorruptFileReplaced(t *testing.T) {
	mutations := map[string]func(b []byte) []byte{
		"truncated":   func(b []byte) []byte { return b[:len(b)/2] },
		"short":       func(b []byte) []byte { return b[:100] },
		"bad magic":   func(b []byte) []byte { b[0] = 'X'; return b },
		"bad crc":     func(b []byte) []byte { b[hSlotCap]++; return b },
		"not a stats": func(b []byte) []byte { return bytes.Repeat([]byte("garbage "), 2048) },
	}
	for name, mutate := range mutations {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "stats")
			s := openTest(t, path, WithCapacity(64))
			s.Counter("a").Inc()
			s.Close()
			b, _ := os.ReadFile(path)
			os.WriteFile(path, mutate(b), 0o600)

			if _, err := ReadFile(path); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("ReadFile: %v, want ErrCorrupt", err)
			}
			var logs bytes.Buffer
			s2 := openTest(t, path, WithCapacity(64), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if !strings.Contains(logs.String(), "corrupt") {
				t.Fatalf("replacement not logged: %q", logs.String())
			}
			s2.Counter("b").Inc()
			snap := readTest(t, path)
			if st, ok := statOf(snap, "b", KindCounter); !ok || st.Value != 1 {
				t.Fatalf("after replacement: %+v", snap.Stats)
			}
			if s2.Generation() != 1 {
				t.Fatalf("replacement generation %d", s2.Generation())
			}
		})
	}
}

// A live process keeps its pages when another replaces a corrupt file.
func TestReplaceDoesNotPullPagesFromUnderAMapping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(64))
	c := s.Counter("a")
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt([]byte("XXXXXXXX"), 0)
	f.Close()
	s2 := openTest(t, path, WithCapacity(64))
	c.Inc() // would SIGBUS if the file had been truncated under s
	if s2.Counter("a").Value() != 0 || c.Value() != 1 {
		t.Fatal("the replacement shares values with the corrupt file")
	}
}

func TestCapacityChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(64))
	// While s lives, another capacity is not forced on it.
	s2 := openTest(t, path, WithCapacity(128))
	if s2.reg.g.slotCap != 64 {
		t.Fatalf("capacity %d, want the live region's 64", s2.reg.g.slotCap)
	}
	s.Close()
	s2.Close()
	// Unowned, it is recreated with the requested one; without WithCapacity,
	// the file's is kept.
	s3 := openTest(t, path, WithCapacity(128))
	s3.Close()
	s4 := openTest(t, path)
	if s4.reg.g.slotCap != 128 {
		t.Fatalf("capacity %d, want 128", s4.reg.g.slotCap)
	}
}

func TestRepairAfterCrashDuringOperation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(64))
	keep := s.Counter("keep")
	keep.Add(9)
	sc := s.Scope("x.")
	for i := range 10 {
		sc.Counter(fmt.Sprint(i)).Inc()
	}
	sc.Close()
	r := s.reg
	// Model a holder that died mid-operation: seq odd, lists and counters
	// wrong, a slot pointing outside the name blocks.
	r.u64(hSeq).Add(1)
	r.hdr32(hSlotFree).Store(1)
	r.hdr32(hNamesUsed).Store(3)
	r.hdr32(hIndexLive).Store(0)
	bad, err := r.acquire("bad", KindCounter, Accumulate)
	if err != nil {
		t.Fatal(err)
	}
	r.desc32(bad, dNameRef).Store(r.g.nameCap + 5)
	r.u64(hSeq).Add(1) // odd again

	c := s.Counter("new") // takes the lock: repairs first
	c.Inc()
	if err := r.verify(); err != nil {
		t.Fatalf("after repair: %v", err)
	}
	if keep.Value() != 9 || s.Counter("keep").Value() != 9 {
		t.Fatal("repair lost a valid value")
	}
	snap := readTest(t, path)
	if _, ok := statOf(snap, "bad", KindCounter); ok {
		t.Fatal("a slot with a broken name survived the repair")
	}
	if !snap.Consistent {
		t.Fatal("inconsistent after repair")
	}
}

func TestLongAndSimilarNames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(256))
	prefix := "cluster.outbound|9080||" + strings.Repeat("reviews.bookinfo.svc.cluster.local.", 6)
	names := []string{prefix + "a.upstream_cx_total", prefix + "b.upstream_cx_total", strings.Repeat("n", MaxNameLen), "x"}
	for i, n := range names {
		s.Counter(n).Add(uint64(i + 1))
	}
	tooLong := strings.Repeat("y", MaxNameLen+1)
	s.Counter(tooLong).Inc() // kept in memory
	snap := readTest(t, path)
	for i, n := range names {
		if st, ok := statOf(snap, n, KindCounter); !ok || st.Value != int64(i+1) {
			t.Fatalf("name of %d bytes: %+v %v", len(n), st, ok)
		}
	}
	if v, _ := s.Value("stats.overflow"); v != 1 {
		t.Fatalf("stats.overflow = %d", v)
	}
	if v, _ := s.Value(tooLong); v != 1 {
		t.Fatal("an overflowed stat does not work")
	}
	// A counter and a gauge may share a name (as before); they are two stats.
	s.Gauge("x").Set(-4)
	if v, _ := s.Value("x"); v != 4 {
		t.Fatalf("Value prefers the counter: %d", v)
	}
	if st, ok := statOf(readTest(t, path), "x", KindGauge); !ok || st.Value != -4 {
		t.Fatalf("gauge x: %+v", st)
	}
}

func TestFullRegionOverflowsToMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	var logs bytes.Buffer
	s := openTest(t, path, WithCapacity(16), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	var cs []Counter
	for i := range 20 {
		c := s.Counter(fmt.Sprint("c", i))
		c.Add(uint64(i))
		cs = append(cs, c)
	}
	for i, c := range cs {
		if c.Value() != uint64(i) {
			t.Fatal("an overflowed counter does not count")
		}
	}
	if v, _ := s.Value("stats.overflow"); v != 5 { // 16 slots: stats.overflow and c0..c14
		t.Fatalf("stats.overflow = %d, want 5", v)
	}
	if n := strings.Count(logs.String(), "stats region full"); n != 1 {
		t.Fatalf("full region logged %d times", n)
	}
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

// Many generations create and release 100,000 distinct stats in scopes, some
// exiting cleanly, some "crashing" (see crash): the region never fills.
func TestReclamationKeepsRegionBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	const capacity = 1024
	var prev *Store
	distinct := 0
	for gen := 0; distinct < 100000; gen++ {
		s, err := Open(path, WithCapacity(capacity))
		if err != nil {
			t.Fatal(err)
		}
		total := s.Counter("server.total") // carried across overlapping generations
		total.Inc()
		for range 10 {
			sc := s.Scope(fmt.Sprintf("cluster.g%d_%d.", gen, distinct))
			for j := range 25 {
				sc.Counter(fmt.Sprint("upstream_cx_total_", j)).Inc()
				sc.GaugeMode(fmt.Sprint("membership_", j), NeverImport).Set(1)
				distinct += 2
			}
			sc.Close()
		}
		// This generation keeps some stats while its successor starts.
		held := s.Scope(fmt.Sprintf("held.g%d.", gen))
		for j := range 100 {
			held.Counter(fmt.Sprint(j)).Inc()
		}
		if prev != nil {
			switch gen % 3 {
			case 0:
				prev.Close()
			case 1:
				prev.reg.crash()
			case 2:
				prev.Close()
				prev.Close()
			}
		}
		if v, _ := s.Value("stats.overflow"); v != 0 {
			t.Fatalf("generation %d: %d stats overflowed the region", s.Generation(), v)
		}
		if err := s.reg.verify(); err != nil {
			t.Fatalf("generation %d: %v", s.Generation(), err)
		}
		prev = s
	}
	defer prev.Close()
	if _, err := prev.Sweep(); err != nil {
		t.Fatal(err)
	}
	hw := prev.reg.hdr32(hSlotHW).Load()
	used := prev.reg.hdr32(hSlotsUsed).Load()
	if hw > capacity || used > 250 {
		t.Fatalf("after %d distinct stats: high-water %d, %d in use", distinct, hw, used)
	}
	fi, _ := os.Stat(path)
	if fi.Size() != int64(geometryFor(capacity).fileSize) {
		t.Fatalf("file grew to %d bytes", fi.Size())
	}
}

// A full region first reclaims what dead generations held.
func TestFullRegionSweepsTheDead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	old := openTest(t, path, WithCapacity(16))
	for i := range 15 {
		old.Counter(fmt.Sprint("old.", i)).Inc()
	}
	s := openTest(t, path)
	old.reg.crash()
	for i := range 14 {
		s.Counter(fmt.Sprint("new.", i)).Inc()
	}
	if v, _ := s.Value("stats.overflow"); v != 0 {
		t.Fatalf("%d stats overflowed although a dead generation held the room", v)
	}
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

// The default capacity holds 10,000 clusters of 20 stats with long, Istio-style
// names.
func TestDefaultCapacityFitsTenThousandClusters(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 200,000 stats")
	}
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path)
	for i := range 10000 {
		sc := s.Scope(fmt.Sprintf("cluster.outbound|8080||service-%05d.namespace.svc.cluster.local.", i))
		for j := range 20 {
			sc.Counter(fmt.Sprintf("upstream_cx_stat_%02d", j)).Inc()
		}
	}
	if v, _ := s.Value("stats.overflow"); v != 0 {
		t.Fatalf("%d of 200,000 stats overflowed the default capacity", v)
	}
	snap := readTest(t, path)
	if len(snap.Stats) != 200001 || snap.Capacity != DefaultCapacity {
		t.Fatalf("%d stats in a region of %d", len(snap.Stats), snap.Capacity)
	}
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
}
