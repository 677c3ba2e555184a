package stats

import (
	"fmt"
	"time"

	"github.com/skiffproxy/skiff/internal/shm"
)

// verify checks every allocator invariant of the region under its lock,
// without repairing anything.
func (r *region) verify() error {
	if err := shm.Lock(r.f, allocLockByte, 5*time.Second); err != nil {
		return err
	}
	defer r.unlock()
	if seq := r.u64(hSeq).Load(); seq&1 != 0 {
		return fmt.Errorf("seq %d is odd", seq)
	}
	if d := r.damage(); d != "" {
		return fmt.Errorf("damage: %s", d)
	}
	hw, nhw := r.hdr32(hSlotHW).Load(), r.hdr32(hNameHW).Load()
	blockOwner := map[uint32]uint32{}
	used, blocks := uint32(0), uint32(0)
	for s := range hw {
		ref := r.desc32(s, dNameRef).Load()
		if ref == 0 {
			if r.desc64(s, dHolders).Load() != 0 || r.desc32(s, dMeta).Load() != 0 {
				return fmt.Errorf("free slot %d has holders or meta", s)
			}
			continue
		}
		used++
		kind, _, owner, ok := unpackMeta(r.desc32(s, dMeta).Load())
		if !ok {
			return fmt.Errorf("slot %d: bad meta %#x", s, r.desc32(s, dMeta).Load())
		}
		if r.desc64(s, dHolders).Load() == 0 {
			return fmt.Errorf("slot %d in use without holders", s)
		}
		name, ok := r.readName(s)
		if !ok {
			return fmt.Errorf("slot %d: broken name chain", s)
		}
		for j := 0; j < blocksFor(len(name)); j++ {
			if other, dup := blockOwner[ref-1]; dup {
				return fmt.Errorf("name block %d used by slots %d and %d", ref-1, other, s)
			}
			blockOwner[ref-1] = s
			blocks++
			ref = r.blockNext(ref - 1).Load()
		}
		if r.desc64(s, dHash).Load() != statHash(kind, owner, name) {
			return fmt.Errorf("slot %d (%s): wrong hash", s, name)
		}
		got, found, _, err := r.lookup(statHash(kind, owner, name), kind, owner, name)
		if err != nil || !found || got != s {
			return fmt.Errorf("slot %d (%s): index finds %d, %v, %v", s, name, got, found, err)
		}
	}
	if used != r.hdr32(hSlotsUsed).Load() || blocks != r.hdr32(hNamesUsed).Load() {
		return fmt.Errorf("counted %d slots, %d blocks; header says %d, %d", used, blocks,
			r.hdr32(hSlotsUsed).Load(), r.hdr32(hNamesUsed).Load())
	}
	free, last := uint32(0), uint32(0)
	for ref := r.hdr32(hSlotFree).Load(); ref != 0; ref = r.desc32(ref-1, dNext).Load() {
		if ref > hw || r.desc32(ref-1, dNameRef).Load() != 0 {
			return fmt.Errorf("free list holds slot %d, in use or past hw", ref-1)
		}
		if free++; free > hw {
			return fmt.Errorf("free list loops")
		}
		last = ref
	}
	if free != hw-used || last != r.hdr32(hSlotTail).Load() {
		return fmt.Errorf("free list: %d slots ending at %d; want %d ending at tail %d", free, last, hw-used, r.hdr32(hSlotTail).Load())
	}
	freeBlocks := uint32(0)
	for ref := r.hdr32(hNameFree).Load(); ref != 0; ref = r.blockNext(ref - 1).Load() {
		if ref > nhw {
			return fmt.Errorf("name free list past hw")
		}
		if _, inUse := blockOwner[ref-1]; inUse {
			return fmt.Errorf("name block %d is free and in use", ref-1)
		}
		if freeBlocks++; freeBlocks > nhw {
			return fmt.Errorf("name free list loops")
		}
	}
	if freeBlocks != nhw-blocks {
		return fmt.Errorf("name free list has %d blocks, want %d", freeBlocks, nhw-blocks)
	}
	live, tombs := uint32(0), uint32(0)
	for i := range r.g.indexCap {
		switch r.indexAt(i).Load() {
		case indexEmpty:
		case indexTomb:
			tombs++
		default:
			live++
		}
	}
	if live != used || live != r.hdr32(hIndexLive).Load() || tombs != r.hdr32(hIndexTombs).Load() {
		return fmt.Errorf("index: %d live, %d tombstones; header says %d, %d; %d slots used", live, tombs,
			r.hdr32(hIndexLive).Load(), r.hdr32(hIndexTombs).Load(), used)
	}
	return nil
}

// crash models the death of the region's process: its mapping and descriptor
// go away (and with them its locks), nothing is cleaned up.
func (r *region) crash() {
	r.m.Detach(0)
	r.f.Close()
	r.closed = true
}
