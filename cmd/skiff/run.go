package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/admin"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/dataplane/restart"
	"github.com/skiffproxy/skiff/dataplane/statsconfig"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/runtimedir"
	"github.com/skiffproxy/skiff/internal/sdnotify"
	"github.com/skiffproxy/skiff/internal/stats"
	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
	"github.com/skiffproxy/skiff/xds/bootstrap"
)

// runOptions are the flags of 'skiff run'. Envoy's spellings and skiff's own sit
// side by side, so that scripts written for Envoy start skiff unchanged.
type runOptions struct {
	configPath, configYAML string
	mode                   string
	logLevel, logPath      string
	logEncoding            string
	drainTime              time.Duration
	drainStrategy          string
	disableHotRestart      bool
	parentShutdownTime     time.Duration
	readyTimeout           time.Duration
	serviceNode            string
	serviceCluster         string
	serviceZone            string
	concurrency            int
	runtimeDir             string
	supervise              bool
	admin                  adminFlags
	fileFlush              time.Duration
}

func parseRunFlags(args []string, stderr io.Writer) (*runOptions, error) {
	o := &runOptions{}
	fs := flag.NewFlagSet("skiff run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: skiff run -c FILE [flags]\n\nRuns a data plane from an Envoy v3 bootstrap (YAML, JSON, .pb or .pb_text).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.configPath, "c", "", "path to the bootstrap file (Envoy's -c)")
	fs.StringVar(&o.configPath, "config-path", "", "same as -c")
	fs.StringVar(&o.configYAML, "config-yaml", "", "bootstrap YAML merged over the file (Envoy's --config-yaml)")
	fs.StringVar(&o.mode, "mode", "serve", "serve, or validate: check the configuration and exit")
	fs.StringVar(&o.logLevel, "l", "info", "log level: trace, debug, info, warning, error, critical, off")
	fs.StringVar(&o.logLevel, "log-level", "info", "same as -l")
	fs.StringVar(&o.logPath, "log-path", "", "write logs to this file instead of stderr")
	fs.StringVar(&o.logEncoding, "log-encoding", "text", "log encoding: text or json")
	fs.DurationVar(&o.drainTime, "drain-time", 5*time.Second, "how long connections may finish after a stop or a listener removal")
	drainS := fs.Int("drain-time-s", -1, "Envoy's spelling of --drain-time, in seconds")
	fs.StringVar(&o.drainStrategy, "drain-strategy", "gradual", "how connections of removed or changed filter chains are asked to end over the drain time: gradual (spread over it, Envoy's default) or immediate (all at once); a stop drains immediately")
	fs.DurationVar(&o.parentShutdownTime, "parent-shutdown-time", 10*time.Second, "how long a hot-restart parent lives at most after handing over")
	parentS := fs.Int("parent-shutdown-time-s", -1, "Envoy's spelling of --parent-shutdown-time, in seconds")
	fs.BoolVar(&o.disableHotRestart, "disable-hot-restart", false, "no hot restart (Envoy's flag): no reconfig socket, SIGHUP is logged and ignored, and a runtime dir in use is an error rather than a takeover")
	fs.DurationVar(&o.readyTimeout, "hot-restart-ready-timeout", time.Minute, "how long a hot-restart successor may take to serve before its parent gives up on it and keeps serving")
	fs.StringVar(&o.serviceNode, "service-node", "", "node.id (overrides the bootstrap)")
	fs.StringVar(&o.serviceCluster, "service-cluster", "", "node.cluster (overrides the bootstrap)")
	fs.StringVar(&o.serviceZone, "service-zone", "", "node.locality.zone (overrides the bootstrap)")
	fs.IntVar(&o.concurrency, "concurrency", 0, "worker threads (GOMAXPROCS); 0 keeps Go's default of one per CPU")
	fs.Bool("cpuset-threads", false, "Envoy's flag for sizing the workers by the CPU set rather than the machine's CPUs; accepted, as Go's default already counts the CPUs skiff may run on (its affinity mask and cgroup quota)")
	fs.StringVar(&o.runtimeDir, "runtime-dir", runtimedir.Default(), "directory for this instance's sockets and stats")
	flushMS := fs.Int("file-flush-interval-msec", 0, "how often access log files are written to, in milliseconds (Envoy's flag; skiff's default is 1000, as istio-agent sets it)")
	ipVersion := fs.String("local-address-ip-version", "v4", "Envoy's flag (v4 or v6) for the address family of the server's local address, which skiff does not use: checked, without effect")
	fs.Bool("allow-unknown-static-fields", false, "Envoy's flag: accepted, but skiff still refuses a bootstrap with fields it does not know (it never ignores configuration)")
	componentLevels := fs.String("component-log-level", "", "Envoy's per-component log levels (component:level,...): checked, without effect (skiff's log has no components; -l sets its level)")
	fs.String("log-format", "", "Envoy's log line pattern: accepted, without effect (skiff's lines are slog's, see --log-encoding)")
	fs.BoolVar(&o.supervise, "supervise", false, "run under a small supervisor that outlives hot restarts (for PID 1 in containers and pid-following process managers)")
	o.admin.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags only; did you mean -c %s?)", fs.Arg(0), fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["c"] && set["config-path"] {
		return nil, errors.New("-c and --config-path are the same flag; give one")
	}
	if *drainS >= 0 {
		if set["drain-time"] {
			return nil, errors.New("--drain-time and --drain-time-s are the same setting; give one")
		}
		o.drainTime = time.Duration(*drainS) * time.Second
	}
	if *parentS >= 0 {
		if set["parent-shutdown-time"] {
			return nil, errors.New("--parent-shutdown-time and --parent-shutdown-time-s are the same setting; give one")
		}
		o.parentShutdownTime = time.Duration(*parentS) * time.Second
	}
	if o.configPath == "" && o.configYAML == "" {
		return nil, errors.New("no configuration: give a bootstrap file with -c FILE (or --config-yaml)")
	}
	if o.mode != "serve" && o.mode != "validate" {
		return nil, fmt.Errorf("--mode %q: skiff supports serve and validate", o.mode)
	}
	if o.drainStrategy != "gradual" && o.drainStrategy != "immediate" {
		return nil, fmt.Errorf("--drain-strategy %q: gradual or immediate", o.drainStrategy)
	}
	if o.drainTime < 0 || o.parentShutdownTime < 0 {
		return nil, errors.New("--drain-time and --parent-shutdown-time must not be negative")
	}
	if o.readyTimeout <= 0 {
		return nil, errors.New("--hot-restart-ready-timeout must be positive")
	}
	if *flushMS < 0 {
		return nil, errors.New("--file-flush-interval-msec must not be negative")
	}
	o.fileFlush = time.Duration(*flushMS) * time.Millisecond
	if *ipVersion != "v4" && *ipVersion != "v6" {
		return nil, fmt.Errorf("--local-address-ip-version %q: v4 or v6", *ipVersion)
	}
	if *componentLevels != "" {
		for _, cl := range strings.Split(*componentLevels, ",") {
			_, level, ok := strings.Cut(cl, ":")
			if !ok {
				return nil, fmt.Errorf("--component-log-level %q: want component:level pairs, comma-separated", *componentLevels)
			}
			if _, err := admin.ParseLogLevel(level); err != nil {
				return nil, fmt.Errorf("--component-log-level %q: %w", *componentLevels, err)
			}
		}
	}
	return o, nil
}

