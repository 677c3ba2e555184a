package route

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/backoff"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// RetryOn is a set of Envoy's retry conditions (x-envoy-retry-on and
// x-envoy-retry-grpc-on values).
type RetryOn uint32

// Retry conditions, named as in Envoy.
const (
	Retry5xx                   RetryOn = 1 << iota // 5xx
	RetryGatewayError                              // gateway-error
	RetryReset                                     // reset
	RetryResetBeforeRequest                        // reset-before-request
	RetryConnectFailure                            // connect-failure
	RetryEnvoyRateLimited                          // envoy-ratelimited
	RetryRetriable4xx                              // retriable-4xx
	RetryRefusedStream                             // refused-stream
	RetryRetriableStatusCodes                      // retriable-status-codes
	RetryRetriableHeaders                          // retriable-headers
	RetryGRPCCancelled                             // cancelled
	RetryGRPCDeadlineExceeded                      // deadline-exceeded
	RetryGRPCInternal                              // internal
	RetryGRPCResourceExhausted                     // resource-exhausted
	RetryGRPCUnavailable                           // unavailable
)

var retryOnNames = [...]string{
	"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
	"retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

const retryOnGRPC = RetryGRPCCancelled | RetryGRPCDeadlineExceeded | RetryGRPCInternal | RetryGRPCResourceExhausted | RetryGRPCUnavailable

// ParseRetryOn parses a comma-separated list of retry conditions, as
// retry_on and the x-envoy-retry-on / x-envoy-retry-grpc-on headers carry
// them (blanks around names are ignored, empty names skipped). It returns
// the conditions it knows and the first name it does not, if any: the
// route configuration refuses an unknown name, the router ignores it in a
// request header as Envoy does.
func ParseRetryOn(s string) (on RetryOn, unknown string) {
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		found := false
		for i, n := range retryOnNames {
			if n == name {
				on |= 1 << i
				found = true
				break
			}
		}
		if !found && unknown == "" {
			unknown = name
		}
	}
	return on, unknown
}

