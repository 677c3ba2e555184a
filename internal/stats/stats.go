package stats

import (
	"cmp"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Counter is a handle to a monotonically increasing value.
type Counter struct{ v *atomic.Uint64 }

// Inc adds one.
func (c Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the current value.
func (c Counter) Value() uint64 { return c.v.Load() }

// Gauge is a handle to a value that goes up and down. A gauge that was
// written counts as used (Sample.Used) whatever its value, as Envoy's:
// server.state is 0 once the server is live, a connection gauge is 0 again
// once its connections closed.
type Gauge struct {
	v    *atomic.Int64
	used *atomic.Bool
}

// Inc adds one.
func (g Gauge) Inc() { g.Add(1) }

// Dec subtracts one.
func (g Gauge) Dec() { g.Add(-1) }

// Add adds n (which may be negative).
func (g Gauge) Add(n int64) {
	g.v.Add(n)
	g.markUsed()
}

// Set replaces the value.
func (g Gauge) Set(n int64) {
	g.v.Store(n)
	g.markUsed()
}

// markUsed records that the gauge was written: a load, and a store only
// the first time.
func (g Gauge) markUsed() {
	if !g.used.Load() {
		g.used.Store(true)
	}
}

// Value returns the current value.
func (g Gauge) Value() int64 { return g.v.Load() }

// Kind says what a Sample is.
type Kind uint8

// Stat kinds.
const (
	KindCounter Kind = iota + 1
	KindGauge
	KindHistogram
)

func (k Kind) String() string {
	switch k {
	case KindCounter:
		return "counter"
	case KindGauge:
		return "gauge"
	case KindHistogram:
		return "histogram"
	}
	return "unknown"
}

// ImportMode says what a hot-restart successor does with a gauge its
// predecessor also has (Envoy's Gauge::ImportMode).
type ImportMode uint8

const (
	// Accumulate: parent and successor share one value, so it carries over and
	// both processes' updates add up (connections active in the draining parent
	// plus those of the successor). Counters always behave this way.
	Accumulate ImportMode = iota
	// NeverImport: each generation has its own value, starting at zero; readers
	// of the file show the newest generation's (server.live, server.uptime).
	NeverImport
)

func (m ImportMode) String() string {
	switch m {
	case Accumulate:
		return "Accumulate"
	case NeverImport:
		return "NeverImport"
	}
	return "unknown"
}

// Sample is one stat at the time of a Snapshot. Value is set for counters and
// gauges, Histogram for histograms.
type Sample struct {
	Name      string
	Kind      Kind
	Value     int64
	Mode      ImportMode // gauges
	Histogram *HistogramSnapshot
	// Used says the stat was written, as Envoy's ?usedonly means it: a
	// counter that is not 0, a gauge written to (whatever its value now), a
	// histogram that recorded a value.
	Used bool
}

// Store hands out stat handles by name. Asking twice for the same name (and
// kind) returns handles to the same value, so two generations of a listener
// share their counters. A Store is safe for concurrent use.
type Store struct {
	mu      sync.Mutex
	entries map[key]*entry
	root    map[key]bool // entries the Store itself holds until Close
	reg     *region      // nil: in-memory
	log     *slog.Logger
	accept  func(name string) bool // nil: every name
	closed  bool

	overflow Counter // file-backed only
	warned   bool
}

type key struct {
	name string
	kind Kind
}

// entry is a stat this process holds, with the number of holders (the Store
// and Scopes) it has here.
type entry struct {
	mode ImportMode
	p    unsafe.Pointer // the 8-byte value: in the region, or on the heap
	slot int64          // -1: not in the region
	hist *histogram
	refs int
	used atomic.Bool // a gauge was written
}

func (e *entry) gauge() Gauge { return Gauge{v: (*atomic.Int64)(e.p), used: &e.used} }

// Option configures Open.
type Option func(*options)

type options struct {
	log         *slog.Logger
	accept      func(name string) bool
	capacity    int
	capacitySet bool
	lockTimeout time.Duration
}

// WithLogger sets where Open and the Store report repairs, replacements and
// overflows.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithAccept makes the Store keep only the stats whose names accept accepts
// (a bootstrap's stats_matcher): any other it hands out detached, as Envoy's
// null stats, never in the region nor in a Snapshot. Nil accepts every name.
func WithAccept(accept func(name string) bool) Option {
	return func(o *options) { o.accept = accept }
}

// WithCapacity sets how many counters and gauges a region created by Open can
// hold (DefaultCapacity otherwise; at least 16). An existing region keeps its
// capacity while another generation uses it; a region with a different capacity
// and no live owner is recreated.
func WithCapacity(n int) Option {
	return func(o *options) { o.capacity, o.capacitySet = n, true }
}

// WithLockTimeout bounds how long the Store waits for the region's allocator
// lock, held by another process, before giving up (default 5s).
func WithLockTimeout(d time.Duration) Option { return func(o *options) { o.lockTimeout = d } }

// NewStore returns an empty in-process Store (tests, --mode validate). Its
// values live on the heap and are seen by nobody else.
func NewStore() *Store {
	return &Store{entries: map[key]*entry{}, root: map[key]bool{}, log: slog.New(slog.DiscardHandler)}
}

// Open returns a Store backed by the region in the file at path, creating the
// file if needed, replacing it if it is corrupt, and refusing it (with a
// *VersionError) if it has another layout version. The Store is a new
// generation of the region: if another process (a hot-restart parent) has it
// open, stats of the same name share their values with it.
func Open(path string, opts ...Option) (*Store, error) {
	o := &options{log: slog.New(slog.DiscardHandler), capacity: DefaultCapacity, lockTimeout: 5 * time.Second}
	for _, opt := range opts {
		opt(o)
	}
	reg, err := openRegion(path, o)
	if err != nil {
		return nil, err
	}
	s := &Store{entries: map[key]*entry{}, root: map[key]bool{}, reg: reg, log: o.log, accept: o.accept}
	s.overflow = s.Counter("stats.overflow")
	return s, nil
}

// Generation is the Store's generation number in its region: one more than the
// previous process (or Store) that opened it. 0 for an in-memory Store.
func (s *Store) Generation() uint64 {
	if s.reg == nil {
		return 0
	}
	return s.reg.gen
}

// Path is the region's file, or "" for an in-memory Store.
func (s *Store) Path() string {
	if s.reg == nil {
		return ""
	}
	return s.reg.path
}

// Counter returns the handle of the named counter, creating it at zero. The
// Store holds it until Close; use a Scope for stats that should be reclaimed
// earlier.
func (s *Store) Counter(name string) Counter {
	return Counter{(*atomic.Uint64)(s.holdRoot(key{name, KindCounter}, Accumulate).p)}
}

// Gauge returns the handle of the named Accumulate gauge, creating it at zero.
func (s *Store) Gauge(name string) Gauge { return s.GaugeMode(name, Accumulate) }

// GaugeMode returns the handle of the named gauge with the given import mode.
// The mode is fixed when this process first creates the gauge; asking again
// with another mode returns the existing gauge.
func (s *Store) GaugeMode(name string, mode ImportMode) Gauge {
	return s.holdRoot(key{name, KindGauge}, mode).gauge()
}

// Histogram returns the handle of the named histogram. Histograms live in
// process memory (they do not carry over a restart, and 'skiff stats' does not
// show them); Snapshot exports them.
func (s *Store) Histogram(name string) Histogram {
	return Histogram{s.holdRoot(key{name, KindHistogram}, Accumulate).hist}
}

func (s *Store) holdRoot(k key, mode ImportMode) *entry {
	if s.rejects(k) {
		return detached(k, mode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.root[k] {
		s.root[k] = true
		return s.hold(k, mode)
	}
	return s.entries[k]
}

// rejects reports whether the stat k is one the Store does not keep.
func (s *Store) rejects(k key) bool { return s.accept != nil && !s.accept(k.name) }

// detached returns a stat of nobody's: its value is private to its handles.
func detached(k key, mode ImportMode) *entry {
	e := &entry{mode: mode, slot: -1, p: unsafe.Pointer(new(atomic.Uint64))}
	if k.kind == KindHistogram {
		e.hist = new(histogram)
	}
	return e
}

// hold adds a holder to the stat k, creating it if this process has none.
func (s *Store) hold(k key, mode ImportMode) *entry {
	e := s.entries[k]
	if e == nil {
		e = &entry{mode: mode, slot: -1}
		if k.kind == KindHistogram {
			e.hist = new(histogram)
		} else {
			s.place(e, k)
		}
		s.entries[k] = e
	}
	e.refs++
	return e
}

// place puts e's value in the region, or on the heap if there is no region or
// it cannot take it.
func (s *Store) place(e *entry, k key) {
	if s.reg != nil && !s.closed {
		slot, err := s.reg.acquire(k.name, k.kind, e.mode)
		if err == nil {
			e.slot, e.p = int64(slot), s.reg.valuePtr(slot)
			return
		}
		if !s.warned || !errors.Is(err, ErrFull) {
			s.log.Warn("stat kept in process memory, not in the stats region", "stat", k.name, "error", err)
			s.warned = s.warned || errors.Is(err, ErrFull)
		}
		if s.overflow.v != nil {
			s.overflow.Inc()
		}
	}
	e.p = unsafe.Pointer(new(atomic.Uint64))
}

// unhold drops a holder of k; the last one gives the slot back to the region.
func (s *Store) unhold(k key) {
	e := s.entries[k]
	if e == nil {
		return
	}
	if e.refs--; e.refs > 0 {
		return
	}
	delete(s.entries, k)
	if e.slot >= 0 && !s.closed {
		if err := s.reg.drop(uint32(e.slot)); err != nil {
			// The hold stays in the file; it is reclaimed when this
			// generation ends.
			s.log.Warn("stats region: releasing a stat", "stat", k.name, "error", err)
		}
	}
}

// Snapshot returns every stat this process holds, sorted by name (then kind).
func (s *Store) Snapshot() []Sample {
	s.mu.Lock()
	out := make([]Sample, 0, len(s.entries))
	for k, e := range s.entries {
		sm := Sample{Name: k.name, Kind: k.kind, Mode: e.mode}
		switch k.kind {
		case KindCounter:
			sm.Value = int64((*atomic.Uint64)(e.p).Load())
			sm.Used = sm.Value != 0
		case KindGauge:
			sm.Value = (*atomic.Int64)(e.p).Load()
			sm.Used = sm.Value != 0 || e.used.Load()
		case KindHistogram:
			sm.Histogram = e.hist.snapshot()
			sm.Used = sm.Histogram.Count > 0
		}
		out = append(out, sm)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Sample) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
	})
	return out
}

// Value returns the value of the named counter or gauge (the counter if there
// are both) and whether it exists.
func (s *Store) Value(name string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[key{name, KindCounter}]; ok {
		return int64((*atomic.Uint64)(e.p).Load()), true
	}
	if e, ok := s.entries[key{name, KindGauge}]; ok {
		return (*atomic.Int64)(e.p).Load(), true
	}
	return 0, false
}

// Sweep reclaims the stats held only by generations that have exited or
// crashed, and returns how many it freed. ServerStats.Run calls it
// periodically; Open and a full region call it too.
func (s *Store) Sweep() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reg == nil || s.closed {
		return 0, nil
	}
	return s.reg.sweep()
}

// Close ends the Store's generation (see the package documentation for what
// happens to its stats). Handles stay safe to use afterwards, but their updates
// are private to this process. Close is idempotent; it does nothing for an
// in-memory Store.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.reg == nil {
		return nil
	}
	s.closed = true
	return s.reg.close()
}

