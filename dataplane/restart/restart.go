package restart

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
)

// SocketName is the reconfig socket's name in the runtime directory.
const SocketName = "reconfig.sock"

// ListenSocket is a listening socket handed over, with the key of its spec.
type ListenSocket struct {
	Key, Address string
	File         *os.File
}

// State is what a parent hands over.
type State struct {
	// Handover carries the generation, bootstrap, xDS state and stats path; the
	// parent fills socket_count and lock_fd.
	Handover *restartv1.Handover
	Sockets  []ListenSocket
	// Lock is the runtime directory's lock file; passing it passes the lock.
	Lock *os.File
}

// Moved is a connection handed over, stopped at a safe point: a TCP proxy
// pair, or an idle HTTP/1.1 downstream connection (Up nil).
type Moved struct {
	Info     *restartv1.MovedConnection
	Down, Up *os.File
}

// files returns m's descriptors in the order they are sent.
func (m Moved) files() []*os.File {
	if fdsPerConn(m.Info) == 1 {
		return []*os.File{m.Down}
	}
	return []*os.File{m.Down, m.Up}
}

// fdsPerConn is the number of descriptors a moved connection comes with.
func fdsPerConn(info *restartv1.MovedConnection) int {
	if info.GetKind() == restartv1.ConnectionKind_CONNECTION_KIND_HTTP1_IDLE {
		return 1
	}
	return 2
}

// Parent serves the reconfig socket of a running skiff. A successor that
// connects gets the parent's state; once it says it is ready, the parent stops
// accepting, moves its connections and lets the caller drain.
type Parent struct {
	Log *slog.Logger
	// State builds the state to hand over. It is called once per successor.
	State func() (*State, error)
	// Handover is called once the successor is ready: the parent stops
	// accepting and returns the connections it moves. The caller closes its own
	// copies of the moved connections after Handover returns (done is closed
	// once they have been sent).
	Handover func(ctx context.Context) (moved []Moved, done func(), err error)
	// Finished is called after Done was sent: the parent drains and exits.
	Finished func()
	// Abandoned is called when a successor failed (it died, hung or refused):
	// the parent keeps serving.
	Abandoned func(reason error)
	// ReadyTimeout bounds how long a successor may take to become ready.
	ReadyTimeout time.Duration
	// Admit, if set, decides whether the successor with this pid may take
	// over; an error refuses it with that reason. A parent that started a
	// successor itself admits only that one.
	Admit func(pid int64) error

	busy atomic.Bool
	wg   sync.WaitGroup
}

// ErrBusy is the reason a successor is refused while a restart is under way.
var ErrBusy = errors.New("a hot restart is already in progress")

// Listen creates the reconfig socket at path (mode 0600), replacing a stale one
// left by a crashed process. The caller holds the runtime directory's lock, so
// no live skiff can own it.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("restart: removing the stale %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the successor binds it anew; never remove its socket
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restart: %w", err)
	}
	return ln, nil
}

// Serve accepts successors on ln until ctx is done, one restart at a time.
func (p *Parent) Serve(ctx context.Context, ln *net.UnixListener) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		uc, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				p.Log.Warn("reconfig socket: accept failed", "error", err)
			}
			break
		}
		if !p.busy.CompareAndSwap(false, true) {
			go refuseEarly(NewConn(uc), ErrBusy.Error())
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.busy.Store(false)
			p.serveOne(ctx, NewConn(uc))
		}()
	}
	p.wg.Wait()
}

// Busy reports whether a restart is under way.
func (p *Parent) Busy() bool { return p.busy.Load() }

func (p *Parent) serveOne(ctx context.Context, c *Conn) {
	defer c.Close()
	finished, err := p.exchange(ctx, c)
	if err != nil {
		var refused refusedError
		if !errors.As(err, &refused) {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Send(refuse(err.Error()), nil)
		}
		var notAdmitted notAdmittedError
		if !finished && !errors.As(err, &notAdmitted) && p.Abandoned != nil {
			p.Abandoned(err)
		}
		return
	}
	if p.Finished != nil {
		p.Finished()
	}
}

// refuseEarly answers a successor's hello with a refusal. Reading the hello
// first means the successor's send succeeds and it reads the reason, rather
// than failing on a connection reset.
func refuseEarly(c *Conn, reason string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, files, err := c.Recv(); err == nil {
		closeAll(files)
	}
	c.Send(refuse(reason), nil)
}

// notAdmittedError refuses a successor other than the expected one; the
// restart under way (if any) goes on.
type notAdmittedError struct{ error }

func (e notAdmittedError) Unwrap() error { return e.error }

type refusedError struct{ reason string }

func (e refusedError) Error() string { return "the successor refused: " + e.reason }

