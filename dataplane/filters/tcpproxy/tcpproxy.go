// Package tcpproxy is the network filter envoy.filters.network.tcp_proxy: it
// connects each downstream connection to a host of an upstream cluster and copies
// bytes both ways until both sides are done.
package tcpproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/accesslog"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.network.tcp_proxy"

// DefaultIdleTimeout is Envoy's tcp_proxy idle_timeout when none is configured.
const DefaultIdleTimeout = time.Hour

// Factory builds tcp_proxy filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &tcpv3.TcpProxy{} }

// Create implements filter.NetworkFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (filter.NetworkFilter, error) {
	cfg := m.(*tcpv3.TcpProxy)
	if err := cfgerr.OnlyFields(cfg, "stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts",
		"max_downstream_connection_duration", "hash_policy", "access_log", "tunneling_config"); err != nil {
		return nil, err
	}
	logs, err := accesslog.Build(cfg.GetAccessLog(), accesslog.Options{
		Sinks: fc.AccessLogs, Clusters: fc.Clusters, Node: fc.Node, Stats: fc.Stats, Logger: fc.Logger, Runtime: fc.Runtime,
	})
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		clusters:    fc.Clusters,
		idleTimeout: DefaultIdleTimeout,
		maxAttempts: 1,
		log:         fc.Logger,
		copyCfg:     netio.Config{Buffers: fc.Buffers, Pipes: fc.Pipes},
		logs:        logs,
	}
	switch sp := cfg.GetClusterSpecifier().(type) {
	case *tcpv3.TcpProxy_Cluster:
		if sp.Cluster == "" {
			return nil, cfgerr.Errorf("cluster", "must not be empty")
		}
		p.clusterNames = []string{sp.Cluster}
		p.weights = []uint32{1}
	case *tcpv3.TcpProxy_WeightedClusters:
		for i, cw := range sp.WeightedClusters.GetClusters() {
			if err := cfgerr.OnlyFields(cw, "name", "weight"); err != nil {
				return nil, cfgerr.Index("weighted_clusters.clusters", i, err)
			}
			p.clusterNames = append(p.clusterNames, cw.GetName())
			p.weights = append(p.weights, cw.GetWeight())
			p.total += uint64(cw.GetWeight()) // each at least 1 (proto constraint)
		}
	default:
		return nil, cfgerr.Errorf("cluster", "one of cluster or weighted_clusters is required")
	}
	if t := cfg.GetIdleTimeout(); t != nil {
		// 0 disables it; a negative one is an error (Envoy's
		// DurationUtil::durationToMilliseconds: "Expected positive
		// duration").
		if p.idleTimeout = t.AsDuration(); p.idleTimeout < 0 {
			return nil, cfgerr.Errorf("idle_timeout", "must not be negative, got %v", p.idleTimeout)
		}
	}
	if n := cfg.GetMaxConnectAttempts(); n != nil {
		p.maxAttempts = int(n.GetValue()) // the proto requires >= 1
	}
	switch hp := cfg.GetHashPolicy(); {
	case len(hp) > 1:
		return nil, cfgerr.Errorf("hash_policy", "at most one, as in Envoy")
	case len(hp) == 1:
		if err := cfgerr.OnlyFields(hp[0], "source_ip"); err != nil {
			return nil, cfgerr.Index("hash_policy", 0, err)
		}
		if hp[0].GetSourceIp() == nil {
			return nil, cfgerr.Errorf("hash_policy[0]", "source_ip is required")
		}
		p.hashSourceIP = true
	}
	if d := cfg.GetMaxDownstreamConnectionDuration(); d != nil {
		if p.maxDuration = d.AsDuration(); p.maxDuration < time.Millisecond {
			return nil, cfgerr.Errorf("max_downstream_connection_duration", "must be at least 1ms, got %v", p.maxDuration)
		}
	}
	if tc := cfg.GetTunnelingConfig(); tc != nil {
		if p.tunnel, err = newTunneling(tc, fc); err != nil {
			return nil, cfgerr.Field("tunneling_config", err)
		}
	}
	p.copyCfg.IdleTimeout = p.idleTimeout
	prefix := "tcp." + cfg.GetStatPrefix() + "."
	p.stats = proxyStats{
		cxTotal:     fc.Stats.Counter(prefix + "downstream_cx_total"),
		noRoute:     fc.Stats.Counter(prefix + "downstream_cx_no_route"),
		rxBytes:     fc.Stats.Counter(prefix + "downstream_cx_rx_bytes_total"),
		txBytes:     fc.Stats.Counter(prefix + "downstream_cx_tx_bytes_total"),
		idleTimeout: fc.Stats.Counter(prefix + "idle_timeout"),
		maxDuration: fc.Stats.Counter(prefix + "max_downstream_connection_duration"),
		flushActive: fc.Stats.Gauge(prefix + "upstream_flush_active"),
	}
	return p, nil
}

