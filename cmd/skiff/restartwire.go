package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/restart"
	"github.com/skiffproxy/skiff/internal/runtimedir"
	"github.com/skiffproxy/skiff/internal/sdnotify"
	"github.com/skiffproxy/skiff/internal/stats"
	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
)

// restartChildEnv marks a successor skiff started by its parent: it runs the
// bootstrap the parent hands over (with the parent's command-line overrides
// applied) rather than reading its own files again.
const restartChildEnv = "SKIFF_HOT_RESTART_CHILD"

// hotRestart is this process's part in hot restarts: as a parent it serves the
// reconfig socket and starts successors (SIGHUP, the admin API, a
// listener-breaking LDS update); a successor found another skiff owning the
// runtime directory and took over from it.
type hotRestart struct {
	log  *slog.Logger
	dir  *runtimedir.Dir
	srv  *dataplane.Server
	st   *stats.Store
	boot *bootstrapv3.Bootstrap
	// epoch counts the hot restarts that led to this process: 0 for a cold
	// start, the parent's plus one for a successor (Envoy's restart epoch).
	epoch uint32
	xds   func() *restartv1.XdsState // nil until the xDS client runs
	// adminTCP is the admin.address listener (nil if none): handed over with
	// the listeners, closed here once the successor took over.
	adminTCP net.Listener

	parent      *restart.Parent
	handedOver  chan struct{} // closed once a successor took over: drain and exit
	handoffOnce sync.Once
	abandoned   stats.Counter

	mu       sync.Mutex
	starting bool      // a successor is being started
	child    *exec.Cmd // the successor this process started
	waiters  []chan error
}

func newHotRestart(log *slog.Logger, dir *runtimedir.Dir, srv *dataplane.Server, st *stats.Store, b *bootstrapv3.Bootstrap, readyTimeout time.Duration) *hotRestart {
	h := &hotRestart{log: log, dir: dir, srv: srv, st: st, boot: b, handedOver: make(chan struct{}),
		abandoned: st.Counter("server.hot_restart_abandoned")}
	h.parent = &restart.Parent{
		Log:          log,
		State:        h.state,
		Handover:     h.handover,
		Finished:     h.finished,
		Abandoned:    h.abandonedBy,
		Admit:        h.admit,
		ReadyTimeout: readyTimeout,
	}
	return h
}

// serve listens on the reconfig socket and answers successors until ctx is
// done; SIGHUP starts one.
func (h *hotRestart) serve(ctx context.Context, hup <-chan os.Signal) error {
	path := h.dir.File(restart.SocketName)
	ln, err := restart.Listen(path)
	if err != nil {
		return err
	}
	id := fileID(path)
	go func() {
		h.parent.Serve(ctx, ln)
		if !h.wasHandedOver() {
			// A successor binds its own reconfig.sock, perhaps on the inode
			// number of the one it removed: never remove it then.
			removeIfSame(path, id)
		}
	}()
	go onSignal(ctx, hup, func() {
		h.log.Info("SIGHUP: starting a hot restart")
		if _, err := h.start(ctx, ""); err != nil {
			h.log.Warn("hot restart not started", "error", err)
		}
	})
	return nil
}

// start launches a successor running binary (empty: this executable, with the
// same arguments) and waits until it took over or failed.
func (h *hotRestart) start(ctx context.Context, binary string) (int, error) {
	h.mu.Lock()
	if h.starting || h.parent.Busy() {
		h.mu.Unlock()
		return 0, restart.ErrBusy
	}
	select {
	case <-h.handedOver:
		h.mu.Unlock()
		return 0, errors.New("this skiff has already handed over to a successor")
	default:
	}
	if binary == "" {
		exe, err := os.Executable()
		if err != nil {
			h.mu.Unlock()
			return 0, fmt.Errorf("finding this executable: %w", err)
		}
		binary = exe
	}
	cmd := exec.Command(binary, os.Args[1:]...)
	cmd.Env = append(os.Environ(), restartChildEnv+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		h.mu.Unlock()
		return 0, fmt.Errorf("starting %s: %w", binary, err)
	}
	h.starting, h.child = true, cmd
	done := make(chan error, 1)
	h.waiters = append(h.waiters, done)
	h.mu.Unlock()
	pid := cmd.Process.Pid
	h.log.Info("hot restart: successor started", "pid", pid, "binary", binary)
	go func() {
		err := cmd.Wait() // reap it whenever it exits
		h.mu.Lock()
		stillStarting := h.starting && h.child == cmd
		h.mu.Unlock()
		if stillStarting {
			h.abandonedBy(fmt.Errorf("the successor (pid %d) exited before taking over: %v", pid, err))
		}
	}()
	select {
	case err := <-done:
		return pid, err
	case <-ctx.Done():
		return pid, ctx.Err()
	}
}

