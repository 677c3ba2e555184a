package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Host is one upstream endpoint of a cluster. A Host outlives updates of its
// cluster as long as its address stays in the load assignment, so its counters
// and the connections made to it are untouched by unrelated changes.
type Host struct {
	Addr netip.AddrPort
	// Pipe is the path of the unix socket of an endpoint with a pipe
	// address (Addr is then the zero AddrPort).
	Pipe string

	weight   atomic.Uint32
	priority atomic.Uint32
	health   atomic.Int32 // corev3.HealthStatus
	hostname atomic.Pointer[string]
	gone     atomic.Bool // no longer in its cluster's assignment, or the cluster was removed

	// Per-host counters, read by the admin API.
	CxTotal       atomic.Uint64
	CxActive      atomic.Int64
	CxConnectFail atomic.Uint64
	// RqActive counts the requests under way to the host (the router's
	// attempts), which LEAST_REQUEST balances on.
	RqActive atomic.Int64

	// transport is the transport socket transport_socket_matches chose for
	// the endpoint's metadata (tm, ltm).
	transport atomic.Pointer[Transport]
	tm, ltm   *structpb.Struct

	// locality is the host's locality ("region/zone/sub_zone") and
	// localityWeight its load_balancing_weight, which locality weighted
	// load balancing shares the traffic by. Written under the cluster's mu,
	// read when a balancer is built there.
	locality       string
	localityWeight uint32

	outlier  hostOutlier
	hcFailed atomic.Bool // active health checking failed it (FAILED_ACTIVE_HC), or has yet to pass it
	// hcDegraded: its last passing check's response said x-envoy-degraded
	// (DEGRADED_ACTIVE_HC).
	hcDegraded atomic.Bool
	// hcExcluded: a response's x-envoy-immediate-health-check-fail failed
	// it (EXCLUDED_VIA_IMMEDIATE_HC_FAIL), until it passes its checks again.
	hcExcluded atomic.Bool
	// hcPassive: such a failure came after the host's check session last
	// recorded an outcome, which then starts its counts again.
	hcPassive atomic.Bool
	// used: an ORIGINAL_DST cluster picked the host since its last sweep.
	used atomic.Bool
}

// Transport is the transport socket the host's connections use (the
// cluster's transport_socket, or what transport_socket_matches chose for
// it). An update of a cluster with a transport socket of its own or
// transport_socket_matches gives the host a new one (plain clusters keep
// theirs): connections made with the old one should not be reused.
func (h *Host) Transport() *Transport {
	if t := h.transport.Load(); t != nil {
		return t
	}
	return rawBuffer
}

// hostKey identifies a host in its cluster: its address, or its socket's
// path.
type hostKey struct {
	addr netip.AddrPort
	pipe string
}

func (h *Host) key() hostKey { return hostKey{h.Addr, h.Pipe} }

// String is the host's address, or its unix socket's path.
func (h *Host) String() string {
	if h.Pipe != "" {
		return h.Pipe
	}
	return h.Addr.String()
}

// Weight is the host's load-balancing weight.
func (h *Host) Weight() uint32 { return h.weight.Load() }

// Hostname is the endpoint's hostname from the load assignment, or "" (what
// a route's auto_host_rewrite puts in :authority).
func (h *Host) Hostname() string {
	if p := h.hostname.Load(); p != nil {
		return *p
	}
	return ""
}

// Gone reports whether the host left its cluster (an update dropped it, or
// the cluster was removed): connection pools close what they keep to it.
func (h *Host) Gone() bool { return h.gone.Load() }

// Priority is the host's priority level (0 is highest).
func (h *Host) Priority() uint32 { return h.priority.Load() }

// Health is the host's health as the control plane reported it.
func (h *Host) Health() corev3.HealthStatus { return corev3.HealthStatus(h.health.Load()) }

// Ejected reports whether outlier detection has ejected the host.
func (h *Host) Ejected() bool { return h.outlier.ejected.Load() }

// ActiveHealthCheckFailed reports whether the cluster's active health
// checking found the host unhealthy, or has yet to check it.
func (h *Host) ActiveHealthCheckFailed() bool { return h.hcFailed.Load() }

