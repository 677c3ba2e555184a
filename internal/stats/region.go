package stats

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/skiffproxy/skiff/internal/shm"
)

// errInconsistent reports that an allocator structure (a list, the index, a
// name chain) does not add up; the operation repairs the region and retries.
var errInconsistent = errors.New("inconsistent region")

// region is a process's read-write mapping of a stats file, with its claim on
// one generation entry. Every method runs with the owning Store's mutex held;
// methods that change the allocator's structures also hold the file's
// allocator lock.
type region struct {
	path    string
	f       *os.File
	m       *shm.Mapping
	mem     []byte
	g       geometry
	self    int    // our generation entry
	gen     uint64 // our generation number
	timeout time.Duration
	log     *slog.Logger
	closed  bool
}

// openRegion opens, and creates or replaces when needed, the region at path and
// claims a generation entry in it.
func openRegion(path string, o *options) (*region, error) {
	for range 8 {
		r, retry, err := tryOpenRegion(path, o)
		if !retry {
			return r, err
		}
	}
	return nil, fmt.Errorf("stats region %s: the file kept being replaced under us", path)
}

func tryOpenRegion(path string, o *options) (r *region, retry bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("stats region: %w", err)
	}
	defer func() {
		if r == nil {
			f.Close() // drops our locks too
		}
	}()
	if err := shm.Lock(f, allocLockByte, o.lockTimeout); err != nil {
		return nil, false, fmt.Errorf("stats region %s: allocator lock: %w (a process holding it may be wedged)", path, err)
	}
	// The file may have been replaced between our open and our lock.
	if same, err := sameFile(path, f); err != nil || !same {
		return nil, true, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("stats region: %w", err)
	}
	want := geometryFor(o.capacity)
	g := want
	if fi.Size() == 0 {
		// New (or emptied) file: nobody can have it mapped, initialise in place.
		if err := initFile(f, want); err != nil {
			return nil, false, fmt.Errorf("stats region %s: %w", path, err)
		}
	} else {
		hdr := make([]byte, headerSize)
		if _, err := f.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
			return nil, false, fmt.Errorf("stats region %s: %w", path, err)
		}
		g, err = parseHeader(hdr, fi.Size(), path)
		var ve *VersionError
		switch {
		case errors.As(err, &ve):
			return nil, false, err
		case err != nil:
			// Corrupt or truncated: replace it by a new file. A process that
			// still maps the old one keeps its (unlinked) pages; nobody is
			// handed a mapping past the end of a file.
			o.log.Warn("stats region is corrupt; replacing it with an empty one", "path", path, "reason", err)
			if err := replaceFile(path, want); err != nil {
				return nil, false, err
			}
			return nil, true, nil
		case g != want && !o.capacitySet:
			// Adopt the existing geometry: the default does not override a
			// size someone chose.
		case g != want:
			live, err := liveMask(f, hdr, -1)
			if err != nil {
				return nil, false, fmt.Errorf("stats region %s: %w", path, err)
			}
			if live == 0 {
				o.log.Info("stats region has another capacity and no live owner; recreating it", "path", path,
					"capacity", g.slotCap, "requested", want.slotCap)
				if err := replaceFile(path, want); err != nil {
					return nil, false, err
				}
				return nil, true, nil
			}
			o.log.Info("stats region is in use with another capacity; keeping it", "path", path,
				"capacity", g.slotCap, "requested", want.slotCap)
		}
	}
	m, err := shm.Map(f, int(g.fileSize))
	if err != nil {
		return nil, false, fmt.Errorf("stats region %s: %w", path, err)
	}
	r = &region{path: path, f: f, m: m, mem: m.Bytes(), g: g, self: -1, timeout: o.lockTimeout, log: o.log}
	if err := r.claim(); err != nil {
		m.Detach(0)
		r = nil
		return nil, false, fmt.Errorf("stats region %s: %w", path, err)
	}
	if err := shm.Unlock(f, allocLockByte); err != nil {
		m.Detach(0)
		r = nil
		return nil, false, fmt.Errorf("stats region %s: %w", path, err)
	}
	return r, false, nil
}

