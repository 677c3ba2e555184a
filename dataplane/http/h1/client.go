package h1

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// ClientConn is the client side of one upstream HTTP/1.1 connection, an
// http.ClientConn: it carries one stream at a time, and is Available again
// once a stream has ended cleanly on a connection both sides keep open.
//
// # A stream's life
//
//	s, err := cc.NewStream(ctx)      // ErrConnBusy, or ErrConnClosed (wrapped)
//	err = s.WriteHeader(req, end)    // request line and Host from :method, :path, :authority
//	n, err = s.Write(body)           // framed as Content-Length if req has one, else chunked
//	err = s.End()                    // or EndWithTrailers
//	resp, err := s.ReadHeader()      // 1xx skipped (100 releases an expect-100 body)
//	n, err = s.Read(buf)             // until io.EOF, even for a response without a body
//	tr := s.Trailers()
//
// The request side (WriteHeader, Write, End) and the response side
// (ReadHeader, Read) may run on two goroutines at once, each side calling
// its methods in order. The stream ends when End (or EndWithTrailers) has
// returned and Read has returned io.EOF; then the connection is Available, or
// closed if it cannot carry another request ("connection: close" either way,
// an HTTP/1.0 response without keep-alive, a response delimited by the close,
// a tunnel, a request body not sent in full, bytes after the response, an
// error). A stream that is not ended that way must be Reset, or the
// connection stays busy. The stream value is the connection's and is reused:
// it must not be used after it ended.
//
// If the context given to NewStream is done before the stream ends, the
// stream is reset: the connection is closed, and the stream's methods return
// errors. One goroutine per connection, started with its first stream that
// has a cancelable context, watches the contexts, so that a request costs no
// allocation.
type ClientConn struct {
	opts Options
	conn net.Conn
	rd   reader     // the response side's; rsem says who reads
	wr   writer     // the request side's
	wmu  sync.Mutex // wr and the request side of stream: ReadHeader may flush a held head

	stream clientStream

	// rsem is held while reading response heads: by ReadHeader, or by a
	// request body waiting for "100 Continue".
	rsem chan struct{}
	// contCh says that the wait for "100 Continue" is over.
	contCh chan struct{}

	mu       sync.Mutex
	state    connState
	gen      uint64 // streams opened
	watching bool   // the stream's context is being watched (unwatch not yet sent)
	done     uint8  // the parts of the stream that ended: reqDone, respDone

	watchCh     chan watchReq
	unwatch     chan struct{}
	quit        chan struct{}
	watcherDone chan struct{}
	closeOnce   sync.Once
}

type connState uint8

const (
	connIdle connState = iota
	connBusy
	connClosed
)

const (
	reqDone uint8 = 1 << iota
	respDone
)

type watchReq struct {
	ctx context.Context
	gen uint64
}

// NewClientConn returns the client codec for conn, an open connection to an
// upstream. It copies opts; RequestHeadersTimeout, IdleTimeout and CloseDelay
// do not apply (idle upstream connections are the pool's business).
func NewClientConn(conn net.Conn, opts *Options) *ClientConn {
	c := &ClientConn{
		opts:   opts.withDefaults(),
		conn:   conn,
		rsem:   make(chan struct{}, 1),
		contCh: make(chan struct{}, 1),
	}
	c.rd.init(conn, c.opts.Buffers)
	c.wr.init(conn, c.opts.Buffers)
	c.stream.c = c
	return c
}

