package h2

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

// ClientPreface is what an HTTP/2 client sends first (RFC 9113 section 3.4).
// A listener that serves HTTP/1.1 and h2c with prior knowledge on one port
// tells them apart by it.
const ClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

const (
	frameHeaderLen   = 9
	maxDataChunk     = bufpool.Medium // the largest DATA payload written at once
	readBufSize      = 16 << 10
	writeBufSize     = 32 << 10
	maxCtrlQueue     = 1000 // pending outbound control frames (Envoy's max_outbound_control_frames)
	maxEmptyFrames   = 100  // consecutive empty DATA/HEADERS frames before ENHANCE_YOUR_CALM
	lingerTimeout    = time.Second
	stopWriteTimeout = time.Second
	recentResets     = 64 // streams this end reset whose late frames are ignored
	internMaxField   = 256
	internMaxCount   = 512
	maxEncoderTable  = 4096 // we never keep a larger HPACK encoder table
	assumedMaxConc   = 100  // the peer's max concurrent streams until its SETTINGS arrive
)

var drainPingData = [8]byte{'s', 'k', 'i', 'f', 'f', 'g', 'o', 'a'}

type ctrlKind uint8

const (
	ctrlSettingsAck ctrlKind = iota
	ctrlPing
	ctrlPingAck
	ctrlWindowUpdate
	ctrlRST
	ctrlGoAway
	ctrlTableSize // not a frame: apply the peer's SETTINGS_HEADER_TABLE_SIZE to the encoder
	ctrlMaxFrame  // not a frame: the peer's SETTINGS_MAX_FRAME_SIZE
)

// ctrlFrame is a control frame waiting for the writer. Control frames go out
// before stream frames, in the order they were queued.
type ctrlFrame struct {
	kind  ctrlKind
	id    uint32 // stream id; GOAWAY: the last stream id; settings value
	val   uint32 // WINDOW_UPDATE increment; RST_STREAM and GOAWAY code
	data  [8]byte
	debug string // GOAWAY debug data
}

type itemKind uint8

const (
	itemCtrl itemKind = iota
	itemHeaders
	itemData
)

// writeItem is one frame (or header block) the writer took from the queues.
type writeItem struct {
	kind     itemKind
	ctrl     ctrlFrame
	s        *stream
	id       uint32
	end      bool
	trailers bool
	n        int // itemData: payload length, in c.wbuf[frameHeaderLen:]
	maxFrame uint32
}

// headerBlock is the header block being received (HEADERS and CONTINUATION).
type headerBlock struct {
	id        uint32
	endStream bool
	selfDep   bool
	size      uint32 // header list size so far (RFC 9113: name + value + 32)
	tooLarge  bool
	frag      int // compressed bytes so far
}

// conn is an HTTP/2 connection, either side. Three kinds of goroutine touch it:
// the reader (which also runs the server's Serve), the writer, and the
// streams' users (handlers, or the router on the client side). Everything
// shared is guarded by mu; the reader and writer each own their half of the
// framer and their HPACK context.
type conn struct {
	nc     net.Conn
	client bool
	cfg    settings
	pool   *sync.Pool // of *stream (the Server's, or the ClientConn's)

	// Reader-owned.
	rerr   errRecorder
	br     *bufio.Reader
	fr     *http2.Framer
	hdec   *hpack.Decoder
	hb     headerBlock
	hdr    http.Header // the header block being decoded
	rbuf   []byte      // HEADERS payloads
	empty  int         // consecutive empty frames
	gotSet bool        // the peer's first SETTINGS arrived

	// Writer-owned.
	bw     *bufio.Writer
	henc   *hpack.Encoder
	hbuf   hpackSink
	wbuf   []byte
	intern map[hfield]hfield
	// The last header block, when encoding it left the encoder's dynamic
	// table as it was: the same fields in the same order encode to the same
	// bytes as long as no other block changes the table (see encodeBlock).
	last      []hfield // its fields, interned
	lastBlock []byte
	lastOK    bool
	fields    []hfield // the fields of the block being encoded
	sameAt    int      // sameField's position in last
	sameFn    func(name, value string) bool
	encodeFn  func(name, value string) bool

	writerDone chan struct{}

	// Server side.
	ctx        context.Context // Serve's
	streamsCtx context.Context // the parent of the streams' contexts (a child of ctx)
	handler    http.Handler
	handlers   sync.WaitGroup
	// The handler goroutines: one that finished its stream waits on work
	// for the next (nil: exit), up to maxIdleWorkers of them, so that a
	// stream costs no goroutine start (nor the growth of a new stack).
	work            chan *stream
	idleWorkers     int         // waiting on work (under mu)
	runningHandlers int         // handlers under way (under mu)
	workClosed      bool        // work is closed: the connection is done (under mu)
	trimTimer       *time.Timer // runs trimIdleWorkers once the connection is quiet (under mu)
	workers         sync.WaitGroup

	mu          sync.Mutex
	wcond       sync.Cond
	streams     map[uint32]*stream
	active      int // streams open or half-closed (client: also not yet sent)
	ctrl        ring[ctrlFrame]
	ready       ring[*stream]
	connBlocked []*stream // streams with data waiting for the connection window
	resets      [recentResets]uint32
	resetsPos   int

	sendWindow  int64 // connection window for what we send
	recvWindow  int64 // connection window the peer may still use
	recvUnacked int64 // read by the streams' users, not yet given back

	peerInitWindow int64
	peerMaxFrame   uint32
	peerMaxStreams uint32
	peerMaxHdrList uint32

	maxPeerID    uint32 // server: the highest stream id the client opened
	nextStreamID uint32 // client: the next stream id

	draining     bool   // server: the first GOAWAY went out
	goAwayFinal  bool   // a GOAWAY with the real last stream id was queued
	goAwayLastID uint32 // its last stream id
	goAwayRecv   *GoAwayError
	wstop        bool          // the writer writes pending control frames, then stops
	stopping     bool          // stopLocked was called
	linger       time.Duration // after the writer stops: how long the reader waits for the peer to close
	stopErr      error         // why the connection is stopping (nil: orderly)
	peerClosed   bool          // the peer closed or reset the socket, unasked (http.PeerGone)
	closed       bool          // torn down: streams failed
	err          error         // what the streams of a closed connection report
	werr         error         // the writer's error
	idleSince    time.Time
	idleTimer    *time.Timer
	drainTimer   *time.Timer

	// Server side, RequestHeadersTimeout (under mu).
	hbTimer    *time.Timer
	hbTimedID  uint32    // the stream whose header block is being timed, 0 if none
	hbDeadline time.Time // when it times out
	hbTimedOut bool      // the open block's stream was reset: drop the block
}

