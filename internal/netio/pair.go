package netio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/stats"
	"golang.org/x/sys/unix"
)

// Direction names one of a pair's two byte streams. It indexes Result.Pending.
type Direction int

const (
	// ToUpstream is the stream read from the downstream conn and written to the
	// upstream conn ("sent", in Envoy's tcp_proxy terms).
	ToUpstream Direction = iota
	// ToDownstream is the stream read from the upstream conn and written to the
	// downstream conn ("received").
	ToDownstream
)

// EndReason says why a Pair stopped.
type EndReason uint8

const (
	// Closed: both directions reached end of stream and both conns were closed.
	Closed EndReason = iota + 1
	// DownstreamReset: reading from or writing to the downstream conn failed; the
	// upstream conn was reset (RST) and both were closed.
	DownstreamReset
	// UpstreamReset: reading from or writing to the upstream conn failed; the
	// downstream conn was reset (RST) and both were closed.
	UpstreamReset
	// IdleTimeout: no byte moved in either direction for Config.IdleTimeout; both
	// conns were closed.
	IdleTimeout
	// Canceled: Run's context was done; both conns were closed.
	Canceled
	// Paused: Pause stopped the pair at a safe point; the conns are open and
	// Result.Pending holds the bytes read but not yet written.
	Paused
)

func (r EndReason) String() string {
	switch r {
	case Closed:
		return "closed"
	case DownstreamReset:
		return "downstream reset"
	case UpstreamReset:
		return "upstream reset"
	case IdleTimeout:
		return "idle timeout"
	case Canceled:
		return "canceled"
	case Paused:
		return "paused"
	}
	return fmt.Sprintf("EndReason(%d)", uint8(r))
}

func (r EndReason) isReset() bool { return r == DownstreamReset || r == UpstreamReset }

// Config is what a Pair needs besides its conns. One Config is typically shared,
// read-only, by every pair of a tcp_proxy filter instance.
type Config struct {
	// Buffers supplies copy buffers. Required.
	Buffers *bufpool.Pool
	// Pipes supplies splice pipes. Nil means never splice (always copy through
	// Buffers), e.g. because NewPipePool failed.
	Pipes *PipePool
	// IdleTimeout closes the pair when no byte has moved in either direction for
	// this long (Envoy's tcp_proxy idle_timeout). Zero means no timeout.
	IdleTimeout time.Duration
	// SentCounters are incremented by the bytes written upstream, and
	// ReceivedCounters by the bytes written downstream, as each chunk is written.
	SentCounters, ReceivedCounters []stats.Counter
}

// Result is what Run reports.
type Result struct {
	// Sent and Received count the bytes this Pair wrote upstream and downstream.
	Sent, Received int64
	// End says why the pair stopped.
	End EndReason
	// Err is the failure behind a reset, context.Cause for Canceled, and nil
	// otherwise, except that with End == Paused a non-nil Err means some pending
	// bytes could not be recovered and the conns must not be resumed.
	Err error
	// Pending is set only when End == Paused: per Direction, the bytes that were
	// read from the source but not yet written to the destination. Pass it to
	// ResumePair to continue the streams exactly where they stopped.
	Pending [2][]byte
}

