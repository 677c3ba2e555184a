// Package admin is skiff's admin API: Envoy's admin endpoints as a gRPC service
// (skiff.admin.v1.AdminService, see proto/skiff/admin/v1/admin.proto), with
// Envoy's CSDS (envoy.service.status.v3.ClientStatusDiscoveryService),
// grpc.health.v1 and server reflection beside it, and a small HTTP side for
// scrapers and load balancers (/stats/prometheus, /stats, /ready).
//
// gRPC and HTTP share each listener: the Server is one net/http server that
// speaks HTTP/1.1 and HTTP/2 without TLS (prior knowledge, as gRPC clients
// use), and sends requests whose content-type is application/grpc to the gRPC
// server (grpc.Server.ServeHTTP) and the others to the HTTP handlers.
//
// The Server serves on any number of listeners (in skiff, the runtime
// directory's admin.sock and the bootstrap's admin.address). Calls that change
// the running process (DrainListeners, StartHotRestart, SetLogLevel,
// ReopenLogs, SetHealthCheckFailed, Shutdown) or profile it (GetProfile) are accepted
// only over unix sockets unless Options.TCPMutations is set: a unix socket in
// the 0700 runtime directory reaches only its owner, a loopback port every
// local user.
package admin

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/statsconfig"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/stats"
	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// Dataplane is what the admin API reads from and steers in the data plane.
// *dataplane.Server implements it.
type Dataplane interface {
	// Listeners describes the running listeners.
	Listeners() []dataplane.ListenerInfo
	// Clusters returns the cluster manager.
	Clusters() *upstream.Manager
	// Generation is the number of configurations applied so far.
	Generation() uint64
	// Applied is closed once the first configuration is applied.
	Applied() <-chan struct{}
	// DrainListeners stops the listeners from accepting (Envoy's
	// /drain_listeners) and returns when they stop (stopped).
	DrainListeners(graceful, inboundOnly bool) time.Time
	// ReopenAccessLogs makes the access log files be opened again by their
	// paths (Envoy's /reopen_logs).
	ReopenAccessLogs()
	// SetHealthCheckFailed makes health checks fail, or not (Envoy's
	// /healthcheck/fail and /healthcheck/ok); HealthCheckFailed reports
	// whether they fail now (asked, or draining).
	SetHealthCheckFailed(failed bool)
	HealthCheckFailed() bool
}

// XDSStatus is what the xDS client reports for CSDS and the config dump. The
// admin API answers an empty ClientStatusRequest with one ClientConfig: the
// bootstrap's node and GenericXdsConfigs.
type XDSStatus interface {
	// GenericXdsConfigs returns one entry per resource the client subscribed
	// to: type_url, name, version_info, xds_config (the accepted resource),
	// last_updated, config_status, client_status (REQUESTED, DOES_NOT_EXIST,
	// ACKED, NACKED, ...) and error_state for a NACKed update. The admin API
	// neither keeps nor changes what it returns (it redacts a copy).
	GenericXdsConfigs() []*statusv3.ClientConfig_GenericXdsConfig
}

// DynamicConfigDumper may be implemented by the XDSStatus value to give the
// config dump what GenericXdsConfigs cannot say: warming listeners and
// clusters and the version_info of each type. Without it the config dump
// shows every accepted resource of GenericXdsConfigs as active.
type DynamicConfigDumper interface {
	DynamicConfigDump() DynamicDump
}

// Options configure a Server. Dataplane and Stats are required.
type Options struct {
	Logger    *slog.Logger // nil: discard
	Dataplane Dataplane
	Stats     *stats.Store
	// Tags makes the tags of /stats/prometheus (the bootstrap's
	// stats_config); nil: Envoy's default tags.
	Tags *statsconfig.Tags
	// Types resolves the Anys of the HTTP /config_dump (the registry's
	// config types, Istio's included); nil: the types linked in.
	Types *filter.TypeResolver
	// Bootstrap gives the node (for CSDS and server info) and the static
	// resources of the config dump. It is not changed.
	Bootstrap *bootstrapv3.Bootstrap
	// XDS is nil when skiff runs without xDS: CSDS then answers with the node
	// and no resources. SetXDS sets it later, for a client started after the
	// admin API.
	XDS XDSStatus
	// Levels is the log level of the process's handler; SetLogLevel changes it.
	Levels *slog.LevelVar
	// Version is what GetServerInfo reports.
	Version string
	// StartTime is when the process started (uptime) and the bootstrap was
	// loaded (last_updated of the static resources).
	StartTime time.Time
	// RestartEpoch is the hot restart epoch: 0 unless started by a hot restart.
	RestartEpoch uint32
	// RuntimeDir is reported by GetServerInfo.
	RuntimeDir string
	// TCPMutations accepts DrainListeners, StartHotRestart, SetLogLevel,
	// ReopenLogs, SetHealthCheckFailed, Shutdown and GetProfile over TCP
	// too; by default they are accepted only over unix sockets.
	TCPMutations bool
	// HotRestart starts a hot restart, running binary (empty: skiff's own
	// executable), and returns the new process's pid and epoch once it is
	// ready; nil (hot restart off) answers StartHotRestart with UNIMPLEMENTED.
	HotRestart func(ctx context.Context, binary string) (pid int, epoch uint32, err error)
	// Shutdown makes the process exit at once, its connections closed
	// rather than drained (Envoy's /quitquitquit). It must return promptly:
	// the answer goes out after it returns, and the admin API keeps
	// answering until the process stops it. Nil answers Shutdown with
	// UNIMPLEMENTED.
	Shutdown func()
}