// NewStream opens a stream. It fails with ErrConnBusy while a stream is in
// flight and with ErrConnClosed once the connection is closed.
func (c *ClientConn) NewStream(ctx context.Context) (http.ClientStream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	switch c.state {
	case connClosed:
		c.mu.Unlock()
		return nil, ErrConnClosed
	case connBusy:
		c.mu.Unlock()
		return nil, ErrConnBusy
	}
	c.state = connBusy
	c.gen++
	c.done = 0
	s := &c.stream
	s.begin()
	watch := ctx.Done() != nil
	if watch && c.watchCh == nil {
		c.watchCh = make(chan watchReq, 1)
		c.unwatch = make(chan struct{}, 1)
		c.quit = make(chan struct{})
		c.watcherDone = make(chan struct{})
		go c.watch()
	}
	c.watching = watch
	gen := c.gen
	c.mu.Unlock()
	select {
	case <-c.contCh:
	default:
	}
	if watch {
		c.watchCh <- watchReq{ctx, gen}
	}
	return s, nil
}

// Available reports whether NewStream would succeed now: the connection is
// open and carries no stream.
func (c *ClientConn) Available() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == connIdle
}

// PeerClosed reports whether the connection ended because the upstream
// closed or reset it (a read found the end of the stream or a reset, or a
// write found the connection gone) rather than by this side's choice (a
// response that ends it, a malformed response, a reset stream, Close):
// Envoy's RemoteClose against LocalClose, which a connection pool counts in
// upstream_cx_destroy_remote and upstream_cx_destroy_local. It is meant for
// a connection that is no longer Available, once its stream is done.
func (c *ClientConn) PeerClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rd.peerGone || http.PeerGone(c.wr.err)
}

