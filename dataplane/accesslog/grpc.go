package accesslog

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Envoy's defaults for the gRPC access logger.
const (
	DefaultGRPCFlushInterval = time.Second
	DefaultGRPCBufferBytes   = 16384
	// grpcQueue is how many entries may wait for the stream; more are
	// dropped (and counted).
	grpcQueue = 4096
)

func buildGRPC(cfg *grpcv3.HttpGrpcAccessLogConfig, o *Options) (Logger, error) {
	if err := cfgerr.OnlyFields(cfg, "common_config", "additional_request_headers_to_log",
		"additional_response_headers_to_log", "additional_response_trailers_to_log"); err != nil {
		return nil, err
	}
	cc := cfg.GetCommonConfig()
	if err := cfgerr.OnlyFields(cc, "log_name", "grpc_service", "transport_api_version", "buffer_flush_interval", "buffer_size_bytes"); err != nil {
		return nil, cfgerr.Field("common_config", err)
	}
	if cc.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		return nil, cfgerr.Errorf("common_config.transport_api_version", "only V3 is supported")
	}
	gs := cc.GetGrpcService()
	if err := cfgerr.OnlyFields(gs, "envoy_grpc", "google_grpc", "timeout", "initial_metadata"); err != nil {
		return nil, cfgerr.Field("common_config.grpc_service", err)
	}
	switch {
	case gs.GetEnvoyGrpc() != nil:
		if err := cfgerr.OnlyFields(gs.GetEnvoyGrpc(), "cluster_name", "authority"); err != nil {
			return nil, cfgerr.Field("common_config.grpc_service.envoy_grpc", err)
		}
	case gs.GetGoogleGrpc() != nil:
		g := gs.GetGoogleGrpc()
		if err := cfgerr.OnlyFields(g, "target_uri", "stat_prefix"); err != nil {
			return nil, cfgerr.Field("common_config.grpc_service.google_grpc", err)
		}
	default:
		return nil, cfgerr.Errorf("common_config.grpc_service", "one of envoy_grpc, google_grpc is required")
	}
	l := &grpcLogger{
		reqHeaders:   lowerNames(cfg.GetAdditionalRequestHeadersToLog()),
		respHeaders:  lowerNames(cfg.GetAdditionalResponseHeadersToLog()),
		respTrailers: lowerNames(cfg.GetAdditionalResponseTrailersToLog()),
	}
	if o.Sinks != nil {
		l.sink = o.Sinks.grpc(cc, o)
	}
	return l, nil
}

// grpc returns the sink for a common config: loggers with the same log name
// and service share one stream.
func (s *Sinks) grpc(cc *grpcv3.CommonGrpcAccessLogConfig, o *Options) *grpcSink {
	key, _ := proto.MarshalOptions{Deterministic: true}.Marshal(cc)
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.grpcs[string(key)]; g != nil {
		return g
	}
	g := &grpcSink{
		s:        s,
		cfg:      cc,
		clusters: o.Clusters,
		node:     o.Node,
		queue:    make(chan *datav3.HTTPAccessLogEntry, grpcQueue),
		quit:     make(chan struct{}),
		flush:    DefaultGRPCFlushInterval,
		size:     DefaultGRPCBufferBytes,
		written:  s.stats.Counter("access_logs.grpc_access_log.logs_written"),
		dropped:  s.stats.Counter("access_logs.grpc_access_log.logs_dropped"),
	}
	if d := cc.GetBufferFlushInterval(); d != nil && d.AsDuration() > 0 {
		g.flush = d.AsDuration()
	}
	if v := cc.GetBufferSizeBytes(); v != nil {
		g.size = int(v.GetValue())
	}
	s.grpcs[string(key)] = g
	return g
}

// grpcLogger turns exchanges into HTTPAccessLogEntry messages.
type grpcLogger struct {
	sink                                  *grpcSink
	reqHeaders, respHeaders, respTrailers []string
}