// HealthFlags says why the load balancer would not pick the host, or would
// pick it only as a degraded one, as the health_flags of Envoy's /clusters:
// "failed_active_hc", "excluded_via_immediate_hc_fail",
// "failed_outlier_check", "failed_eds_health", "degraded_active_hc",
// "degraded_eds_health". It is empty for a healthy host.
func (h *Host) HealthFlags() []string {
	var flags []string
	if h.hcFailed.Load() {
		flags = append(flags, "failed_active_hc")
	}
	if h.hcExcluded.Load() {
		flags = append(flags, "excluded_via_immediate_hc_fail")
	}
	if h.Ejected() {
		flags = append(flags, "failed_outlier_check")
	}
	switch h.Health() {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
	case corev3.HealthStatus_DEGRADED:
		flags = append(flags, "degraded_eds_health")
	default:
		flags = append(flags, "failed_eds_health")
	}
	if h.hcDegraded.Load() {
		flags = append(flags, "degraded_active_hc")
	}
	return flags
}

// Healthy reports whether the host is healthy: the control plane does not
// say it is unhealthy or degraded (UNKNOWN is healthy, as in Envoy without
// active health checking), active health checking has not failed it nor
// found it degraded, and outlier detection has not ejected it.
func (h *Host) Healthy() bool { return h.state() == stateHealthy }

// Degraded reports whether the host is degraded and not unhealthy: EDS says
// DEGRADED, or its health check response said x-envoy-degraded. The load
// balancer gives degraded hosts what healthy ones cannot carry.
func (h *Host) Degraded() bool { return h.state() == stateDegraded }

// clusterStats are a cluster's stat handles, named as in Envoy.
type clusterStats struct {
	cxTotal, cxConnectFail, cxConnectTimeout, cxNoneHealthy stats.Counter
	lbHealthyPanic                                          stats.Counter
	// cxOverflow counts connections max_connections refused (HTTPStats
	// has it too), cxConnectAttemptsExceeded tcp_proxy connections whose
	// max_connect_attempts all failed.
	cxOverflow, cxConnectAttemptsExceeded stats.Counter
	// The closes of connections, connected or not, as Envoy's connection
	// pools count them: by the host (remote) or by skiff (local).
	cxDestroy, cxDestroyLocal, cxDestroyRemote stats.Counter

	cxActive, membershipTotal, membershipHealthy stats.Gauge
	membershipDegraded                           stats.Gauge
	rxBytes, txBytes                             stats.Counter
}

func newClusterStats(sc *stats.Scope) clusterStats {
	return clusterStats{
		cxTotal:            sc.Counter("upstream_cx_total"),
		cxConnectFail:      sc.Counter("upstream_cx_connect_fail"),
		cxConnectTimeout:   sc.Counter("upstream_cx_connect_timeout"),
		cxNoneHealthy:      sc.Counter("upstream_cx_none_healthy"),
		lbHealthyPanic:     sc.Counter("lb_healthy_panic"),
		cxOverflow:         sc.Counter("upstream_cx_overflow"),
		cxDestroy:          sc.Counter("upstream_cx_destroy"),
		cxDestroyLocal:     sc.Counter("upstream_cx_destroy_local"),
		cxDestroyRemote:    sc.Counter("upstream_cx_destroy_remote"),
		cxActive:           sc.Gauge("upstream_cx_active"),
		membershipTotal:    sc.GaugeMode("membership_total", stats.NeverImport),
		membershipHealthy:  sc.GaugeMode("membership_healthy", stats.NeverImport),
		membershipDegraded: sc.GaugeMode("membership_degraded", stats.NeverImport),
		rxBytes:            sc.Counter("upstream_cx_rx_bytes_total"),
		txBytes:            sc.Counter("upstream_cx_tx_bytes_total"),

		cxConnectAttemptsExceeded: sc.Counter("upstream_cx_connect_attempts_exceeded"),
	}
}

// Cluster is a named set of hosts with a load balancer. Its settings and hosts
// are replaced atomically by updates; Pick and Connect never block on an update.
type Cluster struct {
	name string
	cfg  atomic.Pointer[Config]
	lb   atomic.Pointer[balancer]
	load LoadPolicy // the load assignment's policy; under mu
	// cleanup is an ORIGINAL_DST cluster's next sweep of unused hosts, and
	// stopped says the cluster was stopped; under mu.
	cleanup *time.Timer
	stopped bool
	stats   clusterStats
	scope   *stats.Scope
	// refs counts the Manager's reference (until the cluster is removed) and
	// every user between Acquire and Release. The stats scope is closed, and its
	// slots reclaimed, when the last one goes.
	refs atomic.Int64
	// res counts what the circuit breakers limit. res.conns is the
	// cluster's connections open or being made, which max_connections
	// limits: the HTTP pools' (HTTPStats.Conns) and tcp_proxy's
	// (ReserveConnection).
	res resources

	httpStats   lazyStats[HTTPStats]
	grpcStats   lazyStats[GRPCStats]
	grpcMethods sync.Map                    // prefix -> *GRPCStats: the grpc_stats filter's per-method sets
	sslStats    lazyStats[tlscontext.Stats] // cluster.<name>.ssl.*, made with the first TLS connection

	outlier      atomic.Pointer[detector] // nil: no outlier_detection
	outlierStats *outlierStats            // made with the first detector; under mu
	checker      *checker                 // nil: no health_checks; under mu
	live         bool                     // made and in the Manager's map (after newCluster); under mu
	healthStats  *healthStats             // made with the first checker; under mu

	dns          *dnsResolver // nil: not a DNS cluster; under mu
	dnsEndpoints []Endpoint   // the endpoints dns last set; under mu
	dnsStats     *dnsStats    // made with the first resolver; under mu

	mu         sync.Mutex        // serialises updates
	transports []*Transport      // the Config's transport_socket_matches with this cluster's counters
	hosts      map[hostKey]*Host // every host of the current assignment, by address or path
	epsFrom    any               // what the current endpoints were built from (see Assignment)
}