// Server is the admin API. Serve it on listeners; Shutdown ends it.
type Server struct {
	opts   Options
	log    *slog.Logger
	grpc   *grpc.Server
	http   *http.Server
	health *health.Server

	xds      atomic.Pointer[XDSStatus]
	draining atomic.Bool
	stateMu  sync.Mutex // serialises health and gauge updates
	gauges   serverGauges
	stop     chan struct{}
	tracker  sync.WaitGroup
	shutdown sync.Once
	calls    inflight // gRPC requests being served (ServeHTTP)
}

// serverGauges are Envoy's server.* gauges that the admin API keeps.
type serverGauges struct {
	state, live, epoch stats.Gauge
	// workersStarted is listener_manager.workers_started: 1 from the
	// moment the server is first live (Envoy's workers start then, once
	// the initial configuration is in), unset before. istio-agent's
	// readiness check reads it with server.state.
	workersStarted stats.Gauge
}

// mutating reports whether a method changes the running process: refused over
// TCP unless Options.TCPMutations.
func mutating(method string) bool {
	switch method {
	case adminv1.AdminService_DrainListeners_FullMethodName,
		adminv1.AdminService_StartHotRestart_FullMethodName,
		adminv1.AdminService_SetLogLevel_FullMethodName,
		adminv1.AdminService_ReopenLogs_FullMethodName,
		adminv1.AdminService_SetHealthCheckFailed_FullMethodName,
		adminv1.AdminService_Shutdown_FullMethodName,
		// Not a change, but a CPU profile costs the data path and only one
		// runs at a time, and Envoy takes it as a POST too.
		adminv1.AdminService_GetProfile_FullMethodName:
		return true
	}
	return false
}

// New returns a Server. It starts tracking the data plane's state at once:
// call Shutdown when done with it, even if it never served.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Bootstrap == nil {
		opts.Bootstrap = &bootstrapv3.Bootstrap{}
	}
	if opts.Levels == nil {
		opts.Levels = new(slog.LevelVar)
	}
	if opts.Tags == nil {
		opts.Tags = statsconfig.DefaultTags()
	}
	if opts.StartTime.IsZero() {
		opts.StartTime = time.Now()
	}
	s := &Server{opts: opts, log: opts.Logger, health: health.NewServer(), stop: make(chan struct{})}
	// Each process has its own (not carried over a hot restart), as in Envoy.
	s.gauges = serverGauges{
		state: opts.Stats.GaugeMode("server.state", stats.NeverImport),
		live:  opts.Stats.GaugeMode("server.live", stats.NeverImport),
		epoch: opts.Stats.GaugeMode("server.hot_restart_epoch", stats.NeverImport),

		workersStarted: opts.Stats.GaugeMode("listener_manager.workers_started", stats.NeverImport),
	}
	s.gauges.epoch.Set(int64(opts.RestartEpoch))
	if opts.XDS != nil {
		s.SetXDS(opts.XDS)
	}

	s.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(s.unaryGuard),
		grpc.ChainStreamInterceptor(s.streamGuard),
	)
	adminv1.RegisterAdminServiceServer(s.grpc, &service{s: s})
	statusv3.RegisterClientStatusDiscoveryServiceServer(s.grpc, &csds{s: s})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)

	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	s.http = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		Protocols:         p,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
	}
	s.updateState()
	s.tracker.Add(1)
	go s.track()
	return s
}

// serveHTTP sends gRPC requests to the gRPC server and the others to the HTTP
// handlers.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		s.calls.add()
		defer s.calls.done()
		s.grpc.ServeHTTP(w, r)
		return
	}
	s.httpHandler(w, r)
}