type proxyStats struct {
	cxTotal, noRoute, rxBytes, txBytes, idleTimeout, maxDuration stats.Counter
	flushActive                                                  stats.Gauge
}

// Proxy is a built tcp_proxy filter. It keeps no per-connection state.
type Proxy struct {
	clusters     *upstream.Manager
	clusterNames []string
	weights      []uint32
	total        uint64
	idleTimeout  time.Duration
	maxDuration  time.Duration // max_downstream_connection_duration; 0: none
	hashSourceIP bool          // hash_policy source_ip: where RING_HASH or MAGLEV place a connection
	maxAttempts  int
	stats        proxyStats
	copyCfg      netio.Config
	tunnel       *tunneling // tunneling_config; nil: plain TCP upstream
	log          *slog.Logger
	logs         []accesslog.Logger
}

// OnConnection implements filter.NetworkFilter.
func (*Proxy) OnConnection(context.Context, *filter.Conn) error { return nil }

// pickCluster chooses the cluster for a connection (by weight, at random, as
// Envoy does for weighted_clusters).
func (p *Proxy) pickCluster() string {
	if len(p.clusterNames) == 1 {
		return p.clusterNames[0]
	}
	r := rand.Uint64N(p.total)
	for i, w := range p.weights {
		if r < uint64(w) {
			return p.clusterNames[i]
		}
		r -= uint64(w)
	}
	return p.clusterNames[len(p.clusterNames)-1]
}

// pickHost picks the host of a connect attempt: an ORIGINAL_DST cluster's for
// the original destination a listener filter restored (none without), else
// as the cluster balances, by the client's address with hash_policy
// source_ip (another attempt looks further along the ring or table).
func (p *Proxy) pickHost(c *filter.Conn, cl *upstream.Cluster, attempt int) *upstream.Host {
	switch {
	case cl.OriginalDst() != nil:
		if !c.LocalRestored {
			return cl.PickOriginal(netip.AddrPort{})
		}
		return cl.PickOriginal(c.Local)
	case p.hashSourceIP && cl.HashBased() && c.Remote.IsValid():
		return cl.PickHash(xxhash.Sum64String(c.Remote.Addr().String()), uint32(attempt-1))
	}
	return cl.Pick()
}

// ServeConn implements filter.TerminalFilter.
func (p *Proxy) ServeConn(ctx context.Context, c *filter.Conn) {
	p.stats.cxTotal.Inc()
	start := time.Now()
	name := p.pickCluster()
	cl := p.clusters.Get(name)
	if cl != nil && !cl.Acquire() {
		cl = nil // removed just now
	}
	if cl == nil {
		p.stats.noRoute.Inc()
		p.log.Warn("tcp_proxy: no such cluster; closing downstream", "conn", c.ID, "cluster", name)
		c.Close()
		p.accessLog(ctx, c, start, &upstreamInfo{cluster: name}, netio.Result{}, http.FlagNoClusterFound)
		return
	}
	defer cl.Release()
	ctx, stop := p.limitDuration(ctx, start)
	defer stop()
	ui := &upstreamInfo{cluster: name}
	var up net.Conn
	var host *upstream.Host
	var flag http.ResponseFlag
	if p.tunnel != nil {
		up, host, flag = p.connectTunnel(ctx, c, cl, ui, start)
	} else {
		up, host, flag = p.connect(ctx, c, cl, ui)
	}
	if up == nil {
		if context.Cause(ctx) == errMaxDuration {
			p.stats.maxDuration.Inc()
			flag = http.FlagDurationTimeout
		}
		c.Close()
		p.accessLog(ctx, c, start, ui, netio.Result{}, flag)
		return
	}
	how := p.proxy(ctx, c, cl, host, up, [2][]byte{}, start, ui)
	if p.tunnel == nil { // a tunnel's connection is its pool's
		cl.Closed(host, how)
	}
}

