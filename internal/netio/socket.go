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
// getsockopt that way; now 2 setsockopt, a getpeername that tells that the
// connect finished, and an fcntl per descriptor (os.NewFile's); getsockname
// only for a wildcard listener's connections and for a dialed conn whose
// LocalAddr is used (an access log's %UPSTREAM_LOCAL_ADDRESS%). The
// descriptor is held by an *os.File, which registers it with the runtime's
// poller and gives deadlines; the Conn reads and writes it with raw calls
// like any other.

// sock is the descriptor and addresses under a Conn made by Accept or Dial:
// the rest of net.TCPConn's methods the data path uses.
type sock struct {
	f      *os.File
	frc    syscall.RawConn // f's
	raw    sockRaw         // frc with net's errors
	closed atomic.Bool
	// deadlines is set once a deadline is: until then clearing them, as
	// netio.Pair does for every connection it starts, has nothing to undo.
	deadlines atomic.Bool
	remoteAP  netip.AddrPort
	// remote is remoteAP as RemoteAddr returns it, made on its first call
	// (tcp_proxy and the listener take remoteAP instead: two allocations
	// saved per connection).
	remote atomic.Pointer[net.TCPAddr]
	// local is known at Accept; a dialed conn asks the kernel at its first
	// use (see localAddr).
	local atomic.Pointer[net.TCPAddr]
}

// newSockConn returns the Conn of a connected non-blocking descriptor, which
// it owns from now on (it is closed on failure). The Conn and its sock are one
// allocation.
func newSockConn(fd int, local *net.TCPAddr, remote netip.AddrPort) (*Conn, error) {
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
	}{s: sock{f: f, frc: frc, remoteAP: remote}}
	s, c := &sc.s, &sc.c
	if local != nil {
		s.local.Store(local)
	}
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

// LocalAddr is the connection's local address. A dialed conn asks the kernel
// for it on the first call (most proxied connections never need it: a system
// call and two allocations saved per connection); after Close, a conn that
// was never asked no longer can, and returns nil.
func (s *sock) LocalAddr() net.Addr {
	if a := s.localAddr(); a != nil {
		return a
	}
	return nil
}

// localAddr is LocalAddr as a *net.TCPAddr, nil if unknown.
func (s *sock) localAddr() *net.TCPAddr {
	if a := s.local.Load(); a != nil {
		return a
	}
	var a *net.TCPAddr
	if err := s.frc.Control(func(fd uintptr) { a, _ = sockName(int(fd)) }); err != nil || a == nil {
		return nil
	}
	s.local.Store(a)
	return a
}

func (s *sock) RemoteAddr() net.Addr { return s.remoteAddr() }

func (s *sock) remoteAddr() *net.TCPAddr {
	if a := s.remote.Load(); a != nil {
		return a
	}
	a := net.TCPAddrFromAddrPort(s.remoteAP)
	s.remote.Store(a)
	return a
}

func (s *sock) SetDeadline(t time.Time) error { return s.setDeadline(t, (*os.File).SetDeadline) }
func (s *sock) SetReadDeadline(t time.Time) error {
	return s.setDeadline(t, (*os.File).SetReadDeadline)
}
func (s *sock) SetWriteDeadline(t time.Time) error {
	return s.setDeadline(t, (*os.File).SetWriteDeadline)
}

// setDeadline sets a deadline with set, or does nothing when it clears one
// and none was ever set.
func (s *sock) setDeadline(t time.Time, set func(*os.File, time.Time) error) error {
	var err error
	switch {
	case !t.IsZero() || s.deadlines.Load():
		s.deadlines.Store(true)
		err = set(s.f, t)
	case s.closed.Load():
		err = net.ErrClosed // what set would have said, in deadline's words
	}
	return s.deadline(err)
}

func (s *sock) deadline(err error) error {
	if err == nil {
		return nil
	}
	if s.closed.Load() {
		err = net.ErrClosed
	}
	return &net.OpError{Op: "set", Net: "tcp", Addr: s.LocalAddr(), Err: err} // as net's
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

func (s *sock) opError(op string, err error) error {
	return tcpOpError(op, s.LocalAddr(), s.remoteAddr(), err)
}

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
	remote := addrPortOf(&a.sa)
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
	ap := addrPortOf(&sa)
	if !ap.IsValid() {
		return nil, 0 // not an Internet socket
	}
	return net.TCPAddrFromAddrPort(ap), 0
}

func setNoDelay(fd int) syscall.Errno {
	one := int32(1)
	_, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY,
		uintptr(unsafe.Pointer(&one)), 4, 0)
	return e
}

