// Package dataplane is skiff's data plane: it turns Envoy listener and cluster
// resources into running listeners, filter chains and clusters, applies updates by
// building a new generation next to the running one and swapping it in, and
// drains what the old generation still serves.
//
// Nothing here knows where configuration comes from (a bootstrap file, an xDS
// stream); callers hand the Server complete Snapshots.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/accesslog"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/listener"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Snapshot is a complete data-plane configuration. The Server keeps what it
// built from each message and rebuilds only messages it has not seen before, so
// callers should pass the same message values for unchanged resources (an xDS
// client does naturally).
type Snapshot struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	// Endpoints are the ClusterLoadAssignments of EDS clusters, by service name
	// (eds_cluster_config.service_name, or the cluster's name). An EDS cluster
	// whose assignment is missing has no hosts.
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	// Routes are the RouteConfigurations listeners may name through RDS, by
	// name. Each is compiled once (the Server keeps the Table of a message it
	// saw before) and swapped in atomically: HTTP connection managers look
	// theirs up by name for every request, so an RDS update rebuilds no
	// listener.
	Routes map[string]*routev3.RouteConfiguration
	// Secrets are the secrets received by SDS, by name, which TLS contexts
	// name in SDS secret configs with an sds_config. A context built from
	// them follows their new versions in place (no listener is rebuilt and
	// no connection drained, as in Envoy); a secret left out keeps its last
	// version.
	Secrets map[string]*tlsv3.Secret
}

// ResourceError is a configuration error in one resource of a Snapshot. Err
// carries the field path inside the resource (see package cfgerr).
type ResourceError struct {
	Kind  string // "listener", "cluster", "endpoints", "route" or "secret"
	Index int    // position in the Snapshot's list
	Name  string
	Err   error
}

func (e *ResourceError) Error() string {
	return fmt.Sprintf("%s %q: %v", e.Kind, e.Name, e.Err)
}

func (e *ResourceError) Unwrap() error { return e.Err }

// Options configure a Server.
type Options struct {
	Logger   *slog.Logger
	Registry *filter.Registry
	Stats    *stats.Store
	// FileFlushInterval is how often access log files are written to
	// (Envoy's --file-flush-interval-msec); 0: accesslog's default.
	FileFlushInterval time.Duration
	// DrainTime is how long connections of removed listeners and filter chains
	// may go on before they are closed.
	DrainTime time.Duration
	// GradualDrain is Envoy's --drain-strategy gradual (its default): over a
	// drain of removed or changed filter chains (and a graceful
	// DrainListeners), connections are asked to end with a probability that
	// grows from 0 to 1 over DrainTime, rather than all at once (immediate,
	// the zero value). A shutdown drains immediately.
	GradualDrain bool
	// InitializedExternally: the caller calls MarkInitialized when its first
	// round of configuration is complete, instead of the first Apply.
	InitializedExternally bool
	// Node is the bootstrap's node, which the gRPC access log service is
	// told. Nil: an empty node.
	Node *corev3.Node
	// Runtime is the layered runtime filters read fractions and overrides
	// from. Nil: every runtime key takes its default.
	Runtime *runtime.Loader
	// Resolver is the bootstrap's DNS resolver (upstream.BootstrapResolver),
	// for DNS clusters without their own. Nil: the system's.
	Resolver *upstream.Resolver
	// Secrets are the bootstrap's static_resources.secrets (see
	// CheckSecrets), which TLS contexts name in SDS secret configs without
	// an sds_config.
	Secrets map[string]*tlsv3.Secret
}

// managerStats are Envoy's listener_manager.* and cluster_manager.* stats.
type managerStats struct {
	listenersActive                                  stats.Gauge
	listenerAdded, listenerModified, listenerRemoved stats.Counter
	listenerCreateSuccess, listenerCreateFailure     stats.Counter
	clustersActive                                   stats.Gauge
	clusterAdded, clusterModified, clusterRemoved    stats.Counter
}

func newManagerStats(st *stats.Store) managerStats {
	return managerStats{
		listenersActive:       st.GaugeMode("listener_manager.total_listeners_active", stats.NeverImport),
		listenerAdded:         st.Counter("listener_manager.listener_added"),
		listenerModified:      st.Counter("listener_manager.listener_modified"),
		listenerRemoved:       st.Counter("listener_manager.listener_removed"),
		listenerCreateSuccess: st.Counter("listener_manager.listener_create_success"),
		listenerCreateFailure: st.Counter("listener_manager.listener_create_failure"),
		clustersActive:        st.GaugeMode("cluster_manager.active_clusters", stats.NeverImport),
		clusterAdded:          st.Counter("cluster_manager.cluster_added"),
		clusterModified:       st.Counter("cluster_manager.cluster_modified"),
		clusterRemoved:        st.Counter("cluster_manager.cluster_removed"),
	}
}

