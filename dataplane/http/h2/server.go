package h2

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"golang.org/x/net/http2"
)

// Server holds what the downstream connections of one configuration share:
// the options and the pools of streams and buffers. It is safe for concurrent
// use; each connection gets its own ServerConn from NewConn.
type Server struct {
	cfg     settings
	streams sync.Pool
}

// NewServer checks opts and returns a Server.
func NewServer(opts ServerOptions) (*Server, error) {
	cfg, err := resolve(opts.MaxConcurrentStreams, opts.InitialStreamWindowSize, opts.InitialConnectionWindowSize,
		opts.MaxHeaderListSize, opts.Buffers, opts.Logger)
	if err != nil {
		return nil, err
	}
	cfg.idleTimeout = opts.IdleTimeout
	cfg.maxHeaders = opts.MaxHeaders
	if cfg.maxHeaders <= 0 {
		cfg.maxHeaders = DefaultMaxHeaders
	}
	cfg.streamErrors = opts.StreamErrorOnInvalidHTTPMessage
	cfg.drainTimeout = opts.DrainTimeout
	cfg.hdrTimeout, cfg.onHdrTimeout = opts.RequestHeadersTimeout, opts.OnRequestHeadersTimeout
	if cfg.hdrTimeout < 0 {
		cfg.hdrTimeout = 0
	}
	if cfg.drainTimeout <= 0 {
		cfg.drainTimeout = DefaultDrainTimeout
	}
	return &Server{cfg: cfg}, nil
}

// NewConn returns the codec for one downstream connection.
func (srv *Server) NewConn() *ServerConn { return &ServerConn{srv: srv} }

// ServerConn is the HTTP/2 server codec of one connection (http.ServerCodec):
// h2c with prior knowledge, or h2 negotiated by ALPN (the caller passes the
// *tls.Conn; the code path is the same).
type ServerConn struct {
	srv   *Server
	mu    sync.Mutex
	c     *conn
	drain bool
}

var _ http.ServerCodec = (*ServerConn)(nil)

// Serve reads the client preface and serves the connection: each stream goes
// to h.ServeStream on a goroutine of its own. It returns, having closed conn
// and waited for the handlers, when the connection is done: nil if it ended in
// an orderly way (the client closed it or went away; Drain or the idle timeout
// completed; ctx was canceled), a *ConnError if the client broke the protocol
// (the GOAWAY code sent), else the I/O error.
func (sc *ServerConn) Serve(ctx context.Context, nc net.Conn, h http.Handler) error {
	c := newConn(nc, false, sc.srv.cfg)
	c.pool, c.ctx, c.handler = &sc.srv.streams, ctx, h
	// The streams' contexts hang off one of the connection's own, not off
	// ctx, which the listener's other connections share.
	var cancelStreams context.CancelFunc
	c.streamsCtx, cancelStreams = context.WithCancel(ctx)
	defer cancelStreams()
	sc.mu.Lock()
	if sc.c != nil {
		sc.mu.Unlock()
		_ = nc.Close()
		return errors.New("h2: ServerConn.Serve called twice")
	}
	sc.c = c
	drain := sc.drain
	sc.mu.Unlock()

	c.work = make(chan *stream)
	go c.writeLoop()
	c.mu.Lock()
	c.armIdleLocked()
	if drain {
		c.startDrainLocked()
	}
	c.mu.Unlock()
	stop := context.AfterFunc(ctx, c.abort)
	err := c.serve()
	stop()
	c.teardown(err)
	c.handlers.Wait()
	c.mu.Lock()
	c.workClosed = true
	close(c.work)
	if c.trimTimer != nil {
		c.trimTimer.Stop()
	}
	c.mu.Unlock()
	c.workers.Wait()
	return err
}

// Drain starts a graceful shutdown: a GOAWAY announcing it, then, a round trip
// later, the final GOAWAY; streams already open finish, then the connection
// closes and Serve returns. It may be called before Serve, and more than once.
func (sc *ServerConn) Drain() {
	sc.mu.Lock()
	c := sc.c
	sc.drain = true
	sc.mu.Unlock()
	if c == nil {
		return
	}
	c.mu.Lock()
	c.startDrainLocked()
	c.mu.Unlock()
}

func (c *conn) serve() error {
	var buf [len(ClientPreface)]byte
	if _, err := io.ReadFull(c.br, buf[:]); err != nil {
		return c.ioEnd(err)
	}
	if string(buf[:]) != ClientPreface {
		ce := connErr(http.ResetProtocolError, "invalid connection preface")
		return c.drainAfterError(ce)
	}
	return c.readLoop()
}