func sameFile(path string, f *os.File) (bool, error) {
	a, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	b, err := f.Stat()
	if err != nil {
		return false, err
	}
	return os.SameFile(a, b), nil
}

// initFile sizes f (sparse) and writes an empty region's header.
func initFile(f *os.File, g geometry) error {
	if err := f.Truncate(int64(g.fileSize)); err != nil {
		return err
	}
	_, err := f.WriteAt(encodeHeader(g, time.Now().UnixNano()), 0)
	return err
}

// replaceFile atomically puts an empty region at path.
func replaceFile(path string, g geometry) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return fmt.Errorf("stats region: %w", err)
	}
	err = initFile(tmp, g)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("stats region %s: replacing: %w", path, err)
	}
	return nil
}

// liveMask returns the generation entries of hdr (a header page of f) whose
// owner is alive, that is, holds the entry's liveness lock; entry skip is left
// out.
func liveMask(f *os.File, hdr []byte, skip int) (uint64, error) {
	var mask uint64
	for i := range maxGenerations {
		if i == skip || nativeU32(hdr, genTableOff+i*genEntrySize+geState) == genFree {
			continue
		}
		locked, err := shm.Locked(f, liveLockBase+int64(i))
		if err != nil {
			return 0, err
		}
		if locked {
			mask |= 1 << i
		}
	}
	return mask, nil
}

// Word access. Offsets come from the validated geometry and from indices
// checked against it, and shm panics rather than step outside the mapping.

func (r *region) u64(off uint64) *atomic.Uint64 { return shm.Uint64(r.mem, int(off)) }
func (r *region) u32(off uint64) *atomic.Uint32 { return shm.Uint32(r.mem, int(off)) }

func (r *region) hdr32(off uint64) *atomic.Uint32 { return r.u32(off) }
func (r *region) desc64(s uint32, field uint64) *atomic.Uint64 {
	return r.u64(r.g.descOff + uint64(s)*descSize + field)
}
func (r *region) desc32(s uint32, field uint64) *atomic.Uint32 {
	return r.u32(r.g.descOff + uint64(s)*descSize + field)
}
func (r *region) valuePtr(s uint32) unsafe.Pointer {
	return unsafe.Pointer(r.u64(r.g.valuesOff + 8*uint64(s)))
}
func (r *region) blockNext(b uint32) *atomic.Uint32 {
	return r.u32(r.g.namesOff + uint64(b)*nameBlockSize)
}
func (r *region) blockData(b uint32) []byte {
	off := r.g.namesOff + uint64(b)*nameBlockSize + 4
	return r.mem[off : off+nameBlockData]
}
func (r *region) indexAt(i uint32) *atomic.Uint32 { return r.u32(r.g.indexOff + 4*uint64(i)) }
func (r *region) genU64(i int, field uint64) *atomic.Uint64 {
	return r.u64(genTableOff + uint64(i)*genEntrySize + field)
}
func (r *region) genState(i int) *atomic.Uint32 {
	return r.u32(genTableOff + uint64(i)*genEntrySize + geState)
}

// The seqlock word: odd while the allocator changes shared structures, so that
// a lock holder that died mid-operation is noticed by the next one, and readers
// without the lock know to retry.
func (r *region) begin() {
	seq := r.u64(hSeq)
	if s := seq.Load(); s&1 == 0 {
		seq.Store(s + 1)
	}
}
func (r *region) end() {
	seq := r.u64(hSeq)
	seq.Store((seq.Load() | 1) + 1)
}

// lock takes the allocator lock and repairs what a crashed holder left.
func (r *region) lock() error {
	if err := shm.Lock(r.f, allocLockByte, r.timeout); err != nil {
		return err
	}
	if reason := r.damage(); reason != "" {
		r.log.Warn("stats region: repairing", "path", r.path, "reason", reason)
		r.repair()
	}
	return nil
}

