package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// listenerStats are a listener's stat handles, named as in Envoy. As there, a
// connection is in downstream_pre_cx_active from its accept until its filter
// chain is chosen, and only one a chain took is counted in downstream_cx_total,
// _active and _destroy (Envoy's ActiveTcpSocket and ActiveTcpConnection); one
// that matches no chain is only counted in no_filter_chain_match, one that a
// listener filter ends in downstream_pre_cx_timeout,
// downstream_listener_filter_remote_close (the client closed it) or
// downstream_listener_filter_error.
type listenerStats struct {
	cxTotal, cxDestroy, noChainMatch, preCxTimeout stats.Counter
	filterError, filterRemoteClose                 stats.Counter // downstream_listener_filter_error, _remote_close
	transportTimeout                               stats.Counter // downstream_cx_transport_socket_connect_timeout
	cxActive, preCxActive                          stats.Gauge
}

func newListenerStats(sc *stats.Scope) listenerStats {
	return listenerStats{
		cxTotal:           sc.Counter("downstream_cx_total"),
		cxDestroy:         sc.Counter("downstream_cx_destroy"),
		noChainMatch:      sc.Counter("no_filter_chain_match"),
		filterError:       sc.Counter("downstream_listener_filter_error"),
		filterRemoteClose: sc.Counter("downstream_listener_filter_remote_close"),
		preCxTimeout:      sc.Counter("downstream_pre_cx_timeout"),
		transportTimeout:  sc.Counter("downstream_cx_transport_socket_connect_timeout"),
		cxActive:          sc.Gauge("downstream_cx_active"),
		preCxActive:       sc.Gauge("downstream_pre_cx_active"),
	}
}

// Options are what a Listener needs besides its Config.
type Options struct {
	Logger  *slog.Logger
	Stats   *stats.Store
	Sockets *SocketTable
	// ConnIDs numbers connections across all listeners.
	ConnIDs *atomic.Uint64
	// ByAddress finds the listener for a restored original destination (a
	// listener of that address, else of the wildcard address with its port),
	// or nil; for use_original_dst.
	ByAddress func(netip.AddrPort) *Listener
	// Serving counts the connection goroutines of all listeners, so that the
	// owner can wait for every connection to end.
	Serving *sync.WaitGroup
	// Pending, if set, holds the connections running their listener
	// filters, for the owner to end (see PendingConns).
	Pending *PendingConns
}

// Listener accepts connections on its sockets and serves each with the filter
// chain it matches in the listener's current Config. Update swaps the Config
// without closing the sockets; connections keep the chain they were accepted with.
type Listener struct {
	name    string
	cfg     atomic.Pointer[Config]
	opts    Options
	stats   listenerStats
	scope   *stats.Scope
	sockets []*Socket
	log     *slog.Logger
	// refs counts the accepting listener (until StopAccepting) and each
	// connection being served; the stats scope is released with the last.
	refs atomic.Int64

	mu      sync.Mutex
	stopped bool

	sslOnce sync.Once
	ssl     *tlscontext.Stats

	// workers are the connection goroutines; closed with the last reference.
	workers workers
}

// Start binds (or takes from the socket table) every socket of cfg; the
// listener accepts once Accept is called. On error nothing stays bound.
func Start(cfg *Config, opts Options) (*Listener, error) {
	sc := opts.Stats.Scope("listener." + cfg.StatPrefix + ".")
	l := &Listener{name: cfg.Name, opts: opts, scope: sc, stats: newListenerStats(sc)}
	l.refs.Store(1)
	l.log = opts.Logger.With("listener", cfg.Name)
	l.cfg.Store(cfg)
	if cfg.Unbound.IsValid() {
		l.log.Info("listener ready, not bound: connections reach it by their original destination", "address", cfg.Unbound.String())
		return l, nil
	}
	for i, spec := range cfg.Sockets {
		s, err := opts.Sockets.Acquire(spec, cfg.Name+"/"+strconv.Itoa(i))
		if err != nil {
			l.release()
			l.unref()
			return nil, cfgerr.Field(SocketPath(i), err)
		}
		l.sockets = append(l.sockets, s)
		l.log.Info("listener bound", "address", s.Bound.String())
	}
	return l, nil
}

