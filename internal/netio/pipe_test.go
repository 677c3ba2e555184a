package netio

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fdOpen reports whether fd is an open descriptor.
func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return !errors.Is(err, unix.EBADF)
}

func pipeSize(t *testing.T, p *pipe) int {
	t.Helper()
	n, err := unix.FcntlInt(uintptr(p.r), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatalf("F_GETPIPE_SZ: %v", err)
	}
	return n
}

func TestPipePoolDefaultSize(t *testing.T) {
	pp, err := NewPipePool(0)
	if err != nil {
		t.Fatalf("NewPipePool: %v", err)
	}
	if pp.Size() != DefaultPipeSize {
		t.Fatalf("Size() = %d, want %d", pp.Size(), DefaultPipeSize)
	}
	p, err := pp.get()
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	defer p.destroy()
	// The kernel refuses sizes above pipe-max-size to unprivileged users; then the
	// pipe keeps its default capacity, which is also correct behaviour.
	got := pipeSize(t, p)
	if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
		if max, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && max >= DefaultPipeSize && got != DefaultPipeSize {
			t.Errorf("pipe capacity %d, want %d", got, DefaultPipeSize)
		}
	}
	if flags, err := unix.FcntlInt(uintptr(p.r), unix.F_GETFL, 0); err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Errorf("pipe read end not O_NONBLOCK (flags %#x, err %v)", flags, err)
	}
	if flags, err := unix.FcntlInt(uintptr(p.w), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("pipe write end not close-on-exec (flags %#x, err %v)", flags, err)
	}
}

func TestPipePoolCustomSize(t *testing.T) {
	pp, err := NewPipePool(256 << 10)
	if err != nil {
		t.Fatalf("NewPipePool: %v", err)
	}
	p, err := pp.get()
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	defer p.destroy()
	if got := pipeSize(t, p); got != 256<<10 {
		t.Errorf("pipe capacity %d, want %d", got, 256<<10)
	}
}

func TestPipePoolClosesNonEmptyPipe(t *testing.T) {
	pp, err := NewPipePool(0)
	if err != nil {
		t.Fatalf("NewPipePool: %v", err)
	}
	p, err := pp.get()
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if _, err := unix.Write(p.w, []byte("left over")); err != nil {
		t.Fatalf("write: %v", err)
	}
	p.data = len("left over")
	fds := p.pipeFDs
	pp.put(p)
	if fdOpen(fds.r) || fdOpen(fds.w) {
		t.Fatal("a pipe holding data was pooled instead of closed")
	}
}

func TestPipeDrain(t *testing.T) {
	pp, err := NewPipePool(0)
	if err != nil {
		t.Fatalf("NewPipePool: %v", err)
	}
	p, err := pp.get()
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	want := bytes.Repeat([]byte("0123456789abcdef"), 3000)
	n, err := unix.Write(p.w, want)
	if err != nil || n != len(want) {
		t.Fatalf("write: %d, %v", n, err)
	}
	p.data = n
	got, err := p.drain()
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	if !bytes.Equal(got, want) || p.data != 0 {
		t.Fatalf("drain returned %d bytes (data left %d), want %d", len(got), p.data, len(want))
	}
	pp.put(p)
}

func TestDroppedPipeIsClosed(t *testing.T) {
	pp := &PipePool{size: DefaultPipeSize}
	p, err := pp.newPipe()
	if err != nil {
		t.Fatalf("newPipe: %v", err)
	}
	fds := p.pipeFDs
	p = nil
	_ = p
	// The cleanup runs on its own goroutine some time after a collection finds
	// the pipe unreachable; give it a bounded number of chances.
	for range 200 {
		runtime.GC()
		if !fdOpen(fds.r) && !fdOpen(fds.w) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("descriptors of an unreachable pipe were not closed")
}