// Close closes the connection, resetting the stream in flight if there is
// one.
func (c *ClientConn) Close() error {
	c.mu.Lock()
	idle := c.state == connIdle
	unwatch, closing := c.shutLocked()
	if idle {
		// No stream can be using the read buffer, and none can start.
		c.rd.release()
	}
	c.mu.Unlock()
	err := c.shut(unwatch, closing)
	c.closeOnce.Do(func() {
		if c.quit != nil {
			close(c.quit)
			<-c.watcherDone
		}
	})
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// fail closes the connection for good and ends the stream's watch.
func (c *ClientConn) fail() error {
	c.mu.Lock()
	unwatch, closing := c.shutLocked()
	c.mu.Unlock()
	return c.shut(unwatch, closing)
}

// shutLocked marks the connection closed; the caller holds c.mu, and calls
// shut with the results once it has released it.
func (c *ClientConn) shutLocked() (unwatch, closing bool) {
	if c.state == connClosed {
		return false, false
	}
	c.state = connClosed
	unwatch = c.watching
	c.watching = false
	return unwatch, true
}

// shut closes the conn and ends the stream's watch, after shutLocked.
func (c *ClientConn) shut(unwatch, closing bool) error {
	var err error
	if closing {
		err = c.conn.Close()
	}
	if unwatch {
		c.unwatch <- struct{}{}
	}
	return err
}

// finish records that part of the stream ended cleanly; when both have, the
// connection becomes idle or, if it cannot be reused, closes.
func (c *ClientConn) finish(part uint8) {
	s := &c.stream
	c.mu.Lock()
	c.done |= part
	if c.done != reqDone|respDone || c.state != connBusy {
		c.mu.Unlock()
		return
	}
	reuse := !s.noReuse.Load() && !s.tunnel.Load() && c.rd.buffered() == 0 && c.rd.err == nil && c.wr.err == nil
	unwatch := c.watching
	c.watching = false
	if reuse {
		c.state = connIdle
		c.rd.shrink()
	} else {
		c.state = connClosed
		c.rd.release()
	}
	c.mu.Unlock()
	if !reuse {
		c.conn.Close()
	}
	if unwatch {
		c.unwatch <- struct{}{}
	}
}

// watch resets streams whose context is done before they end.
func (c *ClientConn) watch() {
	defer close(c.watcherDone)
	for {
		select {
		case req := <-c.watchCh:
			select {
			case <-req.ctx.Done():
				c.mu.Lock()
				var unwatch, closing bool
				if c.gen == req.gen && c.watching { // the stream is still the one watched
					c.stream.reset.Store(true)
					unwatch, closing = c.shutLocked()
				}
				c.mu.Unlock()
				c.shut(unwatch, closing)
				<-c.unwatch
			case <-c.unwatch:
			}
		case <-c.quit:
			return
		}
	}
}

// contState is where a request body sent with "expect: 100-continue" stands.
type contState uint8

const (
	contNone    contState = iota // no expectation, or the body may be sent
	contWaiting                  // waiting for 100
	contRefused                  // a final response came instead: the body is not sent
)

// clientStream is the stream in flight; a ClientConn has one and reuses it.
type clientStream struct {
	c              *ClientConn
	resp, trailers http.Header

	// The request side.
	isHead, isConnect, upgrade bool
	headSent, reqEnded         bool
	expectWait                 bool        // awaitContinue has not yet said go
	headHeld                   atomic.Bool // the head waits in wr for the body

	// Shared, under c.mu.
	cont     contState
	deadline time.Time // of the wait for 100

	// The response side, under c.rsem.
	final     bool // a final response head was read
	gotHead   bool // a response head (of any kind) was read
	body      body
	headErr   error
	respEnded bool // Read returned io.EOF

	noReuse atomic.Bool // the connection cannot carry another request
	tunnel  atomic.Bool
	reset   atomic.Bool
}

func (s *clientStream) begin() {
	*s = clientStream{c: s.c, resp: s.resp, trailers: s.trailers}
	s.resp.Reset()
	s.trailers.Reset()
}

// WriteHeader sends the request head: the request line from :method and
// :path (the :authority for CONNECT), Host from :authority (or from a host
// field if there is no :authority), then h's fields in order, except
// pseudo-headers, host, and the framing and persistence fields the codec
// writes itself: content-length (from h's), "transfer-encoding: chunked" for
// a body without one, "content-length: 0" for a bodiless POST, PUT or PATCH,
// and connection ("close" if h's connection field says so, "upgrade" for an
// upgrade request). An upgrade request (upgrade field and "connection:
// upgrade") must have no body; Write is allowed on it only once ReadHeader has
// returned 101, and then sends raw bytes, as it does at once for CONNECT.
//
// With "expect: 100-continue" and a body, the head is sent at once and the
// body held back until the upstream answers 100, or
// Options.ExpectContinueTimeout passes; if it answers with a final status
// instead, Write and End return ErrExpectationFailed and ReadHeader returns
// that response. A head with a Content-Length small enough to go with its
// body in one system call is held until the first Write; any other is sent at
// once.
func (s *clientStream) WriteHeader(h *http.Header, end bool) error {
	c := s.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := s.writeHeader(h, end, false)
	return err
}

// writeHeader is WriteHeader under c.wmu. With hold, a request that ends with
// its head (no body, no upgrade, not CONNECT) is left whole in c.wr, ended but
// neither sent nor released, and held reports so.
func (s *clientStream) writeHeader(h *http.Header, end, hold bool) (held bool, err error) {
	c := s.c
	switch {
	case s.reset.Load():
		return false, ErrStreamDone
	case s.headSent:
		return false, ErrHeaderSent
	}
	method := h.Value(http.Method)
	s.isConnect = method == "CONNECT"
	s.isHead = method == "HEAD"
	target := h.Value(http.Path)
	authority, hasAuthority := h.Get(http.Authority)
	if !hasAuthority {
		authority = h.Value("host")
	}
	if s.isConnect {
		target = authority
	}
	if !isTokenString(method) || !validTarget(target) || !validValue(authority) || !validFields(h) {
		return false, ErrInvalidHeader
	}
	cl := int64(-1)
	var conn connTokens
	bad, upgrade, expects := false, false, false
	h.Range(func(name, value string) bool {
		switch name {
		case "content-length":
			n := parseDecimalString(value)
			bad = bad || n < 0 || cl >= 0 && n != cl
			cl = n
		case "connection":
			conn.addString(value)
		case "upgrade":
			upgrade = true
		case "expect":
			expects = expects || http.EqualFoldLower(value, "100-continue")
		}
		return true
	})
	s.upgrade = upgrade && conn.upgrade && !s.isConnect
	if bad || s.upgrade && cl > 0 {
		return false, ErrInvalidHeader
	}
	mode := bodyNone
	switch {
	case s.isConnect:
		mode, cl = bodyRaw, -1
		s.noReuse.Store(true)
	case s.upgrade:
	case cl >= 0:
		mode = bodyLength
	case end:
		if method == "POST" || method == "PUT" || method == "PATCH" {
			cl = 0
		}
	default:
		mode = bodyChunked
	}
	if conn.close {
		s.noReuse.Store(true)
	}

	w := &c.wr
	w.get()
	w.str(method)
	w.str(" ")
	w.str(target)
	w.str(" HTTP/1.1\r\nhost: ")
	w.str(authority)
	w.str("\r\n")
	writeFields(w, h, skipFraming|skipHost)
	if cl >= 0 {
		w.str("content-length: ")
		w.uint(uint64(cl), 10)
		w.str("\r\n")
	}
	if mode == bodyChunked {
		w.str("transfer-encoding: chunked\r\n")
	}
	switch {
	case conn.close:
		w.str("connection: close\r\n")
	case s.upgrade:
		w.str("connection: upgrade\r\n")
	}
	w.str("\r\n")
	w.setBody(mode, cl)
	s.headSent = true

	if expects && !end && (mode == bodyChunked || mode == bodyLength && cl > 0) {
		c.mu.Lock()
		s.cont = contWaiting
		s.deadline = time.Now().Add(c.opts.ExpectContinueTimeout)
		c.mu.Unlock()
		s.expectWait = true
		return false, s.flush()
	}
	switch {
	case hold && end && !s.upgrade && !s.isConnect:
		s.reqEnded = true
		if err := w.close(nil); err != nil {
			return false, s.writeFailed(err)
		}
		return true, nil
	case end || s.upgrade:
		// An upgrade request has no body: the request is complete unless it
		// becomes a tunnel.
		return false, s.end(nil)
	case mode == bodyLength && cl <= int64(w.avail()):
		s.headHeld.Store(true)
		return false, nil
	}
	return false, s.flush()
}

// ExchangeHeader implements http.HeaderExchanger. On a conn that can write
// and then wait for the answer in one step (netio.Conn's WriteRead), the
// request is sent that way and the first bytes of the response come with it;
// on another, it is WriteHeader(h, true) and ReadHeader.
func (s *clientStream) ExchangeHeader(h *http.Header) (*http.Header, bool, error) {
	c := s.c
	wr, ok := c.conn.(writeReader)
	if !ok {
		if err := s.WriteHeader(h, true); err != nil {
			return nil, false, err
		}
		resp, err := s.ReadHeader()
		return resp, true, err
	}
	// No yieldToReady before this write (see there): the handlers' turns are
	// already grouped before it by the server codecs.
	c.wmu.Lock()
	held, err := s.writeHeader(h, true, true)
	if err != nil || !held {
		c.wmu.Unlock()
		if err != nil {
			return nil, false, err
		}
		resp, err := s.ReadHeader()
		return resp, true, err
	}
	c.rsem <- struct{}{}
	defer func() { <-c.rsem }()
	// The read buffer is empty: finish lets a connection carry another
	// stream only then.
	_, werr, rerr := c.rd.writeFill(wr, c.wr.buffered(), c.opts.MaxHeaderBytes)
	if werr != nil {
		err = s.writeFailed(werr)
		c.wmu.Unlock()
		return nil, false, err
	}
	c.wr.release()
	c.finish(reqDone)
	c.wmu.Unlock()
	if rerr != nil {
		c.rd.err = rerr // for readHead, which makes it the stream's error
	}
	resp, err := s.finalHead()
	return resp, true, err
}

func (s *clientStream) flush() error {
	s.headHeld.Store(false)
	if err := s.c.wr.flush(); err != nil {
		return s.writeFailed(err)
	}
	return nil
}

// writeFailed makes the connection unusable after a failed write.
func (s *clientStream) writeFailed(err error) error {
	s.noReuse.Store(true)
	s.c.wr.release()
	s.c.fail()
	return err
}

// awaitContinue waits until the body of an expect-100 request may be sent.
// It reports false if it must not be.
func (s *clientStream) awaitContinue() bool {
	if !s.expectWait {
		return true
	}
	c := s.c
	for {
		c.mu.Lock()
		st := s.cont
		c.mu.Unlock()
		switch st {
		case contNone:
			s.expectWait = false
			return true
		case contRefused:
			return false
		}
		select {
		case c.rsem <- struct{}{}:
			c.mu.Lock()
			st = s.cont
			c.mu.Unlock()
			if st == contWaiting && !s.final && s.headErr == nil {
				if err := s.readHead(); err != nil {
					s.headErr = err // for ReadHeader
					c.mu.Lock()
					s.cont = contRefused
					c.mu.Unlock()
				}
			}
			<-c.rsem
		case <-c.contCh:
		}
	}
}

// Write sends request body bytes, framed, and flushes them. Write(nil)
// sends a held head.
func (s *clientStream) Write(p []byte) (int, error) {
	c := s.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case s.reset.Load():
		return 0, ErrStreamDone
	case !s.headSent:
		return 0, ErrNoHeader
	case s.upgrade && !s.tunnel.Load():
		return 0, ErrNotTunnel
	case s.reqEnded && !s.tunnel.Load():
		return 0, ErrStreamDone
	}
	if s.tunnel.Load() && c.wr.mode != bodyRaw {
		c.wr.get()
		c.wr.setBody(bodyRaw, 0)
	}
	if !s.awaitContinue() {
		return 0, ErrExpectationFailed
	}
	s.headHeld.Store(false)
	n, err := c.wr.body(p)
	switch {
	case err == ErrContentLength:
		s.noReuse.Store(true)
	case err != nil:
		return n, s.writeFailed(err)
	}
	return n, err
}