// Pair copies bytes both ways between a downstream and an upstream conn: the
// byte mover of a TCP proxy.
//
// # Copy modes
//
// When both conns are stream sockets exposing syscall.Conn and Config.Pipes is
// set, a direction splices once it carries bulk data: socket -> pipe -> socket
// with splice(2), the bytes never entering user space. Until then (and always
// otherwise) it copies through a bufpool.Buffer. The switch happens when a read
// fills a whole bufpool.Large buffer, which is HAProxy's "splice-auto" rule: for
// the small exchanges of a request and its response a splice costs as many
// system calls as a read and a write plus the pipe's bookkeeping, and measured
// about 10% fewer HTTP/1 connections per second through the proxy. A conn that exposes syscall.Conn is read and written through
// its raw descriptor (syscall.RawConn), so it must not buffer or transform bytes
// itself; a wrapper that does (a peeked prefix, TLS) must hide SyscallConn and is
// then used through its Read and Write methods.
//
// With raw descriptors the read is attempted inside the RawConn callback, and
// the pipe or buffer is taken only once the source is readable and given back
// before waiting, so an idle pair holds neither. A conn read through Read holds
// a bufpool.Medium buffer while it waits.
//
// # Ends
//
// End of stream on one side is forwarded as a half-close (CloseWrite) to the
// other, and the other direction keeps going; when both directions have ended,
// both conns are closed (Closed). If the destination has no CloseWrite method
// the pair closes both conns at the first end of stream instead. A read error
// (other than end of stream) on a conn, or a write error toward it, means that
// side is broken: the other side is reset (SO_LINGER 0, then Close; through
// NetConn for wrappers that have it) and both are closed. Idle timeout and
// context cancellation close both conns. Closing a conn also wakes the direction
// blocked on it, so Run returns promptly; it returns only after both directions
// have stopped and released their pipe or buffer.
//
// # Pause
//
// Pause stops the pair at a safe point without losing or duplicating bytes: see
// Pause and ResumePair.
type Pair struct {
	down, up net.Conn
	buffers  *bufpool.Pool
	pipes    *PipePool
	idle     time.Duration
	dirs     [2]direction

	base time.Time    // set by Run before the directions start
	last atomic.Int64 // time.Since(base) of the last byte moved, when idle > 0
	eofs atomic.Int32 // directions that reached end of stream and forwarded it

	mu       sync.Mutex
	started  bool        // Run has begun
	finished bool        // Run has collected the result; nothing may touch the conns
	reason   EndReason   // first reason to end (a reset may override Paused)
	err      error       // goes with reason
	timer    *time.Timer // idle timer
	acting   sync.WaitGroup
	running  sync.WaitGroup // Run's goroutine for the ToDownstream direction
}

// NewPair returns a Pair that copies between down and up once Run is called. The
// Pair owns both conns from then on: Run closes them, unless it ends Paused.
func NewPair(down, up net.Conn, cfg *Config) *Pair {
	return ResumePair(down, up, cfg, [2][]byte{})
}

// ResumePair is NewPair for conns taken from a paused Pair: Run first writes
// pending[ToUpstream] to up and pending[ToDownstream] to down, then continues
// copying. Run clears the deadlines Pause left on the conns. The Pair reads the
// pending slices during Run and does not keep them afterwards.
func ResumePair(down, up net.Conn, cfg *Config, pending [2][]byte) *Pair {
	if cfg.Buffers == nil {
		panic("netio: Config.Buffers is nil")
	}
	p := &Pair{down: down, up: up, buffers: cfg.Buffers, pipes: cfg.Pipes, idle: cfg.IdleTimeout}
	downRC, upRC := streamRawConn(down), streamRawConn(up)
	p.dirs[ToUpstream].init(p, down, up, downRC, upRC, cfg.SentCounters, pending[ToUpstream], DownstreamReset, UpstreamReset)
	p.dirs[ToDownstream].init(p, up, down, upRC, downRC, cfg.ReceivedCounters, pending[ToDownstream], UpstreamReset, DownstreamReset)
	// The client's stream is not read ahead (see readRaw): clients seldom
	// end theirs right after a message, servers often do (an answer and a
	// close), so for the client's the read ahead would be a read that finds
	// nothing on nearly every connection.
	p.dirs[ToUpstream].goesOn = true
	return p
}

// streamRawConn returns c's raw connection if c exposes one and it is a stream
// socket, and nil otherwise.
func streamRawConn(c net.Conn) syscall.RawConn {
	// A TCP conn is a stream socket; skip the getsockopt (it is per connection).
	switch tc := c.(type) {
	case *Conn:
		return tc.rc
	case *net.TCPConn:
		rc, err := tc.SyscallConn()
		if err != nil {
			return nil
		}
		return rc
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var typ int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	}); err != nil || serr != nil || typ != unix.SOCK_STREAM {
		return nil
	}
	return rc
}

