package listener

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/skiffproxy/skiff/dataplane/filter"
)

// ConnSet is the registry of the connections one filter chain accepted. Draining a
// chain, counting what it still serves and ending what is left are operations on
// its ConnSet, and so will be handing its connections to a successor process.
type ConnSet struct {
	mu          sync.Mutex
	conns       map[*filter.Conn]struct{}
	closed      bool
	draining    chan struct{} // closed by Drain
	closingIdle chan struct{} // closed by DrainNow
	drainOne    sync.Once
	nowOne      sync.Once
	// A gradual drain's start and length (set before draining is closed);
	// a zero window is an immediate drain.
	drainStart  time.Time
	drainWindow time.Duration

	// ctx is the parent of every connection's context; Close cancels it. It lives
	// as long as the chain does, like http.Server's base context.
	ctx    context.Context
	cancel context.CancelFunc

	// health, if not nil, makes DrainClose say yes while the server fails
	// its health checks (the chain of a listener with drain_type DEFAULT).
	health filter.ServerHealth
}

// NewConnSet returns an empty, open set.
func NewConnSet() *ConnSet { return newConnSet(nil) }

// newConnSet returns an empty, open set whose connections also end at their
// next safe point while health says the server fails its health checks (nil:
// they do not).
func newConnSet(health filter.ServerHealth) *ConnSet {
	ctx, cancel := context.WithCancel(context.Background())
	return &ConnSet{conns: map[*filter.Conn]struct{}{}, draining: make(chan struct{}), closingIdle: make(chan struct{}), ctx: ctx, cancel: cancel,
		health: health}
}

// add registers c and returns the context it must be served with. It returns
// false if the set is already closed, in which case c must be closed.
func (s *ConnSet) add(c *filter.Conn) (context.Context, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	s.conns[c] = struct{}{}
	return s.ctx, true
}

func (s *ConnSet) remove(c *filter.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// Draining returns the channel the set's connections see as Conn.Draining
// (filter.DrainDecision).
func (s *ConnSet) Draining() <-chan struct{} { return s.draining }

// Snapshot returns the connections in the set now.
func (s *ConnSet) Snapshot() []*filter.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*filter.Conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Len is the number of connections in the set.
func (s *ConnSet) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Drain asks every connection, present and future, to end at its next safe
// point, without ending idle ones (see filter.Conn.OnDrain): the drain hooks
// of the connections present have run when it returns. DrainClose says yes
// from the start (Envoy's immediate drain strategy).
func (s *ConnSet) Drain() { s.DrainGradually(0) }

// DrainGradually is Drain with Envoy's gradual drain strategy: DrainClose
// says yes with a probability that grows from 0 to 1 over window, so that
// the connections end spread over it rather than all at once.
func (s *ConnSet) DrainGradually(window time.Duration) {
	s.drainOne.Do(func() {
		s.drainStart, s.drainWindow = time.Now(), window
		close(s.draining)
		for _, c := range s.Snapshot() {
			c.Drain(false)
		}
	})
}

// DrainClose implements filter.DrainDecision: whether a connection should
// end at its next safe point now. Before the set drains, only while the
// server fails its health checks, and only for a set made with a health (a
// listener with drain_type DEFAULT), as Envoy's DrainManagerImpl::drainClose
// answers (its HTTP connection managers then close HTTP/1.1 connections after
// each response and send HTTP/2 GOAWAY); once it drains, as the drain
// strategy says.
func (s *ConnSet) DrainClose() bool {
	select {
	case <-s.draining:
	default:
		return s.health != nil && s.health.HealthCheckFailed()
	}
	select {
	case <-s.closingIdle: // a shutdown: everything ends now
		return true
	default:
	}
	w := s.drainWindow
	if w <= 0 {
		return true
	}
	elapsed := time.Since(s.drainStart)
	return elapsed >= w || rand.Int64N(int64(w)) < int64(elapsed)
}

// DrainNow is Drain for a shutdown: idle connections end at once too.
func (s *ConnSet) DrainNow() {
	s.nowOne.Do(func() {
		s.drainOne.Do(func() { close(s.draining) })
		close(s.closingIdle)
		for _, c := range s.Snapshot() {
			c.Drain(true)
		}
	})
}

// ClosingIdle is closed by DrainNow: idle connections are to end at once (see
// filter.DrainDecision).
func (s *ConnSet) ClosingIdle() <-chan struct{} { return s.closingIdle }

// Close ends every connection now (their contexts are canceled; each terminal
// filter closes its connection) and refuses new ones.
func (s *ConnSet) Close() {
	s.Drain()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
}

var _ filter.DrainDecision = (*ConnSet)(nil)
