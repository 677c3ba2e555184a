package stats

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// boundedReader fails the test on any read outside [0,len(b)).
type boundedReader struct {
	t *testing.T
	b []byte
}

func (r boundedReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(r.b)) || int64(len(p)) > int64(len(r.b))-off {
		r.t.Fatalf("read of %d bytes at %d in a %d-byte file", len(p), off, len(r.b))
	}
	return copy(p, r.b[off:]), nil
}

// seedRegion returns the bytes of a small region with a few stats of every
// kind, from two generations.
func seedRegion(t testing.TB) []byte {
	path := filepath.Join(t.TempDir(), "stats")
	a, err := Open(path, WithCapacity(16))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	a.Counter("listener.127.0.0.1_10000.downstream_cx_total").Add(3)
	b.Counter("listener.127.0.0.1_10000.downstream_cx_total").Add(4)
	a.GaugeMode("server.live", NeverImport).Set(1)
	b.GaugeMode("server.live", NeverImport).Set(1)
	sc := b.Scope("cluster." + strings.Repeat("long", 40) + ".")
	sc.Gauge("upstream_cx_active").Set(-2)
	b.Scope("gone.").Counter("x").Inc()
	out, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	return out
}

func FuzzReadRegion(f *testing.F) {
	valid := seedRegion(f)
	f.Add(valid)
	f.Add(valid[:headerSize])
	f.Add(valid[:len(valid)-100])
	f.Add([]byte{})
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		snap, err := ReadRegion(boundedReader{t, b}, int64(len(b)))
		if err != nil {
			var ve *VersionError
			if !errors.Is(err, ErrCorrupt) && !errors.As(err, &ve) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		for _, st := range snap.Stats {
			if len(st.Name) == 0 || len(st.Name) > MaxNameLen || (st.Kind != KindCounter && st.Kind != KindGauge) {
				t.Fatalf("bad stat %+v", st)
			}
		}
		if snap.InUse > snap.Capacity || len(snap.Stats)+snap.Skipped > snap.InUse {
			t.Fatalf("counts: %d in use of %d, %d stats, %d skipped", snap.InUse, snap.Capacity, len(snap.Stats), snap.Skipped)
		}
	})
}

func TestReadRegionSeed(t *testing.T) {
	b := seedRegion(t)
	snap, err := ReadRegion(boundedReader{t, b}, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(len(snap.Stats), snap.InUse, len(snap.Generations), snap.Consistent)
	if got != "5 6 2 true" {
		t.Fatalf("stats, in use, generations, consistent = %s; %+v", got, snap.Stats)
	}
	if st, _ := statOf(snap, "listener.127.0.0.1_10000.downstream_cx_total", KindCounter); st.Value != 7 {
		t.Fatalf("shared counter %+v", st)
	}
}

// FuzzOpenRegion overwrites the parts of a valid region the header checksum
// does not cover (allocator state, generation table, descriptors, names,
// index) with arbitrary bytes: Open must not panic, must leave a consistent
// region, and must go on allocating and releasing.
func FuzzOpenRegion(f *testing.F) {
	valid := seedRegion(f)
	f.Add(uint16(hSeq), []byte{1})
	f.Add(uint16(hSlotHW), []byte{0xff, 0xff})
	f.Add(uint16(genTableOff+geState), []byte{1, 0, 0, 0})
	f.Add(uint16(headerSize+8*16+dNameRef), []byte{0x20, 0, 0, 0})
	f.Add(uint16(headerSize+8*16+descSize+dMeta), []byte{2, 1, 3, 0})
	f.Fuzz(func(t *testing.T, at uint16, patch []byte) {
		b := append([]byte(nil), valid...)
		off := hSeq + int(at)%(len(b)-hSeq)
		copy(b[off:], patch)
		path := filepath.Join(t.TempDir(), "stats")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.reg.verify(); err != nil {
			t.Fatalf("after Open: %v", err)
		}
		sc := s.Scope("cluster.fuzz.")
		for i := range 6 {
			sc.Counter(fmt.Sprint("c", i)).Inc()
			s.GaugeMode(fmt.Sprint("server.g", i), NeverImport).Set(1)
		}
		sc.Close()
		if err := s.reg.verify(); err != nil {
			t.Fatalf("after use: %v", err)
		}
		if _, err := ReadFile(path); err != nil {
			t.Fatal(err)
		}
	})
}
