package stats

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// The region's layout, version 1. All integers are in the host's byte order
// (skiff runs on little-endian hosts; a file from the other byte order is
// refused by the byte-order mark). Offsets are from the start of the file.
//
// Header (one 4096-byte page):
//
//	   0  [8]byte magic "SKFSTATS"
//	   8  u32 layout version (1)
//	  12  u32 byte-order mark 0x01020304
//	  16  u64 file size
//	  24  u32 slot capacity N
//	  28  u32 name-block capacity B
//	  32  u32 index capacity I (a power of two, >= 2N)
//	  36  u32 name-block size (64)
//	  40  u64 offset of the values array
//	  48  u64 offset of the descriptor array
//	  56  u64 offset of the name blocks
//	  64  u64 offset of the index
//	  72  u64 creation time (Unix ns)
//	  80  u32 CRC-32C of bytes [0,80): the fields above never change
//	 128  u64 seq: odd while an allocator operation is in progress
//	 136  u64 last generation number handed out
//	 144  u32 slot high-water mark (slots [0,hw) have been used)
//	 148  u32 free-slot list head (slot+1, 0 = empty), FIFO
//	 152  u32 free-slot list tail
//	 156  u32 slots in use
//	 160  u32 name-block high-water mark
//	 164  u32 free name-block list head (block+1)
//	 168  u32 name blocks in use
//	 172  u32 live index entries
//	 176  u32 index tombstones
//	 256  (1 byte) the allocator lock (an OFD lock on this byte; no data)
//	 512  (64 bytes) liveness locks: byte 512+i is held by the live owner of generation entry i
//	1024  generation table: 64 entries of 32 bytes:
//	        +0 u64 generation, +8 u64 pid, +16 u64 start (Unix ns),
//	        +24 u32 state (0 free, 1 live, 2 exited keeping its stats for inspection)
//
// Then, each section starting on a 64-byte boundary:
//
//	values       N x 8 bytes: the stat values, one u64/i64 word per slot, nothing else
//	descriptors  N x 32 bytes, one per slot:
//	        +0 u64 holders (bit i: generation entry i holds the stat)
//	        +8 u64 FNV-1a hash of (kind, owner, name)
//	       +16 u32 first name block + 1 (0: the slot is free)
//	       +20 u32 name length in bytes
//	       +24 u32 kind | import mode<<8 | owner<<16 (owner: generation entry + 1 of a
//	               NeverImport gauge, which is private to its generation; 0: shared)
//	       +28 u32 next free slot + 1 (free-list link)
//	name blocks  B x 64 bytes: +0 u32 next block + 1 (0: last), +4 60 bytes of name
//	index        I x u32: open addressing, linear probing on the hash;
//	             0 empty, 0xFFFFFFFF tombstone, else slot+1
const (
	layoutVersion = 1
	byteOrderMark = 0x01020304
	magic         = "SKFSTATS"

	headerSize    = 4096
	sectionAlign  = 64
	descSize      = 32
	nameBlockSize = 64
	nameBlockData = nameBlockSize - 4

	// MaxNameLen is the longest stat name the region stores. Longer names get a
	// process-local stat (counted in stats.overflow).
	MaxNameLen = 4096

	maxGenerations = 64

	minCapacity = 16
	maxCapacity = 1 << 24
	// DefaultCapacity is the number of stats (counters and gauges) a region
	// created by Open holds unless WithCapacity says otherwise: room for 10,000
	// clusters of 20 stats each, twice over, plus listeners. The file is sparse,
	// so untouched capacity costs address space, not memory or disk: about 176
	// bytes of file per stat (value, descriptor, two name blocks, index).
	DefaultCapacity = 1 << 19
)

// Header field offsets.
const (
	hMagic      = 0
	hVersion    = 8
	hByteOrder  = 12
	hFileSize   = 16
	hSlotCap    = 24
	hNameCap    = 28
	hIndexCap   = 32
	hBlockSize  = 36
	hValuesOff  = 40
	hDescOff    = 48
	hNamesOff   = 56
	hIndexOff   = 64
	hCreated    = 72
	hCRC        = 80
	hSeq        = 128
	hLastGen    = 136
	hSlotHW     = 144
	hSlotFree   = 148
	hSlotTail   = 152
	hSlotsUsed  = 156
	hNameHW     = 160
	hNameFree   = 164
	hNamesUsed  = 168
	hIndexLive  = 172
	hIndexTombs = 176

	allocLockByte = 256
	liveLockBase  = 512
	genTableOff   = 1024
	genEntrySize  = 32

	geOff   = 0
	gePID   = 8
	geStart = 16
	geState = 24
)