// errMaxDuration is the cause of a connection's context ending at
// max_downstream_connection_duration.
var errMaxDuration = errors.New("tcp_proxy: max_downstream_connection_duration reached")

// limitDuration bounds a connection that began at start by
// max_downstream_connection_duration, as Envoy does from the moment the
// filter gets the connection: its context ends then, with errMaxDuration as
// the cause, which closes both sides.
func (p *Proxy) limitDuration(ctx context.Context, start time.Time) (context.Context, context.CancelFunc) {
	if p.maxDuration <= 0 {
		return ctx, func() {}
	}
	return context.WithDeadlineCause(ctx, start.Add(p.maxDuration), errMaxDuration)
}

// upstreamInfo is what a connection's access log entry says of its upstream,
// as Envoy's tcp_proxy records it: the cluster, the host last tried (also when
// connecting to it failed), the upstream connection's local address, the
// number of connect attempts and why the last one failed.
type upstreamInfo struct {
	cluster  string
	host     netip.AddrPort
	pipe     string // a pipe host's socket path
	local    netip.AddrPort
	attempts int
	failure  string
	// flags are those of a connect that succeeded: UF if an attempt failed
	// before (Envoy never clears a response flag).
	flags    http.ResponseFlag
	tls      *tls.ConnectionState // nil: plain TCP
	tlsLocal *x509.Certificate
}

// accessLog writes the connection's access log entries, Envoy's TCP ones:
// no request, the bytes each way, the upstream, and the response flags (NC,
// UO, UH, UF, URX) of a connection that found no upstream.
func (p *Proxy) accessLog(ctx context.Context, c *filter.Conn, start time.Time, ui *upstreamInfo, res netio.Result, flags http.ResponseFlag) {
	if len(p.logs) == 0 {
		return
	}
	e := http.NewExchange(ctx, nil)
	in := &e.Info
	in.Start = start
	in.Duration = time.Since(start)
	in.ConnectionID = c.ID
	in.DownstreamLocal, in.DownstreamRemote, in.DownstreamDirectRemote = c.Local, c.Remote, c.DirectRemote
	in.RequestedServerName = c.ServerName
	in.DownstreamTLS, in.DownstreamLocalCert = c.TLS, c.TLSLocal
	in.UpstreamCluster = ui.cluster
	in.UpstreamHost, in.UpstreamPipe, in.UpstreamLocal = ui.host, ui.pipe, ui.local
	in.UpstreamTLS, in.UpstreamLocalCert = ui.tls, ui.tlsLocal
	in.UpstreamAttempts = ui.attempts
	in.UpstreamTransportFailureReason = ui.failure
	in.BytesReceived, in.BytesSent = res.Sent, res.Received
	in.SetFlags(ui.flags) // connect's first, in the order Envoy sets them
	in.SetFlags(flags)
	for _, l := range p.logs {
		l.Log(e)
	}
}

// upstreamLocal is up's local address for the access log
// (%UPSTREAM_LOCAL_ADDRESS%), or the zero AddrPort when there is no access
// log: a dialed conn asks the kernel for it, a system call.
func (p *Proxy) upstreamLocal(up net.Conn) netip.AddrPort {
	if len(p.logs) == 0 {
		return netip.AddrPort{}
	}
	return netio.AddrPort(up.LocalAddr())
}

// Adopts implements filter.Adopter: a TCP proxy resumes TCP proxy pairs.
func (p *Proxy) Adopts(kind filter.MovedKind) bool { return kind == filter.MovedTCPPair }

