package route

import (
	"sync"
	"sync/atomic"
)

// Provider holds the compiled route configurations that HTTP connection
// managers load through RDS, by name. A connection manager takes its Slot once,
// when it is built, and loads the current Table from it for every request, so
// that an RDS update is one atomic swap per name: no listener is rebuilt and
// no connection is disturbed.
//
// A Provider is safe for concurrent use.
type Provider struct {
	mu    sync.Mutex
	slots map[string]*Slot
}

// Slot is where the current Table of one route configuration name is found.
type Slot struct {
	name string
	t    atomic.Pointer[Table]
}

// Name is the route configuration's name.
func (s *Slot) Name() string { return s.name }

// Table returns the current Table, or nil when none has arrived (a
// connection manager answers 404, as Envoy does for a route configuration
// that is not loaded).
func (s *Slot) Table() *Table { return s.t.Load() }

// NewProvider returns a Provider with no route configurations.
func NewProvider() *Provider { return &Provider{slots: map[string]*Slot{}} }

// Slot returns the slot of name, creating it (empty) if needed.
func (p *Provider) Slot(name string) *Slot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.slots[name]
	if s == nil {
		s = &Slot{name: name}
		p.slots[name] = s
	}
	return s
}

// Set makes tables the current route configurations: every name in tables
// gets its Table, every other slot is emptied.
func (p *Provider) Set(tables map[string]*Table) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, t := range tables {
		s := p.slots[name]
		if s == nil {
			s = &Slot{name: name}
			p.slots[name] = s
		}
		s.t.Store(t)
	}
	for name, s := range p.slots {
		if _, ok := tables[name]; !ok {
			s.t.Store(nil)
		}
	}
}

// Get returns the current Table of name, or nil.
func (p *Provider) Get(name string) *Table {
	p.mu.Lock()
	s := p.slots[name]
	p.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.Table()
}