// End ends the request.
func (s *clientStream) End() error { return s.EndWithTrailers(nil) }

// EndWithTrailers ends the request with trailers, sent if the body is
// chunked and Options.EnableTrailers is set, and dropped otherwise. On a
// tunnel (CONNECT, or after 101) it half-closes the connection (CloseWrite,
// if the conn has it).
func (s *clientStream) EndWithTrailers(t *http.Header) error {
	s.c.wmu.Lock()
	defer s.c.wmu.Unlock()
	switch {
	case s.reset.Load():
		return ErrStreamDone
	case !s.headSent:
		return ErrNoHeader
	case t != nil && !validFields(t):
		return ErrInvalidHeader
	}
	if !s.c.opts.EnableTrailers {
		t = nil
	}
	if s.tunnel.Load() || s.isConnect {
		c := s.c
		c.wr.get()
		err := c.wr.flush()
		c.wr.release()
		if cw, ok := c.conn.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
		return err
	}
	if s.reqEnded {
		if s.upgrade {
			return nil
		}
		return ErrStreamDone
	}
	if !s.awaitContinue() {
		s.reqEnded = true
		s.noReuse.Store(true)
		s.c.wr.release()
		s.c.finish(reqDone)
		return ErrExpectationFailed
	}
	return s.end(t)
}