// Adopt implements filter.Adopter: it resumes a pair a hot-restart parent moved.
// The upstream connection counts toward its cluster and host if they still
// exist; the pair is resumed either way.
func (p *Proxy) Adopt(ctx context.Context, c *filter.Conn, m *filter.MovedConn) {
	cl := p.clusters.Get(m.Cluster)
	if cl != nil && !cl.Acquire() {
		cl = nil
	}
	var host *upstream.Host
	if cl != nil {
		defer cl.Release()
		host = cl.Adopted(m.Host)
	}
	// The connection's time runs on from when the parent began serving it.
	start := m.Started
	if start.IsZero() {
		start = time.Now()
	}
	ctx, stop := p.limitDuration(ctx, start)
	defer stop()
	ui := &upstreamInfo{cluster: m.Cluster, host: m.Host, local: p.upstreamLocal(m.Up)}
	how := p.proxy(ctx, c, cl, host, m.Up, m.Pending, start, ui)
	if host != nil {
		cl.Closed(host, how)
	}
}

// proxy copies between c and up until the pair ends, or until a hot restart
// moves it (then the conns are left to the successor). It says how the
// upstream connection ended, for its cluster's upstream_cx_destroy_*.
func (p *Proxy) proxy(ctx context.Context, c *filter.Conn, cl *upstream.Cluster, host *upstream.Host, up net.Conn, pending [2][]byte, start time.Time, ui *upstreamInfo) upstream.CloseKind {
	mv := &mover{p: p, down: c.Conn, up: up, start: start}
	mv.ran.Add(1)
	cfg := p.copyCfg
	mv.sent[0], mv.received[0] = p.stats.rxBytes, p.stats.txBytes
	cfg.SentCounters, cfg.ReceivedCounters = mv.sent[:1], mv.received[:1]
	if cl != nil {
		mv.sent[1], mv.received[1] = cl.ByteCounters()
		cfg.SentCounters, cfg.ReceivedCounters = mv.sent[:], mv.received[:]
	}
	pair := netio.ResumePair(c.Conn, up, &cfg, pending)
	mv.pair = pair
	if cl != nil {
		mv.cluster = cl.Name()
	}
	if host != nil {
		mv.host = host.Addr
	}
	if netio.IsSocket(c.Conn) && netio.IsSocket(up) { // a TLS session cannot move: it drains here
		c.SetMover(mv)
	}
	res := pair.Run(ctx)
	c.SetMover(nil)
	mv.result = res
	mv.ran.Done()
	if res.End == netio.Paused {
		// A hot restart took the pair (Move made released before it paused
		// it): wait until the successor has its copies of the conns, which
		// Release closes here.
		mv.mu.Lock()
		released := mv.released
		mv.mu.Unlock()
		select {
		case <-released:
			c.MarkMoved()
		case <-ctx.Done():
			c.Close()
			up.Close()
			return upstream.LocalClose
		}
		p.log.Debug("tcp_proxy: connection moved to the successor", "conn", c.ID, "cluster", mv.cluster)
		return upstream.HandedOver
	}
	var flags http.ResponseFlag
	switch {
	case res.End == netio.IdleTimeout:
		p.stats.idleTimeout.Inc()
	case res.End == netio.Canceled && errors.Is(res.Err, errMaxDuration):
		p.stats.maxDuration.Inc()
		flags = http.FlagDurationTimeout
	}
	if p.log.Enabled(ctx, slog.LevelDebug) { // the arguments would cost allocations per connection
		p.log.Debug("tcp_proxy: connection done", "conn", c.ID, "cluster", mv.cluster, "upstream", mv.host,
			"sent", res.Sent, "received", res.Received, "end", res.End.String(), "error", res.Err)
	}
	p.accessLog(ctx, c, start, ui, res, flags)
	return closeKind(res.End)
}

// closeKind is how a pair that ended with end closed its upstream
// connection: the host's reset or end of stream (Envoy's RemoteClose), or
// skiff's close (an idle timeout, the downstream's reset, the context).
//
// A pair whose two directions both reached end of stream counts as the
// host's close. Envoy tells by which half-close came last (the host's end
// of stream after skiff's: RemoteClose; skiff's after the host's:
// LocalClose), which netio.Result does not say.
func closeKind(end netio.EndReason) upstream.CloseKind {
	switch end {
	case netio.Closed, netio.UpstreamReset:
		return upstream.RemoteClose
	}
	return upstream.LocalClose
}

