// Package fault is the HTTP filter envoy.filters.http.fault: it delays
// requests and aborts them with an HTTP or gRPC status, for a configured
// fraction of the requests that match its headers, upstream cluster and
// downstream nodes, or as the request's x-envoy-fault-* headers ask when the
// configuration lets them.
//
// A route's typed_per_filter_config may give the filter another HTTPFault,
// which replaces the filter's config for that route (the stats stay the
// filter's), as in Envoy.
package fault

import (
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.http.fault"

// Request headers that control faults when the configuration says so.
const (
	HeaderAbort               = "x-envoy-fault-abort-request"
	HeaderAbortGRPC           = "x-envoy-fault-abort-grpc-request"
	HeaderAbortPercentage     = "x-envoy-fault-abort-request-percentage"
	HeaderDelay               = "x-envoy-fault-delay-request"
	HeaderDelayPercentage     = "x-envoy-fault-delay-request-percentage"
	HeaderDownstreamNode      = "x-envoy-downstream-service-node"
	DefaultAbortBody          = "fault filter abort"
	ResponseCodeDetailsAbort  = "fault_filter_abort"
	defaultDelayPercentKey    = "fault.http.delay.fixed_delay_percent"
	defaultAbortPercentKey    = "fault.http.abort.abort_percent"
	defaultDelayDurationKey   = "fault.http.delay.fixed_duration_ms"
	defaultAbortHTTPStatusKey = "fault.http.abort.http_status"
	defaultAbortGRPCStatusKey = "fault.http.abort.grpc_status"
	defaultMaxActiveFaultsKey = "fault.http.max_active_faults"
)

// Factory builds fault filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &faultv3.HTTPFault{} }

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	s, err := compile(m.(*faultv3.HTTPFault))
	if err != nil {
		return nil, err
	}
	f := &Filter{
		settings: s,
		pr:       fc.PerRoute(),
		rt:       fc.Runtime,
		log:      fc.Logger,
		rand:     rand.Uint64,
	}
	prefix := fc.HTTPStatPrefix + "fault."
	f.stats = faultStats{
		delays:   fc.Stats.Counter(prefix + "delays_injected"),
		aborts:   fc.Stats.Counter(prefix + "aborts_injected"),
		overflow: fc.Stats.Counter(prefix + "faults_overflow"),
		active:   fc.Stats.Gauge(prefix + "active_faults"),
	}
	return f, nil
}

// RouteConfigType implements filter.RouteConfigFactory: a route's
// typed_per_filter_config is an HTTPFault too.
func (Factory) RouteConfigType() proto.Message { return &faultv3.HTTPFault{} }

// NewRouteConfig implements filter.RouteConfigFactory: the per-route HTTPFault
// replaces the filter's for the route.
func (Factory) NewRouteConfig(m proto.Message, _ *filter.Context) (any, error) {
	return compile(m.(*faultv3.HTTPFault))
}