func refuse(reason string) *restartv1.Envelope {
	return &restartv1.Envelope{Message: &restartv1.Envelope_Refused{Refused: &restartv1.Refused{Reason: reason}}}
}

// exchange runs the protocol with one successor. finished says whether the
// handover went past the point of no return (the parent stopped accepting).
func (p *Parent) exchange(ctx context.Context, c *Conn) (finished bool, err error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	env, files, err := c.Recv()
	if err != nil {
		return false, fmt.Errorf("waiting for the successor's hello: %w", err)
	}
	closeAll(files)
	hello := env.GetHello()
	if hello == nil {
		return false, fmt.Errorf("the successor opened with %T, not a hello", env.GetMessage())
	}
	if hello.GetProtocolVersion() != ProtocolVersion {
		return false, fmt.Errorf("the successor speaks handover protocol version %d, this skiff %d", hello.GetProtocolVersion(), ProtocolVersion)
	}
	if p.Admit != nil {
		if err := p.Admit(hello.GetPid()); err != nil {
			return false, notAdmittedError{fmt.Errorf("successor pid %d not admitted: %w", hello.GetPid(), err)}
		}
	}
	log := p.Log.With("successor_pid", hello.GetPid(), "successor_version", hello.GetVersion())
	log.Info("hot restart: a successor connected; handing over")

	st, err := p.State()
	if err != nil {
		return false, fmt.Errorf("building the state to hand over: %w", err)
	}
	h := st.Handover
	h.ProtocolVersion = ProtocolVersion
	h.SocketCount = uint32(len(st.Sockets))
	defer func() {
		for _, s := range st.Sockets {
			s.File.Close() // our copies; the successor has its own
		}
	}()
	var lockFD []int
	if st.Lock != nil {
		h.LockFd = true
		if lockFD, err = fdsOf(st.Lock); err != nil {
			return false, err
		}
	}
	if err := c.Send(&restartv1.Envelope{Message: &restartv1.Envelope_Handover{Handover: h}}, lockFD); err != nil {
		return false, err
	}
	for start := 0; start < len(st.Sockets); start += maxFDsPerMessage {
		batch := st.Sockets[start:min(start+maxFDsPerMessage, len(st.Sockets))]
		msg := &restartv1.Sockets{}
		files := make([]*os.File, len(batch))
		for i, s := range batch {
			msg.Sockets = append(msg.Sockets, &restartv1.Socket{Key: s.Key, Address: s.Address})
			files[i] = s.File
		}
		fds, err := fdsOf(files...)
		if err != nil {
			return false, err
		}
		if err := c.Send(&restartv1.Envelope{Message: &restartv1.Envelope_Sockets{Sockets: msg}}, fds); err != nil {
			return false, err
		}
	}

	timeout := p.ReadyTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	c.SetDeadline(time.Now().Add(timeout))
	env, files, err = c.Recv()
	if err != nil {
		return false, fmt.Errorf("waiting for the successor to be ready: %w", err)
	}
	closeAll(files)
	switch m := env.GetMessage().(type) {
	case *restartv1.Envelope_Ready:
	case *restartv1.Envelope_Refused:
		return false, refusedError{m.Refused.GetReason()}
	default:
		return false, fmt.Errorf("the successor sent %T instead of ready", env.GetMessage())
	}
	log.Info("hot restart: the successor is ready; handing over connections and draining")

	// From here on the parent has stopped accepting: there is no going back.
	moved, done, err := p.Handover(ctx)
	if err != nil {
		return true, err
	}
	defer func() {
		if done != nil {
			done()
		}
	}()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	const perMessage = maxFDsPerMessage / 2
	for start := 0; start < len(moved); start += perMessage {
		batch := moved[start:min(start+perMessage, len(moved))]
		msg := &restartv1.Connections{}
		var files []*os.File
		for _, m := range batch {
			msg.Connections = append(msg.Connections, m.Info)
			files = append(files, m.files()...)
		}
		fds, err := fdsOf(files...)
		if err != nil {
			return true, err
		}
		if err := c.Send(&restartv1.Envelope{Message: &restartv1.Envelope_Connections{Connections: msg}}, fds); err != nil {
			return true, err
		}
	}
	if err := c.Send(&restartv1.Envelope{Message: &restartv1.Envelope_Done{Done: &restartv1.Done{}}}, nil); err != nil {
		return true, err
	}
	log.Info("hot restart: handed over", "connections_moved", len(moved))
	return true, nil
}

// Inherited is what a successor received from its parent.
type Inherited struct {
	Handover *restartv1.Handover
	Sockets  []ListenSocket
	Lock     *os.File
	conn     *Conn
}

// ErrNoParent means nothing answers on the reconfig socket.
var ErrNoParent = errors.New("no running skiff answers on the reconfig socket")

