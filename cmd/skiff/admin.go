package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/skiffproxy/skiff/dataplane/admin"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/internal/runtimedir"
	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

const adminUsage = `Usage: skiff admin [--addr ADDR | --runtime-dir DIR] [-o table|json] COMMAND [flags] [ARGS]

Queries or steers a running skiff over its gRPC admin API: by default through
the unix socket admin.sock in the default runtime directory (%s).

Commands:
  info                      version, state, uptime, configuration generation, node
  ready                     print the state; exit 0 if it is LIVE, 1 otherwise
  listeners                 the listeners and the addresses they are bound to
  clusters                  the clusters and their hosts: health, weight, connection counters
  stats [--filter RE] [--used-only] [--watch [--interval D]]
                            counters and gauges ("name: value"); --watch prints changes as they come
  config-dump [--resource FIELD] [--name-regex RE] [--include-eds]
                            the configuration, as Envoy's /config_dump (-o json for all of it)
  csds                      the xDS resources and their status (Envoy's CSDS)
  log-level [LEVEL]         print the log level, or set it: trace, debug, info, warning, error, critical, off
  drain [--graceful] [--inbound-only]
                            stop the listeners accepting connections (Envoy's /drain_listeners)
  restart                   start a hot restart
  reopen-logs               reopen the access log files, for log rotation (Envoy's /reopen_logs; SIGUSR1)
  healthcheck fail|ok       make the health_check filters answer 503, or as usual
                            (Envoy's /healthcheck/fail and /healthcheck/ok)
  profile cpu|heap|allocs|goroutine [--duration D] [--out FILE]
                            write a pprof profile (CPU: over D, default 30s) to FILE
                            (default TYPE.pprof), for go tool pprof or a PGO build
  shutdown                  make skiff exit at once, its connections closed, not drained
                            (Envoy's /quitquitquit; SIGTERM drains for --drain-time first)

drain, restart, reopen-logs, healthcheck, profile, shutdown and a log-level change are
accepted only over the unix socket unless skiff runs with --admin-tcp-mutations.

Flags (also accepted after COMMAND):
`

// adminOptions are the flags every 'skiff admin' command takes.
type adminOptions struct {
	addr       string
	runtimeDir string
	output     string
	timeout    time.Duration
}

// register adds the flags to fs with their current values as defaults, so
// that they can be given before and after the command.
func (o *adminOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.addr, "addr", o.addr, "the admin API's address: host:port, or a unix socket as unix:PATH or a path")
	fs.StringVar(&o.runtimeDir, "runtime-dir", o.runtimeDir, "talk to the skiff of this runtime directory (through its admin.sock)")
	fs.StringVar(&o.output, "o", o.output, "output: table (for people) or json (protojson, for scripts)")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "how long a call may take")
}

// target is the gRPC target of the admin API and, for a unix socket, its path.
func (o *adminOptions) target() (target, socket string) {
	switch a := o.addr; {
	case a == "":
		socket = filepath.Join(o.runtimeDir, admin.SocketName)
	case strings.HasPrefix(a, "unix://"):
		socket = strings.TrimPrefix(a, "unix://")
	case strings.HasPrefix(a, "unix:"):
		socket = strings.TrimPrefix(a, "unix:")
	case strings.HasPrefix(a, "/") || strings.HasPrefix(a, "."):
		socket = a
	default:
		return a, ""
	}
	if abs, err := filepath.Abs(socket); err == nil {
		socket = abs
	}
	return "unix://" + socket, socket
}

// adminCommands maps each command to its function.
var adminCommands = map[string]func(c *adminClient, args []string) error{
	"info":        adminInfo,
	"ready":       adminReady,
	"listeners":   adminListeners,
	"clusters":    adminClusters,
	"stats":       adminStats,
	"config-dump": adminConfigDump,
	"csds":        adminCSDS,
	"log-level":   adminLogLevel,
	"drain":       adminDrain,
	"restart":     adminRestart,
	"reopen-logs": adminReopenLogs,
	"healthcheck": adminHealthCheck,
	"profile":     adminProfile,
	"shutdown":    adminShutdown,
}

// adminClient is a connection to the admin API and where to print.
type adminClient struct {
	opts   *adminOptions
	fs     *flag.FlagSet // the command's flags
	admin  adminv1.AdminServiceClient
	csds   statusv3.ClientStatusDiscoveryServiceClient
	stdout io.Writer
	// types resolves the Anys of what is printed as JSON, Istio's config
	// types (described by skiff, not linked in) included.
	types *filter.TypeResolver
}