// Descriptor field offsets.
const (
	dHolders = 0
	dHash    = 8
	dNameRef = 16
	dNameLen = 20
	dMeta    = 24
	dNext    = 28
)

const (
	indexEmpty = 0
	indexTomb  = 0xFFFFFFFF
)

// Generation entry states.
const (
	genFree   = 0
	genLive   = 1
	genExited = 2
)

// ErrCorrupt is returned (wrapped) for a stats file that is not a valid region:
// bad magic, a header that does not add up, a truncated file. Open replaces such
// a file; ReadFile reports it.
var ErrCorrupt = errors.New("corrupt stats region")

// ErrFull is returned (wrapped) when the region has no room for another stat or
// name. The stat is then kept in process memory and stats.overflow counts it.
var ErrFull = errors.New("stats region full")

// VersionError is returned by Open and ReadFile for a region written with a
// different layout version (or byte order) than this skiff reads. Such a file
// is never modified.
type VersionError struct {
	Path      string
	Version   uint32 // the file's layout version
	ByteOrder bool   // the file was written on a host of the other byte order
}

func (e *VersionError) Error() string {
	if e.ByteOrder {
		return fmt.Sprintf("stats region %s was written on a host of the other byte order; this skiff cannot read it", e.Path)
	}
	return fmt.Sprintf("stats region %s has layout version %d, this skiff reads version %d: it belongs to another skiff release; "+
		"inspect it with that release's 'skiff stats', or remove the file if no skiff uses it", e.Path, e.Version, layoutVersion)
}

// geometry is where a region's sections are; it is fixed when the file is
// created.
type geometry struct {
	slotCap, nameCap, indexCap                       uint32
	valuesOff, descOff, namesOff, indexOff, fileSize uint64
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) &^ (a - 1) }

func layoutFor(slotCap, nameCap, indexCap uint32) geometry {
	g := geometry{slotCap: slotCap, nameCap: nameCap, indexCap: indexCap}
	g.valuesOff = headerSize
	g.descOff = alignUp(g.valuesOff+8*uint64(slotCap), sectionAlign)
	g.namesOff = alignUp(g.descOff+descSize*uint64(slotCap), sectionAlign)
	g.indexOff = alignUp(g.namesOff+nameBlockSize*uint64(nameCap), sectionAlign)
	g.fileSize = alignUp(g.indexOff+4*uint64(indexCap), 4096)
	return g
}

// geometryFor returns the layout of a region for capacity stats: two name
// blocks (120 bytes of name) per stat and an index at most half full.
func geometryFor(capacity int) geometry {
	c := uint32(min(max(capacity, minCapacity), maxCapacity))
	return layoutFor(c, 2*c, 1<<bits.Len32(2*c-1))
}

// encodeHeader returns the header page of a new, empty region.
func encodeHeader(g geometry, created int64) []byte {
	h := make([]byte, headerSize)
	ne := binary.NativeEndian
	copy(h[hMagic:], magic)
	ne.PutUint32(h[hVersion:], layoutVersion)
	ne.PutUint32(h[hByteOrder:], byteOrderMark)
	ne.PutUint64(h[hFileSize:], g.fileSize)
	ne.PutUint32(h[hSlotCap:], g.slotCap)
	ne.PutUint32(h[hNameCap:], g.nameCap)
	ne.PutUint32(h[hIndexCap:], g.indexCap)
	ne.PutUint32(h[hBlockSize:], nameBlockSize)
	ne.PutUint64(h[hValuesOff:], g.valuesOff)
	ne.PutUint64(h[hDescOff:], g.descOff)
	ne.PutUint64(h[hNamesOff:], g.namesOff)
	ne.PutUint64(h[hIndexOff:], g.indexOff)
	ne.PutUint64(h[hCreated:], uint64(created))
	ne.PutUint32(h[hCRC:], crc32.Checksum(h[:hCRC], crc32.MakeTable(crc32.Castagnoli)))
	return h
}