func (r *region) unlock() {
	if err := shm.Unlock(r.f, allocLockByte); err != nil {
		r.log.Error("stats region: unlock", "path", r.path, "error", err)
	}
}

// damage says why the header's allocator state cannot be trusted, or "".
func (r *region) damage() string {
	switch {
	case r.u64(hSeq).Load()&1 != 0:
		return "a process died during an allocator operation"
	case r.hdr32(hSlotHW).Load() > r.g.slotCap, r.hdr32(hNameHW).Load() > r.g.nameCap,
		r.hdr32(hSlotFree).Load() > r.hdr32(hSlotHW).Load(), r.hdr32(hSlotTail).Load() > r.hdr32(hSlotHW).Load(),
		r.hdr32(hSlotsUsed).Load() > r.hdr32(hSlotHW).Load(), r.hdr32(hNameFree).Load() > r.hdr32(hNameHW).Load(),
		r.hdr32(hNamesUsed).Load() > r.hdr32(hNameHW).Load(), r.hdr32(hIndexLive).Load() > r.hdr32(hSlotsUsed).Load(),
		uint64(r.hdr32(hIndexLive).Load())+uint64(r.hdr32(hIndexTombs).Load()) > uint64(r.g.indexCap):
		return "allocator counters out of range"
	}
	return ""
}

// withLock runs op under the allocator lock. If op finds the structures
// inconsistent, the region is repaired and op runs once more.
func (r *region) withLock(op func() error) error {
	if r.closed {
		return errors.New("stats region closed")
	}
	if err := r.lock(); err != nil {
		return err
	}
	defer r.unlock()
	err := op()
	if errors.Is(err, errInconsistent) {
		r.log.Warn("stats region: repairing", "path", r.path, "reason", err)
		r.repair()
		err = op()
	}
	return err
}

// claim runs at Open with the allocator lock held: it repairs what needs it
// (everything, when no other generation is live), reclaims the stats of dead
// generations and takes a free generation entry.
func (r *region) claim() error {
	if reason := r.damage(); reason != "" {
		r.log.Warn("stats region: repairing", "path", r.path, "reason", reason)
		r.repair()
	} else if live, err := r.liveOthers(); err != nil {
		return err
	} else if live == 0 {
		// Nobody maintains the region right now: check all of it rather than
		// trust what a dead process (or anyone) left. It costs a pass over the
		// slots and name blocks in use.
		r.repair()
	}
	if _, err := r.sweepDead(); err != nil {
		return err
	}
	for i := range maxGenerations {
		if r.genState(i).Load() != genFree {
			continue
		}
		ok, err := shm.TryLock(r.f, liveLockBase+int64(i))
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		r.begin()
		gen := r.u64(hLastGen).Load() + 1
		r.u64(hLastGen).Store(gen)
		r.genU64(i, geOff).Store(gen)
		r.genU64(i, gePID).Store(uint64(os.Getpid()))
		r.genU64(i, geStart).Store(uint64(time.Now().UnixNano()))
		r.genState(i).Store(genLive)
		r.end()
		r.self, r.gen = i, gen
		return nil
	}
	return fmt.Errorf("all %d generation entries are held by live processes", maxGenerations)
}

// deadMask returns the entries, other than ours, that are in use but whose
// owner no longer holds the liveness lock: it exited or crashed.
func (r *region) deadMask() (uint64, error) {
	var dead uint64
	for i := range maxGenerations {
		if i == r.self || r.genState(i).Load() == genFree {
			continue
		}
		locked, err := shm.Locked(r.f, liveLockBase+int64(i))
		if err != nil {
			return 0, err
		}
		if !locked {
			dead |= 1 << i
		}
	}
	return dead, nil
}