func adminCmd(args []string, stdout, stderr io.Writer) error {
	o := &adminOptions{runtimeDir: runtimedir.Default(), output: "table", timeout: 10 * time.Second}
	fs := flag.NewFlagSet("skiff admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, adminUsage, runtimedir.Default())
		fs.PrintDefaults()
	}
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitError{2}
	}
	name := fs.Arg(0)
	run, ok := adminCommands[name]
	if !ok {
		fmt.Fprintf(stderr, "skiff admin: unknown command %q\n\n", name)
		fs.Usage()
		return exitError{2}
	}
	sub := flag.NewFlagSet("skiff admin "+name, flag.ContinueOnError)
	sub.SetOutput(stderr)
	o.register(sub)
	reg, err := filters.Builtin()
	if err != nil {
		return err
	}
	c := &adminClient{opts: o, fs: sub, stdout: stdout, types: reg.Resolver()}
	// The command registers its own flags before it parses them. NewClient
	// connects at the first call, so -h needs no server.
	target, socket := o.target()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A config dump of a large configuration is larger than gRPC's
		// default limit of 4 MiB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	defer conn.Close()
	c.admin = adminv1.NewAdminServiceClient(conn)
	c.csds = statusv3.NewClientStatusDiscoveryServiceClient(conn)

	err = run(c, fs.Args()[1:])
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	var ee exitError
	if errors.As(err, &ee) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.Unavailable && socket != "" {
		if _, serr := os.Stat(socket); serr != nil {
			return fmt.Errorf("admin %s: no admin socket at %s: is skiff running with this runtime directory? (pick one with --runtime-dir DIR or --addr ADDR)", name, socket)
		}
	}
	return fmt.Errorf("admin %s: %s: %s", name, st.Code(), st.Message())
}

// parse parses the command's flags and checks the output format and the
// number of arguments.
func (c *adminClient) parse(args []string, maxArgs int) error {
	if err := c.fs.Parse(args); err != nil {
		return err
	}
	if c.opts.output != "table" && c.opts.output != "json" {
		return fmt.Errorf("-o %q: want table or json", c.opts.output)
	}
	if c.fs.NArg() > maxArgs {
		return fmt.Errorf("unexpected argument %q", c.fs.Arg(maxArgs))
	}
	return nil
}

func (c *adminClient) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.opts.timeout)
}

func (c *adminClient) json() bool { return c.opts.output == "json" }

// printJSON prints m as protojson.
func (c *adminClient) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", Resolver: c.types}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", b)
	return err
}

func (c *adminClient) table() *tabwriter.Writer {
	return tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
}

func stateName(s adminv1.ServerState) string { return strings.TrimPrefix(s.String(), "SERVER_STATE_") }

func adminInfo(c *adminClient, args []string) error {
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.GetServerInfo(ctx, &adminv1.GetServerInfoRequest{})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	tw := c.table()
	node := r.GetNodeId()
	if r.GetNodeCluster() != "" {
		node += " (cluster " + r.GetNodeCluster() + ")"
	}
	fmt.Fprintf(tw, "version\t%s\n", r.GetVersion())
	fmt.Fprintf(tw, "state\t%s\n", stateName(r.GetState()))
	fmt.Fprintf(tw, "uptime\t%s (since %s)\n", r.GetUptime().AsDuration().Round(time.Second), r.GetStartTime().AsTime().Local().Format(time.DateTime))
	fmt.Fprintf(tw, "generation\t%d\n", r.GetGeneration())
	fmt.Fprintf(tw, "hot restart epoch\t%d\n", r.GetHotRestartEpoch())
	fmt.Fprintf(tw, "node\t%s\n", node)
	fmt.Fprintf(tw, "pid\t%d\n", r.GetPid())
	fmt.Fprintf(tw, "runtime dir\t%s\n", r.GetRuntimeDir())
	return tw.Flush()
}

func adminReady(c *adminClient, args []string) error {
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.GetReady(ctx, &adminv1.GetReadyRequest{})
	if err != nil {
		return err
	}
	if c.json() {
		err = c.printJSON(r)
	} else {
		_, err = fmt.Fprintln(c.stdout, stateName(r.GetState()))
	}
	if err == nil && !r.GetReady() {
		return exitError{1}
	}
	return err
}

