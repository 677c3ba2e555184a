package h1

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

// ServerConn is the server side of one downstream HTTP/1.x connection, an
// http.ServerCodec: it reads requests, hands each to the Handler as an
// http.ServerStream, one at a time and in order, and writes the responses.
// Create one per accepted connection with NewServerConn; Serve runs it.
//
// Serve returns nil when the connection ended normally (the client closed it
// between requests, a request or response asked for "connection: close", the
// connection drained, a stream was reset) and an *Error when the codec ended
// it: a request it refused (it has answered with Error.Status), an idle or
// request-headers timeout, a client gone in the middle of a request. If ctx is
// canceled, Serve closes the connection and returns context.Cause(ctx).
type ServerConn struct {
	opts   Options
	parent context.Context
	conn   net.Conn
	tls    bool

	// ctx is the context of every stream of the connection: HTTP/1.1 resets
	// a stream by closing its connection, so a stream's context is its
	// connection's. It is canceled when the connection closes, the client
	// goes away (see backgroundReads), or a stream is reset.
	ctx    context.Context
	cancel context.CancelCauseFunc

	rd      reader
	wr      writer
	wmu     sync.Mutex // the write side: wr and the response fields of stream
	stream  serverStream
	spans   []span // the fields of the head being parsed
	path    []byte // scratch for a :path that needs a leading '/'
	scratch []byte // scratch for a rewritten connection field (h2c)

	draining  atomic.Bool  // responses say "connection: close" (Drain, Discourage)
	closeIdle atomic.Bool  // an idle connection ends at once (Drain)
	state     atomic.Int32 // stBusy, stIdle, stWantDetach or stDetach
	deadline  bool         // a read deadline is set
	// again: readRequest has run before, so the client of the next request
	// has (or is receiving) a response.
	again bool

	// Detach: detached is closed when Serve has stopped at the detach point
	// (or ended otherwise); detachedBytes are the unparsed bytes then, and
	// detachedOK says whether it stopped there.
	detached      chan struct{}
	detachedBytes []byte
	detachedOK    bool

	// The background read (see startBackgroundRead); bgErr is written by the
	// background goroutine before it sends on bgDone.
	bgStart   chan struct{}
	bgDone    chan struct{}
	bgErr     error
	bgPending bool
	// The background read starts one to two bgReadDelay periods after the
	// request is complete (see armBackgroundRead); bgMu guards the fields
	// below, and bgPending while armed.
	bgMu      sync.Mutex
	bgArmed   bool        // a request is complete and its handler runs
	bgGen     uint64      // requests armed so far
	bgSeen    uint64      // bgGen at the timer's last tick
	bgTicking bool        // bgTimer is set
	bgOver    bool        // Serve has returned: the timer stops
	bgTimer   *time.Timer // ticks every bgReadDelay while exchanges go on
}

type span struct{ name, value []byte }

// The states of a ServerConn, as Drain and Detach see them.
const (
	stBusy       int32 = iota // reading a request, or serving one
	stIdle                    // waiting for the first byte of the next request
	stWantDetach              // busy, and Detach waits for the exchange to end
	stDetach                  // Detach took the connection
)

// ErrDetached is what Serve returns when Detach took the connection: Serve
// has not closed it.
var ErrDetached = errors.New("h1: connection detached")

// NewServerConn returns the server codec for one connection. It copies opts.
func NewServerConn(opts *Options) *ServerConn {
	c := &ServerConn{opts: opts.withDefaults(), detached: make(chan struct{})}
	c.stream.c = c
	return c
}

var (
	errStreamReset = errors.New("h1: stream reset")
	errClientGone  = errors.New("h1: downstream closed the connection")
	errConnDone    = errors.New("h1: connection done")
)

// Serve runs the connection until it ends, and closes it, unless Detach took
// it (Serve then returns ErrDetached and leaves conn open). It must be called
// once.
func (c *ServerConn) Serve(ctx context.Context, conn net.Conn, h http.Handler) error {
	return c.ServeBuffered(ctx, conn, nil, h)
}

// ServeBuffered is Serve for a connection whose first bytes were already
// read: buffered, which the codec copies, is parsed before conn is read. A
// connection a hot-restart parent detached resumes this way.
func (c *ServerConn) ServeBuffered(ctx context.Context, conn net.Conn, buffered []byte, h http.Handler) (err error) {
	c.parent, c.conn = ctx, conn
	_, c.tls = conn.(interface{ ConnectionState() tls.ConnectionState })
	c.ctx, c.cancel = context.WithCancelCause(ctx)
	stop := context.AfterFunc(c.ctx, func() { conn.Close() })
	c.rd.init(conn, c.opts.Buffers)
	c.wr.init(conn, c.opts.Buffers)
	c.rd.preload(buffered)
	defer func() {
		if stop() && err == ErrDetached {
			c.cancel(errConnDone) // conn stays open: its new owner has it
		} else {
			conn.Close()
			c.cancel(errConnDone)
			if err == ErrDetached {
				// The connection closed as it was detached.
				err = nil
				c.detachedOK = false
			}
		}
		c.stopBackgroundReads()
		if c.bgStart != nil {
			if c.bgPending {
				<-c.bgDone
			}
			close(c.bgStart)
		}
		c.rd.release()
		c.wr.release()
		close(c.detached)
	}()
	for {
		if err := c.readRequest(); err != nil {
			return c.refuse(err, h)
		}
		if c.stream.bodyDone.Load() {
			c.armBackgroundRead()
		}
		h.ServeStream(&c.stream)
		c.disarmBackgroundRead()
		if !c.endStream() {
			if c.stream.answered() && !c.stream.bodyDone.Load() {
				// The client may still be sending the body: let it read the
				// response before the close turns into a reset.
				c.lingerClose()
			}
			if c.parent.Err() != nil {
				return context.Cause(c.parent)
			}
			if e := c.stream.err; e != nil {
				return e
			}
			return nil
		}
	}
}