// Log implements Logger.
func (l *grpcLogger) Log(e *http.Exchange) {
	if l.sink == nil {
		return
	}
	l.sink.enqueue(l.entry(e))
}

func (l *grpcLogger) entry(e *http.Exchange) *datav3.HTTPAccessLogEntry {
	in := &e.Info
	c := &datav3.AccessLogCommon{
		SampleRate:                     1,
		DownstreamRemoteAddress:        address(in.DownstreamRemote),
		DownstreamLocalAddress:         address(in.DownstreamLocal),
		DownstreamDirectRemoteAddress:  address(in.DownstreamDirectRemote),
		StartTime:                      timestamppb.New(in.Start),
		UpstreamRemoteAddress:          upstreamAddress(in),
		UpstreamLocalAddress:           address(in.UpstreamLocal),
		UpstreamCluster:                strings.Clone(in.UpstreamCluster),
		RouteName:                      strings.Clone(in.RouteName),
		UpstreamTransportFailureReason: strings.Clone(in.UpstreamTransportFailureReason),
		ResponseFlags:                  responseFlags(in.ResponseFlags),
		Duration:                       durationpb.New(in.Duration),
		UpstreamRequestAttemptCount:    uint32(in.UpstreamAttempts),
		AccessLogType:                  datav3.AccessLogType_DownstreamEnd,
	}
	if in.RequestComplete > 0 {
		c.TimeToLastRxByte = durationpb.New(in.RequestComplete)
	}
	if in.UpstreamStart > 0 {
		c.TimeToFirstUpstreamTxByte = durationpb.New(in.UpstreamStart)
	}
	if in.UpstreamResponseStart > 0 {
		c.TimeToFirstUpstreamRxByte = durationpb.New(in.UpstreamResponseStart)
	}
	if in.ResponseStart > 0 {
		c.TimeToFirstDownstreamTxByte = durationpb.New(in.ResponseStart)
	}
	if in.ResponseComplete > 0 {
		c.TimeToLastDownstreamTxByte = durationpb.New(in.ResponseComplete)
	}
	ent := &datav3.HTTPAccessLogEntry{CommonProperties: c}
	switch in.Protocol {
	case "HTTP/1.0":
		ent.ProtocolVersion = datav3.HTTPAccessLogEntry_HTTP10
	case "HTTP/1.1":
		ent.ProtocolVersion = datav3.HTTPAccessLogEntry_HTTP11
	case "HTTP/2":
		ent.ProtocolVersion = datav3.HTTPAccessLogEntry_HTTP2
	}
	rq := &datav3.HTTPRequestProperties{RequestBodyBytes: uint64(in.BytesReceived)}
	if h := e.Request; h != nil {
		rq.RequestMethod = corev3.RequestMethod(corev3.RequestMethod_value[h.Method()])
		// Cloned, as pick's: the entry is sent after the exchange is
		// over, when the header's buffer serves another request.
		rq.Scheme = strings.Clone(h.Scheme())
		rq.Authority = strings.Clone(h.Authority())
		rq.Path = strings.Clone(h.Path())
		rq.UserAgent = strings.Clone(h.Value("user-agent"))
		rq.Referer = strings.Clone(h.Value("referer"))
		rq.ForwardedFor = strings.Clone(h.Value("x-forwarded-for"))
		rq.RequestId = strings.Clone(h.Value("x-request-id"))
		rq.OriginalPath = strings.Clone(h.Value("x-envoy-original-path"))
		rq.RequestHeadersBytes = uint64(h.Size())
		rq.RequestHeaders = pick(h, l.reqHeaders)
	}
	ent.Request = rq
	rs := &datav3.HTTPResponseProperties{
		ResponseBodyBytes:    uint64(in.BytesSent),
		ResponseCodeDetails:  strings.Clone(in.ResponseCodeDetails),
		ResponseHeadersBytes: uint64(e.Response.Size()),
		ResponseHeaders:      pick(&e.Response, l.respHeaders),
		ResponseTrailers:     pick(e.ResponseTrailers(), l.respTrailers),
	}
	if in.ResponseCode != 0 {
		rs.ResponseCode = wrapperspb.UInt32(uint32(in.ResponseCode))
	}
	ent.Response = rs
	return ent
}