func (s *clientStream) end(t *http.Header) error {
	c := s.c
	s.reqEnded = true
	s.headHeld.Store(false)
	if err := c.wr.end(t); err != nil {
		// A body short of its Content-Length leaves the upstream waiting for
		// the rest: the request cannot complete.
		return s.writeFailed(err)
	}
	c.wr.release()
	c.finish(reqDone)
	return nil
}

// ReadHeader waits for the final response head (or 101) and returns it:
// :status, then the fields in order with lower-case names, Transfer-Encoding
// decoded and removed, Content-Length once. 1xx responses other than 101 are
// consumed. The Header is valid until the next stream.
func (s *clientStream) ReadHeader() (*http.Header, error) {
	c := s.c
	if s.reset.Load() {
		return nil, ErrStreamDone
	}
	if s.headHeld.Load() {
		// The body the head waits for may wait for this response.
		c.wmu.Lock()
		if s.headHeld.Load() {
			s.flush()
		}
		c.wmu.Unlock()
	}
	c.rsem <- struct{}{}
	defer func() { <-c.rsem }()
	return s.finalHead()
}

// finalHead reads response heads until the final one (or 101) and returns
// it. The caller holds c.rsem.
func (s *clientStream) finalHead() (*http.Header, error) {
	for !s.final && s.headErr == nil {
		s.headErr = s.readHead()
	}
	if s.headErr != nil {
		return nil, s.headErr
	}
	return &s.resp, nil
}

