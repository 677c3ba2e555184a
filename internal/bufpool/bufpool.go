// Package bufpool hands out reusable byte buffers in a few fixed size classes.
//
// The data path copies bytes in chunks; allocating a chunk per read would make the
// garbage collector's work proportional to traffic. A Pool keeps released buffers
// in one sync.Pool per size class, so in steady state Get and Put allocate nothing
// (sync.Pool stores the *Buffer pointer itself, which needs no boxing).
//
// # Size classes
//
//   - Small (4 KiB): one memory page; enough for a typical request head or a short
//     message, and cheap to hold for connections that mostly sit idle.
//   - Medium (16 KiB): the largest TLS record payload (2^14 bytes) and HTTP/2's default
//     maximum frame size. A crypto/tls Read never returns more than one record, so a
//     larger buffer on a TLS connection would be memory held for nothing.
//   - Large (64 KiB): the largest aggregate that GSO/GRO and loopback hand to a
//     socket at once, so one read drains a typical burst in one system call. Larger
//     chunks save few system calls but multiply the memory held by busy connections.
//
// A request above Large gets a Large buffer: buffers are for streaming chunks, not
// for holding whole messages, and a caller that needs more loops.
//
// # Ownership
//
// The caller owns a buffer from the Get that returned it until it passes it to Put;
// after Put it must not touch the buffer or any slice of B again, because the next
// Get (in any goroutine) may hand the same memory to someone else. The caller may
// re-slice B freely (shorten it, advance it); Put restores B to the full class
// size. Put panics on a buffer that did not come from this Pool (including a
// *Buffer built by hand) and on a second Put of the same buffer before it was got
// again. The double-Put check is a flag, not a guarantee: if another goroutine Gets
// the buffer between the two Puts, the second one cannot be told from a valid Put.
package bufpool

import "sync"

// Size classes, smallest first. Get returns a buffer of one of these lengths.
const (
	Small  = 4 << 10
	Medium = 16 << 10
	Large  = 64 << 10
)

var classSizes = [...]int{Small, Medium, Large}

// Buffer is a pooled byte slice. B has the length of its size class when Get
// returns it.
type Buffer struct {
	B []byte

	full  []byte // B as allocated; Put restores it, whatever the caller did to B
	pool  *Pool  // the Pool this buffer belongs to; detects foreign Puts
	class uint8  // index into classSizes
	free  bool   // true while the buffer sits in the pool; detects double Puts
}

// Pool is a set of buffer pools, one per size class. The zero value is ready to
// use; New exists for symmetry with the rest of the code base. A Pool must not be
// copied after first use and is safe for concurrent use.
type Pool struct {
	classes [len(classSizes)]sync.Pool
}

// New returns an empty Pool.
func New() *Pool { return &Pool{} }

// classOf returns the index of the smallest class that holds n bytes, or the
// largest class if none does.
func classOf(n int) int {
	for i, size := range classSizes {
		if n <= size {
			return i
		}
	}
	return len(classSizes) - 1
}

// Get returns a buffer from the smallest class of at least n bytes (the largest
// class if n is bigger than Large). len(b.B) is the class size. The caller owns the
// buffer until it passes it to Put.
func (p *Pool) Get(n int) *Buffer {
	c := classOf(n)
	if v := p.classes[c].Get(); v != nil {
		b := v.(*Buffer)
		b.free = false
		return b
	}
	full := make([]byte, classSizes[c])
	return &Buffer{B: full, full: full, pool: p, class: uint8(c)}
}

// Put returns b to the pool. b.B is restored to its full length. Put panics if b
// is nil, did not come from this Pool, or is already in it.
func (p *Pool) Put(b *Buffer) {
	switch {
	case b == nil:
		panic("bufpool: Put of a nil buffer")
	case b.pool != p:
		panic("bufpool: Put of a buffer that did not come from this pool")
	case b.free:
		panic("bufpool: Put of a buffer that is already in the pool (double Put)")
	}
	b.free = true
	b.B = b.full
	p.classes[b.class].Put(b)
}
