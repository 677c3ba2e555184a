// Package pool keeps skiff's upstream HTTP connections: one Pool per upstream
// host and protocol, shared by every router of the process, so that an
// HTTP/1.1 connection is reused by the next request to that host (keep-alive)
// and an HTTP/2 connection carries many requests at once (multiplexing).
//
// # Using a pool
//
//	p := m.Pool(cluster, host)              // the cluster's protocol (Config.HTTP2) decides
//	c, s, err := p.Acquire(ctx)             // a stream on an idle, shared or new connection
//	// ... s.WriteHeader, s.ReadHeader, s.Read to io.EOF ...
//	s.Close()
//	p.Release(c)                            // the connection goes back (or is closed)
//
// Acquire fails with ErrOverflow when the cluster's circuit breakers
// (max_connections with max_pending_requests) leave no room, or with a
// *ConnectError when no connection could be made.
//
// # Limits
//
// HTTP/1.1 carries one request per connection at a time: a request takes the
// most recently used idle connection of its host, or opens a new one while
// the cluster has fewer than max_connections (a host with none may always
// open one); otherwise it waits, as a pending request (at most
// max_pending_requests of them), for a connection of its host to come back.
// A connection is closed instead of reused once it carried
// max_requests_per_connection requests, and when it sat idle for idle_timeout
// (1 h by default, Envoy's). When it has lived max_connection_duration (a
// timer per connection) it takes no new request and is closed once idle.
// The upstream's close of an idle HTTP/1.1 connection is seen at once (see
// closeWatcher) and the connection closed; one that sat idle for a while is
// also checked (a non-blocking peek) before reuse, for an upstream that sent
// something unasked.
//
// max_requests counts the requests that have a connection (attached, as
// Envoy says), not those waiting for one: Acquire refuses a request with
// ErrOverflow when it would attach one more, and Release ends its count.
//
// HTTP/2 puts requests on the first connection of its host with room below
// the server's SETTINGS_MAX_CONCURRENT_STREAMS, opening another when none has.
//
// # Allocation
//
// Reusing a connection allocates nothing: idle connections sit on a slice
// used as a stack, the per-pool lookup is a sync.Map keyed by pointers, and
// the codecs reuse their streams.
package pool

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/h1"
	"github.com/skiffproxy/skiff/dataplane/http/h2"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/stats"
)

// ErrOverflow is returned by Acquire when the cluster's circuit breakers
// refuse the request: no connection can be made and the pending queue is
// full (Envoy's UO response flag).
var ErrOverflow = errors.New("pool: upstream overflow (circuit breaker open)")

// ConnectError is returned by Acquire when no connection to the host could be
// made (Envoy's UF response flag).
type ConnectError struct {
	Host string
	Err  error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("pool: connecting to %s: %v", e.Host, e.Err)
}
func (e *ConnectError) Unwrap() error { return e.Err }

// Reason renders the failure as Envoy's %UPSTREAM_TRANSPORT_FAILURE_REASON%
// does, e.g. "delayed connect error: Connection refused" (upstream.FailureReason).
func (e *ConnectError) Reason() string { return upstream.FailureReason(e.Err) }

// Defaults of the pools.
const (
	// PeekAfter is how long a connection may sit idle before it is checked
	// for a close by the upstream before reuse.
	PeekAfter = 500 * time.Millisecond
	// sweepEvery is how often idle connections are checked for their idle
	// timeout, and pools without connections removed.
	sweepEvery = time.Second
	// emptyPoolLife is how long a pool without connections is kept.
	emptyPoolLife = time.Minute
)

// Options configure a Manager.
type Options struct {
	// Buffers supplies the codecs' buffers. Nil: a pool of the Manager's own.
	Buffers *bufpool.Pool
	// Logger logs connection failures at debug level. Nil: discard.
	Logger *slog.Logger
}

// Manager holds the pools of every upstream host. It is safe for concurrent
// use; one Manager serves the whole process.
type Manager struct {
	opts Options
	// The pools by protocol (HTTP/1.1, HTTP/2), host and SNI: maps replaced
	// whole under mu when a pool comes or goes (rarely), read without a lock
	// once per request.
	pools [2]atomic.Pointer[map[poolKey]*Pool]

	mu      sync.Mutex // and the pools' writers
	closed  bool
	started bool
	quit    chan struct{}
	done    chan struct{}
	bg      sync.WaitGroup // HTTP/2 connections' watchers and closes
	// watcher notices the upstreams' closes of idle HTTP/1.1 connections;
	// set with the first connection (nil if it could not be made, or not
	// yet) and never changed afterwards.
	watcher *closeWatcher
}