func adminListeners(c *adminClient, args []string) error {
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.ListListeners(ctx, &adminv1.ListListenersRequest{})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	tw := c.table()
	fmt.Fprintln(tw, "LISTENER\tADDRESS\tADDITIONAL ADDRESSES")
	for _, l := range r.GetListeners() {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", l.GetName(), l.GetLocalAddress(), strings.Join(l.GetAdditionalLocalAddresses(), ", "))
	}
	return tw.Flush()
}

func adminClusters(c *adminClient, args []string) error {
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.ListClusters(ctx, &adminv1.ListClustersRequest{})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	tw := c.table()
	fmt.Fprintln(tw, "CLUSTER\tHOST\tHEALTH\tWEIGHT\tPRIORITY\tCX_TOTAL\tCX_ACTIVE\tCX_CONNECT_FAIL")
	for _, cl := range r.GetClusters() {
		if len(cl.GetHosts()) == 0 {
			fmt.Fprintf(tw, "%s\t-\t\t\t\t\t\t\n", cl.GetName())
		}
		for _, h := range cl.GetHosts() {
			health := h.GetHealthStatus()
			if !h.GetHealthy() {
				health += " (not picked"
				if f := h.GetHealthFlags(); len(f) > 0 {
					health += ": " + strings.Join(f, ", ")
				}
				health += ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", cl.GetName(), h.GetAddress(), health,
				h.GetWeight(), h.GetPriority(), h.GetCxTotal(), h.GetCxActive(), h.GetCxConnectFail())
		}
	}
	return tw.Flush()
}

func adminStats(c *adminClient, args []string) error {
	filter := c.fs.String("filter", "", "only stats whose name matches this RE2 regular expression")
	usedOnly := c.fs.Bool("used-only", false, "only stats that are not 0")
	watch := c.fs.Bool("watch", false, "keep printing the stats that change (until interrupted)")
	interval := c.fs.Duration("interval", time.Second, "with --watch, how often to look for changes")
	if err := c.parse(args, 0); err != nil {
		return err
	}
	if !*watch {
		ctx, cancel := c.call()
		defer cancel()
		r, err := c.admin.GetStats(ctx, &adminv1.GetStatsRequest{Filter: *filter, UsedOnly: *usedOnly})
		if err != nil {
			return err
		}
		if c.json() {
			return c.printJSON(r)
		}
		for _, s := range r.GetStats() {
			fmt.Fprintf(c.stdout, "%s: %s\n", s.GetName(), statValue(s))
		}
		return nil
	}
	stream, err := c.admin.WatchStats(context.Background(), &adminv1.WatchStatsRequest{
		Filter: *filter, UsedOnly: *usedOnly, Interval: durationpb.New(*interval)})
	if err != nil {
		return err
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			return err
		}
		if c.json() {
			// One message a line (JSON lines), for scripts that read a stream.
			b, err := protojson.MarshalOptions{Resolver: c.types}.Marshal(r)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s\n", b)
			continue
		}
		at := r.GetTime().AsTime().Local().Format(time.TimeOnly)
		for _, s := range r.GetStats() {
			fmt.Fprintf(c.stdout, "%s %s: %s\n", at, s.GetName(), statValue(s))
		}
	}
}

// statValue is a stat's value for people: a number, or a histogram's count,
// mean and buckets.
func statValue(s *adminv1.Stat) string {
	if s.GetType() != adminv1.StatType_STAT_TYPE_HISTOGRAM {
		return strconv.FormatInt(s.GetValue(), 10)
	}
	h := s.GetHistogram()
	if h.GetCount() == 0 {
		return "No recorded values"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "count %d, mean %.4g;", h.GetCount(), float64(h.GetSum())/float64(h.GetCount()))
	for _, bk := range h.GetBuckets() {
		if bk.GetLower() == bk.GetUpper() {
			fmt.Fprintf(&b, " %d:%d", bk.GetLower(), bk.GetCount())
		} else {
			fmt.Fprintf(&b, " %d-%d:%d", bk.GetLower(), bk.GetUpper(), bk.GetCount())
		}
	}
	return b.String()
}