// unmapped is a with an IPv4-mapped IPv6 address as IPv4: how byAddr keys
// listeners and how listenerAt looks them up.
func unmapped(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// listenerAt is the listener a connection whose original destination is a
// goes to, as Envoy's getBalancedHandlerByAddress finds it: the listener of
// that address, else the one of the wildcard address (0.0.0.0 or ::) with
// its port; nil if none.
func (s *Server) listenerAt(a netip.AddrPort) *listener.Listener {
	m := s.byAddr.Load()
	if m == nil {
		return nil
	}
	a = unmapped(a)
	if l := (*m)[a]; l != nil {
		return l
	}
	wildcard := netip.IPv4Unspecified()
	if a.Addr().Is6() {
		wildcard = netip.IPv6Unspecified()
	}
	return (*m)[netip.AddrPortFrom(wildcard, a.Port())]
}

// Server runs listeners and clusters.
type Server struct {
	mstats   managerStats
	opts     Options
	log      *slog.Logger
	clusters *upstream.Manager
	sockets  *listener.SocketTable
	buffers  *bufpool.Pool
	pipes    *netio.PipePool
	connIDs  atomic.Uint64
	// The HTTP side: route configurations from RDS (swapped by Apply), the
	// upstream connection pools and the access log writers every HTTP
	// connection manager shares.
	routes     *route.Provider
	httpPools  *pool.Manager
	accessLogs *accesslog.Sinks
	sds        *tlscontext.SecretStore // the secrets of Snapshot.Secrets

	mu        sync.Mutex // serialises Apply and Shutdown
	listeners map[string]*listener.Listener
	// byAddr indexes listeners by the addresses connections reach them at,
	// for use_original_dst's hand-over (listenerAt); replaced with listeners.
	byAddr atomic.Pointer[map[netip.AddrPort]*listener.Listener]
	// What the last Apply built, by message: reused when the same message comes
	// again, so an update rebuilds only what changed.
	clusterCfgs map[*clusterv3.Cluster]*upstream.Config
	assigned    map[*endpointv3.ClusterLoadAssignment][]upstream.Endpoint
	routeTables map[*routev3.RouteConfiguration]*route.Table
	// What Validate* built, kept for the Apply that follows (an xDS client
	// validates a response, then applies it): each message is built once.
	prepMu      sync.Mutex
	prepCluster map[*clusterv3.Cluster]*upstream.Config
	prepAssign  map[*endpointv3.ClusterLoadAssignment][]upstream.Endpoint
	retired     map[*listener.FilterChain]bool // draining chains of older generations
	last        *Snapshot                      // the last Snapshot applied
	onBreaking  func([]string)                 // see OnListenerBreaking
	rebindHere  bool                           // Apply rebinds breaking changes itself
	shutdown    bool
	stopping    chan struct{}  // closed when shutdown is set: drain timers end early
	draining    sync.WaitGroup // drain timers
	serving     sync.WaitGroup // connection goroutines of every listener
	// pending are the connections in their listener filters, ended with
	// their listener's drain or at the end of a shutdown's.
	pending *listener.PendingConns

	// For the admin API: the number of Snapshots applied and a channel the
	// first one closes; DrainListeners' state (guarded by mu).
	gen        atomic.Uint64
	isDraining atomic.Bool // shutting down, or the listeners were drained
	hcFailed   atomic.Bool // SetHealthCheckFailed
	applied    chan struct{}
	initOnce   sync.Once
	drained    bool        // DrainListeners ran: Apply starts no new listener (of its scope)
	drainIn    bool        // ... and only inbound listeners are in its scope
	drainTimer *time.Timer // a graceful DrainListeners' end
	drainedAt  time.Time   // when the listeners stop(ped) accepting
}

// NewServer returns a Server with no listeners or clusters.
func NewServer(opts Options) *Server {
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		clusters:  upstream.NewManager(opts.Stats),
		mstats:    newManagerStats(opts.Stats),
		sockets:   listener.NewSocketTable(opts.Logger),
		pending:   listener.NewPendingConns(),
		buffers:   bufpool.New(),
		listeners: map[string]*listener.Listener{},
		retired:   map[*listener.FilterChain]bool{},
		applied:   make(chan struct{}),
		stopping:  make(chan struct{}),
		routes:    route.NewProvider(),
		sds:       tlscontext.NewSecretStore(opts.Logger),
	}
	s.httpPools = pool.NewManager(pool.Options{Buffers: s.buffers, Logger: opts.Logger})
	s.accessLogs = accesslog.NewSinks(opts.Logger, opts.Stats, opts.FileFlushInterval)
	if pipes, err := netio.NewPipePool(0); err != nil {
		opts.Logger.Warn("splice(2) unavailable; TCP proxying copies through buffers", "error", err)
	} else {
		s.pipes = pipes
	}
	return s
}