// NewManager returns a Manager without pools. It starts no goroutine until
// the first connection is made.
func NewManager(opts Options) *Manager {
	if opts.Buffers == nil {
		opts.Buffers = bufpool.New()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{opts: opts, quit: make(chan struct{}), done: make(chan struct{})}
}

// poolKey is what sets a pool apart: its host, and for TLS the SNI its
// connections send, the name the server's certificate must carry and the
// ALPN they offer when the request sets them (auto_sni, auto_san_validation,
// istio.alpn), as Envoy keys pools by transport socket options.
type poolKey struct {
	h              *upstream.Host
	sni, san, alpn string
}

func keyOf(h *upstream.Host, o TLSOptions) poolKey { return poolKey{h, o.SNI, o.SAN, o.ALPNKey} }

// TLSOptions are what a request asks of the TLS connections of its pool
// ("" or nil for the cluster's own), ignored when the host's connections
// are plain TCP.
type TLSOptions struct {
	// SNI is sent instead of the cluster's (auto_sni).
	SNI string
	// SAN is the name the server's certificate must carry instead of
	// passing the cluster's matchers (auto_san_validation).
	SAN string
	// ALPN is offered instead of the context's alpn_protocols, and ALPNKey
	// names that list (http.ALPNOverride).
	ALPN    []string
	ALPNKey string
}

// Pool returns the pool of connections to host h of cluster cl, in the
// protocol cl's configuration asks for. sni is the SNI its TLS connections
// send instead of the cluster's and san the name the server's certificate
// must carry instead of passing the cluster's matchers ("" each for the
// cluster's own; see upstream.HTTPOptions.AutoSNI); both are ignored when
// the host's connections are plain TCP. It returns nil, counted in
// upstream_cx_pool_overflow, when a new pool would exceed the cluster's
// max_connection_pools.
func (m *Manager) Pool(cl *upstream.Cluster, h *upstream.Host, sni, san string) *Pool {
	return m.PoolAs(cl, h, TLSOptions{SNI: sni, SAN: san}, cl.Config().HTTP2)
}

// PoolAs is Pool with all the TLS options, for the protocol http2 says: the
// downstream's, for a cluster with use_downstream_protocol_config.
func (m *Manager) PoolAs(cl *upstream.Cluster, h *upstream.Host, o TLSOptions, http2 bool) *Pool {
	proto := protoIndex(http2)
	if (o.SNI != "" || o.SAN != "" || o.ALPNKey != "") && h.Transport().TLS == nil {
		o = TLSOptions{}
	}
	k := keyOf(h, o)
	if p := m.lookup(proto, k); p != nil {
		return p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.lookup(proto, k); p != nil { // made meanwhile
		return p
	}
	hs := cl.HTTPStats()
	if limit, ok := cl.Config().Limits.ConnectionPools(); ok && hs.Pools.Load() >= int64(limit) {
		hs.CxPoolOverflow.Inc()
		return nil
	}
	hs.Pools.Add(1)
	// The names may be strings over a request's header, valid only while
	// it lasts (see http.Header): the pool, its key and its dials keep
	// copies. (o.ALPN comes from a filter's configuration.)
	o.SNI, o.SAN, o.ALPNKey = strings.Clone(o.SNI), strings.Clone(o.SAN), strings.Clone(o.ALPNKey)
	k = keyOf(h, o)
	p := &Pool{m: m, cl: cl, host: h, tls: o, http2: http2, lastUsed: time.Now()}
	m.replaceLocked(proto, func(pools map[poolKey]*Pool) { pools[k] = p })
	return p
}

// forget removes p, which its sweep dropped, from pools, unless another
// pool took its key already.
func forget(pools map[poolKey]*Pool, p *Pool) {
	if k := keyOf(p.host, p.tls); pools[k] == p {
		delete(pools, k)
		p.cl.HTTPStats().Pools.Add(-1)
	}
}

// successor returns the pool that stands for p, which the sweeper dropped
// (it may not have removed it yet): the Manager's pool of the same host,
// names and protocol, made if need be; nil past max_connection_pools.
func (m *Manager) successor(p *Pool) *Pool {
	m.mu.Lock()
	m.replaceLocked(protoIndex(p.http2), func(pools map[poolKey]*Pool) { forget(pools, p) })
	m.mu.Unlock()
	return m.PoolAs(p.cl, p.host, p.tls, p.http2)
}

// lookup returns the pool of h in a protocol, or nil.
func (m *Manager) lookup(proto int, k poolKey) *Pool {
	if pools := m.pools[proto].Load(); pools != nil {
		return (*pools)[k]
	}
	return nil
}

func protoIndex(http2 bool) int {
	if http2 {
		return 1
	}
	return 0
}

// replaceLocked replaces the pools of a protocol by a copy that edit changed.
func (m *Manager) replaceLocked(proto int, edit func(map[poolKey]*Pool)) {
	var next map[poolKey]*Pool
	if pools := m.pools[proto].Load(); pools != nil {
		next = maps.Clone(*pools)
	} else {
		next = map[poolKey]*Pool{}
	}
	edit(next)
	m.pools[proto].Store(&next)
}

// eachPool calls f with every pool.
func (m *Manager) eachPool(f func(proto int, p *Pool)) {
	for proto := range m.pools {
		if pools := m.pools[proto].Load(); pools != nil {
			for _, p := range *pools {
				f(proto, p)
			}
		}
	}
}

// startSweeper starts the goroutine that closes expired idle connections.
func (m *Manager) startSweeper() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	if !m.started {
		m.started = true
		go m.sweep()
		w, err := newCloseWatcher(m.opts.Logger)
		if err != nil {
			m.opts.Logger.Warn("upstream connections' closes will be noticed late", "error", err)
		}
		m.watcher = w
	}
	return true
}

func (m *Manager) sweep() {
	defer close(m.done)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-m.quit:
			return
		case now := <-t.C:
			var gone [len(m.pools)][]*Pool
			m.eachPool(func(proto int, p *Pool) {
				if p.sweep(now) {
					gone[proto] = append(gone[proto], p)
				}
			})
			m.mu.Lock()
			for proto, ps := range gone {
				if len(ps) > 0 { // one copy of the map for all of them
					m.replaceLocked(proto, func(pools map[poolKey]*Pool) {
						for _, p := range ps {
							forget(pools, p)
						}
					})
				}
			}
			m.mu.Unlock()
		}
	}
}