// errRecorder remembers the last error the connection's reader returned, to
// tell I/O errors from the framer's parse errors.
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil {
		e.err = err
	}
	return n, err
}

type hfield struct{ name, value string }

func newConn(nc net.Conn, client bool, cfg settings) *conn {
	c := &conn{
		nc:             nc,
		client:         client,
		cfg:            cfg,
		streams:        make(map[uint32]*stream),
		sendWindow:     MinWindowSize,
		recvWindow:     int64(cfg.connWindow),
		peerInitWindow: MinWindowSize,
		peerMaxFrame:   16384,
		peerMaxStreams: assumedMaxConc,
		nextStreamID:   1,
		writerDone:     make(chan struct{}),
		wbuf:           make([]byte, frameHeaderLen+maxDataChunk),
		intern:         make(map[hfield]hfield),
	}
	c.wcond.L = &c.mu
	c.rerr.r = nc
	c.br = bufio.NewReaderSize(&c.rerr, readBufSize)
	c.bw = bufio.NewWriterSize(nc, writeBufSize)
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(16384)
	c.hdec = hpack.NewDecoder(4096, c.onField)
	// A string over the header list size makes the request too large (431),
	// not a connection error; memory stays bounded by the limit on a header
	// block's compressed size (onHeaderFragment).
	c.hdec.SetMaxStringLength(4*int(cfg.maxHeaderList) + 65536)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.sameFn, c.encodeFn = c.sameField, c.encodeField
	return c
}

// ---------------------------------------------------------------------------
// Queueing (callers hold mu).

// queueCtrl queues a control frame for the writer. It fails when the peer makes
// us queue more than maxCtrlQueue (a PING or SETTINGS flood while not reading).
func (c *conn) queueCtrl(f ctrlFrame) error {
	if c.wstop {
		return nil
	}
	if c.ctrl.len() >= maxCtrlQueue {
		return connErr(ResetEnhanceYourCalm, "too many control frames queued (peer not reading?)")
	}
	c.ctrl.push(f)
	c.wcond.Signal()
	return nil
}

// queueStream puts s on the writer's round robin if it is not there.
func (c *conn) queueStream(s *stream) {
	if s.queued || c.wstop {
		return
	}
	s.queued = true
	c.ready.push(s)
	c.wcond.Signal()
}

// creditConn gives n bytes back to the connection receive window.
func (c *conn) creditConn(n int64) {
	if n <= 0 {
		return
	}
	c.recvUnacked += n
	if c.recvUnacked >= int64(c.cfg.connWindow)/2 {
		inc := c.recvUnacked
		c.recvUnacked = 0
		c.recvWindow += inc
		// A failure here means a control frame flood; the reader notices it
		// on its own next queueCtrl.
		_ = c.queueCtrl(ctrlFrame{kind: ctrlWindowUpdate, val: uint32(inc)})
	}
}

// noteReset remembers a stream this end reset, whose late frames are ignored.
func (c *conn) noteReset(id uint32) {
	c.resets[c.resetsPos] = id
	c.resetsPos = (c.resetsPos + 1) % recentResets
}

