package listener

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"golang.org/x/sys/unix"

	"github.com/skiffproxy/skiff/internal/netio"
)

// SocketSpec is everything about a listening socket that is fixed when it is
// bound. Two listeners with equal specs can use the same socket; a change of spec
// is what makes a listener update "listener-breaking" (the socket must be rebound,
// or handed to a successor process).
type SocketSpec struct {
	Addr       netip.AddrPort
	IPv4Compat bool // for [::]: also accept IPv4 (IPV6_V6ONLY off)
	Backlog    int  // 0: the system maximum (net.core.somaxconn), like Envoy
	// Transparent and Freebind are tri-state as in Envoy: nil leaves the option alone.
	Transparent, Freebind *bool
	FastOpenQueue         int // TCP_FASTOPEN queue length, 0 = off
	Options               []SocketOption
}

// SocketOption is a raw setsockopt applied at a given point of the socket's life,
// Envoy's core.v3.SocketOption.
type SocketOption struct {
	Level, Name int64
	Int         *int64
	Buf         []byte
	State       corev3.SocketOption_SocketState
}

// Key identifies the spec: sockets are shared and inherited by equal keys.
func (s SocketSpec) Key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tcp/%s/compat=%t/backlog=%d/fastopen=%d", s.Addr, s.IPv4Compat, s.Backlog, s.FastOpenQueue)
	if s.Transparent != nil {
		fmt.Fprintf(&b, "/transparent=%t", *s.Transparent)
	}
	if s.Freebind != nil {
		fmt.Fprintf(&b, "/freebind=%t", *s.Freebind)
	}
	for _, o := range s.Options {
		fmt.Fprintf(&b, "/opt=%d.%d.%d:", o.State, o.Level, o.Name)
		if o.Int != nil {
			b.WriteString(strconv.FormatInt(*o.Int, 10))
		} else {
			fmt.Fprintf(&b, "%x", o.Buf)
		}
	}
	return b.String()
}

// Bind creates, binds and listens on a TCP socket as spec says, applying each
// socket option at the state it names. It does the system calls itself (rather
// than through net.Listen) because Envoy's STATE_BOUND options must go between
// bind(2) and listen(2), and because Envoy's IPV6_V6ONLY default differs from Go's.
func Bind(spec SocketSpec) (*net.TCPListener, error) {
	ln, err := bind(spec)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(spec.Addr), Err: err}
	}
	return ln, nil
}

