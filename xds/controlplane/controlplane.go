// Package controlplane is skiff's file-backed xDS control plane: it serves the
// Envoy v3 resources found in a directory of YAML and JSON files over gRPC, and
// pushes a new version whenever the files change.
//
// # Files
//
// Every *.yaml, *.yml and *.json file below the directory is read, in
// subdirectories too (names starting with "." are skipped). A file holds one
// resource, a mapping whose "@type" names its type:
//
//	"@type": type.googleapis.com/envoy.config.listener.v3.Listener
//	name: ingress
//	address: ...
//
// or several, as a YAML sequence or JSON array of such mappings, or as a mapping
// with a single "resources" key holding that list. The types served are those of
// go-control-plane's snapshot cache: Listener, Cluster, ClusterLoadAssignment,
// RouteConfiguration, ScopedRouteConfiguration, VirtualHost, Secret, Runtime,
// TypedExtensionConfig and RateLimitConfig. A typed_config may name the Envoy
// and xDS API types commonly used (see types_known.go for the list and why it is
// not all of them), and the Istio type istiod sends outside a TypedStruct
// (istio.alpn's). An empty file holds no resources.
//
// # Versions
//
// The directory is one set: a file that cannot be decoded or validated (against
// the protoc-gen-validate rules of the resource and of each typed_config), a
// resource without a name, or two resources of one type with the same name make
// the whole directory invalid, and the last valid set keeps being served. Each
// problem is logged with its file and field path.
//
// A set's version is a hash of its content, so reading unchanged files again
// pushes nothing. Each type has its own version_info (a hash of that type's
// resources), so a changed ClusterLoadAssignment does not resend the listeners;
// delta clients get only the resources that changed. References the set does not
// satisfy (an EDS cluster without its ClusterLoadAssignment, a route configuration
// named over RDS but not defined, a cluster named by a route or a tcp_proxy) are
// logged as warnings and served anyway: clients wait for what they miss.
//
// # Serving
//
// Every node gets the same resources, whatever its id. The server answers the
// aggregated service (ADS) and the per-type services (LDS, CDS, EDS, RDS, SRDS,
// VHDS, SDS, RTDS, ECDS, RLS config), each in its state-of-the-world and, where
// the protocol has it, delta variant.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	extensionservice "github.com/envoyproxy/go-control-plane/envoy/service/extension/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	runtimeservice "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rlsconfigservice "github.com/envoyproxy/go-control-plane/ratelimit/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// MaxMessageSize is the largest gRPC message the server sends or receives. A
// response holds every resource of a type, and Istio-size sets pass gRPC's
// default of 4 MiB.
const MaxMessageSize = 64 << 20

// Options configures a Server.
type Options struct {
	// Dir is the directory of resource files. Empty means no files: the server
	// starts with no resources, and only Set changes them.
	Dir string
	// Logger receives what the server does and every problem with the files.
	// Nil discards it.
	Logger *slog.Logger
}

// Server is a file-backed xDS control plane. Its methods are safe for concurrent use.
type Server struct {
	dir    string
	log    *slog.Logger
	loader loader
	cache  cachev3.SnapshotCache

	mu      sync.Mutex // serializes loading and pushing sets
	current set        // the set being served; guarded by mu
	failing bool       // the last Reload failed; guarded by mu

	version atomic.Pointer[string]
	serving atomic.Bool
}