// serverHeaders acts on a complete header block received by the server: a new
// request, or a request's trailers.
func (c *conn) serverHeaders() error {
	hb := &c.hb
	id := hb.id
	if id%2 == 0 {
		return connErr(http.ResetProtocolError, "client used even stream id %d", id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hbTimedOut {
		// RequestHeadersTimeout reset the stream while its block was open:
		// the block only had to be decoded.
		c.hbTimedOut = false
		if id > c.maxPeerID {
			c.maxPeerID = id
		}
		return nil
	}
	if s := c.streams[id]; s != nil {
		return c.serverTrailersLocked(s)
	}
	return c.serverRequestLocked(id)
}

// serverTrailersLocked takes a second header block on s. (serverHeaders,
// serverTrailersLocked and serverRequestLocked are three functions so that
// each one's defers are open-coded: the compiler falls back to the runtime's
// defer records when a function's defers times returns pass 15.)
func (c *conn) serverTrailersLocked(s *stream) error {
	hb := &c.hb
	defer c.maybeRelease(s)
	switch {
	case s.remoteDone:
		c.resetLocked(s, ResetStreamClosed, false)
	case c.headersOverflow():
		c.resetLocked(s, http.ResetInternalError, false)
	case hb.selfDep:
		c.resetLocked(s, http.ResetProtocolError, false)
	case !hb.endStream || !validateTrailers(&c.hdr) ||
		s.contentLength >= 0 && s.recvBytes != s.contentLength:
		// Trailers end the stream; a second header block that does
		// not is malformed (RFC 9113 section 8.1).
		return c.malformedLocked(s, "malformed trailers")
	default:
		s.trl, c.hdr = c.hdr, s.trl
		c.remoteEndLocked(s)
	}
	return nil
}

// headersOverflow reports whether the header block just read is over
// MaxHeaderListSize or MaxHeaders: Envoy's saveHeader then fails the block
// with NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE, and nghttp2 resets the stream
// with INTERNAL_ERROR.
func (c *conn) headersOverflow() bool {
	return c.hb.tooLarge || c.cfg.maxHeaders > 0 && c.hdr.Len() > c.cfg.maxHeaders
}

// malformedLocked deals with a malformed message on s (nil: a request
// refused before its stream was opened): a connection error, unless the
// options ask for a stream error (see
// ServerOptions.StreamErrorOnInvalidHTTPMessage), which resets s.
func (c *conn) malformedLocked(s *stream, reason string) error {
	if !c.cfg.streamErrors {
		return connErr(http.ResetProtocolError, "%s on stream %d", reason, c.hb.id)
	}
	if s != nil {
		c.resetLocked(s, http.ResetProtocolError, false)
		return nil
	}
	c.noteReset(c.hb.id)
	return c.queueCtrl(ctrlFrame{kind: ctrlRST, id: c.hb.id, val: uint32(http.ResetProtocolError)})
}

// serverRequestLocked opens stream id with the header block just read and
// dispatches its handler, or refuses it.
func (c *conn) serverRequestLocked(id uint32) error {
	hb := &c.hb
	if id <= c.maxPeerID {
		if c.recentlyReset(id) || c.ignored(id) {
			return nil
		}
		return connErr(ResetStreamClosed, "HEADERS on closed stream %d", id)
	}
	if c.ignored(id) || c.wstop {
		return nil // after our final GOAWAY
	}
	c.maxPeerID = id
	refuse := func(code http.ResetCode) error {
		c.noteReset(id)
		return c.queueCtrl(ctrlFrame{kind: ctrlRST, id: id, val: uint32(code)})
	}
	if hb.selfDep {
		return refuse(http.ResetProtocolError)
	}
	if c.active >= int(c.cfg.maxStreams) {
		return refuse(http.ResetRefusedStream)
	}
	if c.headersOverflow() {
		// Envoy resets the stream (INTERNAL_ERROR); HTTP/1.1 answers 431.
		return refuse(http.ResetInternalError)
	}
	cl, ok := validateRequest(&c.hdr)
	if ok && hb.endStream && cl > 0 {
		ok = false
	}
	if !ok {
		return c.malformedLocked(nil, "malformed request header")
	}
	s := c.getStream()
	s.id = id
	s.sendWindow = c.peerInitWindow
	s.inMap, s.counted = true, true
	c.streams[id] = s
	c.active++
	s.hdr, c.hdr = c.hdr, s.hdr
	s.contentLength = cl
	s.remoteDone = hb.endStream
	s.headerEnded = hb.endStream
	s.held = true
	c.handlers.Add(1)
	c.dispatchLocked(s)
	return nil
}

// maxIdleWorkers bounds the handler goroutines a connection keeps waiting
// for streams while it is busy.
const maxIdleWorkers = 8

// workerTrimDelay is how long a connection stays without a running handler
// before it lets its idle handler goroutines go, all but one.
const workerTrimDelay = time.Second

// dispatchLocked runs the handler of s on an idle handler goroutine of the
// connection, or on a new one.
func (c *conn) dispatchLocked(s *stream) {
	c.runningHandlers++
	if c.idleWorkers > 0 && !c.workClosed {
		select {
		case c.work <- s:
			c.idleWorkers--
			return
		default: // (it is between streams)
		}
	}
	c.workers.Add(1)
	go c.worker(s)
}

// worker runs handlers: s's, then those dispatchLocked hands it, until the
// connection ends, enough others wait, or the connection stays quiet (see
// trimIdleWorkers).
func (c *conn) worker(s *stream) {
	defer c.workers.Done()
	for s != nil {
		c.runHandler(s)
		c.mu.Lock()
		c.runningHandlers--
		if c.closed || c.workClosed || c.idleWorkers >= maxIdleWorkers {
			c.mu.Unlock()
			return
		}
		if c.runningHandlers == 0 {
			// Streams come and go in bursts (a client with a few in flight
			// sees them all answered before it sends the next ones): the
			// idle goroutines are kept through the gaps, and let go only
			// when the connection stays quiet.
			if c.trimTimer == nil {
				c.trimTimer = time.AfterFunc(workerTrimDelay, c.trimIdleWorkers)
			} else {
				c.trimTimer.Reset(workerTrimDelay)
			}
		}
		c.idleWorkers++
		c.mu.Unlock()
		s = <-c.work
	}
}

// trimIdleWorkers ends, on a connection still quiet workerTrimDelay after its
// last handler returned, the idle handler goroutines but one: it keeps that
// one waiting, not the stacks of its busiest moment.
func (c *conn) trimIdleWorkers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runningHandlers != 0 || c.workClosed {
		return
	}
	for c.idleWorkers > 1 {
		select {
		case c.work <- nil:
			c.idleWorkers--
		default:
			return
		}
	}
}

func (c *conn) runHandler(s *stream) {
	defer c.handlers.Done()
	c.handler.ServeStream(s)
	c.finishHandler(s)
}

// finishHandler ends what the handler left: an unfinished response is reset
// (INTERNAL_ERROR); a finished one with the request still coming is followed
// by RST_STREAM(NO_ERROR) (RFC 9113 section 8.1).
func (c *conn) finishHandler(s *stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.held = false
	s.onGone = nil
	if s.cancel != nil {
		s.cancel()
	}
	c.creditConn(int64(s.recv.reset(c.cfg.bufs)))
	if s.err == nil && !c.closed && (c.ctx == nil || c.ctx.Err() == nil) {
		// (When Serve's context is canceled, the connection is closing:
		// the handlers' streams end with it, not with resets.)
		switch {
		case s.localDone:
			if !s.remoteDone {
				c.resetLocked(s, http.ResetNoError, false)
			}
		case s.ended:
			// The response is complete and waits for the writer, which
			// resets the stream if the request is not (localEndLocked).
		default:
			c.resetLocked(s, http.ResetInternalError, false)
		}
	}
	c.maybeRelease(s)
}

// armHeadersTimeout starts RequestHeadersTimeout for the header block a
// HEADERS frame opens, if it opens a stream (trailers are not timed, as in
// Envoy, whose timer ends with the request headers). The reader calls it
// on the frame's header, before its payload.
func (c *conn) armHeadersTimeout(fh http2.FrameHeader) {
	if c.client || c.cfg.hdrTimeout <= 0 || fh.StreamID <= c.maxPeerID || fh.StreamID%2 == 0 {
		return
	}
	deadline := time.Now().Add(c.cfg.hdrTimeout)
	c.mu.Lock()
	c.hbTimedID, c.hbDeadline, c.hbTimedOut = fh.StreamID, deadline, false
	if c.hbTimer == nil {
		c.hbTimer = time.AfterFunc(c.cfg.hdrTimeout, c.headersTimeoutFired)
	} else {
		c.hbTimer.Reset(c.cfg.hdrTimeout)
	}
	c.mu.Unlock()
}

// disarmHeadersTimeout ends the timing of the open header block, which is
// complete. The reader calls it before handing the block on.
func (c *conn) disarmHeadersTimeout() {
	if c.hbTimer == nil {
		return
	}
	c.mu.Lock()
	if c.hbTimedID != 0 {
		c.hbTimedID = 0
		c.hbTimer.Stop()
	}
	c.mu.Unlock()
}

// headersTimeoutFired resets the stream whose header block is still open
// after RequestHeadersTimeout. A firing that an armHeadersTimeout for a later
// block overtook finds a deadline in the future and does nothing.
func (c *conn) headersTimeoutFired() {
	c.mu.Lock()
	id := c.hbTimedID
	if id == 0 || c.wstop || time.Now().Before(c.hbDeadline) {
		c.mu.Unlock()
		return
	}
	c.hbTimedID, c.hbTimedOut = 0, true
	c.noteReset(id)
	c.mu.Unlock()
	// Counted before the reset goes out, so that a client that saw it finds
	// it counted.
	if f := c.cfg.onHdrTimeout; f != nil {
		f()
	}
	c.mu.Lock()
	if !c.wstop {
		_ = c.queueCtrl(ctrlFrame{kind: ctrlRST, id: id, val: uint32(http.ResetNoError)})
	}
	c.mu.Unlock()
}