// compile checks and compiles an HTTPFault.
func compile(cfg *faultv3.HTTPFault) (*settings, error) {
	if err := cfgerr.OnlyFields(cfg, "delay", "abort", "upstream_cluster", "headers", "downstream_nodes", "max_active_faults",
		"delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime", "abort_http_status_runtime",
		"max_active_faults_runtime", "abort_grpc_status_runtime", "disable_downstream_cluster_stats"); err != nil {
		return nil, err
	}
	f := &settings{
		upstreamCluster: cfg.GetUpstreamCluster(),
		downstreamNodes: slices.Clone(cfg.GetDownstreamNodes()),
		maxActive:       math.MaxUint64,
		delayPercentKey: runtime.NewKey(or(cfg.GetDelayPercentRuntime(), defaultDelayPercentKey)),
		abortPercentKey: runtime.NewKey(or(cfg.GetAbortPercentRuntime(), defaultAbortPercentKey)),
		delayMsKey:      or(cfg.GetDelayDurationRuntime(), defaultDelayDurationKey),
		httpStatusKey:   or(cfg.GetAbortHttpStatusRuntime(), defaultAbortHTTPStatusKey),
		grpcStatusKey:   or(cfg.GetAbortGrpcStatusRuntime(), defaultAbortGRPCStatusKey),
		maxActiveKey:    or(cfg.GetMaxActiveFaultsRuntime(), defaultMaxActiveFaultsKey),
	}
	// Neither delay nor abort is a fault that never fires, as in Envoy:
	// istiod puts one in every HTTP filter chain and gives routes their
	// faults through typed_per_filter_config.
	if d := cfg.GetDelay(); d != nil {
		dc, err := compileDelay(d)
		if err != nil {
			return nil, cfgerr.Field("delay", err)
		}
		f.delay = dc
	}
	if a := cfg.GetAbort(); a != nil {
		ac, err := compileAbort(a)
		if err != nil {
			return nil, cfgerr.Field("abort", err)
		}
		f.abort = ac
	}
	for i, pb := range cfg.GetHeaders() {
		hm, err := route.NewHeaderMatcher(pb)
		if err != nil {
			return nil, cfgerr.Index("headers", i, err)
		}
		f.headers = append(f.headers, hm)
	}
	if v := cfg.GetMaxActiveFaults(); v != nil {
		f.maxActive = uint64(v.GetValue())
	}
	return f, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// delayConfig is a compiled FaultDelay.
type delayConfig struct {
	fixed      time.Duration // fixed_delay, in whole milliseconds as Envoy keeps it
	fromHeader bool          // header_delay
	percentage runtime.Fraction
}

func compileDelay(pb *faultcommonv3.FaultDelay) (*delayConfig, error) {
	if err := cfgerr.OnlyFields(pb, "fixed_delay", "header_delay", "percentage"); err != nil {
		return nil, err
	}
	d := &delayConfig{percentage: runtime.FractionOf(pb.GetPercentage())}
	switch s := pb.GetFaultDelaySecifier().(type) {
	case *faultcommonv3.FaultDelay_FixedDelay:
		d.fixed = s.FixedDelay.AsDuration().Truncate(time.Millisecond)
	case *faultcommonv3.FaultDelay_HeaderDelay_:
		d.fromHeader = true
	default:
		return nil, cfgerr.Errorf("", "one of fixed_delay or header_delay is required")
	}
	return d, nil
}

// abortKind is what decides an abort's status.
type abortKind uint8

const (
	abortHTTP   abortKind = iota // http_status
	abortGRPC                    // grpc_status
	abortHeader                  // header_abort: x-envoy-fault-abort-(grpc-)request
)

// abortConfig is a compiled FaultAbort.
type abortConfig struct {
	kind       abortKind
	status     uint64 // the HTTP or gRPC status
	percentage runtime.Fraction
	body       string
}

func compileAbort(pb *faultv3.FaultAbort) (*abortConfig, error) {
	if err := cfgerr.OnlyFields(pb, "http_status", "grpc_status", "header_abort", "percentage", "response_body"); err != nil {
		return nil, err
	}
	a := &abortConfig{percentage: runtime.FractionOf(pb.GetPercentage()), body: pb.GetResponseBody()}
	if a.body == "" {
		a.body = DefaultAbortBody
	}
	switch s := pb.GetErrorType().(type) {
	case *faultv3.FaultAbort_HttpStatus:
		a.kind, a.status = abortHTTP, uint64(s.HttpStatus) // PGV: [200, 600)
	case *faultv3.FaultAbort_GrpcStatus:
		a.kind, a.status = abortGRPC, uint64(s.GrpcStatus)
	case *faultv3.FaultAbort_HeaderAbort_:
		a.kind = abortHeader
	default:
		return nil, cfgerr.Errorf("", "one of http_status, grpc_status or header_abort is required")
	}
	return a, nil
}

type faultStats struct {
	delays, aborts, overflow stats.Counter
	active                   stats.Gauge
}

// settings are a compiled HTTPFault: the filter's own, or a route's.
type settings struct {
	delay           *delayConfig // nil: no delay
	abort           *abortConfig // nil: no abort
	headers         []*route.HeaderMatcher
	upstreamCluster string
	downstreamNodes []string
	maxActive       uint64

	delayPercentKey runtime.Key
	abortPercentKey runtime.Key
	delayMsKey      string
	httpStatusKey   string
	grpcStatusKey   string
	maxActiveKey    string
}

// Filter is a built fault filter.
type Filter struct {
	*settings // the filter's own; a route's replace them (see settingsFor)

	pr    filter.PerRoute
	rt    *runtime.Loader
	stats faultStats
	log   *slog.Logger
	rand  func() uint64
}

// PerRoute implements filter.RouteAware.
func (f *Filter) PerRoute() filter.PerRoute { return f.pr }

// settingsFor returns the settings for e: the route's HTTPFault if it has
// one, else the filter's; nil when the route disables the filter.
func (f *Filter) settingsFor(e *http.Exchange) *settings {
	pf, on := f.pr.Lookup(e)
	if !on {
		return nil
	}
	if s, ok := pf.Config().(*settings); ok {
		return s
	}
	return f.settings
}

// OnRequest implements http.Filter. A delay holds the request; the exchange's
// context ending cuts it short (the stream is then reset and the chain ends),
// and so does the connection manager interrupting the exchange (the chain
// ends; the manager answers). An abort answers the request with a local reply. A delay may be followed by an abort,
// as in Envoy. Both count as one active fault while OnRequest runs.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	s := f.settingsFor(e)
	if s == nil || !s.matches(e) {
		return http.Continue
	}
	snap := f.rt.Current()
	h := e.Request
	active := false
	if d, ok := f.delayDuration(s, snap, h); ok {
		if active = f.tryActivate(s, snap); active {
			f.stats.delays.Inc()
			e.Info.SetFlags(http.FlagDelayInjected)
			if gone, interrupted := sleep(e, d); gone || interrupted {
				f.stats.active.Dec()
				if gone {
					e.Downstream.Reset(http.ResetCancel)
				}
				return http.Stop
			}
		}
	}
	if s.abort != nil && f.abortEnabled(s, snap, h) {
		status, grpcStatus, ok := s.abortStatus(snap, h)
		if ok && (active || f.tryActivate(s, snap)) {
			f.stats.aborts.Inc()
			var err error
			if grpcStatus >= 0 {
				err = e.LocalReplyGRPC(status, uint32(grpcStatus), s.abort.body, ResponseCodeDetailsAbort, http.FlagFaultInjected)
			} else {
				err = e.LocalReply(status, s.abort.body, ResponseCodeDetailsAbort, http.FlagFaultInjected)
			}
			if err != nil {
				f.log.Debug("fault: sending the abort failed", "error", err)
			}
			f.stats.active.Dec()
			return http.Stop
		}
	}
	if active {
		f.stats.active.Dec()
	}
	return http.Continue
}