// pick copies the named fields (strings are cloned: the entry outlives the
// exchange).
func pick(h *http.Header, names []string) map[string]string {
	if len(names) == 0 || h == nil {
		return nil
	}
	var m map[string]string
	for _, n := range names {
		if v, ok := h.Get(n); ok {
			if m == nil {
				m = map[string]string{}
			}
			m[n] = strings.Clone(v)
		}
	}
	return m
}

// upstreamAddress is the upstream host's address, or its pipe.
func upstreamAddress(in *http.StreamInfo) *corev3.Address {
	if in.UpstreamPipe != "" {
		return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: in.UpstreamPipe}}}
	}
	return address(in.UpstreamHost)
}

func address(ap netip.AddrPort) *corev3.Address {
	if !ap.IsValid() {
		return nil
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ap.Addr().String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())},
	}}}
}

func responseFlags(f http.ResponseFlag) *datav3.ResponseFlags {
	if f == 0 {
		return nil
	}
	return &datav3.ResponseFlags{
		NoHealthyUpstream:                f&http.FlagNoHealthyUpstream != 0,
		UpstreamConnectionFailure:        f&http.FlagUpstreamConnectionFailure != 0,
		UpstreamOverflow:                 f&http.FlagUpstreamOverflow != 0,
		NoRouteFound:                     f&http.FlagNoRouteFound != 0,
		UpstreamRequestTimeout:           f&http.FlagUpstreamRequestTimeout != 0,
		LocalReset:                       f&http.FlagLocalReset != 0,
		UpstreamRemoteReset:              f&http.FlagUpstreamRemoteReset != 0,
		UpstreamConnectionTermination:    f&http.FlagUpstreamConnectionTermination != 0,
		DownstreamConnectionTermination:  f&http.FlagDownstreamConnectionTermination != 0,
		FaultInjected:                    f&http.FlagFaultInjected != 0,
		DelayInjected:                    f&http.FlagDelayInjected != 0,
		RateLimited:                      f&http.FlagRateLimited != 0,
		StreamIdleTimeout:                f&http.FlagStreamIdleTimeout != 0,
		NoClusterFound:                   f&http.FlagNoClusterFound != 0,
		DownstreamProtocolError:          f&http.FlagDownstreamProtocolError != 0,
		UpstreamRetryLimitExceeded:       f&http.FlagUpstreamRetryLimitExceeded != 0,
		DurationTimeout:                  f&http.FlagDurationTimeout != 0,
		UpstreamProtocolError:            f&http.FlagUpstreamProtocolError != 0,
		UpstreamMaxStreamDurationReached: f&http.FlagUpstreamMaxStreamDurationReached != 0,
		OverloadManager:                  f&http.FlagOverloadManager != 0,
		DownstreamRemoteReset:            f&http.FlagDownstreamRemoteReset != 0,
	}
}

// grpcSink streams entries to one access log service.
type grpcSink struct {
	s        *Sinks
	cfg      *grpcv3.CommonGrpcAccessLogConfig
	clusters *upstream.Manager
	node     *corev3.Node
	queue    chan *datav3.HTTPAccessLogEntry
	quit     chan struct{}
	flush    time.Duration
	size     int

	started bool
	stopped bool
	written stats.Counter
	dropped stats.Counter
}

func (g *grpcSink) enqueue(ent *datav3.HTTPAccessLogEntry) {
	g.s.mu.Lock()
	if !g.started && !g.stopped {
		g.started = true
		g.s.wg.Add(1)
		go func() {
			defer g.s.wg.Done()
			g.run()
		}()
	}
	stopped := g.stopped
	g.s.mu.Unlock()
	if stopped {
		g.dropped.Inc()
		return
	}
	select {
	case g.queue <- ent:
	default:
		g.dropped.Inc()
	}
}