// Clusters returns the cluster manager.
func (s *Server) Clusters() *upstream.Manager { return s.clusters }

func (s *Server) factoryContext() filter.Context {
	return filter.Context{
		Logger:     s.log,
		Stats:      s.opts.Stats,
		Clusters:   s.clusters,
		Buffers:    s.buffers,
		Pipes:      s.pipes,
		Routes:     s.routes,
		HTTPPools:  s.httpPools,
		AccessLogs: s.accessLogs,
		Node:       s.opts.Node,
		Runtime:    s.opts.Runtime,
		Secrets:    s.secrets(),
		Server:     s,
		ClusterExists: func(name string) bool {
			return s.clusters.Get(name) != nil
		},
	}
}

// generation is a validated Snapshot, ready to apply.
type generation struct {
	listeners   []*listener.Config
	clusters    []upstream.Assignment
	clusterCfgs map[*clusterv3.Cluster]*upstream.Config
	assigned    map[*endpointv3.ClusterLoadAssignment][]upstream.Endpoint
	routes      map[string]*route.Table
	routeTables map[*routev3.RouteConfiguration]*route.Table
}

// build validates snap and builds every filter, reusing the filter chains of
// running listeners that did not change. It touches no socket.
func (s *Server) build(snap *Snapshot, running map[string]*listener.Listener) (*generation, error) {
	g := &generation{
		clusterCfgs: make(map[*clusterv3.Cluster]*upstream.Config, len(snap.Clusters)),
		assigned:    map[*endpointv3.ClusterLoadAssignment][]upstream.Endpoint{},
	}
	seen := map[string]int{}
	for i, pb := range snap.Clusters {
		cfg, ok := s.clusterCfgs[pb]
		if !ok {
			cfg, ok = s.prepared(pb)
		}
		if !ok {
			var err error
			if cfg, err = upstream.NewConfigWith(pb, s.clusterOptions()); err != nil {
				return nil, &ResourceError{Kind: "cluster", Index: i, Name: pb.GetName(), Err: err}
			}
		}
		if j, dup := seen[cfg.Name]; dup {
			return nil, &ResourceError{Kind: "cluster", Index: i, Name: pb.GetName(), Err: cfgerr.Errorf("name", "duplicate of cluster %d", j)}
		}
		seen[cfg.Name] = i
		g.clusterCfgs[pb] = cfg
		a := upstream.Static(cfg)
		if cfg.EDS != nil {
			cla := snap.Endpoints[cfg.EDS.ServiceName]
			eps, ok := s.assigned[cla]
			if !ok && cla != nil {
				eps, ok = s.preparedEndpoints(cla)
			}
			if !ok && cla != nil {
				var err error
				if eps, err = upstream.Endpoints(cla); err != nil {
					return nil, &ResourceError{Kind: "endpoints", Index: i, Name: cfg.EDS.ServiceName, Err: err}
				}
			}
			if cla != nil {
				g.assigned[cla] = eps
			}
			a = upstream.Assignment{Config: cfg, Endpoints: eps, From: cla, Policy: upstream.PolicyOf(cla)}
		}
		g.clusters = append(g.clusters, a)
	}
	clusterNames := make(map[string]bool, len(seen))
	for name := range seen {
		clusterNames[name] = true
	}
	clusterExists := func(name string) bool { return clusterNames[name] }
	if err := s.buildRoutes(g, snap, clusterExists); err != nil {
		return nil, err
	}
	clear(seen)
	bound := map[netip.AddrPort]string{}
	for i, pb := range snap.Listeners {
		var prev *listener.Config
		if l := running[pb.GetName()]; l != nil {
			prev = l.Config()
		}
		fc := s.factoryContext()
		fc.ClusterExists = clusterExists
		cfg, err := listener.Build(pb, s.opts.Registry, fc, prev)
		if err != nil {
			return nil, &ResourceError{Kind: "listener", Index: i, Name: pb.GetName(), Err: err}
		}
		if j, dup := seen[cfg.Name]; dup {
			return nil, &ResourceError{Kind: "listener", Index: i, Name: pb.GetName(), Err: cfgerr.Errorf("name", "duplicate of listener %d", j)}
		}
		seen[cfg.Name] = i
		for k, sp := range cfg.Sockets {
			if other, dup := bound[sp.Addr]; dup && sp.Addr.Port() != 0 {
				return nil, &ResourceError{Kind: "listener", Index: i, Name: pb.GetName(),
					Err: cfgerr.Errorf(listener.SocketPath(k), "%s is also the address of listener %q", sp.Addr, other)}
			}
			bound[sp.Addr] = cfg.Name
		}
		g.listeners = append(g.listeners, cfg)
	}
	return g, nil
}

