package hcm

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/h1"
	"github.com/skiffproxy/skiff/dataplane/http/h2"
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

	// HTTP/1.1: the idle timeout (idleSince is the monotonic time the last
	// exchange ended, 0 while one runs) and the watch on the codec's
	// context, which is canceled when the client goes away.
	idleSince atomic.Int64
	idleTimer *time.Timer
	stopGone  func() bool
}

// ServeConn implements filter.TerminalFilter.
func (m *Manager) ServeConn(ctx context.Context, fc *filter.Conn) {
	m.stats.cxTotal.Inc()
	m.stats.cxActive.Inc()
	defer func() {
		m.stats.cxActive.Dec()
		m.stats.cxDestroy.Inc()
	}()
	ctx = filter.WithConn(ctx, fc)
	cc := &countedConn{Conn: fc.Conn, rx: m.stats.rxBytes, tx: m.stats.txBytes}
	c := &conn{m: m, fc: fc}
	switch m.codec {
	case hcmv3.HttpConnectionManager_HTTP2:
		c.http2 = true
	case hcmv3.HttpConnectionManager_AUTO:
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
		m.stats.cxHTTP1Total.Inc()
		m.stats.cxHTTP1Active.Inc()
		defer m.stats.cxHTTP1Active.Dec()
		c.codec = h1.NewServerConn(&m.h1)
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

	// Drain: the connection's chain is retired, or skiff shuts down.
	done := make(chan struct{})
	go func() {
		select {
		case <-fc.Draining():
			m.stats.cxDrain.Inc()
			c.codec.Drain()
		case <-done:
		}
	}()
	if m.maxConnDuration > 0 {
		t := time.AfterFunc(m.maxConnDuration, func() {
			m.stats.cxMaxDuration.Inc()
			c.codec.Drain()
		})
		defer t.Stop()
	}
	err := c.codec.Serve(ctx, cc, c)
	close(done)
	c.connEnded(ctx, err)
}

// connEnded accounts for how the connection ended, logging a request the
// HTTP/1.1 codec refused (400, 408, 431, ...) as an exchange.
func (c *conn) connEnded(ctx context.Context, err error) {
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
		if he.Status != 0 {
			c.logRefused(ctx, he)
		}
	case errors.As(err, &ce):
		if !ce.Remote {
			m.stats.cxProtocolError.Inc()
		}
	}
}

// logRefused counts and logs a request the codec answered itself.
func (c *conn) logRefused(ctx context.Context, he *h1.Error) {
	m := c.m
	m.stats.rqTotal.Inc()
	m.stats.rqHTTP1Total.Inc()
	if he.Status >= 100 && he.Status < 600 {
		m.stats.rqClass[he.Status/100-1].Inc()
	}
	if he.Kind == h1.KindHeadersTooLarge || he.Kind == h1.KindTooManyHeaders {
		m.stats.rqTooLarge.Inc()
	}
	if len(m.logs) == 0 {
		return
	}
	e := http.NewExchange(ctx, nil)
	e.Info.Protocol = "HTTP/1.1"
	e.Info.ConnectionID = c.fc.ID
	e.Info.DownstreamLocal = c.fc.Local
	e.Info.DownstreamRemote = c.fc.Remote
	e.Info.DownstreamDirectRemote = c.fc.DirectRemote
	e.Info.ResponseCode = he.Status
	e.Info.ResponseFlags = he.Flags()
	e.Info.ResponseCodeDetails = he.Details
	e.Info.Duration = time.Since(e.Info.Start)
	for _, l := range m.logs {
		l.Log(e)
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
		c.idleSince.Store(nanotime())
		return
	}
	st := m.streams.Get().(*stream)
	stop := context.AfterFunc(s.Context(), st.downstreamGoneFn)
	st.serve(c, s)
	stop()
	m.streams.Put(st)
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

// CloseWrite half-closes the connection (HTTP/1.1 tunnels end this way).
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