// Close closes every connection (streams in flight fail) and stops the
// Manager's goroutine. Pools used afterwards fail to connect.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	started := m.started
	m.mu.Unlock()
	close(m.quit)
	if started {
		<-m.done
		if m.watcher != nil {
			m.watcher.stop()
		}
	}
	m.mu.Lock()
	var all []*Pool
	m.eachPool(func(_ int, p *Pool) { all = append(all, p) })
	m.pools[0].Store(nil)
	m.pools[1].Store(nil)
	m.mu.Unlock()
	for _, p := range all {
		p.cl.HTTPStats().Pools.Add(-1)
		p.closeAll()
	}
	m.bg.Wait()
}

// Conn is a pooled connection, lent by Acquire until Release.
type Conn struct {
	p  *Pool
	h1 *h1.ClientConn
	h2 *h2.ClientConn
	// tls is the connection if it is TLS (nil: plain TCP), tlsState its
	// session and tlsLocal the client certificate skiff has for it.
	tls      *tls.Conn
	tlsState *tls.ConnectionState
	tlsLocal *x509.Certificate
	// transport is the host's transport socket when the connection was
	// made: once a cluster update changes it, the connection is not reused.
	transport *upstream.Transport
	local     netip.AddrPort
	created   time.Time
	idleSince time.Time
	requests  uint32
	streams   int // HTTP/2: streams lent out
	closed    bool
	// draining: max_connection_duration was reached (durTimer fired): the
	// connection takes no new stream and closes once it carries none, as
	// Envoy's ActiveClient::onConnectionDurationTimeout drains it.
	draining bool
	durTimer *time.Timer
	// sock is the socket under an HTTP/1.1 connection (TLS included), to
	// register with the Manager's closeWatcher when it first goes idle; nil
	// once that was tried. watchID is the registration (0: none), and
	// upstreamClosed says the watcher saw the upstream close it while it
	// carried a request: it is not reused.
	sock           syscall.RawConn
	watchID        uint64
	upstreamClosed bool

	// The liveness peek's state, so that the check allocates nothing.
	raw     syscall.RawConn
	peekFn  func(fd uintptr) bool
	peekN   int
	peekErr error
	peekBuf [1]byte
}

// Reused reports whether the connection carried a request before the current
// one: an HTTP/1.1 upstream that closed it meanwhile shows as a request that
// got no response, which is safe to retry on a new connection.
func (c *Conn) Reused() bool { return c.requests > 1 }

// LocalAddrPort is the connection's local address (IPv4 unmapped).
func (c *Conn) LocalAddrPort() netip.AddrPort { return c.local }

// TLS is the connection's TLS session and the client certificate skiff has
// for it (nil, nil on plain TCP).
func (c *Conn) TLS() (*tls.ConnectionState, *x509.Certificate) { return c.tlsState, c.tlsLocal }