func (c *conn) recentlyReset(id uint32) bool {
	for _, r := range c.resets {
		if r == id {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// Stopping.

// stopLocked asks the writer to write what control frames are queued and stop;
// then the reader waits up to linger for the peer to close, and tears down.
func (c *conn) stopLocked(err error, linger time.Duration) {
	if c.wstop {
		return
	}
	c.stopErr = err
	c.linger = linger
	c.stopping = true
	c.wstop = true
	c.wcond.Broadcast()
	// Do not let a peer that stopped reading hold the writer.
	_ = c.nc.SetWriteDeadline(time.Now().Add(stopWriteTimeout))
}

// goAwayLocked queues the final GOAWAY: once if graceful (NO_ERROR), and an
// error one in any case.
func (c *conn) goAwayLocked(code http.ResetCode, debug string) {
	if c.goAwayFinal && code == http.ResetNoError {
		return
	}
	c.goAwayFinal = true
	c.goAwayLastID = c.maxPeerID
	_ = c.queueCtrl(ctrlFrame{kind: ctrlGoAway, id: c.maxPeerID, val: uint32(code), debug: debug})
}

// abort ends the connection at once (ctx canceled, Close): GOAWAY(NO_ERROR)
// and close without waiting for streams.
func (c *conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.wstop {
		return
	}
	c.goAwayLocked(http.ResetNoError, "")
	c.stopLocked(nil, 0)
}

// closeWithError is the reader's reaction to a connection error: GOAWAY with
// the code, flush, wait a little for the peer to close, tear down. It returns
// what Serve reports: ce, or, if the connection was already closing (and the
// GOAWAY cannot go out), why it was.
func (c *conn) closeWithError(ce *ConnError) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.wstop {
		return c.stopErr
	}
	c.goAwayLocked(ce.Code, ce.Reason)
	c.stopLocked(ce, lingerTimeout)
	return ce
}

// afterStop runs in the writer once it has flushed its last frames.
func (c *conn) afterStop() {
	c.mu.Lock()
	linger := c.linger
	c.mu.Unlock()
	if linger > 0 {
		if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(linger))
}

// teardown fails every stream and closes the socket. The reader calls it last.
func (c *conn) teardown(err error) {
	c.mu.Lock()
	if c.stopErr != nil {
		err = c.stopErr
	}
	if c.werr != nil && err == nil {
		err = c.werr
	}
	c.closed = true
	c.wstop = true
	c.err = errClosed(err)
	if c.client && c.goAwayRecv != nil {
		g := *c.goAwayRecv
		c.err = &g
	}
	for _, s := range c.streams {
		c.failStreamLocked(s, c.err)
		c.maybeRelease(s)
	}
	c.ready.each(func(s *stream) {
		if !s.inMap {
			c.failStreamLocked(s, c.err)
		}
	})
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if c.drainTimer != nil {
		c.drainTimer.Stop()
	}
	if c.hbTimer != nil {
		c.hbTimer.Stop()
	}
	c.wcond.Broadcast()
	c.mu.Unlock()
	_ = c.nc.Close()
	<-c.writerDone
}

// orderlyReadError reports whether err is how a connection normally ends.
func orderlyReadError(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err) ||
		errors.Is(err, io.ErrClosedPipe) // net.Pipe's EPIPE
}

// notProcessed marks the error of a client stream whose request never left.
func notProcessed(err error) error { return fmt.Errorf("%w: %w", ErrNotProcessed, err) }

func isConnReset(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) {
		var se *os.SyscallError
		if errors.As(op.Err, &se) {
			return se.Syscall == "read" || se.Syscall == "write"
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// The reader.

// readLoop reads and processes frames until the connection ends. It returns
// nil for an orderly end, else the error.
func (c *conn) readLoop() error {
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err == nil && fh.Type == http2.FrameHeaders {
			c.armHeadersTimeout(fh)
		}
		var f http2.Frame
		if err == nil && fh.Type == http2.FrameHeaders && c.gotSet {
			// HEADERS frames are parsed here rather than by the framer,
			// which allocates one per frame.
			if err = c.readHeaders(fh); err == nil {
				continue
			}
			if c.rerr.err != nil {
				return c.ioEnd(err)
			}
			var ce *ConnError
			if errors.As(err, &ce) {
				return c.drainAfterError(ce)
			}
			return err
		}
		if err == nil {
			f, err = c.fr.ReadFrameForHeader(fh)
		}
		if err != nil {
			if c.rerr.err != nil {
				// The socket failed (or the stop deadline passed): the
				// framer's parse errors come only after a complete read.
				return c.ioEnd(err)
			}
			if ce := c.readError(fh, err); ce != nil {
				return c.drainAfterError(ce)
			}
			continue
		}
		if err := c.process(f); err != nil {
			var ce *ConnError
			if errors.As(err, &ce) {
				return c.drainAfterError(ce)
			}
			return err
		}
	}
}

// ioEnd is the end of a read loop on a socket error or the stop deadline.
func (c *conn) ioEnd(err error) error {
	c.mu.Lock()
	stopping, stopErr, werr := c.stopping, c.stopErr, c.werr
	if !stopping && (http.PeerGone(c.rerr.err) || http.PeerGone(werr)) {
		c.peerClosed = true
	}
	c.mu.Unlock()
	if stopping {
		return stopErr
	}
	if werr != nil && !orderlyReadError(werr) {
		return werr
	}
	if orderlyReadError(err) {
		return nil
	}
	return err
}

// drainAfterError sends GOAWAY for a connection error, waits for the writer
// to write it and for the peer to close (at most lingerTimeout), discarding
// what it sends.
func (c *conn) drainAfterError(ce *ConnError) error {
	err := c.closeWithError(ce)
	<-c.writerDone
	_, _ = io.Copy(io.Discard, c.br)
	return err
}

// readError turns a framing error into a connection error to send, or nil if
// it was a stream error, handled.
func (c *conn) readError(fh http2.FrameHeader, err error) *ConnError {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.Is(err, http2.ErrFrameTooLarge):
		return connErr(ResetFrameSizeError, "%v frame larger than SETTINGS_MAX_FRAME_SIZE", fh.Type)
	case errors.As(err, &se):
		if fh.Type != http2.FrameWindowUpdate {
			// A HEADERS frame with too much padding: its header block is
			// lost, so HPACK is out of sync.
			return connErr(http.ResetProtocolError, "invalid %v frame", fh.Type)
		}
		// A WINDOW_UPDATE with a zero increment on a stream.
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.streamErrorLocked(se.StreamID, http.ResetCode(se.Code))
	case errors.As(err, &ce):
		reason := fh.Type.String() + " frame"
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return connErr(http.ResetCode(ce), "%s", reason)
	default:
		// The framer's other parse errors (a frame too short for its
		// fields, and the like).
		return connErr(http.ResetProtocolError, "%v frame: %v", fh.Type, err)
	}
}

// streamErrorLocked reacts to a stream error on id: resets the stream if it is
// open, sends RST_STREAM, or (idle stream) returns a connection error.
func (c *conn) streamErrorLocked(id uint32, code http.ResetCode) *ConnError {
	if s := c.streams[id]; s != nil {
		c.resetLocked(s, code, false)
		c.maybeRelease(s)
		return nil
	}
	if c.isIdle(id) {
		return connErr(http.ResetProtocolError, "frame on idle stream %d", id)
	}
	if err := c.queueCtrl(ctrlFrame{kind: ctrlRST, id: id, val: uint32(code)}); err != nil {
		return err.(*ConnError)
	}
	c.noteReset(id)
	return nil
}

// isIdle reports whether stream id is idle: never opened by either side.
func (c *conn) isIdle(id uint32) bool {
	if c.client {
		return id%2 == 0 || id >= c.nextStreamID
	}
	return id%2 == 0 || id > c.maxPeerID
}

// ignored reports whether frames on a stream id the peer opened after our
// final GOAWAY are to be ignored (RFC 9113 section 6.8).
func (c *conn) ignored(id uint32) bool {
	return !c.client && c.goAwayFinal && id > c.goAwayLastID && id%2 == 1
}

func (c *conn) process(f http2.Frame) error {
	fh := f.Header()
	if !c.gotSet {
		// RFC 9113 section 3.4: the preface's SETTINGS comes first.
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return connErr(http.ResetProtocolError, "first frame is %v, not SETTINGS", fh.Type)
		}
		c.gotSet = true
	}
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.HeadersFrame: // (only before the first SETTINGS, which fails above)
		return c.startHeaderBlock(f.StreamID, f.StreamEnded(), f.HasPriority() && f.Priority.StreamDep == f.StreamID,
			f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.ContinuationFrame:
		return c.onHeaderFragment(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.PingFrame:
		return c.onPing(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.onRSTStream(f)
	case *http2.GoAwayFrame:
		return c.onGoAway(f)
	case *http2.PriorityFrame:
		// Priorities are parsed and ignored, but a stream cannot depend on
		// itself (a stream error, even on an idle stream, as x/net and
		// nghttp2 have it).
		if f.StreamID == f.StreamDep {
			c.mu.Lock()
			defer c.mu.Unlock()
			if s := c.streams[f.StreamID]; s != nil {
				c.resetLocked(s, http.ResetProtocolError, false)
				c.maybeRelease(s)
				return nil
			}
			c.noteReset(f.StreamID)
			return c.queueCtrl(ctrlFrame{kind: ctrlRST, id: f.StreamID, val: uint32(http.ResetProtocolError)})
		}
		return nil
	case *http2.PushPromiseFrame:
		return connErr(http.ResetProtocolError, "PUSH_PROMISE (push is disabled)")
	default:
		return nil // unknown frame types are ignored (RFC 9113 section 4.1)
	}
}

func (c *conn) countEmpty() error {
	c.empty++
	if c.empty > maxEmptyFrames {
		return connErr(ResetEnhanceYourCalm, "too many empty frames")
	}
	return nil
}

func (c *conn) onData(f *http2.DataFrame) error {
	data := f.Data()
	flen := int64(f.Length)
	if len(data) == 0 && !f.StreamEnded() {
		if err := c.countEmpty(); err != nil {
			return err
		}
	} else {
		c.empty = 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if flen > c.recvWindow {
		return connErr(ResetFlowControlError, "DATA beyond the connection window")
	}
	c.recvWindow -= flen
	id := f.StreamID
	s := c.streams[id]
	if s == nil {
		c.creditConn(flen)
		switch {
		case c.ignored(id) || c.recentlyReset(id):
			return nil
		case c.isIdle(id):
			return connErr(http.ResetProtocolError, "DATA on idle stream %d", id)
		}
		if ce := c.streamErrorLocked(id, ResetStreamClosed); ce != nil {
			return ce
		}
		return nil
	}
	return c.streamDataLocked(s, f, flen, data)
}

// streamDataLocked takes the DATA frame f for s. (A function of its own, so
// that its defer and onData's are open-coded: the compiler falls back to the
// runtime's defer records when a function's defers times returns pass 15.)
func (c *conn) streamDataLocked(s *stream, f *http2.DataFrame, flen int64, data []byte) error {
	defer c.maybeRelease(s)
	if s.remoteDone {
		c.creditConn(flen)
		c.resetLocked(s, ResetStreamClosed, false)
		return nil
	}
	if flen > s.recvWindow {
		c.creditConn(flen)
		c.resetLocked(s, ResetFlowControlError, false)
		return nil
	}
	s.recvWindow -= flen
	// Padding is consumed here and now.
	c.creditConn(flen - int64(len(data)))
	s.recvBytes += int64(len(data))
	if s.contentLength >= 0 && (s.recvBytes > s.contentLength || f.StreamEnded() && s.recvBytes != s.contentLength) {
		c.creditConn(int64(len(data)))
		if !c.cfg.streamErrors {
			return connErr(http.ResetProtocolError, "DATA contradicts content-length on stream %d", s.id)
		}
		c.resetLocked(s, http.ResetProtocolError, false)
		return nil
	}
	if s.discardBody() {
		c.creditConn(int64(len(data)))
	} else if len(data) > 0 {
		s.recv.write(c.cfg.bufs, data)
	}
	s.cond.Broadcast()
	if f.StreamEnded() {
		c.remoteEndLocked(s)
	}
	return nil
}

// onField is the HPACK decoder's emit function.
func (c *conn) onField(f hpack.HeaderField) {
	c.hb.size += uint32(len(f.Name) + len(f.Value) + 32)
	if c.hb.size > c.cfg.maxHeaderList {
		c.hb.tooLarge = true
		c.hdec.SetEmitEnabled(false)
		return
	}
	c.hdr.Add(f.Name, f.Value)
}

// readHeaders reads and parses a HEADERS frame's payload (RFC 9113 section
// 6.2) and starts its header block.
func (c *conn) readHeaders(fh http2.FrameHeader) error {
	n := int(fh.Length)
	if cap(c.rbuf) < n {
		c.rbuf = make([]byte, n)
	}
	p := c.rbuf[:n]
	if _, err := io.ReadFull(c.br, p); err != nil {
		return err
	}
	if fh.StreamID == 0 {
		return connErr(http.ResetProtocolError, "HEADERS on stream 0")
	}
	pad := 0
	if fh.Flags.Has(http2.FlagHeadersPadded) {
		if len(p) < 1 {
			return connErr(ResetFrameSizeError, "HEADERS too short for its padding length")
		}
		pad, p = int(p[0]), p[1:]
	}
	selfDep := false
	if fh.Flags.Has(http2.FlagHeadersPriority) {
		if len(p) < 5 {
			return connErr(ResetFrameSizeError, "HEADERS too short for its priority")
		}
		selfDep = binary.BigEndian.Uint32(p)&0x7fffffff == fh.StreamID
		p = p[5:]
	}
	if pad > len(p) {
		return connErr(http.ResetProtocolError, "HEADERS padding longer than the frame")
	}
	end, endHeaders := fh.Flags.Has(http2.FlagHeadersEndStream), fh.Flags.Has(http2.FlagHeadersEndHeaders)
	frag := p[:len(p)-pad]
	if len(frag) == 0 && !end && endHeaders {
		if err := c.countEmpty(); err != nil {
			return err
		}
	}
	return c.startHeaderBlock(fh.StreamID, end, selfDep, frag, endHeaders)
}

func (c *conn) startHeaderBlock(id uint32, endStream, selfDep bool, frag []byte, endHeaders bool) error {
	c.hb = headerBlock{id: id, endStream: endStream, selfDep: selfDep}
	c.hdr.Reset()
	c.hdec.SetEmitEnabled(true)
	return c.onHeaderFragment(frag, endHeaders)
}

func (c *conn) onHeaderFragment(frag []byte, ended bool) error {
	c.hb.frag += len(frag)
	if c.hb.frag > 2*int(c.cfg.maxHeaderList)+16384 {
		return connErr(ResetEnhanceYourCalm, "header block too large")
	}
	if _, err := c.hdec.Write(frag); err != nil {
		return connErr(ResetCompressionError, "HPACK: %v", err)
	}
	if !ended {
		return nil
	}
	c.disarmHeadersTimeout()
	if err := c.hdec.Close(); err != nil {
		return connErr(ResetCompressionError, "HPACK: %v", err)
	}
	if c.client {
		return c.clientHeaders()
	}
	return c.serverHeaders()
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connErr(http.ResetCode(ce), "invalid setting %v", s)
			}
			return connErr(http.ResetProtocolError, "invalid setting %v", s)
		}
		switch s.ID {
		case http2.SettingHeaderTableSize:
			return c.queueCtrl(ctrlFrame{kind: ctrlTableSize, id: min(s.Val, maxEncoderTable)})
		case http2.SettingEnablePush:
			if c.client && s.Val != 0 {
				return connErr(http.ResetProtocolError, "server set SETTINGS_ENABLE_PUSH")
			}
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWindow
			c.peerInitWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > MaxWindowSize {
					return connErr(ResetFlowControlError, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window")
				}
				if delta > 0 && st.sendWindow > 0 && st.flowBlocked {
					st.flowBlocked = false
					c.queueStream(st)
				}
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHdrList = s.Val
		}
		return nil
	})
	if err != nil {
		var ce *ConnError
		if errors.As(err, &ce) {
			return ce
		}
		return connErr(http.ResetProtocolError, "%v", err)
	}
	return c.queueCtrl(ctrlFrame{kind: ctrlSettingsAck})
}