func (g *grpcSink) close() {
	g.s.mu.Lock()
	defer g.s.mu.Unlock()
	if g.stopped {
		return
	}
	g.stopped = true
	close(g.quit)
}

// run batches entries and sends them, dialing and (re)opening the stream as
// needed. A batch that cannot be sent is dropped and counted.
func (g *grpcSink) run() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		conn   *grpc.ClientConn
		stream grpc.ClientStreamingClient[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]
		// endStream cancels stream's own context: a stream given up after
		// a failed Send must be ended, or grpc-go keeps its goroutine (a
		// Send that fails with io.EOF does not finish the stream).
		endStream context.CancelFunc
		batch     []*datav3.HTTPAccessLogEntry
		bytes     int
	)
	defer func() {
		if stream != nil {
			_, _ = stream.CloseAndRecv()
			endStream()
		}
		if conn != nil {
			conn.Close()
		}
	}()
	t := time.NewTicker(g.flush)
	defer t.Stop()
	send := func() {
		if len(batch) == 0 {
			return
		}
		defer func() { batch, bytes = batch[:0], 0 }()
		if conn == nil {
			var err error
			if conn, err = g.dial(); err != nil {
				g.s.log.Warn("access log service: cannot dial; entries dropped", "error", err, "entries", len(batch))
				g.dropped.Add(uint64(len(batch)))
				return
			}
		}
		msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
		}}
		if stream == nil {
			sctx, cancel := context.WithCancel(ctx)
			s, err := alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(sctx)
			if err != nil {
				cancel()
				g.s.log.Warn("access log service: cannot open the stream; entries dropped", "error", err, "entries", len(batch))
				g.dropped.Add(uint64(len(batch)))
				return
			}
			stream, endStream = s, cancel
			node := g.node
			if node == nil {
				node = &corev3.Node{}
			}
			msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: node, LogName: g.cfg.GetLogName()}
		}
		if err := stream.Send(msg); err != nil {
			g.s.log.Warn("access log service: send failed; entries dropped", "error", err, "entries", len(batch))
			g.dropped.Add(uint64(len(batch)))
			endStream()
			stream, endStream = nil, nil
			return
		}
		g.written.Add(uint64(len(batch)))
	}
	for {
		select {
		case ent := <-g.queue:
			batch = append(batch, ent)
			bytes += proto.Size(ent)
			if bytes >= g.size {
				send()
			}
		case <-t.C:
			send()
		case <-g.quit:
			for {
				select {
				case ent := <-g.queue:
					batch = append(batch, ent)
					continue
				default:
				}
				break
			}
			send()
			return
		}
	}
}

// dial connects to the service: through the cluster's hosts for
// envoy_grpc, to the target for google_grpc.
func (g *grpcSink) dial() (*grpc.ClientConn, error) {
	gs := g.cfg.GetGrpcService()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if eg := gs.GetEnvoyGrpc(); eg != nil {
		name := eg.GetClusterName()
		clusters := g.clusters
		if clusters == nil {
			return nil, errors.New("no clusters")
		}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			cl := clusters.Get(name)
			if cl == nil {
				return nil, fmt.Errorf("cluster %q not found", name)
			}
			return cl.Open(ctx, upstream.ConnectOptions{ALPN: []string{"h2"}}) // over TLS, gRPC servers want h2
		}))
		authority := eg.GetAuthority()
		if authority == "" {
			authority = name
		}
		opts = append(opts, grpc.WithAuthority(authority))
		return grpc.NewClient("passthrough:///"+name, opts...)
	}
	return grpc.NewClient(gs.GetGoogleGrpc().GetTargetUri(), opts...)
}