// Pool is the connections to one upstream host in one protocol.
type Pool struct {
	m     *Manager
	cl    *upstream.Cluster
	host  *upstream.Host
	tls   TLSOptions // what its TLS connections do beside the cluster's context
	http2 bool

	mu       sync.Mutex
	idle     []*Conn // HTTP/1.1: idle connections, most recently used last
	conns    []*Conn // HTTP/2: every open connection
	total    int     // open or being made
	dialing  int     // being made
	waiters  int
	wake     chan struct{} // closed when a connection comes back or goes; nil if nobody waits
	lastUsed time.Time
	dead     bool // removed from the Manager
}

// Host is the pool's upstream host.
func (p *Pool) Host() *upstream.Host { return p.host }

// HTTP2 reports whether the pool's connections speak HTTP/2.
func (p *Pool) HTTP2() bool { return p.http2 }

// ErrStopped is returned by Acquire when stop was closed during a wait for a
// connection.
var ErrStopped = errors.New("pool: wait for a connection stopped")

// Acquire returns a connection with a new stream on it. ctx bounds the wait
// for a connection and the connect, and is the stream's context (canceling
// it resets the stream); closing stop ends a wait for a connection (the
// router's timeouts).
func (p *Pool) Acquire(ctx context.Context, stop <-chan struct{}) (*Conn, http.ClientStream, error) {
	hs := p.cl.HTTPStats()
	cfg := p.cl.Config()
	// As in Envoy's pools, a request that finds no ready connection is
	// pending, counted and bounded by max_pending_requests, until it has
	// one: whether it waits for one to come back, for one being made, or
	// makes one itself.
	pending := false
	defer func() {
		if pending {
			hs.Pending.Add(-1)
			hs.RqPendingActive.Dec()
		}
	}()
	becomePending := func() bool {
		if pending {
			return true
		}
		if hs.Pending.Load() >= int64(cfg.Limits.Pending()) {
			hs.RqPendingOverflow.Inc()
			return false
		}
		pending = true
		hs.Pending.Add(1)
		hs.RqPendingActive.Inc()
		hs.RqPendingTotal.Inc()
		return true
	}
	p.mu.Lock()
	if p.dead {
		// The sweeper dropped the pool after the caller looked it up (it
		// was empty and unused): its connections would be nobody's to
		// sweep or close. The Manager's pool for the same names has them
		// (Release, given this pool, passes the connection on to it).
		p.mu.Unlock()
		np := p.m.successor(p)
		if np == nil {
			return nil, nil, ErrOverflow
		}
		return np.Acquire(ctx, stop)
	}
	for {
		if p.http2 {
			c, s, err := p.h2StreamLocked(ctx, hs, cfg)
			if c != nil || err != nil {
				p.mu.Unlock()
				return c, s, err
			}
			if p.dialing > 0 {
				// A connection on its way will take this stream too.
				if !becomePending() {
					p.mu.Unlock()
					return nil, nil, ErrOverflow
				}
				if !p.waitLocked(ctx, stop) {
					p.mu.Unlock()
					return nil, nil, p.stopErr(ctx)
				}
				continue
			}
		} else {
			now := time.Now()
			for len(p.idle) > 0 {
				c := p.idle[len(p.idle)-1]
				p.idle[len(p.idle)-1] = nil
				p.idle = p.idle[:len(p.idle)-1]
				if why := p.reusable(c, now); why != keep {
					p.closeLocked(c, why)
					continue
				}
				if !attach(hs, cfg) {
					p.idle = append(p.idle, c) // as it was
					p.mu.Unlock()
					return nil, nil, ErrOverflow
				}
				s, err := c.h1.NewStream(ctx)
				if err != nil {
					detach(hs)
					p.closeLocked(c, closeCodec)
					if ctx.Err() != nil {
						p.mu.Unlock()
						return nil, nil, ctx.Err()
					}
					continue
				}
				c.requests++
				p.lastUsed = now
				p.mu.Unlock()
				return c, s, nil
			}
		}
		wasPending := pending
		if !becomePending() {
			p.mu.Unlock()
			return nil, nil, ErrOverflow
		}
		if p.total == 0 || hs.Conns.Load() < int64(cfg.Limits.Connections()) {
			p.total++
			p.dialing++
			hs.Conns.Add(1)
			p.mu.Unlock()
			return p.dial(ctx, hs)
		}
		if !wasPending {
			// max_connections kept this request from making one, as
			// Envoy's tryCreateNewConnection counts it.
			hs.CxOverflow.Inc()
		}
		if !p.waitLocked(ctx, stop) {
			p.mu.Unlock()
			return nil, nil, p.stopErr(ctx)
		}
	}
}

// waitLocked waits, releasing p.mu meanwhile, until a connection comes
// back, goes or is made. It reports false if ctx or stop ended the wait.
func (p *Pool) waitLocked(ctx context.Context, stop <-chan struct{}) bool {
	if p.wake == nil {
		p.wake = make(chan struct{})
	}
	wake := p.wake
	p.waiters++
	p.mu.Unlock()
	ok := true
	select {
	case <-wake:
	case <-ctx.Done():
		ok = false
	case <-stop:
		ok = false
	}
	p.mu.Lock()
	p.waiters--
	return ok
}