// mover hands a running pair over at a hot restart.
type mover struct {
	p        *Proxy
	pair     *netio.Pair
	down, up net.Conn
	cluster  string
	host     netip.AddrPort
	start    time.Time
	ran      sync.WaitGroup // done when result is set
	result   netio.Result
	mu       sync.Mutex
	released chan struct{} // made by the first Move, closed by Release
	once     sync.Once
	// The byte counters of the pair's two directions: the filter's and, if
	// the cluster still exists, the cluster's (here to save allocations).
	sent, received [2]stats.Counter
}

// Move implements filter.Mover.
func (m *mover) Move() (*filter.MovedConn, bool) {
	m.mu.Lock()
	if m.released == nil { // made here: most connections are never moved
		m.released = make(chan struct{})
	}
	m.mu.Unlock()
	m.pair.Pause()
	m.ran.Wait()
	res := m.result
	if res.End != netio.Paused || res.Err != nil {
		return nil, false
	}
	return &filter.MovedConn{
		Down: m.down, Up: m.up, Pending: res.Pending,
		Cluster: m.cluster, Host: m.host, IdleTimeout: m.p.idleTimeout, Started: m.start,
		Release: func() {
			m.once.Do(func() {
				m.down.Close()
				m.up.Close()
				close(m.released)
			})
		},
	}, true
}

// connect tries up to max_connect_attempts hosts, the load balancer choosing each,
// and notes in ui the host last tried, the attempts and the upstream's local
// address or why the last attempt failed. It returns the response flags of a
// failure (and UF after a success that followed a failed attempt, also
// kept in ui), as Envoy's tcp_proxy sets them: UO (the cluster's
// max_connections are all in use, checked before each attempt), UH (no
// healthy host), UF (connection failure) and, when every attempt failed,
// UF then URX, counted in the cluster's
// upstream_cx_connect_attempts_exceeded. A success holds room under
// max_connections until the caller's Closed.
//
// Several flags are set in their bits' order, which is the order Envoy sets
// them in here (UF before UO or URX).
func (p *Proxy) connect(ctx context.Context, c *filter.Conn, cl *upstream.Cluster, ui *upstreamInfo) (net.Conn, *upstream.Host, http.ResponseFlag) {
	var failed http.ResponseFlag // UF once an attempt failed
	for attempt := 1; attempt <= p.maxAttempts; attempt++ {
		if !cl.ReserveConnection() {
			p.log.Warn("tcp_proxy: cluster's max_connections reached; closing downstream", "conn", c.ID, "cluster", cl.Name())
			return nil, nil, failed | http.FlagUpstreamOverflow
		}
		h := p.pickHost(c, cl, attempt)
		if h == nil {
			cl.ReleaseConnection()
			p.log.Warn("tcp_proxy: no healthy upstream; closing downstream", "conn", c.ID, "cluster", cl.Name())
			return nil, nil, failed | http.FlagNoHealthyUpstream
		}
		ui.host, ui.pipe, ui.attempts = h.Addr, h.Pipe, attempt
		up, err := cl.Connect(ctx, h)
		if err == nil {
			cl.ReportOutcome(h, upstream.ConnectedFinal)
			ui.local = p.upstreamLocal(up)
			ui.tls, ui.tlsLocal = upstream.TLSSession(up, h.Transport())
			ui.flags = failed
			return up, h, failed
		}
		cl.ReleaseConnection()
		failed = http.FlagUpstreamConnectionFailure
		if ctx.Err() == nil {
			cl.ReportOutcome(h, upstream.ConnectFailed)
		}
		ui.failure = upstream.FailureReason(err)
		p.log.Warn("tcp_proxy: upstream connect failed", "conn", c.ID, "cluster", cl.Name(), "host", h,
			"attempt", attempt, "max_connect_attempts", p.maxAttempts, "error", err)
		if ctx.Err() != nil {
			return nil, nil, failed
		}
	}
	cl.ConnectAttemptsExceeded()
	return nil, nil, failed | http.FlagUpstreamRetryLimitExceeded
}
