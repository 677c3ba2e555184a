package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/skiffproxy/skiff/dataplane/accesslog"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// tunneling is tunneling_config: the connection's bytes go upstream as the
// body of an HTTP CONNECT request, over the cluster's HTTP/1.1 or HTTP/2
// connection pool, as Envoy's tcp_proxy does.
type tunneling struct {
	hostname *accesslog.Format // the CONNECT's :authority, with %COMMAND%s
	literal  string            // hostname, when it has no command
	pools    *pool.Manager
}

func newTunneling(tc *tcpv3.TcpProxy_TunnelingConfig, fc *filter.Context) (*tunneling, error) {
	if err := cfgerr.OnlyFields(tc, "hostname"); err != nil {
		return nil, err
	}
	t := &tunneling{pools: fc.HTTPPools}
	f, err := accesslog.ParseFormat(tc.GetHostname())
	if err != nil {
		return nil, cfgerr.Field("hostname", err)
	}
	if t.pools == nil {
		return nil, cfgerr.Errorf("", "needs the HTTP connection pools, which this listener does not have")
	}
	if f.Literal() {
		t.literal = tc.GetHostname()
	} else {
		t.hostname = f
	}
	if t.literal == "" && t.hostname == nil {
		return nil, cfgerr.Errorf("hostname", "must not be empty")
	}
	return t, nil
}

// authority is the CONNECT request's :authority for connection c.
func (t *tunneling) authority(ctx context.Context, c *filter.Conn, start time.Time) string {
	if t.hostname == nil {
		return t.literal
	}
	e := http.NewExchange(ctx, nil)
	in := &e.Info
	in.Start = start
	in.ConnectionID = c.ID
	in.DownstreamLocal, in.DownstreamRemote, in.DownstreamDirectRemote = c.Local, c.Remote, c.DirectRemote
	in.RequestedServerName = c.ServerName
	return string(t.hostname.Append(nil, e))
}

// errTunnelRefused is a CONNECT the upstream answered without a 2xx.
var errTunnelRefused = errors.New("tcp_proxy: the upstream refused the tunnel")

// connectTunnel is connect for tunneling_config: for each attempt (up to
// max_connect_attempts, another host each time) a stream from the host's HTTP
// pool carries a CONNECT request, and a 2xx answer opens the tunnel; a failed
// connect, a reset or another status is a failed attempt (UF).
func (p *Proxy) connectTunnel(ctx context.Context, c *filter.Conn, cl *upstream.Cluster, ui *upstreamInfo, start time.Time) (net.Conn, *upstream.Host, http.ResponseFlag) {
	var failed http.ResponseFlag
	authority := p.tunnel.authority(ctx, c, start)
	for attempt := 1; attempt <= p.maxAttempts; attempt++ {
		h := p.pickHost(c, cl, attempt)
		if h == nil {
			p.log.Warn("tcp_proxy: no healthy upstream; closing downstream", "conn", c.ID, "cluster", cl.Name())
			return nil, nil, failed | http.FlagNoHealthyUpstream
		}
		ui.host, ui.pipe, ui.attempts = h.Addr, h.Pipe, attempt
		up, err := p.openTunnel(ctx, cl, h, authority)
		if err == nil {
			cl.ReportOutcome(h, upstream.ConnectedFinal)
			ui.local = p.upstreamLocal(up)
			ui.flags = failed
			return up, h, failed
		}
		if errors.Is(err, pool.ErrOverflow) {
			return nil, nil, failed | http.FlagUpstreamOverflow
		}
		failed = http.FlagUpstreamConnectionFailure
		if _, ok := errors.AsType[*pool.ConnectError](err); ok && ctx.Err() == nil {
			cl.ReportOutcome(h, upstream.ConnectFailed)
		}
		ui.failure = err.Error()
		p.log.Warn("tcp_proxy: upstream tunnel failed", "conn", c.ID, "cluster", cl.Name(), "host", h,
			"attempt", attempt, "max_connect_attempts", p.maxAttempts, "error", err)
		if ctx.Err() != nil {
			return nil, nil, failed
		}
	}
	cl.ConnectAttemptsExceeded()
	return nil, nil, failed | http.FlagUpstreamRetryLimitExceeded
}

// openTunnel sends the CONNECT on a stream of h's pool and waits for its
// answer.
func (p *Proxy) openTunnel(ctx context.Context, cl *upstream.Cluster, h *upstream.Host, authority string) (net.Conn, error) {
	hp := p.tunnel.pools.Pool(cl, h, "", "")
	if hp == nil {
		return nil, pool.ErrOverflow // max_connection_pools
	}
	conn, us, err := hp.Acquire(ctx, nil)
	if err != nil {
		return nil, err
	}
	hs := cl.HTTPStats()
	hs.RqTotal.Inc()
	hs.RqActive.Inc()
	sc := &streamConn{us: us, pool: hp, conn: conn, active: hs.RqActive, local: conn.LocalAddrPort(), remote: h.Addr}
	req := &http.Header{}
	req.Add(http.Method, "CONNECT")
	req.Add(http.Authority, authority)
	if err := us.WriteHeader(req, false); err != nil {
		sc.Close()
		return nil, err
	}
	resp, err := us.ReadHeader()
	if err != nil {
		sc.Close()
		return nil, err
	}
	status, _ := strconv.Atoi(resp.Value(http.Status))
	hs.Response(status)
	if status/100 != 2 {
		sc.Close()
		return nil, fmt.Errorf("%w with %d", errTunnelRefused, status)
	}
	return sc, nil
}

// streamConn is a tunnel's HTTP stream as the net.Conn a pair copies through:
// reading reads the response body, writing writes the request body,
// CloseWrite ends the request, Close (or a reset) ends the stream and gives
// its connection back to the pool. Deadlines are not supported: a pair only
// sets them to move a connection at a hot restart, which a tunnel, like a TLS
// session, never does.
type streamConn struct {
	us     http.ClientStream
	pool   *pool.Pool
	conn   *pool.Conn
	active stats.Gauge
	local  netip.AddrPort
	remote netip.AddrPort

	once sync.Once
}

func (s *streamConn) Read(p []byte) (int, error)  { return s.us.Read(p) }
func (s *streamConn) Write(p []byte) (int, error) { return s.us.Write(p) }

// CloseWrite ends the request: the upstream reads the end of the tunnel's
// stream (END_STREAM on HTTP/2, a FIN on HTTP/1.1).
func (s *streamConn) CloseWrite() error { return s.us.End() }

// SetLinger is how a pair resets a conn: a stream not finished is reset
// (CANCEL) when closed, whatever sec says.
func (s *streamConn) SetLinger(int) error { return nil }

// Close ends the stream, reset if not finished, and releases its connection.
func (s *streamConn) Close() error {
	s.once.Do(func() {
		s.us.Close()
		s.active.Dec()
		s.pool.Release(s.conn)
	})
	return nil
}

func (s *streamConn) LocalAddr() net.Addr              { return net.TCPAddrFromAddrPort(s.local) }
func (s *streamConn) RemoteAddr() net.Addr             { return net.TCPAddrFromAddrPort(s.remote) }
func (s *streamConn) SetDeadline(time.Time) error      { return nil }
func (s *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (s *streamConn) SetWriteDeadline(time.Time) error { return nil }