func (p *Pool) stopErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return ErrStopped
}

// attach counts a request that got a connection against the cluster's
// max_requests, as Envoy's attachStreamToClient does: a request waiting for
// a connection (pending) does not count. It reports false, counted in
// upstream_rq_pending_overflow (as Envoy counts it), when max_requests
// requests are in flight already. Release undoes it (detach).
func attach(hs *upstream.HTTPStats, cfg *upstream.Config) bool {
	if hs.Requests.Add(1) > int64(cfg.Limits.Requests()) {
		hs.Requests.Add(-1)
		hs.RqPendingOverflow.Inc()
		return false
	}
	return true
}

// detach ends what attach counted.
func detach(hs *upstream.HTTPStats) { hs.Requests.Add(-1) }

// h2StreamLocked opens a stream on a connection with room, if there is one;
// it fails with ErrOverflow when max_requests leaves no room for it.
func (p *Pool) h2StreamLocked(ctx context.Context, hs *upstream.HTTPStats, cfg *upstream.Config) (*Conn, http.ClientStream, error) {
	for i := 0; i < len(p.conns); i++ {
		c := p.conns[i]
		if c.h2 == nil || c.draining || !c.h2.Available() {
			continue
		}
		if limit := p.cl.Config().HTTP.MaxRequestsPerConnection; limit > 0 && c.requests >= limit {
			continue
		}
		if c.transport != p.host.Transport() {
			continue // made with transport settings an update replaced
		}
		if !attach(hs, cfg) {
			return nil, nil, ErrOverflow
		}
		s, err := c.h2.NewStream(ctx)
		if err != nil {
			detach(hs)
			continue
		}
		c.requests++
		c.streams++
		p.lastUsed = time.Now()
		return c, s, nil
	}
	return nil, nil, nil
}

// dial makes a new connection and opens a stream on it. p.total counts it.
func (p *Pool) dial(ctx context.Context, hs *upstream.HTTPStats) (*Conn, http.ClientStream, error) {
	fail := func(err error) (*Conn, http.ClientStream, error) {
		p.mu.Lock()
		p.total--
		p.dialing--
		p.wakeLocked()
		p.mu.Unlock()
		hs.Conns.Add(-1)
		return nil, nil, err
	}
	if !p.m.startSweeper() || !p.cl.Acquire() {
		return fail(&ConnectError{Host: p.host.String(), Err: errors.New("shutting down")})
	}
	// Offered over TLS when the cluster's UpstreamTlsContext names no
	// protocol, as Envoy's pools do.
	alpn := []string{"http/1.1"}
	if p.http2 {
		alpn = []string{"h2"}
	}
	transport := p.host.Transport()
	nc, err := p.cl.ConnectWith(ctx, p.host, upstream.ConnectOptions{ALPN: alpn, SNI: p.tls.SNI, VerifyName: p.tls.SAN,
		ALPNOverride: p.tls.ALPN})
	if err != nil {
		p.cl.Release()
		p.m.opts.Logger.Debug("upstream connect failed", "cluster", p.cl.Name(), "host", p.host, "error", err)
		return fail(&ConnectError{Host: p.host.String(), Err: err})
	}
	cfg := p.cl.Config()
	c := &Conn{p: p, created: time.Now(), requests: 1, transport: transport}
	c.local = netio.AddrPort(nc.LocalAddr())
	c.tls, _ = nc.(*tls.Conn)
	c.tlsState, c.tlsLocal = upstream.TLSSession(nc, transport)
	codecConn := countBytes(nc, p.cl)
	if p.http2 {
		hs.CxHTTP2Total.Inc()
		cc, err := h2.NewClientConn(codecConn, h2.ClientOptions{
			MaxConcurrentStreams:        cfg.HTTP.MaxConcurrentStreams,
			InitialStreamWindowSize:     cfg.HTTP.InitialStreamWindowSize,
			InitialConnectionWindowSize: cfg.HTTP.InitialConnectionWindowSize,
			Buffers:                     p.m.opts.Buffers,
			Logger:                      p.m.opts.Logger,
		})
		if err != nil {
			nc.Close()
			p.cl.Disconnected(p.host)
			p.cl.Release()
			return fail(&ConnectError{Host: p.host.String(), Err: err})
		}
		c.h2 = cc
		c.streams = 1 // until attached or not: watchH2 leaves it alone
		p.m.bg.Go(func() { p.watchH2(c) })
		p.mu.Lock()
		p.dialing--
		p.conns = append(p.conns, c)
		now := time.Now()
		p.lastUsed = now
		p.startDurationLocked(c, cfg)
		p.wakeLocked() // others may share it
		if !attach(hs, cfg) {
			c.requests, c.streams, c.idleSince = 0, 0, now
			select {
			case <-c.h2.Done():
				p.closeLocked(c, closeCodec)
			default:
			}
			p.mu.Unlock()
			return nil, nil, ErrOverflow
		}
		s, err := cc.NewStream(ctx)
		p.mu.Unlock()
		if err != nil {
			p.Release(c)
			return nil, nil, err
		}
		return c, s, nil
	}
	hs.CxHTTP1Total.Inc()
	if sc, ok := nc.(syscall.Conn); ok { // plain TCP; TLS has aliveTLS
		if rc, err := sc.SyscallConn(); err == nil {
			c.raw = rc
			c.peekFn = c.peek
		}
	}
	c.sock = socketOf(nc)
	c.h1 = h1.NewClientConn(codecConn, &h1.Options{Buffers: p.m.opts.Buffers, MaxHeaders: int(cfg.HTTP.MaxHeadersCount), EnableTrailers: cfg.HTTP.EnableTrailers})
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing--
	now := time.Now()
	p.lastUsed = now
	p.startDurationLocked(c, cfg)
	if !attach(hs, cfg) {
		// Made for nothing, as Envoy's pool makes a connection for a
		// pending request that max_requests then refuses: the next
		// request takes it.
		c.requests = 0
		p.idleLocked(c, now)
		p.wakeLocked()
		return nil, nil, ErrOverflow
	}
	s, err := c.h1.NewStream(ctx)
	if err != nil {
		detach(hs)
		p.closeLocked(c, closeCodec)
		return nil, nil, err
	}
	return c, s, nil
}