// Run copies until both directions have ended (see Pair) and returns why. It
// must be called once. Run owns the conns' deadlines: it clears them on entry
// (undoing the past deadlines a paused predecessor left) and sets them only to
// pause. Once Pause has been called, a later context cancellation or idle
// timeout does not close the conns; only a broken conn turns the pause into a
// reset.
func (p *Pair) Run(ctx context.Context) Result {
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		panic("netio: Pair.Run called twice")
	}
	p.started = true
	if p.reason == Paused { // Pause came first: nothing moved, hand back what we were given
		p.finished = true
		p.mu.Unlock()
		return Result{End: Paused, Pending: [2][]byte{p.dirs[ToUpstream].out, p.dirs[ToDownstream].out}}
	}
	// Run owns the deadlines. Clearing them undoes the past deadlines a paused
	// predecessor left; errors only mean a conn is already closed, which the
	// first read or write reports properly.
	p.down.SetDeadline(time.Time{})
	p.up.SetDeadline(time.Time{})
	p.base = time.Now()
	if p.idle > 0 {
		// One timer for the pair; chunks only store the time (see onIdle). The
		// callback takes p.mu, so it cannot see p.timer before it is assigned.
		p.timer = time.AfterFunc(p.idle, p.onIdle)
	}
	p.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { p.end(Canceled, context.Cause(ctx)) })
	p.running.Add(1)
	go p.runToDownstream()
	p.dirs[ToUpstream].run()
	p.running.Wait()
	stop()

	p.end(Closed, nil) // no-op unless both directions ended normally
	p.mu.Lock()
	p.finished = true
	if p.timer != nil {
		p.timer.Stop()
	}
	res := Result{
		Sent:     p.dirs[ToUpstream].moved,
		Received: p.dirs[ToDownstream].moved,
		End:      p.reason,
		Err:      p.err,
	}
	p.mu.Unlock()
	// An end action (a close, or Pause's deadlines) started just before finished
	// was set must be over before the caller gets the conns back.
	p.acting.Wait()
	if res.End == Paused {
		for i := range p.dirs {
			d := &p.dirs[i]
			res.Pending[i] = d.pending
			if d.pendErr != nil && res.Err == nil {
				res.Err = d.pendErr
			}
		}
	}
	return res
}

// runToDownstream is the goroutine of the ToDownstream direction (a method
// rather than a method value given to running.Go: one allocation less per
// pair).
func (p *Pair) runToDownstream() {
	defer p.running.Done()
	p.dirs[ToDownstream].run()
}

// Pause asks Run to stop at a safe point and leave the conns open; it returns at
// once, and Run returns with End == Paused when both directions have stopped.
//
// Pause sets read deadlines in the past on both conns, so each direction stops
// at its next read. Conns written through their raw descriptor also get a past
// write deadline, so a write stalled by a peer that does not read cannot hold the
// pause up; its unwritten rest goes to Result.Pending. A conn written through
// its Write method (no syscall.Conn, e.g. TLS, where an interrupted write is not
// restartable) finishes its write first. The conns are otherwise untouched:
// give them, with Result.Pending, to ResumePair, here or in another process.
//
// If a conn turns out broken while pausing, the pair ends with a reset instead.
// Pause after Run has returned does nothing; Pause before Run makes Run return
// Paused at once.
func (p *Pair) Pause() { p.end(Paused, nil) }