// Accept makes the listener's sockets hand their connections to it: it starts
// accepting (or, on a socket shared with a listener it replaces, takes over).
func (l *Listener) Accept() {
	for _, s := range l.sockets {
		s.setHandler(l)
	}
}

// Name is the listener's name.
func (l *Listener) Name() string { return l.name }

// Config returns the listener's current configuration.
func (l *Listener) Config() *Config { return l.cfg.Load() }

// Sockets returns the listener's sockets.
func (l *Listener) Sockets() []*Socket { return l.sockets }

// Addresses are the addresses connections reach the listener at: its
// sockets', or the one of a listener that does not bind.
func (l *Listener) Addresses() []netip.AddrPort {
	if a := l.cfg.Load().Unbound; a.IsValid() {
		return []netip.AddrPort{a}
	}
	return l.Bound()
}

// HandOverTo moves new connections for every address this listener shares with
// next (a replacement bound with other socket options) to next's sockets, so
// that stopping this listener afterwards refuses nothing. See Handover.
func (l *Listener) HandOverTo(next *Listener) error {
	var first error
	for _, old := range l.sockets {
		for _, s := range next.sockets {
			if s != old && s.Bound == old.Bound {
				if err := Handover(old, s, time.Second); err != nil && first == nil {
					first = err
				}
			}
		}
	}
	return first
}

// Bound returns the addresses the listener's sockets are bound to; for a port of
// 0 they hold the port the system chose.
func (l *Listener) Bound() []netip.AddrPort {
	out := make([]netip.AddrPort, len(l.sockets))
	for i, s := range l.sockets {
		out[i] = s.Bound
	}
	return out
}

// Update makes cfg the listener's configuration for new connections. cfg must
// have the same socket specs as the current one. It returns the chains of the old
// configuration that cfg no longer uses; the caller drains them.
func (l *Listener) Update(cfg *Config) (retired []*FilterChain) {
	old := l.cfg.Swap(cfg)
	keep := map[*FilterChain]bool{cfg.DefaultChain: true}
	for _, ch := range cfg.Chains {
		keep[ch] = true
	}
	for _, ch := range AllChains(old) {
		if !keep[ch] {
			retired = append(retired, ch)
		}
	}
	return retired
}

// AllChains returns every chain of cfg, the default one last.
func AllChains(cfg *Config) []*FilterChain {
	out := append([]*FilterChain(nil), cfg.Chains...)
	if cfg.DefaultChain != nil {
		out = append(out, cfg.DefaultChain)
	}
	return out
}

// StopAccepting gives the listener's sockets back to the table (closing those no
// other listener uses). Connections already accepted go on.
func (l *Listener) StopAccepting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	l.stopped = true
	l.release()
	l.unref()
}