// readHead reads and parses one response head. The caller holds c.rsem.
func (s *clientStream) readHead() error {
	c := s.c
	c.mu.Lock()
	waiting := s.cont == contWaiting
	deadline := s.deadline
	c.mu.Unlock()
	if waiting {
		c.conn.SetReadDeadline(deadline)
	}
	head, err := c.rd.readHead(c.opts.MaxHeaderBytes, c.opts.MaxHeaders, true)
	if waiting {
		c.conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		if waiting && errors.Is(err, os.ErrDeadlineExceeded) {
			s.setCont(contNone) // no 100 in time: send the body anyway
			return nil
		}
		return s.readFailed(err, !s.gotHead && c.rd.buffered() == 0)
	}
	s.gotHead = true
	status, err := s.parseResponse(head)
	if err != nil {
		return s.readFailed(err, false)
	}
	switch {
	case status == 100:
		if waiting {
			s.setCont(contNone)
		}
	case status > 101 && status < 200: // other informational responses: skipped
	default: // final, or 101
		s.final = true
		if waiting {
			s.noReuse.Store(true)
			s.setCont(contRefused)
		}
	}
	return nil
}

func (s *clientStream) setCont(st contState) {
	c := s.c
	c.mu.Lock()
	s.cont = st
	c.mu.Unlock()
	select {
	case c.contCh <- struct{}{}:
	default:
	}
}

// readFailed turns a failure of the response side into the stream's error
// and closes the connection.
func (s *clientStream) readFailed(err error, nothing bool) error {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Kind: KindTruncated, Msg: "connection ended in the response head", Err: err}
		if nothing {
			e.Kind, e.Msg = KindNoResponse, "connection ended before the response"
		}
	}
	e.Upstream, e.Status = true, 0
	if e.Details == DetailsDownstreamClosed {
		e.Details = ""
	}
	s.noReuse.Store(true)
	s.c.fail()
	return e
}