// Drain makes the connection end gracefully: the response in flight (if its
// head is not sent yet) gets "connection: close" and the connection closes
// after it; an idle connection closes at once.
func (c *ServerConn) Drain() {
	c.draining.Store(true)
	c.closeIdle.Store(true)
	if c.state.Load() == stIdle {
		c.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// Discourage is Envoy's drain of an HTTP/1.1 connection: the next response
// whose head is not sent yet says "connection: close" and the connection
// closes after it, but an idle connection stays open for its next request,
// so that a client sending one as the drain begins gets an answer rather
// than a closed connection. (Drain, or the end of the drain time, ends it.)
func (c *ServerConn) Discourage() { c.draining.Store(true) }

// Detach stops the connection between two exchanges so that another process
// can go on with it: Serve returns ErrDetached without closing the
// connection, and Detach returns the bytes read but not yet parsed (a copy).
// An idle connection, waiting for its next request, stops at once; one busy
// with an exchange stops when the exchange ends, if it ends within wait and
// keeps the connection open. Otherwise Detach reports false and changes
// nothing: the connection goes on here (and is drained, typically). Detach
// may be called from any goroutine, once; it returns once Serve has stopped
// or wait has passed.
func (c *ServerConn) Detach(wait time.Duration) ([]byte, bool) {
	switch {
	case c.state.CompareAndSwap(stIdle, stDetach):
		c.conn.SetReadDeadline(time.Unix(1, 0)) // wake the read
	case wait > 0 && c.state.CompareAndSwap(stBusy, stWantDetach):
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-c.detached:
		case <-t.C:
			if c.state.CompareAndSwap(stWantDetach, stBusy) {
				return nil, false
			}
			// Serve reached the detach point just now.
		}
	default:
		return nil, false
	}
	<-c.detached
	return c.detachedBytes, c.detachedOK
}

// wake ends the wait for the next request: it moves the state from idle to
// busy and reports false if Detach got there first.
func (c *ServerConn) wake() bool {
	return c.state.CompareAndSwap(stIdle, stBusy)
}

// idle moves the state from busy to idle before the wait for the next
// request and reports false if Detach waits for this point: the state is
// then stDetach.
func (c *ServerConn) idle() bool {
	for !c.state.CompareAndSwap(stBusy, stIdle) {
		if c.state.CompareAndSwap(stWantDetach, stDetach) {
			return false
		}
	}
	return true
}

// detachBusy is the detach point of a connection Detach waited for: its
// exchange ended. A background read still under way is woken first.
func (c *ServerConn) detachBusy() error {
	var err error
	if c.bgPending {
		c.conn.SetReadDeadline(time.Unix(1, 0))
		<-c.bgDone
		c.bgPending = false
		err = c.bgErr
	}
	return c.detach(err)
}

func (c *ServerConn) setReadDeadline(t time.Time) {
	c.conn.SetReadDeadline(t)
	c.deadline = !t.IsZero()
}

// errDrained ends Serve quietly.
var errDrained = errors.New("h1: drained")

// readRequest waits for the next request, reads its head and parses it into
// c.stream. It returns nil when a stream is ready, errDrained when the
// connection ended quietly, and an *Error otherwise.
func (c *ServerConn) readRequest() error {
	again := c.again
	c.again = true
	if c.state.Load() == stWantDetach && c.state.CompareAndSwap(stWantDetach, stDetach) {
		return c.detachBusy() // a pipelined request goes with the bytes
	}
	if c.bgPending || c.rd.buffered() == 0 {
		if !c.bgPending {
			c.rd.shrink()
		}
		if c.opts.IdleTimeout > 0 {
			c.setReadDeadline(time.Now().Add(c.opts.IdleTimeout))
		}
		if !c.idle() {
			return c.detachBusy()
		}
		if c.closeIdle.Load() {
			if !c.wake() {
				// Detach got here first: a background read may still be
				// under way, so detach as for a busy connection.
				return c.detachBusy()
			}
			return errDrained
		}
		var err error
		if c.bgPending {
			<-c.bgDone
			c.bgPending = false
			err = c.bgErr
		} else {
			if again {
				// The client is likely still receiving the last response:
				// the others ready to run go first, and the read may then
				// find the next request instead of nothing (see
				// yieldToReady).
				yieldToReady()
			}
			err = c.rd.fill(c.opts.MaxHeaderBytes)
		}
		if !c.wake() {
			return c.detach(err)
		}
		if c.rd.buffered() == 0 {
			if errors.Is(err, os.ErrDeadlineExceeded) && !c.closeIdle.Load() {
				return &Error{Kind: KindIdleTimeout, Msg: "no request within the idle timeout"}
			}
			return errDrained // the client closed, or the connection drained
		}
	}
	if c.opts.RequestHeadersTimeout > 0 {
		c.setReadDeadline(time.Now().Add(c.opts.RequestHeadersTimeout))
	} else if c.deadline || c.closeIdle.Load() {
		c.setReadDeadline(time.Time{})
	}
	head, err := c.rd.readHead(c.opts.MaxHeaderBytes, c.opts.MaxHeaders, true)
	if c.deadline {
		c.setReadDeadline(time.Time{})
	}
	if err != nil {
		var e *Error
		switch {
		case errors.As(err, &e):
			return e
		case errors.Is(err, os.ErrDeadlineExceeded):
			if c.closeIdle.Load() {
				return errDrained
			}
			return protoErr(KindHeadersTimeout, 408, DetailsRequestHeaderTimeout, "request head not received in time")
		}
		return &Error{Kind: KindTruncated, Msg: "connection ended in the request head", Details: DetailsDownstreamClosed, Err: err}
	}
	if e := c.parseRequest(head); e != nil {
		return e
	}
	return nil
}

// detach is the detach point: Detach took the idle connection and woke its
// read, which returned err. The bytes read and not parsed go to Detach's
// caller; a connection the client closed meanwhile is not handed over.
func (c *ServerConn) detach(err error) error {
	if c.rd.buffered() == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return errDrained
	}
	c.conn.SetReadDeadline(time.Time{})
	c.detachedBytes = append([]byte(nil), c.rd.b[c.rd.r:c.rd.w]...)
	c.detachedOK = true
	return ErrDetached
}

