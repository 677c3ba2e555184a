package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// closeWatcher notices at once when an upstream closes one of the pooled
// HTTP/1.1 connections, as Envoy's event loop does (a RemoteClose event,
// ConnPoolImplBase::onConnectionEvent): an idle one is closed and counted in
// upstream_cx_destroy_remote, instead of lingering in CLOSE-WAIT until a
// request finds it dead (a request Envoy would not send on it).
//
// It is an epoll instance of its own, separate from the Go runtime's poller,
// in which every HTTP/1.1 connection is registered once, when it first goes
// idle, for EPOLLRDHUP (the upstream's FIN) alone, edge-triggered: a
// request's bytes, which wake the runtime's poller, do not wake this one, so
// the keep-alive path makes no system call and no goroutine hand-off for it.
// One goroutine waits in epoll_wait for every pool of the Manager and hands
// each event to the connection's pool (Pool.upstreamClosed). A connection is
// not unregistered: closing its descriptor removes it from the epoll set.
type closeWatcher struct {
	epfd int // the epoll instance
	evfd int // an eventfd in it: written to stop the watcher
	done chan struct{}
	log  *slog.Logger

	mu    sync.Mutex
	conns map[uint64]*Conn // by watch ID, which an event carries
	next  uint64
}

// newCloseWatcher makes the epoll instance and starts the goroutine.
func newCloseWatcher(log *slog.Logger) (*closeWatcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN} // data 0: the stop signal
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	w := &closeWatcher{epfd: epfd, evfd: evfd, done: make(chan struct{}), log: log, conns: map[uint64]*Conn{}}
	go w.run()
	return w, nil
}

// add registers c, whose socket is rc, and reports whether it did. An
// upstream that already closed it is reported at once.
func (w *closeWatcher) add(c *Conn, rc syscall.RawConn) bool {
	w.mu.Lock()
	w.next++
	id := w.next
	w.conns[id] = c
	w.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var err error
	if cerr := rc.Control(func(fd uintptr) { err = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) }); cerr != nil {
		err = cerr
	}
	if err != nil {
		w.remove(id)
		w.log.Debug("upstream connection not watched for its close", "error", err)
		return false
	}
	c.watchID = id
	return true
}

// remove forgets the connection of a watch ID (an event for it that is
// still on its way is then ignored).
func (w *closeWatcher) remove(id uint64) {
	w.mu.Lock()
	delete(w.conns, id)
	w.mu.Unlock()
}

// run waits for the upstreams' closes until stop.
func (w *closeWatcher) run() {
	defer close(w.done)
	var evs [64]unix.EpollEvent
	for {
		n, err := unix.EpollWait(w.epfd, evs[:], -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.log.Error("upstream connection close watcher failed", "error", err)
			return
		}
		for _, ev := range evs[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == 0 {
				return
			}
			w.mu.Lock()
			c := w.conns[id]
			w.mu.Unlock()
			if c != nil {
				c.p.upstreamClosed(c)
			}
		}
	}
}

// stop ends the goroutine and closes the epoll instance.
func (w *closeWatcher) stop() {
	one := [8]byte{1}
	unix.Write(w.evfd, one[:])
	<-w.done
	unix.Close(w.evfd)
	unix.Close(w.epfd)
}