// parseHeader checks the immutable part of a header page read from a file of
// fileSize bytes and returns its geometry. A wrong version is a *VersionError;
// anything else wrong wraps ErrCorrupt.
func parseHeader(h []byte, fileSize int64, path string) (geometry, error) {
	corrupt := func(format string, args ...any) (geometry, error) {
		return geometry{}, fmt.Errorf("%w %s: %s", ErrCorrupt, path, fmt.Sprintf(format, args...))
	}
	if len(h) < headerSize {
		return corrupt("%d bytes, shorter than the %d-byte header", len(h), headerSize)
	}
	if string(h[hMagic:hMagic+8]) != magic {
		return corrupt("bad magic %q", h[hMagic:hMagic+8])
	}
	ne := binary.NativeEndian
	if bom := ne.Uint32(h[hByteOrder:]); bom != byteOrderMark {
		if bits.ReverseBytes32(bom) == byteOrderMark {
			return geometry{}, &VersionError{Path: path, ByteOrder: true}
		}
		return corrupt("bad byte-order mark %#x", bom)
	}
	if v := ne.Uint32(h[hVersion:]); v != layoutVersion {
		return geometry{}, &VersionError{Path: path, Version: v}
	}
	if got, want := ne.Uint32(h[hCRC:]), crc32.Checksum(h[:hCRC], crc32.MakeTable(crc32.Castagnoli)); got != want {
		return corrupt("header checksum %#x, want %#x", got, want)
	}
	slotCap, nameCap, indexCap := ne.Uint32(h[hSlotCap:]), ne.Uint32(h[hNameCap:]), ne.Uint32(h[hIndexCap:])
	if slotCap < minCapacity || slotCap > maxCapacity || nameCap == 0 || nameCap > 4*maxCapacity ||
		indexCap&(indexCap-1) != 0 || uint64(indexCap) < 2*uint64(slotCap) || indexCap > 4*maxCapacity ||
		ne.Uint32(h[hBlockSize:]) != nameBlockSize {
		return corrupt("impossible capacities (slots %d, name blocks %d, index %d)", slotCap, nameCap, indexCap)
	}
	g := layoutFor(slotCap, nameCap, indexCap)
	if ne.Uint64(h[hValuesOff:]) != g.valuesOff || ne.Uint64(h[hDescOff:]) != g.descOff ||
		ne.Uint64(h[hNamesOff:]) != g.namesOff || ne.Uint64(h[hIndexOff:]) != g.indexOff ||
		ne.Uint64(h[hFileSize:]) != g.fileSize {
		return corrupt("section offsets do not match the capacities")
	}
	if fileSize < int64(g.fileSize) {
		return corrupt("truncated: %d bytes, the header says %d", fileSize, g.fileSize)
	}
	return g, nil
}

// Kinds and modes as stored in a descriptor's meta word.
func packMeta(kind Kind, mode ImportMode, owner uint8) uint32 {
	return uint32(kind) | uint32(mode)<<8 | uint32(owner)<<16
}

func unpackMeta(m uint32) (kind Kind, mode ImportMode, owner uint8, ok bool) {
	kind, mode, owner = Kind(m&0xff), ImportMode(m>>8&0xff), uint8(m>>16&0xff)
	ok = (kind == KindCounter || kind == KindGauge) && mode <= NeverImport && owner <= maxGenerations &&
		m>>24 == 0 && (owner == 0) == (mode == Accumulate || kind == KindCounter) && (kind == KindGauge || mode == Accumulate)
	return kind, mode, owner, ok
}

func blocksFor(nameLen int) int { return (nameLen + nameBlockData - 1) / nameBlockData }

// statHash is FNV-1a over what identifies a slot. It must be the same in every
// process, so it is not seeded.
func statHash(kind Kind, owner uint8, name string) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	h = (h ^ uint64(kind)) * prime
	h = (h ^ uint64(owner)) * prime
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * prime
	}
	return h
}
