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
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/listener"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Snapshot is a complete data-plane configuration.
type Snapshot struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
}

// ResourceError is a configuration error in one resource of a Snapshot. Err
// carries the field path inside the resource (see package cfgerr).
type ResourceError struct {
	Kind  string // "listener" or "cluster"
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
	// DrainTime is how long connections of removed listeners and filter chains
	// may go on before they are closed.
	DrainTime time.Duration
}

// Server runs listeners and clusters.
type Server struct {
	opts     Options
	log      *slog.Logger
	clusters *upstream.Manager
	sockets  *listener.SocketTable
	buffers  *bufpool.Pool
	pipes    *netio.PipePool
	connIDs  atomic.Uint64

	mu        sync.Mutex // serialises Apply and Shutdown
	listeners map[string]*listener.Listener
	retired   map[*listener.FilterChain]bool // draining chains of older generations
	shutdown  bool
	draining  sync.WaitGroup // drain timers
	serving   sync.WaitGroup // connection goroutines of every listener
}

// NewServer returns a Server with no listeners or clusters.
func NewServer(opts Options) *Server {
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		clusters:  upstream.NewManager(opts.Stats),
		sockets:   listener.NewSocketTable(opts.Logger),
		buffers:   bufpool.New(),
		listeners: map[string]*listener.Listener{},
		retired:   map[*listener.FilterChain]bool{},
	}
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
		Logger:   s.log,
		Stats:    s.opts.Stats,
		Clusters: s.clusters,
		Buffers:  s.buffers,
		Pipes:    s.pipes,
	}
}

// generation is a validated Snapshot, ready to apply.
type generation struct {
	listeners []*listener.Config
	clusters  []*upstream.Config
}

// build validates snap and builds every filter, reusing the filter chains of
// running listeners that did not change. It touches no socket.
func (s *Server) build(snap *Snapshot, running map[string]*listener.Listener) (*generation, error) {
	g := &generation{}
	seen := map[string]int{}
	for i, pb := range snap.Clusters {
		cfg, err := upstream.NewConfig(pb)
		if err != nil {
			return nil, &ResourceError{Kind: "cluster", Index: i, Name: pb.GetName(), Err: err}
		}
		if j, dup := seen[cfg.Name]; dup {
			return nil, &ResourceError{Kind: "cluster", Index: i, Name: pb.GetName(), Err: cfgerr.Errorf("name", "duplicate of cluster %d", j)}
		}
		seen[cfg.Name] = i
		g.clusters = append(g.clusters, cfg)
	}
	clear(seen)
	bound := map[netip.AddrPort]string{}
	for i, pb := range snap.Listeners {
		var prev *listener.Config
		if l := running[pb.GetName()]; l != nil {
			prev = l.Config()
		}
		cfg, err := listener.Build(pb, s.opts.Registry, s.factoryContext(), prev)
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

// Validate checks snap as Apply would, without applying it.
func (s *Server) Validate(snap *Snapshot) error {
	_, err := s.build(snap, nil)
	return err
}

// Apply makes snap the running configuration. Either all of it is applied or,
// on error, none of it: validation and binding happen before anything running
// is touched. Listeners whose sockets are unchanged keep them; their connections
// keep the filter chain they were accepted with, and chains that were removed or
// changed drain. Removed listeners stop accepting and drain.
func (s *Server) Apply(snap *Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return errors.New("dataplane: server is shut down")
	}
	g, err := s.build(snap, s.listeners)
	if err != nil {
		return err
	}

	// Bind what is new before changing anything, so a port in use fails the
	// whole update.
	next := make(map[string]*listener.Listener, len(g.listeners))
	var started []*listener.Listener
	updates := map[*listener.Listener]*listener.Config{}
	for i, cfg := range g.listeners {
		if l := s.listeners[cfg.Name]; l != nil && sameSockets(l.Config(), cfg) {
			updates[l] = cfg
			next[cfg.Name] = l
			continue
		}
		l, err := listener.Start(cfg, listener.Options{Logger: s.log, Stats: s.opts.Stats, Sockets: s.sockets, ConnIDs: &s.connIDs, Serving: &s.serving})
		if err != nil {
			for _, l := range started {
				l.StopAccepting()
			}
			return &ResourceError{Kind: "listener", Index: i, Name: cfg.Name, Err: err}
		}
		started = append(started, l)
		next[cfg.Name] = l
	}

	// Clusters first, so that listeners never point at a cluster that is not
	// there yet. Removed clusters go only after the listeners stopped using them;
	// connections already made keep their upstream connection either way.
	s.clusters.Set(g.clusters)

	var retired []*listener.FilterChain
	for l, cfg := range updates {
		retired = append(retired, l.Update(cfg)...)
	}
	for name, l := range s.listeners {
		if next[name] != l {
			l.StopAccepting()
			retired = append(retired, listener.AllChains(l.Config())...)
			s.log.Info("listener removed or rebound; draining its connections", "listener", name)
		}
	}
	s.listeners = next
	s.drain(retired)
	return nil
}

func sameSockets(a, b *listener.Config) bool {
	return slices.EqualFunc(a.Sockets, b.Sockets, func(x, y listener.SocketSpec) bool { return x.Key() == y.Key() })
}

// drain asks the connections of retired chains to finish, and closes whatever
// is left after the drain time. s.mu is held.
func (s *Server) drain(chains []*listener.FilterChain) {
	for _, ch := range chains {
		ch.Conns().Drain()
		s.retired[ch] = true
		s.draining.Add(1)
		go func() {
			defer s.draining.Done()
			ctx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTime)
			defer cancel()
			ch.Conns().Wait(ctx)
			ch.Conns().Close()
			s.mu.Lock()
			delete(s.retired, ch)
			s.mu.Unlock()
		}()
	}
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
	s.mu.Lock()
	s.shutdown = true
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
		ch.Conns().Drain()
	}
	var err error
	for _, ch := range chains {
		if err = ch.Conns().Wait(ctx); err != nil {
			break
		}
	}
	for _, ch := range chains {
		ch.Conns().Close()
	}
	s.serving.Wait()
	s.draining.Wait()
	if err != nil {
		return fmt.Errorf("dataplane: drain time over, closed the connections left: %w", err)
	}
	return nil
}