// preload puts bytes read before Serve (by another process) in the read
// buffer, copying them.
func (rd *reader) preload(b []byte) {
	if len(b) == 0 {
		return
	}
	if len(b) <= bufpool.Small {
		rd.pb = rd.pool.Get(bufpool.Small)
		rd.b = rd.pb.B
	} else {
		rd.b = make([]byte, len(b)) // a one-off, as for a head above bufpool.Large
	}
	rd.r, rd.w = 0, copy(rd.b, b)
}

// RefusalHandler is implemented by an http.Handler that answers the requests
// the server codec refuses, as Envoy's codec hands its protocol errors to the
// connection manager (sendProtocolError, then the manager's sendLocalReply):
// the answer is the manager's local reply, with its headers, body,
// local_reply_config and access log. Serve calls ServeRefused, on its own
// goroutine, for an Error with a Status (400, 403, 408, 431, 501, ...)
// before anything of the answer is written; a handler that does not
// implement it, or that returns without sending a response head, leaves the
// answer to the codec (a bodiless Status with "connection: close"). Either
// way the connection then closes (after the delayed close) and Serve returns
// err.
type RefusalHandler interface {
	// ServeRefused answers the request refused with err on s, a stream with
	// no request headers (the head is not parsed: Header is empty), whose
	// Read returns err and whose response closes the connection
	// ("connection: close"). s must not be used after ServeRefused returns.
	ServeRefused(s http.ServerStream, err *Error)
}

// refuse ends Serve for err, answering first if err calls for it: through h
// if it is a RefusalHandler, else by the codec itself.
func (c *ServerConn) refuse(err error, h http.Handler) error {
	switch err {
	case ErrDetached:
		return err
	case errDrained:
		err = nil
	}
	if c.parent.Err() != nil {
		return context.Cause(c.parent)
	}
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	if e.Status != 0 {
		if rh, ok := h.(RefusalHandler); ok {
			c.serveRefused(rh, e)
		} else {
			c.wmu.Lock()
			c.writeError(e.Status)
			c.wmu.Unlock()
		}
		c.lingerClose()
	}
	return e
}

// serveRefused has rh answer the request refused with e, on the connection's
// stream made ready for it; if rh sends no response head (and did not reset
// the stream), the codec answers as without a RefusalHandler.
func (c *ServerConn) serveRefused(rh RefusalHandler, e *Error) {
	s := &c.stream
	s.begin()
	s.req.Reset()
	s.minor, s.proto, s.reqClose, s.refused = 1, "HTTP/1.1", true, e
	rh.ServeRefused(s, e)
	c.wmu.Lock()
	if !s.final && !s.reset.Load() {
		c.writeError(e.Status)
	}
	c.wr.release()
	c.wmu.Unlock()
}

