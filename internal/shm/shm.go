// Package shm maps a file into memory shared between processes and provides the
// locks those processes coordinate with. It knows nothing about what the file
// holds; internal/stats lays its region out on top of it.
//
// Locks are Linux open-file-description (OFD) byte-range locks. Unlike flock(2)
// they can cover single bytes, so one file carries many independent locks; unlike
// classic POSIX record locks they belong to the open file (one os.File), not to
// the process, so two Mappings of one file in one process exclude each other just
// as two processes do, and closing an unrelated descriptor of the same file does
// not drop them. The kernel releases them when the last reference to the open
// file goes away, which includes the process exiting or crashing: a lock is never
// left held by a dead process. A shared mapping is such a reference: locks last
// until the os.File is closed and the Mapping detached (or the process ends).
//
// A mapped region must never be unmapped while pointers into it may still be
// used (stat handles are such pointers). Detach therefore does not unmap: it
// replaces the file's pages with private anonymous memory at the same address,
// so that late users of old pointers write into memory nobody else sees.
package shm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mapping is a file mapped shared and read-write.
type Mapping struct {
	mu       sync.Mutex
	mem      []byte
	detached bool
}

// Map maps the first size bytes of f, shared and read-write. The file must be
// at least size bytes long (accessing a page past the end of the file raises
// SIGBUS), which the caller checks before mapping.
func Map(f *os.File, size int) (*Mapping, error) {
	if size <= 0 {
		return nil, fmt.Errorf("shm: map %s: size %d", f.Name(), size)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("shm: map: %w", err)
	}
	if fi.Size() < int64(size) {
		return nil, fmt.Errorf("shm: map %s: file has %d bytes, need %d", f.Name(), fi.Size(), size)
	}
	var p unsafe.Pointer
	err = control(f, func(fd uintptr) error {
		var merr error
		p, merr = unix.MmapPtr(int(fd), 0, nil, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		return merr
	})
	if err != nil {
		return nil, fmt.Errorf("shm: mmap %s: %w", f.Name(), err)
	}
	return &Mapping{mem: unsafe.Slice((*byte)(p), size)}, nil
}

// Bytes returns the mapped memory. It stays valid (and addressable) for the
// life of the process, also after Detach.
func (m *Mapping) Bytes() []byte { return m.mem }

// Detach ends the sharing: it copies the first preserve bytes aside, replaces
// the whole mapping, at the same address, with private anonymous memory, and
// copies them back. Pointers into the mapping stay valid; what is written
// through them afterwards is no longer seen by other processes, and updates
// made by other goroutines while Detach runs may be lost. The address range
// stays reserved until the process exits. Detach is idempotent.
func (m *Mapping) Detach(preserve int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.detached {
		return nil
	}
	preserve = min(max(preserve, 0), len(m.mem))
	saved := append([]byte(nil), m.mem[:preserve]...)
	_, err := unix.MmapPtr(-1, 0, unsafe.Pointer(unsafe.SliceData(m.mem)), uintptr(len(m.mem)),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("shm: detach: %w", err)
	}
	copy(m.mem, saved)
	m.detached = true
	return nil
}

// Uint64 returns the 8-byte word at off in b for atomic use. It panics if the
// word is out of range or not 8-byte aligned: callers validate offsets read from
// a file before they get here.
func Uint64(b []byte, off int) *atomic.Uint64 {
	return (*atomic.Uint64)(word(b, off, 8))
}

// Int64 is Uint64 for a signed word.
func Int64(b []byte, off int) *atomic.Int64 {
	return (*atomic.Int64)(word(b, off, 8))
}

// Uint32 returns the 4-byte word at off in b for atomic use, with the checks of
// Uint64.
func Uint32(b []byte, off int) *atomic.Uint32 {
	return (*atomic.Uint32)(word(b, off, 4))
}

func word(b []byte, off, size int) unsafe.Pointer {
	if off < 0 || off > len(b)-size {
		panic(fmt.Sprintf("shm: word at %d out of range [0,%d)", off, len(b)))
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%uintptr(size) != 0 {
		panic(fmt.Sprintf("shm: word at %d not %d-byte aligned", off, size))
	}
	return p
}

// ErrLockTimeout is returned (wrapped) by Lock when the lock stayed held by
// another open file for the whole timeout.
var ErrLockTimeout = errors.New("lock held by another process")

// TryLock takes the exclusive lock on byte off of f without waiting. It
// reports false if another open file holds it. Taking a lock f already holds
// succeeds.
func TryLock(f *os.File, off int64) (bool, error) {
	err := fcntlLock(f, unix.F_OFD_SETLK, unix.F_WRLCK, off)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES):
		return false, nil
	}
	return false, fmt.Errorf("shm: lock byte %d of %s: %w", off, f.Name(), err)
}

// Lock takes the exclusive lock on byte off of f, polling for at most timeout.
// Polling rather than F_OFD_SETLKW keeps a wedged holder from parking an OS
// thread forever and lets the caller report who is in the way.
func Lock(f *os.File, off int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	wait := 20 * time.Microsecond
	for {
		ok, err := TryLock(f, off)
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("shm: lock byte %d of %s: %w for %v", off, f.Name(), ErrLockTimeout, timeout)
		}
		time.Sleep(wait)
		wait = min(2*wait, 5*time.Millisecond)
	}
}

// Unlock releases the lock on byte off of f.
func Unlock(f *os.File, off int64) error {
	if err := fcntlLock(f, unix.F_OFD_SETLK, unix.F_UNLCK, off); err != nil {
		return fmt.Errorf("shm: unlock byte %d of %s: %w", off, f.Name(), err)
	}
	return nil
}

// Locked reports whether another open file holds a lock on byte off of f. It
// works on a read-only f, so an inspector can ask without being able to write.
func Locked(f *os.File, off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: off, Len: 1}
	err := control(f, func(fd uintptr) error { return unix.FcntlFlock(fd, unix.F_OFD_GETLK, &lk) })
	if err != nil {
		return false, fmt.Errorf("shm: test lock on byte %d of %s: %w", off, f.Name(), err)
	}
	return lk.Type != unix.F_UNLCK, nil
}

func fcntlLock(f *os.File, cmd int, typ int16, off int64) error {
	lk := unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: off, Len: 1}
	return control(f, func(fd uintptr) error { return unix.FcntlFlock(fd, cmd, &lk) })
}

// control runs fn with f's descriptor without switching f to blocking mode (as
// f.Fd would).
func control(f *os.File, fn func(fd uintptr) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(fd) }); err != nil {
		return err
	}
	return ferr
}
