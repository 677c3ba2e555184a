package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

var (
	errEnded        = errors.New("h2: stream already ended")
	errNoHeader     = errors.New("h2: Write or End before WriteHeader")
	errFinalSent    = errors.New("h2: WriteHeader after the final header")
	errNoStatus     = errors.New("h2: response header without a valid :status")
	errStatus101    = errors.New("h2: 101 Switching Protocols does not exist in HTTP/2")
	errInfoEnd      = errors.New("h2: an informational (1xx) response cannot end the stream")
	errBadRequest   = errors.New("h2: request header without :method, or without :scheme and :path")
	errHeaderTooBig = errors.New("h2: response header list larger than MaxHeaderListSize")
)

// stream is one HTTP/2 stream. The same type serves as http.ServerStream (a
// request received, the response sent) and http.ClientStream (a request sent,
// the response received): the protocol is symmetric. Its fields are guarded
// by the connection's mutex.
type stream struct {
	c    *conn
	id   uint32 // 0 on the client until the writer sends the HEADERS
	cond sync.Cond

	// Receiving.
	hdr, trl      http.Header // the header received (request or response) and trailers
	gotHeader     bool        // client: the final response header arrived
	recv          recvBuf
	recvWindow    int64 // what the peer may still send
	recvUnacked   int64 // read, not yet given back with WINDOW_UPDATE
	contentLength int64 // -1: none
	recvBytes     int64
	remoteDone    bool  // END_STREAM received, or the stream ended otherwise
	headerEnded   bool  // the header came with END_STREAM: no body, no trailers
	err           error // why the stream ended abnormally
	werr          error // client: the server stopped our request (RST_STREAM NO_ERROR after its response)
	stopRead      error // Reset(NO_ERROR) after End: no more reading, RST_STREAM once the end is written
	isHead        bool

	// Sending.
	shdr, strl     http.Header // header and trailers waiting for the writer
	hdrPending     bool
	hdrEnd         bool
	hdrSent        bool // the first HEADERS went out
	finalSubmitted bool // the final header (request, or non-1xx response) was given
	trlPending     bool
	endPending     bool
	ended          bool // no more sending: End, EndWithTrailers or WriteHeader(end)
	sbuf           *bufpool.Buffer
	soff, slen     int
	sendWindow     int64
	localDone      bool // END_STREAM written, or the stream ended otherwise
	flowBlocked    bool // data waits for a stream WINDOW_UPDATE

	// Bookkeeping.
	queued, connBlocked, writing, inMap, counted, released bool

	// held: the user has it (the handler runs; the client's caller has not
	// called Close).
	held   bool
	ctx    context.Context
	cancel context.CancelFunc
	onGone func() // NotifyGone's (server side)
	// goneRuns counts the calls of onGone under way, which NotifyGone(nil)
	// waits for.
	goneRuns sync.WaitGroup

	// Client side.
	stopCtx func() bool
	gen     uint64 // counts the stream's lives, for callbacks that outlive one
}

// getStream returns a stream from the pool, ready for c.
func (c *conn) getStream() *stream {
	s, _ := c.pool.Get().(*stream)
	if s == nil {
		s = new(stream)
	}
	s.init(c)
	return s
}

// init prepares a new or recycled stream.
func (s *stream) init(c *conn) {
	s.c = c
	s.released = false
	s.cond.L = &c.mu
	s.contentLength = -1
	s.recvWindow = int64(c.cfg.streamWindow)
}

// recycle clears s for reuse, keeping the memory of its headers.
func (s *stream) recycle() {
	hdr, trl, shdr, strl, chunks := s.hdr, s.trl, s.shdr, s.strl, s.recv.chunks
	hdr.Reset()
	trl.Reset()
	shdr.Reset()
	strl.Reset()
	*s = stream{hdr: hdr, trl: trl, shdr: shdr, strl: strl, released: true, gen: s.gen + 1}
	s.recv.chunks = chunks[:0]
}

// hasSendWork reports whether the writer has something to write for s.
func (s *stream) hasSendWork() bool {
	return s.err == nil && !s.localDone && (s.hdrPending || s.slen > 0 || s.trlPending || s.endPending)
}

// discardBody reports whether received data has no reader: a server stream
// whose handler returned (or that never had one), a client stream closed.
func (s *stream) discardBody() bool {
	return !s.held || s.stopRead != nil
}

// kick queues s for the writer unless its data waits for a window.
func (s *stream) kick() {
	if s.slen > 0 && !s.hdrPending && (s.flowBlocked || s.connBlocked) {
		return
	}
	s.c.queueStream(s)
}

// sendable reports why s cannot send any more, or nil.
func (s *stream) sendable() error {
	switch {
	case s.err != nil:
		return s.err
	case s.werr != nil:
		return s.werr
	case s.c.closed:
		return s.c.err
	case s.ended:
		return errEnded
	}
	return nil
}

// Header returns the request header (server side).
func (s *stream) Header() *http.Header { return &s.hdr }

