package admin

import (
	"cmp"
	"context"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/skiffproxy/skiff/internal/stats"
	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// service implements adminv1.AdminServiceServer.
type service struct {
	adminv1.UnimplementedAdminServiceServer
	s *Server
}

func (v *service) GetServerInfo(context.Context, *adminv1.GetServerInfoRequest) (*adminv1.GetServerInfoResponse, error) {
	o := &v.s.opts
	return &adminv1.GetServerInfoResponse{
		Version:         o.Version,
		State:           v.s.State(),
		Uptime:          durationpb.New(time.Since(o.StartTime)),
		StartTime:       timestamppb.New(o.StartTime),
		Generation:      o.Dataplane.Generation(),
		HotRestartEpoch: o.RestartEpoch,
		NodeId:          o.Bootstrap.GetNode().GetId(),
		NodeCluster:     o.Bootstrap.GetNode().GetCluster(),
		Pid:             int64(os.Getpid()),
		RuntimeDir:      o.RuntimeDir,
	}, nil
}

func (v *service) GetReady(context.Context, *adminv1.GetReadyRequest) (*adminv1.GetReadyResponse, error) {
	st := v.s.State()
	return &adminv1.GetReadyResponse{Ready: st == adminv1.ServerState_SERVER_STATE_LIVE, State: st}, nil
}

func (v *service) GetConfigDump(_ context.Context, req *adminv1.GetConfigDumpRequest) (*adminv1.GetConfigDumpResponse, error) {
	cd, err := v.s.configDump(req.GetResource(), req.GetNameRegex(), req.GetIncludeEds())
	if err != nil {
		return nil, err
	}
	a, err := anypb.New(cd)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "config dump: %v", err)
	}
	return &adminv1.GetConfigDumpResponse{ConfigDump: a}, nil
}

// samples returns the stats that pass f, sorted by name.
func (v *service) samples(f statFilter) []stats.Sample {
	return f.apply(v.s.opts.Stats.Snapshot())
}

func statProto(s stats.Sample) *adminv1.Stat {
	switch s.Kind {
	case stats.KindGauge:
		return &adminv1.Stat{Name: s.Name, Type: adminv1.StatType_STAT_TYPE_GAUGE, Value: s.Value}
	case stats.KindHistogram:
		h := &adminv1.Histogram{Count: s.Histogram.Count, Sum: s.Histogram.Sum}
		for _, b := range s.Histogram.Buckets {
			h.Buckets = append(h.Buckets, &adminv1.HistogramBucket{Lower: b.Lower, Upper: b.Upper, Count: b.Count})
		}
		return &adminv1.Stat{Name: s.Name, Type: adminv1.StatType_STAT_TYPE_HISTOGRAM, Histogram: h}
	}
	return &adminv1.Stat{Name: s.Name, Type: adminv1.StatType_STAT_TYPE_COUNTER, Value: s.Value}
}

// statState is what WatchStats compares to tell that a stat changed.
type statState struct {
	value      int64
	count, sum uint64
}

func stateOf(s stats.Sample) statState {
	if s.Kind == stats.KindHistogram {
		return statState{count: s.Histogram.Count, sum: s.Histogram.Sum}
	}
	return statState{value: s.Value}
}

func (v *service) GetStats(_ context.Context, req *adminv1.GetStatsRequest) (*adminv1.GetStatsResponse, error) {
	f, err := newStatFilter(req.GetFilter(), req.GetUsedOnly())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &adminv1.GetStatsResponse{}
	for _, s := range v.samples(f) {
		resp.Stats = append(resp.Stats, statProto(s))
	}
	return resp, nil
}

// Bounds of WatchStatsRequest.interval.
const (
	defaultWatchInterval = time.Second
	minWatchInterval     = 100 * time.Millisecond
)

func (v *service) WatchStats(req *adminv1.WatchStatsRequest, stream grpc.ServerStreamingServer[adminv1.WatchStatsResponse]) error {
	f, err := newStatFilter(req.GetFilter(), req.GetUsedOnly())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	interval := defaultWatchInterval
	if req.GetInterval() != nil {
		if err := req.GetInterval().CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "interval: %v", err)
		}
		interval = max(req.GetInterval().AsDuration(), minWatchInterval)
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	type key struct {
		name string
		kind stats.Kind
	}
	last := map[key]statState{}
	first := true
	for {
		resp := &adminv1.WatchStatsResponse{Time: timestamppb.Now()}
		for _, s := range v.samples(f) {
			k, st := key{s.Name, s.Kind}, stateOf(s)
			if old, ok := last[k]; ok && old == st {
				continue
			}
			last[k] = st
			resp.Stats = append(resp.Stats, statProto(s))
		}
		if first || len(resp.Stats) > 0 {
			if err := stream.Send(resp); err != nil {
				return err
			}
			first = false
		}
		select {
		case <-ticker.C:
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-v.s.stop:
			return status.Error(codes.Unavailable, "the admin server is shutting down")
		}
	}
}