// sweepDead releases every hold of dead generations and frees their entries.
// It returns how many slots it freed. Allocator lock held.
func (r *region) sweepDead() (int, error) {
	dead, err := r.deadMask()
	if err != nil || dead == 0 {
		return 0, err
	}
	return r.release(dead), nil
}

// release clears the holder bits in mask from every slot, frees the slots left
// without holders and the generation entries in mask. Allocator lock held.
func (r *region) release(mask uint64) int {
	r.begin()
	freed := 0
	hw := r.hdr32(hSlotHW).Load()
	for s := range hw {
		if r.desc32(s, dNameRef).Load() == 0 {
			continue
		}
		h := r.desc64(s, dHolders)
		if hv := h.Load(); hv&mask != 0 {
			h.Store(hv &^ mask)
			if hv&^mask == 0 {
				r.freeSlot(s)
				freed++
			}
		}
	}
	for m := mask; m != 0; m &= m - 1 {
		i := bits.TrailingZeros64(m)
		r.genState(i).Store(genFree)
		r.genU64(i, geOff).Store(0)
		r.genU64(i, gePID).Store(0)
		r.genU64(i, geStart).Store(0)
	}
	r.maybeRebuildIndex()
	r.end()
	return freed
}

// acquire returns the slot of the stat (kind, mode, name), creating it if no
// generation has it, and records us as a holder.
func (r *region) acquire(name string, kind Kind, mode ImportMode) (uint32, error) {
	if len(name) == 0 || len(name) > MaxNameLen {
		return 0, fmt.Errorf("stat name of %d bytes: the region stores names of 1 to %d bytes", len(name), MaxNameLen)
	}
	var owner uint8
	if kind == KindGauge && mode == NeverImport {
		owner = uint8(r.self + 1) // private to this generation
	}
	h := statHash(kind, owner, name)
	var slot uint32
	err := r.withLock(func() error {
		s, found, pos, err := r.lookup(h, kind, owner, name)
		if err != nil {
			return err
		}
		if found {
			r.begin()
			hv := r.desc64(s, dHolders)
			hv.Store(hv.Load() | 1<<r.self)
			r.end()
			slot = s
			return nil
		}
		need := uint32(blocksFor(len(name)))
		if !r.hasRoom(need) {
			n, err := r.sweepDead()
			if err != nil {
				return err
			}
			if n > 0 {
				// Slots were freed and the index may have been rebuilt: find
				// the insert position again. (Sweeping only frees, so the stat
				// is still absent.)
				if _, found, pos, err = r.lookup(h, kind, owner, name); err != nil || found {
					return errors.Join(err, errInconsistent)
				}
			}
			if !r.hasRoom(need) {
				return fmt.Errorf("%w: %d of %d stats, %d of %d name blocks in use (raise the capacity, or release scopes)",
					ErrFull, r.hdr32(hSlotsUsed).Load(), r.g.slotCap, r.hdr32(hNamesUsed).Load(), r.g.nameCap)
			}
		}
		r.begin()
		s, err = r.allocSlot()
		if err != nil {
			return err
		}
		ref, err := r.allocName(name)
		if err != nil {
			return err
		}
		r.desc64(s, dHash).Store(h)
		r.desc32(s, dNameLen).Store(uint32(len(name)))
		r.desc32(s, dMeta).Store(packMeta(kind, mode, owner))
		r.desc64(s, dHolders).Store(1 << r.self)
		(*atomic.Uint64)(r.valuePtr(s)).Store(0)
		r.desc32(s, dNameRef).Store(ref) // the slot is in use from here
		r.hdr32(hSlotsUsed).Add(1)
		if r.indexAt(pos).Load() == indexTomb {
			r.hdr32(hIndexTombs).Add(^uint32(0))
		}
		r.indexAt(pos).Store(s + 1)
		r.hdr32(hIndexLive).Add(1)
		r.end()
		slot = s
		return nil
	})
	return slot, err
}

