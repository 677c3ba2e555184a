package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/listener"
	"github.com/skiffproxy/skiff/dataplane/restart"
	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
)

// HandOutSockets returns duplicates of every listening socket, with the keys a
// successor's listeners find them by. The caller owns the files.
func (s *Server) HandOutSockets() ([]restart.ListenSocket, error) {
	keys, files, err := s.sockets.HandOut()
	if err != nil {
		return nil, err
	}
	out := make([]restart.ListenSocket, len(keys))
	for i := range keys {
		out[i] = restart.ListenSocket{Key: keys[i], File: files[i]}
	}
	return out, nil
}

// InheritSockets makes the listening sockets a hot-restart parent handed over
// available to Apply: a listener whose socket spec matches one uses it instead
// of binding. Call SettleInherited after the first Apply.
func (s *Server) InheritSockets(socks []restart.ListenSocket) error {
	for _, ls := range socks {
		if err := s.sockets.Inherit(ls.Key, ls.File); err != nil {
			return err
		}
	}
	return nil
}

// SettleInherited closes the inherited sockets no listener took, first
// steering their addresses to the sockets that replaced them (see
// listener.SocketTable.SettleInherited).
func (s *Server) SettleInherited() { s.sockets.SettleInherited() }

// StopAccepting makes every listener stop accepting, as a hot-restart parent
// does once its successor is ready; connections go on.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdown = true // no Apply from now on starts a listener
	for _, l := range s.listeners {
		l.StopAccepting()
	}
}

// MoveConnections stops every connection that can be moved (TCP proxy pairs,
// HTTP/1.1 connections between exchanges) at a safe point and returns them
// for a hot-restart successor, with the function to call once they have been
// sent (it closes this process's copies). A connection that stopped but could
// not be duplicated is closed and logged; the others go on.
func (s *Server) MoveConnections() ([]restart.Moved, func()) {
	s.mu.Lock()
	type owned struct {
		listener string
		c        *filter.Conn
	}
	var conns []owned
	for name, l := range s.listeners {
		for _, ch := range listener.AllChains(l.Config()) {
			for _, c := range ch.Conns().Snapshot() {
				conns = append(conns, owned{name, c})
			}
		}
	}
	for ch := range s.retired {
		for _, c := range ch.Conns().Snapshot() {
			conns = append(conns, owned{c.Listener, c})
		}
	}
	s.mu.Unlock()

	var mu sync.Mutex
	var moved []restart.Moved
	var releases []func()
	var wg sync.WaitGroup
	for _, o := range conns {
		m := o.c.Mover()
		if m == nil {
			continue
		}
		wg.Go(func() {
			mc, ok := m.Move()
			if !ok {
				return
			}
			rm, err := movedFiles(o.listener, mc)
			if err != nil {
				// This one cannot go (out of descriptors, say): it was stopped,
				// so it is closed; the others go on to the successor.
				s.log.Warn("hot restart: a connection could not be handed over; closing it", "conn", o.c.ID, "listener", o.listener, "error", err)
				mc.Release()
				return
			}
			mu.Lock()
			defer mu.Unlock()
			releases = append(releases, mc.Release)
			moved = append(moved, rm)
		})
	}
	wg.Wait()
	done := func() {
		for _, r := range releases {
			r()
		}
		for _, m := range moved {
			m.Down.Close()
			if m.Up != nil {
				m.Up.Close()
			}
		}
	}
	return moved, done
}

func movedFiles(listenerName string, mc *filter.MovedConn) (restart.Moved, error) {
	df, err := fileOf(mc.Down)
	if err != nil {
		return restart.Moved{}, fmt.Errorf("duplicating a moved connection: %w", err)
	}
	kind := restartv1.ConnectionKind_CONNECTION_KIND_HTTP1_IDLE
	var uf *os.File
	if mc.Kind == filter.MovedTCPPair {
		kind = restartv1.ConnectionKind_CONNECTION_KIND_TCP_PROXY
		if uf, err = fileOf(mc.Up); err != nil {
			df.Close()
			return restart.Moved{}, fmt.Errorf("duplicating a moved connection: %w", err)
		}
	}
	return restart.Moved{
		Info: &restartv1.MovedConnection{
			Kind:                kind,
			Listener:            listenerName,
			Cluster:             mc.Cluster,
			UpstreamHost:        mc.Host.String(),
			PendingToUpstream:   mc.Pending[0],
			PendingToDownstream: mc.Pending[1],
			IdleTimeoutMs:       mc.IdleTimeout.Milliseconds(),
			StartTimeUnixMicros: unixMicros(mc.Started),
		},
		Down: df, Up: uf,
	}, nil
}

// AdoptConnection resumes a connection a hot-restart parent moved, in the
// listener of the same name. It owns m's files.
func (s *Server) AdoptConnection(m restart.Moved) {
	defer m.Down.Close()
	if m.Up != nil {
		defer m.Up.Close()
	}
	down, err := net.FileConn(m.Down)
	if err != nil {
		s.log.Warn("hot restart: adopting a moved connection", "error", err)
		return
	}
	kind := filter.MovedHTTP1Idle
	var up net.Conn
	if m.Info.GetKind() != restartv1.ConnectionKind_CONNECTION_KIND_HTTP1_IDLE {
		kind = filter.MovedTCPPair
		if m.Up == nil {
			down.Close()
			s.log.Warn("hot restart: a moved TCP proxy pair came without its upstream connection")
			return
		}
		if up, err = net.FileConn(m.Up); err != nil {
			down.Close()
			s.log.Warn("hot restart: adopting a moved connection", "error", err)
			return
		}
	}
	s.mu.Lock()
	l := s.listeners[m.Info.GetListener()]
	s.mu.Unlock()
	if l == nil {
		s.log.Warn("hot restart: a moved connection's listener is gone; closing it", "listener", m.Info.GetListener())
		down.Close()
		if up != nil {
			up.Close()
		}
		return
	}
	mc := &filter.MovedConn{
		Kind:        kind,
		Up:          up,
		Pending:     [2][]byte{m.Info.GetPendingToUpstream(), m.Info.GetPendingToDownstream()},
		Cluster:     m.Info.GetCluster(),
		IdleTimeout: time.Duration(m.Info.GetIdleTimeoutMs()) * time.Millisecond,
	}
	if us := m.Info.GetStartTimeUnixMicros(); us != 0 {
		mc.Started = time.UnixMicro(us)
	}
	mc.Host, _ = netip.ParseAddrPort(m.Info.GetUpstreamHost()) // zero if unknown: no host counts it
	l.Adopt(down, mc)
}

// unixMicros is t in microseconds since the Unix epoch, 0 for the zero time.
func unixMicros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// fileOf duplicates a connection's descriptor.
func fileOf(c net.Conn) (*os.File, error) {
	f, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("a %T has no file descriptor to hand over", c)
	}
	return f.File()
}
