package netio

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/skiffproxy/skiff/internal/stats"
)

// The data path's system calls on non-blocking sockets and pipes are made with
// syscall.RawSyscall6, which, unlike the syscall.Syscall behind unix.Read and
// net.Conn, does not tell the Go scheduler that the goroutine entered a system
// call. These calls never block (a socket with nothing to read says EAGAIN, and
// the goroutine then waits in the runtime's poller through syscall.RawConn), so
// the scheduler has nothing to gain from knowing, and telling it costs: when
// every P was idle, the runtime's monitor thread (sysmon) sleeps until woken,
// and the next goroutine to enter a system call wakes it and makes it poll every
// 20 µs again for a millisecond or more, a thread wake-up each time. A proxy
// under load goes idle between bursts thousands of times a second, so with
// net.Conn's calls sysmon woke about once per ten requests (perf stat, h1ka of
// ../shared/bench with GOMAXPROCS=1) and made about 40 % of the proxy's context
// switches. With raw calls it wakes about a hundred times a second.
//
// Sockets are read with recvfrom(2) and written with sendto(2), as HAProxy
// does, rather than read(2) and write(2): the socket calls skip the file layer
// (the position lock, rw_verify_area, the security hook), which was 3-4 % of
// the proxy's kernel time for HTTP/2 requests (perf, h2c of ../shared/bench),
// and sendto's MSG_NOSIGNAL spares the process a SIGPIPE when the peer is gone.

// rawRead is recvfrom(2) without an address on a non-blocking socket.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(ptr), uintptr(len(p)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	raceRead(p, int(n))
	return int(n), 0
}

// rawWrite is sendto(2) without an address on a non-blocking socket.
func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) { return rawSend(fd, p, 0) }

// rawSend is rawWrite with more flags (MSG_MORE).
func rawSend(fd uintptr, p []byte, flags int) (int, syscall.Errno) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	raceWrite(p)
	n, _, e := syscall.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(ptr), uintptr(len(p)), uintptr(unix.MSG_NOSIGNAL|flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// rawSplice is splice(2) between non-blocking descriptors without offsets.
func rawSplice(in, out uintptr, n int, flags uint) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, in, 0, out, 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// Conn is a TCP connection whose Read and Write make their system calls
// raw (see above) and wait in the runtime's poller like net.Conn's. Everything
// else, deadlines and Close included, is the connection's under it: a
// *net.TCPConn (NewConn), or a descriptor Accept or Dial made (see socket.go).
// Read and Write return the errors net.Conn's would: io.EOF at the end of the
// stream, and *net.OpError values (wrapping os.ErrDeadlineExceeded,
// net.ErrClosed or the *os.SyscallError) otherwise. A Conn allocates nothing
// per call.
//
// Like net.Conn, Read and Write may run concurrently with each other, but each
// of them on one goroutine at a time.
type Conn struct {
	tcpConn
	rc syscall.RawConn

	rfn   func(fd uintptr) bool // c.read, for Read (each made on first use)
	rbuf  []byte
	rn    int
	rerr  syscall.Errno
	wfn   func(fd uintptr) bool
	wbuf  []byte
	wn    int
	werr  syscall.Errno
	isEOF bool
	wrfn  func(fd uintptr) bool // WriteRead's
	wfull bool                  // WriteRead's write met a full socket buffer

	nonblock   bool // SetNonblockingReads
	wouldBlock bool // the last Read found the socket empty while nonblock

	counting bool          // CountBytes was called
	tx, rx   stats.Counter // CountBytes'
}

// tcpConn is what a Conn takes from the connection under it: net.TCPConn's
// methods but Read and Write.
type tcpConn interface {
	Close() error
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	SyscallConn() (syscall.RawConn, error)
	CloseWrite() error
	SetLinger(sec int) error
	File() (*os.File, error)
}

// IsSocket reports whether c is a TCP socket as accepted or dialed: a Conn
// or a *net.TCPConn, not a wrapper that may hold bytes aside (a peeked
// prefix, TLS). Bytes can be peeked from its socket, spliced to and from it,
// and its descriptor handed to another process.
func IsSocket(c net.Conn) bool {
	switch c.(type) {
	case *Conn, *net.TCPConn:
		return true
	}
	return false
}

// NewConn returns tc with raw Read and Write, or an error if tc has no
// descriptor.
func NewConn(tc *net.TCPConn) (*Conn, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &Conn{tcpConn: tc, rc: rc}, nil
}

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr, c.isEOF, c.wouldBlock = p, 0, 0, false, false
	if c.rfn == nil { // made on first use: a Conn that a Pair moves never needs it
		c.rfn = c.read
	}
	err := c.rc.Read(c.rfn)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case c.rerr != 0:
		return 0, c.opError("read", os.NewSyscallError("read", c.rerr))
	case c.isEOF:
		return 0, io.EOF
	case c.wouldBlock:
		return 0, ErrWouldBlock
	}
	return c.rn, nil
}