// writeError sends a bodiless error response that closes the connection.
func (c *ServerConn) writeError(status int) {
	w := &c.wr
	w.get()
	w.n = 0
	w.str("HTTP/1.1 ")
	w.uint(uint64(status), 10)
	w.str(" ")
	w.str(reasonPhrase(status))
	w.str("\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
	w.flush()
	w.release()
}

// lingerClose half-closes the connection and reads and discards what the
// client still sends, up to CloseDelay and 256 KiB, so that the client reads
// the error response rather than a connection reset.
func (c *ServerConn) lingerClose() {
	if c.opts.CloseDelay < 0 {
		return
	}
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.conn.SetReadDeadline(time.Now().Add(c.opts.CloseDelay))
	for total := 0; total < 256<<10; {
		c.rd.r = c.rd.w
		if err := c.rd.fill(0); err != nil {
			return
		}
		total += c.rd.buffered()
	}
}

// parseRequest parses a request head into c.stream.
func (c *ServerConn) parseRequest(head []byte) *Error {
	s := &c.stream
	s.begin()
	for len(head) >= 2 && head[0] == '\r' && head[1] == '\n' {
		head = head[2:]
	}
	line, rest := nextLine(head)
	rl, perr := parseRequestLine(line, c.opts.AllowCustomMethods)
	if perr != nil {
		return perr
	}
	s.minor = rl.minor

	var (
		host             []byte
		hosts            int
		cl               contentLength
		te               transferEncoding
		conn             connTokens
		proxyConn        connTokens
		upgrade, expects bool
		h2c              bool
	)
	cl.reset()
	c.spans = c.spans[:0]
	for line, rest = nextLine(rest); len(line) > 0; line, rest = nextLine(rest) {
		name, value, err := parseField(line)
		if err != nil {
			return err
		}
		if c.opts.RejectUnderscores && bytes.IndexByte(name, '_') >= 0 {
			return protoErr(KindMalformed, 400, DetailsUnexpectedUnderscore, "underscore in a header name")
		}
		switch string(name) {
		case "host":
			hosts++
			host = value
		case "content-length":
			if msg := cl.add(value); msg != "" {
				return errFraming(DetailsCodecError, msg)
			}
		case "transfer-encoding":
			te.add(value)
		case "connection":
			conn.add(value)
		case "proxy-connection":
			proxyConn.add(value)
		case "upgrade":
			upgrade = true
			h2c = equalFold(value, "h2c")
		case "expect":
			expects = expects || equalFold(value, "100-continue")
		}
		c.spans = append(c.spans, span{name, value})
	}

	method := rl.method
	s.isHead = string(method) == "HEAD"
	s.isConnect = string(method) == "CONNECT"

	// Framing (RFC 9112 section 6.3), with the smuggling defenses of section
	// 6.1, in Envoy's order and with its answers: no body on CONNECT (400),
	// never both Transfer-Encoding and Content-Length (400), and no
	// Transfer-Encoding but a single "chunked" (501).
	mode := bodyNone
	switch {
	case s.isConnect && cl.n > 0:
		return errFraming(DetailsBodyDisallowed, "a body on CONNECT")
	case te.seen && cl.n >= 0:
		return errFraming(DetailsChunkedContentLen, "both content-length and transfer-encoding")
	case te.seen:
		if err := te.check(); err != nil {
			return err
		}
		if s.isConnect {
			return protoErr(KindFraming, 501, DetailsInvalidTransferEnc, "transfer-encoding on CONNECT")
		}
		mode = bodyChunked
	case cl.n > 0:
		mode = bodyLength
	}

	// The target (RFC 9112 section 3.2).
	target := rl.target
	var authority, path []byte
	https := c.tls // :scheme; an absolute-form target's own, as Envoy takes it
	switch {
	case s.isConnect:
		if !validAuthority(target) {
			return protoErr(KindMalformed, 400, DetailsInvalidURL, "invalid CONNECT target")
		}
		authority = target
	case target[0] == '/':
		path = target
	case len(target) == 1 && target[0] == '*':
		if string(method) != "OPTIONS" {
			return protoErr(KindMalformed, 400, DetailsInvalidURL, "asterisk-form target for a method other than OPTIONS")
		}
		path = target
	default:
		var ok bool
		https, authority, path, ok = splitAbsolute(target)
		if !ok {
			return protoErr(KindMalformed, 400, DetailsInvalidURL, "invalid request target")
		}
		if https && !c.tls && c.opts.ValidateScheme {
			// An edge proxy does not take an https URL over plaintext
			// (Envoy's http1.https_url_on_plaintext_connection).
			return protoErr(KindMalformed, 403, DetailsHTTPSInPlaintext, "https URL on a plaintext connection")
		}
		if len(path) == 0 || path[0] == '?' {
			c.path = append(append(c.path[:0], '/'), path...)
			path = c.path
		}
	}

	// Host (RFC 9112 section 3.2): one, valid, and required in HTTP/1.1; an
	// absolute-form or CONNECT target supplies the authority instead (as
	// Envoy does), and then Host is not required.
	switch {
	case hosts > 1:
		return protoErr(KindMissingHost, 400, DetailsMissingHost, "more than one host field")
	case hosts == 1 && len(host) > 0:
		if !validAuthority(host) {
			return protoErr(KindMalformed, 400, DetailsInvalidURL, "invalid host")
		}
		if authority == nil {
			authority = host
		}
	case s.minor == 1 && authority == nil:
		return protoErr(KindMissingHost, 400, DetailsMissingHost, "no host")
	}

	// Persistence, as Envoy's shouldCloseConnection: HTTP/1.0 without
	// keep-alive, "connection: close", or "proxy-connection: close". A
	// chunked HTTP/1.0 request (which Envoy accepts) closes the connection
	// too, as RFC 9112 section 6.1 requires.
	s.reqClose = conn.close || proxyConn.close || s.minor == 0 && (!conn.keepAlive || mode == bodyChunked)
	// An h2c upgrade is not one: its upgrade field, HTTP2-Settings and their
	// connection options are removed and the request goes on as HTTP/1.1
	// (Envoy's codec does the same).
	h2c = h2c && upgrade && conn.upgrade
	s.upgrade = s.minor == 1 && upgrade && conn.upgrade && !s.isConnect && !h2c
	s.expect = expects && s.minor == 1 && mode != bodyNone
	s.expectPending = s.expect

	req := &s.req
	req.Reset()
	req.AddBytes([]byte(http.Method), method)
	if !s.isConnect {
		if https {
			req.Add(http.Scheme, "https")
		} else {
			req.Add(http.Scheme, "http")
		}
	}
	if authority != nil {
		req.AddBytes([]byte(http.Authority), authority)
	}
	if path != nil {
		req.AddBytes([]byte(http.Path), path)
	}
	clDone := s.isConnect // Envoy drops "content-length: 0" from CONNECT
	for _, f := range c.spans {
		switch string(f.name) {
		case "host", "transfer-encoding":
			continue
		case "upgrade", "http2-settings":
			if h2c {
				continue
			}
		case "connection":
			if h2c {
				if v := c.dropH2CTokens(f.value); len(v) > 0 {
					req.AddBytes(f.name, v)
				}
				continue
			}
		case "content-length": // one field with the value, however it came
			if !clDone {
				req.AddBytes(f.name, cl.first)
				clDone = true
			}
			continue
		}
		req.AddBytes(f.name, f.value)
	}
	s.body.reset(mode, cl.n)
	s.noBody = s.body.mode == bodyNone
	s.bodyDone.Store(s.body.done)
	s.noteBodyIn()
	if s.minor == 0 {
		s.proto = "HTTP/1.0"
	} else {
		s.proto = "HTTP/1.1"
	}
	return nil
}

// dropH2CTokens returns a connection field value without its "upgrade" and
// "http2-settings" options, joined by ",", in a scratch buffer of c.
func (c *ServerConn) dropH2CTokens(value []byte) []byte {
	b := c.scratch[:0]
	for elem, rest := nextElement(value); len(elem) > 0; elem, rest = nextElement(rest) {
		if equalFold(elem, "upgrade") || equalFold(elem, "http2-settings") {
			continue
		}
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = append(b, elem...)
	}
	c.scratch = b
	return b
}

// endStream finishes the stream after the handler returned and reports
// whether the connection goes on with the next request.
func (c *ServerConn) endStream() bool {
	s := &c.stream
	c.wmu.Lock()
	keep := s.ended && !s.closeAfter && !s.tunnel.Load() && !s.reset.Load() && c.wr.err == nil
	if !s.final && !s.reset.Load() && s.err != nil && s.err.Status != 0 {
		// The body was refused and the handler did not answer: answer for it.
		c.writeError(s.err.Status)
		s.final, s.ended = true, true
	}
	c.wr.release()
	c.wmu.Unlock()
	if !keep || c.closeIdle.Load() || s.err != nil {
		return false
	}
	if !s.bodyDone.Load() {
		// The handler did not read the whole body. Skip it if it is all
		// buffered; otherwise the connection cannot go on.
		if s.body.mode != bodyLength || s.body.err != nil || int64(c.rd.buffered()) < s.body.n {
			return false
		}
		c.rd.r += int(s.body.n)
	}
	return true
}

// bgReadDelay is how long a handler may run before the background read
// starts: between one and two of these. Most exchanges end well within it,
// and their connection then reads the next request itself: a background read
// from the start cost every request two hand-overs between goroutines (about
// 6 % of skiff's user time under h1ka). The price is that a client that goes
// away during a slow exchange is noticed 20 to 40 ms later than Envoy would.
const bgReadDelay = 20 * time.Millisecond

// armBackgroundRead is called when the request is complete, while its
// handler runs: if the handler is still at work when the connection's timer
// has ticked twice (or once, when the timer was not ticking), the background
// read starts. The timer is not set per request (setting and stopping one was
// 3 % of skiff's user time under h1ka): it ticks every bgReadDelay while
// exchanges go on, and a tick that finds the request it saw armed at the
// last tick still armed starts the read.
func (c *ServerConn) armBackgroundRead() {
	c.bgMu.Lock()
	c.bgArmed = true
	c.bgGen++
	if !c.bgTicking {
		c.bgTicking = true
		c.bgSeen = c.bgGen
		if c.bgTimer == nil {
			c.bgTimer = time.AfterFunc(bgReadDelay, c.bgTick)
		} else {
			c.bgTimer.Reset(bgReadDelay)
		}
	}
	c.bgMu.Unlock()
}

// bgTick is the timer's.
func (c *ServerConn) bgTick() {
	c.bgMu.Lock()
	defer c.bgMu.Unlock()
	switch {
	case c.bgOver:
		c.bgTicking = false
	case c.bgGen != c.bgSeen: // requests came since the last tick
		c.bgSeen = c.bgGen
		c.bgTimer.Reset(bgReadDelay)
	case c.bgArmed: // the same one as then, still served: it is slow
		c.bgArmed = false
		c.bgTicking = false
		c.startBackgroundRead()
	default: // a quiet period
		c.bgTicking = false
	}
}

// disarmBackgroundRead is called when the handler has returned, before the
// connection reads again: from then on bgPending says whether a background
// read started, and no other will.
func (c *ServerConn) disarmBackgroundRead() {
	c.bgMu.Lock()
	c.bgArmed = false
	c.bgMu.Unlock()
}

// stopBackgroundReads is called when Serve returns: the timer stops.
func (c *ServerConn) stopBackgroundReads() {
	c.bgMu.Lock()
	c.bgArmed, c.bgOver = false, true
	if c.bgTicking && c.bgTimer.Stop() {
		c.bgTicking = false
	}
	c.bgMu.Unlock()
}

// startBackgroundRead begins reading the next request's first bytes while
// the handler is still at work, once the request is complete (and
// bgReadDelay has passed), so that a client that goes away is noticed: the
// read's EOF (or error) cancels the stream's context and closes the
// connection. This is net/http's background read; Envoy learns the same
// from its event loop. It is skipped while bytes are buffered (a pipelined
// request) and for upgrade and CONNECT requests, whose connection may become
// a tunnel. The read is done by one goroutine per connection, started the
// first time, so that a request costs no allocation.
func (c *ServerConn) startBackgroundRead() {
	s := &c.stream
	if c.bgPending || s.upgrade || s.isConnect || c.rd.buffered() != 0 || c.rd.err != nil {
		return
	}
	c.rd.shrink()
	if c.bgStart == nil {
		c.bgStart = make(chan struct{}, 1)
		c.bgDone = make(chan struct{}, 1)
		go c.backgroundReads()
	}
	c.bgPending = true
	c.bgStart <- struct{}{}
}

func (c *ServerConn) backgroundReads() {
	for range c.bgStart {
		err := c.rd.fill(c.opts.MaxHeaderBytes)
		c.bgErr = err
		if err != nil && (c.state.Load() != stDetach || !errors.Is(err, os.ErrDeadlineExceeded)) {
			c.cancel(errClientGone)
		}
		c.bgDone <- struct{}{}
	}
}

// sendContinue sends "100 Continue" if the response has not begun.
func (c *ServerConn) sendContinue() {
	s := &c.stream
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if s.final || s.continueSent || s.reset.Load() {
		return
	}
	s.continueSent = true
	c.wr.get()
	c.wr.str("HTTP/1.1 100 Continue\r\n\r\n")
	c.wr.flush()
}

// serverStream is the stream of the request in flight; a ServerConn has one
// and reuses it for every request.
type serverStream struct {
	c             *ServerConn
	req, trailers http.Header
	proto         string

	// The request, set before the handler runs.
	minor                           int
	isHead, isConnect, upgrade      bool
	reqClose, expect, noBody        bool
	expectPending                   bool        // read side: 100 not yet dealt with
	body                            body        // read side
	raw                             body        // read side, once a tunnel
	err                             *Error      // read side: a protocol error in the body
	refused                         *Error      // the request was refused (see RefusalHandler)
	bodyDone                        atomic.Bool // the body was read to its end
	bodyIn                          atomic.Bool // the body is all received (see RequestReceived)
	bodyFailed                      atomic.Bool // err is set
	reset                           atomic.Bool
	tunnel                          atomic.Bool
	final, ended, closeAfter        bool // under c.wmu
	continueSent, headHeld, discard bool // under c.wmu
}

// answered reports whether a whole response went out (the handler's or the
// codec's), after the handler returned.
func (s *serverStream) answered() bool {
	return s.ended && !s.reset.Load() && !s.tunnel.Load() && s.c.wr.err == nil
}

// begin readies the stream for a new request.
func (s *serverStream) begin() {
	c := s.c
	*s = serverStream{c: c, req: s.req, trailers: s.trailers}
	s.trailers.Reset()
	s.raw.reset(bodyRaw, 0)
}

// Header returns the request headers. Names are lower case; the request line
// and Host are presented as :method, :scheme ("https" on a conn with a
// ConnectionState method), :authority (Host, or the authority of an
// absolute-form or CONNECT target) and :path (origin-form, or the path and
// query of an absolute-form target, or "*"); CONNECT has neither :scheme nor
// :path, as in HTTP/2. Transfer-Encoding is decoded and removed, and
// Content-Length appears once, however it came. Everything else is as
// received, hop-by-hop fields included: removing them is the connection
// manager's business.
func (s *serverStream) Header() *http.Header { return &s.req }

// EndedWithHeader reports whether the request has no body: neither
// Content-Length (other than 0) nor Transfer-Encoding.
func (s *serverStream) EndedWithHeader() bool { return s.noBody }

// Read reads the request body, decoded. The first Read of a body sent with
// "expect: 100-continue" sends "100 Continue" unless the response has begun.
// After a 101 response to an upgrade, or a 2xx response to CONNECT, Read
// returns the raw bytes the client sends, until it closes (io.EOF).
func (s *serverStream) Read(p []byte) (int, error) {
	c := s.c
	if s.refused != nil {
		return 0, s.refused
	}
	if s.tunnel.Load() {
		return c.rd.readBody(&s.raw, p, nil, limits{})
	}
	if s.expectPending {
		s.expectPending = false
		c.sendContinue()
	}
	n, err := c.rd.readBody(&s.body, p, &s.trailers, c.opts.limits())
	s.noteBodyIn()
	if err != nil {
		if err == io.EOF {
			if !s.bodyDone.Load() {
				s.bodyDone.Store(true)
				c.armBackgroundRead()
			}
		} else if e, ok := err.(*Error); ok && s.err == nil {
			s.err = e
			s.bodyFailed.Store(true)
		}
	}
	return n, err
}

// RequestReceived reports whether the whole request has been received, Envoy's
// "remote complete" for a downstream request: it had no body, its body's last
// byte was read (Read may not have returned io.EOF yet), or the rest of its
// Content-Length body is in the codec's buffer already (the codec reads a body
// only as Read asks for it: bytes still in the socket count as not received).
// It is false for a refused request (see RefusalHandler). It may be called
// from any goroutine, concurrently with Read.
func (s *serverStream) RequestReceived() bool { return s.bodyIn.Load() }

// noteBodyIn records, on the goroutine that reads the body, whether it is all
// received (see RequestReceived).
func (s *serverStream) noteBodyIn() {
	if s.bodyIn.Load() {
		return
	}
	bd := &s.body
	if bd.done || bd.mode == bodyLength && bd.err == nil && int64(s.c.rd.buffered()) >= bd.n {
		s.bodyIn.Store(true)
	}
}

// Trailers returns the request trailers once Read has returned io.EOF.
func (s *serverStream) Trailers() *http.Header { return &s.trailers }

// WriteHeader sends the response head, from h's :status and fields, in
// order, with lower-case names. The codec writes the framing and persistence
// fields itself (any content-length, transfer-encoding, connection and
// keep-alive fields of h are used, not copied):
//
//   - content-length if h has one (for a response that may have one);
//     "content-length: 0" if end is true and the response may have a body;
//     otherwise "transfer-encoding: chunked" for HTTP/1.1, and for HTTP/1.0
//     a body delimited by closing the connection. Responses to HEAD and
//     1xx, 204 and 304 responses have no body.
//   - "connection: close" when the request asked for it (or is HTTP/1.0
//     without keep-alive), h does, the connection is draining, the body must
//     be delimited by the close, the request body was refused, or a body sent
//     with "expect: 100-continue" may be on its way unread; then the
//     connection closes after the response. "connection: keep-alive" for a
//     persistent HTTP/1.0 connection.
//
// A 1xx status other than 101 is sent at once as an informational response
// (not to HTTP/1.0 clients; 100 only once and only if the client expects it);
// WriteHeader is then called again for the final one. 101 is allowed only in
// answer to an upgrade request whose body (if any) was read to its end;
// after it, and after a 2xx to CONNECT, the stream is a raw tunnel: Write
// sends raw bytes, Read returns raw bytes, End half-closes the connection
// (CloseWrite, if the conn has it), and the connection closes when the
// handler returns.
//
// A head with a Content-Length small enough to go with its body in one
// system call is held until the first Write (or End); any other head is sent
// at once.
func (s *serverStream) WriteHeader(h *http.Header, end bool) error {
	c := s.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case s.reset.Load() || s.ended:
		return ErrStreamDone
	case s.final:
		return ErrHeaderSent
	}
	status := parseStatus(h.Value(http.Status))
	if status == 0 || !validFields(h) {
		return ErrInvalidHeader
	}
	cl := int64(-1)
	var conn connTokens
	bad := false
	h.Range(func(name, value string) bool {
		switch name {
		case "content-length":
			n := parseDecimalString(value)
			bad = bad || n < 0 || cl >= 0 && n != cl
			cl = n
		case "connection":
			conn.addString(value)
		}
		return true
	})
	if bad {
		return ErrInvalidHeader
	}
	w := &c.wr
	w.get()
	if status < 200 {
		return s.writeInterim(h, status, end)
	}

	tunnel := s.isConnect && status < 300
	mode := bodyNone
	closeAfter := s.reqClose || conn.close || c.draining.Load() || s.bodyFailed.Load() ||
		s.expect && !s.continueSent && !s.bodyDone.Load()
	switch {
	case tunnel:
		mode, cl, closeAfter = bodyRaw, -1, true
	case status == 204:
		cl = -1
	case s.isHead || status == 304:
	case cl >= 0:
		mode = bodyLength
	case end:
		cl = 0
	case s.minor == 1:
		mode = bodyChunked
	default:
		mode, closeAfter = bodyUntilClose, true
	}

	if s.minor == 0 && c.opts.AcceptHTTP10 {
		w.str("HTTP/1.0 ")
	} else {
		w.str("HTTP/1.1 ")
	}
	w.uint(uint64(status), 10)
	w.str(" ")
	w.str(reasonPhrase(status))
	w.str("\r\n")
	writeFields(w, h, skipFraming)
	if cl >= 0 {
		w.str("content-length: ")
		w.uint(uint64(cl), 10)
		w.str("\r\n")
	}
	if mode == bodyChunked {
		w.str("transfer-encoding: chunked\r\n")
	}
	switch {
	case closeAfter && !tunnel:
		w.str("connection: close\r\n")
	case s.minor == 0:
		w.str("connection: keep-alive\r\n")
	}
	w.str("\r\n")

	s.final, s.closeAfter, s.discard = true, closeAfter, s.isHead && !tunnel
	w.setBody(mode, cl)
	if tunnel {
		s.tunnel.Store(true)
	}
	switch {
	case end:
		return s.end(nil)
	case mode == bodyLength && cl <= int64(w.avail()):
		s.headHeld = true
		return w.err
	}
	return s.flush()
}