// buildRoutes compiles the snapshot's route configurations, reusing the
// Table of every message compiled before.
func (s *Server) buildRoutes(g *generation, snap *Snapshot, clusterExists func(string) bool) error {
	g.routes = make(map[string]*route.Table, len(snap.Routes))
	g.routeTables = make(map[*routev3.RouteConfiguration]*route.Table, len(snap.Routes))
	names := make([]string, 0, len(snap.Routes))
	for name := range snap.Routes {
		names = append(names, name)
	}
	slices.Sort(names)
	for i, name := range names {
		rc := snap.Routes[name]
		t, ok := s.routeTables[rc]
		if !ok {
			var err error
			if t, err = route.Compile(rc, route.Options{ClusterExists: clusterExists, FilterConfigs: s.routeFilterConfigs(), Runtime: s.opts.Runtime}); err != nil {
				return &ResourceError{Kind: "route", Index: i, Name: name, Err: err}
			}
		}
		g.routes[name] = t
		g.routeTables[rc] = t
	}
	return nil
}

// ValidateRoute checks one RouteConfiguration as Apply would compile it
// (validate_clusters against the clusters running now). The error names the
// field relative to the route configuration.
func (s *Server) ValidateRoute(rc *routev3.RouteConfiguration) error {
	_, err := route.Compile(rc, route.Options{
		ClusterExists: func(name string) bool { return s.clusters.Get(name) != nil },
		FilterConfigs: s.routeFilterConfigs(),
		Runtime:       s.opts.Runtime,
	})
	return err
}

// routeFilterConfigs builds the typed_per_filter_config entries of route
// configurations through the registry's HTTP filter factories.
func (s *Server) routeFilterConfigs() route.FilterConfigBuilder {
	fc := s.factoryContext()
	return s.opts.Registry.RouteConfigs(&fc)
}

// Routes is the route configurations the Server's HTTP connection managers
// load through RDS.
func (s *Server) Routes() *route.Provider { return s.routes }

// Validate checks snap as Apply would, without applying it.
func (s *Server) Validate(snap *Snapshot) error {
	_, err := s.build(snap, nil)
	return err
}

// ValidateListener checks one listener as Apply would build it (every filter's
// typed_config through the Registry), without binding anything. The error names
// the field relative to the listener.
func (s *Server) ValidateListener(pb *listenerv3.Listener) error {
	_, err := listener.Build(pb, s.opts.Registry, s.factoryContext(), nil)
	return err
}

// ValidateCluster checks one cluster as Apply would build it. The result is
// kept for the next Apply of the same message.
func (s *Server) ValidateCluster(pb *clusterv3.Cluster) error {
	cfg, err := upstream.NewConfigWith(pb, s.clusterOptions())
	if err == nil {
		s.prepMu.Lock()
		if s.prepCluster == nil {
			s.prepCluster = map[*clusterv3.Cluster]*upstream.Config{}
		}
		s.prepCluster[pb] = cfg
		s.prepMu.Unlock()
	}
	return err
}

// ValidateEndpoints checks one ClusterLoadAssignment. The result is kept for the
// next Apply of the same message.
func (s *Server) ValidateEndpoints(cla *endpointv3.ClusterLoadAssignment) error {
	eps, err := upstream.Endpoints(cla)
	if err == nil {
		s.prepMu.Lock()
		if s.prepAssign == nil {
			s.prepAssign = map[*endpointv3.ClusterLoadAssignment][]upstream.Endpoint{}
		}
		s.prepAssign[cla] = eps
		s.prepMu.Unlock()
	}
	return err
}

