package h2

import (
	"context"
	"fmt"
	"net"
	"sync"

	"golang.org/x/net/http2"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// ClientConn is an upstream HTTP/2 connection (http.ClientConn): h2c with
// prior knowledge, or h2 over a *tls.Conn that negotiated it. Streams are
// multiplexed on it up to the server's SETTINGS_MAX_CONCURRENT_STREAMS (and
// ClientOptions.MaxConcurrentStreams).
//
// A stream from NewStream must be finished, by the response being read to
// io.EOF after the request was ended, or abandoned with Reset; a stream left
// otherwise keeps its place in the concurrency limit.
type ClientConn struct {
	c       *conn
	done    chan struct{}
	err     error
	streams sync.Pool
}

var _ http.ClientConn = (*ClientConn)(nil)

// NewClientConn starts HTTP/2 on nc: it sends the preface and SETTINGS and
// starts the goroutines that read and write the connection. It does not wait
// for the server's SETTINGS.
func NewClientConn(nc net.Conn, opts ClientOptions) (*ClientConn, error) {
	cfg, err := resolve(opts.MaxConcurrentStreams, opts.InitialStreamWindowSize, opts.InitialConnectionWindowSize,
		opts.MaxHeaderListSize, opts.Buffers, opts.Logger)
	if err != nil {
		return nil, err
	}
	// A malformed response resets its stream only (the upstream side's
	// options are not wired).
	cfg.streamErrors = true
	c := newConn(nc, true, cfg)
	cc := &ClientConn{c: c, done: make(chan struct{})}
	c.pool = &cc.streams
	go c.writeLoop()
	go cc.readLoop()
	return cc, nil
}

func (cc *ClientConn) readLoop() {
	defer close(cc.done)
	err := cc.c.readLoop()
	cc.c.teardown(err)
	cc.err = err
}

// NewStream opens a stream; its id is assigned when its header is written. It
// fails, with an error wrapping ErrConnClosed, if the connection is closed,
// going away (then the error also is ErrNotProcessed: retry elsewhere) or at
// its concurrency limit. Canceling ctx resets the stream (CANCEL).
func (cc *ClientConn) NewStream(ctx context.Context) (http.ClientStream, error) {
	c := cc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := cc.availableLocked(); err != nil {
		return nil, err
	}
	s := c.getStream()
	s.held = true
	s.counted = true
	c.active++
	if ctx.Done() != nil {
		gen := s.gen
		s.stopCtx = context.AfterFunc(ctx, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			// The stream may have been recycled since (Close).
			if s.gen == gen && s.err == nil && !(s.localDone && s.remoteDone) {
				c.resetLocked(s, http.ResetCancel, false)
			}
		})
	}
	return s, nil
}

func (cc *ClientConn) availableLocked() error {
	c := cc.c
	switch {
	case c.goAwayRecv != nil:
		g := *c.goAwayRecv
		return &g
	case c.closed || c.wstop:
		if c.err != nil {
			return c.err
		}
		return ErrConnClosed
	case c.active >= int(min(c.peerMaxStreams, c.cfg.maxStreams)):
		return fmt.Errorf("%w: %d streams open, the limit", ErrConnClosed, c.active)
	case c.nextStreamID+2*uint32(c.active) > maxStreamID:
		return fmt.Errorf("%w: stream ids exhausted", ErrConnClosed)
	}
	return nil
}

// Available reports whether NewStream would succeed now.
func (cc *ClientConn) Available() bool {
	cc.c.mu.Lock()
	defer cc.c.mu.Unlock()
	return cc.availableLocked() == nil
}

// Done is closed once the connection has ended.
func (cc *ClientConn) Done() <-chan struct{} { return cc.done }

// Err is why the connection ended (nil: orderly), once Done is closed.
func (cc *ClientConn) Err() error {
	select {
	case <-cc.done:
		return cc.err
	default:
		return nil
	}
}

// PeerClosed reports, once Done is closed, whether the connection ended
// because the server closed or reset it rather than by this side's doing
// (Close, or a protocol error answered with GOAWAY): Envoy's RemoteClose
// against LocalClose (see http.PeerGone).
func (cc *ClientConn) PeerClosed() bool {
	cc.c.mu.Lock()
	defer cc.c.mu.Unlock()
	return cc.c.peerClosed
}

// Close sends GOAWAY and closes the connection at once; streams in flight fail
// with ErrConnClosed. It waits for the connection's goroutines.
func (cc *ClientConn) Close() error {
	cc.c.abort()
	<-cc.done
	return nil
}

// clientHeaders acts on a complete header block received by the client: a
// response header (informational ones are dropped) or trailers.
func (c *conn) clientHeaders() error {
	hb := &c.hb
	id := hb.id
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[id]
	if s == nil {
		if c.isIdle(id) {
			return connErr(http.ResetProtocolError, "HEADERS on idle stream %d", id)
		}
		return nil // a stream we reset or finished
	}
	switch {
	case s.remoteDone:
		c.resetLocked(s, ResetStreamClosed, false)
		return nil
	case hb.tooLarge:
		c.resetLocked(s, http.ResetCancel, false)
		s.err = errHeaderTooBig
		return nil
	case hb.selfDep:
		c.resetLocked(s, http.ResetProtocolError, false)
		return nil
	}
	if s.gotHeader {
		if !hb.endStream || !validateTrailers(&c.hdr) || s.contentLength >= 0 && s.recvBytes != s.contentLength {
			c.resetLocked(s, http.ResetProtocolError, false)
			return nil
		}
		s.trl, c.hdr = c.hdr, s.trl
		c.remoteEndLocked(s)
		return nil
	}
	status, cl, ok := validateResponse(&c.hdr)
	if !ok || status < 200 && hb.endStream {
		c.resetLocked(s, http.ResetProtocolError, false)
		return nil
	}
	if status < 200 {
		return nil // informational
	}
	if s.isHead || status == 204 || status == 304 {
		cl = -1
	}
	if hb.endStream && cl > 0 {
		c.resetLocked(s, http.ResetProtocolError, false)
		return nil
	}
	s.hdr, c.hdr = c.hdr, s.hdr
	s.contentLength = cl
	s.gotHeader = true
	s.headerEnded = hb.endStream
	s.cond.Broadcast()
	if hb.endStream {
		c.remoteEndLocked(s)
	}
	return nil
}

// clientGoAwayLocked acts on the server's GOAWAY: streams above its last id
// fail (retryably), no new ones start, and the connection closes when the
// others are done.
func (c *conn) clientGoAwayLocked(f *http2.GoAwayFrame) error {
	last := f.LastStreamID
	if c.goAwayRecv != nil && c.goAwayRecv.LastStreamID < last {
		last = c.goAwayRecv.LastStreamID
	}
	g := &GoAwayError{LastStreamID: last, Code: http.ResetCode(f.ErrCode), Debug: string(f.DebugData())}
	c.goAwayRecv = g
	for id, s := range c.streams {
		if id > last {
			e := *g
			e.StreamID = id
			c.failStreamLocked(s, &e)
		}
	}
	c.ready.each(func(s *stream) {
		if s.id == 0 && s.err == nil {
			e := *g
			c.failStreamLocked(s, &e)
		}
	})
	if c.active == 0 {
		c.stopLocked(nil, 0)
	}
	return nil
}