// Trailers returns the trailers received, valid once Read returned io.EOF.
func (s *stream) Trailers() *http.Header { return &s.trl }

// EndedWithHeader reports whether the header received (the request's, or after
// ReadHeader the response's) ended the stream: the message has no body and no
// trailers. A proxy passes it on as WriteHeader's end, which keeps, for one,
// gRPC's trailers-only responses intact.
func (s *stream) EndedWithHeader() bool {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.headerEnded
}

// Protocol is "HTTP/2".
func (s *stream) Protocol() string { return "HTTP/2" }

// Context is canceled when the stream is reset, the connection ends, or the
// handler returns.
func (s *stream) Context() context.Context {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.ctx == nil {
		parent := c.streamsCtx
		if parent == nil {
			parent = context.Background()
		}
		s.ctx, s.cancel = context.WithCancel(parent)
		if s.err != nil || c.closed || !s.held {
			s.cancel()
		}
	}
	return s.ctx
}

// NotifyGone implements http.GoneNotifier: f runs when the stream fails (the
// client reset it, the connection ended) while the handler holds it.
// NotifyGone(nil) returns once a call of f already started has returned.
func (s *stream) NotifyGone(f func()) {
	c := s.c
	c.mu.Lock()
	if f != nil && (s.err != nil || c.closed) {
		s.runGoneLocked(f)
		c.mu.Unlock()
		return
	}
	s.onGone = f
	c.mu.Unlock()
	if f == nil {
		s.goneRuns.Wait()
	}
}

// runGoneLocked runs f on a goroutine of its own (it takes locks of its
// own, and may reset this stream), counted in goneRuns.
func (s *stream) runGoneLocked(f func()) {
	s.goneRuns.Add(1)
	go func() {
		defer s.goneRuns.Done()
		f()
	}()
}

// PeerReset reports whether the peer ended the stream with RST_STREAM, and
// with which code: what Envoy's codec reports as a remote reset (details
// "http2.remote_reset", or "http2.remote_refuse" for REFUSED_STREAM).
func (s *stream) PeerReset() (http.ResetCode, bool) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var se *StreamError
	if errors.As(s.err, &se) && se.Remote {
		return se.Code, true
	}
	return 0, false
}

// Read reads body bytes received; io.EOF once the peer ended the stream.
func (s *stream) Read(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for s.recv.n == 0 {
		switch {
		case s.err != nil:
			return 0, s.err
		case s.stopRead != nil:
			return 0, s.stopRead
		case s.remoteDone:
			return 0, io.EOF
		case len(p) == 0:
			return 0, nil
		}
		s.cond.Wait()
	}
	if s.err != nil {
		return 0, s.err
	}
	n := s.recv.read(c.cfg.bufs, p)
	s.recvUnacked += int64(n)
	if !s.remoteDone && s.recvUnacked >= int64(c.cfg.streamWindow)/2 {
		inc := s.recvUnacked
		s.recvUnacked = 0
		s.recvWindow += inc
		_ = c.queueCtrl(ctrlFrame{kind: ctrlWindowUpdate, id: s.id, val: uint32(inc)})
	}
	c.creditConn(int64(n))
	return n, nil
}

// WriteHeader sends the header: the response's (with :status; informational
// 1xx ones may come first) or the request's (with :method, :scheme, :path and
// :authority, or Host). h is copied: the caller may reuse it at once.
func (s *stream) WriteHeader(h *http.Header, end bool) error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.sendable(); err != nil {
		return err
	}
	if s.finalSubmitted {
		return errFinalSent
	}
	informational := false
	if c.client {
		m, okm := h.Get(http.Method)
		if !okm || m != "CONNECT" && (!h.Has(http.Scheme) || h.Path() == "") {
			return errBadRequest
		}
		s.isHead = m == "HEAD"
	} else {
		st, ok := h.Get(http.Status)
		code, err := strconv.Atoi(st)
		if !ok || err != nil || len(st) != 3 || code < 100 {
			return errNoStatus
		}
		if code == 101 {
			return errStatus101
		}
		informational = code < 200
		if informational && end {
			return errInfoEnd
		}
	}
	for s.hdrPending && s.err == nil && !c.closed {
		s.cond.Wait() // an informational header is still being written
	}
	if err := s.sendable(); err != nil {
		return err
	}
	h.CopyTo(&s.shdr)
	s.hdrPending = true
	s.hdrEnd = end
	if !informational {
		s.finalSubmitted = true
	}
	if end {
		s.ended = true
	}
	c.queueStream(s)
	return nil
}