func runCmd(args []string, stdout, stderr io.Writer) error {
	o, err := parseRunFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.supervise && o.mode == "serve" {
		return supervise(withoutFlag(args, "supervise"), o.runtimeDir, stderr)
	}
	levels := new(slog.LevelVar)
	log, closeLog, err := newLogger(levels, o.logLevel, o.logEncoding, o.logPath, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	if o.concurrency > 0 {
		runtime.GOMAXPROCS(o.concurrency)
	}
	tuneGC()

	source := bootstrap.SourceName(o.configPath, o.configYAML)
	b, err := bootstrap.Load(o.configPath, o.configYAML)
	if err != nil {
		return err
	}
	bootstrap.ApplyNodeFlags(b, o.serviceNode, o.serviceCluster)
	if o.serviceZone != "" {
		if b.Node == nil {
			b.Node = &corev3.Node{}
		}
		if b.Node.Locality == nil {
			b.Node.Locality = &corev3.Locality{}
		}
		b.Node.Locality.Zone = o.serviceZone
	}
	if err := checkAdmin(b, source, o.admin); err != nil {
		return err
	}
	if o.mode == "validate" {
		if _, err := newServer(b, source, log, o.tuning(), stats.NewStore()); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "configuration '%s' OK\n", source)
		return nil
	}
	// Everything that can be checked without the runtime directory or a socket
	// is checked first: a bad bootstrap stops here, before any of them.
	if _, err := newServer(b, source, log, o.tuning(), stats.NewStore()); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, exit := withExitNow(ctx)
	defer exit.cancel(nil)
	// SIGUSR1 reopens the access logs, as Envoy's does (logrotate's
	// postrotate sends it); taken from here on so that it never kills skiff.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	// SIGHUP starts a hot restart; like Envoy, skiff never dies of it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	dir, err := runtimedir.Open(o.runtimeDir)
	var inherited *restart.Inherited
	if errors.Is(err, runtimedir.ErrInUse) && o.disableHotRestart {
		return fmt.Errorf("runtime dir %s belongs to a running skiff, and --disable-hot-restart rules out taking over from it: %w", o.runtimeDir, err)
	}
	if errors.Is(err, runtimedir.ErrInUse) {
		// Another skiff owns the directory: take over from it (hot restart).
		inherited, dir, err = takeOver(ctx, o.runtimeDir, log)
		if err != nil {
			return fmt.Errorf("runtime dir %s belongs to a running skiff, and taking over from it failed: %w", o.runtimeDir, err)
		}
		if os.Getenv(restartChildEnv) != "" && len(inherited.Handover.GetBootstrap()) > 0 {
			// Started by the parent: run exactly what it ran.
			var pb bootstrapv3.Bootstrap
			if err := proto.Unmarshal(inherited.Handover.GetBootstrap(), &pb); err != nil {
				inherited.Refuse("decoding the bootstrap: " + err.Error())
				return fmt.Errorf("hot restart: decoding the parent's bootstrap: %w", err)
			}
			b, source = &pb, "the parent's bootstrap"
		}
	}
	if err != nil {
		return err
	}
	defer dir.Close()
	var st *stats.Store
	sc, err := statsconfig.New(b.GetStatsConfig()) // checked with the bootstrap, unless it is the parent's
	if err != nil {
		err = fmt.Errorf("%s: stats_config: %w", source, err)
	} else {
		st, err = stats.Open(dir.File(statsFile), stats.WithLogger(log), stats.WithAccept(sc.Accept))
	}
	if err != nil {
		if inherited != nil {
			inherited.Refuse(err.Error())
		}
		return err
	}
	defer st.Close()
	srv, err := newServer(b, source, log, o.tuning(), st)
	adminCfg := &adminConfig{adminFlags: o.admin, runtimeDir: dir.Path, levels: levels, tags: sc.Tags, shutdown: exit.request}
	if err == nil && inherited != nil {
		var socks []restart.ListenSocket
		socks, adminCfg.inheritedTCP = splitAdminSocket(inherited.Sockets)
		err = srv.srv.InheritSockets(socks)
	}
	if err != nil {
		if inherited != nil {
			inherited.Refuse(err.Error())
		}
		return err
	}
	adminCfg.types = srv.types

	go stats.NewServerStats(st, time.Now()).Run(ctx, time.Second)
	var hr *hotRestart
	if !o.disableHotRestart {
		hr = newHotRestart(log, dir, srv.srv, st, b, o.readyTimeout)
		if inherited != nil {
			hr.epoch = inherited.Handover.GetGeneration() + 1
		}
	}
	return serve(ctx, serveOptions{
		srv: srv.srv, snap: srv.snap, boot: b, source: source, log: log,
		drainTime: o.drainTime, parentShutdownTime: o.parentShutdownTime,
		admin:      adminCfg,
		restart:    hr,
		inherited:  inherited,
		reopenLogs: usr1,
		hup:        hup,
		exit:       exit,
	})
}

