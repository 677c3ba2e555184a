package hcm

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/h1"
	"github.com/skiffproxy/skiff/dataplane/http/h2"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/stats"
)

// OnConnection implements filter.NetworkFilter.
func (*Manager) OnConnection(context.Context, *filter.Conn) error { return nil }

// conn is one downstream connection: the http.Handler its codec hands
// streams to.
type conn struct {
	m        *Manager
	fc       *filter.Conn
	codec    http.ServerCodec
	http2    bool
	requests atomic.Uint32
	st       *stream // HTTP/1.1: the connection's one exchange, reused
	// xfcc is the x-forwarded-client-cert element of the client's
	// certificate, when the manager sets or appends one (xfcc.go).
	xfcc string

	// HTTP/1.1: the idle timeout (idleSince is the monotonic time the last
	// exchange ended, 0 while one runs) and the watch on the codec's
	// context, which is canceled when the client goes away.
	idleSince atomic.Int64
	idleTimer *time.Timer
	stopGone  func() bool

	// A hot restart moving the idle HTTP/1.1 connection (see Move): released
	// is closed once the successor has its copy.
	h1c      *h1.ServerConn
	released chan struct{}
	once     sync.Once

	// A drain of the connection's chain applied to the codec, which, with
	// the gradual drain strategy, a later request may do (see
	// filter.Conn.DrainClose); and counted.
	drainApplied, drainCounted atomic.Bool
}

// ServeConn implements filter.TerminalFilter.
func (m *Manager) ServeConn(ctx context.Context, fc *filter.Conn) {
	m.serveConn(ctx, fc, nil)
}

// Adopts implements filter.Adopter: a connection manager that speaks
// HTTP/1.1 resumes the idle HTTP/1.1 connections a hot-restart parent moved.
func (m *Manager) Adopts(kind filter.MovedKind) bool {
	return kind == filter.MovedHTTP1Idle && m.codec != hcmv3.HttpConnectionManager_HTTP2
}

// Adopt implements filter.Adopter: the connection goes on with the bytes the
// parent read and did not parse, as if it had never left.
func (m *Manager) Adopt(ctx context.Context, fc *filter.Conn, mc *filter.MovedConn) {
	m.serveConn(ctx, fc, mc)
}

// serveConn runs a downstream connection, a new one or, with moved, one a
// hot-restart parent handed over idle between HTTP/1.1 requests.
func (m *Manager) serveConn(ctx context.Context, fc *filter.Conn, moved *filter.MovedConn) {
	if moved == nil {
		// A moved connection was counted by the parent (the stats region is
		// shared).
		m.stats.cxTotal.Inc()
	}
	m.stats.cxActive.Inc()
	defer func() {
		m.stats.cxActive.Dec()
		if !fc.Moved() {
			m.stats.cxDestroy.Inc()
		}
	}()
	ctx = filter.WithConn(ctx, fc)
	cc := &countedConn{Conn: fc.Conn, rx: m.stats.rxBytes, tx: m.stats.txBytes}
	switch tc := fc.Conn.(type) {
	case *netio.Conn: // accepted by the listener: reads and writes raw already
	case *net.TCPConn: // handed over by a hot-restart parent
		if rc, err := netio.NewConn(tc); err == nil {
			cc.Conn = rc
		}
	}
	c := &conn{m: m, fc: fc}
	if m.setsXFCC() && mutualTLS(fc) {
		c.xfcc = xfccElement(fc, m.xfccDetails)
	}
	switch {
	case moved != nil:
		cc.pending = moved.Pending[0]
	case m.codec == hcmv3.HttpConnectionManager_HTTP2:
		c.http2 = true
	case m.codec == hcmv3.HttpConnectionManager_AUTO && fc.TLS != nil && fc.TLS.NegotiatedProtocol == "h2":
		c.http2 = true // ALPN chose, as in Envoy
	case m.codec == hcmv3.HttpConnectionManager_AUTO && fc.TLS != nil && fc.TLS.NegotiatedProtocol == "http/1.1":
	case m.codec == hcmv3.HttpConnectionManager_AUTO:
		isH2, err := m.sniff(ctx, cc)
		if err != nil {
			fc.Close()
			return
		}
		c.http2 = isH2
	}
	if c.http2 {
		m.stats.cxHTTP2Total.Inc()
		m.stats.cxHTTP2Active.Inc()
		defer m.stats.cxHTTP2Active.Dec()
		c.codec = m.h2.NewConn()
	} else {
		if moved == nil {
			m.stats.cxHTTP1Total.Inc()
		}
		m.stats.cxHTTP1Active.Inc()
		defer m.stats.cxHTTP1Active.Dec()
		c.h1c = h1.NewServerConn(&m.h1)
		c.codec = c.h1c
		c.st = newStream(m)
		defer c.st.close()
		if m.idleTimeout > 0 {
			c.idleSince.Store(nanotime())
			c.idleTimer = time.AfterFunc(m.idleTimeout, c.onIdle)
			defer c.idleTimer.Stop()
		}
		defer func() {
			if c.stopGone != nil {
				c.stopGone()
			}
		}()
	}

	// Drain: the connection's chain is retired or drained, or skiff shuts
	// down. The codec is told when filter.Conn.DrainClose says so: at once
	// with the immediate drain strategy, at one of the next requests with the
	// gradual one; an idle HTTP/1.1 connection stays for its next request,
	// answered with "connection: close" (Envoy's behaviour), unless skiff
	// shuts down.
	fc.OnDrain(func(closeIdle bool) {
		if closeIdle {
			c.codec.Drain()
			c.countDrain()
			return
		}
		if fc.DrainClose() {
			c.applyDrain()
		}
	})
	if m.maxConnDuration > 0 {
		t := time.AfterFunc(m.maxConnDuration, func() {
			m.stats.cxMaxDuration.Inc()
			c.codec.Drain()
		})
		defer t.Stop()
	}
	if c.movable() {
		c.released = make(chan struct{})
		fc.SetMover(c)
	}
	var err error
	if c.h1c != nil {
		// Bytes read already (sniffed, or unparsed by a hot-restart parent)
		// go into the codec's own buffer, where Detach sees them too.
		pending := cc.pending
		cc.pending = nil
		var conn net.Conn = cc
		if fc.TLS != nil {
			conn = tlsCountedConn{cc, fc.TLS}
		}
		err = c.h1c.ServeBuffered(ctx, conn, pending, c)
	} else {
		err = c.codec.Serve(ctx, cc, c)
	}
	if errors.Is(err, h1.ErrDetached) {
		// A hot restart took the idle connection: wait until the successor
		// has its copy, which Release closes here.
		select {
		case <-c.released:
			fc.MarkMoved()
		case <-ctx.Done():
			fc.Close()
		}
		return
	}
	fc.SetMover(nil)
	c.connEnded(err)
}