// drop removes our hold on slot s and frees it if nobody else holds it.
func (r *region) drop(s uint32) error {
	return r.withLock(func() error {
		if s >= r.hdr32(hSlotHW).Load() || r.desc32(s, dNameRef).Load() == 0 {
			return nil // already reclaimed (a repair dropped it)
		}
		r.begin()
		h := r.desc64(s, dHolders)
		hv := h.Load() &^ (1 << r.self)
		h.Store(hv)
		if hv == 0 {
			r.freeSlot(s)
			r.maybeRebuildIndex()
		}
		r.end()
		return nil
	})
}

func (r *region) hasRoom(blocks uint32) bool {
	return r.hdr32(hSlotsUsed).Load() < r.g.slotCap && r.g.nameCap-r.hdr32(hNamesUsed).Load() >= blocks
}

// lookup finds the slot of (kind, owner, name) in the index. If it is absent,
// pos is where to insert it (the first tombstone or empty entry on its probe
// path).
func (r *region) lookup(h uint64, kind Kind, owner uint8, name string) (slot uint32, found bool, pos uint32, err error) {
	mask := r.g.indexCap - 1
	hw := r.hdr32(hSlotHW).Load()
	want := packMeta(kind, 0, owner) &^ (0xff << 8)
	p := uint32(h) & mask
	tomb, haveTomb := uint32(0), false
	for range r.g.indexCap {
		switch e := r.indexAt(p).Load(); e {
		case indexEmpty:
			if haveTomb {
				return 0, false, tomb, nil
			}
			return 0, false, p, nil
		case indexTomb:
			if !haveTomb {
				tomb, haveTomb = p, true
			}
		default:
			s := e - 1
			if s >= hw || r.desc32(s, dNameRef).Load() == 0 {
				return 0, false, 0, fmt.Errorf("%w: index entry %d names slot %d, which is not in use", errInconsistent, p, s)
			}
			if r.desc64(s, dHash).Load() == h && r.desc32(s, dMeta).Load()&^(0xff<<8) == want &&
				int(r.desc32(s, dNameLen).Load()) == len(name) && r.nameEquals(s, name) {
				return s, true, 0, nil
			}
		}
		p = (p + 1) & mask
	}
	if haveTomb {
		return 0, false, tomb, nil
	}
	return 0, false, 0, fmt.Errorf("%w: index has no empty entry", errInconsistent)
}

// nameEquals compares slot s's stored name with name (whose length already
// matched). A broken chain compares unequal.
func (r *region) nameEquals(s uint32, name string) bool {
	nhw := r.hdr32(hNameHW).Load()
	ref := r.desc32(s, dNameRef).Load()
	for i := 0; i < len(name); i += nameBlockData {
		if ref == 0 || ref-1 >= nhw {
			return false
		}
		b := ref - 1
		chunk := name[i:min(i+nameBlockData, len(name))]
		if string(r.blockData(b)[:len(chunk)]) != chunk {
			return false
		}
		ref = r.blockNext(b).Load()
	}
	return true
}

// readName returns slot s's name, or false if its chain is broken.
func (r *region) readName(s uint32) (string, bool) {
	n := int(r.desc32(s, dNameLen).Load())
	if n == 0 || n > MaxNameLen {
		return "", false
	}
	nhw := r.hdr32(hNameHW).Load()
	buf := make([]byte, 0, n)
	ref := r.desc32(s, dNameRef).Load()
	for len(buf) < n {
		if ref == 0 || ref-1 >= nhw {
			return "", false
		}
		b := ref - 1
		buf = append(buf, r.blockData(b)[:min(nameBlockData, n-len(buf))]...)
		ref = r.blockNext(b).Load()
	}
	return string(buf), true
}