// errExitNow ends serve's context when the admin API asks skiff to exit at
// once (Shutdown, Envoy's /quitquitquit).
var errExitNow = errors.New("admin shutdown: exiting at once")

// exitNow is the admin API's Shutdown for serve: request ends serve's
// context, or the drain under way, at once.
type exitNow struct {
	once   sync.Once
	done   chan struct{} // closed by request
	cancel context.CancelCauseFunc
}

// withExitNow returns a context that request ends with errExitNow.
func withExitNow(parent context.Context) (context.Context, *exitNow) {
	ctx, cancel := context.WithCancelCause(parent)
	return ctx, &exitNow{done: make(chan struct{}), cancel: cancel}
}

func (e *exitNow) request() {
	e.once.Do(func() {
		close(e.done)
		e.cancel(errExitNow)
	})
}

// requested is closed once request was called; a nil e never is.
func (e *exitNow) requested() <-chan struct{} {
	if e == nil {
		return nil
	}
	return e.done
}

// onSignal runs f for each signal on ch until ctx is done.
func onSignal(ctx context.Context, ch <-chan os.Signal, f func()) {
	for {
		select {
		case <-ch:
			f()
		case <-ctx.Done():
			return
		}
	}
}

// tuning is what the command line sets in the data plane: how it drains
// the connections of removed or changed filter chains, and how often it
// writes access log files.
type tuning struct {
	drainTime time.Duration
	gradual   bool
	fileFlush time.Duration // 0: accesslog's default
}