// writeInterim sends an informational (1xx) response, or the 101 that turns
// the stream into a tunnel.
func (s *serverStream) writeInterim(h *http.Header, status int, end bool) error {
	c := s.c
	w := &c.wr
	switch {
	case status == 101:
		if !s.upgrade || !s.bodyDone.Load() {
			return ErrInvalidHeader
		}
	case end:
		return ErrInvalidHeader
	case s.minor == 0:
		return nil // HTTP/1.0 has no 1xx
	case status == 100:
		if s.continueSent || !s.expect {
			return nil
		}
		s.continueSent = true
	}
	w.str("HTTP/1.1 ")
	w.uint(uint64(status), 10)
	w.str(" ")
	w.str(reasonPhrase(status))
	w.str("\r\n")
	writeFields(w, h, skipFraming)
	if status == 101 {
		w.str("connection: upgrade\r\n\r\n")
		s.final, s.closeAfter = true, true
		w.setBody(bodyRaw, 0)
		s.tunnel.Store(true)
		if end {
			return s.end(nil)
		}
		return s.flush()
	}
	w.str("\r\n")
	return s.flush()
}

func (s *serverStream) flush() error {
	s.headHeld = false
	err := s.c.wr.flush()
	if err != nil {
		s.closeAfter = true
	}
	return err
}