// end records r as the reason the pair ends, if it is the first (a reset also
// replaces Paused: a broken conn is not worth handing over), and carries it out.
func (p *Pair) end(r EndReason, err error) {
	p.mu.Lock()
	if p.finished || (p.reason != 0 && (p.reason != Paused || !r.isReset())) {
		p.mu.Unlock()
		return
	}
	p.reason, p.err = r, err
	started := p.started
	p.acting.Add(1)
	p.mu.Unlock()
	defer p.acting.Done()

	// Acted on outside p.mu: closing a conn wrapper may block on its own write
	// lock, and a direction goroutine must be free to take p.mu meanwhile.
	switch r {
	case Paused:
		if !started {
			return
		}
		past := time.Unix(1, 0)
		p.down.SetReadDeadline(past)
		p.up.SetReadDeadline(past)
		if p.dirs[ToDownstream].dstRC != nil {
			p.down.SetWriteDeadline(past)
		}
		if p.dirs[ToUpstream].dstRC != nil {
			p.up.SetWriteDeadline(past)
		}
	case DownstreamReset:
		abort(p.up)
		p.down.Close()
	case UpstreamReset:
		abort(p.down)
		p.up.Close()
	default:
		p.down.Close()
		p.up.Close()
	}
}

// failed ends the pair because an I/O error showed the side r names is broken,
// unless the error is the pair's own doing.
func (p *Pair) failed(r EndReason, err error) {
	p.mu.Lock()
	safePoint := p.reason == Paused && errors.Is(err, os.ErrDeadlineExceeded)
	p.mu.Unlock()
	if safePoint {
		return
	}
	// If the pair is already ending (other than Paused), end ignores this: the
	// error is the consequence of our own close.
	p.end(r, fmt.Errorf("netio: %v: %w", r, err))
}

func (p *Pair) paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reason == Paused
}

