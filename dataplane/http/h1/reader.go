package h1

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

// reader is a connection's read side: a pooled buffer holding bytes read but
// not yet consumed (the rest of a head, body bytes, the next pipelined
// request), and the parsing of heads, lines and bodies over it.
//
// A head must be contiguous in the buffer, so the buffer grows through the
// pool's classes (Small, Medium, Large) while a head is incomplete, up to the
// head size limit; a limit above bufpool.Large gets a one-off buffer of its
// own size for the heads that need it. Between messages an empty buffer that
// grew shrinks back to Small.
type reader struct {
	conn net.Conn
	pool *bufpool.Pool
	pb   *bufpool.Buffer // the pooled buffer b is, or nil (no buffer, or a one-off)
	b    []byte
	r, w int   // b[r:w] is read and not consumed
	err  error // the error that came with the last bytes read, for the next fill
	// peerGone: a read found the end of the stream or a reset, or
	// WriteRead's write found the connection gone (http.PeerGone).
	peerGone bool
}

func (rd *reader) init(conn net.Conn, pool *bufpool.Pool) {
	*rd = reader{conn: conn, pool: pool}
}

func (rd *reader) buffered() int { return rd.w - rd.r }

// release gives the buffer back.
func (rd *reader) release() {
	if rd.pb != nil {
		rd.pool.Put(rd.pb)
	}
	rd.pb, rd.b, rd.r, rd.w = nil, nil, 0, 0
}

// shrink puts back a buffer that grew for a large head, if it is empty.
func (rd *reader) shrink() {
	if rd.r == rd.w && len(rd.b) > bufpool.Small {
		rd.release()
	}
}

// fill reads once from the conn into the buffer, making room first: it
// compacts, or, if the buffer is full from r and holds fewer than limit bytes,
// grows it. The caller must not ask for more room than limit: with limit bytes
// buffered and a full buffer, fill fails with errBufferFull. An error is
// returned only when no byte was read.
func (rd *reader) fill(limit int) error {
	if err := rd.err; err != nil {
		rd.err = nil
		return err
	}
	if err := rd.room(limit); err != nil {
		return err
	}
	n, err := rd.conn.Read(rd.b[rd.w:])
	return rd.got(n, err)
}

// writeFill is fill for the first bytes of an answer to w, which it writes
// first through the conn's WriteRead (see netio.Conn): wn is how much of w
// was written, and a write error comes back as werr, with no read made.
func (rd *reader) writeFill(wr writeReader, w []byte, limit int) (wn int, werr, err error) {
	if err := rd.room(limit); err != nil {
		return 0, nil, err
	}
	wn, n, err := wr.WriteRead(w, rd.b[rd.w:])
	if wn < len(w) {
		rd.peerGone = rd.peerGone || http.PeerGone(err)
		return wn, err, nil
	}
	return wn, nil, rd.got(n, err)
}

// writeReader is a conn that can write a request and read its answer in one
// wait (netio.Conn).
type writeReader interface {
	WriteRead(w, r []byte) (wn, rn int, err error)
}

// room makes room in the buffer for a read, as fill describes.
func (rd *reader) room(limit int) error {
	if rd.b == nil {
		rd.pb = rd.pool.Get(bufpool.Small)
		rd.b = rd.pb.B
	}
	if rd.r == rd.w {
		rd.r, rd.w = 0, 0
	}
	if rd.w == len(rd.b) {
		switch {
		case rd.r > 0:
			rd.w = copy(rd.b, rd.b[rd.r:rd.w])
			rd.r = 0
		case len(rd.b) < limit:
			rd.grow(limit)
		default:
			return errBufferFull
		}
	}
	return nil
}

