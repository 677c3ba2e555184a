package accesslog

import (
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Sink limits: a file sink writes once 64 KiB wait (or every flush
// interval), and drops entries while 16 MiB wait for a disk that does not
// keep up.
const (
	flushAt    = 64 << 10
	maxPending = 16 << 20
)

// Sinks are the process's access log writers, shared by every logger that
// writes to the same file or gRPC service. Nothing is opened, dialed or
// started until the first entry; Close flushes and stops everything.
type Sinks struct {
	log   *slog.Logger
	stats *stats.Store
	// flushEvery is how often a file sink writes what waits (Envoy's
	// --file-flush-interval-msec).
	flushEvery time.Duration

	mu     sync.Mutex
	files  map[string]*fileSink
	grpcs  map[string]*grpcSink
	closed bool
	wg     sync.WaitGroup
}

// DefaultFileFlushInterval is how often file sinks write what waits unless
// told otherwise: istio-agent's --file-flush-interval-msec 1000 (Envoy's
// default is 10 s).
const DefaultFileFlushInterval = time.Second

// NewSinks returns an empty set of sinks. st counts written and dropped
// entries (nil: an in-memory store); file sinks write what waits every
// flushEvery (DefaultFileFlushInterval if 0) or once 64 KiB wait.
func NewSinks(log *slog.Logger, st *stats.Store, flushEvery time.Duration) *Sinks {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if st == nil {
		st = stats.NewStore()
	}
	if flushEvery <= 0 {
		flushEvery = DefaultFileFlushInterval
	}
	return &Sinks{log: log, stats: st, flushEvery: flushEvery, files: map[string]*fileSink{}, grpcs: map[string]*grpcSink{}}
}

// Close writes out what is buffered and stops the sinks' goroutines.
// Entries logged afterwards are dropped.
func (s *Sinks) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	files, grpcs := s.files, s.grpcs
	s.mu.Unlock()
	for _, f := range files {
		f.close()
	}
	for _, g := range grpcs {
		g.close()
	}
	s.wg.Wait()
}

// Reopen makes every access log file be opened again, by its path, before
// its next write (entries still buffered go to the new file, as in Envoy),
// so that a file log rotation moved away is followed by a new one: Envoy's
// SIGUSR1. Standard output and error are left alone.
func (s *Sinks) Reopen() {
	s.mu.Lock()
	files := make([]*fileSink, 0, len(s.files))
	for _, f := range s.files {
		files = append(files, f)
	}
	s.mu.Unlock()
	for _, f := range files {
		f.reopen.Store(true)
		f.wake()
	}
}

// file returns the sink of path.
func (s *Sinks) file(path string) *fileSink {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.files[path]; f != nil {
		return f
	}
	f := &fileSink{
		s:        s,
		path:     path,
		kick:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
		buffered: s.stats.Counter("access_log.write_buffered"),
		written:  s.stats.Counter("access_log.write_completed"),
		failed:   s.stats.Counter("access_log.write_failed"),
		dropped:  s.stats.Counter("access_log.logs_dropped"),
	}
	s.files[path] = f
	return f
}

// start runs fn on a goroutine of the sinks, unless they are closed.
func (s *Sinks) start(fn func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
	return true
}

// fileSink buffers lines for one file (or stdout, stderr) and writes them
// from a goroutine of its own.
type fileSink struct {
	s    *Sinks
	path string

	mu      sync.Mutex
	buf     []byte
	spare   []byte
	started bool
	closed  bool
	kick    chan struct{}
	quit    chan struct{}
	reopen  atomic.Bool // Reopen was called: open the path again before the next write

	buffered, written, failed, dropped stats.Counter
}

// write queues one entry; it never blocks on the file.
func (f *fileSink) write(p []byte) {
	f.mu.Lock()
	if f.closed || len(f.buf)+len(p) > maxPending {
		f.mu.Unlock()
		f.dropped.Inc()
		return
	}
	if !f.started {
		f.started = true
		if !f.s.start(f.run) {
			f.closed = true
			f.mu.Unlock()
			f.dropped.Inc()
			return
		}
	}
	f.buf = append(f.buf, p...)
	full := len(f.buf) >= flushAt
	f.mu.Unlock()
	f.buffered.Inc()
	if full {
		f.wake()
	}
}

// wake makes the sink's goroutine write what is buffered now rather than at
// its next tick.
func (f *fileSink) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (f *fileSink) run() {
	f.reopen.Store(false) // the file is opened now
	out := f.open()
	defer func() {
		if out != nil && out != os.Stdout && out != os.Stderr {
			out.Close()
		}
	}()
	t := time.NewTicker(f.s.flushEvery)
	defer t.Stop()
	for {
		quit := false
		select {
		case <-t.C:
		case <-f.kick:
		case <-f.quit:
			quit = true
		}
		if f.reopen.CompareAndSwap(true, false) && out != os.Stdout && out != os.Stderr {
			if out != nil {
				out.Close()
			}
			out = f.open()
		}
		f.mu.Lock()
		pending := f.buf
		f.buf, f.spare = f.spare[:0], nil
		f.mu.Unlock()
		if len(pending) > 0 {
			if out == nil {
				f.failed.Inc()
			} else if _, err := out.Write(pending); err != nil {
				f.failed.Inc()
				f.s.log.Warn("access log: write failed", "path", f.path, "error", err)
			} else {
				f.written.Inc()
			}
		}
		f.mu.Lock()
		if f.spare == nil && cap(pending) <= 4*flushAt {
			f.spare = pending[:0]
		}
		f.mu.Unlock()
		if quit {
			return
		}
	}
}

// open opens the sink's file for appending (nil, logged, if it cannot).
func (f *fileSink) open() *os.File {
	switch f.path {
	case "/dev/stdout":
		return os.Stdout
	case "/dev/stderr":
		return os.Stderr
	}
	out, err := os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		f.s.log.Error("access log: cannot open the file; entries are dropped", "path", f.path, "error", err)
		return nil
	}
	return out
}

func (f *fileSink) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	started := f.started
	f.mu.Unlock()
	if started {
		close(f.quit)
	}
}

// textLogger formats entries as text (or JSON) lines into a file sink.
type textLogger struct {
	fm   formatter
	sink *fileSink // nil: nowhere (validation)
	bufs sync.Pool // of *[]byte
}

func newTextLogger(path string, fm formatter, o *Options) *textLogger {
	l := &textLogger{fm: fm}
	if o.Sinks != nil {
		l.sink = o.Sinks.file(path)
	}
	l.bufs.New = func() any {
		b := make([]byte, 0, 512)
		return &b
	}
	return l
}

// Log implements Logger.
func (l *textLogger) Log(e *http.Exchange) {
	if l.sink == nil {
		return
	}
	b := l.bufs.Get().(*[]byte)
	*b = l.fm.append((*b)[:0], e)
	l.sink.write(*b)
	if cap(*b) <= 16<<10 {
		l.bufs.Put(b)
	}
}

func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