// clusterOptions builds clusters' upstream network filters (Cluster.filters)
// through the Registry.
func (s *Server) clusterOptions() upstream.Options {
	fc := s.factoryContext()
	return upstream.Options{Filters: func(f *clusterv3.Filter) (upstream.ConnFilter, error) {
		return s.opts.Registry.UpstreamNetworkFilter(f.GetName(), f.GetTypedConfig(), &fc)
	}, Resolver: s.opts.Resolver, Secrets: s.secrets()}
}

// secrets are the secrets TLS contexts may name: the static ones and those
// of SDS.
func (s *Server) secrets() tlscontext.Secrets {
	return tlscontext.Secrets{Static: s.opts.Secrets, SDS: s.sds}
}

// CheckSecrets checks the bootstrap's static_resources.secrets and indexes
// them by name for Options.Secrets. An error is a *ResourceError of kind
// "secret".
func CheckSecrets(list []*tlsv3.Secret) (map[string]*tlsv3.Secret, error) {
	secrets := make(map[string]*tlsv3.Secret, len(list))
	for i, sec := range list {
		if err := tlscontext.CheckSecret(sec); err != nil {
			return nil, &ResourceError{Kind: "secret", Index: i, Name: sec.GetName(), Err: err}
		}
		if _, dup := secrets[sec.GetName()]; dup {
			return nil, &ResourceError{Kind: "secret", Index: i, Name: sec.GetName(), Err: cfgerr.Errorf("name", "duplicate secret name %q", sec.GetName())}
		}
		secrets[sec.GetName()] = sec
	}
	return secrets, nil
}

func (s *Server) prepared(pb *clusterv3.Cluster) (*upstream.Config, bool) {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	cfg, ok := s.prepCluster[pb]
	return cfg, ok
}

func (s *Server) preparedEndpoints(cla *endpointv3.ClusterLoadAssignment) ([]upstream.Endpoint, bool) {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	eps, ok := s.prepAssign[cla]
	return eps, ok
}

// Apply makes snap the running configuration. Either all of it is applied or,
// on error, none of it: validation and binding happen before anything running
// is touched. Listeners whose sockets are unchanged keep them. If nothing but
// their filter chains changed (listener.FilterChainOnlyChange), their
// connections keep the filter chain they were accepted with, and chains that
// were removed or changed drain; any other change replaces the whole listener,
// as in Envoy, and all its connections drain. Removed listeners stop accepting
// and drain.
func (s *Server) Apply(snap *Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return errors.New("dataplane: server is shut down")
	}
	// New versions of SDS secrets go first, so that what is built now uses
	// them; the contexts already built take them at their next handshake.
	if name, err := s.sds.Check(snap.Secrets); err != nil {
		return &ResourceError{Kind: "secret", Name: name, Err: err}
	}
	prevSecrets := s.sds.Set(snap.Secrets)
	g, err := s.build(snap, s.listeners)
	if err != nil {
		s.sds.Set(prevSecrets)
		return err
	}

	// Bind what is new before changing anything, so a port in use fails the
	// whole update.
	next := make(map[string]*listener.Listener, len(g.listeners))
	var started []*listener.Listener
	updates := map[*listener.Listener]*listener.Config{}
	var breaking []string
	for i, cfg := range g.listeners {
		l := s.listeners[cfg.Name]
		if l != nil && sameSockets(l.Config(), cfg) {
			updates[l] = cfg
			next[cfg.Name] = l
			continue
		}
		if l != nil && s.onBreaking != nil && !s.rebindHere {
			// A listener-breaking change goes to a hot-restart successor, which
			// binds the new socket; this process serves the old version until
			// it hands over.
			breaking = append(breaking, cfg.Name)
			next[cfg.Name] = l
			continue
		}
		if s.drained && (!s.drainIn || inbound(cfg)) {
			s.log.Warn("listener not started: the listeners were drained (admin DrainListeners)", "listener", cfg.Name)
			continue
		}
		l, err := listener.Start(cfg, listener.Options{Logger: s.log, Stats: s.opts.Stats, Sockets: s.sockets, ConnIDs: &s.connIDs, Serving: &s.serving,
			ByAddress: s.listenerAt, Pending: s.pending})
		if err != nil {
			for _, l := range started {
				l.StopAccepting()
			}
			s.mstats.listenerCreateFailure.Inc()
			s.sds.Set(prevSecrets)
			return &ResourceError{Kind: "listener", Index: i, Name: cfg.Name, Err: err}
		}
		started = append(started, l)
		next[cfg.Name] = l
	}
	s.countChanges(g, next, started, updates)

	// Clusters first, so that listeners never point at a cluster that is not
	// there yet. Removed clusters go only after the listeners stopped using them;
	// connections already made keep their upstream connection either way.
	s.clusters.Set(g.clusters)
	s.clusterCfgs, s.assigned = g.clusterCfgs, g.assigned
	s.routes.Set(g.routes)
	s.routeTables = g.routeTables
	s.prepMu.Lock()
	s.prepCluster, s.prepAssign = nil, nil // what was not applied now is stale
	s.prepMu.Unlock()

	var retired []*listener.FilterChain
	for l, cfg := range updates {
		retired = append(retired, l.Update(cfg)...)
	}
	// New listeners accept only now that their clusters are in place.
	for _, l := range started {
		l.Accept()
	}
	for name, l := range s.listeners {
		if next[name] != l {
			if repl := next[name]; repl != nil {
				// A listener-breaking change: the replacement is bound and
				// accepting; steer the shared addresses to it before closing.
				if err := l.HandOverTo(repl); err != nil {
					s.log.Warn("listener rebind: handover incomplete; connections still queued on the old socket may be reset", "listener", name, "error", err)
				}
			}
			l.StopAccepting()
			s.drainPending(l)
			// Chains the replacement reuses keep their connections.
			keep := map[*listener.FilterChain]bool{}
			if repl := next[name]; repl != nil {
				for _, ch := range listener.AllChains(repl.Config()) {
					keep[ch] = true
				}
			}
			for _, ch := range listener.AllChains(l.Config()) {
				if !keep[ch] {
					retired = append(retired, ch)
				}
			}
			s.log.Info("listener removed or rebound; draining its connections", "listener", name)
		}
	}
	s.listeners = next
	byAddr := make(map[netip.AddrPort]*listener.Listener, len(next))
	for _, l := range next {
		for _, a := range l.Addresses() {
			byAddr[unmapped(a)] = l
		}
	}
	s.byAddr.Store(&byAddr)
	s.drain(retired)
	s.last = snap
	if s.gen.Add(1) == 1 && !s.opts.InitializedExternally {
		s.MarkInitialized()
	}
	if len(breaking) > 0 {
		s.log.Info("listener-breaking change: handing it to a hot-restart successor", "listeners", breaking)
		go s.onBreaking(breaking)
	}
	return nil
}

