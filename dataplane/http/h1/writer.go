package h1

import (
	"net"
	"runtime"
	"strconv"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

// writer is a connection's write side: a pooled buffer (taken for a message,
// given back after it) where a head is built and small body writes are
// framed, and the encoding of the body.
type writer struct {
	conn net.Conn
	pool *bufpool.Pool
	pb   *bufpool.Buffer
	n    int   // bytes buffered in pb.B
	err  error // sticky: the conn failed

	mode bodyMode // how the body being written is delimited
	left int64    // bodyLength: bytes still to write
	crlf bool     // bodyChunked: the CRLF ending the last chunk is still to write

	vec  [2][]byte
	bufs net.Buffers
}

func (w *writer) init(conn net.Conn, pool *bufpool.Pool) {
	*w = writer{conn: conn, pool: pool}
}

func (w *writer) get() {
	if w.pb == nil {
		w.pb = w.pool.Get(bufpool.Small)
		w.n = 0
	}
}

// release gives the buffer back; anything still buffered is dropped.
func (w *writer) release() {
	if w.pb != nil {
		w.pool.Put(w.pb)
		w.pb, w.n = nil, 0
	}
}

func (w *writer) avail() int { return len(w.pb.B) - w.n }

func (w *writer) flush() error {
	if w.err != nil {
		return w.err
	}
	if w.n == 0 {
		return nil
	}
	w.yield()
	_, err := w.conn.Write(w.pb.B[:w.n])
	w.n = 0
	if err != nil {
		w.err = err
	}
	return err
}

func (w *writer) str(s string) {
	for len(s) > 0 {
		if w.n == len(w.pb.B) && w.flush() != nil {
			return
		}
		k := copy(w.pb.B[w.n:], s)
		w.n += k
		s = s[k:]
	}
}

func (w *writer) uint(v uint64, base int) {
	if w.avail() < 24 && w.flush() != nil {
		return
	}
	w.n = len(strconv.AppendUint(w.pb.B[:w.n], v, base))
}

// field writes "name: value\r\n".
func (w *writer) field(name, value string) {
	w.str(name)
	w.str(": ")
	w.str(value)
	w.str("\r\n")
}

// through writes what is buffered and then p, in one system call if it can.
func (w *writer) through(p []byte) error {
	if w.err != nil {
		return w.err
	}
	if len(p) <= w.avail() {
		w.n += copy(w.pb.B[w.n:], p)
		return w.flush()
	}
	var err error
	w.yield()
	if w.n == 0 {
		_, err = w.conn.Write(p)
	} else {
		w.vec = [2][]byte{w.pb.B[:w.n], p}
		w.bufs = w.vec[:]
		_, err = w.bufs.WriteTo(w.conn)
		w.vec, w.bufs = [2][]byte{}, nil
		w.n = 0
	}
	if err != nil {
		w.err = err
	}
	return err
}

// setBody sets how the body that follows the head is delimited.
func (w *writer) setBody(mode bodyMode, n int64) {
	w.mode, w.left, w.crlf = mode, n, false
}

// body writes body bytes, framed, and flushes. It returns ErrContentLength,
// having written what fits, if p goes past a Content-Length.
func (w *writer) body(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, w.flush()
	}
	switch w.mode {
	case bodyLength:
		if int64(len(p)) > w.left {
			k := int(w.left)
			w.left = 0
			if err := w.through(p[:k]); err != nil {
				return 0, err
			}
			return k, ErrContentLength
		}
		w.left -= int64(len(p))
	case bodyChunked:
		if w.crlf {
			w.str("\r\n")
		}
		w.uint(uint64(len(p)), 16)
		w.str("\r\n")
		w.crlf = true // sent with the next chunk or the last one: the data need not wait for it
	case bodyNone:
		return 0, ErrBodyNotAllowed
	}
	if err := w.through(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// end finishes the body: the last chunk and trailers for chunked, a check of
// the length for Content-Length. It flushes.
func (w *writer) end(trailers *http.Header) error {
	if err := w.close(trailers); err != nil {
		return err
	}
	return w.flush()
}

// close ends the body in the buffer (the last chunk and trailers), leaving
// the flush to the caller.
func (w *writer) close(trailers *http.Header) error {
	switch w.mode {
	case bodyLength:
		if w.left != 0 {
			w.flush()
			return ErrContentLength
		}
	case bodyChunked:
		if w.crlf {
			w.str("\r\n")
		}
		w.str("0\r\n")
		if trailers != nil {
			writeFields(w, trailers, skipFraming|skipHost)
		}
		w.str("\r\n")
	}
	w.mode = bodyNone
	return w.err
}

// buffered returns the bytes written to the buffer and not yet flushed; they
// stay there until flush, or until the caller has sent them itself and calls
// release.
func (w *writer) buffered() []byte {
	if w.pb == nil {
		return nil
	}
	return w.pb.B[:w.n]
}

// Fields writeFields leaves out, besides pseudo-headers.
const (
	// skipFraming: content-length, transfer-encoding, connection and
	// keep-alive, which the codec writes itself from the message's framing
	// and persistence.
	skipFraming = 1 << iota
	// skipHost: host, which the client codec writes from :authority.
	skipHost
)

func skipped(name string, mask int) bool {
	switch name {
	case "content-length", "transfer-encoding", "connection", "keep-alive":
		return mask&skipFraming != 0
	case "host":
		return mask&skipHost != 0
	}
	return false
}

// writeFields writes h's fields, except pseudo-headers and those mask names.
func writeFields(w *writer, h *http.Header, mask int) {
	h.Range(func(name, value string) bool {
		if len(name) > 0 && name[0] != ':' && !skipped(name, mask) {
			w.field(name, value)
		}
		return true
	})
}

// validFields reports whether every field of h but the pseudo-headers can be
// sent as it is.
func validFields(h *http.Header) bool {
	ok := true
	h.Range(func(name, value string) bool {
		if len(name) > 0 && name[0] == ':' {
			return true
		}
		ok = isTokenString(name) && validValue(value)
		return ok
	})
	return ok
}

// yield is yieldToReady before a write, except for a tunnel's bytes, which
// are copied as tcp_proxy copies them, without it.
func (w *writer) yield() {
	if w.mode != bodyRaw {
		yieldToReady()
	}
}

// yieldToReady gives the processor to the other goroutines ready to run,
// such as those the poller woke together with this one. The codec does it
// before each write of a message (not of a tunnel's bytes): the others read
// and handle their input first, and the writes of all of them go out
// together after that, as an event loop's do (HAProxy reads every ready
// connection and then writes). A peer then wakes once for the bytes of many
// connections instead of once per write. Measured with wrk keep-alive
// through the HTTP/1.1 path on one processor, the backend and the client
// switched context 1.7 and 0.6 times a request without it, 0.4 and 0.25-0.3
// with it (behind HAProxy: 0.35 and 0.2), and skiff itself used 6-10 % less
// CPU per request. The server does it as well before reading a keep-alive
// connection's next request (not the first), which the client sends only
// once it has the last response: when the read comes after the others'
// turn, it finds the request more often, instead of nothing and a wait in
// the poller (2.53 reads per request instead of 2.80; +4-5 % requests/s). A
// server's writes, and so their yields, hold the connection's write lock:
// what else takes it (a 100 Continue sent as the body is first read, a
// reset) may wait a turn longer. It costs a trip through the scheduler when
// nothing else is ready. (tcp_proxy does not yield: there it cost 5-9 % of
// h1close's requests per second.) Nor does the client's ExchangeHeader, a
// request without a body written and its answer awaited in one step: the
// handler writing it runs either on an HTTP/1.1 connection's goroutine,
// whose yields before its read and its writes already group the
// connections' turns, or on an HTTP/2 connection's worker, handed its
// stream with the rest of the batch the reader read. Its yield was measured
// to group nothing more: without it, in alternating 4 s rounds of the
// bench's clients, h2c made 62.2k against 57.0k requests/s (5 of 5 rounds;
// 11.5 against 12.4 µs of CPU per request) and h1ka 54.6k against 54.1k.
func yieldToReady() { runtime.Gosched() }