func newCluster(a Assignment, st *stats.Store) *Cluster {
	sc := st.Scope("cluster." + a.Config.StatName + ".")
	c := &Cluster{name: a.Config.Name, scope: sc, stats: newClusterStats(sc), hosts: map[hostKey]*Host{}}
	c.refs.Store(1)
	c.update(a)
	c.mu.Lock()
	c.live = true
	c.mu.Unlock()
	return c
}

// Acquire takes a reference to the cluster for the duration of a use (a
// connection being made and served). It returns false if the cluster has been
// removed and its last user is gone, in which case it must not be used.
func (c *Cluster) Acquire() bool {
	for {
		r := c.refs.Load()
		if r <= 0 {
			return false
		}
		if c.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

// Release gives back a reference from Acquire.
func (c *Cluster) Release() {
	if c.refs.Add(-1) == 0 {
		c.scope.Close()
	}
}

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.name }

// HTTPStats returns the cluster's HTTP request stats, created the first time
// an HTTP request goes to the cluster (a cluster only TCP proxies use has
// none). The caller holds a reference (Acquire).
func (c *Cluster) HTTPStats() *HTTPStats {
	return c.httpStats.get(func() *HTTPStats { return newHTTPStats(c.scope, &c.stats, &c.res) })
}

// GRPCStats are a cluster's cluster.<name>.grpc.* counters, which the
// grpc_stats HTTP filter keeps: gRPC calls that ended with a grpc-status,
// and of those the successes (status 0) and failures; and the messages of
// the calls' requests and responses.
type GRPCStats struct {
	Total, Success, Failure                   stats.Counter
	RequestMessageCount, ResponseMessageCount stats.Counter
}

// GRPCStats returns the cluster's gRPC counters, created the first time a
// gRPC call to the cluster is counted; they go with the cluster's other
// stats when it is removed. The caller holds a reference (Acquire).
func (c *Cluster) GRPCStats() *GRPCStats {
	return c.grpcStats.get(func() *GRPCStats { return newGRPCStats(c.scope, "grpc.") })
}

// GRPCMethodStats is GRPCStats for one method, the counters under
// cluster.<name>.<prefix> (prefix "grpc.<service>.<method>."), made the
// first time the method is counted. The caller holds a reference (Acquire).
func (c *Cluster) GRPCMethodStats(prefix string) *GRPCStats {
	if v, ok := c.grpcMethods.Load(prefix); ok {
		return v.(*GRPCStats)
	}
	v, _ := c.grpcMethods.LoadOrStore(prefix, newGRPCStats(c.scope, prefix))
	return v.(*GRPCStats)
}

func newGRPCStats(sc *stats.Scope, prefix string) *GRPCStats {
	return &GRPCStats{
		Total: sc.Counter(prefix + "total"), Success: sc.Counter(prefix + "success"), Failure: sc.Counter(prefix + "failure"),
		RequestMessageCount:  sc.Counter(prefix + "request_message_count"),
		ResponseMessageCount: sc.Counter(prefix + "response_message_count"),
	}
}

// lazyStats is a set of a cluster's stats made on first use: most clusters
// never need most sets.
type lazyStats[T any] struct {
	p  atomic.Pointer[T]
	mu sync.Mutex
}

func (l *lazyStats[T]) get(newStats func() *T) *T {
	if v := l.p.Load(); v != nil {
		return v
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if v := l.p.Load(); v != nil {
		return v
	}
	v := newStats()
	l.p.Store(v)
	return v
}

// Config returns the cluster's current configuration.
func (c *Cluster) Config() *Config { return c.cfg.Load() }

// Hosts returns the cluster's hosts in load-assignment order.
func (c *Cluster) Hosts() []*Host { return c.lb.Load().all }

// update applies a new configuration and assignment in place, keeping the Host
// objects of addresses that remain. Endpoints built from the same source as the
// current ones are not rebuilt.
func (c *Cluster) update(a Assignment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.cfg.Swap(a.Config)
	if old != a.Config {
		c.transports = bindTransportStats(a.Config, c.scope)
		c.res.bindLocked(c, &a.Config.Limits)
	}
	lbChanged := old == nil || old.LBPolicy != a.Config.LBPolicy || old.ChoiceCount != a.Config.ChoiceCount
	load := a.Policy
	if load.Overprovisioning == 0 { // (never 0 in a valid one)
		load = DefaultLoadPolicy
	}
	if load != c.load {
		c.load = load
		lbChanged = true
	}
	switch {
	case a.Config.DNS != nil && old == nil:
		c.setEndpointsLocked(nil) // until the first resolution
	case a.Config.DNS == nil && (lbChanged || c.epsFrom == nil || c.epsFrom != a.From):
		c.setEndpointsLocked(a.Endpoints)
		c.epsFrom = a.From
	case old != a.Config:
		// The same hosts (a DNS cluster's are its resolver's to change).
		for _, h := range c.hosts {
			h.transport.Store(resolveTransport(c.transports, a.Config.transport, h.tm, h.ltm))
		}
		if lbChanged || old.PanicThreshold != a.Config.PanicThreshold || old.Hashing != a.Config.Hashing || old.LocalityWeighted != a.Config.LocalityWeighted {
			c.rebuildLocked()
		}
	}
	if a.Config.DNS != nil {
		c.epsFrom = nil
	}
	c.setDNSLocked(old, a.Config)
	c.setOutlierLocked(a.Config.Outlier)
	c.setHealthCheckLocked(a.Config.HealthCheck)
}

// stop ends what runs for the cluster on its own (outlier detection's
// interval timer, the health checks): the cluster was removed, or the
// server is shutting down.
func (c *Cluster) stop() {
	c.mu.Lock()
	c.stopped = true
	if c.cleanup != nil {
		c.cleanup.Stop()
		c.cleanup = nil
	}
	if d := c.outlier.Load(); d != nil {
		d.stopLocked()
	}
	k := c.checker
	if k != nil {
		k.stop()
		c.checker = nil
	}
	r := c.dns
	c.dns = nil
	c.mu.Unlock()
	if k != nil {
		k.wait()
	}
	if r != nil {
		r.stop()
	}
}

// HostLocality is h's locality, as "region/zone/sub_zone" ("//" for none),
// h one of the cluster's hosts.
func (c *Cluster) HostLocality(h *Host) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return h.locality
}

// SetEndpoints replaces the cluster's hosts, keeping the Host objects of
// addresses that remain.
func (c *Cluster) SetEndpoints(eps []Endpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setEndpointsLocked(eps)
	c.epsFrom = nil
}

func (c *Cluster) setEndpointsLocked(eps []Endpoint) {
	next := make(map[hostKey]*Host, len(eps))
	all := make([]*Host, 0, len(eps))
	for _, ep := range eps {
		k := hostKey{ep.Addr, ep.Pipe}
		if _, dup := next[k]; dup {
			continue // Envoy, too, keeps one host per address
		}
		h, ok := c.hosts[k]
		if !ok {
			h = &Host{Addr: ep.Addr, Pipe: ep.Pipe}
			// A new host waits for its first health check to pass.
			h.hcFailed.Store(c.checker != nil)
		}
		h.weight.Store(ep.Weight)
		h.priority.Store(ep.Priority)
		h.tm, h.ltm = ep.TransportMatch, ep.LocalityTransportMatch
		h.locality, h.localityWeight = ep.Locality, ep.LocalityWeight
		h.transport.Store(resolveTransport(c.transports, c.cfg.Load().transport, h.tm, h.ltm))
		h.health.Store(int32(ep.Health))
		if ep.Hostname != h.Hostname() {
			name := ep.Hostname
			h.hostname.Store(&name)
		}
		next[k] = h
		all = append(all, h)
	}
	for k, h := range c.hosts {
		if next[k] != h {
			h.gone.Store(true)
		}
	}
	c.hosts = next
	c.setBalancerLocked(all)
	if c.checker != nil {
		c.checker.syncLocked(next)
	}
	if c.outlierStats != nil {
		c.outlierStats.active.Set(int64(c.ejectedLocked()))
	}
}

// rebuildLocked makes a new balancer over the same hosts: their health
// changed (an ejection), or the panic threshold.
func (c *Cluster) rebuildLocked() { c.setBalancerLocked(c.lb.Load().all) }

func (c *Cluster) setBalancerLocked(all []*Host) {
	cfg := c.cfg.Load()
	b := newBalancer(&balancerConfig{policy: cfg.LBPolicy, panicPct: cfg.PanicThreshold, choices: cfg.ChoiceCount,
		locality: cfg.LocalityWeighted, hashing: &cfg.Hashing, load: c.load}, all)
	c.lb.Store(b)
	c.stats.membershipTotal.Set(int64(len(all)))
	c.stats.membershipHealthy.Set(int64(b.healthy))
	c.stats.membershipDegraded.Set(int64(b.degraded))
}

// Pick chooses a host for a new connection, or returns nil (and counts
// upstream_cx_none_healthy) when no host is healthy.
func (c *Cluster) Pick() *Host {
	if c.OriginalDst() != nil {
		c.stats.cxNoneHealthy.Inc() // its hosts are picked by destination
		return nil
	}
	h, panic := c.lb.Load().pick()
	if h == nil {
		c.stats.cxNoneHealthy.Inc()
	} else if panic {
		c.stats.lbHealthyPanic.Inc()
	}
	return h
}

// HashBased reports whether the cluster balances by a request's hash
// (RING_HASH, MAGLEV), so that a route's hash_policy applies.
func (c *Cluster) HashBased() bool { return c.lb.Load().hashed }

// PickHash chooses a host for a request whose route's hash_policy gave hash:
// the same hash, the same host while the cluster's hosts stay the same
// (RING_HASH, MAGLEV; other policies ignore it). attempt > 0 asks for another
// host, for a retry that avoids the hosts tried (previous_hosts).
func (c *Cluster) PickHash(hash uint64, attempt uint32) *Host {
	b := c.lb.Load()
	if !b.hashed {
		return c.Pick()
	}
	h, panic := b.pickHash(hash, attempt)
	if h == nil {
		c.stats.cxNoneHealthy.Inc()
	} else if panic {
		c.stats.lbHealthyPanic.Inc()
	}
	return h
}

// ErrConnectTimeout is returned (wrapped) by Connect when connect_timeout expired.
var ErrConnectTimeout = errors.New("connect timeout")

// FailureReason renders an error of Connect as Envoy's
// %UPSTREAM_TRANSPORT_FAILURE_REASON% does: "delayed connect error:
// Connection refused" (the C library's strerror text, as Envoy 1.3x's
// connection does) for a refused connection, "connect timeout" when
// connect_timeout expired.
func FailureReason(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return "delayed connect error: " + strerror(errno)
	}
	if errors.Is(err, ErrConnectTimeout) {
		return "connect timeout"
	}
	return err.Error()
}