// onIdle runs when the idle timer fires. Chunks only record when they moved
// (one atomic store), so the timer may find recent activity; then it re-arms for
// the rest of the period instead of closing.
func (p *Pair) onIdle() {
	p.mu.Lock()
	if p.finished || p.reason != 0 {
		p.mu.Unlock()
		return
	}
	quiet := time.Since(p.base) - time.Duration(p.last.Load())
	if quiet < p.idle {
		p.timer.Reset(p.idle - quiet)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.end(IdleTimeout, nil)
}

// touch records that bytes moved now.
func (p *Pair) touch() {
	if p.idle > 0 {
		p.last.Store(int64(time.Since(p.base)))
	}
}

// abort closes c with an RST instead of a FIN, so its peer learns that the
// stream broke rather than ended.
func abort(c net.Conn) {
	for u := c; u != nil; {
		if l, ok := u.(interface{ SetLinger(sec int) error }); ok {
			l.SetLinger(0)
			break
		}
		w, ok := u.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		u = w.NetConn()
	}
	c.Close()
}

// direction moves the bytes of one stream. Its fields are used by one goroutine
// at a time: the one running run, then Run once run has returned.
type direction struct {
	p              *Pair
	src, dst       net.Conn
	srcRC, dstRC   syscall.RawConn // nil: use src.Read / dst.Write
	canSplice      bool            // both ends are raw stream sockets and pipes exist
	splice         bool            // splicing now (canSplice, and bulk data was seen)
	counters       []stats.Counter
	srcEnd, dstEnd EndReason // how a failure on src / dst ends the pair

	pipe     *pipe           // held while it has data, or while the source is readable
	buf      *bufpool.Buffer // likewise, in buffer mode
	out      []byte          // bytes to write when not splicing (in buf, or resumed pending)
	rerr     error           // read error (io.EOF at end of stream), acted on after out is written
	n        int             // set by the RawConn callbacks: bytes read
	err      error           // set by the RawConn callbacks: errno of a failed system call
	aheadEOF bool            // set by readRaw: the stream ends after the bytes read
	aheadErr syscall.Errno   // set by readRaw: a read after the bytes read failed
	goesOn   bool            // a read ahead found the stream going on: readRaw reads ahead no more
	noPipe   bool            // set by spliceIn: no pipe could be had
	corked   bool            // bytes were written with MSG_MORE

	moved   int64  // bytes written to dst
	pending []byte // unwritten bytes collected when paused
	pendErr error  // failure to collect them

	// rawFn is the RawConn callback, bound once here so that each chunk passes an
	// existing func value instead of allocating a closure; op says what it does.
	rawFn func(fd uintptr) bool
	op    rawOp
}

// rawOp is what a direction's RawConn callback does.
type rawOp uint8

const (
	opSpliceIn rawOp = iota
	opSpliceOut
	opRead
	opWrite
)

// raw is the one RawConn callback of a direction (see rawFn).
func (d *direction) raw(fd uintptr) bool {
	switch d.op {
	case opSpliceIn:
		return d.spliceIn(fd)
	case opSpliceOut:
		return d.spliceOut(fd)
	case opRead:
		return d.readRaw(fd)
	default:
		return d.writeRaw(fd)
	}
}

func (d *direction) init(p *Pair, src, dst net.Conn, srcRC, dstRC syscall.RawConn, counters []stats.Counter, pending []byte, srcEnd, dstEnd EndReason) {
	*d = direction{
		p: p, src: src, dst: dst, srcRC: srcRC, dstRC: dstRC,
		canSplice: p.pipes != nil && srcRC != nil && dstRC != nil,
		counters:  counters, srcEnd: srcEnd, dstEnd: dstEnd,
		out: pending,
	}
	if srcRC != nil || dstRC != nil {
		d.rawFn = d.raw
	}
}

// run copies until the stream ends or fails, or the pair stops it.
func (d *direction) run() {
	defer d.release()
	for {
		if d.buffered() > 0 && !d.flush() {
			if d.rerr != nil && d.rerr != io.EOF {
				// The source failed after the bytes that could not be
				// written (a reset found by a read ahead): a pause must not
				// hide it, since the kernel reports it only once and the
				// conn would be handed over as if whole.
				d.p.failed(d.srcEnd, d.rerr)
			}
			return
		}
		if d.rerr != nil {
			d.readEnded()
			return
		}
		d.fill()
	}
}

func (d *direction) buffered() int {
	if d.pipe != nil {
		return d.pipe.data
	}
	return len(d.out)
}

// fill reads the next chunk into the pipe or into out, or sets rerr.
func (d *direction) fill() {
	if d.splice && d.buf != nil {
		d.p.buffers.Put(d.buf) // the last buffered chunk has been flushed
		d.buf, d.out = nil, nil
	}
	switch {
	case d.splice:
		d.n, d.err, d.noPipe = 0, nil, false
		d.op = opSpliceIn
		err := d.srcRC.Read(d.rawFn)
		switch {
		case err != nil:
			d.rerr = err
		case d.noPipe || spliceUnsupported(d.err):
			// Out of descriptors, or a socket splice refuses (seccomp, an exotic
			// protocol): the pipe is empty, so nothing is lost by copying instead.
			d.splice, d.canSplice = false, false
			if d.pipe != nil {
				d.p.pipes.put(d.pipe)
				d.pipe = nil
			}
		case d.err != nil:
			d.rerr = opError("read", d.src, "splice", d.err)
		case d.n == 0:
			d.rerr = io.EOF
		}
	case d.srcRC != nil:
		d.n, d.err = 0, nil
		d.op = opRead
		err := d.srcRC.Read(d.rawFn)
		switch {
		case err != nil:
			d.rerr = err
		case d.err != nil:
			d.rerr = opError("read", d.src, "read", d.err)
		case d.n == 0:
			d.rerr = io.EOF
		default:
			d.out = d.buf.B[:d.n]
			switch {
			case d.aheadErr != 0:
				d.rerr = opError("read", d.src, "read", d.aheadErr)
			case d.aheadEOF:
				d.rerr = io.EOF // written with the data (see writeRaw)
			}
			if d.canSplice && d.n == len(d.buf.B) {
				// Bulk data: splice from the next read on. This buffer is
				// written first, so the order of the stream is kept.
				d.splice = true
			}
		}
	default:
		if d.buf == nil {
			d.buf = d.p.buffers.Get(bufpool.Medium)
		}
		n, err := d.src.Read(d.buf.B)
		if n > 0 {
			d.out = d.buf.B[:n]
			d.p.touch()
		}
		d.rerr = err // may come with data: run writes the data first
	}
}

// flush writes everything buffered to dst. It reports false if the direction
// must stop.
func (d *direction) flush() bool {
	var err error
	switch {
	case d.pipe != nil:
		d.err, d.op = nil, opSpliceOut
		if err = d.dstRC.Write(d.rawFn); err == nil && d.err != nil {
			err = opError("write", d.dst, "splice", d.err)
		}
	case d.dstRC != nil:
		d.err, d.op = nil, opWrite
		if err = d.dstRC.Write(d.rawFn); err == nil && d.err != nil {
			err = opError("write", d.dst, "write", d.err)
		}
	default:
		for len(d.out) > 0 {
			n, werr := d.dst.Write(d.out)
			if n > 0 {
				d.out = d.out[n:]
				d.wrote(n)
			}
			if werr != nil {
				err = werr
				break
			}
			if n == 0 {
				err = io.ErrShortWrite
				break
			}
		}
	}
	if err != nil {
		d.p.failed(d.dstEnd, err)
		return false
	}
	return true
}

// readEnded acts on rerr once everything read before it has been written.
func (d *direction) readEnded() {
	if d.rerr != io.EOF {
		d.p.failed(d.srcEnd, d.rerr)
		return
	}
	if d.p.eofs.Add(1) == 2 {
		// The other direction already ended: both streams are complete, so
		// closing both conns sends the last FIN; a shutdown first would be a
		// wasted system call on every connection.
		d.p.end(Closed, nil)
		return
	}
	if cw, ok := d.dst.(interface{ CloseWrite() error }); ok {
		// An error means dst is already broken; the direction reading from it
		// finds out and ends the pair.
		cw.CloseWrite()
		return
	}
	d.p.end(Closed, nil)
}

// release gives back the pipe and buffer, first saving unwritten bytes if the
// pair is pausing.
func (d *direction) release() {
	if d.p.paused() {
		switch {
		case d.pipe != nil && d.pipe.data > 0:
			d.pending, d.pendErr = d.pipe.drain()
		case len(d.out) > 0:
			d.pending = append([]byte(nil), d.out...)
		}
		if d.corked {
			// Bytes written with MSG_MORE wait for the FIN that the pause
			// kept from being sent: setting TCP_NODELAY sends them now.
			d.dstRC.Control(func(fd uintptr) { setNoDelay(int(fd)) })
		}
	}
	if d.pipe != nil {
		d.p.pipes.put(d.pipe) // closes it if draining failed
		d.pipe = nil
	}
	if d.buf != nil {
		d.p.buffers.Put(d.buf)
		d.buf = nil
	}
	d.out = nil
}

// wrote accounts for n bytes written to dst.
func (d *direction) wrote(n int) {
	d.moved += int64(n)
	for _, c := range d.counters {
		c.Add(uint64(n))
	}
	d.p.touch()
}

// spliceIn is the RawConn read callback in splice mode: it splices from the
// source socket into a pipe taken only now that the socket may be readable, and
// gives the pipe back if it was not, before the poller waits.
func (d *direction) spliceIn(fd uintptr) bool {
	if d.pipe == nil {
		pp, err := d.p.pipes.get()
		if err != nil {
			d.noPipe = true
			return true
		}
		d.pipe = pp
	}
	for {
		n, err := rawSplice(fd, uintptr(d.pipe.w), d.p.pipes.size, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch err {
		case 0:
			d.n = n
			d.pipe.data = n
			if n > 0 {
				d.p.touch()
			}
			return true
		case unix.EINTR:
		case unix.EAGAIN: // the pipe is empty, so it is the socket that has nothing
			d.p.pipes.put(d.pipe)
			d.pipe = nil
			return false
		default:
			d.err = err
			return true
		}
	}
}

// spliceOut is the RawConn write callback in splice mode: it empties the pipe
// into the destination socket.
func (d *direction) spliceOut(fd uintptr) bool {
	for d.pipe.data > 0 {
		n, err := rawSplice(uintptr(d.pipe.r), fd, d.pipe.data, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if n > 0 {
			d.pipe.data -= n
			d.wrote(n)
		}
		switch err {
		case 0:
			if n == 0 { // cannot happen while the pipe holds data and we hold its write end
				d.err = io.ErrNoProgress
				return true
			}
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			d.err = err
			return true
		}
	}
	return true
}

// readRaw is the RawConn read callback in buffer mode: like spliceIn, it takes a
// buffer only when the socket may be readable.
//
// Bytes that do not fill the buffer may be the last of the stream: it reads
// on until the socket has nothing more, so that when the source has also
// ended (a server that answers and closes), the bytes and the end are
// forwarded together, the bytes sent with MSG_MORE and the FIN of the
// shutdown that follows in the same segment, as HAProxy does (it learns of
// the end from the poller's EPOLLRDHUP, which Go's poller does not pass on).
// The peer then takes both with one wake-up and one ACK: of the 20 segments
// of a proxied HTTP/1.1 exchange with Connection: close, 18 are left (nstat,
// h1close of ../shared/bench). A read ahead that finds nothing costs a system
// call, so a direction stops reading ahead after the first time its stream
// goes on: one read at most, for the streams that end after their first
// message or two, and only in the server's stream (ToDownstream). A client
// that sends and half-closes at once has its FIN sent upstream on its own.
//
// The read after a chunk that finds nothing cannot be skipped by waiting in
// the poller at once: an end of stream that arrived with the bytes, before
// the poller was armed for this read, raises no further event, so the
// direction would wait forever (tried: the half-close tests hang).
func (d *direction) readRaw(fd uintptr) bool {
	if d.buf == nil {
		d.buf = d.p.buffers.Get(bufpool.Large)
	}
	d.aheadEOF, d.aheadErr = false, 0
	for {
		n, err := rawRead(fd, d.buf.B)
		switch err {
		case 0:
			d.n = n
			if n > 0 {
				d.p.touch()
				if !d.goesOn {
					d.readAhead(fd)
				}
			}
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			d.p.buffers.Put(d.buf)
			d.buf = nil
			return false
		default:
			d.err = err
			return true
		}
	}
}

// readAhead reads on after d.n bytes until the buffer is full or the source
// has nothing more, and records the end (aheadEOF) or error (aheadErr) it
// finds. An error is kept for after the bytes are written: the kernel reports
// a socket error once.
func (d *direction) readAhead(fd uintptr) {
	for d.n < len(d.buf.B) {
		n, err := rawRead(fd, d.buf.B[d.n:])
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			d.goesOn = true
			return
		case err != 0:
			d.aheadErr = err
			return
		case n == 0:
			d.aheadEOF = true
			return
		default:
			d.n += n
		}
	}
}

// writeRaw is the RawConn write callback in buffer mode. When the source has
// ended after these bytes, they go with MSG_MORE: the shutdown or close that
// follows adds its FIN to their segment instead of sending one of its own.
func (d *direction) writeRaw(fd uintptr) bool {
	flags := 0
	if d.rerr == io.EOF {
		flags = unix.MSG_MORE
	}
	for len(d.out) > 0 {
		n, err := rawSend(fd, d.out, flags)
		if n > 0 {
			d.corked = d.corked || flags != 0
			d.out = d.out[n:]
			d.wrote(n)
		}
		switch err {
		case 0:
			if n == 0 {
				d.err = io.ErrNoProgress
				return true
			}
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			d.err = err
			return true
		}
	}
	return true
}

// spliceUnsupported reports whether a failed socket-to-pipe splice means splice
// cannot be used for this socket (rather than that the socket is broken).
func spliceUnsupported(err error) bool {
	return err == unix.EINVAL || err == unix.ENOSYS || err == unix.EOPNOTSUPP || err == unix.EPERM
}

// opError wraps a failed system call on c the way package net does, so messages
// read "read tcp 10.0.0.1:5000->10.0.0.2:80: splice: connection reset by peer".
func opError(op string, c net.Conn, syscallName string, err error) error {
	if _, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(syscallName, err)
	}
	oe := &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: err}
	if local := c.LocalAddr(); local != nil {
		oe.Net, oe.Source = local.Network(), local
	}
	return oe
}