// Connect takes over from the skiff serving the reconfig socket at path: it
// says hello and receives the parent's state. The caller applies it, then
// calls Ready (or Refuse).
func Connect(ctx context.Context, path, version string) (*Inherited, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w (%s): %v", ErrNoParent, path, err)
		}
		return nil, fmt.Errorf("restart: %w", err)
	}
	c := NewConn(nc.(*net.UnixConn))
	in, err := receiveState(c, version)
	if err != nil {
		c.Close()
		return nil, err
	}
	in.conn = c
	return in, nil
}

func receiveState(c *Conn, version string) (*Inherited, error) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	hello := &restartv1.Hello{ProtocolVersion: ProtocolVersion, Pid: int64(os.Getpid()), Version: version}
	sendErr := c.Send(&restartv1.Envelope{Message: &restartv1.Envelope_Hello{Hello: hello}}, nil)
	// Even if the hello could not be sent, the parent may have said why it
	// closed the connection: read that first.
	env, files, err := c.Recv()
	if err != nil {
		if sendErr != nil {
			return nil, sendErr
		}
		return nil, fmt.Errorf("restart: waiting for the handover: %w", err)
	}
	if r := env.GetRefused(); r != nil {
		closeAll(files)
		return nil, fmt.Errorf("restart: the running skiff refused the takeover: %s", r.GetReason())
	}
	h := env.GetHandover()
	if h == nil {
		closeAll(files)
		return nil, fmt.Errorf("restart: expected the handover, got %T", env.GetMessage())
	}
	if h.GetProtocolVersion() != ProtocolVersion {
		closeAll(files)
		return nil, fmt.Errorf("restart: the running skiff speaks handover protocol version %d, this one %d", h.GetProtocolVersion(), ProtocolVersion)
	}
	in := &Inherited{Handover: h}
	want := 0
	if h.GetLockFd() {
		want = 1
	}
	if err := expectFDs(files, want, "the handover"); err != nil {
		return nil, err
	}
	if want == 1 {
		in.Lock = files[0]
	}
	for uint32(len(in.Sockets)) < h.GetSocketCount() {
		env, files, err := c.Recv()
		if err != nil {
			in.closeFiles()
			return nil, fmt.Errorf("restart: receiving the listening sockets: %w", err)
		}
		batch := env.GetSockets()
		if batch == nil {
			closeAll(files)
			in.closeFiles()
			return nil, fmt.Errorf("restart: expected listening sockets, got %T", env.GetMessage())
		}
		if err := expectFDs(files, len(batch.GetSockets()), "a batch of listening sockets"); err != nil {
			in.closeFiles()
			return nil, err
		}
		for i, s := range batch.GetSockets() {
			in.Sockets = append(in.Sockets, ListenSocket{Key: s.GetKey(), Address: s.GetAddress(), File: files[i]})
		}
	}
	return in, nil
}

func (in *Inherited) closeFiles() {
	if in.Lock != nil {
		in.Lock.Close()
	}
	for _, s := range in.Sockets {
		s.File.Close()
	}
}

// Refuse tells the parent the state cannot be applied; the parent keeps serving.
func (in *Inherited) Refuse(reason string) {
	in.conn.SetDeadline(time.Now().Add(2 * time.Second))
	in.conn.Send(refuse(reason), nil)
	in.conn.Close()
	in.closeFiles()
}

// Ready tells the parent the successor serves, then receives the connections
// the parent moves, handing each to adopt, until the parent is done. adopt owns
// the files it is given.
func (in *Inherited) Ready(adopt func(Moved)) error {
	defer in.conn.Close()
	in.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := in.conn.Send(&restartv1.Envelope{Message: &restartv1.Envelope_Ready{Ready: &restartv1.Ready{}}}, nil); err != nil {
		return err
	}
	for {
		in.conn.SetDeadline(time.Now().Add(2 * time.Minute))
		env, files, err := in.conn.Recv()
		if err != nil {
			return fmt.Errorf("restart: receiving connections: %w", err)
		}
		switch m := env.GetMessage().(type) {
		case *restartv1.Envelope_Connections:
			conns := m.Connections.GetConnections()
			want := 0
			for _, info := range conns {
				want += fdsPerConn(info)
			}
			if err := expectFDs(files, want, "moved connections"); err != nil {
				return err
			}
			for _, info := range conns {
				mv := Moved{Info: info, Down: files[0]}
				if fdsPerConn(info) == 2 {
					mv.Up = files[1]
				}
				files = files[fdsPerConn(info):]
				adopt(mv)
			}
		case *restartv1.Envelope_Done:
			closeAll(files)
			return nil
		default:
			closeAll(files)
			return fmt.Errorf("restart: unexpected %T while receiving connections", env.GetMessage())
		}
	}
}
