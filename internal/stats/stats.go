// Package stats holds skiff's counters and gauges.
//
// Code on the data path never looks a stat up by name: it obtains a handle (Counter,
// Gauge) once, when a listener, filter or cluster is built, and updates it with a
// single atomic operation. A handle is a pointer to the value's storage, so the
// storage can live in memory shared with other processes (a hot-restart successor,
// `skiff stats`) without the data path knowing.
//
// Names follow Envoy's (listener.<address>.downstream_cx_total,
// cluster.<name>.upstream_cx_connect_fail, tcp.<stat_prefix>.downstream_cx_total, ...).
package stats

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
)

// Counter is a handle to a monotonically increasing value.
type Counter struct{ v *atomic.Uint64 }

// Inc adds one.
func (c Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the current value.
func (c Counter) Value() uint64 { return c.v.Load() }

// Gauge is a handle to a value that goes up and down.
type Gauge struct{ v *atomic.Int64 }

// Inc adds one.
func (g Gauge) Inc() { g.v.Add(1) }

// Dec subtracts one.
func (g Gauge) Dec() { g.v.Add(-1) }

// Add adds n (which may be negative).
func (g Gauge) Add(n int64) { g.v.Add(n) }

// Set replaces the value.
func (g Gauge) Set(n int64) { g.v.Store(n) }

// Value returns the current value.
func (g Gauge) Value() int64 { return g.v.Load() }

// Kind says what a Sample is.
type Kind uint8

// Stat kinds.
const (
	KindCounter Kind = iota + 1
	KindGauge
)

func (k Kind) String() string {
	switch k {
	case KindCounter:
		return "counter"
	case KindGauge:
		return "gauge"
	}
	return "unknown"
}

// Sample is one stat's value at the time of a Snapshot.
type Sample struct {
	Name  string
	Kind  Kind
	Value int64
}

// Store hands out stat handles by name. Asking twice for the same name returns
// handles to the same value, so two generations of a listener share their counters.
// A Store is safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	counters map[string]*atomic.Uint64
	gauges   map[string]*atomic.Int64
}

// NewStore returns an empty in-process Store.
func NewStore() *Store {
	return &Store{counters: map[string]*atomic.Uint64{}, gauges: map[string]*atomic.Int64{}}
}

// Counter returns the handle of the named counter, creating it at zero.
func (s *Store) Counter(name string) Counter {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.counters[name]
	if !ok {
		v = new(atomic.Uint64)
		s.counters[name] = v
	}
	return Counter{v}
}

// Gauge returns the handle of the named gauge, creating it at zero.
func (s *Store) Gauge(name string) Gauge {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.gauges[name]
	if !ok {
		v = new(atomic.Int64)
		s.gauges[name] = v
	}
	return Gauge{v}
}

// Snapshot returns every stat, sorted by name.
func (s *Store) Snapshot() []Sample {
	s.mu.Lock()
	out := make([]Sample, 0, len(s.counters)+len(s.gauges))
	for name, v := range s.counters {
		out = append(out, Sample{Name: name, Kind: KindCounter, Value: int64(v.Load())})
	}
	for name, v := range s.gauges {
		out = append(out, Sample{Name: name, Kind: KindGauge, Value: v.Load()})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Sample) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Value returns the value of the named stat and whether it exists.
func (s *Store) Value(name string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.counters[name]; ok {
		return int64(v.Load()), true
	}
	if v, ok := s.gauges[name]; ok {
		return v.Load(), true
	}
	return 0, false
}