// Write sends response body bytes (framed as WriteHeader said) and flushes
// them. Write(nil) sends a held head. Bytes for a response to HEAD are
// discarded.
func (s *serverStream) Write(p []byte) (int, error) {
	c := s.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case s.reset.Load() || s.ended:
		return 0, ErrStreamDone
	case !s.final:
		return 0, ErrNoHeader
	case s.discard:
		return len(p), s.flush()
	}
	s.headHeld = false
	n, err := c.wr.body(p)
	if err != nil && err != ErrBodyNotAllowed {
		s.closeAfter = true
	}
	return n, err
}

// End ends the response.
func (s *serverStream) End() error { return s.EndWithTrailers(nil) }

// EndWithTrailers ends the response with trailers, which are sent if the
// body is chunked and Options.EnableTrailers is set, and dropped otherwise
// (HTTP/1.1 has nowhere else to put them; Envoy drops them unless
// enable_trailers).
func (s *serverStream) EndWithTrailers(t *http.Header) error {
	c := s.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case s.reset.Load() || s.ended:
		return ErrStreamDone
	case !s.final:
		return ErrNoHeader
	case t != nil && !validFields(t):
		return ErrInvalidHeader
	}
	if !c.opts.EnableTrailers {
		t = nil
	}
	return s.end(t)
}