// OnListenerBreaking makes listener-breaking changes (a listener's address or
// socket options) a hot restart's business: Apply keeps serving the old
// version of such a listener and calls f with their names, and f starts a
// successor that binds the new sockets. Without it (or if f's restart fails
// and it calls RebindHere), Apply rebinds in process.
func (s *Server) OnListenerBreaking(f func(listeners []string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onBreaking = f
}

// RebindHere applies the last Snapshot again, rebinding listener-breaking
// changes in this process (the fallback when a hot restart fails).
func (s *Server) RebindHere() error {
	s.mu.Lock()
	snap := s.last
	s.rebindHere = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.rebindHere = false
		s.mu.Unlock()
	}()
	if snap == nil {
		return nil
	}
	return s.Apply(snap)
}

// MarkInitialized says the first round of configuration is in place: Applied
// is closed and the server is LIVE. Apply calls it for its first Snapshot,
// unless Options.InitializedExternally leaves it to the caller (an xDS client
// whose first round takes several updates).
func (s *Server) MarkInitialized() {
	s.initOnce.Do(func() { close(s.applied) })
}

// countChanges updates the listener_manager and cluster_manager stats for an
// Apply about to be committed.
func (s *Server) countChanges(g *generation, next map[string]*listener.Listener, started []*listener.Listener, updates map[*listener.Listener]*listener.Config) {
	m := &s.mstats
	for _, l := range started {
		m.listenerCreateSuccess.Inc()
		if s.listeners[l.Name()] != nil {
			m.listenerModified.Inc()
		} else {
			m.listenerAdded.Inc()
		}
	}
	for l, cfg := range updates {
		if l.Config() != cfg && !proto.Equal(l.Config().Proto(), cfg.Proto()) {
			m.listenerModified.Inc()
		}
	}
	for name := range s.listeners {
		if next[name] == nil {
			m.listenerRemoved.Inc()
		}
	}
	m.listenersActive.Set(int64(len(next)))
	names := make(map[string]bool, len(g.clusters))
	for _, a := range g.clusters {
		names[a.Config.Name] = true
		switch c := s.clusters.Get(a.Config.Name); {
		case c == nil:
			m.clusterAdded.Inc()
		case c.Config() != a.Config && !proto.Equal(c.Config().Proto(), a.Config.Proto()):
			m.clusterModified.Inc()
		}
	}
	for _, c := range s.clusters.Clusters() {
		if !names[c.Name()] {
			m.clusterRemoved.Inc()
		}
	}
	m.clustersActive.Set(int64(len(g.clusters)))
}