// countBytes makes the bytes the codec moves over nc count in the cluster's
// upstream_cx_tx_bytes_total and upstream_cx_rx_bytes_total, as Envoy counts
// them: above the transport socket, so TLS's own records are not counted. A
// plain TCP conn counts them itself (keeping the HTTP/1.1 codec's
// WriteRead); any other is wrapped.
func countBytes(nc net.Conn, cl *upstream.Cluster) net.Conn {
	tx, rx := cl.ByteCounters()
	if c, ok := nc.(*netio.Conn); ok {
		c.CountBytes(tx, rx)
		return c
	}
	return &countedConn{Conn: nc, tx: tx, rx: rx}
}

// countedConn is a conn whose Read and Write count the bytes they move.
type countedConn struct {
	net.Conn
	tx, rx stats.Counter
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rx.Add(uint64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.tx.Add(uint64(n))
	return n, err
}

// CloseWrite half-closes the conn under c, if it can.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// socketOf is the socket under nc, plain TCP or TLS, or nil.
func socketOf(nc net.Conn) syscall.RawConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}

// startDurationLocked arms c's max_connection_duration timer, if the
// cluster sets one: one timer per connection, from its connect, as Envoy's
// connection_duration_timer_.
func (p *Pool) startDurationLocked(c *Conn, cfg *upstream.Config) {
	if d := cfg.HTTP.MaxConnectionDuration; d > 0 {
		c.durTimer = time.AfterFunc(d-time.Since(c.created), func() { p.durationReached(c) })
	}
}

// durationReached drains c, whose max_connection_duration is up, as Envoy's
// ActiveClient::onConnectionDurationTimeout: counted in
// upstream_cx_max_duration_reached unless it was draining already (its
// max_requests_per_connection reached), it takes no new stream and is
// closed now if idle, else once its last stream ends (Release).
func (p *Pool) durationReached(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.closed || c.draining {
		return
	}
	if limit := p.cl.Config().HTTP.MaxRequestsPerConnection; limit > 0 && c.requests >= limit {
		return
	}
	c.draining = true
	p.cl.HTTPStats().CxMaxDurationReach.Inc()
	if c.h2 != nil {
		if c.streams == 0 {
			p.closeLocked(c, closeLocal)
		}
		return
	}
	if i := slices.Index(p.idle, c); i >= 0 {
		p.idle = slices.Delete(p.idle, i, i+1)
		p.closeLocked(c, closeLocal)
	}
}

// upstreamClosed handles the upstream's close of c (or its shutdown of its
// side), which the closeWatcher saw: an idle connection is closed and
// counted in upstream_cx_destroy_remote, as Envoy's pool does on the
// connection's RemoteClose; one carrying a request is not reused.
func (p *Pool) upstreamClosed(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.closed {
		return
	}
	c.upstreamClosed = true
	if i := slices.Index(p.idle, c); i >= 0 {
		p.idle = slices.Delete(p.idle, i, i+1)
		p.closeLocked(c, closeRemote)
	}
}