func (s *serverStream) end(t *http.Header) error {
	c := s.c
	s.ended, s.headHeld = true, false
	if s.tunnel.Load() {
		err := c.wr.flush()
		if cw, ok := c.conn.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
		return err
	}
	if s.discard {
		return s.flush()
	}
	err := c.wr.end(t)
	if err != nil {
		s.closeAfter = true
	}
	return err
}

// Reset abandons the stream: the connection is closed at once, after
// whatever was already written (a held head is dropped), and the context is
// canceled. code is not sent: HTTP/1.1 has no way to.
func (s *serverStream) Reset(code http.ResetCode) {
	if s.reset.Swap(true) {
		return
	}
	s.c.cancel(errStreamReset)
	s.c.conn.Close()
}

// Context is canceled when the connection closes: the client went away (a
// read while the handler works sees it; see ServerConn), the stream was
// reset, or Serve's context was canceled. It is the same context for every
// stream of the connection: it is not canceled when a stream ends normally.
func (s *serverStream) Context() context.Context { return s.c.ctx }

// Protocol returns "HTTP/1.0" or "HTTP/1.1", the request's version.
func (s *serverStream) Protocol() string { return s.proto }

var _ http.ServerCodec = (*ServerConn)(nil)
var _ http.ServerStream = (*serverStream)(nil)