// strerror is errno's text as the C library's strerror gives it: Go's text
// with its first letter in upper case ("Connection refused").
func strerror(errno syscall.Errno) string {
	s := errno.Error()
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

// Connect opens a connection to h with the host's transport socket and
// accounts for it in the cluster's and host's counters: TCP, then for a TLS
// transport the handshake, both within the cluster's connect_timeout (as in
// Envoy, where a connection is connected once its transport is). Call
// Disconnected once the connection is closed.
func (c *Cluster) Connect(ctx context.Context, h *Host) (net.Conn, error) {
	return c.ConnectWith(ctx, h, ConnectOptions{})
}

// ConnectOptions are what a connection's user tells its TLS transport, as
// Envoy's transport socket options do.
type ConnectOptions struct {
	// ALPN is offered when the UpstreamTlsContext has no alpn_protocols:
	// Envoy's fallback, h2 for an HTTP/2 connection pool and http/1.1 for
	// an HTTP/1.1 one.
	ALPN []string
	// SNI, if set, replaces the context's sni (auto_sni).
	SNI string
	// VerifyName, if set, is the name the server's certificate must carry
	// instead of passing the context's subject alt name matchers
	// (auto_san_validation).
	VerifyName string
	// ALPNOverride, if set, is offered instead of the context's
	// alpn_protocols (istio.alpn).
	ALPNOverride []string
}

// ConnectWith is Connect with options for the TLS transport (ignored for
// plain TCP).
func (c *Cluster) ConnectWith(ctx context.Context, h *Host, o ConnectOptions) (net.Conn, error) {
	cfg := c.cfg.Load()
	c.stats.cxTotal.Inc()
	h.CxTotal.Add(1)
	conn, err := c.dial(ctx, h, cfg.ConnectTimeout, o)
	if err != nil {
		c.stats.cxConnectFail.Inc()
		h.CxConnectFail.Add(1)
		c.destroyed(closedByHost(err))
		return nil, err
	}
	for _, f := range cfg.Filters {
		if err := f.UpstreamConnected(conn, negotiatedProtocol(conn)); err != nil {
			conn.Close()
			c.stats.cxConnectFail.Inc()
			h.CxConnectFail.Add(1)
			c.destroyed(false)
			return nil, fmt.Errorf("cluster %s: upstream filter: %w", c.name, err)
		}
	}
	c.stats.cxActive.Inc()
	h.CxActive.Add(1)
	return conn, nil
}

// closedByHost reports whether a failed connect ended because of the host
// or the network (refused, reset, unreachable, closed during the TLS
// handshake): Envoy's RemoteClose of the connection. A timeout, a TLS
// handshake skiff gave up on and a cancellation are skiff's own close
// (LocalClose).
func closedByHost(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// destroyed counts the close of one of the cluster's connections, made or
// failed, in upstream_cx_destroy and, by who closed it, in
// upstream_cx_destroy_remote or _local, as Envoy's connection pools count
// every connection's close (reportUpstreamCxDestroy).
func (c *Cluster) destroyed(remote bool) {
	c.stats.cxDestroy.Inc()
	if remote {
		c.stats.cxDestroyRemote.Inc()
	} else {
		c.stats.cxDestroyLocal.Inc()
	}
}

// ReserveConnection takes room for a new connection under the cluster's
// max_connections, which the HTTP pools' connections count toward too (the
// cluster's total, as in Envoy). It reports false, counted in
// upstream_cx_overflow, when the cluster has that many connections open or
// being made: Envoy's tcp_proxy then makes none (UO). Give the room back
// with ReleaseConnection if the connection fails, or with Closed once it
// ends.
func (c *Cluster) ReserveConnection() bool {
	if !c.res.conns.tryInc(int64(c.cfg.Load().Limits.Connections())) {
		c.stats.cxOverflow.Inc()
		return false
	}
	return true
}

// ReleaseConnection gives back room ReserveConnection took for a
// connection that was not made.
func (c *Cluster) ReleaseConnection() { c.res.conns.Add(-1) }

// CloseKind says how a connection ended, for Closed.
type CloseKind uint8

const (
	// LocalClose: skiff closed or reset it (Envoy's LocalClose).
	LocalClose CloseKind = iota
	// RemoteClose: the host ended it, by its end of stream or a reset
	// (Envoy's RemoteClose).
	RemoteClose
	// HandedOver: a hot-restart successor took it over; it was not closed.
	HandedOver
)

// Closed accounts for the end of a connection made under ReserveConnection
// (or Adopted): Disconnected, its room under max_connections and, unless it
// was handed over, upstream_cx_destroy with _remote or _local as Envoy's
// connection pools count every connection's close. For tcp_proxy; the HTTP
// pools count their connections themselves.
func (c *Cluster) Closed(h *Host, how CloseKind) {
	if how != HandedOver {
		c.destroyed(how == RemoteClose)
	}
	c.res.conns.Add(-1)
	c.Disconnected(h)
}

// Open connects to a host the load balancer picks, for a user of the
// cluster outside the connection pools and tcp_proxy: a gRPC client whose
// service is the cluster's (envoy_grpc: the xDS client, the gRPC access
// log), as Envoy's gRPC clients use the cluster. The connection counts as
// the pools' do, in upstream_cx_total and upstream_cx_active and under
// max_connections; its Close counts its end (upstream_cx_destroy, as
// skiff's close: the gRPC client closes it, whoever ended it). The
// connection holds a reference to the cluster (Acquire) until it is
// closed, as the pools' do: a cluster removed meanwhile keeps its stats
// for the count of the close.
func (c *Cluster) Open(ctx context.Context, o ConnectOptions) (net.Conn, error) {
	if !c.Acquire() {
		return nil, fmt.Errorf("cluster %s: removed", c.name)
	}
	h := c.Pick()
	if h == nil {
		c.Release()
		return nil, fmt.Errorf("cluster %s: no healthy host", c.name)
	}
	if !c.ReserveConnection() {
		c.Release()
		return nil, fmt.Errorf("cluster %s: max_connections reached", c.name)
	}
	conn, err := c.ConnectWith(ctx, h, o)
	if err != nil {
		c.ReleaseConnection()
		c.Release()
		return nil, err
	}
	return &openConn{Conn: conn, c: c, h: h}, nil
}

// openConn is a connection from Open.
type openConn struct {
	net.Conn
	c    *Cluster
	h    *Host
	once sync.Once
}

func (oc *openConn) Close() error {
	err := oc.Conn.Close()
	oc.once.Do(func() {
		oc.c.Closed(oc.h, LocalClose)
		oc.c.Release()
	})
	return err
}

// ConnectAttemptsExceeded counts, in upstream_cx_connect_attempts_exceeded,
// a tcp_proxy connection whose max_connect_attempts all failed.
func (c *Cluster) ConnectAttemptsExceeded() { c.stats.cxConnectAttemptsExceeded.Inc() }

// dial connects to h within timeout and starts its transport socket (see
// Connect); it counts timeouts and TLS outcomes, not the connection.
func (c *Cluster) dial(ctx context.Context, h *Host, timeout time.Duration, o ConnectOptions) (net.Conn, error) {
	t := h.Transport()
	if t.TLS != nil {
		if err := t.TLS.Ready(); err != nil {
			// As Envoy: no connection is made without the certificates.
			c.tlsStats().SecretsNotReady()
			return nil, fmt.Errorf("cluster %s: host %s: transport socket %s: %w", c.name, h, t.Socket, err)
		}
	}
	start := time.Now()
	conn, err := c.connect(ctx, h, timeout)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
			c.stats.cxConnectTimeout.Inc()
			return nil, fmt.Errorf("cluster %s: connecting to %s: %w after %v", c.name, h, ErrConnectTimeout, timeout)
		}
		return nil, fmt.Errorf("cluster %s: %w", c.name, err)
	}
	if t.TLS == nil {
		return conn, nil
	}
	hctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(ctx, start.Add(timeout))
		defer cancel()
	}
	st := c.tlsStats()
	tc, err := t.TLS.Handshake(hctx, conn, tlscontext.HandshakeOptions{Hostname: h.Hostname(), SNI: o.SNI, VerifyName: o.VerifyName, ALPN: o.ALPN,
		ALPNOverride: o.ALPNOverride})
	if err != nil {
		conn.Close()
		st.Failed(err)
		if ctx.Err() == nil && hctx.Err() != nil {
			c.stats.cxConnectTimeout.Inc()
			return nil, fmt.Errorf("cluster %s: TLS handshake with %s: %w after %v", c.name, h, ErrConnectTimeout, timeout)
		}
		return nil, fmt.Errorf("cluster %s: TLS handshake with %s: %w", c.name, h, err)
	}
	cs := tc.ConnectionState()
	st.Handshake(&cs)
	return tc, nil
}