// got accounts for a read of n bytes that returned err.
func (rd *reader) got(n int, err error) error {
	rd.peerGone = rd.peerGone || http.PeerGone(err)
	rd.w += n
	if n > 0 {
		rd.err = err
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

var errBufferFull = errors.New("h1: read buffer full")

// grow moves the buffered bytes to a buffer of the next size class, or to a
// one-off buffer of limit bytes past bufpool.Large.
func (rd *reader) grow(limit int) {
	var pb *bufpool.Buffer
	var b []byte
	switch {
	case len(rd.b) < bufpool.Medium:
		pb = rd.pool.Get(bufpool.Medium)
	case len(rd.b) < bufpool.Large:
		pb = rd.pool.Get(bufpool.Large)
	default:
		b = make([]byte, limit)
	}
	if pb != nil {
		b = pb.B
	}
	n := copy(b, rd.b[rd.r:rd.w])
	if rd.pb != nil {
		rd.pool.Put(rd.pb)
	}
	rd.pb, rd.b, rd.r, rd.w = pb, b, 0, n
}

// readHead returns the next head: with startLine, a start line and header
// field lines (empty lines before the start line are skipped, as RFC 9112
// section 2.2 allows, and count toward the size); without, field lines only
// (a trailer section). The returned bytes end with the empty line's CRLF; they
// stay valid until the next fill, and r is already past them. Every line must
// end with CRLF.
func (rd *reader) readHead(maxBytes, maxFields int, startLine bool) ([]byte, error) {
	scan, lineStart, fields := 0, 0, 0
	started := !startLine
	for {
		buf := rd.b[rd.r:rd.w]
		for {
			i := bytes.IndexByte(buf[scan:], '\n')
			if i < 0 {
				scan = len(buf)
				break
			}
			nl := scan + i
			if nl == lineStart || buf[nl-1] != '\r' {
				return nil, errMalformed("line not ended by CRLF")
			}
			scan = nl + 1
			if nl-1 == lineStart { // an empty line
				if started {
					if scan > maxBytes {
						return nil, errTooLarge()
					}
					rd.r += scan
					return buf[:scan], nil
				}
				lineStart = scan
				continue
			}
			if started {
				if fields++; fields > maxFields {
					return nil, protoErr(KindTooManyHeaders, 431, DetailsTooManyHeaders, "too many header fields")
				}
			}
			started = true
			lineStart = scan
		}
		if len(buf) >= maxBytes {
			return nil, errTooLarge()
		}
		if err := rd.fill(maxBytes); err != nil {
			return nil, err
		}
	}
}

func errTooLarge() *Error {
	return protoErr(KindHeadersTooLarge, 431, DetailsHeadersTooLarge, "head larger than the limit")
}

// nextLine returns the first line of a head returned by readHead, without its
// CRLF, and the rest.
func nextLine(head []byte) (line, rest []byte) {
	i := bytes.IndexByte(head, '\n')
	return head[:i-1], head[i+1:]
}

// maxChunkLine bounds a chunk-size line with its extensions.
const maxChunkLine = 4 << 10

// readLine returns the next CRLF-ended line, without the CRLF, of at most max
// bytes. It stays valid until the next fill.
func (rd *reader) readLine(max int) ([]byte, error) {
	scan := 0
	for {
		buf := rd.b[rd.r:rd.w]
		if i := bytes.IndexByte(buf[scan:], '\n'); i >= 0 {
			nl := scan + i
			if nl == 0 || buf[nl-1] != '\r' {
				return nil, errMalformed("line not ended by CRLF")
			}
			rd.r += nl + 1
			return buf[:nl-1], nil
		}
		scan = len(buf)
		if len(buf) >= max {
			return nil, errMalformed("chunk line too long")
		}
		if err := rd.fill(max); err != nil {
			return nil, err
		}
	}
}

// readData reads body bytes into p: buffered ones first; with none buffered, a
// large p is read into straight from the conn, a small one through the buffer.
func (rd *reader) readData(p []byte) (int, error) {
	if rd.r == rd.w {
		if len(p) >= 1024 || rd.err != nil {
			if err := rd.err; err != nil {
				rd.err = nil
				return 0, err
			}
			n, err := rd.conn.Read(p)
			rd.peerGone = rd.peerGone || http.PeerGone(err)
			return n, err
		}
		if err := rd.fill(bufpool.Small); err != nil {
			return 0, err
		}
	}
	n := copy(p, rd.b[rd.r:rd.w])
	rd.r += n
	return n, nil
}

// bodyMode says how a message body is delimited.
type bodyMode uint8

const (
	bodyNone       bodyMode = iota // no body
	bodyLength                     // Content-Length
	bodyChunked                    // chunked transfer coding
	bodyUntilClose                 // the rest of the connection (a response without length)
	bodyRaw                        // a tunnel: raw bytes until the peer closes
)

type chunkState uint8

const (
	chunkSize    chunkState = iota // expecting a chunk-size line
	chunkData                      // in a chunk's data
	chunkDataEnd                   // expecting the CRLF after a chunk's data
	chunkTrailer                   // expecting the trailer section
)

// body is the decoding state of one message body.
type body struct {
	mode   bodyMode
	n      int64 // bodyLength: bytes left; bodyChunked: bytes left in the chunk
	cstate chunkState
	eof    bool  // the body is complete and io.EOF was returned
	err    error // sticky failure
	done   bool  // the body is complete (eof, or about to be returned)
}

func (bd *body) reset(mode bodyMode, n int64) {
	*bd = body{mode: mode, n: n}
	if mode == bodyNone || mode == bodyLength && n == 0 {
		bd.mode, bd.done = bodyNone, true
	}
}

// limits are the size limits of heads and trailer sections, and whether a
// trailer section is kept (or, parsed and checked, dropped).
type limits struct {
	maxBytes, maxFields int
	keepTrailers        bool
}

// readBody reads the body bd describes into p. Trailers, if the body is
// chunked and has any, go to tr if lim says to keep them.
func (rd *reader) readBody(bd *body, p []byte, tr *http.Header, lim limits) (int, error) {
	if bd.err != nil {
		return 0, bd.err
	}
	if bd.eof {
		return 0, io.EOF
	}
	switch bd.mode {
	case bodyNone:
		bd.eof, bd.done = true, true
		return 0, io.EOF
	case bodyLength:
		if bd.n == 0 {
			bd.eof, bd.done = true, true
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		if int64(len(p)) > bd.n {
			p = p[:bd.n]
		}
		n, err := rd.readData(p)
		bd.n -= int64(n)
		if bd.n == 0 {
			bd.done = true
		}
		if n > 0 {
			return n, nil
		}
		return 0, bd.fail(err)
	case bodyChunked:
		return rd.readChunked(bd, p, tr, lim)
	default: // bodyUntilClose, bodyRaw
		if len(p) == 0 {
			return 0, nil
		}
		n, err := rd.readData(p)
		if n > 0 {
			return n, nil
		}
		if err == io.EOF {
			bd.eof, bd.done = true, true
			return 0, io.EOF
		}
		bd.err = err
		return 0, err
	}
}

// fail records the error that ended a body before its end.
func (bd *body) fail(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		msg := "connection ended in the body"
		if errors.Is(err, os.ErrDeadlineExceeded) {
			msg = "timeout in the body"
		}
		e = &Error{Kind: KindTruncated, Msg: msg, Details: DetailsDownstreamClosed, Err: err}
		if err == io.EOF {
			e.Err = io.ErrUnexpectedEOF
		}
	}
	bd.err = e
	return e
}

func (rd *reader) readChunked(bd *body, p []byte, tr *http.Header, lim limits) (int, error) {
	for {
		switch bd.cstate {
		case chunkSize:
			line, err := rd.readLine(maxChunkLine)
			if err != nil {
				return 0, bd.fail(err)
			}
			size, ok := parseChunkSize(line)
			if !ok {
				return 0, bd.fail(errMalformed("invalid chunk size line"))
			}
			if size == 0 {
				bd.cstate = chunkTrailer
				continue
			}
			bd.n, bd.cstate = size, chunkData
		case chunkData:
			if len(p) == 0 {
				return 0, nil
			}
			q := p
			if int64(len(q)) > bd.n {
				q = q[:bd.n]
			}
			n, err := rd.readData(q)
			bd.n -= int64(n)
			if bd.n == 0 {
				bd.cstate = chunkDataEnd
			}
			if n > 0 {
				return n, nil
			}
			return 0, bd.fail(err)
		case chunkDataEnd:
			for rd.w-rd.r < 2 {
				if err := rd.fill(bufpool.Small); err != nil {
					return 0, bd.fail(err)
				}
			}
			if rd.b[rd.r] != '\r' || rd.b[rd.r+1] != '\n' {
				return 0, bd.fail(errMalformed("chunk data not followed by CRLF"))
			}
			rd.r += 2
			bd.cstate = chunkSize
		case chunkTrailer:
			block, err := rd.readHead(lim.maxBytes, lim.maxFields, false)
			if err != nil {
				return 0, bd.fail(err)
			}
			tr.Reset()
			for line, rest := nextLine(block); len(line) > 0; line, rest = nextLine(rest) {
				name, value, perr := parseField(line)
				if perr != nil {
					return 0, bd.fail(perr)
				}
				if lim.keepTrailers {
					tr.AddBytes(name, value)
				}
			}
			bd.eof, bd.done = true, true
			return 0, io.EOF
		}
	}
}

// parseChunkSize parses chunk-size [ chunk-ext ] (RFC 9112 section 7.1): hex
// digits, then nothing or whitespace and ';' and extensions, which are
// checked for forbidden bytes and otherwise ignored.
func parseChunkSize(line []byte) (int64, bool) {
	i := 0
	var n int64
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 { // 15 hex digits: below 2^60
			return 0, false
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	if i == len(line) {
		return n, true
	}
	rest := line[i:]
	for len(rest) > 0 && isOWS(rest[0]) {
		rest = rest[1:]
	}
	if len(rest) == 0 || rest[0] != ';' {
		return 0, false
	}
	for _, c := range rest {
		if classes[c]&classValue == 0 {
			return 0, false
		}
	}
	return n, true
}