func (c *conn) onPing(f *http2.PingFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.IsAck() {
		if f.Data == drainPingData && c.draining {
			c.finishDrainLocked()
		}
		return nil
	}
	return c.queueCtrl(ctrlFrame{kind: ctrlPingAck, data: f.Data})
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > MaxWindowSize {
			return connErr(ResetFlowControlError, "connection window above 2^31-1")
		}
		for i, s := range c.connBlocked {
			s.connBlocked = false
			c.queueStream(s)
			c.maybeRelease(s)
			c.connBlocked[i] = nil
		}
		c.connBlocked = c.connBlocked[:0]
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if c.isIdle(f.StreamID) && !c.ignored(f.StreamID) {
			return connErr(http.ResetProtocolError, "WINDOW_UPDATE on idle stream %d", f.StreamID)
		}
		return nil
	}
	s.sendWindow += int64(f.Increment)
	if s.sendWindow > MaxWindowSize {
		c.resetLocked(s, ResetFlowControlError, false)
		c.maybeRelease(s)
		return nil
	}
	if s.flowBlocked && s.sendWindow > 0 {
		s.flowBlocked = false
		c.queueStream(s)
	}
	return nil
}

func (c *conn) onRSTStream(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if c.isIdle(f.StreamID) && !c.ignored(f.StreamID) {
			return connErr(http.ResetProtocolError, "RST_STREAM on idle stream %d", f.StreamID)
		}
		return nil
	}
	if c.client && f.ErrCode == http2.ErrCodeNo && s.remoteDone && s.err == nil {
		// The response is complete; the server wants no more of the
		// request (RFC 9113 section 8.1). The response stays readable.
		s.werr = &StreamError{StreamID: s.id, Code: http.ResetNoError, Remote: true}
		s.localDone = true
		c.freeSendBuf(s)
		s.cond.Broadcast()
		c.maybeCloseLocked(s)
		return nil
	}
	c.resetLocked(s, http.ResetCode(f.ErrCode), true)
	c.maybeRelease(s)
	return nil
}