// tlsStats are the cluster's TLS stats, made when first needed.
func (c *Cluster) tlsStats() *tlscontext.Stats {
	return c.sslStats.get(func() *tlscontext.Stats { return tlscontext.NewStats(c.scope, false) })
}

// connect makes the connection to h: TCP (netio.Dial, with the cluster's
// source address and keepalive), or a unix socket for a pipe endpoint.
func (c *Cluster) connect(ctx context.Context, h *Host, timeout time.Duration) (net.Conn, error) {
	if h.Pipe != "" {
		d := net.Dialer{Timeout: timeout}
		return d.DialContext(ctx, "unix", h.Pipe)
	}
	cfg := c.cfg.Load()
	opts := netio.DialOptions{Timeout: timeout, Source: cfg.Source}
	if ka := cfg.Keepalive; ka != nil {
		opts.KeepAlive = net.KeepAliveConfig{Enable: true, Idle: ka.Idle, Interval: ka.Interval, Count: ka.Probes}
	}
	return netio.Dial(ctx, h.Addr, &opts)
}

// negotiatedProtocol is the ALPN protocol of a TLS connection ("" for plain
// TCP or none).
func negotiatedProtocol(c net.Conn) string {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.ConnectionState().NegotiatedProtocol
	}
	return ""
}