// allocSlot takes a slot from the head of the free list, or a fresh one above
// the high-water mark. Inside begin/end.
func (r *region) allocSlot() (uint32, error) {
	if head := r.hdr32(hSlotFree).Load(); head != 0 {
		s := head - 1
		if s >= r.hdr32(hSlotHW).Load() || r.desc32(s, dNameRef).Load() != 0 {
			return 0, fmt.Errorf("%w: free list names slot %d, which is in use", errInconsistent, s)
		}
		next := r.desc32(s, dNext).Load()
		r.hdr32(hSlotFree).Store(next)
		if next == 0 {
			r.hdr32(hSlotTail).Store(0)
		}
		r.desc32(s, dNext).Store(0)
		return s, nil
	}
	hw := r.hdr32(hSlotHW).Load()
	if hw >= r.g.slotCap {
		return 0, fmt.Errorf("%w: no free slot although the counters say there is one", errInconsistent)
	}
	r.hdr32(hSlotHW).Store(hw + 1)
	return hw, nil
}

// allocName stores name in a chain of blocks and returns the first block + 1.
// Inside begin/end; hasRoom said there are enough blocks.
func (r *region) allocName(name string) (uint32, error) {
	n := blocksFor(len(name))
	refs := make([]uint32, 0, n)
	for range n {
		var b uint32
		if head := r.hdr32(hNameFree).Load(); head != 0 {
			b = head - 1
			if b >= r.hdr32(hNameHW).Load() {
				return 0, fmt.Errorf("%w: name free list names block %d past the high-water mark", errInconsistent, b)
			}
			r.hdr32(hNameFree).Store(r.blockNext(b).Load())
		} else {
			hw := r.hdr32(hNameHW).Load()
			if hw >= r.g.nameCap {
				return 0, fmt.Errorf("%w: no free name block although the counters say there is one", errInconsistent)
			}
			r.hdr32(hNameHW).Store(hw + 1)
			b = hw
		}
		r.hdr32(hNamesUsed).Add(1)
		refs = append(refs, b+1)
	}
	for i, ref := range refs {
		b := ref - 1
		data := r.blockData(b)
		chunk := name[i*nameBlockData : min((i+1)*nameBlockData, len(name))]
		copy(data, chunk)
		clear(data[len(chunk):])
		next := uint32(0)
		if i+1 < len(refs) {
			next = refs[i+1]
		}
		r.blockNext(b).Store(next)
	}
	return refs[0], nil
}

// freeSlot removes slot s from the index, gives its name blocks back, zeroes
// it and appends it to the free list. Inside begin/end.
func (r *region) freeSlot(s uint32) {
	// The index entry: probe from the hash until we meet s.
	mask := r.g.indexCap - 1
	p := uint32(r.desc64(s, dHash).Load()) & mask
	for range r.g.indexCap {
		e := r.indexAt(p).Load()
		if e == s+1 {
			r.indexAt(p).Store(indexTomb)
			r.hdr32(hIndexLive).Add(^uint32(0))
			r.hdr32(hIndexTombs).Add(1)
			break
		}
		if e == indexEmpty {
			break // not indexed (a repair may have dropped a duplicate)
		}
		p = (p + 1) & mask
	}
	ref := r.desc32(s, dNameRef).Load()
	r.desc32(s, dNameRef).Store(0)
	nhw := r.hdr32(hNameHW).Load()
	for range blocksFor(int(min(r.desc32(s, dNameLen).Load(), MaxNameLen))) {
		if ref == 0 || ref-1 >= nhw {
			break
		}
		b := ref - 1
		ref = r.blockNext(b).Load()
		r.blockNext(b).Store(r.hdr32(hNameFree).Load())
		r.hdr32(hNameFree).Store(b + 1)
		r.hdr32(hNamesUsed).Add(^uint32(0))
	}
	r.desc64(s, dHolders).Store(0)
	r.desc64(s, dHash).Store(0)
	r.desc32(s, dNameLen).Store(0)
	r.desc32(s, dMeta).Store(0)
	(*atomic.Uint64)(r.valuePtr(s)).Store(0)
	r.hdr32(hSlotsUsed).Add(^uint32(0))
	r.pushFree(s)
}