func bind(spec SocketSpec) (_ *net.TCPListener, err error) {
	ip := spec.Addr.Addr()
	family, sa := unix.AF_INET6, unix.Sockaddr(nil)
	if ip.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(spec.Addr.Port()), Addr: ip.As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(spec.Addr.Port()), Addr: ip.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_TCP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	defer func() {
		if err != nil && fd >= 0 {
			unix.Close(fd)
		}
	}()
	set := func(level, name, v int, what string) error {
		if err := unix.SetsockoptInt(fd, level, name, v); err != nil {
			return fmt.Errorf("setsockopt %s: %w", what, err)
		}
		return nil
	}
	if err := set(unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"); err != nil {
		return nil, err
	}
	// SO_REUSEPORT lets a listener be rebound with new options while its old
	// socket still accepts (see SocketTable.Acquire and Socket.Handover), so a
	// listener-breaking update refuses no connection. Sharing a port with some
	// other process is prevented by the probe in SocketTable.Acquire.
	if err := set(unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT"); err != nil {
		return nil, err
	}
	if family == unix.AF_INET6 {
		v6only := 1
		if spec.IPv4Compat {
			v6only = 0
		}
		if err := set(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only, "IPV6_V6ONLY"); err != nil {
			return nil, err
		}
	}
	if spec.Transparent != nil {
		lvl, name := unix.SOL_IP, unix.IP_TRANSPARENT
		if family == unix.AF_INET6 {
			lvl, name = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if err := set(lvl, name, boolInt(*spec.Transparent), "IP_TRANSPARENT"); err != nil {
			return nil, err
		}
	}
	if spec.Freebind != nil {
		lvl, name := unix.SOL_IP, unix.IP_FREEBIND
		if family == unix.AF_INET6 {
			lvl, name = unix.SOL_IPV6, unix.IPV6_FREEBIND
		}
		if err := set(lvl, name, boolInt(*spec.Freebind), "IP_FREEBIND"); err != nil {
			return nil, err
		}
	}
	if err := applyOptions(fd, spec.Options, corev3.SocketOption_STATE_PREBIND); err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	if err := applyOptions(fd, spec.Options, corev3.SocketOption_STATE_BOUND); err != nil {
		return nil, err
	}
	backlog := spec.Backlog
	if backlog <= 0 {
		backlog = 65535 // the kernel caps it at net.core.somaxconn
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return nil, os.NewSyscallError("listen", err)
	}
	if spec.FastOpenQueue > 0 {
		if err := set(unix.IPPROTO_TCP, unix.TCP_FASTOPEN, spec.FastOpenQueue, "TCP_FASTOPEN"); err != nil {
			return nil, err
		}
	}
	if err := applyOptions(fd, spec.Options, corev3.SocketOption_STATE_LISTENING); err != nil {
		return nil, err
	}
	// fileListener owns fd from here, closed whatever happens: the deferred
	// close must not close the number again (by then another descriptor's).
	owned := fd
	fd = -1
	return fileListener(owned, spec.Addr.String())
}

// fileListener wraps fd (which it takes over) in a *net.TCPListener.
func fileListener(fd int, name string) (*net.TCPListener, error) {
	f := os.NewFile(uintptr(fd), "tcp-listener:"+name)
	defer f.Close() // net.FileListener works on a dup
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	return l.(*net.TCPListener), nil
}

func applyOptions(fd int, opts []SocketOption, state corev3.SocketOption_SocketState) error {
	for _, o := range opts {
		if o.State != state {
			continue
		}
		var err error
		if o.Int != nil {
			err = unix.SetsockoptInt(fd, int(o.Level), int(o.Name), int(*o.Int))
		} else {
			err = unix.SetsockoptString(fd, int(o.Level), int(o.Name), string(o.Buf))
		}
		if err != nil {
			return fmt.Errorf("setsockopt level %d name %d (%s): %w", o.Level, o.Name, state, err)
		}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// acceptHandler receives the connections a Socket accepts.
type acceptHandler interface {
	handle(c net.Conn)
}

// Socket is a bound listening socket with its accept loop. The loop starts when
// the socket is first given a handler (a socket is bound before the
// configuration that serves it is in place) and hands each connection to the
// socket's current handler, so a listener update that keeps the socket swaps
// the handler without a gap in accepting.
type Socket struct {
	Spec SocketSpec
	// key is what the socket is shared and handed over by: Spec.Key(), with
	// the owner for a port 0 socket, which is nobody else's.
	key string
	ln  *net.TCPListener
	acc *netio.Acceptor // accepts from ln
	// Bound is the address the socket is bound to (the chosen port for port 0).
	Bound netip.AddrPort

	handler atomic.Pointer[acceptHandler]
	refs    int       // guarded by the table's mutex
	loop    sync.Once // starts the accept loop, or marks it as never started
	done    chan struct{}
	log     *slog.Logger
}

// newSocket returns the Socket of a bound listener, which it owns from now on.
func newSocket(key string, ln *net.TCPListener, log *slog.Logger) (*Socket, error) {
	acc, err := netio.NewAcceptor(ln)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listening socket %s: %w", ln.Addr(), err)
	}
	return &Socket{key: key, ln: ln, acc: acc, done: make(chan struct{}), log: log}, nil
}

// setHandler makes h receive the connections accepted from now on, starting
// the accept loop the first time; nil makes the loop close them.
func (s *Socket) setHandler(h acceptHandler) {
	if h == nil {
		s.handler.Store(nil)
		return
	}
	s.handler.Store(&h)
	s.loop.Do(func() { go s.acceptLoop() })
}

// close closes the socket and waits until its accept loop has handed over the
// last connection it accepted; the handler is cleared only then, so that no
// connection accepted before the close is dropped.
func (s *Socket) close() {
	s.ln.Close()
	s.acc.Close()
	s.loop.Do(func() { close(s.done) }) // the loop never started
	<-s.done
	s.setHandler(nil)
}

func (s *Socket) acceptLoop() {
	defer close(s.done)
	var delay time.Duration
	for {
		c, err := s.acc.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds or memory: back off and retry, as net/http does, rather
			// than spin or give up the listener.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "address", s.Bound, "retry_in", delay, "error", err)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if h := s.handler.Load(); h != nil {
			(*h).handle(c)
		} else {
			c.Close()
		}
	}
}

// SocketTable owns the listening sockets, keyed by SocketSpec. Listeners borrow
// sockets from it: an update that keeps a listener's spec keeps its socket, and a
// listener that replaces another on the same spec takes the socket over instead
// of failing to bind. The table is what a hot restart hands to the successor.
type SocketTable struct {
	mu    sync.Mutex
	byKey map[string]*Socket
	all   map[*Socket]bool     // every socket in use, port 0 ones included
	spare map[string][]*Socket // inherited from a hot-restart parent, not yet used
	log   *slog.Logger
}

// NewSocketTable returns an empty table.
func NewSocketTable(log *slog.Logger) *SocketTable {
	return &SocketTable{byKey: map[string]*Socket{}, all: map[*Socket]bool{}, spare: map[string][]*Socket{}, log: log}
}

// Inherit adds a listening socket handed over by a hot-restart parent, under
// the key of the spec it was bound with. Acquire uses it for a spec with that
// key instead of binding. The table owns f afterwards.
func (t *SocketTable) Inherit(key string, f *os.File) error {
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("inherited socket %s: %w", key, err)
	}
	ln, ok := l.(*net.TCPListener)
	if !ok {
		l.Close()
		return fmt.Errorf("inherited socket %s is not a TCP listener", key)
	}
	s, err := newSocket(key, ln, t.log)
	if err != nil {
		return fmt.Errorf("inherited socket %s: %w", key, err)
	}
	s.Bound = ln.Addr().(*net.TCPAddr).AddrPort()
	s.Bound = netip.AddrPortFrom(s.Bound.Addr().Unmap(), s.Bound.Port())
	t.mu.Lock()
	t.spare[key] = append(t.spare[key], s)
	t.mu.Unlock()
	return nil
}