func (c *conn) onGoAway(f *http2.GoAwayFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.client {
		// The client will open no more streams; those it has go on. Close
		// once they are done.
		c.goAwayRecv = &GoAwayError{LastStreamID: f.LastStreamID, Code: http.ResetCode(f.ErrCode)}
		if c.active == 0 {
			c.goAwayLocked(http.ResetNoError, "")
			c.stopLocked(nil, lingerTimeout)
		}
		return nil
	}
	return c.clientGoAwayLocked(f)
}

// ---------------------------------------------------------------------------
// Stream state changes (callers hold mu).

// remoteEndLocked records END_STREAM from the peer.
func (c *conn) remoteEndLocked(s *stream) {
	s.remoteDone = true
	s.cond.Broadcast()
	c.maybeCloseLocked(s)
}

// localEndLocked records that END_STREAM went out.
func (c *conn) localEndLocked(s *stream) {
	s.localDone = true
	c.freeSendBuf(s)
	s.cond.Broadcast()
	if !s.remoteDone && (!s.held || s.stopRead != nil) {
		// The response is complete and nobody reads the rest of the
		// request: ask the client to stop sending it (RFC 9113 section 8.1).
		c.resetLocked(s, http.ResetNoError, false)
		return
	}
	c.maybeCloseLocked(s)
}