// sameSockets reports whether a and b bind the same sockets (binding or not
// is part of it: a listener that starts or stops binding is replaced).
func sameSockets(a, b *listener.Config) bool {
	return a.Unbound == b.Unbound && slices.EqualFunc(a.Sockets, b.Sockets, func(x, y listener.SocketSpec) bool { return x.Key() == y.Key() })
}

// drain asks the connections of retired chains to finish, and closes whatever
// is left after the drain time. s.mu is held.
//
// A retired chain lives out the whole drain time even once it has no
// connections, as the filter chains of Envoy's drain sequence do: a
// connection its listener accepted just before the update may still join it
// (it drains at once), and closing the chain as soon as it was empty refused
// such a connection unserved (a client of a listener rebound for a socket
// option saw EOF). A shutdown takes the chain over: Shutdown closes it
// with the rest.
func (s *Server) drain(chains []*listener.FilterChain) {
	for _, ch := range chains {
		s.drainChain(ch)
		s.retired[ch] = true
		s.afterDrainTime(ch.Conns().Close, func() {
			s.mu.Lock()
			delete(s.retired, ch)
			s.mu.Unlock()
		})
	}
}

// drainPending ends, after the drain time, the connections of l (stopped)
// still in their listener filters, as drain ends its chains' connections
// (a shutdown ends them all).
func (s *Server) drainPending(l *listener.Listener) {
	s.afterDrainTime(func() { s.pending.CloseFor(l) }, nil)
}

// afterDrainTime runs over once the drain time is over, unless a shutdown
// comes first (Shutdown ends what is left itself), and then, if set, then;
// Shutdown waits for it (draining).
func (s *Server) afterDrainTime(over, then func()) {
	s.draining.Add(1)
	go func() {
		defer s.draining.Done()
		t := time.NewTimer(s.opts.DrainTime)
		defer t.Stop()
		select {
		case <-t.C:
			over()
		case <-s.stopping:
		}
		if then != nil {
			then()
		}
	}()
}

// ListenerInfo describes a running listener.
type ListenerInfo struct {
	Name  string
	Bound []netip.AddrPort
}

// Listeners describes the running listeners, sorted by name.
func (s *Server) Listeners() []ListenerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ListenerInfo, 0, len(s.listeners))
	for name, l := range s.listeners {
		out = append(out, ListenerInfo{Name: name, Bound: l.Bound()})
	}
	slices.SortFunc(out, func(a, b ListenerInfo) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// Shutdown stops accepting on every listener, lets open connections finish until
// ctx is done, then closes what is left and waits for it to end. It is safe to
// call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	chains := s.beginShutdown()
	// Wait for every connection goroutine, not for the chains' connection
	// sets to be empty: a connection the listeners accepted just before they
	// stopped may not be in its chain's set yet, and closing the sets then
	// would refuse it with its request unread (the client sees a reset; a
	// hot-restart parent hit this with a new connection per request).
	var err error
	served := make(chan struct{})
	go func() {
		s.serving.Wait()
		close(served)
	}()
	select {
	case <-served:
	case <-ctx.Done():
		err = ctx.Err()
	}
	for _, ch := range chains {
		ch.Conns().Close()
	}
	s.pending.Close()
	<-served
	s.draining.Wait()
	s.httpPools.Close()
	s.clusters.Close()
	s.accessLogs.Close()
	if err != nil {
		return fmt.Errorf("dataplane: drain time over, closed the connections left: %w", err)
	}
	return nil
}

// ReopenAccessLogs makes every access log file be opened again by its path
// before its next write, so that one log rotation moved away is followed by
// a new one (Envoy's SIGUSR1).
func (s *Server) ReopenAccessLogs() { s.accessLogs.Reopen() }

// drainChain starts the drain of a filter chain's connections with the
// configured strategy.
func (s *Server) drainChain(ch *listener.FilterChain) {
	if s.opts.GradualDrain {
		ch.Conns().DrainGradually(s.opts.DrainTime)
	} else {
		ch.Conns().Drain()
	}
}

// BeginShutdown is Shutdown's first half, for a caller that reports the
// drain as begun: every listener stops accepting and every connection is
// told to drain. Shutdown does it too (again, harmlessly).
func (s *Server) BeginShutdown() { s.beginShutdown() }