// idleLocked puts an HTTP/1.1 connection on the idle stack; the first time,
// it registers it with the Manager's closeWatcher.
func (p *Pool) idleLocked(c *Conn, now time.Time) {
	c.idleSince = now
	if c.sock != nil {
		if w := p.m.watcher; w != nil {
			w.add(c, c.sock)
		}
		c.sock = nil
	}
	p.idle = append(p.idle, c)
}

// watchH2 accounts for an HTTP/2 connection that ends by itself (GOAWAY, an
// error, the upstream closing it).
func (p *Pool) watchH2(c *Conn) {
	<-c.h2.Done()
	p.mu.Lock()
	if c.streams == 0 {
		p.closeLocked(c, closeCodec)
	}
	p.wakeLocked()
	p.mu.Unlock()
}

// Release gives back a connection from Acquire, once its stream is closed.
// Given the pool Acquire was called on, it gives it back to the pool the
// connection is of (see Acquire on a dropped pool).
func (p *Pool) Release(c *Conn) {
	if c.p != p {
		c.p.Release(c)
		return
	}
	now := time.Now()
	detach(p.cl.HTTPStats())
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.closed {
		return
	}
	if p.http2 {
		c.streams--
		if c.streams == 0 {
			c.idleSince = now
			select {
			case <-c.h2.Done():
				p.closeLocked(c, closeCodec)
			default:
				if why := p.reusable(c, now); why != keep {
					p.closeLocked(c, why)
				}
			}
		}
		p.wakeLocked()
		return
	}
	switch {
	case c.upstreamClosed:
		p.closeLocked(c, closeRemote)
	case !c.h1.Available():
		p.closeLocked(c, closeCodec)
	case p.dead:
		p.closeLocked(c, closeLocal)
	default:
		if why := p.reusable(c, now); why != keep {
			p.closeLocked(c, why)
		} else {
			p.idleLocked(c, now)
		}
	}
	p.wakeLocked()
}

// closeCause is why a connection is closed, or keep.
type closeCause uint8

const (
	keep        closeCause = iota // not closed: it may carry another request
	closeLocal                    // skiff retires it (Envoy's LocalClose)
	closeRemote                   // the upstream closed it (RemoteClose)
	// closeCodec: the codec closed it: remote if the upstream closed or
	// reset it (the codec's PeerClosed, or the closeWatcher saw it), local
	// otherwise (a response that ends the connection, a protocol error, a
	// reset stream), as Envoy's pool counts the connection's close event.
	closeCodec
)

// reusable reports whether c may carry another request (keep), or why it is
// to be closed.
func (p *Pool) reusable(c *Conn, now time.Time) closeCause {
	hc := &p.cl.Config().HTTP
	hs := p.cl.HTTPStats()
	switch {
	case p.host.Gone():
		return closeLocal
	case c.transport != p.host.Transport():
		// The cluster (with a transport socket of its own) was updated:
		// as Envoy drains an updated cluster's pools, new requests get
		// new connections.
		return closeLocal
	case c.draining: // counted when its duration timer fired
		return closeLocal
	case hc.MaxRequestsPerConnection > 0 && c.requests >= hc.MaxRequestsPerConnection:
		hs.CxMaxRequests.Inc()
		return closeLocal
	case hc.MaxConnectionDuration > 0 && now.Sub(c.created) >= hc.MaxConnectionDuration:
		// Its timer is late, or a cluster update set the limit after the
		// connection was made.
		hs.CxMaxDurationReach.Inc()
		return closeLocal
	case c.h1 != nil && !c.idleSince.IsZero() && now.Sub(c.idleSince) >= PeekAfter && !c.alive():
		return closeRemote
	}
	if idle := hc.Idle(); idle > 0 && !c.idleSince.IsZero() && now.Sub(c.idleSince) >= idle && (c.h1 != nil || c.streams == 0) {
		hs.CxIdleTimeout.Inc()
		return closeLocal
	}
	return keep
}

// alive peeks at an idle HTTP/1.1 connection without blocking: an upstream
// that closed it (or sent something unasked, such as a 408) makes it unfit
// for reuse.
func (c *Conn) alive() bool {
	if c.tls != nil {
		return c.aliveTLS()
	}
	if c.raw == nil {
		return true
	}
	c.peekN, c.peekErr = 0, nil
	if err := c.raw.Read(c.peekFn); err != nil {
		return false
	}
	switch {
	case c.peekErr == syscall.EAGAIN:
		return true
	case c.peekErr != nil:
		return false
	}
	return false // EOF (0 bytes) or unexpected bytes
}