// parseResponse parses a response head into s.resp and sets up the body.
func (s *clientStream) parseResponse(head []byte) (int, error) {
	for len(head) >= 2 && head[0] == '\r' && head[1] == '\n' {
		head = head[2:]
	}
	line, rest := nextLine(head)
	sl, perr := parseStatusLine(line)
	if perr != nil {
		return 0, perr
	}
	resp := &s.resp
	resp.Reset()
	resp.AddBytes([]byte(http.Status), line[9:12])
	var (
		cl   contentLength
		te   transferEncoding
		conn connTokens
	)
	cl.reset()
	clDone := false
	for line, rest = nextLine(rest); len(line) > 0; line, rest = nextLine(rest) {
		name, value, err := parseField(line)
		if err != nil {
			return 0, err
		}
		switch string(name) {
		case "content-length":
			if msg := cl.add(value); msg != "" {
				return 0, errFraming(DetailsCodecError, msg)
			}
			if !clDone {
				resp.AddBytes(name, cl.first)
				clDone = true
			}
			continue
		case "transfer-encoding":
			te.add(value)
			continue
		case "connection":
			conn.add(value)
		}
		resp.AddBytes(name, value)
	}
	status := sl.code
	if status < 200 && status != 101 {
		return status, nil
	}

	mode := bodyNone
	switch {
	case status == 101:
		if !s.upgrade {
			return 0, errMalformed("101 without an upgrade request")
		}
		mode = bodyRaw
	case s.isHead || status == 204 || status == 304:
	case s.isConnect && status < 300:
		mode = bodyRaw
	case te.seen:
		if cl.n >= 0 {
			return 0, errFraming(DetailsChunkedContentLen, "both content-length and transfer-encoding")
		}
		if te.codings != 1 || !te.lastChunked {
			return 0, errFraming(DetailsInvalidTransferEnc, "transfer-encoding other than chunked")
		}
		mode = bodyChunked
	case cl.n >= 0:
		mode = bodyLength
	default:
		mode = bodyUntilClose
	}
	keepAlive := !conn.close && (sl.minor == 1 || conn.keepAlive)
	if !keepAlive || mode == bodyUntilClose {
		s.noReuse.Store(true)
	}
	s.body.reset(mode, cl.n)
	if mode == bodyRaw {
		s.noReuse.Store(true)
		s.tunnel.Store(true)
	}
	return status, nil
}

// EndedWithHeader reports, after ReadHeader, whether the response has no
// body: a response to HEAD, a 204 or 304, or Content-Length 0. (A 101 or a
// 2xx to CONNECT is a tunnel, and never ends with its header.)
func (s *clientStream) EndedWithHeader() bool {
	return s.final && s.body.mode == bodyNone
}

// Close ends the caller's use of the stream: a stream not finished (the
// request ended and the response read to io.EOF) is reset, which closes the
// connection, as does the end of a tunnel. The stream value is the
// connection's and is reused by its next stream: Close must come before the
// connection is given another stream (a pool takes it back after Close), and
// nothing may be called on the stream after it.
func (s *clientStream) Close() error {
	c := s.c
	c.mu.Lock()
	finished := c.done == reqDone|respDone
	c.mu.Unlock()
	if !finished || s.tunnel.Load() {
		s.Reset(http.ResetCancel)
	}
	return nil
}

// Read reads the response body, decoded; on a tunnel, the raw bytes the
// upstream sends until it closes.
func (s *clientStream) Read(p []byte) (int, error) {
	c := s.c
	if s.reset.Load() {
		return 0, ErrStreamDone
	}
	if !s.final {
		return 0, ErrNoHeader
	}
	n, err := c.rd.readBody(&s.body, p, &s.trailers, c.opts.limits())
	switch {
	case err == nil:
	case err == io.EOF:
		if s.tunnel.Load() {
			return n, err
		}
		if !s.respEnded {
			s.respEnded = true
			c.finish(respDone)
		}
	default:
		var e *Error
		if errors.As(err, &e) {
			e.Upstream, e.Status = true, 0
			if e.Details == DetailsDownstreamClosed {
				e.Details = ""
			}
		}
		s.noReuse.Store(true)
		c.fail()
	}
	return n, err
}

// Trailers returns the response trailers once Read has returned io.EOF.
func (s *clientStream) Trailers() *http.Header { return &s.trailers }

// Reset abandons the stream: the connection is closed.
func (s *clientStream) Reset(code http.ResetCode) {
	if s.reset.Swap(true) {
		return
	}
	s.noReuse.Store(true)
	s.c.fail()
}

var _ http.ClientConn = (*ClientConn)(nil)
var _ http.ClientStream = (*clientStream)(nil)