// addrPortOf converts an AF_INET or AF_INET6 socket address.
func addrPortOf(sa *unix.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), getPort(&p.Port))
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		ip := netip.AddrFrom16(p.Addr)
		if p.Scope_id != 0 {
			ip = ip.WithZone(zoneName(p.Scope_id))
		}
		return netip.AddrPortFrom(ip, getPort(&p.Port))
	}
	return netip.AddrPort{}
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
	// Source, if valid, is the local address the socket is bound to
	// before it connects (Envoy's upstream_bind_config); port 0 lets the
	// kernel pick the port at connect (IP_BIND_ADDRESS_NO_PORT), so that
	// connections to different peers may share one.
	Source netip.AddrPort
}

// Dial connects to addr. A connect that the kernel completes at once (a
// loopback peer that is listening) costs no wait in the poller; otherwise Dial
// waits for it until the timeout or ctx ends. Its errors are shaped as
// net.Dialer's: a *net.OpError with Op "dial" wrapping the system call's error,
// or os.ErrDeadlineExceeded (a net.Error whose Timeout is true) when the
// timeout passed, or ctx's error.
func Dial(ctx context.Context, addr netip.AddrPort, o *DialOptions) (*Conn, error) {
	fail := func(err error) (*Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	var sa unix.RawSockaddrAny // on the stack: unix.Connect's Sockaddr would be an allocation
	family, salen, err := rawSockaddr(addr, &sa)
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
	if o.Source.IsValid() {
		if err := bindSource(fd, o.Source); err != nil {
			unix.Close(fd)
			return fail(err)
		}
	}
	_, _, e := syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(salen))
	switch e {
	case 0, unix.EINPROGRESS, unix.EINTR: // non-blocking: it never waits
	default:
		unix.Close(fd)
		return fail(os.NewSyscallError("connect", e))
	}
	// On loopback the kernel has usually finished the handshake by now.
	up, e := connectDone(fd)
	if e != 0 {
		unix.Close(fd)
		return fail(os.NewSyscallError("connect", e))
	}
	c, err := newSockConn(fd, nil, addr)
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
	return c, nil
}

// bindSource binds fd to the local address src before a connect.
func bindSource(fd int, src netip.AddrPort) error {
	if src.Port() == 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	var sa unix.Sockaddr
	if ip := src.Addr().Unmap(); ip.Is4() {
		sa = &unix.SockaddrInet4{Port: int(src.Port()), Addr: ip.As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(src.Port()), Addr: ip.As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	return nil
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
	set := hasDeadline // a write deadline to clear at the end
	if hasDeadline {
		s.f.SetWriteDeadline(deadline)
	}
	var stop func() bool
	var ended chan struct{}
	if ctx.Done() != nil {
		ended = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			defer close(ended)
			s.f.SetWriteDeadline(time.Unix(1, 0))
		})
	}
	defer func() {
		if stop != nil && !stop() {
			// ctx ended: its past deadline is set, or about to be, and must
			// not stay on the connection once the connect is done.
			<-ended
			set = true
		}
		if set {
			s.f.SetWriteDeadline(time.Time{})
		}
	}()
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

// rawSockaddr writes addr into sa as connect(2) takes it and returns its
// family and length.
func rawSockaddr(addr netip.AddrPort, sa *unix.RawSockaddrAny) (family int, salen uint32, err error) {
	ip := addr.Addr()
	if ip.Is4() || ip.Is4In6() {
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p.Family, p.Addr = unix.AF_INET, ip.Unmap().As4()
		putPort(&p.Port, addr.Port())
		return unix.AF_INET, unix.SizeofSockaddrInet4, nil
	}
	if !ip.Is6() {
		return 0, 0, fmt.Errorf("netio: %v is not an IP address", addr)
	}
	p := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
	p.Family, p.Addr = unix.AF_INET6, ip.As16()
	putPort(&p.Port, addr.Port())
	if z := ip.Zone(); z != "" {
		if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			p.Scope_id = uint32(n)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			p.Scope_id = uint32(ifi.Index)
		} else {
			return 0, 0, err
		}
	}
	return unix.AF_INET6, unix.SizeofSockaddrInet6, nil
}

// putPort stores port in network byte order; getPort reads it back.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
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

// RemoteAddrPort is AddrPort(c.RemoteAddr()) without making the
// net.Addr of a Conn from Accept or Dial.
func RemoteAddrPort(c net.Conn) netip.AddrPort {
	if nc, ok := c.(*Conn); ok {
		if s, ok := nc.tcpConn.(*sock); ok {
			return netip.AddrPortFrom(s.remoteAP.Addr().Unmap(), s.remoteAP.Port())
		}
	}
	return AddrPort(c.RemoteAddr())
}

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