func (o *runOptions) tuning() tuning {
	return tuning{drainTime: o.drainTime, gradual: o.drainStrategy == "gradual", fileFlush: o.fileFlush}
}

// server is a validated data plane, not yet started.
type server struct {
	srv   *dataplane.Server
	snap  *dataplane.Snapshot
	types *filter.TypeResolver // the registry's config types, for the admin API's JSON
}

// newServer checks everything in b that skiff can check without touching a
// socket, so that a bad bootstrap exits before binding anything.
func newServer(b *bootstrapv3.Bootstrap, source string, log *slog.Logger, tune tuning, st *stats.Store) (*server, error) {
	rt, err := checkDynamic(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	resolver, err := upstream.BootstrapResolver(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	reg, err := filters.Builtin()
	if err != nil {
		return nil, err
	}
	secrets, err := dataplane.CheckSecrets(b.GetStaticResources().GetSecrets())
	if err != nil {
		return nil, locate(source, err)
	}
	srv := dataplane.NewServer(dataplane.Options{Logger: log, Registry: reg, Stats: st, DrainTime: tune.drainTime, GradualDrain: tune.gradual, FileFlushInterval: tune.fileFlush, Node: b.GetNode(), Runtime: rt, Resolver: resolver, Secrets: secrets,
		// With xDS, the client says when the first round is in place.
		InitializedExternally: b.GetDynamicResources() != nil})
	snap := &dataplane.Snapshot{
		Listeners: b.GetStaticResources().GetListeners(),
		Clusters:  b.GetStaticResources().GetClusters(),
	}
	if err := srv.Validate(snap); err != nil {
		return nil, locate(source, err)
	}
	return &server{srv: srv, snap: snap, types: reg.Resolver()}, nil
}

// locate turns a dataplane error about a static resource into one that names the
// file and the field path in it.
func locate(source string, err error) error {
	var re *dataplane.ResourceError
	if !errors.As(err, &re) {
		return fmt.Errorf("%s: %w", source, err)
	}
	path := bootstrap.ListenerPath(re.Index)
	switch re.Kind {
	case "cluster":
		path = bootstrap.ClusterPath(re.Index)
	case "secret":
		path = bootstrap.SecretPath(re.Index)
	}
	return fmt.Errorf("%s: %w (%s %q)", source, cfgerr.Field(path, re.Err), re.Kind, re.Name)
}

// serveOptions are what serve runs.
type serveOptions struct {
	srv                *dataplane.Server
	snap               *dataplane.Snapshot
	boot               *bootstrapv3.Bootstrap
	source             string
	log                *slog.Logger
	drainTime          time.Duration
	parentShutdownTime time.Duration
	admin              *adminConfig       // nil: no admin API
	restart            *hotRestart        // nil: no hot restart (the demo)
	inherited          *restart.Inherited // set when taking over from a parent
	reopenLogs         <-chan os.Signal   // each value reopens the access logs (SIGUSR1)
	hup                <-chan os.Signal   // each value starts a hot restart (SIGHUP), or is logged without one
	exit               *exitNow           // the admin API's Shutdown; nil when it has none
}

// serve applies the configuration (or starts the xDS client that does), runs
// until ctx is done or a successor took over, then drains: for at most the
// drain time, or the parent shutdown time after a handover. A second signal
// during the drain ends it at once, as does the admin API's Shutdown, which
// also skips the drain when it comes first.
func serve(ctx context.Context, o serveOptions) error {
	srv, log := o.srv, o.log
	var admin *adminRun
	startAdminAPI := func() error {
		a, err := startAdmin(ctx, srv, o.boot, o.source, log, o.admin, o.restart)
		if err != nil {
			return err
		}
		admin = a
		if o.restart != nil {
			o.restart.adminTCP = a.tcp
		}
		return nil
	}
	defer func() {
		if admin != nil {
			admin.stop()
		}
	}()
	// A successor binds the admin socket only once it is about to take over,
	// so that one failing before that leaves the parent's in place.
	if o.inherited == nil {
		if err := startAdminAPI(); err != nil {
			return err
		}
	}
	// The xDS client stops when this process hands over (its successor has its
	// own) or shuts down.
	xctx, stopXDS := context.WithCancel(ctx)
	defer stopXDS()
	var initial *restartv1.XdsState
	if o.inherited != nil {
		initial = o.inherited.Handover.GetXds()
	}
	x, err := startXDS(xctx, srv, o.snap, o.boot, log, initial)
	if err != nil {
		if o.inherited != nil {
			o.inherited.Refuse(err.Error())
		}
		return fmt.Errorf("%s: %w", o.source, err)
	}
	if x != nil {
		if admin != nil {
			admin.setXDS(x.client)
		}
		if o.restart != nil {
			o.restart.xds = x.client.State
		}
		defer func() { <-x.done }()
	} else if err := srv.Apply(o.snap); err != nil {
		if o.inherited != nil {
			o.inherited.Refuse(err.Error())
		}
		return locate(o.source, err)
	}
	if o.inherited != nil {
		// Serving with the parent's state: tell it, take its connections, and
		// close the sockets of its that no listener uses any more.
		if x != nil {
			select {
			case <-x.ready:
			case <-ctx.Done():
				o.inherited.Refuse("stopped before serving")
				return nil
			}
		}
		if err := startAdminAPI(); err != nil {
			o.inherited.Refuse(err.Error())
			return err
		}
		if x != nil {
			admin.setXDS(x.client)
		}
		if o.restart != nil {
			o.restart.dir.Claim()
		}
		go srv.SettleInherited()
		if err := o.inherited.Ready(srv.AdoptConnection); err != nil {
			log.Warn("hot restart: receiving the parent's connections", "error", err)
		}
		log.Info("hot restart: took over from the parent")
	}
	if o.restart == nil && o.hup != nil {
		go onSignal(ctx, o.hup, func() {
			log.Warn("caught SIGHUP and ignored it: hot restart is disabled (--disable-hot-restart)")
		})
	}
	if o.restart != nil {
		if err := o.restart.serve(ctx, o.hup); err != nil {
			return err
		}
		hr := o.restart
		srv.OnListenerBreaking(func(names []string) {
			if _, err := hr.start(ctx, ""); err != nil {
				if errors.Is(err, restart.ErrBusy) {
					return // the restart under way resyncs from the control plane
				}
				log.Warn("hot restart for a listener-breaking change failed; rebinding in this process", "listeners", names, "error", err)
				if err := srv.RebindHere(); err != nil {
					log.Error("rebinding in this process", "error", err)
				}
			}
		})
	}
	if err := sdnotify.Notify("READY=1"); err != nil {
		log.Warn("telling systemd skiff is ready", "error", err)
	}
	var names []string
	for _, l := range srv.Listeners() {
		names = append(names, l.Name)
	}
	log.Info("skiff started", "version", version, "node", o.boot.GetNode().GetId(), "listeners", strings.Join(names, ","), "pid", os.Getpid())
	if o.reopenLogs != nil {
		go onSignal(ctx, o.reopenLogs, func() {
			log.Info("SIGUSR1: reopening the access logs")
			srv.ReopenAccessLogs()
		})
	}

	var handedOver <-chan struct{}
	if o.restart != nil {
		handedOver = o.restart.handedOver
	}
	drainTime := o.drainTime
	select {
	case <-ctx.Done():
		srv.BeginShutdown()
		if errors.Is(context.Cause(ctx), errExitNow) {
			drainTime = 0
			log.Info("shutting down at once (admin shutdown, quitquitquit): listeners and connections closed")
		} else {
			log.Info("shutting down: listeners closed, draining connections", "drain_time", drainTime)
		}
	case <-handedOver:
		stopXDS()
		drainTime = o.parentShutdownTime
		log.Info("handed over to the successor: draining what is left, then exiting", "parent_shutdown_time", drainTime)
	}
	sdnotify.Notify("STOPPING=1")
	dctx, cancel := context.WithTimeout(context.Background(), drainTime)
	defer cancel()
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(again)
	go func() {
		select {
		case <-again:
			log.Warn("second signal: closing all connections now")
			cancel()
		case <-o.exit.requested():
			log.Warn("admin shutdown (quitquitquit): closing all connections now")
			cancel()
		case <-dctx.Done():
		}
	}()
	if err := srv.Shutdown(dctx); err != nil {
		log.Info("drain ended with connections still open; they were closed", "reason", err)
	}
	log.Info("skiff stopped")
	return nil
}

// gcPercent is the collector's GOGC when the environment sets none. Go's 100
// starts a cycle whenever the heap has doubled; skiff's live heap is small
// (3-4 MB serving the bench's scenarios) and a proxy allocates a little per
// connection, so at 100 a connection per request (h1close) ran a cycle about
// every 0.4 s: 5 % of the CPU per connection against the collector off. At
// 200 the cycles are half as frequent; measured in eight alternating
// h1close runs: 4.6 % less CPU per connection, 5 % lower p99, peak RSS 45 ->
// 51 MiB (h1ka, with no allocation per request, is unchanged).
const gcPercent = 200

// tuneGC sets GOGC to gcPercent unless the environment set it.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
}