// CountBytes makes Read, Write and WriteRead add the bytes they move to rx
// and tx (for example a cluster's upstream_cx_rx_bytes_total and
// upstream_cx_tx_bytes_total). It must be called before the Conn is used.
func (c *Conn) CountBytes(tx, rx stats.Counter) { c.tx, c.rx, c.counting = tx, rx, true }

// SetNonblockingReads makes Read return at once with ErrWouldBlock when the
// socket has nothing to read, rather than wait (false, the default, waits).
// It lets a reader above the Conn, such as a crypto/tls connection, take in
// what has arrived and no more. It must not be called during a Read.
func (c *Conn) SetNonblockingReads(on bool) { c.nonblock = on }

// ErrWouldBlock is what Read returns when SetNonblockingReads is on and the
// socket is empty. It is a net.Error whose Timeout and Temporary are true,
// so a crypto/tls connection over the Conn stays usable after it.
var ErrWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "netio: read would block" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

func (c *Conn) read(fd uintptr) bool {
	for {
		n, e := rawRead(fd, c.rbuf)
		switch e {
		case 0:
			c.rn, c.isEOF = n, n == 0
			if c.counting {
				c.rx.Add(uint64(n))
			}
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			if c.nonblock {
				c.wouldBlock = true
				return true
			}
			return false
		default:
			c.rerr = e
			return true
		}
	}
}

// Write implements net.Conn: it returns once all of p is written or on an
// error.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wbuf, c.wn, c.werr = p, 0, 0
	if c.wfn == nil {
		c.wfn = c.write
	}
	err := c.rc.Write(c.wfn)
	n := c.wn
	c.wbuf = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case c.werr != 0:
		return n, c.opError("write", os.NewSyscallError("write", c.werr))
	}
	return n, nil
}

func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		n, e := rawWrite(fd, c.wbuf[c.wn:])
		switch e {
		case 0:
			if n == 0 {
				c.werr = syscall.EIO // write(2) on a stream socket never returns 0 for a non-empty buffer
				return true
			}
			c.wn += n
			if c.counting {
				c.tx.Add(uint64(n))
			}
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// WriteRead writes all of w and then reads into r as Read does, waiting for
// the answer without first trying a read that could only find nothing: the
// poller is armed before the write, so the answer cannot be missed. It saves a
// system call per exchange where the peer sends nothing unasked, such as an
// HTTP/1.1 request and its response on a keep-alive connection; bytes (or the
// end of the stream) that came before WriteRead was called are seen only once
// more arrive. wn is how much of w was written; after a write error no read is
// made. Read and Write must not run at the same time as WriteRead.
func (c *Conn) WriteRead(w, r []byte) (wn, rn int, err error) {
	if len(w) == 0 {
		n, err := c.Read(r)
		return 0, n, err
	}
	c.wbuf, c.wn, c.werr, c.wfull = w, 0, 0, false
	c.rbuf, c.rn, c.rerr, c.isEOF = r, 0, 0, false
	if c.wrfn == nil {
		c.wrfn = c.writeRead
	}
	rerr := c.rc.Read(c.wrfn)
	wn = c.wn
	c.wbuf, c.rbuf = nil, nil
	switch {
	case c.werr != 0:
		return wn, 0, c.opError("write", os.NewSyscallError("write", c.werr))
	case rerr != nil && wn < len(w):
		return wn, 0, c.opError("write", rerr)
	case c.wfull:
		// The rest waits for room, and then the answer for a plain Read.
		n, err := c.Write(w[wn:])
		if wn += n; err != nil {
			return wn, 0, err
		}
		n, err = c.Read(r)
		return wn, n, err
	case rerr != nil:
		return wn, 0, c.opError("read", rerr)
	case c.rerr != 0:
		return wn, 0, c.opError("read", os.NewSyscallError("read", c.rerr))
	case c.isEOF:
		return wn, 0, io.EOF
	}
	return wn, c.rn, nil
}

// writeRead is WriteRead's callback: the first call writes (and returns false
// to wait for readability without reading), the next ones read.
func (c *Conn) writeRead(fd uintptr) bool {
	if c.wn == len(c.wbuf) {
		return c.read(fd)
	}
	if !c.write(fd) { // the socket buffer is full: WriteRead finishes the plain way
		c.wfull = true
		return true
	}
	return c.werr != 0 // written: wait for the answer without reading
}

// opError gives an error of the raw connection the shape net.Conn's have:
// RawConn's own errors (deadline, closed) come as *net.OpError with Op
// "raw-read" or "raw-write", re-labelled here as the plain operation.
func (c *Conn) opError(op string, err error) error {
	return tcpOpError(op, c.LocalAddr(), c.RemoteAddr(), err)
}

// tcpOpError is err as net.Conn's failure of op on a TCP connection from local
// to remote: a *net.OpError, not one wrapped in another.
func tcpOpError(op string, local, remote net.Addr, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: local, Addr: remote, Err: err}
}