// Adopted accounts for a connection to addr a hot-restart parent made and
// handed over, as if ReserveConnection and Connect had made it (it counts
// toward max_connections, without a check). It returns the host (for
// Closed), or nil if the cluster no longer has that host.
func (c *Cluster) Adopted(addr netip.AddrPort) *Host {
	if !addr.IsValid() {
		return nil // unknown (and never a pipe host's: those do not move)
	}
	for _, h := range c.Hosts() {
		if h.Addr == addr {
			c.res.conns.Add(1)
			c.stats.cxActive.Inc()
			h.CxActive.Add(1)
			return h
		}
	}
	return nil
}

// Disconnected accounts for the end of a connection returned by Connect.
func (c *Cluster) Disconnected(h *Host) {
	c.stats.cxActive.Dec()
	h.CxActive.Add(-1)
}

// ByteCounters returns the cluster's upstream_cx_tx_bytes_total (bytes sent to
// the hosts) and upstream_cx_rx_bytes_total counters.
func (c *Cluster) ByteCounters() (tx, rx stats.Counter) { return c.stats.txBytes, c.stats.rxBytes }

// IsRefused reports whether err means the host actively refused the connection.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// Manager owns the clusters. Lookups are lock-free; updates are serialised.
type Manager struct {
	stats    *stats.Store
	clusters atomic.Pointer[map[string]*Cluster]
	mu       sync.Mutex
}

