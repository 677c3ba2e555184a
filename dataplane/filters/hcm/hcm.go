// Package hcm is the network filter envoy.filters.network.http_connection_manager:
// it speaks HTTP/1.1 and HTTP/2 (h2c with prior knowledge, or either found by
// sniffing the HTTP/2 connection preface with codec_type AUTO) on a downstream
// connection, sanitizes each request as Envoy does (hop-by-hop fields,
// x-forwarded-for, x-forwarded-proto, x-request-id, internal x-envoy-*
// headers), matches it against its route configuration (inline, or by name
// through RDS), runs its HTTP filters (built through the filter Registry; the
// router last), adds the server and date headers to the response, counts the
// exchange (http.<stat_prefix>.*) and writes the access logs.
//
// Streams: HTTP/1.1 serves one request at a time per connection (pipelined
// ones wait, in order) on the connection's goroutine, reusing the exchange
// and its headers, so that a keep-alive request allocates nothing; HTTP/2
// serves each stream on a goroutine of its own, with pooled exchanges.
//
// Requests the HTTP/1.1 codec refuses (a malformed head, 431, 501, ...; see
// h1.RefusalHandler) are local replies, as Envoy's codec has its connection
// manager answer them: the status's text as the body, local_reply_config,
// the response headers below, "connection: close", and an exchange counted
// and logged with the codec's details (DPE). A response that begins before
// the whole request is in closes an HTTP/1.x connection ("connection: close",
// but for a tunnel), counted in downstream_rq_response_before_rq_complete.
//
// Timeouts: request_headers_timeout (the codecs': 408 "request header
// timeout" on HTTP/1.1, the stream reset on HTTP/2), request_timeout (the
// whole request received: 408 "request timeout"), stream_idle_timeout (5 min
// by default: no byte either way; 408 "stream timeout", or a reset once the
// response began), the route's idle_timeout overriding it;
// common_http_protocol_options.idle_timeout (1 h by default: a connection
// without requests) and max_connection_duration (drained then). When skiff
// drains a connection (a listener or filter chain removed or changed, a
// shutdown), HTTP/1.1 answers the request in flight with "connection:
// close" and HTTP/2 sends GOAWAY; an idle HTTP/1.1 connection stays for its
// next request (answered the same way) unless skiff shuts down.
package hcm

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/accesslog"
	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/h1"
	"github.com/skiffproxy/skiff/dataplane/http/h2"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.network.http_connection_manager"

// Envoy's defaults.
const (
	DefaultStreamIdleTimeout = 5 * time.Minute
	DefaultIdleTimeout       = time.Hour
	DefaultMaxRequestHeaders = 60 // KiB
	DefaultDrainTimeout      = 5 * time.Second
	DefaultServerName        = "envoy"
)

// Factory builds connection managers. Registry is where their HTTP filters
// come from (the one the Factory is registered in).
type Factory struct {
	Registry *filter.Registry
}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &hcmv3.HttpConnectionManager{} }

// serverHeader is server_header_transformation.
type serverHeader uint8

const (
	serverOverwrite serverHeader = iota
	serverAppendIfAbsent
	serverPassThrough
)

// Manager is a built connection manager: one per filter chain, serving every
// connection of it.
type Manager struct {
	log          *slog.Logger
	localReplies http.LocalReplyMapper // local_reply_config; nil: none
	listener     string
	buffers      *bufpool.Pool
	date         atomic.Pointer[dateValue] // the Date header of responses without one

	codec hcmv3.HttpConnectionManager_CodecType
	h1    h1.Options
	h2    *h2.Server

	// Routes: one of table and slot.
	table *route.Table
	slot  *route.Slot

	filters     []http.Filter
	respFilters []http.ResponseFilter
	doneFilters []http.CompleteFilter
	router      http.Terminal
	logs        []accesslog.Logger

	useRemote     bool
	trustedHops   uint32
	skipXFFAppend bool
	via           string
	generateID    bool
	preserveExtID bool
	alwaysSetID   bool
	serverName    string
	serverHeader  serverHeader
	acceptHTTP10  bool
	// h1StreamError: a 400 local reply on HTTP/1.x leaves the connection
	// open (stream_error_on_invalid_http_message); by default it closes, as
	// Envoy's onLocalReply closes it.
	h1StreamError   bool
	defaultHost10   string
	maxHeaders      int
	underscores     corev3.HttpProtocolOptions_HeadersWithUnderscoresAction
	maxRequests     uint32 // per connection, 0: no limit
	maxConnDuration time.Duration
	idleTimeout     time.Duration // a connection without requests (HTTP/1.1; HTTP/2's is the codec's)
	streamIdle      time.Duration
	requestTimeout  time.Duration
	maxStreamDur    time.Duration   // common_http_protocol_options.max_stream_duration; 0: none
	upgrades        map[string]bool // upgrade types allowed (lower case)
	normalizePath   bool
	mergeSlashes    bool
	escapedSlashes  hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction // 0: KEEP_UNCHANGED
	xfcc            hcmv3.HttpConnectionManager_ForwardClientCertDetails
	xfccDetails     *hcmv3.HttpConnectionManager_SetCurrentClientCertDetails
	stripPort       int // -2: no, -1: any port, else strip_matching_host_port (the listener's port is known per connection)
	stripMatching   bool
	stripHostDot    bool // strip_trailing_host_dot

	tracing *tracing // nil: no tracing configuration

	stats   hcmStats
	streams sync.Pool // of *stream, for HTTP/2
}

