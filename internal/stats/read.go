package stats

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"time"

	"github.com/skiffproxy/skiff/internal/shm"
)

// FileSnapshot is what ReadFile found in a stats file.
type FileSnapshot struct {
	Created     time.Time
	Capacity    int // stats the region can hold
	InUse       int // slots in use
	Generations []GenerationInfo
	Stats       []FileStat // sorted by name, then kind
	// Consistent is false if an allocator operation was in progress (or the
	// file changed) during every attempt to read it: a stat being created or
	// reclaimed right then may be missing. Values are always read as they are.
	Consistent bool
	// Skipped counts slots that did not check out (a name chain pointing
	// outside the file, an unknown kind) and were left out.
	Skipped int
}

// GenerationInfo is one generation entry of the region.
type GenerationInfo struct {
	Generation uint64
	PID        int
	Start      time.Time
	// Live: the process still holds the entry (ReadFile tests its lock; from
	// ReadRegion alone it is unknown and false).
	Live bool
	// Exited: the process closed the region as its last user and left its
	// stats for inspection.
	Exited bool

	entry int
}

// FileStat is a counter or gauge read from a region.
type FileStat struct {
	Name  string
	Kind  Kind
	Mode  ImportMode
	Value int64 // a counter's uint64, converted
	// Generations are the generation numbers holding the stat.
	Generations []uint64
}

// ReadFile reads the region in the file at path without a lock and without
// writing, so it works on the file of a wedged or dead skiff. Every offset and
// length taken from the file is checked against the file's size. A file of
// another layout version gives a *VersionError; a file that is not a valid
// region gives an error wrapping ErrCorrupt.
func ReadFile(path string) (*FileSnapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var snap *FileSnapshot
	for attempt := range 10 {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		snap, err = readRegion(f, fi.Size(), path)
		if err != nil {
			return nil, err
		}
		if snap.Consistent {
			break
		}
		time.Sleep(time.Duration(attempt+1) * time.Millisecond)
	}
	for i := range snap.Generations {
		if locked, err := shm.Locked(f, liveLockBase+int64(snap.Generations[i].entry)); err == nil {
			snap.Generations[i].Live = locked
		}
	}
	return snap, nil
}

// ReadRegion parses a region from r, which holds size bytes. It is ReadFile
// without the file: it never reads outside [0,size) and never panics, whatever
// the bytes.
func ReadRegion(r io.ReaderAt, size int64) (*FileSnapshot, error) {
	return readRegion(r, size, "(region)")
}

func nativeU32(b []byte, off int) uint32 { return binary.NativeEndian.Uint32(b[off:]) }
func nativeU64(b []byte, off int) uint64 { return binary.NativeEndian.Uint64(b[off:]) }

// readAt reads exactly n bytes at off, after checking the range against size.
func readAt(r io.ReaderAt, size int64, off, n uint64, what string) ([]byte, error) {
	if off > uint64(size) || n > uint64(size)-off {
		return nil, fmt.Errorf("%w: %s [%d,+%d) is past the end of the file (%d bytes)", ErrCorrupt, what, off, n, size)
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, int64(off)); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return b, nil
}

func readRegion(r io.ReaderAt, size int64, path string) (*FileSnapshot, error) {
	if size < headerSize {
		return nil, fmt.Errorf("%w %s: truncated: %d bytes, shorter than the %d-byte header", ErrCorrupt, path, size, headerSize)
	}
	hdr, err := readAt(r, size, 0, headerSize, "header")
	if err != nil {
		return nil, err
	}
	g, err := parseHeader(hdr, size, path)
	if err != nil {
		return nil, err
	}
	seq := nativeU64(hdr, hSeq)
	hw, nhw := nativeU32(hdr, hSlotHW), nativeU32(hdr, hNameHW)
	if hw > g.slotCap || nhw > g.nameCap {
		return nil, fmt.Errorf("%w %s: high-water marks %d/%d past the capacities %d/%d", ErrCorrupt, path, hw, nhw, g.slotCap, g.nameCap)
	}
	values, err := readAt(r, size, g.valuesOff, 8*uint64(hw), "values")
	if err != nil {
		return nil, err
	}
	descs, err := readAt(r, size, g.descOff, descSize*uint64(hw), "descriptors")
	if err != nil {
		return nil, err
	}
	names, err := readAt(r, size, g.namesOff, nameBlockSize*uint64(nhw), "names")
	if err != nil {
		return nil, err
	}
	again, err := readAt(r, size, hSeq, 8, "header")
	if err != nil {
		return nil, err
	}

	snap := &FileSnapshot{
		Created:    time.Unix(0, int64(nativeU64(hdr, hCreated))),
		Capacity:   int(g.slotCap),
		Consistent: seq&1 == 0 && nativeU64(again, 0) == seq,
	}
	var genOf [maxGenerations]uint64
	for i := range maxGenerations {
		e := genTableOff + i*genEntrySize
		st := nativeU32(hdr, e+geState)
		if st != genLive && st != genExited {
			continue
		}
		genOf[i] = nativeU64(hdr, e+geOff)
		snap.Generations = append(snap.Generations, GenerationInfo{
			Generation: genOf[i],
			PID:        int(int32(nativeU64(hdr, e+gePID))),
			Start:      time.Unix(0, int64(nativeU64(hdr, e+geStart))),
			Exited:     st == genExited,
			entry:      i,
		})
	}

	type candidate struct {
		FileStat
		newest uint64
	}
	byKey := map[key]candidate{}
	for s := range int(hw) {
		d := descs[s*descSize : (s+1)*descSize]
		ref, n := nativeU32(d, dNameRef), int(nativeU32(d, dNameLen))
		if ref == 0 {
			continue
		}
		snap.InUse++
		kind, mode, _, ok := unpackMeta(nativeU32(d, dMeta))
		name, nameOK := chainName(names, ref, n)
		if !ok || !nameOK {
			snap.Skipped++
			continue
		}
		c := candidate{FileStat: FileStat{Name: name, Kind: kind, Mode: mode}}
		raw := nativeU64(values, 8*s)
		c.Value = int64(raw)
		for m := nativeU64(d, dHolders); m != 0; m &= m - 1 {
			if g := genOf[bits.TrailingZeros64(m)]; g != 0 {
				c.Generations = append(c.Generations, g)
				c.newest = max(c.newest, g)
			}
		}
		slices.Sort(c.Generations)
		// NeverImport gauges have one slot per generation: show the newest's.
		k := key{name, kind}
		if old, dup := byKey[k]; !dup || c.newest > old.newest {
			byKey[k] = c
		}
	}
	for _, c := range byKey {
		snap.Stats = append(snap.Stats, c.FileStat)
	}
	slices.SortFunc(snap.Stats, func(a, b FileStat) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
	})
	return snap, nil
}

// chainName follows a name chain of n bytes starting at block ref-1 in names
// (the blocks below the high-water mark).
func chainName(names []byte, ref uint32, n int) (string, bool) {
	if n <= 0 || n > MaxNameLen {
		return "", false
	}
	nblocks := uint64(len(names) / nameBlockSize)
	buf := make([]byte, 0, n)
	for len(buf) < n {
		if ref == 0 || uint64(ref-1) >= nblocks {
			return "", false
		}
		b := names[uint64(ref-1)*nameBlockSize : uint64(ref)*nameBlockSize]
		buf = append(buf, b[4:4+min(nameBlockData, n-len(buf))]...)
		ref = nativeU32(b, 0)
	}
	return string(buf), true
}