func (v *service) ListListeners(context.Context, *adminv1.ListListenersRequest) (*adminv1.ListListenersResponse, error) {
	resp := &adminv1.ListListenersResponse{}
	for _, l := range v.s.opts.Dataplane.Listeners() {
		ls := &adminv1.ListenerStatus{Name: l.Name}
		for i, a := range l.Bound {
			if i == 0 {
				ls.LocalAddress = a.String()
			} else {
				ls.AdditionalLocalAddresses = append(ls.AdditionalLocalAddresses, a.String())
			}
		}
		resp.Listeners = append(resp.Listeners, ls)
	}
	return resp, nil
}

func (v *service) ListClusters(context.Context, *adminv1.ListClustersRequest) (*adminv1.ListClustersResponse, error) {
	static := v.s.staticClusters()
	resp := &adminv1.ListClustersResponse{}
	for _, c := range v.s.opts.Dataplane.Clusters().Clusters() {
		cs := &adminv1.ClusterStatus{
			Name:        c.Name(),
			AddedViaApi: !static[c.Name()],
			LbPolicy:    c.Config().LBPolicy.String(),
		}
		for _, h := range c.Hosts() {
			cs.Hosts = append(cs.Hosts, &adminv1.HostStatus{
				Address:       h.String(),
				Weight:        h.Weight(),
				Priority:      h.Priority(),
				HealthStatus:  h.Health().String(),
				Healthy:       h.Healthy(),
				CxTotal:       h.CxTotal.Load(),
				CxActive:      h.CxActive.Load(),
				CxConnectFail: h.CxConnectFail.Load(),
				HealthFlags:   h.HealthFlags(),
			})
		}
		resp.Clusters = append(resp.Clusters, cs)
	}
	slices.SortFunc(resp.Clusters, func(a, b *adminv1.ClusterStatus) int { return cmp.Compare(a.Name, b.Name) })
	return resp, nil
}

func (v *service) DrainListeners(_ context.Context, req *adminv1.DrainListenersRequest) (*adminv1.DrainListenersResponse, error) {
	v.s.SetDraining()
	at := v.s.opts.Dataplane.DrainListeners(req.GetGraceful(), req.GetInboundOnly())
	v.s.log.Info("admin: draining listeners", "graceful", req.GetGraceful(), "inbound_only", req.GetInboundOnly(), "stop_accepting", at)
	return &adminv1.DrainListenersResponse{StopAcceptingTime: timestamppb.New(at)}, nil
}

func (v *service) StartHotRestart(ctx context.Context, req *adminv1.StartHotRestartRequest) (*adminv1.StartHotRestartResponse, error) {
	if v.s.opts.HotRestart == nil {
		return nil, status.Error(codes.Unimplemented,
			"hot restart is off in this skiff (skiff demo, or skiff run --disable-hot-restart); to upgrade, stop skiff (SIGTERM drains it) and start the new binary")
	}
	pid, epoch, err := v.s.opts.HotRestart(ctx, req.GetBinary())
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.FailedPrecondition, "hot restart: %v", err)
	}
	return &adminv1.StartHotRestartResponse{Pid: int64(pid), HotRestartEpoch: epoch}, nil
}

func (v *service) GetLogLevel(context.Context, *adminv1.GetLogLevelRequest) (*adminv1.GetLogLevelResponse, error) {
	return &adminv1.GetLogLevelResponse{Level: LogLevelName(v.s.opts.Levels.Level())}, nil
}

func (v *service) ReopenLogs(context.Context, *adminv1.ReopenLogsRequest) (*adminv1.ReopenLogsResponse, error) {
	v.s.log.Info("admin: reopening the access logs")
	v.s.opts.Dataplane.ReopenAccessLogs()
	return &adminv1.ReopenLogsResponse{}, nil
}

func (v *service) Shutdown(context.Context, *adminv1.ShutdownRequest) (*adminv1.ShutdownResponse, error) {
	if v.s.opts.Shutdown == nil {
		return nil, status.Error(codes.Unimplemented, "shutdown is not available in this skiff; stop it with SIGTERM")
	}
	v.s.log.Info("admin: shutting down at once (quitquitquit)")
	v.s.opts.Shutdown()
	return &adminv1.ShutdownResponse{}, nil
}

func (v *service) SetHealthCheckFailed(_ context.Context, req *adminv1.SetHealthCheckFailedRequest) (*adminv1.SetHealthCheckFailedResponse, error) {
	v.s.log.Info("admin: health checks", "failed", req.GetFailed())
	v.s.opts.Dataplane.SetHealthCheckFailed(req.GetFailed())
	return &adminv1.SetHealthCheckFailedResponse{Failing: v.s.opts.Dataplane.HealthCheckFailed()}, nil
}

func (v *service) SetLogLevel(_ context.Context, req *adminv1.SetLogLevelRequest) (*adminv1.SetLogLevelResponse, error) {
	l, err := ParseLogLevel(req.GetLevel())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	prev := v.s.opts.Levels.Level()
	// Logged at info while the more verbose of the two levels is in effect,
	// so that it shows whenever either level shows info.
	logIt := func() {
		v.s.log.Info("admin: log level changed", "level", LogLevelName(l), "previous", LogLevelName(prev))
	}
	if l > prev {
		logIt()
		v.s.opts.Levels.Set(l)
	} else {
		v.s.opts.Levels.Set(l)
		logIt()
	}
	return &adminv1.SetLogLevelResponse{Level: LogLevelName(l), PreviousLevel: LogLevelName(prev)}, nil
}