// Serve accepts connections on ln until Shutdown, and then returns nil. It
// may be called for several listeners at once.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the Server: running calls (WatchStats streams, health
// watches) end, the listeners close, and connections are given until ctx is
// done to finish what they are sending before they are closed.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.shutdown.Do(func() {
		close(s.stop)
		s.tracker.Wait()
		s.health.Shutdown()
		// Calls in flight finish, their responses written (a StartHotRestart
		// answers just before its process hands over and exits): grpc's own
		// GracefulStop would cut them, since it closes ServeHTTP's streams.
		// Streams that only the client would end (WatchStats) are cut after a
		// short grace, so that http.Server.Shutdown does not wait for them.
		grace := time.NewTimer(time.Second)
		select {
		case <-s.calls.idle():
		case <-grace.C:
		case <-ctx.Done():
		}
		grace.Stop()
		s.grpc.Stop()
		if err = s.http.Shutdown(ctx); err != nil {
			s.http.Close()
		}
	})
	return err
}

// SetXDS makes x the source of CSDS and of the config dump's dynamic
// resources.
func (s *Server) SetXDS(x XDSStatus) { s.xds.Store(&x) }

// xdsStatus returns the XDSStatus, nil without xDS.
func (s *Server) xdsStatus() XDSStatus {
	if p := s.xds.Load(); p != nil {
		return *p
	}
	return nil
}

// SetDraining makes the server DRAINING: /ready and GetReady fail, the health
// service reports NOT_SERVING. skiff calls it when it shuts down.
func (s *Server) SetDraining() {
	s.draining.Store(true)
	s.updateState()
}

// State is the server's state: INITIALIZING until the data plane has its first
// round of configuration (with xDS: clusters, endpoints, listeners and routes,
// or their timeouts), then LIVE, and DRAINING once SetDraining was called or
// the listeners were drained.
func (s *Server) State() adminv1.ServerState {
	switch {
	case s.draining.Load():
		return adminv1.ServerState_SERVER_STATE_DRAINING
	}
	select {
	case <-s.opts.Dataplane.Applied():
		return adminv1.ServerState_SERVER_STATE_LIVE
	default:
	}
	return adminv1.ServerState_SERVER_STATE_INITIALIZING
}

// track updates the health status and gauges when the first configuration is
// applied.
func (s *Server) track() {
	defer s.tracker.Done()
	select {
	case <-s.opts.Dataplane.Applied():
		s.updateState()
	case <-s.stop:
	}
}

// updateState brings the health service and the server.* gauges in line with
// State.
func (s *Server) updateState() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	st := s.State()
	hs := healthpb.HealthCheckResponse_NOT_SERVING
	live := int64(0)
	if st == adminv1.ServerState_SERVER_STATE_LIVE {
		hs, live = healthpb.HealthCheckResponse_SERVING, 1
	}
	s.health.SetServingStatus("", hs)
	for _, name := range []string{adminv1.AdminService_ServiceDesc.ServiceName, statusv3.ClientStatusDiscoveryService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(name, hs)
	}
	s.gauges.live.Set(live)
	s.gauges.state.Set(envoyState(st))
	if live == 1 {
		s.gauges.workersStarted.Set(1)
	}
}

// envoyState is the value of Envoy's server.state gauge for st.
func envoyState(st adminv1.ServerState) int64 {
	switch st {
	case adminv1.ServerState_SERVER_STATE_LIVE:
		return 0
	case adminv1.ServerState_SERVER_STATE_DRAINING:
		return 1
	}
	return 3 // INITIALIZING
}

// viaUnixSocket reports whether the call in ctx came over a unix socket.
// Anything it cannot tell counts as TCP.
func viaUnixSocket(ctx context.Context) bool {
	if p, ok := peer.FromContext(ctx); ok && p.LocalAddr != nil {
		return p.LocalAddr.Network() == "unix"
	}
	if a, ok := ctx.Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a.Network() == "unix"
	}
	return false
}

func (s *Server) guard(ctx context.Context, method string) error {
	if !mutating(method) || s.opts.TCPMutations || viaUnixSocket(ctx) {
		return nil
	}
	name := method[strings.LastIndexByte(method, '/')+1:]
	return status.Errorf(codes.PermissionDenied,
		"%s changes the running skiff and is accepted only over the admin unix socket (<runtime-dir>/%s); start skiff with --admin-tcp-mutations to accept it over TCP",
		name, SocketName)
}

func (s *Server) unaryGuard(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.guard(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamGuard(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.guard(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// inflight counts requests being served and says when there are none. Unlike a
// sync.WaitGroup it may gain requests while someone waits for it to empty.
type inflight struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0; nil if nobody waits
}

func (f *inflight) add() {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 && f.zero != nil {
		close(f.zero)
		f.zero = nil
	}
	f.mu.Unlock()
}

// idle returns a channel closed once no request is being served.
func (f *inflight) idle() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if f.zero == nil {
		f.zero = make(chan struct{})
	}
	return f.zero
}
