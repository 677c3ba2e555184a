package hcm

import (
	"math"
	"math/rand/v2"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	uuidv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/request_id/uuid/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// tracing is the connection manager's tracing configuration without a
// provider: Envoy then traces with its null tracer, whose spans go nowhere,
// but everything around the spans still happens, and skiff does it:
//
//   - the tracing decision: x-request-id (a UUID) carries it in its 15th
//     character ('9' sampled, 'a' forced by x-envoy-force-trace, 'b' forced
//     by the client's x-client-trace-id, '4' not traced), set from
//     client_sampling, random_sampling (against the request id's first 8 hex
//     digits, as Envoy's UuidRequestIdConfig with
//     use_request_id_for_trace_sampling) and overall_sampling; and the
//     http.<stat_prefix>.tracing.{random_sampling,service_forced,
//     client_enabled,not_traceable} counters;
//   - the route's decorator: on an OUTBOUND listener (Envoy's egress
//     operation) a request gets x-envoy-decorator-operation with the
//     decorator's operation (unless propagate is false); on any other, a
//     request's x-envoy-decorator-operation is removed and the response gets
//     the decorator's operation instead.
//
// custom_tags, verbose, max_path_tag_length and spawn_upstream_span shape
// spans only, so they change nothing without a tracer. A provider (a real
// tracer: Zipkin, OpenTelemetry, ...) is refused.
type tracing struct {
	client, random, overall uint32 // out of 10000
	egress                  bool
	// UuidRequestIdConfig.
	packReason, useIDForSampling bool

	randomSampling, serviceForced, clientEnabled, notTraceable stats.Counter
}

// The UUID's trace reason character and its values (Envoy's
// UUIDRequestIDExtension).
const (
	traceBytePos = 14
	traceSampled = '9'
	traceForced  = 'a'
	traceClient  = 'b'
	noTrace      = '4'
)

func newTracing(cfg *hcmv3.HttpConnectionManager, egress bool, st *stats.Store, prefix string) (*tracing, error) {
	t := cfg.GetTracing()
	if t == nil {
		return nil, nil
	}
	if err := cfgerr.OnlyFields(t, "client_sampling", "random_sampling", "overall_sampling", "verbose",
		"max_path_tag_length", "custom_tags", "spawn_upstream_span"); err != nil {
		if cfgerr.PathOf(err) == "provider" {
			return nil, cfgerr.Errorf("tracing.provider", "skiff has no tracers yet (without a provider, tracing uses Envoy's null tracer, which skiff does)")
		}
		return nil, cfgerr.Field("tracing", err)
	}
	tr := &tracing{
		client: percent(t.GetClientSampling()), random: percent(t.GetRandomSampling()), overall: percent(t.GetOverallSampling()),
		egress: egress, packReason: true, useIDForSampling: true,
		randomSampling: st.Counter(prefix + "tracing.random_sampling"),
		serviceForced:  st.Counter(prefix + "tracing.service_forced"),
		clientEnabled:  st.Counter(prefix + "tracing.client_enabled"),
		notTraceable:   st.Counter(prefix + "tracing.not_traceable"),
	}
	if rid := cfg.GetRequestIdExtension(); rid != nil {
		u, err := requestIDConfig(rid)
		if err != nil {
			return nil, cfgerr.Field("request_id_extension", err)
		}
		if v := u.GetPackTraceReason(); v != nil {
			tr.packReason = v.GetValue()
		}
		if v := u.GetUseRequestIdForTraceSampling(); v != nil {
			tr.useIDForSampling = v.GetValue()
		}
	}
	return tr, nil
}

// requestIDConfig checks request_id_extension: UuidRequestIdConfig, Envoy's
// only request id extension and its default.
func requestIDConfig(rid *hcmv3.RequestIDExtension) (*uuidv3.UuidRequestIdConfig, error) {
	if err := cfgerr.OnlyFields(rid, "typed_config"); err != nil {
		return nil, err
	}
	var u uuidv3.UuidRequestIdConfig
	a := rid.GetTypedConfig()
	if a == nil {
		return &u, nil
	}
	if a.GetTypeUrl() != "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig" {
		return nil, cfgerr.Errorf("typed_config", "type %s is not a request id extension skiff supports (UuidRequestIdConfig is)", a.GetTypeUrl())
	}
	if err := a.UnmarshalTo(&u); err != nil {
		return nil, cfgerr.Errorf("typed_config", "decoding: %w", err)
	}
	if err := cfgerr.OnlyFields(&u, "pack_trace_reason", "use_request_id_for_trace_sampling"); err != nil {
		return nil, cfgerr.Field("typed_config", err)
	}
	return &u, nil
}

// percent converts an Envoy Percent (default 100) to a numerator out of
// 10000, as the connection manager does.
func percent(p *typev3.Percent) uint32 {
	if p == nil {
		return 10000
	}
	return uint32(math.Round(p.GetValue() * 100))
}

// decide applies the tracing decision to req's x-request-id (Envoy's
// ConnectionManagerUtility::mutateTracingRequestHeader) and counts it.
func (t *tracing) decide(req *http.Header) {
	id, _ := req.Get("x-request-id")
	var n uint64
	valid := len(id) >= 8
	for i := 0; valid && i < 8; i++ {
		d, ok := unhex(id[i])
		valid = ok
		n = n<<4 | uint64(d)
	}
	if !t.useIDForSampling {
		n, valid = rand.Uint64(), true
	}
	reason := t.reason(id)
	if valid {
		result := uint32(n % 10000)
		next := reason
		if reason == noTrace {
			switch {
			case req.Has("x-client-trace-id") && rand.Uint32N(10000) < t.client:
				next = traceClient
			case req.Has("x-envoy-force-trace"):
				next = traceForced
			case result < t.random:
				next = traceSampled
			}
		}
		if result >= t.overall {
			next = noTrace
		}
		if next != reason && t.packReason && len(id) == 36 {
			var buf [36]byte
			copy(buf[:], id)
			buf[traceBytePos] = next
			req.Set("x-request-id", bytesString(buf[:]))
			reason = t.reason(req.Value("x-request-id"))
		}
	}
	switch reason {
	case traceSampled:
		t.randomSampling.Inc()
	case traceForced:
		t.serviceForced.Inc()
	case traceClient:
		t.clientEnabled.Inc()
	default:
		t.notTraceable.Inc()
	}
}

// reason is the trace reason a request id carries (noTrace unless it packs
// one).
func (t *tracing) reason(id string) byte {
	if !t.packReason || len(id) != 36 {
		return noTrace
	}
	switch c := id[traceBytePos]; c {
	case traceSampled, traceForced, traceClient:
		return c
	}
	return noTrace
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decorate applies the route's decorator to the request (egress) and says
// what the response should carry (ingress; "" for nothing).
func (t *tracing) decorate(req *http.Header, r *route.Route) string {
	var op string
	if r != nil && r.Decorator != nil && r.Decorator.Propagate {
		op = r.Decorator.Operation
	}
	if t.egress {
		if op != "" {
			req.Set("x-envoy-decorator-operation", op)
		}
		return ""
	}
	if v, ok := req.Get("x-envoy-decorator-operation"); ok {
		if v != "" {
			op = "" // the caller's operation overrides the decorator's
		}
		req.Del("x-envoy-decorator-operation")
	}
	return op
}