// Create implements filter.NetworkFactory.
func (f Factory) Create(m proto.Message, fc *filter.Context) (filter.NetworkFilter, error) {
	cfg := m.(*hcmv3.HttpConnectionManager)
	if err := cfgerr.OnlyFields(cfg, "codec_type", "stat_prefix", "rds", "route_config", "http_filters",
		"common_http_protocol_options", "http_protocol_options", "http2_protocol_options", "server_name",
		"server_header_transformation", "max_request_headers_kb", "stream_idle_timeout", "request_timeout",
		"request_headers_timeout", "drain_timeout", "delayed_close_timeout", "access_log", "use_remote_address",
		"xff_num_trusted_hops", "skip_xff_append", "via", "generate_request_id", "preserve_external_request_id",
		"always_set_request_id_in_response", "forward_client_cert_details", "set_current_client_cert_details",
		"proxy_100_continue", "upgrade_configs", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
		"strip_matching_host_port", "strip_any_host_port", "stream_error_on_invalid_http_message",
		"add_user_agent", "tracing", "request_id_extension", "local_reply_config", "strip_trailing_host_dot"); err != nil {
		return nil, err
	}
	log := fc.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st := fc.Stats
	if st == nil {
		st = stats.NewStore()
	}
	bufs := fc.Buffers
	if bufs == nil {
		bufs = bufpool.New()
	}
	mg := &Manager{
		log:           log.With("filter", Name),
		listener:      fc.Listener,
		buffers:       bufs,
		codec:         cfg.GetCodecType(),
		generateID:    true,
		serverName:    DefaultServerName,
		streamIdle:    DefaultStreamIdleTimeout,
		stripPort:     -2,
		trustedHops:   cfg.GetXffNumTrustedHops(),
		useRemote:     cfg.GetUseRemoteAddress().GetValue(),
		skipXFFAppend: cfg.GetSkipXffAppend(),
		via:           cfg.GetVia(),
		preserveExtID: cfg.GetPreserveExternalRequestId(),
		alwaysSetID:   cfg.GetAlwaysSetRequestIdInResponse(),
	}
	if cfg.GetCodecType() == hcmv3.HttpConnectionManager_HTTP3 {
		return nil, cfgerr.Errorf("codec_type", "HTTP3 is not supported by skiff (AUTO, HTTP1, HTTP2 are)")
	}
	if v := cfg.GetGenerateRequestId(); v != nil {
		mg.generateID = v.GetValue()
	}
	if v := cfg.GetAddUserAgent(); v.GetValue() {
		return nil, cfgerr.Errorf("add_user_agent", "not supported by skiff")
	}
	// proxy_100_continue (istiod sets it): Envoy then forwards the
	// expectation and relays the upstream's 100 Continue. skiff's codecs
	// answer "expect: 100-continue" themselves when the router starts reading
	// the body, and the upstream gets the body without the expectation, as
	// Envoy does without proxy_100_continue: the client is told to go on by
	// skiff rather than by the upstream. The final response is the same.
	_ = cfg.GetProxy_100Continue()
	// forward_client_cert_details and set_current_client_cert_details: see
	// xfcc.go.
	mg.xfcc = cfg.GetForwardClientCertDetails()
	if d := cfg.GetSetCurrentClientCertDetails(); d != nil {
		if err := cfgerr.OnlyFields(d, "subject", "cert", "chain", "dns", "uri"); err != nil {
			return nil, cfgerr.Field("set_current_client_cert_details", err)
		}
		mg.xfccDetails = d
	}
	// Envoy's default (IMPLEMENTATION_SPECIFIC_DEFAULT) is KEEP_UNCHANGED.
	if a := cfg.GetPathWithEscapedSlashesAction(); a != hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT {
		mg.escapedSlashes = a
	}
	if cfg.GetServerName() != "" {
		mg.serverName = cfg.GetServerName()
	}
	if lrc := cfg.GetLocalReplyConfig(); lrc != nil {
		lr, err := newLocalReplies(lrc, fc.Runtime)
		if err != nil {
			return nil, cfgerr.Field("local_reply_config", err)
		}
		mg.localReplies = lr
	}
	switch cfg.GetServerHeaderTransformation() {
	case hcmv3.HttpConnectionManager_APPEND_IF_ABSENT:
		mg.serverHeader = serverAppendIfAbsent
	case hcmv3.HttpConnectionManager_PASS_THROUGH:
		mg.serverHeader = serverPassThrough
	}
	mg.stripHostDot = cfg.GetStripTrailingHostDot()
	mg.normalizePath = cfg.GetNormalizePath().GetValue()
	mg.mergeSlashes = cfg.GetMergeSlashes()
	switch {
	case cfg.GetStripAnyHostPort() && cfg.GetStripMatchingHostPort():
		return nil, cfgerr.Errorf("strip_any_host_port", "only one of strip_matching_host_port and strip_any_host_port can be set (as in Envoy)")
	case cfg.GetStripAnyHostPort():
		mg.stripPort = -1
	case cfg.GetStripMatchingHostPort():
		mg.stripMatching = true
	}

	// Timeouts.
	if d := cfg.GetStreamIdleTimeout(); d != nil {
		mg.streamIdle = d.AsDuration() // 0 disables it
	}
	if d := cfg.GetRequestTimeout(); d != nil {
		mg.requestTimeout = d.AsDuration()
	}
	drainTimeout := DefaultDrainTimeout
	if d := cfg.GetDrainTimeout(); d != nil {
		drainTimeout = d.AsDuration()
	}
	maxKB := uint32(DefaultMaxRequestHeaders)
	if v := cfg.GetMaxRequestHeadersKb(); v != nil {
		maxKB = v.GetValue()
	}
	// The connection manager keeps HTTP/1.1's idle timeout itself (one lazy
	// timer per connection instead of a read deadline set and cleared for
	// every request).
	mg.h1 = h1.Options{Buffers: bufs, MaxHeaderBytes: int(maxKB) << 10}
	// An edge proxy refuses an https URL over plaintext, as Envoy's codec
	// does when it trusts no hop (validate_scheme).
	mg.h1.ValidateScheme = mg.useRemote && mg.trustedHops == 0
	mg.idleTimeout = DefaultIdleTimeout
	var headersTimeout time.Duration
	if d := cfg.GetRequestHeadersTimeout(); d != nil {
		headersTimeout = d.AsDuration()
		mg.h1.RequestHeadersTimeout = headersTimeout
	}
	if d := cfg.GetDelayedCloseTimeout(); d != nil {
		mg.h1.CloseDelay = d.AsDuration()
		if mg.h1.CloseDelay == 0 {
			mg.h1.CloseDelay = -1
		}
	}
	h2opts := h2.ServerOptions{MaxHeaderListSize: maxKB << 10, IdleTimeout: DefaultIdleTimeout, DrainTimeout: drainTimeout,
		RequestHeadersTimeout: headersTimeout, Buffers: bufs, Logger: log}
	if headersTimeout > 0 {
		h2opts.OnRequestHeadersTimeout = func() { mg.stats.rqHeaderTimeout.Inc() }
	}

	if co := cfg.GetCommonHttpProtocolOptions(); co != nil {
		if err := cfgerr.OnlyFields(co, "idle_timeout", "max_connection_duration", "max_headers_count",
			"max_stream_duration", "headers_with_underscores_action", "max_requests_per_connection"); err != nil {
			return nil, cfgerr.Field("common_http_protocol_options", err)
		}
		if d := co.GetIdleTimeout(); d != nil {
			mg.idleTimeout = d.AsDuration()
			h2opts.IdleTimeout = d.AsDuration()
		}
		mg.maxConnDuration = co.GetMaxConnectionDuration().AsDuration()
		mg.maxStreamDur = co.GetMaxStreamDuration().AsDuration()
		if v := co.GetMaxHeadersCount(); v != nil {
			mg.maxHeaders = int(v.GetValue())
			mg.h1.MaxHeaders = mg.maxHeaders
		}
		mg.underscores = co.GetHeadersWithUnderscoresAction()
		// As in Envoy, HTTP/1.1's codec refuses the request as it parses
		// the field (a protocol error: 400 "Bad Request", the connection
		// closes).
		mg.h1.RejectUnderscores = mg.underscores == corev3.HttpProtocolOptions_REJECT_REQUEST
		mg.maxRequests = co.GetMaxRequestsPerConnection().GetValue()
	}
	if mg.maxHeaders == 0 {
		mg.maxHeaders = h1.DefaultMaxHeaders
	}
	mg.acceptHTTP10 = false
	// stream_error_on_invalid_http_message, which each codec's
	// override_stream_error_on_invalid_http_message overrides, as in Envoy.
	streamError := cfg.GetStreamErrorOnInvalidHttpMessage().GetValue()
	mg.h1StreamError = streamError
	if po := cfg.GetHttpProtocolOptions(); po != nil {
		if err := cfgerr.OnlyFields(po, "accept_http_10", "default_host_for_http_10", "enable_trailers",
			"allow_absolute_url", "allow_custom_methods", "override_stream_error_on_invalid_http_message"); err != nil {
			return nil, cfgerr.Field("http_protocol_options", err)
		}
		if v := po.GetAllowAbsoluteUrl(); v != nil && !v.GetValue() {
			return nil, cfgerr.Errorf("http_protocol_options.allow_absolute_url", "false is not supported by skiff")
		}
		mg.acceptHTTP10 = po.GetAcceptHttp_10()
		mg.defaultHost10 = po.GetDefaultHostForHttp_10()
		mg.h1.AcceptHTTP10 = mg.acceptHTTP10
		mg.h1.AllowCustomMethods = po.GetAllowCustomMethods()
		mg.h1.EnableTrailers = po.GetEnableTrailers()
		if v := po.GetOverrideStreamErrorOnInvalidHttpMessage(); v != nil {
			mg.h1StreamError = v.GetValue()
		}
	}
	h2opts.MaxHeaders = mg.maxHeaders
	h2opts.StreamErrorOnInvalidHTTPMessage = streamError
	if po := cfg.GetHttp2ProtocolOptions(); po != nil {
		//lint:ignore SA1019 deprecated in Envoy for override_stream_error_on_invalid_http_message, still honoured there
		if po.GetStreamErrorOnInvalidHttpMessaging() {
			h2opts.StreamErrorOnInvalidHTTPMessage = true
		}
		if v := po.GetOverrideStreamErrorOnInvalidHttpMessage(); v != nil {
			h2opts.StreamErrorOnInvalidHTTPMessage = v.GetValue()
		}
	}
	if po := cfg.GetHttp2ProtocolOptions(); po != nil {
		if err := cfgerr.OnlyFields(po, "max_concurrent_streams", "initial_stream_window_size",
			"initial_connection_window_size", "override_stream_error_on_invalid_http_message",
			"stream_error_on_invalid_http_messaging"); err != nil {
			return nil, cfgerr.Field("http2_protocol_options", err)
		}
		h2opts.MaxConcurrentStreams = po.GetMaxConcurrentStreams().GetValue()
		h2opts.InitialStreamWindowSize = po.GetInitialStreamWindowSize().GetValue()
		h2opts.InitialConnectionWindowSize = po.GetInitialConnectionWindowSize().GetValue()
	}
	srv, err := h2.NewServer(h2opts)
	if err != nil {
		return nil, cfgerr.Errorf("http2_protocol_options", "%v", err)
	}
	mg.h2 = srv

	// Upgrades.
	for i, u := range cfg.GetUpgradeConfigs() {
		if err := cfgerr.OnlyFields(u, "upgrade_type", "enabled"); err != nil {
			return nil, cfgerr.Index("upgrade_configs", i, err)
		}
		t := strings.ToLower(u.GetUpgradeType())
		if mg.upgrades == nil {
			mg.upgrades = map[string]bool{}
		}
		mg.upgrades[t] = u.Enabled == nil || u.GetEnabled().GetValue()
	}

	// Routes.
	switch rs := cfg.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_RouteConfig:
		t, err := route.CompileInline(rs.RouteConfig, route.Options{ClusterExists: fc.ClusterExists, FilterConfigs: f.Registry.RouteConfigs(fc), Runtime: fc.Runtime})
		if err != nil {
			return nil, cfgerr.Field("route_config", err)
		}
		mg.table = t
	case *hcmv3.HttpConnectionManager_Rds:
		if err := cfgerr.OnlyFields(rs.Rds, "config_source", "route_config_name"); err != nil {
			return nil, cfgerr.Field("rds", err)
		}
		provider := fc.Routes
		if provider == nil {
			provider = route.NewProvider()
		}
		mg.slot = provider.Slot(rs.Rds.GetRouteConfigName())
	default:
		return nil, cfgerr.Errorf("route_config", "one of route_config and rds is required (scoped_routes is not supported by skiff)")
	}

	// Stats first: the filters root theirs under http.<stat_prefix>.
	prefix := "http." + cfg.GetStatPrefix() + "."
	mg.stats = newStats(st, prefix)
	egress := fc.TrafficDirection == corev3.TrafficDirection_OUTBOUND
	if mg.tracing, err = newTracing(cfg, egress, st, prefix); err != nil {
		return nil, err
	}
	if cfg.GetTracing() == nil && cfg.GetRequestIdExtension() != nil {
		if _, err := requestIDConfig(cfg.GetRequestIdExtension()); err != nil {
			return nil, cfgerr.Field("request_id_extension", err)
		}
	}

	// HTTP filters, the router last.
	hfc := *fc
	hfc.HTTPStatPrefix = prefix
	filters := cfg.GetHttpFilters()
	if len(filters) == 0 {
		return nil, cfgerr.Errorf("http_filters", "an HTTP connection manager needs http_filters ending with the router (%s)", "envoy.filters.http.router")
	}
	for i, hf := range filters {
		if err := cfgerr.OnlyFields(hf, "name", "typed_config", "is_optional", "disabled"); err != nil {
			return nil, cfgerr.Index("http_filters", i, err)
		}
		if f.Registry == nil {
			return nil, cfgerr.Errorf("http_filters", "no filter registry")
		}
		if hf.GetIsOptional() && !f.Registry.HasHTTP(hf.GetTypedConfig().GetTypeUrl()) {
			continue // Envoy skips an optional filter it does not know
		}
		flt, err := f.Registry.HTTPFilterFor(hf, &hfc) // disabled: off unless a route enables it
		if err != nil {
			return nil, cfgerr.Index("http_filters", i, err)
		}
		term, isTerminal := flt.(http.Terminal)
		last := i == len(filters)-1
		switch {
		case isTerminal && !last:
			return nil, cfgerr.Errorf(fmt.Sprintf("http_filters[%d]", i), "%s is a terminal filter and must be the last of http_filters", hf.GetName())
		case !isTerminal && last:
			return nil, cfgerr.Errorf(fmt.Sprintf("http_filters[%d]", i), "the last HTTP filter must be the router (envoy.filters.http.router); %s is not", hf.GetName())
		case isTerminal:
			mg.router = term
		default:
			mg.filters = append(mg.filters, flt)
			if rf, ok := flt.(http.ResponseFilter); ok {
				mg.respFilters = append(mg.respFilters, rf)
			}
			if cf, ok := flt.(http.CompleteFilter); ok {
				mg.doneFilters = append(mg.doneFilters, cf)
			}
		}
	}
	if mg.router == nil {
		return nil, cfgerr.Errorf("http_filters", "the last HTTP filter must be the router (envoy.filters.http.router)")
	}

	// Access logs.
	logs, err := accesslog.Build(cfg.GetAccessLog(), accesslog.Options{
		Sinks: fc.AccessLogs, Clusters: fc.Clusters, Node: fc.Node, Stats: st, Logger: log, Runtime: fc.Runtime,
	})
	if err != nil {
		return nil, err
	}
	mg.logs = logs
	mg.streams.New = func() any { return newStream(mg) }
	return mg, nil
}