// aliveTLS reads, without waiting, what an idle TLS connection has received
// through TLS: nothing, or a TLS 1.3 session ticket or key update (which the
// server may send at any time), leave it fit for reuse; an alert
// (close_notify), the end of the stream, stray bytes or a renegotiation
// (which cannot complete without waiting) do not.
func (c *Conn) aliveTLS() bool {
	nc, ok := c.tls.NetConn().(*netio.Conn)
	if !ok {
		return true
	}
	nc.SetNonblockingReads(true)
	n, err := c.tls.Read(c.peekBuf[:])
	nc.SetNonblockingReads(false)
	return n == 0 && errors.Is(err, netio.ErrWouldBlock) && c.tls.ConnectionState().HandshakeComplete
}

func (c *Conn) peek(fd uintptr) bool {
	c.peekN, _, c.peekErr = syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return true
}

// peerClosed reports whether c's codec ended because the upstream closed
// or reset the connection.
func (c *Conn) peerClosed() bool {
	if c.h2 != nil {
		return c.h2.PeerClosed()
	}
	return c.h1.PeerClosed()
}

// closeLocked closes c and accounts for it: upstream_cx_destroy and, by
// why, upstream_cx_destroy_local or _remote. p.mu is held.
func (p *Pool) closeLocked(c *Conn, why closeCause) {
	if c.closed {
		return
	}
	c.closed = true
	if c.durTimer != nil {
		c.durTimer.Stop()
	}
	if c.watchID != 0 {
		p.m.watcher.remove(c.watchID)
	}
	if why == closeCodec {
		why = closeLocal
		if c.upstreamClosed || c.peerClosed() {
			why = closeRemote
		}
	}
	if c.h2 != nil {
		for i, x := range p.conns {
			if x == c {
				p.conns = append(p.conns[:i], p.conns[i+1:]...)
				break
			}
		}
		// Close waits for the connection's goroutines; watchH2 may be one
		// waiting for p.mu, so it runs without it.
		p.m.bg.Go(func() { c.h2.Close() })
	} else {
		c.h1.Close()
	}
	p.total--
	hs := p.cl.HTTPStats()
	hs.Conns.Add(-1)
	hs.CxDestroy.Inc()
	switch why {
	case closeLocal:
		hs.CxDestroyLocal.Inc()
	case closeRemote:
		hs.CxDestroyRemote.Inc()
	}
	p.cl.Disconnected(p.host)
	p.cl.Release()
	p.wakeLocked()
}

// wakeLocked wakes the requests waiting for a connection.
func (p *Pool) wakeLocked() {
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}

// sweep closes expired idle connections and reports whether the pool is
// empty and unused for long enough to be dropped.
func (p *Pool) sweep(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.idle[:0]
	for _, c := range p.idle {
		if why := p.reusableIdle(c, now); why == keep {
			kept = append(kept, c)
		} else {
			p.closeLocked(c, why)
		}
	}
	clear(p.idle[len(kept):])
	p.idle = kept
	for i := 0; i < len(p.conns); i++ {
		c := p.conns[i]
		if c.streams > 0 {
			continue
		}
		if why := p.reusableIdle(c, now); why != keep {
			p.closeLocked(c, why)
			i--
		}
	}
	if p.total == 0 && p.waiters == 0 && (p.host.Gone() || now.Sub(p.lastUsed) > emptyPoolLife) {
		p.dead = true
		return true
	}
	return false
}

// reusableIdle is what the sweep checks of an idle connection: what
// reusable does but the limits on requests and duration (which Release and
// the duration timer see to), and the liveness peek only for an HTTP/1.1
// connection the closeWatcher does not watch (it could not be registered),
// so that one the upstream closed does not linger in CLOSE-WAIT.
func (p *Pool) reusableIdle(c *Conn, now time.Time) closeCause {
	if c.h2 != nil {
		select {
		case <-c.h2.Done():
			return closeCodec
		default:
		}
	}
	hc := &p.cl.Config().HTTP
	if p.host.Gone() || c.transport != p.host.Transport() {
		return closeLocal
	}
	if idle := hc.Idle(); idle > 0 && !c.idleSince.IsZero() && now.Sub(c.idleSince) >= idle {
		p.cl.HTTPStats().CxIdleTimeout.Inc()
		return closeLocal
	}
	if c.h1 != nil && c.watchID == 0 && now.Sub(c.idleSince) >= PeekAfter && !c.alive() {
		return closeRemote
	}
	return keep
}

// closeAll closes every connection of the pool.
func (p *Pool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dead = true
	for _, c := range p.idle {
		p.closeLocked(c, closeLocal)
	}
	p.idle = nil
	for len(p.conns) > 0 {
		p.closeLocked(p.conns[0], closeLocal)
	}
}
