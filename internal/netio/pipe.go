package netio

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// DefaultPipeSize is the capacity NewPipePool asks for when given 0: the same 1 MiB
// Go's runtime uses for its own splice pipes, so one splice(2) call can move a
// large burst while a proxy pair still holds at most one pipe per direction.
const DefaultPipeSize = 1 << 20

// PipePool keeps kernel pipes for splice(2). A pipe is the kernel-side buffer that
// splice moves bytes through (socket -> pipe -> socket) without copying them into
// user space; creating one costs two file descriptors and three system calls, so
// pipes are reused.
//
// Only empty pipes are pooled: a pipe still holding bytes is closed instead, because
// those bytes belong to a stream that is gone. Pipes the sync.Pool drops (it empties
// itself across garbage collections) have their descriptors closed by a cleanup.
// A PipePool is safe for concurrent use.
type PipePool struct {
	size int // capacity asked for with F_SETPIPE_SZ, and the length of each splice
	pool sync.Pool
}

// NewPipePool returns a pool of pipes of size bytes (DefaultPipeSize if size <= 0).
// It creates one pipe at once to find out whether pipes can be made here; an error
// means splice cannot be used and copies must go through buffers (run pairs with a
// nil PipePool). If the kernel refuses the size (it is above
// /proc/sys/fs/pipe-max-size, or the user's pipe quota is spent), pipes keep the
// kernel's default capacity: splice still works, in more system calls.
func NewPipePool(size int) (*PipePool, error) {
	if size <= 0 {
		size = DefaultPipeSize
	}
	pp := &PipePool{size: size}
	p, err := pp.newPipe()
	if err != nil {
		return nil, err
	}
	pp.put(p)
	return pp, nil
}

// Size returns the pipe capacity the pool asks for.
func (pp *PipePool) Size() int { return pp.size }

// pipeFDs are a pipe's descriptors. They are kept apart from pipe so a cleanup can
// hold them without keeping the pipe itself reachable.
type pipeFDs struct{ r, w int }

func (f pipeFDs) close() {
	unix.Close(f.r)
	unix.Close(f.w)
}

// pipe is one kernel pipe and the number of bytes spliced into it and not yet out.
type pipe struct {
	pipeFDs
	data    int
	cleanup runtime.Cleanup
}

func (pp *PipePool) newPipe() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("netio: creating splice pipe: %w", os.NewSyscallError("pipe2", err))
	}
	// Ignore errors: a pipe of the default capacity works, in more system calls.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pp.size)
	p := &pipe{pipeFDs: pipeFDs{r: fds[0], w: fds[1]}}
	p.cleanup = runtime.AddCleanup(p, pipeFDs.close, p.pipeFDs)
	return p, nil
}

// get returns an empty pipe, creating one if the pool has none.
func (pp *PipePool) get() (*pipe, error) {
	if v := pp.pool.Get(); v != nil {
		return v.(*pipe), nil
	}
	return pp.newPipe()
}

// put returns p to the pool if it is empty and closes it otherwise. The caller
// must not use p afterwards.
func (pp *PipePool) put(p *pipe) {
	if p.data != 0 {
		p.destroy()
		return
	}
	pp.pool.Put(p)
}

// destroy closes the pipe's descriptors now instead of waiting for the cleanup.
func (p *pipe) destroy() {
	p.cleanup.Stop()
	p.close()
}

// drain reads the pipe's contents into a new slice. It is used only when a pair
// pauses, so the allocation does not matter.
func (p *pipe) drain() ([]byte, error) {
	b := make([]byte, p.data)
	off := 0
	for off < len(b) {
		n, err := unix.Read(p.r, b[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return b[:off], fmt.Errorf("netio: draining splice pipe: %w", os.NewSyscallError("read", err))
		}
		if n == 0 { // cannot happen: we hold the write end
			return b[:off], fmt.Errorf("netio: draining splice pipe: %d bytes missing", len(b)-off)
		}
		off += n
		p.data -= n
	}
	return b, nil
}