// NewManager returns a Manager with no clusters.
func NewManager(st *stats.Store) *Manager {
	m := &Manager{stats: st}
	empty := map[string]*Cluster{}
	m.clusters.Store(&empty)
	return m
}

// Get returns the named cluster, or nil. Callers that go on to use it (Pick,
// Connect) must Acquire it first, since it may be removed meanwhile.
func (m *Manager) Get(name string) *Cluster { return (*m.clusters.Load())[name] }

// Clusters returns every cluster (in no particular order).
func (m *Manager) Clusters() []*Cluster {
	cur := *m.clusters.Load()
	out := make([]*Cluster, 0, len(cur))
	for _, c := range cur {
		out = append(out, c)
	}
	return out
}

// Assignment is a cluster's configuration with its endpoints: the Config's own
// for a STATIC cluster, those of its ClusterLoadAssignment for an EDS cluster.
// From identifies what the endpoints were built from (the Config, the
// ClusterLoadAssignment message): an update with the same From keeps the
// current hosts without rebuilding them, which keeps large EDS updates cheap.
type Assignment struct {
	Config    *Config
	Endpoints []Endpoint
	From      any
	// Policy is the load assignment's (PolicyOf); the zero value is
	// DefaultLoadPolicy.
	Policy LoadPolicy
}

