package netio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An Acceptor and Dial make TCP connections with direct system calls instead
// of package net's, which does more than a proxy needs for every connection:
//
//   - net turns TCP keep-alive on for every accepted connection (four
//     setsockopt calls; Envoy leaves it off unless configured) and asks the
//     kernel for the local address (getsockname) even when it is the
//     listener's;
//   - net.Dialer parses the address, derives a context for the timeout,
//     registers the socket with the poller before connect and then always
//     parks the goroutine once for the connect to finish, and asks for both
//     addresses afterwards; on loopback the kernel has finished the
//     handshake before connect returns.
//
// A connection proxied by tcp_proxy cost 6 setsockopt, 2 getsockname and a
// getsockopt that way; now 2, 1 and none, and an fcntl per descriptor
// (os.NewFile's). The descriptor is held by an *os.File, which registers it
// with the runtime's poller and gives deadlines; the Conn reads and writes it
// with raw calls like any other.

// sock is the descriptor and addresses under a Conn made by Accept or Dial:
// the rest of net.TCPConn's methods the data path uses.
type sock struct {
	f             *os.File
	frc           syscall.RawConn // f's
	raw           sockRaw         // frc with net's errors
	closed        atomic.Bool
	local, remote *net.TCPAddr
}

// newSockConn returns the Conn of a connected non-blocking descriptor, which
// it owns from now on (it is closed on failure). The Conn and its sock are one
// allocation.
func newSockConn(fd int, local, remote *net.TCPAddr) (*Conn, error) {
	f := os.NewFile(uintptr(fd), "tcp") // non-blocking: registered with the poller
	if f == nil {
		unix.Close(fd)
		return nil, syscall.EBADF
	}
	frc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	sc := &struct {
		c Conn
		s sock
	}{s: sock{f: f, frc: frc, local: local, remote: remote}}
	s, c := &sc.s, &sc.c
	s.raw.s = s
	c.tcpConn, c.rc = s, &s.raw
	return c, nil
}

func (s *sock) Close() error {
	if s.closed.Swap(true) {
		return s.opError("close", net.ErrClosed)
	}
	if err := s.f.Close(); err != nil {
		return s.opError("close", err)
	}
	return nil
}

func (s *sock) LocalAddr() net.Addr { return s.local }

func (s *sock) RemoteAddr() net.Addr { return s.remote }

func (s *sock) SetDeadline(t time.Time) error      { return s.deadline(s.f.SetDeadline(t)) }
func (s *sock) SetReadDeadline(t time.Time) error  { return s.deadline(s.f.SetReadDeadline(t)) }
func (s *sock) SetWriteDeadline(t time.Time) error { return s.deadline(s.f.SetWriteDeadline(t)) }

func (s *sock) deadline(err error) error {
	if err == nil {
		return nil
	}
	if s.closed.Load() {
		err = net.ErrClosed
	}
	return &net.OpError{Op: "set", Net: "tcp", Addr: s.local, Err: err} // as net's
}

func (s *sock) SyscallConn() (syscall.RawConn, error) { return &s.raw, nil }

// CloseWrite shuts down the writing side, as net.TCPConn's does.
func (s *sock) CloseWrite() error {
	return s.control("close", "shutdown", func(fd uintptr) error { return unix.Shutdown(int(fd), unix.SHUT_WR) })
}

// SetLinger is net.TCPConn's: 0 makes Close reset the connection.
func (s *sock) SetLinger(sec int) error {
	l := unix.Linger{Onoff: 1, Linger: int32(sec)}
	if sec < 0 {
		l = unix.Linger{}
	}
	return s.control("set", "setsockopt", func(fd uintptr) error {
		return unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &l)
	})
}