// maybeCloseLocked removes a stream closed both ways from the connection.
func (c *conn) maybeCloseLocked(s *stream) {
	if !s.remoteDone || !s.localDone {
		return
	}
	c.removeLocked(s)
}

// removeLocked takes s out of the connection's books.
func (c *conn) removeLocked(s *stream) {
	if s.stopCtx != nil {
		s.stopCtx()
		s.stopCtx = nil
	}
	if s.inMap {
		delete(c.streams, s.id)
		s.inMap = false
	}
	if s.counted {
		s.counted = false
		c.active--
		if c.active == 0 {
			c.onIdleLocked()
		}
	}
	if s.connBlocked {
		for i, b := range c.connBlocked {
			if b == s {
				c.connBlocked = append(c.connBlocked[:i], c.connBlocked[i+1:]...)
				break
			}
		}
		s.connBlocked = false
	}
}

// resetLocked resets s: by the peer (remote, with its code) or by this end
// (an RST_STREAM goes out).
func (c *conn) resetLocked(s *stream, code http.ResetCode, remote bool) {
	if s.err != nil || (s.remoteDone && s.localDone) {
		return
	}
	if !remote && s.id != 0 {
		// (A client stream has an id once its HEADERS is being written,
		// so the RST_STREAM follows it.)
		wire := code
		if c.client && code == http.ResetCancel {
			// A request given up (its caller's reset, Close or context)
			// goes out as Envoy's codec resets an upstream stream
			// (reasonToReset): NO_ERROR. The stream's own error keeps
			// CANCEL.
			wire = http.ResetNoError
		}
		if err := c.queueCtrl(ctrlFrame{kind: ctrlRST, id: s.id, val: uint32(wire)}); err == nil {
			c.noteReset(s.id)
		}
	}
	c.failStreamLocked(s, &StreamError{StreamID: s.id, Code: code, Remote: remote})
}

// failStreamLocked ends s abnormally with err.
func (c *conn) failStreamLocked(s *stream, err error) {
	if s.err == nil {
		if c.client && !s.hdrSent && !errors.Is(err, ErrNotProcessed) {
			err = notProcessed(err)
		}
		s.err = err
	}
	s.remoteDone = true
	s.localDone = true
	s.hdrPending = false
	s.trlPending = false
	s.endPending = false
	c.freeSendBuf(s)
	c.creditConn(int64(s.recv.reset(c.cfg.bufs)))
	if s.cancel != nil {
		s.cancel()
	}
	if f := s.onGone; f != nil {
		s.onGone = nil
		s.runGoneLocked(f)
	}
	s.cond.Broadcast()
	c.removeLocked(s)
}

func (c *conn) freeSendBuf(s *stream) {
	if s.sbuf != nil {
		c.cfg.bufs.Put(s.sbuf)
		s.sbuf = nil
	}
	s.soff, s.slen = 0, 0
}

// maybeRelease returns a stream nobody refers to any more to the pool.
//
// Only the end of an operation calls it, as its last use of s: the helpers
// that close streams (resetLocked, localEndLocked, ...) never do, or a caller
// could touch a stream already handed to another connection.
func (c *conn) maybeRelease(s *stream) {
	if s.inMap || s.held || s.queued || s.connBlocked || s.writing || s.counted {
		return
	}
	if s.released {
		panic("h2: stream released twice")
	}
	s.released = true
	s.recycle()
	c.pool.Put(s)
}

// ---------------------------------------------------------------------------
// Idle timeout and drain (server).

func (c *conn) onIdleLocked() {
	if c.client {
		if c.goAwayRecv != nil {
			c.stopLocked(nil, 0)
		}
		return
	}
	if c.goAwayFinal || c.goAwayRecv != nil {
		// Drained: the final GOAWAY is out (or the client said it is going)
		// and the last stream is done.
		c.goAwayLocked(http.ResetNoError, "")
		c.stopLocked(nil, lingerTimeout)
		return
	}
	c.armIdleLocked()
}

func (c *conn) armIdleLocked() {
	if c.cfg.idleTimeout <= 0 || c.wstop {
		return
	}
	c.idleSince = time.Now()
	if c.idleTimer == nil {
		c.idleTimer = time.AfterFunc(c.cfg.idleTimeout, c.idleFired)
		return
	}
	c.idleTimer.Reset(c.cfg.idleTimeout)
}

func (c *conn) idleFired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active > 0 || c.wstop {
		return
	}
	if left := c.cfg.idleTimeout - time.Since(c.idleSince); left > 0 {
		c.idleTimer.Reset(left)
		return
	}
	c.goAwayLocked(http.ResetNoError, "")
	c.stopLocked(nil, lingerTimeout)
}

// startDrainLocked sends the first GOAWAY (the largest stream id: "shutting
// down soon") and a PING; the final GOAWAY follows the PING's ACK, so streams
// the client opened before it saw the first one are still served.
func (c *conn) startDrainLocked() {
	if c.draining || c.goAwayFinal || c.wstop {
		return
	}
	c.draining = true
	_ = c.queueCtrl(ctrlFrame{kind: ctrlGoAway, id: maxStreamID, val: uint32(http.ResetNoError)})
	_ = c.queueCtrl(ctrlFrame{kind: ctrlPing, data: drainPingData})
	c.drainTimer = time.AfterFunc(c.cfg.drainTimeout, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.finishDrainLocked()
	})
}

func (c *conn) finishDrainLocked() {
	if c.goAwayFinal || c.wstop {
		return
	}
	c.goAwayLocked(http.ResetNoError, "")
	if c.active == 0 {
		c.stopLocked(nil, lingerTimeout)
	}
}

const maxStreamID = 1<<31 - 1

// ---------------------------------------------------------------------------
// The writer.