// ref takes a reference for a connection; false once the listener is gone.
func (l *Listener) ref() bool {
	for {
		r := l.refs.Load()
		if r <= 0 {
			return false
		}
		if l.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

func (l *Listener) unref() {
	if l.refs.Add(-1) == 0 {
		l.scope.Close()
		l.workers.close()
	}
}

func (l *Listener) release() {
	for _, s := range l.sockets {
		l.opts.Sockets.Release(s, l)
	}
}

// handle is called by the accept loop of each of the listener's sockets.
func (l *Listener) handle(c net.Conn) {
	if !l.ref() {
		c.Close() // accepted just as the listener stopped
		return
	}
	l.opts.Serving.Add(1)
	if !l.workers.handOff(c) {
		go l.worker(c)
	}
}

// worker serves c and then the connections handed to it, until none comes
// for workerIdle or the listener is done.
func (l *Listener) worker(c net.Conn) {
	w := &worker{next: make(chan net.Conn, 1)}
	for c != nil {
		l.serve(c)
		c = l.workers.wait(w)
	}
}

func (l *Listener) serve(tc net.Conn) {
	defer l.opts.Serving.Done()
	defer l.unref()
	l.serveConn(filter.NewConn(tc, l.opts.ConnIDs.Add(1), l.name, l.log), true)
}

// serveConn runs the listener filters on c, then, if the listener uses the
// original destination and another listener has the restored one, hands c to
// it (mayHandOff: not a connection handed over already), as Envoy's
// ActiveTcpSocket does; else it serves c on the filter chain it matches.
func (l *Listener) serveConn(c *filter.Conn, mayHandOff bool) {
	tc := c.Conn
	cfg := l.cfg.Load()
	l.stats.preCxActive.Inc()
	if cfg.UseOriginalDst && mayHandOff && !c.LocalRestored {
		c.RestoreOriginalDst() // use_original_dst implies the original_dst listener filter
	}
	if len(cfg.ListenerFilters) > 0 && !l.listenerFilters(cfg, c) {
		l.stats.preCxActive.Dec()
		tc.Close()
		return
	}
	if cfg.UseOriginalDst && mayHandOff && c.LocalRestored && l.opts.ByAddress != nil {
		if to := l.opts.ByAddress(c.Local); to != nil && to != l && to.ref() {
			l.stats.preCxActive.Dec()
			defer to.unref()
			c.Listener = to.name
			to.serveConn(c, false)
			return
		}
	}
	ch := l.matchChain(cfg, c)
	l.stats.preCxActive.Dec()
	if ch == nil {
		tc.Close()
		return
	}
	l.stats.cxTotal.Inc()
	l.stats.cxActive.Inc()
	defer l.connEnded(c)
	l.serveChain(ch, c, tc)
}

// matchChain returns the filter chain c matches, or nil (counted and
// logged) if none does.
func (l *Listener) matchChain(cfg *Config, c *filter.Conn) *FilterChain {
	ch := match(cfg.Chains, cfg.DefaultChain, c)
	if ch == nil {
		l.stats.noChainMatch.Inc()
		l.log.Debug("no filter chain matched; closing", "conn", c.ID, "remote", c.Remote, "local", c.Local, "sni", c.ServerName)
	}
	return ch
}

// serveChain serves c on its filter chain. (A function of its own, so that
// serve's and its defers are open-coded: the compiler falls back to the
// runtime's defer records, about 1.5 % of the CPU of a request, when a
// function's defers times returns pass 15.)
func (l *Listener) serveChain(ch *FilterChain, c *filter.Conn, tc net.Conn) {
	ctx, ok := ch.conns.add(c)
	if !ok {
		tc.Close()
		return
	}
	defer ch.conns.remove(c)
	c.SetDrain(ch.conns)
	if ch.tls != nil && !l.handshake(ctx, ch, c) {
		tc.Close()
		return
	}
	for _, f := range ch.filters {
		if err := f.OnConnection(ctx, c); err != nil {
			l.log.Debug("network filter closed the connection", "conn", c.ID, "error", err)
			tc.Close()
			return
		}
	}
	ch.terminal.ServeConn(ctx, c)
}

// sslStats are the listener's TLS stats, made when a filter chain with TLS
// first needs them.
func (l *Listener) sslStats() *tlscontext.Stats {
	l.sslOnce.Do(func() { l.ssl = tlscontext.NewStats(l.scope, true) })
	return l.ssl
}

// handshake terminates TLS on c for its chain: c.Conn becomes the *tls.Conn
// and c.TLS its state. It reports false (counted and logged) if the
// handshake failed, took longer than the chain's
// transport_socket_connect_timeout, or the chain drained first.
func (l *Listener) handshake(ctx context.Context, ch *FilterChain, c *filter.Conn) bool {
	st := l.sslStats()
	if err := ch.tls.Ready(); err != nil {
		// As Envoy: no handshake without the certificates.
		st.SecretsNotReady()
		l.log.Debug("TLS context not ready; closing", "conn", c.ID, "remote", c.Remote, "error", err)
		return false
	}
	tc := tls.Server(c.Conn, ch.tls.Config)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if ch.handshakeTimeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, ch.handshakeTimeout)
		defer cancel()
	}
	// A handshake under way is not a connection to drain gracefully: when
	// skiff shuts down it ends at once, as idle connections do.
	go func() {
		select {
		case <-ch.conns.ClosingIdle():
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := tc.HandshakeContext(ctx); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// transport_socket_connect_timeout: Envoy closes the connection
			// without a TLS error.
			l.stats.transportTimeout.Inc()
		} else {
			st.Failed(err)
		}
		l.log.Debug("TLS handshake failed; closing", "conn", c.ID, "remote", c.Remote, "error", err)
		return false
	}
	cs := tc.ConnectionState()
	st.Handshake(&cs)
	c.Conn, c.TLS, c.TLSLocal = tc, &cs, ch.tls.LocalCertificate(&cs)
	if c.ServerName == "" {
		c.ServerName = cs.ServerName
	}
	c.TransportProtocol = "tls"
	return true
}