// pushFree appends s to the free list. FIFO, so that a slot is reused as late
// as possible: a handle used after its scope closed then hits a free slot
// rather than another stat for longer.
func (r *region) pushFree(s uint32) {
	r.desc32(s, dNext).Store(0)
	if tail := r.hdr32(hSlotTail).Load(); tail != 0 {
		r.desc32(tail-1, dNext).Store(s + 1)
	} else {
		r.hdr32(hSlotFree).Store(s + 1)
	}
	r.hdr32(hSlotTail).Store(s + 1)
}

// maybeRebuildIndex rebuilds the index once tombstones make probing long.
func (r *region) maybeRebuildIndex() {
	if r.hdr32(hIndexTombs).Load() > r.g.indexCap/4 {
		r.rebuildIndex()
	}
}

// rebuildIndex re-inserts every slot in use into an emptied index. Inside
// begin/end. Slots are trusted here (repair validates them first).
func (r *region) rebuildIndex() {
	clear(r.mem[r.g.indexOff : r.g.indexOff+4*uint64(r.g.indexCap)])
	mask := r.g.indexCap - 1
	live := uint32(0)
	for s := range r.hdr32(hSlotHW).Load() {
		if r.desc32(s, dNameRef).Load() == 0 {
			continue
		}
		p := uint32(r.desc64(s, dHash).Load()) & mask
		for r.indexAt(p).Load() != indexEmpty {
			p = (p + 1) & mask
		}
		r.indexAt(p).Store(s + 1)
		live++
	}
	r.hdr32(hIndexLive).Store(live)
	r.hdr32(hIndexTombs).Store(0)
}

// repair rebuilds every allocator structure from the descriptors, which are
// the source of truth: a slot whose descriptor or name chain does not check out,
// or that duplicates another's identity, is zeroed and freed; name blocks no
// valid slot uses are freed; the free lists, counters and index are rebuilt.
// Allocator lock held. Values of valid slots are untouched.
func (r *region) repair() {
	r.begin()
	hw := min(r.hdr32(hSlotHW).Load(), r.g.slotCap)
	nhw := min(r.hdr32(hNameHW).Load(), r.g.nameCap)
	r.hdr32(hSlotHW).Store(hw)
	r.hdr32(hNameHW).Store(nhw)
	r.hdr32(hSlotFree).Store(0)
	r.hdr32(hSlotTail).Store(0)
	r.hdr32(hNameFree).Store(0)
	clear(r.mem[r.g.indexOff : r.g.indexOff+4*uint64(r.g.indexCap)])
	r.hdr32(hIndexLive).Store(0)
	r.hdr32(hIndexTombs).Store(0)

	// Holder bits of generation entries nobody has are stale.
	var inUse uint64
	for i := range maxGenerations {
		switch r.genState(i).Load() {
		case genLive, genExited:
			inUse |= 1 << i
		case genFree:
		default:
			r.genState(i).Store(genFree)
		}
	}

	claimed := make([]uint64, (nhw+63)/64)
	isClaimed := func(b uint32) bool { return claimed[b/64]&(1<<(b%64)) != 0 }
	var chain []uint32
	var used, blocks uint32
	for s := range hw {
		ref := r.desc32(s, dNameRef).Load()
		if ref == 0 {
			r.zeroSlot(s)
			r.pushFree(s)
			continue
		}
		ok := true
		kind, _, owner, metaOK := unpackMeta(r.desc32(s, dMeta).Load())
		n := int(r.desc32(s, dNameLen).Load())
		holders := r.desc64(s, dHolders).Load() & inUse
		r.desc64(s, dHolders).Store(holders)
		if !metaOK || n == 0 || n > MaxNameLen || holders == 0 || (owner != 0 && holders != 1<<(owner-1)) {
			ok = false
		}
		chain = chain[:0]
		for j := 0; ok && j < blocksFor(n); j++ {
			if ref == 0 || ref-1 >= nhw || isClaimed(ref-1) {
				ok = false
				break
			}
			chain = append(chain, ref-1)
			ref = r.blockNext(ref - 1).Load()
		}
		var name string
		if ok {
			name, ok = r.readName(s)
		}
		for i, b := range chain { // a chain that loops on itself
			for _, c := range chain[:i] {
				ok = ok && b != c
			}
		}
		if ok {
			h := statHash(kind, owner, name)
			r.desc64(s, dHash).Store(h)
			if _, dup, pos, err := r.lookup(h, kind, owner, name); err == nil && !dup {
				r.indexAt(pos).Store(s + 1)
				r.hdr32(hIndexLive).Add(1)
			} else {
				ok = false
			}
		}
		if !ok {
			r.zeroSlot(s)
			r.pushFree(s)
			continue
		}
		for _, b := range chain {
			claimed[b/64] |= 1 << (b % 64)
		}
		r.desc32(s, dNext).Store(0)
		used++
		blocks += uint32(len(chain))
	}
	for b := range nhw {
		if !isClaimed(b) {
			r.blockNext(b).Store(r.hdr32(hNameFree).Load())
			r.hdr32(hNameFree).Store(b + 1)
		}
	}
	r.hdr32(hSlotsUsed).Store(used)
	r.hdr32(hNamesUsed).Store(blocks)
	r.end()
}