// File returns a duplicate of the descriptor (for a hot-restart handover),
// as net.TCPConn's does.
func (s *sock) File() (*os.File, error) {
	var nfd int
	err := s.control("file", "fcntl", func(fd uintptr) (err error) {
		nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(nfd), "tcp"), nil
}

// control runs f on the descriptor; op and call name the failure as net does
// (a *net.OpError wrapping an *os.SyscallError).
func (s *sock) control(op, call string, f func(fd uintptr) error) error {
	var ferr error
	err := s.raw.Control(func(fd uintptr) { ferr = f(fd) })
	switch {
	case err != nil:
		return s.opError(op, err)
	case ferr != nil:
		return s.opError(op, os.NewSyscallError(call, ferr))
	}
	return nil
}

func (s *sock) opError(op string, err error) error { return tcpOpError(op, s.local, s.remote, err) }

// sockRaw is the sock's syscall.RawConn: the *os.File's, whose errors for a
// closed descriptor say "use of closed file", with net's instead (net.ErrClosed
// in a *net.OpError), so that callers cannot tell a Conn from Accept or Dial
// from a *net.TCPConn.
type sockRaw struct{ s *sock }

func (r *sockRaw) Control(f func(fd uintptr)) error { return r.err("raw-control", r.s.frc.Control(f)) }
func (r *sockRaw) Read(f func(fd uintptr) bool) error {
	return r.err("raw-read", r.s.frc.Read(f))
}
func (r *sockRaw) Write(f func(fd uintptr) bool) error {
	return r.err("raw-write", r.s.frc.Write(f))
}

func (r *sockRaw) err(op string, err error) error {
	if err == nil {
		return nil
	}
	if r.s.closed.Load() {
		err = net.ErrClosed
	}
	return r.s.opError(op, err)
}

// Acceptor accepts connections from a TCP listener as Conns: TCP_NODELAY set,
// as package net and Envoy do, and keep-alive left off, as Envoy does (net
// turns it on). It waits in the poller on a duplicate of the listener's
// descriptor (a net.TCPListener's RawConn cannot wait), so the listening
// socket stays open until both the listener and the Acceptor are closed;
// Close ends a waiting Accept with an error that satisfies
// errors.Is(err, net.ErrClosed).
type Acceptor struct {
	f      *os.File
	rc     syscall.RawConn
	local  *net.TCPAddr // nil if the listener's address is a wildcard
	closed atomic.Bool

	fn   func(fd uintptr) bool
	sa   unix.RawSockaddrAny
	nfd  int
	errn syscall.Errno
}

// NewAcceptor returns an Acceptor for ln. One goroutine at a time may call
// its Accept.
func NewAcceptor(ln *net.TCPListener) (*Acceptor, error) {
	lrc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd, derr := -1, error(nil)
	if err := lrc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	f := os.NewFile(uintptr(nfd), "tcp-listener") // non-blocking, as ln's: registered with the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	a := &Acceptor{f: f, rc: rc}
	if la, ok := ln.Addr().(*net.TCPAddr); ok && !la.IP.IsUnspecified() {
		a.local = la
	}
	a.fn = a.accept
	return a, nil
}

// Close closes the Acceptor's descriptor, not the listener's.
func (a *Acceptor) Close() error {
	if a.closed.Swap(true) {
		return nil
	}
	return a.f.Close()
}

// Accept waits for the next connection.
func (a *Acceptor) Accept() (*Conn, error) {
	a.nfd, a.errn = -1, 0
	if err := a.rc.Read(a.fn); err != nil {
		if a.closed.Load() {
			err = net.ErrClosed
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: a.local, Err: err}
	}
	if a.errn != 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: a.local, Err: os.NewSyscallError("accept4", a.errn)}
	}
	fd := a.nfd
	remote := tcpAddr(&a.sa)
	if e := setNoDelay(fd); e != 0 {
		unix.Close(fd)
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: a.local, Err: os.NewSyscallError("setsockopt", e)}
	}
	local := a.local
	if local == nil { // a wildcard listener: the address the client reached
		var e syscall.Errno
		if local, e = sockName(fd); e != 0 {
			unix.Close(fd)
			return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("getsockname", e)}
		}
	}
	c, err := newSockConn(fd, local, remote)
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: a.local, Err: err}
	}
	return c, nil
}

func (a *Acceptor) accept(fd uintptr) bool {
	for {
		n := uint32(unsafe.Sizeof(a.sa))
		r, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&a.sa)), uintptr(unsafe.Pointer(&n)),
			unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			a.nfd = int(r)
			return true
		case syscall.EINTR, syscall.ECONNABORTED: // a connection reset while queued: the next one
		case syscall.EAGAIN:
			return false
		default:
			a.errn = e
			return true
		}
	}
}

// sockName is getsockname(2).
func sockName(fd int) (*net.TCPAddr, syscall.Errno) {
	var sa unix.RawSockaddrAny
	n := uint32(unsafe.Sizeof(sa))
	_, _, e := syscall.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return nil, e
	}
	return tcpAddr(&sa), 0
}

func setNoDelay(fd int) syscall.Errno {
	one := int32(1)
	_, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY,
		uintptr(unsafe.Pointer(&one)), 4, 0)
	return e
}

// tcpAddr converts an AF_INET or AF_INET6 socket address.
func tcpAddr(sa *unix.RawSockaddrAny) *net.TCPAddr {
	switch sa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := int(p.Port>>8 | p.Port<<8)
		return &net.TCPAddr{IP: net.IPv4(p.Addr[0], p.Addr[1], p.Addr[2], p.Addr[3]), Port: port}
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		port := int(p.Port>>8 | p.Port<<8)
		a := &net.TCPAddr{IP: make(net.IP, net.IPv6len), Port: port}
		copy(a.IP, p.Addr[:])
		if p.Scope_id != 0 {
			a.Zone = zoneName(p.Scope_id)
		}
		return a
	}
	return nil
}

func zoneName(index uint32) string {
	if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(index), 10)
}

// DialOptions are Dial's.
type DialOptions struct {
	// Timeout bounds the connect (Envoy's connect_timeout); zero means none
	// but ctx's.
	Timeout time.Duration
	// KeepAlive turns TCP keep-alive on with its settings when Enable is set
	// (a zero Idle, Interval or Count leaves the system's); off otherwise.
	KeepAlive net.KeepAliveConfig
}