func adminConfigDump(c *adminClient, args []string) error {
	resource := c.fs.String("resource", "", "only the entries of this field of the dumps (dynamic_listeners, static_clusters, ...)")
	nameRegex := c.fs.String("name-regex", "", "only resources whose name matches this RE2 regular expression")
	includeEDS := c.fs.Bool("include-eds", false, "also dump the endpoints")
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.GetConfigDump(ctx, &adminv1.GetConfigDumpRequest{Resource: *resource, NameRegex: *nameRegex, IncludeEds: *includeEDS})
	if err != nil {
		return err
	}
	cd := &adminv3.ConfigDump{}
	if err := r.GetConfigDump().UnmarshalTo(cd); err != nil {
		return fmt.Errorf("config dump: %w", err)
	}
	if c.json() {
		return c.printJSON(cd)
	}
	tw := c.table()
	fmt.Fprintln(tw, "TYPE\tNAME\tSTATE\tVERSION\tLAST UPDATED")
	for _, a := range cd.GetConfigs() {
		for _, e := range dumpEntries(a) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.kind, e.name, e.state, orDash(e.version), formatTime(e.updated))
		}
	}
	return tw.Flush()
}

// dumpEntry is one line of the config dump table.
type dumpEntry struct {
	kind, name, state, version string
	updated                    *timestamppb.Timestamp
}

// dumpEntries lists the resources of one config dump message (or, with
// --resource, of one entry of it).
func dumpEntries(a *anypb.Any) []dumpEntry {
	m, err := a.UnmarshalNew()
	if err != nil {
		return []dumpEntry{{kind: typeShortName(a.GetTypeUrl()), name: "?", state: err.Error()}}
	}
	var out []dumpEntry
	add := func(kind, state, version string, res *anypb.Any, name string, updated *timestamppb.Timestamp, st adminv3.ClientResourceStatus, fail *adminv3.UpdateFailureState) {
		if name == "" {
			name = resourceName(res)
		}
		if st != adminv3.ClientResourceStatus_UNKNOWN {
			state += " (" + st.String() + ")"
		}
		if fail != nil {
			state += ": rejected " + fail.GetVersionInfo() + ": " + fail.GetDetails()
		}
		out = append(out, dumpEntry{kind: kind, name: name, state: state, version: version, updated: updated})
	}
	var walk func(m proto.Message)
	walk = func(m proto.Message) {
		switch d := m.(type) {
		case *adminv3.BootstrapConfigDump:
			out = append(out, dumpEntry{kind: "bootstrap", name: d.GetBootstrap().GetNode().GetId(), state: "static", updated: d.GetLastUpdated()})
		case *adminv3.ListenersConfigDump:
			for _, l := range d.GetStaticListeners() {
				walk(l)
			}
			for _, l := range d.GetDynamicListeners() {
				walk(l)
			}
		case *adminv3.ListenersConfigDump_StaticListener:
			add("listener", "static", "", d.GetListener(), "", d.GetLastUpdated(), 0, nil)
		case *adminv3.ListenersConfigDump_DynamicListener:
			for _, s := range []struct {
				state string
				ls    *adminv3.ListenersConfigDump_DynamicListenerState
			}{{"active", d.GetActiveState()}, {"warming", d.GetWarmingState()}, {"draining", d.GetDrainingState()}} {
				if s.ls != nil {
					add("listener", s.state, s.ls.GetVersionInfo(), s.ls.GetListener(), d.GetName(), s.ls.GetLastUpdated(), d.GetClientStatus(), d.GetErrorState())
				}
			}
			if d.GetActiveState() == nil && d.GetWarmingState() == nil && d.GetDrainingState() == nil {
				add("listener", "none", "", nil, d.GetName(), nil, d.GetClientStatus(), d.GetErrorState())
			}
		case *adminv3.ClustersConfigDump:
			for _, c := range d.GetStaticClusters() {
				walk(c)
			}
			for _, c := range d.GetDynamicActiveClusters() {
				add("cluster", "active", c.GetVersionInfo(), c.GetCluster(), "", c.GetLastUpdated(), c.GetClientStatus(), c.GetErrorState())
			}
			for _, c := range d.GetDynamicWarmingClusters() {
				add("cluster", "warming", c.GetVersionInfo(), c.GetCluster(), "", c.GetLastUpdated(), c.GetClientStatus(), c.GetErrorState())
			}
		case *adminv3.ClustersConfigDump_StaticCluster:
			add("cluster", "static", "", d.GetCluster(), "", d.GetLastUpdated(), 0, nil)
		case *adminv3.ClustersConfigDump_DynamicCluster:
			add("cluster", "dynamic", d.GetVersionInfo(), d.GetCluster(), "", d.GetLastUpdated(), d.GetClientStatus(), d.GetErrorState())
		case *adminv3.RoutesConfigDump:
			for _, r := range d.GetStaticRouteConfigs() {
				walk(r)
			}
			for _, r := range d.GetDynamicRouteConfigs() {
				walk(r)
			}
		case *adminv3.RoutesConfigDump_StaticRouteConfig:
			add("route", "static", "", d.GetRouteConfig(), "", d.GetLastUpdated(), 0, nil)
		case *adminv3.RoutesConfigDump_DynamicRouteConfig:
			add("route", "dynamic", d.GetVersionInfo(), d.GetRouteConfig(), "", d.GetLastUpdated(), d.GetClientStatus(), d.GetErrorState())
		case *adminv3.EndpointsConfigDump:
			for _, e := range d.GetStaticEndpointConfigs() {
				walk(e)
			}
			for _, e := range d.GetDynamicEndpointConfigs() {
				walk(e)
			}
		case *adminv3.EndpointsConfigDump_StaticEndpointConfig:
			add("endpoints", "static", "", d.GetEndpointConfig(), "", d.GetLastUpdated(), 0, nil)
		case *adminv3.EndpointsConfigDump_DynamicEndpointConfig:
			add("endpoints", "dynamic", d.GetVersionInfo(), d.GetEndpointConfig(), "", d.GetLastUpdated(), d.GetClientStatus(), d.GetErrorState())
		case *adminv3.SecretsConfigDump:
			for _, s := range d.GetStaticSecrets() {
				add("secret", "static", "", nil, s.GetName(), s.GetLastUpdated(), 0, nil)
			}
			for _, s := range d.GetDynamicActiveSecrets() {
				add("secret", "active", s.GetVersionInfo(), nil, s.GetName(), s.GetLastUpdated(), s.GetClientStatus(), s.GetErrorState())
			}
			for _, s := range d.GetDynamicWarmingSecrets() {
				add("secret", "warming", s.GetVersionInfo(), nil, s.GetName(), s.GetLastUpdated(), s.GetClientStatus(), s.GetErrorState())
			}
		default:
			out = append(out, dumpEntry{kind: typeShortName(a.GetTypeUrl()), name: "-", state: "-"})
		}
	}
	walk(m)
	return out
}