// movable reports whether a hot restart may move the connection while it is
// idle: plain HTTP/1.1 on a TCP socket, nothing a listener filter learned
// that the successor could not learn again.
func (c *conn) movable() bool {
	return c.h1c != nil && netio.IsSocket(c.fc.Conn) && c.fc.TransportProtocol == "raw_buffer" && c.fc.Remote == c.fc.DirectRemote
}

// moveWait is how long a hot restart waits for a busy HTTP/1.1 connection to
// end its exchange so that it can move; one still busy then stays and drains
// (its response says "connection: close" if its head is not sent yet).
const moveWait = 250 * time.Millisecond

// Move implements filter.Mover: an HTTP/1.1 connection between two exchanges
// stops reading and is handed over with the bytes it read and did not parse
// (see h1.ServerConn.Detach).
func (c *conn) Move() (*filter.MovedConn, bool) {
	pending, ok := c.h1c.Detach(moveWait)
	if !ok {
		return nil, false
	}
	return &filter.MovedConn{
		Kind:        filter.MovedHTTP1Idle,
		Down:        c.fc.Conn,
		Pending:     [2][]byte{pending},
		IdleTimeout: c.m.idleTimeout,
		Release: func() {
			c.once.Do(func() {
				c.fc.Conn.Close()
				close(c.released)
			})
		},
	}, true
}

// connEnded accounts for how the connection ended. A request the HTTP/1.1
// codec refused (400, 408, 431, ...) was answered and logged as an exchange
// (ServeRefused).
func (c *conn) connEnded(err error) {
	m := c.m
	var he *h1.Error
	var ce *h2.ConnError
	switch {
	case err == nil:
	case errors.As(err, &he):
		switch he.Kind {
		case h1.KindIdleTimeout:
			m.stats.cxIdleTimeout.Inc()
		case h1.KindHeadersTimeout:
			m.stats.rqHeaderTimeout.Inc()
		case h1.KindTruncated:
		default:
			m.stats.cxProtocolError.Inc()
		}
	case errors.As(err, &ce):
		if !ce.Remote {
			m.stats.cxProtocolError.Inc()
		}
	}
}

// ServeRefused implements h1.RefusalHandler: a request the HTTP/1.1 codec
// refused is answered as Envoy's codec has its connection manager answer it
// (sendProtocolError): a local reply, through the response filters,
// local_reply_config and the manager's response headers, counted and logged
// as an exchange; the connection closes after it.
func (c *conn) ServeRefused(s http.ServerStream, he *h1.Error) {
	if c.st != nil {
		c.st.serveRefused(c, s, he)
	}
}