// Dial connects to addr. A connect that the kernel completes at once (a
// loopback peer that is listening) costs no wait in the poller; otherwise Dial
// waits for it until the timeout or ctx ends. Its errors are shaped as
// net.Dialer's: a *net.OpError with Op "dial" wrapping the system call's error,
// or os.ErrDeadlineExceeded (a net.Error whose Timeout is true) when the
// timeout passed, or ctx's error.
func Dial(ctx context.Context, addr netip.AddrPort, o *DialOptions) (*Conn, error) {
	raddr := net.TCPAddrFromAddrPort(addr)
	fail := func(err error) (*Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	sa, family, err := sockaddr(addr)
	if err != nil {
		return fail(err)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fail(os.NewSyscallError("socket", err))
	}
	if e := setNoDelay(fd); e != 0 {
		unix.Close(fd)
		return fail(os.NewSyscallError("setsockopt", e))
	}
	if o.KeepAlive.Enable {
		if err := setKeepAlive(fd, &o.KeepAlive); err != nil {
			unix.Close(fd)
			return fail(err)
		}
	}
	switch err := unix.Connect(fd, sa); err {
	case nil, unix.EINPROGRESS, unix.EINTR:
	default:
		unix.Close(fd)
		return fail(os.NewSyscallError("connect", err))
	}
	// On loopback the kernel has usually finished the handshake by now.
	up, e := connectDone(fd)
	if e != 0 {
		unix.Close(fd)
		return fail(os.NewSyscallError("connect", e))
	}
	c, err := newSockConn(fd, nil, raddr)
	if err != nil {
		return fail(err)
	}
	s := c.tcpConn.(*sock)
	if !up {
		if err := s.connected(ctx, o.Timeout); err != nil {
			s.Close()
			return fail(err)
		}
	}
	var le syscall.Errno
	if err := s.frc.Control(func(fd uintptr) { s.local, le = sockName(int(fd)) }); err != nil || le != 0 {
		s.Close()
		if err == nil {
			err = os.NewSyscallError("getsockname", le)
		}
		return fail(err)
	}
	return c, nil
}

// connectDone reports whether a connect under way on fd finished (up), or
// failed (the socket's error).
func connectDone(fd int) (up bool, _ syscall.Errno) {
	// Connected if the kernel knows the peer; otherwise failed if the
	// socket has an error, or still under way.
	var sa unix.RawSockaddrAny
	n := uint32(unsafe.Sizeof(sa))
	_, _, e := syscall.RawSyscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)))
	if e == 0 {
		return true, 0
	}
	var soerr int32
	l := uint32(4)
	_, _, e = syscall.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR,
		uintptr(unsafe.Pointer(&soerr)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return false, e
	}
	return false, syscall.Errno(soerr)
}

// connected waits for a connect under way to finish and returns its error.
// When ctx's deadline is what ended the wait, ctx is done by the time it
// returns (its error), so that callers see the same cause as ctx.Err.
func (s *sock) connected(ctx context.Context, timeout time.Duration) error {
	deadline, hasDeadline := ctx.Deadline()
	ctxBound := hasDeadline // ctx's deadline comes first
	if timeout > 0 {
		if d := time.Now().Add(timeout); !hasDeadline || d.Before(deadline) {
			deadline, hasDeadline, ctxBound = d, true, false
		}
	}
	if hasDeadline {
		s.f.SetWriteDeadline(deadline)
		defer s.f.SetWriteDeadline(time.Time{})
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { s.f.SetWriteDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	var cerr syscall.Errno
	err := s.frc.Write(func(fd uintptr) bool { // writable: the connect ended
		up, e := connectDone(int(fd))
		cerr = e
		return up || e != 0
	})
	if ctxBound && errors.Is(err, os.ErrDeadlineExceeded) {
		// The poller's timer for ctx's deadline may fire a moment before
		// ctx's own.
		<-ctx.Done()
	}
	if ctxErr := ctx.Err(); ctxErr != nil && (err != nil || cerr != 0) {
		return ctxErr
	}
	if err != nil {
		return err
	}
	if cerr != 0 {
		return os.NewSyscallError("connect", cerr)
	}
	return nil
}

func sockaddr(addr netip.AddrPort) (unix.Sockaddr, int, error) {
	ip := addr.Addr()
	if ip.Is4() || ip.Is4In6() {
		return &unix.SockaddrInet4{Port: int(addr.Port()), Addr: ip.Unmap().As4()}, unix.AF_INET, nil
	}
	if !ip.Is6() {
		return nil, 0, fmt.Errorf("netio: %v is not an IP address", addr)
	}
	sa := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: ip.As16()}
	if z := ip.Zone(); z != "" {
		if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else {
			return nil, 0, err
		}
	}
	return sa, unix.AF_INET6, nil
}

func setKeepAlive(fd int, ka *net.KeepAliveConfig) error {
	for _, o := range [...]struct{ level, opt, val int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, seconds(ka.Idle)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, seconds(ka.Interval)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, ka.Count},
	} {
		if o.val <= 0 {
			continue // the system's
		}
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// seconds rounds d up to whole seconds, as net does for keep-alive times.
func seconds(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }

// AddrPort is a's address and port when a is a TCP address (IPv4-mapped IPv6
// addresses unmapped, as Envoy writes them), else the zero AddrPort.
func AddrPort(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