func (r *region) zeroSlot(s uint32) {
	r.desc64(s, dHolders).Store(0)
	r.desc64(s, dHash).Store(0)
	r.desc32(s, dNameRef).Store(0)
	r.desc32(s, dNameLen).Store(0)
	r.desc32(s, dMeta).Store(0)
	r.desc32(s, dNext).Store(0)
	(*atomic.Uint64)(r.valuePtr(s)).Store(0)
}

// sweep reclaims the stats of generations that exited or crashed, if any. The
// cheap part (testing the liveness locks) runs without the allocator lock.
func (r *region) sweep() (int, error) {
	if r.closed {
		return 0, nil
	}
	dead, err := r.deadMask()
	if err != nil || dead == 0 {
		return 0, err
	}
	var n int
	err = r.withLock(func() error {
		var err error
		n, err = r.sweepDead()
		return err
	})
	return n, err
}

// close gives up our generation entry. If another generation is live (a hot
// restart successor), our holds are released now and stats nobody else holds are
// freed. If we are the last, they are kept, with the entry marked exited, so that
// 'skiff stats' shows the final values; the next Open reclaims them. The mapping
// is detached (handles stay usable, privately) before the allocator lock is
// released, so no late update of ours lands in a slot someone reallocates. Closing
// the file then drops our locks.
func (r *region) close() error {
	if r.closed {
		return nil
	}
	err := shm.Lock(r.f, allocLockByte, r.timeout)
	locked := err == nil
	if locked {
		if reason := r.damage(); reason != "" {
			r.log.Warn("stats region: repairing", "path", r.path, "reason", reason)
			r.repair()
		}
		var others uint64
		if others, err = r.liveOthers(); err == nil && others != 0 {
			r.release(1 << r.self)
		} else if err == nil {
			r.begin()
			r.genState(r.self).Store(genExited)
			r.end()
		}
	}
	r.closed = true
	preserve := int(r.g.valuesOff + 8*uint64(min(r.hdr32(hSlotHW).Load(), r.g.slotCap)))
	if derr := r.m.Detach(preserve); err == nil {
		err = derr
	}
	if locked {
		r.unlock()
	}
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("stats region %s: close: %w", r.path, err)
	}
	return nil
}

func (r *region) liveOthers() (uint64, error) {
	var live uint64
	for i := range maxGenerations {
		if i == r.self || r.genState(i).Load() == genFree {
			continue
		}
		locked, err := shm.Locked(r.f, liveLockBase+int64(i))
		if err != nil {
			return 0, err
		}
		if locked {
			live |= 1 << i
		}
	}
	return live, nil
}