// ServeStream implements http.Handler.
func (c *conn) ServeStream(s http.ServerStream) {
	m := c.m
	n := c.requests.Add(1)
	if m.maxRequests > 0 && n >= m.maxRequests {
		// This one is the last: HTTP/1.1 answers it with "connection: close",
		// HTTP/2 sends GOAWAY.
		if n == m.maxRequests {
			m.stats.cxMaxRequests.Inc()
		}
		c.codec.Drain()
	}
	if c.st != nil {
		if c.stopGone == nil {
			// The codec's context is the connection's: watch it once.
			c.stopGone = context.AfterFunc(s.Context(), c.st.downstreamGoneFn)
		}
		c.idleSince.Store(0)
		c.st.serve(c, s)
		c.idleSince.Store(c.st.started + int64(c.st.ex.Info.Duration)) // its end, without a clock read
		return
	}
	// st goes back to the pool, and to another exchange, only once no call
	// of downstreamGone for this one can come: NotifyGone(nil) waits for one
	// under way.
	st := m.streams.Get().(*stream)
	if gn, ok := s.(http.GoneNotifier); ok {
		gn.NotifyGone(st.downstreamGoneFn)
		st.serve(c, s)
		gn.NotifyGone(nil)
	} else {
		gone := make(chan struct{})
		stop := context.AfterFunc(s.Context(), func() {
			defer close(gone)
			st.downstreamGone()
		})
		st.serve(c, s)
		if !stop() {
			<-gone
		}
	}
	m.streams.Put(st)
}

// applyDrain tells the codec of a connection whose chain drains to end it:
// HTTP/1.1 answers with "connection: close" from now on (an idle connection
// stays for its next request), HTTP/2 sends GOAWAY.
func (c *conn) applyDrain() {
	if !c.drainApplied.CompareAndSwap(false, true) {
		return
	}
	if c.h1c != nil {
		c.h1c.Discourage()
	} else {
		c.codec.Drain()
	}
	c.countDrain()
}

// countDrain counts the connection in downstream_cx_drain_close, once; after
// the drain is in effect, so that it is by the time the count shows.
func (c *conn) countDrain() {
	if c.drainCounted.CompareAndSwap(false, true) {
		c.m.stats.cxDrain.Inc()
	}
}

// onIdle closes an HTTP/1.1 connection that carried no request for the idle
// timeout; a busy or recently busy one is looked at again later.
func (c *conn) onIdle() {
	idle := c.m.idleTimeout
	since := c.idleSince.Load()
	if since == 0 {
		c.idleTimer.Reset(idle)
		return
	}
	if quiet := time.Duration(nanotime() - since); quiet < idle {
		c.idleTimer.Reset(idle - quiet)
		return
	}
	c.m.stats.cxIdleTimeout.Inc()
	c.codec.Drain()
}

// sniff reads the first bytes of an AUTO connection: HTTP/2's connection
// preface (h2c with prior knowledge) or anything else (HTTP/1.x). The bytes
// read are given back to the codec.
func (m *Manager) sniff(ctx context.Context, cc *countedConn) (bool, error) {
	stop := context.AfterFunc(ctx, func() { cc.Conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if d := m.idleTimeout; d > 0 {
		cc.Conn.SetReadDeadline(time.Now().Add(d))
		defer cc.Conn.SetReadDeadline(time.Time{})
	}
	n := 0
	for n < len(h2.ClientPreface) {
		k, err := cc.Conn.Read(cc.peek[n:])
		n += k
		if string(cc.peek[:n]) != h2.ClientPreface[:n] {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				m.stats.cxIdleTimeout.Inc()
			}
			return false, err
		}
	}
	cc.rx.Add(uint64(n))
	cc.pending = cc.peek[:n]
	return string(cc.peek[:n]) == h2.ClientPreface, nil
}

// countedConn counts the connection's bytes (downstream_cx_rx_bytes_total,
// downstream_cx_tx_bytes_total) and gives the sniffed bytes back first.
type countedConn struct {
	net.Conn
	rx, tx  stats.Counter
	pending []byte
	peek    [len(h2.ClientPreface)]byte
}

func (c *countedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.rx.Add(uint64(n))
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.tx.Add(uint64(n))
	}
	return n, err
}

// tlsCountedConn is a countedConn over TLS: it has *tls.Conn's
// ConnectionState, by which the HTTP/1.1 codec tells :scheme.
type tlsCountedConn struct {
	*countedConn
	state *tls.ConnectionState
}

func (c tlsCountedConn) ConnectionState() tls.ConnectionState { return *c.state }

// CloseWrite half-closes the connection (HTTP/1.1 tunnels end this way).
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