// New returns a server holding the resources of o.Dir, which must be valid. It
// serves nothing until Serve is called.
func New(o Options) (*Server, error) {
	l, err := newLoader()
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		dir:    o.Dir,
		log:    log,
		loader: l,
		cache:  cachev3.NewSnapshotCache(false, anyNode{}, xdsLogger{log}),
	}
	initial := make(set)
	if s.dir != "" {
		fi, err := os.Stat(s.dir)
		if err != nil {
			return nil, fmt.Errorf("resource directory: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("resource directory %s: not a directory", s.dir)
		}
		if initial, err = s.loader.loadDir(s.dir); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.push(initial); err != nil {
		return nil, err
	}
	return s, nil
}

// Version returns the version of the resources being served: a hash of their content.
func (s *Server) Version() string { return *s.version.Load() }

// Reload reads the directory again and, if it is valid and its content changed,
// pushes it to every client. If it is not valid, the problems are logged (one
// line per file, naming the field) and returned, and the current set keeps being
// served. Serve calls Reload whenever files change.
func (s *Server) Reload() error {
	if s.dir == "" {
		return errors.New("controlplane: Reload: the server has no directory")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next, err := s.loader.loadDir(s.dir)
	if err != nil {
		s.failing = true
		s.logLoadError(err)
		return err
	}
	if s.failing {
		s.failing = false
		s.log.Info("resource directory is valid again", "dir", s.dir)
	}
	return s.push(next)
}

// logLoadError logs each problem of a failed load.
func (s *Server) logLoadError(err error) {
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	for _, err := range errs {
		var attrs []any
		var fe *FileError
		if errors.As(err, &fe) {
			attrs = append(attrs, "file", fe.File)
			err = fe.Err
		}
		var ce *cfgerr.Error
		if errors.As(err, &ce) && ce.Path != "" {
			attrs = append(attrs, "field", ce.Path)
			err = ce.Err
		}
		attrs = append(attrs, "error", err, "version", s.Version())
		s.log.Error("invalid resource file; still serving the last valid version", attrs...)
	}
}

// Set replaces the resources being served with resources, keyed by type URL
// (resource.ListenerType and the others), and pushes them to every client. It
// checks only what serving needs (a type the cache serves, matching the key, a
// name, no two of one type with the same name) so that tests can serve what a
// file would be refused for, to see a client reject it. A later Reload, or a
// change to the directory, replaces what Set gave.
func (s *Server) Set(resources map[resource.Type][]types.Resource) error {
	var entries []entry
	for url, rs := range resources {
		if cachev3.GetResponseType(url) == types.UnknownType {
			return fmt.Errorf("controlplane: Set: %q is not a resource type served over xDS", url)
		}
		for i, r := range rs {
			if r == nil {
				return fmt.Errorf("controlplane: Set: %s[%d] is nil", shortName(url), i)
			}
			if got := resource.APITypePrefix + string(r.ProtoReflect().Descriptor().FullName()); got != url {
				return fmt.Errorf("controlplane: Set: %s[%d] is a %s", shortName(url), i, r.ProtoReflect().Descriptor().FullName())
			}
			name := cachev3.GetResourceName(r)
			if name == "" {
				return fmt.Errorf("controlplane: Set: %s[%d] has no name", shortName(url), i)
			}
			entries = append(entries, entry{res: proto.Clone(r), name: name})
		}
	}
	next, errs := newSet(entries)
	if len(errs) > 0 {
		return fmt.Errorf("controlplane: Set: %w", errors.Join(errs...))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.push(next)
}

// push serves next if it differs from the current set. s.mu must be held.
func (s *Server) push(next set) error {
	snap, version, err := next.snapshot()
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	prev := s.version.Load()
	if prev != nil && *prev == version {
		s.log.Debug("resources unchanged", "version", version)
		return nil
	}
	// Version is the new one by the time a client sees it.
	old := s.current
	s.current = next
	s.version.Store(&version)

	attrs := []any{"version", version}
	if prev == nil {
		if s.dir != "" {
			attrs = append(attrs, "dir", s.dir)
		}
		attrs = append(attrs, next.counts()...)
		s.log.Info("resources loaded", attrs...)
	} else {
		attrs = append(attrs, "previous", *prev)
		attrs = append(attrs, diff(old, next)...)
		s.log.Info("pushing a new version", attrs...)
	}
	if err := s.cache.SetSnapshot(context.Background(), nodeKey, snap); err != nil {
		// The simple cache fails only when its context is done, and this one never is.
		return fmt.Errorf("controlplane: %w", err)
	}
	for _, w := range next.check(s.loader.resolver) {
		attrs := []any{"resource", shortName(resource.APITypePrefix+string(w.from.res.ProtoReflect().Descriptor().FullName())) + " " + w.from.name}
		if w.from.file != "" {
			attrs = append(attrs, "file", w.from.file)
		}
		attrs = append(attrs, "field", cfgerr.Join(w.from.path, w.field), "problem", w.msg)
		s.log.Warn("unresolved reference; served anyway, clients wait for it", attrs...)
	}
	return nil
}

// diff lists, as slog attributes, the resources added, changed and removed
// between two sets, as "Type/name".
func diff(old, next set) []any {
	const most = 10
	var added, changed, removed []string
	note := func(list *[]string, url resource.Type, name string) {
		switch {
		case len(*list) < most:
			*list = append(*list, shortName(url)+"/"+name)
		case len(*list) == most:
			*list = append(*list, "...")
		}
	}
	for _, url := range typeURLs() {
		before := make(map[string]types.Resource, len(old[url]))
		for _, e := range old[url] {
			before[e.name] = e.res
		}
		for _, e := range next[url] {
			switch prev, ok := before[e.name]; {
			case !ok:
				note(&added, url, e.name)
			case !proto.Equal(prev, e.res):
				note(&changed, url, e.name)
			}
			delete(before, e.name)
		}
		for _, e := range old[url] {
			if _, gone := before[e.name]; gone {
				note(&removed, url, e.name)
			}
		}
	}
	var attrs []any
	for _, d := range []struct {
		key   string
		names []string
	}{{"added", added}, {"changed", changed}, {"removed", removed}} {
		if len(d.names) > 0 {
			attrs = append(attrs, d.key, strings.Join(d.names, ","))
		}
	}
	return attrs
}

// Serve serves xDS on l until ctx is done, then closes l and every stream (the
// clients keep their configuration and reconnect) and returns nil. With a
// directory, it also watches it, and calls Reload when files change. Serve may
// be called once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("controlplane: Serve called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	if s.dir != "" {
		w, err := newWatcher(s.dir)
		if err != nil {
			l.Close()
			return err
		}
		wg.Go(func() {
			w.run(ctx, func() { _ = s.Reload() }, func(err error) {
				s.log.Warn("watching the resource directory", "dir", s.dir, "error", err)
			})
		})
	}

	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	xs := serverv3.NewServer(ctx, s.cache, newStreamLog(s.log).callbacks(), sotwv3.WithLogger(xdsLogger{s.log}))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xs)
	routeservice.RegisterScopedRoutesDiscoveryServiceServer(gs, xs)
	routeservice.RegisterVirtualHostDiscoveryServiceServer(gs, xs)
	secretservice.RegisterSecretDiscoveryServiceServer(gs, xs)
	runtimeservice.RegisterRuntimeDiscoveryServiceServer(gs, xs)
	extensionservice.RegisterExtensionConfigDiscoveryServiceServer(gs, xs)
	rlsconfigservice.RegisterRateLimitConfigDiscoveryServiceServer(gs, xs)

	wg.Go(func() {
		<-ctx.Done()
		// GracefulStop would wait for the xDS streams to end, which they do not.
		gs.Stop()
	})
	err := gs.Serve(l)
	l.Close() // gRPC does not close it when stopped before it started serving
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("controlplane: serving on %s: %w", l.Addr(), err)
}

// Listen opens the listener an address names: "unix:PATH" (or "unix://PATH",
// gRPC's spelling) for a unix socket, or host:port for TCP. A socket file left
// behind by a server that is gone is replaced.
func Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	path = strings.TrimPrefix(path, "//")
	if path == "" {
		return nil, fmt.Errorf("listen %s: empty socket path", addr)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen unix %s: a server is already listening there", path)
		}
		os.Remove(path)
	}
	return net.Listen("unix", path)
}

// nodeKey is the one key of the snapshot cache: every node gets the same resources.
const nodeKey = ""

// anyNode maps every node to nodeKey.
type anyNode struct{}

func (anyNode) ID(*corev3.Node) string { return nodeKey }