// Set makes as the complete set of clusters: new names are added, existing
// clusters are updated in place (connections to hosts that remain are untouched)
// and clusters not in as are removed. It returns the removed clusters.
//
// A cluster whose active health checking starts with this Set (a new
// cluster with health_checks, or a changed health check) has its hosts
// checked once, or for as long as a check can take, before Set makes the
// new set of clusters visible and returns: as Envoy's cluster warming waits
// for the first round of checks, so that traffic does not meet a new
// cluster's hosts before their health is known. An existing cluster whose
// health check changes keeps its hosts' state meanwhile.
func (m *Manager) Set(as []Assignment) (removed []*Cluster) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.clusters.Load()
	next := make(map[string]*Cluster, len(as))
	var checking []*checker      // health checkers this Set started
	var resolving []*dnsResolver // DNS resolvers this Set started
	for _, a := range as {
		c, ok := cur[a.Config.Name]
		var before *checker
		var beforeDNS *dnsResolver
		switch {
		case !ok:
			c = newCluster(a, m.stats)
		case c.Config() != a.Config || c.epsFrom != a.From:
			before, beforeDNS = c.healthChecker(), c.dnsResolver()
			c.update(a)
		default:
			next[a.Config.Name] = c
			continue
		}
		if k := c.healthChecker(); k != nil && k != before {
			checking = append(checking, k)
		}
		if r := c.dnsResolver(); r != nil && r != beforeDNS && r.cfg.Warm {
			resolving = append(resolving, r)
		}
		next[a.Config.Name] = c
	}
	for name, c := range cur {
		if _, ok := next[name]; !ok {
			removed = append(removed, c)
		}
	}
	// New clusters become visible once their names have been resolved and
	// their hosts have had their first checks (each runs concurrently:
	// this waits for the slowest).
	for _, r := range resolving {
		r.firstRound()
	}
	for _, k := range checking {
		k.firstRound()
	}
	m.clusters.Store(&next)
	for _, c := range removed {
		c.stop()
		for _, h := range c.Hosts() {
			h.gone.Store(true)
		}
		c.Release() // the Manager's reference; users still connected keep theirs
	}
	return removed
}

// Close stops what runs for the clusters on their own (outlier detection's
// timers); they can still be used, without it. For a server's shutdown.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range *m.clusters.Load() {
		c.stop()
	}
}

// Static is the Assignment of a cluster whose endpoints are in its Config.
func Static(cfg *Config) Assignment {
	return Assignment{Config: cfg, Endpoints: cfg.Endpoints, From: cfg, Policy: cfg.Load}
}