// String lists the conditions in Envoy's syntax.
func (r RetryOn) String() string {
	var names []string
	for i, n := range retryOnNames {
		if r&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}

// DefaultRetryBackoffBase is Envoy's default base retry back-off interval; the
// default maximum is ten times the base.
const DefaultRetryBackoffBase = 25 * time.Millisecond

// RetryPolicy is a compiled envoy.config.route.v3.RetryPolicy: when and how
// often the router tries a request again.
type RetryPolicy struct {
	// On is the set of conditions that allow a retry.
	On RetryOn
	// NumRetries is the number of retries allowed (num_retries, 1 if unset).
	NumRetries uint32
	// PerTryTimeout bounds each attempt; 0 means only the route's timeout
	// applies.
	PerTryTimeout time.Duration
	// PerTryIdleTimeout bounds the idle time of each attempt; 0 means none.
	PerTryIdleTimeout time.Duration
	// Backoff is the jittered exponential back-off between attempts: 25 ms
	// growing to 250 ms unless retry_back_off says otherwise.
	Backoff backoff.Policy
	// RetriableStatusCodes are the codes retriable-status-codes retries on.
	RetriableStatusCodes []uint32
	// RetriableHeaders are the response header matchers retriable-headers
	// retries on (any one matching).
	RetriableHeaders []*HeaderMatcher
	// RetriableRequestHeaders, if any, restrict retries to requests that
	// match one of them.
	RetriableRequestHeaders []*HeaderMatcher
	// AvoidPreviousHosts is the envoy.retry_host_predicates.previous_hosts
	// predicate: a retry picks a host not tried before for this request,
	// trying HostSelectionMaxAttempts times.
	AvoidPreviousHosts bool
	// HostSelectionMaxAttempts is host_selection_retry_max_attempts (1 if
	// unset): how many times the load balancer is asked for a host the
	// predicates accept before the last pick is taken anyway.
	HostSelectionMaxAttempts int64
}

const previousHostsName = "envoy.retry_host_predicates.previous_hosts"

func compileRetryPolicy(pb *routev3.RetryPolicy) (*RetryPolicy, error) {
	if err := cfgerr.OnlyFields(pb, "retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
		"retry_host_predicate", "host_selection_retry_max_attempts", "retriable_status_codes", "retry_back_off",
		"retriable_headers", "retriable_request_headers"); err != nil {
		return nil, err
	}
	on, unknown := ParseRetryOn(pb.GetRetryOn())
	if unknown != "" {
		return nil, cfgerr.Errorf("retry_on", "%q is not a retry condition skiff knows (%s)", unknown, strings.Join(retryOnNames[:], ", "))
	}
	p := &RetryPolicy{
		On:                       on,
		NumRetries:               1,
		HostSelectionMaxAttempts: 1,
		Backoff:                  backoff.Policy{Base: DefaultRetryBackoffBase, Max: 10 * DefaultRetryBackoffBase},
	}
	if pb.NumRetries != nil {
		p.NumRetries = pb.GetNumRetries().GetValue()
	}
	var err error
	if d := pb.GetPerTryTimeout(); d != nil {
		if p.PerTryTimeout, err = duration("per_try_timeout", d); err != nil {
			return nil, err
		}
	}
	if d := pb.GetPerTryIdleTimeout(); d != nil {
		if p.PerTryIdleTimeout, err = duration("per_try_idle_timeout", d); err != nil {
			return nil, err
		}
	}
	if n := pb.GetHostSelectionRetryMaxAttempts(); n != 0 {
		if n < 0 {
			return nil, cfgerr.Errorf("host_selection_retry_max_attempts", "must not be negative")
		}
		p.HostSelectionMaxAttempts = n
	}
	for i, hp := range pb.GetRetryHostPredicate() {
		if err := checkHostPredicate(hp); err != nil {
			return nil, cfgerr.Index("retry_host_predicate", i, err)
		}
		p.AvoidPreviousHosts = true
	}
	p.RetriableStatusCodes = pb.GetRetriableStatusCodes()
	for i, c := range p.RetriableStatusCodes {
		if c < 100 || c > 599 {
			return nil, cfgerr.Index("retriable_status_codes", i, fmt.Errorf("%d is not an HTTP status code", c))
		}
	}
	if bo := pb.GetRetryBackOff(); bo != nil {
		if err := cfgerr.OnlyFields(bo, "base_interval", "max_interval"); err != nil {
			return nil, cfgerr.Field("retry_back_off", err)
		}
		// As Envoy: intervals are whole milliseconds, at least 1 ms, and the
		// maximum defaults to ten times the base.
		base := max(bo.GetBaseInterval().AsDuration().Truncate(time.Millisecond), time.Millisecond)
		p.Backoff = backoff.Policy{Base: base, Max: 10 * base}
		if bo.MaxInterval != nil {
			m, err := duration("retry_back_off.max_interval", bo.GetMaxInterval())
			if err != nil {
				return nil, err
			}
			m = max(m.Truncate(time.Millisecond), time.Millisecond)
			if m < base {
				return nil, cfgerr.Errorf("retry_back_off.max_interval", "must be greater than or equal to the base_interval")
			}
			p.Backoff.Max = m
		}
	}
	if p.RetriableHeaders, err = compileHeaderMatchers("retriable_headers", pb.GetRetriableHeaders()); err != nil {
		return nil, err
	}
	if p.RetriableRequestHeaders, err = compileHeaderMatchers("retriable_request_headers", pb.GetRetriableRequestHeaders()); err != nil {
		return nil, err
	}
	return p, nil
}

// checkHostPredicate accepts the previous_hosts predicate, the one Istio
// sends, and refuses the others.
func checkHostPredicate(hp *routev3.RetryPolicy_RetryHostPredicate) error {
	if err := cfgerr.OnlyFields(hp, "name", "typed_config"); err != nil {
		return err
	}
	tc := hp.GetTypedConfig()
	if tc == nil {
		if hp.GetName() != previousHostsName {
			return cfgerr.Errorf("name", "retry host predicate %q is not supported by skiff (only %s)", hp.GetName(), previousHostsName)
		}
		return nil
	}
	var ph previoushostsv3.PreviousHostsPredicate
	if tc.MessageName() != ph.ProtoReflect().Descriptor().FullName() {
		return cfgerr.Errorf("typed_config", "retry host predicate %s is not supported by skiff (only %s)", tc.GetTypeUrl(), previousHostsName)
	}
	if err := tc.UnmarshalTo(&ph); err != nil {
		return cfgerr.Errorf("typed_config", "decoding: %w", err)
	}
	return cfgerr.Field("typed_config", cfgerr.OnlyFields(&ph))
}

// AllowsRequest reports whether the request may be retried at all:
// retriable_request_headers, when configured, must match it.
func (p *RetryPolicy) AllowsRequest(req *http.Header) bool {
	if len(p.RetriableRequestHeaders) == 0 {
		return true
	}
	for _, m := range p.RetriableRequestHeaders {
		if m.Matches(req) {
			return true
		}
	}
	return false
}

// RetriableResponse reports whether on allows retrying after the response
// headers resp (or a trailers-only gRPC response) came back, following
// Envoy's RetryStateImpl::wouldRetryFromHeaders. on is p.On, possibly widened
// by the request's x-envoy-retry-on headers.
func (p *RetryPolicy) RetriableResponse(on RetryOn, resp *http.Header) bool {
	// A response from an upstream Envoy's rate limiter is retried only for
	// envoy-ratelimited, whatever its status.
	if resp.Has("x-envoy-ratelimited") {
		return on&RetryEnvoyRateLimited != 0
	}
	status, _ := strconv.Atoi(resp.Value(http.Status))
	switch {
	case on&Retry5xx != 0 && status >= 500 && status <= 599:
		return true
	case on&RetryGatewayError != 0 && (status == 502 || status == 503 || status == 504):
		return true
	case on&RetryRetriable4xx != 0 && status == 409:
		return true
	}
	if on&RetryRetriableStatusCodes != 0 {
		for _, c := range p.RetriableStatusCodes {
			if int(c) == status {
				return true
			}
		}
	}
	if on&RetryRetriableHeaders != 0 {
		for _, m := range p.RetriableHeaders {
			if m.Matches(resp) {
				return true
			}
		}
	}
	if on&retryOnGRPC != 0 {
		if gs, ok := resp.Get("grpc-status"); ok {
			code, err := strconv.Atoi(gs)
			if err == nil {
				switch {
				case code == 1 && on&RetryGRPCCancelled != 0,
					code == 4 && on&RetryGRPCDeadlineExceeded != 0,
					code == 8 && on&RetryGRPCResourceExhausted != 0,
					code == 14 && on&RetryGRPCUnavailable != 0,
					code == 13 && on&RetryGRPCInternal != 0:
					return true
				}
			}
		}
	}
	return false
}

// ResetKind says how an upstream attempt failed without a response.
type ResetKind uint8

// Reset kinds.
const (
	// ResetOther is any other reset of the upstream stream or connection.
	ResetOther ResetKind = iota
	// ResetConnectFailure: no connection could be made.
	ResetConnectFailure
	// ResetRefusedStream: HTTP/2 REFUSED_STREAM.
	ResetRefusedStream
	// ResetOverflow: a local circuit breaker refused the attempt; never retried.
	ResetOverflow
)

// RetriableReset reports whether on allows retrying after an attempt ended
// without response headers, following RetryStateImpl::wouldRetryFromReset.
// sent says whether any of the request had been sent upstream.
func (p *RetryPolicy) RetriableReset(on RetryOn, kind ResetKind, sent bool) bool {
	switch {
	case kind == ResetOverflow:
		return false
	case on&(RetryReset|Retry5xx|RetryGatewayError) != 0:
		return true
	case on&RetryResetBeforeRequest != 0 && !sent:
		return true
	case on&RetryRefusedStream != 0 && kind == ResetRefusedStream:
		return true
	case on&RetryConnectFailure != 0 && kind == ResetConnectFailure:
		return true
	}
	return false
}