// connEnded accounts for the end of a connection served by the listener; one
// moved to a hot-restart successor lives on there.
func (l *Listener) connEnded(c *filter.Conn) {
	l.stats.cxActive.Dec()
	if !c.Moved() {
		l.stats.cxDestroy.Inc()
	}
}

// Adopt serves a connection a hot-restart parent moved: down is its downstream
// side, m the rest. It is matched to a filter chain of the current
// configuration like a new connection (without listener filters: what they
// learned is not carried over) and resumed by the chain's terminal filter if
// that can adopt it; otherwise both sides are closed.
func (l *Listener) Adopt(down net.Conn, m *filter.MovedConn) {
	closeBoth := func() {
		down.Close()
		if m.Up != nil {
			m.Up.Close()
		}
	}
	if !l.ref() {
		closeBoth()
		return
	}
	l.opts.Serving.Add(1)
	go func() {
		defer l.opts.Serving.Done()
		defer l.unref()
		cfg := l.cfg.Load()
		// The parent counted it in downstream_cx_total when it accepted it
		// (the stats region is shared) and took it out of downstream_cx_active
		// when it moved it.
		l.stats.cxActive.Inc()
		c := filter.NewConn(down, l.opts.ConnIDs.Add(1), l.name, l.log)
		defer l.connEnded(c)
		ch := match(cfg.Chains, cfg.DefaultChain, c)
		var ad filter.Adopter
		if ch != nil && ch.tls == nil { // a moved connection is plain: never one for a TLS chain
			ad, _ = ch.terminal.(filter.Adopter)
		}
		if ad == nil || !ad.Adopts(m.Kind) {
			l.log.Warn("hot restart: nothing in the new configuration resumes a moved connection of this kind; closing it", "conn", c.ID, "kind", m.Kind)
			closeBoth()
			return
		}
		ctx, ok := ch.conns.add(c)
		if !ok {
			closeBoth()
			return
		}
		defer ch.conns.remove(c)
		c.SetDrain(ch.conns)
		ad.Adopt(ctx, c, m)
	}()
}

// listenerFilters is runListenerFilters with c among the pending connections
// (Options.Pending) meanwhile.
func (l *Listener) listenerFilters(cfg *Config, c *filter.Conn) bool {
	p := l.opts.Pending
	if p == nil {
		return l.runListenerFilters(cfg, c)
	}
	if !p.add(c, l) {
		return false // the server is closing what is left
	}
	defer p.remove(c)
	return l.runListenerFilters(cfg, c)
}

// runListenerFilters runs cfg's listener filters under the listener filter
// timeout and reports whether the connection goes on to a filter chain.
func (l *Listener) runListenerFilters(cfg *Config, c *filter.Conn) bool {
	ctx := context.Background()
	if t := cfg.ListenerFiltersTimeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
		c.SetReadDeadline(time.Now().Add(t))
		defer c.SetReadDeadline(time.Time{})
	}
	for _, f := range cfg.ListenerFilters {
		err := f.OnAccept(ctx, c)
		if err == nil {
			continue
		}
		switch {
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
			// Counted whether or not the connection goes on
			// (ActiveTcpSocket::onTimeout).
			l.stats.preCxTimeout.Inc()
			if cfg.ContinueOnListenerFiltersTimeout {
				return true
			}
		case errors.Is(err, io.EOF):
			l.stats.filterRemoteClose.Inc()
		default:
			l.stats.filterError.Inc()
		}
		l.log.Debug("listener filter closed the connection", "conn", c.ID, "error", err)
		return false
	}
	return true
}