// hcmStats are Envoy's http.<stat_prefix>.* connection manager stats.
type hcmStats struct {
	cxTotal, cxHTTP1Total, cxHTTP2Total, cxDestroy         stats.Counter
	cxActive, cxHTTP1Active, cxHTTP2Active                 stats.Gauge
	cxProtocolError, cxIdleTimeout, cxMaxDuration, cxDrain stats.Counter
	cxMaxRequests                                          stats.Counter
	rqTotal, rqHTTP1Total, rqHTTP2Total, rqCompleted       stats.Counter
	rqActive                                               stats.Gauge
	rqClass                                                [5]stats.Counter
	rqTimeout, rqIdleTimeout, rqHeaderTimeout, rqRxReset   stats.Counter
	rqMaxDuration                                          stats.Counter
	rqTxReset, rqWsOnNonWs, rqTooLarge, rqFailedNormalize  stats.Counter
	rqRespBeforeComplete                                   stats.Counter
	rqNormalizedRedirect                                   stats.Counter
	cxUpgradesTotal                                        stats.Counter
	cxUpgradesActive                                       stats.Gauge
	rxBytes, txBytes                                       stats.Counter
	rqTime                                                 stats.Histogram
}

func newStats(st *stats.Store, p string) hcmStats {
	s := hcmStats{
		cxTotal:              st.Counter(p + "downstream_cx_total"),
		cxHTTP1Total:         st.Counter(p + "downstream_cx_http1_total"),
		cxHTTP2Total:         st.Counter(p + "downstream_cx_http2_total"),
		cxDestroy:            st.Counter(p + "downstream_cx_destroy"),
		cxActive:             st.Gauge(p + "downstream_cx_active"),
		cxHTTP1Active:        st.Gauge(p + "downstream_cx_http1_active"),
		cxHTTP2Active:        st.Gauge(p + "downstream_cx_http2_active"),
		cxProtocolError:      st.Counter(p + "downstream_cx_protocol_error"),
		cxIdleTimeout:        st.Counter(p + "downstream_cx_idle_timeout"),
		cxMaxDuration:        st.Counter(p + "downstream_cx_max_duration_reached"),
		cxDrain:              st.Counter(p + "downstream_cx_drain_close"),
		cxMaxRequests:        st.Counter(p + "downstream_cx_max_requests_reached"),
		rqTotal:              st.Counter(p + "downstream_rq_total"),
		rqHTTP1Total:         st.Counter(p + "downstream_rq_http1_total"),
		rqHTTP2Total:         st.Counter(p + "downstream_rq_http2_total"),
		rqCompleted:          st.Counter(p + "downstream_rq_completed"),
		rqActive:             st.Gauge(p + "downstream_rq_active"),
		rqTimeout:            st.Counter(p + "downstream_rq_timeout"),
		rqIdleTimeout:        st.Counter(p + "downstream_rq_idle_timeout"),
		rqMaxDuration:        st.Counter(p + "downstream_rq_max_duration_reached"),
		rqHeaderTimeout:      st.Counter(p + "downstream_rq_header_timeout"),
		rqRxReset:            st.Counter(p + "downstream_rq_rx_reset"),
		rqTxReset:            st.Counter(p + "downstream_rq_tx_reset"),
		rqWsOnNonWs:          st.Counter(p + "downstream_rq_ws_on_non_ws_route"),
		rqTooLarge:           st.Counter(p + "downstream_rq_too_large"),
		rqRespBeforeComplete: st.Counter(p + "downstream_rq_response_before_rq_complete"),
		rqFailedNormalize:    st.Counter(p + "downstream_rq_failed_path_normalization"),
		rqNormalizedRedirect: st.Counter(p + "downstream_rq_redirected_with_normalized_path"),
		cxUpgradesTotal:      st.Counter(p + "downstream_cx_upgrades_total"),
		cxUpgradesActive:     st.Gauge(p + "downstream_cx_upgrades_active"),
		rxBytes:              st.Counter(p + "downstream_cx_rx_bytes_total"),
		txBytes:              st.Counter(p + "downstream_cx_tx_bytes_total"),
		rqTime:               st.Histogram(p + "downstream_rq_time"),
	}
	for i := range s.rqClass {
		s.rqClass[i] = st.Counter(fmt.Sprintf("%sdownstream_rq_%dxx", p, i+1))
	}
	return s
}

// routes returns the route table for a request: the inline one, or RDS's
// current one (nil until it arrives).
func (m *Manager) routes() *route.Table {
	if m.table != nil {
		return m.table
	}
	return m.slot.Table()
}