func (s *Server) beginShutdown() []*listener.FilterChain {
	s.isDraining.Store(true)
	s.mu.Lock()
	if !s.shutdown {
		s.shutdown = true
		close(s.stopping)
	}
	if s.drainTimer != nil {
		s.drainTimer.Stop()
	}
	var chains []*listener.FilterChain
	for _, l := range s.listeners {
		l.StopAccepting()
		chains = append(chains, listener.AllChains(l.Config())...)
	}
	for ch := range s.retired {
		chains = append(chains, ch)
	}
	s.mu.Unlock()

	for _, ch := range chains {
		ch.Conns().DrainNow()
	}
	return chains
}

// SetHealthCheckFailed makes the health_check filters answer 503 (failed
// true) or not, as Envoy's admin /healthcheck/fail and /healthcheck/ok. A
// draining server fails them whatever this says.
func (s *Server) SetHealthCheckFailed(failed bool) { s.hcFailed.Store(failed) }

// HealthCheckFailed implements filter.ServerHealth: the admin API failed the
// health checks, or the server is draining (shutting down, or its listeners
// drained), as its readiness is.
func (s *Server) HealthCheckFailed() bool { return s.hcFailed.Load() || s.isDraining.Load() }

// AdminHealthCheckFailed implements listener.AdminHealth: whether the admin
// API failed the health checks (SetHealthCheckFailed), whatever the drain
// state. The connections of listeners with drain_type DEFAULT end at their
// next safe point while it is true, as in Envoy.
func (s *Server) AdminHealthCheckFailed() bool { return s.hcFailed.Load() }

var _ listener.AdminHealth = (*Server)(nil)

// Generation is the number of Snapshots applied so far: 0 until the first.
func (s *Server) Generation() uint64 { return s.gen.Load() }

// Applied is closed once the first round of configuration is in place (see
// MarkInitialized).
func (s *Server) Applied() <-chan struct{} { return s.applied }

// Stats returns the stats store the Server counts in.
func (s *Server) Stats() *stats.Store { return s.opts.Stats }

// Runtime returns the layered runtime the server's filters read, nil when
// there is none.
func (s *Server) Runtime() *runtime.Loader { return s.opts.Runtime }

// DrainListeners stops every listener from accepting connections, as Envoy's
// /drain_listeners; connections already accepted go on. With graceful, the
// connections of every filter chain are first asked to end at their next safe
// point, and the listeners go on accepting (the new connections are asked the
// same) for the drain time before they stop. With inboundOnly, only the
// listeners whose traffic_direction is INBOUND stop (Envoy's ?inboundonly: a
// sidecar keeps its outbound listeners while its pod terminates); a graceful
// drain still asks every connection to end, as Envoy's drain sequence is the
// server's. Listeners that a later Apply adds are not started (inbound ones
// only, with inboundOnly). A later call without inboundOnly widens an
// inbound-only drain to every listener. It returns when the listeners stop
// (or stopped) accepting.
func (s *Server) DrainListeners(graceful, inboundOnly bool) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	widen := s.drained && s.drainIn && !inboundOnly
	if s.drained && !widen && (graceful || s.drainTimer == nil) {
		return s.drainedAt
	}
	s.drainIn = inboundOnly && (!s.drained || s.drainIn)
	s.drained = true
	s.isDraining.Store(true)
	if !graceful {
		if s.drainTimer != nil {
			s.drainTimer.Stop()
			s.drainTimer = nil
		}
		s.stopDrainedLocked()
		s.drainedAt = time.Now()
		return s.drainedAt
	}
	if s.drainTimer != nil { // a graceful drain under way: it ends as it was to, in the new scope
		return s.drainedAt
	}
	for _, l := range s.listeners {
		for _, ch := range listener.AllChains(l.Config()) {
			s.drainChain(ch)
		}
	}
	s.drainedAt = time.Now().Add(s.opts.DrainTime)
	s.drainTimer = time.AfterFunc(s.opts.DrainTime, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.drainTimer = nil
		s.stopDrainedLocked()
	})
	return s.drainedAt
}

// stopDrainedLocked stops the listeners in the drain's scope from
// accepting.
func (s *Server) stopDrainedLocked() {
	for _, l := range s.listeners {
		if !s.drainIn || inbound(l.Config()) {
			l.StopAccepting()
		}
	}
}

// inbound reports whether a listener's traffic_direction is INBOUND.
func inbound(cfg *listener.Config) bool {
	return cfg.Proto().GetTrafficDirection() == corev3.TrafficDirection_INBOUND
}