func (c *conn) writeLoop() {
	defer close(c.writerDone)
	err := c.writePreamble()
	var it writeItem
	yielded := false
	for err == nil {
		c.mu.Lock()
		if !c.haveWork() && !c.wstop {
			c.mu.Unlock()
			if c.bw.Buffered() > 0 {
				if !yielded {
					// Before the write, let the goroutines ready to run
					// (handlers whose responses just arrived) queue their
					// frames too, so that one system call carries them all.
					yielded = true
					runtime.Gosched()
					continue
				}
				if err = c.bw.Flush(); err != nil {
					break
				}
			}
			yielded = false
			c.mu.Lock()
			for !c.haveWork() && !c.wstop {
				c.wcond.Wait()
			}
		}
		if c.wstop && c.ctrl.len() == 0 {
			c.mu.Unlock()
			err = c.bw.Flush()
			c.afterStop()
			if err == nil {
				return
			}
			break
		}
		ok := c.take(&it)
		c.mu.Unlock()
		if ok {
			err = c.write(&it)
		}
	}
	c.mu.Lock()
	if c.werr == nil {
		c.werr = err
	}
	c.wstop = true
	c.mu.Unlock()
	_ = c.nc.Close()
}

func (c *conn) haveWork() bool {
	return c.ctrl.len() > 0 || (c.ready.len() > 0 && !c.wstop)
}

func (c *conn) writePreamble() error {
	if c.client {
		if _, err := c.bw.WriteString(ClientPreface); err != nil {
			return err
		}
	}
	set := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: c.cfg.streamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.maxHeaderList},
	}
	if c.client {
		set = append(set, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		set = append(set, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.maxStreams})
	}
	if err := c.fr.WriteSettings(set...); err != nil {
		return err
	}
	if inc := c.cfg.connWindow - MinWindowSize; inc > 0 {
		if err := c.fr.WriteWindowUpdate(0, inc); err != nil {
			return err
		}
	}
	return c.bw.Flush()
}

// take picks the next frame to write (mu held): control frames first, then one
// frame of the next ready stream, round robin. Data is copied to c.wbuf.
func (c *conn) take(it *writeItem) bool {
	*it = writeItem{}
	if c.ctrl.len() > 0 {
		it.kind = itemCtrl
		it.ctrl = c.ctrl.pop()
		return true
	}
	for c.ready.len() > 0 {
		s := c.ready.pop()
		s.queued = false
		if s.err != nil || s.localDone {
			c.maybeRelease(s)
			continue
		}
		if s.hdrPending {
			if s.id == 0 && !c.assignID(s) {
				continue
			}
			it.kind, it.s, it.id, it.end, it.maxFrame = itemHeaders, s, s.id, s.hdrEnd, c.peerMaxFrame
			s.writing = true
			return true
		}
		if s.slen > 0 {
			n := int64(s.slen)
			n = min(n, s.sendWindow, c.sendWindow, int64(c.peerMaxFrame), maxDataChunk)
			if n <= 0 {
				if s.sendWindow <= 0 {
					s.flowBlocked = true
				} else if !s.connBlocked {
					s.connBlocked = true
					c.connBlocked = append(c.connBlocked, s)
				}
				continue
			}
			copy(c.wbuf[frameHeaderLen:], s.sbuf.B[s.soff:s.soff+int(n)])
			s.soff += int(n)
			s.slen -= int(n)
			if s.slen == 0 {
				s.soff = 0
			}
			s.sendWindow -= n
			c.sendWindow -= n
			end := s.slen == 0 && s.endPending && !s.trlPending
			it.kind, it.id, it.end, it.n = itemData, s.id, end, int(n)
			s.cond.Broadcast()
			if end {
				s.endPending = false
				c.localEndLocked(s)
			} else if s.hasSendWork() {
				c.queueStream(s)
			}
			c.maybeRelease(s)
			return true
		}
		if s.trlPending {
			it.kind, it.s, it.id, it.end, it.trailers, it.maxFrame = itemHeaders, s, s.id, true, true, c.peerMaxFrame
			s.writing = true
			return true
		}
		if s.endPending {
			s.endPending = false
			it.kind, it.id, it.end = itemData, s.id, true
			c.localEndLocked(s)
			c.maybeRelease(s)
			return true
		}
	}
	return false
}

// assignID gives a client stream its id as its HEADERS goes out, so ids go on
// the wire in increasing order.
func (c *conn) assignID(s *stream) bool {
	if c.goAwayRecv != nil || c.nextStreamID > maxStreamID {
		var err error = &GoAwayError{LastStreamID: 0, Code: http.ResetNoError}
		if c.goAwayRecv != nil {
			g := *c.goAwayRecv
			err = &g
		}
		c.failStreamLocked(s, err)
		return false
	}
	s.id = c.nextStreamID
	c.nextStreamID += 2
	s.sendWindow = c.peerInitWindow
	c.streams[s.id] = s
	s.inMap = true
	return true
}

func (c *conn) write(it *writeItem) error {
	switch it.kind {
	case itemCtrl:
		return c.writeCtrl(&it.ctrl)
	case itemData:
		b := c.wbuf[:frameHeaderLen+it.n]
		b[0], b[1], b[2] = byte(it.n>>16), byte(it.n>>8), byte(it.n)
		b[3] = byte(http2.FrameData)
		b[4] = 0
		if it.end {
			b[4] = byte(http2.FlagDataEndStream)
		}
		b[5], b[6], b[7], b[8] = byte(it.id>>24), byte(it.id>>16), byte(it.id>>8), byte(it.id)
		_, err := c.bw.Write(b)
		return err
	default:
		s := it.s
		var h *http.Header
		if it.trailers {
			h = &s.strl
		} else {
			h = &s.shdr
		}
		err := c.writeHeaderBlock(it, h)
		c.mu.Lock()
		s.writing = false
		if it.trailers {
			s.trlPending = false
		} else {
			s.hdrPending = false
			s.hdrSent = true
		}
		s.cond.Broadcast()
		if s.err == nil {
			if it.end {
				c.localEndLocked(s)
			} else if s.hasSendWork() {
				c.queueStream(s)
			}
		}
		c.maybeRelease(s)
		c.mu.Unlock()
		return err
	}
}