// resourceName is the name (for endpoints: the cluster_name) of a packed
// resource.
func resourceName(a *anypb.Any) string {
	if a == nil {
		return "-"
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return "?"
	}
	fields := m.ProtoReflect().Descriptor().Fields()
	for _, n := range []protoreflect.Name{"name", "cluster_name"} {
		if fd := fields.ByName(n); fd != nil && fd.Kind() == protoreflect.StringKind {
			return m.ProtoReflect().Get(fd).String()
		}
	}
	return "-"
}

// typeShortName is the message name of a type URL: Listener, Cluster, ...
func typeShortName(typeURL string) string {
	return typeURL[strings.LastIndexByte(typeURL, '.')+1:]
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format(time.DateTime)
}

func adminCSDS(c *adminClient, args []string) error {
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.csds.FetchClientStatus(ctx, &statusv3.ClientStatusRequest{})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	for _, cfg := range r.GetConfig() {
		fmt.Fprintf(c.stdout, "node %s (cluster %s): %d xDS resources\n", cfg.GetNode().GetId(), cfg.GetNode().GetCluster(), len(cfg.GetGenericXdsConfigs()))
		if len(cfg.GetGenericXdsConfigs()) == 0 {
			continue
		}
		gs := slices.Clone(cfg.GetGenericXdsConfigs())
		slices.SortStableFunc(gs, func(a, b *statusv3.ClientConfig_GenericXdsConfig) int {
			return strings.Compare(a.GetTypeUrl()+"\x00"+a.GetName(), b.GetTypeUrl()+"\x00"+b.GetName())
		})
		tw := c.table()
		fmt.Fprintln(tw, "TYPE\tNAME\tVERSION\tSTATUS\tLAST UPDATED\tERROR")
		for _, g := range gs {
			errText := "-"
			if e := g.GetErrorState(); e != nil {
				errText = fmt.Sprintf("version %s rejected: %s", e.GetVersionInfo(), e.GetDetails())
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", typeShortName(g.GetTypeUrl()), g.GetName(), orDash(g.GetVersionInfo()),
				g.GetClientStatus(), formatTime(g.GetLastUpdated()), errText)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func adminLogLevel(c *adminClient, args []string) error {
	if err := c.parse(args, 1); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	if c.fs.NArg() == 0 {
		r, err := c.admin.GetLogLevel(ctx, &adminv1.GetLogLevelRequest{})
		if err != nil {
			return err
		}
		if c.json() {
			return c.printJSON(r)
		}
		_, err = fmt.Fprintln(c.stdout, r.GetLevel())
		return err
	}
	level := c.fs.Arg(0)
	if _, err := admin.ParseLogLevel(level); err != nil {
		return err
	}
	r, err := c.admin.SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: level})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	_, err = fmt.Fprintf(c.stdout, "log level %s (was %s)\n", r.GetLevel(), r.GetPreviousLevel())
	return err
}

func adminDrain(c *adminClient, args []string) error {
	graceful := c.fs.Bool("graceful", false, "ask open connections to finish and keep accepting for the drain time before the listeners stop")
	inboundOnly := c.fs.Bool("inbound-only", false, "stop only the listeners whose traffic_direction is INBOUND (Envoy's ?inboundonly)")
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.DrainListeners(ctx, &adminv1.DrainListenersRequest{Graceful: *graceful, InboundOnly: *inboundOnly})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	at := r.GetStopAcceptingTime().AsTime()
	if at.After(time.Now()) {
		_, err = fmt.Fprintf(c.stdout, "draining: the listeners stop accepting at %s\n", at.Local().Format(time.TimeOnly))
	} else {
		_, err = fmt.Fprintln(c.stdout, "the listeners stopped accepting; open connections go on")
	}
	return err
}

func adminRestart(c *adminClient, args []string) error {
	binary := c.fs.String("binary", "", "the binary the successor runs (default: the running skiff's own)")
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.StartHotRestart(ctx, &adminv1.StartHotRestartRequest{Binary: *binary})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	_, err = fmt.Fprintf(c.stdout, "hot restart started: pid %d, epoch %d\n", r.GetPid(), r.GetHotRestartEpoch())
	return err
}

func adminReopenLogs(c *adminClient, args []string) error {
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.ReopenLogs(ctx, &adminv1.ReopenLogsRequest{})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	_, err = fmt.Fprintln(c.stdout, "access logs reopened")
	return err
}

func adminShutdown(c *adminClient, args []string) error {
	if err := c.parse(args, 0); err != nil {
		return err
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.Shutdown(ctx, &adminv1.ShutdownRequest{})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	_, err = fmt.Fprintln(c.stdout, "skiff is shutting down")
	return err
}

func adminHealthCheck(c *adminClient, args []string) error {
	if err := c.parse(args, 1); err != nil {
		return err
	}
	var failed bool
	switch c.fs.Arg(0) {
	case "fail":
		failed = true
	case "ok":
	default:
		return fmt.Errorf("healthcheck: want fail or ok, not %q", c.fs.Arg(0))
	}
	ctx, cancel := c.call()
	defer cancel()
	r, err := c.admin.SetHealthCheckFailed(ctx, &adminv1.SetHealthCheckFailedRequest{Failed: failed})
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(r)
	}
	state := "passing"
	if r.GetFailing() {
		state = "failing"
	}
	_, err = fmt.Fprintf(c.stdout, "health checks: %s\n", state)
	return err
}

func adminProfile(c *adminClient, args []string) error {
	duration := c.fs.Duration("duration", admin.DefaultProfileDuration, "how long to sample the CPU")
	out := c.fs.String("out", "", "the file to write (default TYPE.pprof); - for standard output")
	if err := c.parse(args, 1<<10); err != nil {
		return err
	}
	// The type may come before the flags, as the usage writes it.
	name := c.fs.Arg(0)
	if err := c.parse(c.fs.Args()[min(1, c.fs.NArg()):], 0); err != nil {
		return err
	}
	typ, ok := adminv1.ProfileType_value["PROFILE_TYPE_"+strings.ToUpper(name)]
	if !ok || typ == 0 {
		return fmt.Errorf("profile: want cpu, heap, allocs or goroutine, not %q", name)
	}
	req := &adminv1.GetProfileRequest{Type: adminv1.ProfileType(typ)}
	timeout := c.opts.timeout
	if req.Type == adminv1.ProfileType_PROFILE_TYPE_CPU {
		req.Duration = durationpb.New(*duration)
		timeout += *duration
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream, err := c.admin.GetProfile(ctx, req)
	if err != nil {
		return err
	}
	var profile []byte
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		profile = append(profile, r.GetData()...)
	}
	if *out == "-" {
		_, err = c.stdout.Write(profile)
		return err
	}
	if *out == "" {
		*out = name + ".pprof"
	}
	if err := os.WriteFile(*out, profile, 0o644); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	_, err = fmt.Fprintf(c.stdout, "%s profile (%d bytes) written to %s; read it with: go tool pprof %s\n", name, len(profile), *out, *out)
	return err
}
