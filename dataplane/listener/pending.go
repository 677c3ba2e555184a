package listener

import (
	"sync"

	"github.com/skiffproxy/skiff/dataplane/filter"
)

// PendingConns are the connections running their listener filters, of every
// listener of a server. They belong to no filter chain's ConnSet yet, so
// what ends the chains' connections (the end of a drain, a shutdown) does
// not reach them: a client that sends nothing to a listener whose
// listener_filters_timeout is 0s would hold its connection, and its
// listener, for good. CloseFor and Close end them, as Envoy's listener
// purges its pending sockets when it goes.
type PendingConns struct {
	mu     sync.Mutex
	conns  map[*filter.Conn]*Listener
	closed bool
}

// NewPendingConns returns an empty set.
func NewPendingConns() *PendingConns {
	return &PendingConns{conns: map[*filter.Conn]*Listener{}}
}

// add registers c, a connection of l; false once Close was called.
func (p *PendingConns) add(c *filter.Conn, l *Listener) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = l
	return true
}

func (p *PendingConns) remove(c *filter.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// CloseFor closes the connections of l still in their listener filters:
// their filters fail and the connections end unserved.
func (p *PendingConns) CloseFor(l *Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, owner := range p.conns {
		if owner == l {
			c.Conn.Close()
		}
	}
}

// Close closes every connection in its listener filters, and those that
// start them afterwards.
func (p *PendingConns) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for c := range p.conns {
		c.Conn.Close()
	}
}