// HandOut returns a duplicate of every socket in use, with its key, for a
// hot-restart successor. The caller owns the files.
func (t *SocketTable) HandOut() (keys []string, files []*os.File, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.all {
		f, ferr := s.ln.File()
		if ferr != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, fmt.Errorf("duplicating the socket of %s: %w", s.Bound, ferr)
		}
		keys = append(keys, s.key)
		files = append(files, f)
	}
	return keys, files, nil
}

// SettleInherited deals with the inherited sockets no listener took: a socket
// whose address a listener now serves through another socket (a
// listener-breaking change across the restart) is handed over to that socket
// (its queue drained into the new listener, new connections steered away)
// and closed; the others are closed. It returns when all are closed.
func (t *SocketTable) SettleInherited() {
	t.mu.Lock()
	var left []*Socket
	for _, ss := range t.spare {
		left = append(left, ss...)
	}
	clear(t.spare)
	byAddr := map[netip.AddrPort]*Socket{}
	for s := range t.all {
		byAddr[s.Bound] = s
	}
	t.mu.Unlock()
	for _, old := range left {
		if next := byAddr[old.Bound]; next != nil {
			if h := next.handler.Load(); h != nil {
				old.setHandler(*h)
				if err := Handover(old, next, time.Second); err != nil {
					t.log.Warn("hot restart: rebound listener socket: handover incomplete", "address", old.Bound, "error", err)
				}
			}
		}
		old.close()
	}
}

