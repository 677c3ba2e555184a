// Package localratelimit is the HTTP filter envoy.filters.http.local_ratelimit:
// a token bucket shared by every connection and stream of the filter (one
// per Envoy process, as in Envoy) admits requests; when it is empty a request
// is answered with 429 (or the configured status), if the filter is enforced
// for it.
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

// New builds a filter from cfg; now is its clock (nil: time.Now).
func New(cfg *lrlv3.LocalRateLimit, fc *filter.Context, now func() time.Time) (*Filter, error) {
	// always_consume_default_token_bucket only matters with descriptors, which
	// are refused; it is accepted so that configs that spell the default out
	// load.
	if err := cfgerr.OnlyFields(cfg, "stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
		"request_headers_to_add_when_not_enforced", "response_headers_to_add", "enable_x_ratelimit_headers",
		"rate_limited_as_resource_exhausted", "enable_retry_after_header", "always_consume_default_token_bucket"); err != nil {
		return nil, err
	}
	f := &Filter{
		status:     429,
		enabled:    runtime.RuntimeFractionOf(cfg.GetFilterEnabled(), runtime.Fraction{Denominator: 100}),
		enforced:   runtime.RuntimeFractionOf(cfg.GetFilterEnforced(), runtime.Fraction{Denominator: 100}),
		xHeaders:   cfg.GetEnableXRatelimitHeaders() == ratelimitv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		retryAfter: cfg.GetEnableRetryAfterHeader(),
		grpcStatus: -1,
		rt:         fc.Runtime,
		log:        fc.Logger,
		rand:       rand.Uint64,
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
	if f.requestHeaders, err = kit.CompileHeaderAdds("request_headers_to_add_when_not_enforced", cfg.GetRequestHeadersToAddWhenNotEnforced()); err != nil {
		return nil, err
	}
	if f.responseHeaders, err = kit.CompileHeaderAdds("response_headers_to_add", cfg.GetResponseHeadersToAdd()); err != nil {
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

// Filter is a built local_ratelimit filter.
type Filter struct {
	bucket     *Bucket // nil: no token_bucket, so no limit
	limit      string  // max_tokens, for x-ratelimit-limit
	status     int
	grpcStatus int64 // -1: derived from status
	enabled    runtime.RuntimeFraction
	enforced   runtime.RuntimeFraction
	xHeaders   bool
	retryAfter bool

	requestHeaders  kit.HeaderAdds
	responseHeaders kit.HeaderAdds

	stats lrlStats
	rt    *runtime.Loader
	log   *slog.Logger
	rand  func() uint64
}

// sampleSalt decorrelates the enabled decision from other filters' samples.
const sampleSalt = 0x6c726c

// OnRequest implements http.Filter.
func (f *Filter) OnRequest(e *http.Exchange) http.Action {
	snap := f.rt.Current()
	// Enabled is sampled with the exchange's own value so that OnResponse
	// agrees on it (see kit.Sample).
	if !f.enabled.Enabled(snap, kit.Sample(e, sampleSalt)) {
		return http.Continue
	}
	f.stats.enabled.Inc()
	if f.bucket == nil || f.bucket.Consume() {
		f.stats.ok.Inc()
		return http.Continue
	}
	f.stats.rateLimited.Inc()
	if !f.enforced.Enabled(snap, f.rand()) {
		f.requestHeaders.Apply(e.Request)
		return http.Continue
	}
	f.stats.enforced.Inc()
	f.responseHeaders.Apply(&e.Response)
	if f.retryAfter && f.status == 429 && !e.Response.Has(HeaderRetry) {
		secs := max(1, ceilSeconds(f.bucket.NextToken()))
		var b [20]byte
		e.Response.Add(HeaderRetry, string(strconv.AppendUint(b[:0], secs, 10)))
	}
	f.addXHeaders(&e.Response)
	var err error
	if f.grpcStatus >= 0 {
		err = e.LocalReplyGRPC(f.status, uint32(f.grpcStatus), Body, ResponseCodeDetails, http.FlagRateLimited)
	} else {
		err = e.LocalReply(f.status, Body, ResponseCodeDetails, http.FlagRateLimited)
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
	if !f.xHeaders || f.bucket == nil || e.Info.ResponseCodeDetails == ResponseCodeDetails {
		return // no headers wanted, or a reply of ours that has them already
	}
	if !f.enabled.Enabled(f.rt.Current(), kit.Sample(e, sampleSalt)) {
		return
	}
	f.addXHeaders(&e.Response)
}

func (f *Filter) addXHeaders(h *http.Header) {
	if !f.xHeaders || f.bucket == nil {
		return
	}
	remaining, next := f.bucket.State()
	var b [20]byte
	h.Add(HeaderLimit, f.limit)
	h.Add(HeaderRemaining, string(strconv.AppendUint(b[:0], remaining, 10)))
	h.Add(HeaderReset, string(strconv.AppendUint(b[:0], ceilSeconds(next), 10)))
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}
