// Package stats holds skiff's counters, gauges and histograms.
//
// # Handles
//
// Code on the data path never looks a stat up by name: it obtains a handle
// (Counter, Gauge, Histogram) once, when a listener, filter or cluster is built,
// and updates it with one atomic operation (a histogram: two), without locks or
// allocation. A Counter or Gauge handle is a pointer to the value's 8-byte word,
// so the word can live in a file mapped by several processes (a hot-restart
// successor, 'skiff stats') without the data path knowing.
//
// Names follow Envoy's (listener.<address>.downstream_cx_total,
// cluster.<name>.upstream_cx_connect_fail, tcp.<stat_prefix>.downstream_cx_total,
// server.live, ...).
//
// # Stores
//
// NewStore returns an in-process Store (values on the heap) for tests and
// --mode validate. Open returns a Store backed by a region in a file, normally
// <runtime-dir>/stats, mapped MAP_SHARED: counters and gauges live there;
// histograms stay in process memory (Snapshot exports their buckets, count and
// sum, from which quantiles are computed). The layout is described, byte by
// byte, next to its constants in layout.go. In short: a header page (magic,
// layout version, geometry, allocator state, a table of 64 generation entries);
// an array of 8-byte values, nothing else in it; a parallel array of 32-byte
// descriptors (holders, hash, name reference, kind and import mode); the names,
// variable-length, as chains of 64-byte blocks (60 bytes of name each, so a
// name of any length up to MaxNameLen is stored whole: no truncation, no
// collision between long cluster names); and an open-addressing index from
// (kind, owner, name) to slot.
//
// # Capacity
//
// A region is sized when its file is created (DefaultCapacity stats, or
// WithCapacity) and does not grow: growing would mean remapping, and handles
// are pointers into the mapping. The file is sparse, so unused capacity costs
// address space only. When the region is full, a new stat is kept in process
// memory instead (it works, but does not carry over a restart and 'skiff stats'
// does not show it), stats.overflow counts it and the first occurrence is
// logged.
//
// # Generations and reclamation
//
// Each Store opened on a region is a generation: Open claims a free entry in
// the generation table, records a generation number (one more than the last),
// its pid and start time, and holds that entry's liveness lock (an OFD lock on
// one byte of the file, see package shm) for as long as it is open. The kernel
// drops the lock when the process exits or crashes, so any process can tell a
// live generation from a dead one without trusting pids.
//
// Every slot in use has a holders word: bit i set means generation entry i
// holds the stat. In a process, a stat is held by the Store itself (Counter,
// Gauge, ... on the Store: until Close) and by Scopes (until Scope.Close); the
// process counts its holders and keeps its bit in the file while there is at
// least one. A slot whose holders word becomes zero is freed at once: its index
// entry becomes a tombstone, its name blocks go back to their free list, its
// value is zeroed and the slot is appended to the free-slot list (FIFO, so it is
// reused as late as possible). Bits of dead generations are cleared by a sweep,
// which Open runs, which runs when the region looks full, and which
// ServerStats.Run runs every tick (Store.Sweep). So the region holds at most the
// stats that live generations hold, plus those of the last generation to exit
// (below), whatever the number of restarts or of clusters created and removed.
//
// # Hot restart: what each side does
//
// The successor calls Open on the same path while the parent runs. It gets its
// own generation entry and, as it builds its listeners and clusters, asks for
// stats by name: the index finds the parent's slots, the successor sets its bit
// in them, and its handles point to the same words. Counters and Accumulate
// gauges therefore continue: the parent's increments and the successor's land
// in one value. A NeverImport gauge is keyed by its owner as well as its name,
// so the successor gets a fresh slot at zero next to the parent's; readers of
// the file show the newest generation's.
//
// The parent drains and calls Close. Close sees a live successor, so it clears
// its bit from every slot (freeing those the successor does not hold: removed
// clusters, its NeverImport gauges), frees its generation entry, detaches its
// mapping (its handles keep working on private memory, so late updates from
// draining connections are harmless) and closes the file.
//
// The last generation to Close (a plain shutdown) keeps its holds and marks its
// entry exited, so that 'skiff stats' shows the final values of a stopped
// skiff. The next Open sweeps them: counters start from zero after a cold
// restart, as in Envoy.
//
// # Crashes and concurrency
//
// Allocator operations (create, release, sweep, repair) of all processes are
// serialised by an OFD lock on one byte of the file, plus the Store's mutex
// within a process; the data path never takes either. An operation makes the
// header's seq word odd while it changes shared structures and even when done.
// If a process dies with the lock held, the kernel releases the lock and the
// next holder finds seq odd: it repairs the region from the descriptors, which
// are the source of truth (a slot whose kind, name chain or holders do not
// check out is freed; lists, counters and index are rebuilt; values of valid
// slots are kept). An Open that finds no other live generation runs the same
// repair unconditionally, so a cold start never trusts what a dead process (or
// anyone) left in the file. A process that dies without the lock held leaves
// only its holder bits, which a sweep clears. If the parent crashes, the successor goes
// on with the shared values; an Accumulate gauge keeps the dead parent's
// contribution (as in Envoy: connections the parent had open are counted in
// upstream_cx_active until the successor restarts). If the successor crashes,
// the parent goes on, and the successor's stats are reclaimed by the parent's
// next sweep.
//
// A region of another layout version is refused (*VersionError) and never
// modified. A file that is not a valid region (bad magic or checksum, impossible
// geometry, truncated) is replaced by Open, by renaming a new file over it, so a
// process still mapping the old one keeps valid pages. ReadFile reads without
// locking or writing and checks every offset and length against the file's size,
// so it can inspect the file of a wedged or dead skiff; a reader that meets an
// operation in progress retries, then reports what it found.
package stats