// Write queues body bytes. It returns once they are copied, blocking while the
// stream's send buffer is full (the peer's flow-control windows decide how
// fast it empties).
func (s *stream) Write(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.sendable(); err != nil {
		return 0, err
	}
	if !s.finalSubmitted {
		return 0, errNoHeader
	}
	n := 0
	for len(p) > 0 {
		if err := s.sendable(); err != nil {
			return n, err
		}
		if s.sbuf == nil {
			s.sbuf = c.cfg.bufs.Get(maxDataChunk)
			s.soff, s.slen = 0, 0
		}
		free := len(s.sbuf.B) - s.soff - s.slen
		if free < len(p) && s.soff > 0 {
			copy(s.sbuf.B, s.sbuf.B[s.soff:s.soff+s.slen])
			s.soff = 0
			free = len(s.sbuf.B) - s.slen
		}
		if free == 0 {
			s.cond.Wait()
			continue
		}
		k := copy(s.sbuf.B[s.soff+s.slen:], p)
		s.slen += k
		p = p[k:]
		n += k
		s.kick()
	}
	return n, nil
}

// End ends the stream after the data written.
func (s *stream) End() error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.ended && s.err == nil {
		return nil
	}
	if err := s.sendable(); err != nil {
		return err
	}
	if !s.finalSubmitted {
		return errNoHeader
	}
	s.ended = true
	s.endPending = true
	s.kick()
	return nil
}

// EndWithTrailers ends the stream with trailers (copied).
func (s *stream) EndWithTrailers(t *http.Header) error {
	if t == nil || t.Len() == 0 {
		return s.End()
	}
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.sendable(); err != nil {
		return err
	}
	if !s.finalSubmitted {
		return errNoHeader
	}
	t.CopyTo(&s.strl)
	s.ended = true
	s.trlPending = true
	s.kick()
	return nil
}

// Reset abandons the stream with RST_STREAM(code). Reset(ResetNoError) after
// End or EndWithTrailers, whose frames may still be queued, is the polite form
// RFC 9113 section 8.1 describes: the message goes out complete, then
// RST_STREAM(NO_ERROR) tells the peer to stop sending its own; reading stops at
// once (Read returns a *StreamError with NO_ERROR).
func (s *stream) Reset(code http.ResetCode) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.err != nil || (s.localDone && s.remoteDone) {
		return
	}
	if code == http.ResetNoError && s.ended && !s.localDone {
		if s.stopRead == nil {
			s.stopRead = &StreamError{StreamID: s.id, Code: http.ResetNoError}
			c.creditConn(int64(s.recv.reset(c.cfg.bufs)))
			s.cond.Broadcast()
		}
		return
	}
	c.resetLocked(s, code, false)
	// No maybeRelease: the stream's user is still running.
}

// Close ends the caller's use of a client stream: an unfinished stream is
// reset (CANCEL), and the stream's memory goes back to the connection's pool.
// No method may be called after it. It is a no-op on a server stream, which
// ends when its handler returns.
func (s *stream) Close() error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.client || !s.held {
		return nil
	}
	s.held = false
	if s.err == nil && !(s.localDone && s.remoteDone) {
		c.resetLocked(s, http.ResetCancel, false)
	}
	c.creditConn(int64(s.recv.reset(c.cfg.bufs)))
	c.maybeRelease(s)
	return nil
}

// ReadHeader waits for the response header (client side). Informational
// responses are skipped.
func (s *stream) ReadHeader() (*http.Header, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for !s.gotHeader && s.err == nil {
		if s.remoteDone {
			return nil, fmt.Errorf("h2: stream %d ended without a response", s.id)
		}
		s.cond.Wait()
	}
	if !s.gotHeader {
		return nil, s.err
	}
	return &s.hdr, nil
}

// recvBuf holds received body bytes in pooled chunks until they are read.
type recvBuf struct {
	chunks []*bufpool.Buffer
	r, w   int // read offset in chunks[0], write offset in the last chunk
	n      int
}

func (b *recvBuf) write(pool *bufpool.Pool, p []byte) {
	for len(p) > 0 {
		if len(b.chunks) == 0 || b.w == len(b.chunks[len(b.chunks)-1].B) {
			b.chunks = append(b.chunks, pool.Get(bufpool.Medium))
			b.w = 0
		}
		k := copy(b.chunks[len(b.chunks)-1].B[b.w:], p)
		b.w += k
		b.n += k
		p = p[k:]
	}
}

func (b *recvBuf) read(pool *bufpool.Pool, p []byte) int {
	n := 0
	for len(p) > 0 && b.n > 0 {
		first := b.chunks[0]
		end := len(first.B)
		if len(b.chunks) == 1 {
			end = b.w
		}
		k := copy(p, first.B[b.r:end])
		b.r += k
		b.n -= k
		n += k
		p = p[k:]
		if b.r == end {
			pool.Put(first)
			copy(b.chunks, b.chunks[1:])
			b.chunks[len(b.chunks)-1] = nil
			b.chunks = b.chunks[:len(b.chunks)-1]
			b.r = 0
			if len(b.chunks) == 0 {
				b.w = 0
			}
		}
	}
	return n
}

// reset drops what is buffered and reports how many bytes that was.
func (b *recvBuf) reset(pool *bufpool.Pool) int {
	n := b.n
	for i, c := range b.chunks {
		pool.Put(c)
		b.chunks[i] = nil
	}
	b.chunks = b.chunks[:0]
	b.r, b.w, b.n = 0, 0, 0
	return n
}