// Acquire returns the socket for spec, binding it if the table has none. A spec
// with port 0 always binds a new socket (each asks for its own port); owner
// (the listener and the socket's index in it) tells apart the port 0 sockets
// inherited from a hot-restart parent, so each listener gets its own port back.
// The socket accepts once it is given a handler.
//
// Sockets are bound with SO_REUSEPORT so that one of ours can be rebound with
// other options while the old one still accepts. To keep that from silently
// sharing a port with another process, a new address is first probed with a
// plain bind: if anything else holds it, Acquire fails with "address already
// in use", as a plain bind would.
func (t *SocketTable) Acquire(spec SocketSpec, owner string) (*Socket, error) {
	key := spec.Key()
	if spec.Addr.Port() == 0 {
		key += "/owner=" + owner
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if ss := t.spare[key]; len(ss) > 0 {
		s := ss[0]
		t.spare[key] = ss[1:]
		s.Spec, s.refs = spec, 1
		if spec.Addr.Port() != 0 {
			t.byKey[key] = s
		}
		t.all[s] = true
		return s, nil
	}
	if spec.Addr.Port() != 0 {
		if s, ok := t.byKey[key]; ok {
			s.refs++
			return s, nil
		}
		if !t.holdsAddrLocked(spec.Addr) {
			if err := probe(spec); err != nil {
				return nil, err
			}
		}
	}
	ln, err := Bind(spec)
	if err != nil {
		return nil, err
	}
	s, err := newSocket(key, ln, t.log)
	if err != nil {
		return nil, err
	}
	s.Spec, s.refs = spec, 1
	s.Bound = ln.Addr().(*net.TCPAddr).AddrPort()
	s.Bound = netip.AddrPortFrom(s.Bound.Addr().Unmap(), s.Bound.Port())
	if spec.Addr.Port() != 0 {
		t.byKey[key] = s
	}
	t.all[s] = true
	return s, nil
}

func (t *SocketTable) holdsAddrLocked(a netip.AddrPort) bool {
	for _, s := range t.byKey {
		if s.Bound == a {
			return true
		}
	}
	for _, ss := range t.spare {
		for _, s := range ss {
			if s.Bound == a {
				return true
			}
		}
	}
	return false
}

// probe binds spec's address without SO_REUSEPORT and closes it again, to learn
// whether anyone else holds the address.
func probe(spec SocketSpec) error {
	ip := spec.Addr.Addr()
	family, sa := unix.AF_INET6, unix.Sockaddr(nil)
	if ip.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(spec.Addr.Port()), Addr: ip.As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(spec.Addr.Port()), Addr: ip.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(spec.Addr), Err: os.NewSyscallError("socket", err)}
	}
	defer unix.Close(fd)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if family == unix.AF_INET6 && !spec.IPv4Compat {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if spec.Freebind != nil && *spec.Freebind {
		unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(spec.Addr), Err: os.NewSyscallError("bind", err)}
	}
	return nil
}

// IntOption reads an integer socket option of the socket (for tests and the
// admin API); t, if not nil, fails on error.
func (s *Socket) IntOption(t interface{ Fatal(...any) }, level, name int) int {
	rc, err := s.ln.SyscallConn()
	var v int
	var serr error
	if err == nil {
		err = rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, name) })
	}
	if err == nil {
		err = serr
	}
	if err != nil && t != nil {
		t.Fatal(err)
	}
	return v
}

// Handover moves new connections for old's address to next, a socket bound
// later to the same address (a listener-breaking update): it steers the
// address's SO_REUSEPORT group to next, then waits (at most wait) until old's
// accept queue, which its accept loop keeps draining, is empty. The caller then
// releases old; nothing was refused in between.
func Handover(old, next *Socket, wait time.Duration) error {
	if err := steer(next); err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		n, err := acceptQueueLen(old)
		if err != nil || n == 0 {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("handover of %s: the old socket's accept queue did not empty in %v", old.Bound, wait)
}

// steer attaches to s's SO_REUSEPORT group a classic BPF program that picks the
// group's second socket: the group holds exactly the old socket (index 0) and s
// (index 1) during a handover. Once the old socket is closed the index is past
// the end and the kernel falls back to its hash, which finds s alone.
func steer(s *Socket) error {
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	rc, err := s.ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("steering %s to the new socket: %w", s.Bound, os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", serr))
	}
	return nil
}

// acceptQueueLen is the number of established connections waiting in a
// listening socket's accept queue (tcpi_unacked of a LISTEN socket).
func acceptQueueLen(s *Socket) (int, error) {
	rc, err := s.ln.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, os.NewSyscallError("getsockopt TCP_INFO", serr)
	}
	return int(info.Unacked), nil
}

// Release gives back a socket obtained from Acquire by the listener whose
// handler is h. The last release closes it and waits for its accept loop to
// end, h still receiving what was accepted until then; otherwise, if h is the
// socket's handler, the socket stops handing connections to it.
func (t *SocketTable) Release(s *Socket, h acceptHandler) {
	t.mu.Lock()
	s.refs--
	last := s.refs == 0
	if last {
		if t.byKey[s.key] == s {
			delete(t.byKey, s.key)
		}
		delete(t.all, s)
	} else if cur := s.handler.Load(); cur != nil && *cur == h {
		s.setHandler(nil)
	}
	t.mu.Unlock()
	if last {
		s.close()
	}
}