// Scope is a group of stats owned together, such as a listener's or a
// cluster's. Its stats stay while the Scope (or another holder in this process
// or another generation) holds them; Close releases them, and a stat nobody
// holds any more is reclaimed: its slot and name go back to the region.
// Handles of a closed Scope must no longer be used: they stay memory-safe, but
// may count into a stat that reuses the slot.
type Scope struct {
	s      *Store
	prefix string
	held   map[key]bool
	closed bool
}

// Scope returns a new Scope whose stats are named prefix + name.
func (s *Store) Scope(prefix string) *Scope {
	return &Scope{s: s, prefix: prefix, held: map[key]bool{}}
}

// Counter returns the handle of the counter prefix+name.
func (sc *Scope) Counter(name string) Counter {
	return Counter{(*atomic.Uint64)(sc.hold(key{sc.prefix + name, KindCounter}, Accumulate).p)}
}

// Gauge returns the handle of the Accumulate gauge prefix+name.
func (sc *Scope) Gauge(name string) Gauge { return sc.GaugeMode(name, Accumulate) }

// GaugeMode returns the handle of the gauge prefix+name with the given mode.
func (sc *Scope) GaugeMode(name string, mode ImportMode) Gauge {
	return sc.hold(key{sc.prefix + name, KindGauge}, mode).gauge()
}

// Histogram returns the handle of the histogram prefix+name.
func (sc *Scope) Histogram(name string) Histogram {
	return Histogram{sc.hold(key{sc.prefix + name, KindHistogram}, Accumulate).hist}
}

func (sc *Scope) hold(k key, mode ImportMode) *entry {
	s := sc.s
	if s.rejects(k) {
		return detached(k, mode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc.closed {
		// A closed Scope hands out detached stats rather than resurrect holds
		// nobody would release.
		return detached(k, mode)
	}
	if sc.held[k] {
		return s.entries[k]
	}
	sc.held[k] = true
	return s.hold(k, mode)
}

// Close releases the Scope's stats. It is idempotent.
func (sc *Scope) Close() {
	s := sc.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc.closed {
		return
	}
	sc.closed = true
	for k := range sc.held {
		s.unhold(k)
	}
	sc.held = nil
}
