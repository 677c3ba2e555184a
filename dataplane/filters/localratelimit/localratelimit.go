// Package localratelimit is the HTTP filter envoy.filters.http.local_ratelimit:
// a token bucket shared by every connection and stream of the filter (one
// per Envoy process, as in Envoy) admits requests; when it is empty a request
// is answered with 429 (or the configured status), if the filter is enforced
// for it.
//
// A route's typed_per_filter_config may give the filter another
// LocalRateLimit (with a token_bucket), which replaces the filter's config for
// that route, with a token bucket and stats of its own, as in Envoy.
package localratelimit

import (
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kit"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.http.local_ratelimit"

// Constants of the filter's replies and headers.
const (
	// Body and ResponseCodeDetails of a rate-limited request's reply.
	Body                = "local_rate_limited"
	ResponseCodeDetails = "local_rate_limited"

	HeaderLimit     = "x-ratelimit-limit"
	HeaderRemaining = "x-ratelimit-remaining"
	HeaderReset     = "x-ratelimit-reset"
	HeaderRetry     = "retry-after"

	// MinFillInterval is the shortest fill_interval Envoy accepts.
	MinFillInterval = 50 * time.Millisecond

	grpcResourceExhausted = 8
)

// Factory builds local_ratelimit filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &lrlv3.LocalRateLimit{} }

// Create implements filter.HTTPFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (http.Filter, error) {
	f, err := New(m.(*lrlv3.LocalRateLimit), fc, nil)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// RouteConfigType implements filter.RouteConfigFactory: a route's
// typed_per_filter_config is a LocalRateLimit too.
func (Factory) RouteConfigType() proto.Message { return &lrlv3.LocalRateLimit{} }

// NewRouteConfig implements filter.RouteConfigFactory: the per-route
// LocalRateLimit replaces the filter's config on the route, with its own token
// bucket (shared by every request of the route, built once per route
// configuration version) and its own stats (<stat_prefix>.http_local_rate_limit.*).
// As in Envoy, it must have a token_bucket.
func (Factory) NewRouteConfig(m proto.Message, fc *filter.Context) (any, error) {
	cfg := m.(*lrlv3.LocalRateLimit)
	if cfg.GetTokenBucket() == nil {
		return nil, cfgerr.Errorf("token_bucket", "is required in a per-route configuration")
	}
	return newConfig(cfg, fc, nil)
}

// New builds a filter from cfg; now is its clock (nil: time.Now).
func New(cfg *lrlv3.LocalRateLimit, fc *filter.Context, now func() time.Time) (*Filter, error) {
	c, err := newConfig(cfg, fc, now)
	if err != nil {
		return nil, err
	}
	return &Filter{config: c, pr: fc.PerRoute(), rt: fc.Runtime, log: fc.Logger, rand: rand.Uint64}, nil
}

// newConfig compiles cfg, making its bucket and stats.
func newConfig(cfg *lrlv3.LocalRateLimit, fc *filter.Context, now func() time.Time) (*config, error) {
	// always_consume_default_token_bucket only matters with descriptors, which
	// are refused; it is accepted so that configs that spell the default out
	// load.
	if err := cfgerr.OnlyFields(cfg, "stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
		"request_headers_to_add_when_not_enforced", "response_headers_to_add", "enable_x_ratelimit_headers",
		"rate_limited_as_resource_exhausted", "enable_retry_after_header", "always_consume_default_token_bucket"); err != nil {
		return nil, err
	}
	f := &config{
		status:     429,
		enabled:    runtime.RuntimeFractionOf(cfg.GetFilterEnabled(), runtime.Fraction{Denominator: 100}),
		enforced:   runtime.RuntimeFractionOf(cfg.GetFilterEnforced(), runtime.Fraction{Denominator: 100}),
		xHeaders:   cfg.GetEnableXRatelimitHeaders() == ratelimitv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		retryAfter: cfg.GetEnableRetryAfterHeader(),
		grpcStatus: -1,
	}
	if s := cfg.GetStatus(); s != nil {
		if err := cfgerr.OnlyFields(s, "code"); err != nil {
			return nil, cfgerr.Field("status", err)
		}
		// Envoy answers 429 when the configured status is below 400.
		if c := int(s.GetCode()); c >= 400 {
			f.status = c
		}
	}
	if cfg.GetRateLimitedAsResourceExhausted() {
		f.grpcStatus = grpcResourceExhausted
	}
	if tb := cfg.GetTokenBucket(); tb != nil {
		if err := cfgerr.OnlyFields(tb, "max_tokens", "tokens_per_fill", "fill_interval"); err != nil {
			return nil, cfgerr.Field("token_bucket", err)
		}
		interval := tb.GetFillInterval().AsDuration() // PGV: required, > 0
		if interval < MinFillInterval {
			return nil, cfgerr.Errorf("token_bucket.fill_interval", "%v is below the minimum of %v", interval, MinFillInterval)
		}
		perFill := uint32(1)
		if v := tb.GetTokensPerFill(); v != nil {
			perFill = v.GetValue() // PGV: > 0
		}
		f.bucket = NewBucket(tb.GetMaxTokens(), perFill, interval, now)
		f.limit = strconv.FormatUint(uint64(tb.GetMaxTokens()), 10)
	}
	var err error
	if f.requestHeaders, err = route.CompileHeadersToAdd(false, "request_headers_to_add_when_not_enforced", cfg.GetRequestHeadersToAddWhenNotEnforced()); err != nil {
		return nil, err
	}
	if f.responseHeaders, err = route.CompileHeadersToAdd(true, "response_headers_to_add", cfg.GetResponseHeadersToAdd()); err != nil {
		return nil, err
	}
	prefix := cfg.GetStatPrefix() + ".http_local_rate_limit."
	f.stats = lrlStats{
		enabled:     fc.Stats.Counter(prefix + "enabled"),
		enforced:    fc.Stats.Counter(prefix + "enforced"),
		rateLimited: fc.Stats.Counter(prefix + "rate_limited"),
		ok:          fc.Stats.Counter(prefix + "ok"),
	}
	return f, nil
}

type lrlStats struct {
	enabled, enforced, rateLimited, ok stats.Counter
}

// config is a compiled LocalRateLimit with its bucket and stats: the
// filter's own, or a route's.
type config struct {
	bucket     *Bucket // nil: no token_bucket, so no limit
	limit      string  // max_tokens, for x-ratelimit-limit
	status     int
	grpcStatus int64 // -1: derived from status
	enabled    runtime.RuntimeFraction
	enforced   runtime.RuntimeFraction
	xHeaders   bool
	retryAfter bool

	requestHeaders  route.HeadersToAdd
	responseHeaders route.HeadersToAdd

	stats lrlStats
}

// Filter is a built local_ratelimit filter.
type Filter struct {
	*config // the filter's own; a route's replaces it (see configFor)

	pr   filter.PerRoute
	rt   *runtime.Loader
	log  *slog.Logger
	rand func() uint64
}

// PerRoute implements filter.RouteAware.
func (f *Filter) PerRoute() filter.PerRoute { return f.pr }

// configFor returns the config for e: the route's LocalRateLimit if it has
// one, else the filter's; nil when the route disables the filter.
func (f *Filter) configFor(e *http.Exchange) *config {
	pf, on := f.pr.Lookup(e)
	if !on {
		return nil
	}
	if c, ok := pf.Config().(*config); ok {
		return c
	}
	return f.config
}

// sampleSalt decorrelates the enabled decision from other filters' samples.
const sampleSalt = 0x6c726c

// OnRequest implements http.Filter.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	c := f.configFor(e)
	if c == nil {
		return http.Continue
	}
	snap := f.rt.Current()
	// Enabled is sampled with the exchange's own value so that OnResponse
	// agrees on it (see kit.Sample).
	if !c.enabled.Enabled(snap, kit.Sample(e, sampleSalt)) {
		return http.Continue
	}
	c.stats.enabled.Inc()
	if c.bucket == nil || c.bucket.Consume() {
		c.stats.ok.Inc()
		return http.Continue
	}
	c.stats.rateLimited.Inc()
	if !c.enforced.Enabled(snap, f.rand()) {
		c.requestHeaders.Apply(e.Request, &e.Info)
		return http.Continue
	}
	c.stats.enforced.Inc()
	c.responseHeaders.Apply(&e.Response, &e.Info)
	if c.retryAfter && c.status == 429 && !e.Response.Has(HeaderRetry) {
		secs := max(1, ceilSeconds(c.bucket.NextToken()))
		e.Response.AddUint(HeaderRetry, secs)
	}
	c.addXHeaders(&e.Response)
	var err error
	if c.grpcStatus >= 0 {
		err = e.LocalReplyGRPC(c.status, uint32(c.grpcStatus), Body, ResponseCodeDetails, http.FlagRateLimited)
	} else {
		err = e.LocalReply(c.status, Body, ResponseCodeDetails, http.FlagRateLimited)
	}
	if err != nil {
		f.log.Debug("local_ratelimit: sending the reply failed", "error", err)
	}
	return http.Stop
}

// OnResponse implements http.ResponseFilter: with enable_x_ratelimit_headers,
// a response to a request the filter was enabled for carries
// x-ratelimit-limit, -remaining and -reset, read from the shared bucket as the
// response goes out, as Envoy reads them.
func (f *Filter) OnResponse(e *http.Exchange) {
	c := f.configFor(e)
	if c == nil || !c.xHeaders || c.bucket == nil || e.Info.ResponseCodeDetails == ResponseCodeDetails {
		return // disabled, no headers wanted, or a reply of ours that has them already
	}
	if !c.enabled.Enabled(f.rt.Current(), kit.Sample(e, sampleSalt)) {
		return
	}
	c.addXHeaders(&e.Response)
}

func (f *config) addXHeaders(h *http.Header) {
	if !f.xHeaders || f.bucket == nil {
		return
	}
	remaining, next := f.bucket.State()
	h.Add(HeaderLimit, f.limit)
	h.AddUint(HeaderRemaining, remaining)
	h.AddUint(HeaderReset, ceilSeconds(next))
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}