func (c *conn) writeCtrl(f *ctrlFrame) error {
	switch f.kind {
	case ctrlSettingsAck:
		return c.fr.WriteSettingsAck()
	case ctrlPing:
		return c.fr.WritePing(false, f.data)
	case ctrlPingAck:
		return c.fr.WritePing(true, f.data)
	case ctrlWindowUpdate:
		return c.fr.WriteWindowUpdate(f.id, f.val)
	case ctrlRST:
		return c.fr.WriteRSTStream(f.id, http2.ErrCode(f.val))
	case ctrlGoAway:
		var debug []byte
		if f.debug != "" {
			debug = []byte(f.debug)
		}
		return c.fr.WriteGoAway(f.id, http2.ErrCode(f.val), debug)
	case ctrlTableSize:
		c.henc.SetMaxDynamicTableSizeLimit(f.id)
		c.lastOK = false // the next block starts with a table size update
	}
	return nil
}

// writeHeaderBlock encodes h and writes it as HEADERS and CONTINUATION frames.
func (c *conn) writeHeaderBlock(it *writeItem, h *http.Header) error {
	block := c.encodeBlock(h, it.trailers)
	max := int(it.maxFrame)
	first := true
	for first || len(block) > 0 {
		n := min(len(block), max)
		frag := block[:n]
		block = block[n:]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID:      it.id,
				BlockFragment: frag,
				EndStream:     it.end,
				EndHeaders:    len(block) == 0,
			})
			first = false
		} else {
			err = c.fr.WriteContinuation(it.id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// encodeBlock returns the HPACK block for h. A block whose fields are those
// of the last one, in order, is the last one's bytes again if encoding that
// left the encoder's dynamic table unchanged and no block since has changed
// it: every field went out as an index then, and the indices still hold. A
// server's responses on a connection are mostly such repeats (the same
// status and fields from the same backend; a new date once a second), and
// the HPACK searches behind each field are the dearest part of a response
// head otherwise.
func (c *conn) encodeBlock(h *http.Header, trailers bool) []byte {
	if !trailers && c.lastOK {
		c.sameAt = 0
		if c.walkFields(h, false, c.sameFn) && c.sameAt == len(c.last) {
			return c.lastBlock
		}
	}
	c.hbuf.Reset()
	c.hbuf.changed = false
	c.fields = c.fields[:0]
	c.walkFields(h, trailers, c.encodeFn)
	block := c.hbuf.Bytes()
	switch {
	case c.hbuf.changed:
		c.lastOK = false
	case !trailers:
		c.last, c.fields = c.fields, c.last
		c.lastBlock = append(c.lastBlock[:0], block...)
		c.lastOK = true
	}
	return block
}

// sameField compares a field with the last block's at c.sameAt.
func (c *conn) sameField(name, value string) bool {
	if c.sameAt >= len(c.last) || c.last[c.sameAt] != (hfield{name, value}) {
		return false
	}
	c.sameAt++
	return true
}

// walkFields gives emit h's fields in the order they are encoded: pseudo-header
// fields first (requests: :authority from Host if need be), then the rest,
// leaving out connection-specific fields. It stops, reporting false, when
// emit does.
func (c *conn) walkFields(h *http.Header, trailers bool, emit func(name, value string) bool) bool {
	ok := true
	if !trailers {
		hasAuthority := false
		h.Range(func(name, value string) bool {
			if len(name) > 0 && name[0] == ':' {
				if !c.client && name != http.Status {
					return true // only :status in a response
				}
				if name == http.Authority {
					hasAuthority = true
				}
				ok = emit(name, value)
			}
			return ok
		})
		if !ok {
			return false
		}
		if c.client && !hasAuthority {
			if host, found := h.Get("host"); found && !emit(http.Authority, host) {
				return false
			}
		}
	}
	h.Range(func(name, value string) bool {
		if len(name) == 0 || name[0] == ':' || connectionSpecific(name) {
			return true
		}
		switch name {
		case "host":
			if c.client {
				return true // sent as :authority
			}
		case "te":
			if value != "trailers" {
				return true
			}
		}
		ok = emit(name, value)
		return ok
	})
	return ok
}

// encodeField encodes one field. The HPACK encoder keeps the strings of the
// fields it indexes, and a Header's strings live only as long as its buffer,
// so fields it may index are given as interned copies (which join c.fields),
// and large ones go as never-indexed literals, which it does not keep.
func (c *conn) encodeField(name, value string) bool {
	if len(name)+len(value) > internMaxField {
		_ = c.henc.WriteField(hpack.HeaderField{Name: name, Value: value, Sensitive: true})
		c.hbuf.changed = true // its strings are not kept, so the block is not reused
		return true
	}
	f, ok := c.intern[hfield{name, value}]
	if !ok {
		if len(c.intern) >= internMaxCount {
			clear(c.intern)
		}
		// One allocation for both strings. Not name + value when value
		// is empty: Go returns name itself then, which lives in the
		// header's buffer.
		var nv string
		if value == "" {
			nv = strings.Clone(name)
		} else {
			nv = name + value
		}
		f = hfield{nv[:len(name)], nv[len(name):]}
		c.intern[f] = f
	}
	_ = c.henc.WriteField(hpack.HeaderField{Name: f.name, Value: f.value})
	c.fields = append(c.fields, f)
	return true
}

// hpackSink collects the HPACK encoder's output for a header block and notes
// whether the encoder's dynamic table may have changed: the encoder writes
// each field in one Write, and a field it adds to the table starts with
// 01xxxxxx (literal with incremental indexing), a table size update with
// 001xxxxx.
type hpackSink struct {
	bytes.Buffer
	changed bool
}

func (s *hpackSink) Write(p []byte) (int, error) {
	if len(p) > 0 && (p[0]&0xc0 == 0x40 || p[0]&0xe0 == 0x20) {
		s.changed = true
	}
	return s.Buffer.Write(p)
}