// matches applies upstream_cluster, downstream_nodes and headers.
func (f *settings) matches(e *http.Exchange) bool {
	if f.upstreamCluster != "" && upstreamCluster(e) != f.upstreamCluster {
		return false
	}
	if len(f.downstreamNodes) > 0 {
		node, ok := e.Request.Get(HeaderDownstreamNode)
		if !ok || !slices.Contains(f.downstreamNodes, node) {
			return false
		}
	}
	for _, hm := range f.headers {
		if !hm.Matches(e.Request) {
			return false
		}
	}
	return true
}

// upstreamCluster is the cluster the request is bound to: the one the
// connection manager recorded when it resolved the route, or else the route's
// cluster (for weighted clusters, the one the router will pick: it picks with
// the exchange's random value).
func upstreamCluster(e *http.Exchange) string {
	if e.Info.UpstreamCluster != "" {
		return e.Info.UpstreamCluster
	}
	if r, ok := e.Route.(*route.Route); ok && r != nil && r.Action == route.Forward {
		return r.ClusterFor(e.Request, route.ExchangeRandom(e))
	}
	return ""
}

// tryActivate charges one active fault unless max_active_faults (or its
// runtime override) is reached, which counts faults_overflow.
func (f *Filter) tryActivate(s *settings, snap *runtime.Snapshot) bool {
	limit := snap.Integer(s.maxActiveKey, s.maxActive)
	if n := f.stats.active.Value(); n >= 0 && uint64(n) >= limit {
		f.stats.overflow.Inc()
		return false
	}
	f.stats.active.Inc()
	return true
}