// admit lets a successor take over unless this process started one itself
// and is waiting for it: then only that one may.
func (h *hotRestart) admit(pid int64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.starting && h.child != nil && int64(h.child.Process.Pid) != pid {
		return fmt.Errorf("%w (waiting for the successor with pid %d)", restart.ErrBusy, h.child.Process.Pid)
	}
	return nil
}

// state is what a successor receives.
func (h *hotRestart) state() (*restart.State, error) {
	b, err := proto.Marshal(h.boot)
	if err != nil {
		return nil, err
	}
	socks, err := h.srv.HandOutSockets()
	if err != nil {
		return nil, err
	}
	if h.adminTCP != nil {
		f, err := h.adminTCP.(*net.TCPListener).File()
		if err != nil {
			closeSockets(socks)
			return nil, fmt.Errorf("duplicating the admin socket: %w", err)
		}
		socks = append(socks, restart.ListenSocket{Key: adminSocketKey, Address: h.adminTCP.Addr().String(), File: f})
	}
	hd := &restartv1.Handover{Generation: h.epoch, Bootstrap: b, StatsPath: h.st.Path()}
	if h.xds != nil {
		hd.Xds = h.xds()
	}
	return &restart.State{Handover: hd, Sockets: socks, Lock: h.dir.LockFile()}, nil
}

// handover runs once the successor is ready: stop accepting, move the TCP
// proxy connections.
func (h *hotRestart) handover(context.Context) ([]restart.Moved, func(), error) {
	h.srv.StopAccepting()
	moved, done := h.srv.MoveConnections()
	return moved, done, nil
}

// finished: the successor has everything; this process drains and exits.
func (h *hotRestart) finished() {
	h.mu.Lock()
	child := h.child
	h.starting = false
	h.notifyLocked(nil)
	h.mu.Unlock()
	if child != nil {
		if err := sdnotify.MainPID(child.Process.Pid); err != nil {
			h.log.Warn("telling systemd the successor's pid", "error", err)
		}
	}
	if h.adminTCP != nil {
		h.adminTCP.Close() // admin.address is the successor's now; admin.sock already is
	}
	h.handoffOnce.Do(func() { close(h.handedOver) })
}

// wasHandedOver reports whether a successor took over from this process.
func (h *hotRestart) wasHandedOver() bool {
	select {
	case <-h.handedOver:
		return true
	default:
		return false
	}
}

// adminSocketKey marks the admin.address socket among the handed-over sockets.
const adminSocketKey = "admin"

func closeSockets(socks []restart.ListenSocket) {
	for _, s := range socks {
		s.File.Close()
	}
}

// splitAdminSocket takes the admin.address socket out of inherited sockets.
func splitAdminSocket(socks []restart.ListenSocket) (rest []restart.ListenSocket, admin *os.File) {
	for _, s := range socks {
		if s.Key == adminSocketKey {
			admin = s.File
			continue
		}
		rest = append(rest, s)
	}
	return rest, admin
}

// abandonedBy: the successor failed; this process keeps serving.
func (h *hotRestart) abandonedBy(reason error) {
	h.abandoned.Inc()
	h.log.Error("hot restart abandoned; this skiff keeps serving", "reason", reason)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.child != nil && h.child.ProcessState == nil {
		h.child.Process.Kill() // it failed; do not leave it half started
	}
	h.starting, h.child = false, nil
	h.notifyLocked(reason)
}

func (h *hotRestart) notifyLocked(err error) {
	for _, w := range h.waiters {
		w <- err
	}
	h.waiters = nil
}

// takeOver is the successor's side: the runtime directory belongs to a running
// skiff, so receive its state.
func takeOver(ctx context.Context, path string, log *slog.Logger) (*restart.Inherited, *runtimedir.Dir, error) {
	in, err := restart.Connect(ctx, path+"/"+restart.SocketName, version)
	if err != nil {
		return nil, nil, err
	}
	if in.Lock == nil {
		in.Refuse("no runtime directory lock was handed over")
		return nil, nil, errors.New("hot restart: the parent did not hand over the runtime directory lock")
	}
	log.Info("hot restart: taking over", "epoch", in.Handover.GetGeneration()+1,
		"sockets", len(in.Sockets), "xds_types", len(in.Handover.GetXds().GetTypes()))
	return in, runtimedir.Adopt(path, in.Lock), nil
}