// percentage is the fraction of a fault: the configured one, or, with a
// header-controlled fault, the header's numerator capped at the configured
// one (over the configured denominator).
func percentage(h *http.Header, name string, fromHeader bool, cfg runtime.Fraction) runtime.Fraction {
	if !fromHeader {
		return cfg
	}
	v, ok := h.Get(name)
	if !ok {
		return cfg
	}
	n, ok := route.SimpleAtoiUint64(v)
	if !ok || n > math.MaxUint32 {
		return cfg
	}
	return runtime.Fraction{Numerator: min(n, cfg.Numerator), Denominator: cfg.Denominator}
}

// delayDuration decides whether to delay, and for how long.
func (f *Filter) delayDuration(s *settings, snap *runtime.Snapshot, h *http.Header) (time.Duration, bool) {
	d := s.delay
	if d == nil {
		return 0, false
	}
	pct := percentage(h, HeaderDelayPercentage, d.fromHeader, d.percentage)
	if !snap.FeatureEnabled(s.delayPercentKey, pct, f.rand()) {
		return 0, false
	}
	ms := uint64(d.fixed / time.Millisecond)
	if d.fromHeader {
		v, ok := h.Get(HeaderDelay)
		if !ok {
			return 0, false
		}
		if ms, ok = route.SimpleAtoiUint64(v); !ok {
			return 0, false
		}
	}
	ms = snap.Integer(s.delayMsKey, ms)
	if ms == 0 {
		return 0, false
	}
	if ms > uint64(math.MaxInt64/time.Millisecond) {
		ms = uint64(math.MaxInt64 / time.Millisecond)
	}
	return time.Duration(ms) * time.Millisecond, true
}

func (f *Filter) abortEnabled(s *settings, snap *runtime.Snapshot, h *http.Header) bool {
	pct := percentage(h, HeaderAbortPercentage, s.abort.kind == abortHeader, s.abort.percentage)
	return snap.FeatureEnabled(s.abortPercentKey, pct, f.rand())
}

// abortStatus returns the status to abort with: an HTTP status (grpcStatus
// -1), or for a gRPC abort HTTP 200 and the gRPC status. An HTTP status
// wins over a gRPC one, as in Envoy.
func (f *settings) abortStatus(snap *runtime.Snapshot, h *http.Header) (status int, grpcStatus int64, ok bool) {
	a := f.abort
	var httpStatus, grpc uint64
	hasHTTP, hasGRPC := false, false
	switch a.kind {
	case abortHTTP:
		httpStatus, hasHTTP = a.status, true
	case abortGRPC:
		grpc, hasGRPC = a.status, true
	case abortHeader:
		if v, ok := h.Get(HeaderAbort); ok {
			if n, ok := route.SimpleAtoiUint64(v); ok && n >= 200 && n < 600 {
				httpStatus, hasHTTP = n, true
			}
		}
		if !hasHTTP {
			if v, ok := h.Get(HeaderAbortGRPC); ok {
				if n, ok := route.SimpleAtoiUint64(v); ok && n <= math.MaxUint32 {
					grpc, hasGRPC = n, true
				}
			}
		}
	}
	switch {
	case hasHTTP:
		n := snap.Integer(f.httpStatusKey, httpStatus)
		if n > math.MaxInt32 {
			n = 500
		}
		return int(n), -1, true
	case hasGRPC:
		n := snap.Integer(f.grpcStatusKey, grpc)
		if n > math.MaxUint32 {
			n = 2 // UNKNOWN
		}
		return 200, int64(n), true
	}
	return 0, 0, false
}

// sleep waits d. It ends early when the exchange's context ends (gone: the
// client went away, the stream was reset, the connection is closing) or when
// the connection manager interrupts the exchange (a request or stream idle
// timeout; the manager then answers the request itself).
func sleep(e *http.Exchange, d time.Duration) (gone, interrupted bool) {
	w := make(wakeup, 1)
	if e.SetInterrupter(w) != nil {
		return false, true
	}
	defer e.SetInterrupter(nil)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false, false
	case <-e.Context().Done():
		return true, false
	case <-w:
		return false, true
	}
}

// wakeup is the http.Interrupter of a delay.
type wakeup chan struct{}

// Interrupt implements http.Interrupter.
func (w wakeup) Interrupt(error) {
	select {
	case w <- struct{}{}:
	default:
	}
}
