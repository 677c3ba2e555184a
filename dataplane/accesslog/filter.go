package accesslog

import (
	"fmt"
	"math/rand/v2"
	"strconv"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// filterFunc reports whether an exchange is logged.
type filterFunc func(e *http.Exchange) bool

// buildFilter compiles an AccessLogFilter; rt (nil: none) overrides its
// comparisons' values.
func buildFilter(f *accesslogv3.AccessLogFilter, rt *runtime.Loader) (filterFunc, error) {
	switch x := f.GetFilterSpecifier().(type) {
	case *accesslogv3.AccessLogFilter_StatusCodeFilter:
		cmp, err := comparison(x.StatusCodeFilter.GetComparison(), rt)
		if err != nil {
			return nil, cfgerr.Field("status_code_filter.comparison", err)
		}
		return func(e *http.Exchange) bool { return cmp(uint64(e.Info.ResponseCode)) }, nil
	case *accesslogv3.AccessLogFilter_DurationFilter:
		cmp, err := comparison(x.DurationFilter.GetComparison(), rt)
		if err != nil {
			return nil, cfgerr.Field("duration_filter.comparison", err)
		}
		return func(e *http.Exchange) bool { return cmp(uint64(e.Info.Duration.Milliseconds())) }, nil
	case *accesslogv3.AccessLogFilter_RuntimeFilter:
		return runtimeFilter(x.RuntimeFilter, rt)
	case *accesslogv3.AccessLogFilter_NotHealthCheckFilter:
		// Requests the health_check filter answered or marked.
		return func(e *http.Exchange) bool { return !e.Info.HealthCheck }, nil
	case *accesslogv3.AccessLogFilter_AndFilter, *accesslogv3.AccessLogFilter_OrFilter:
		var subs []*accesslogv3.AccessLogFilter
		field := "and_filter"
		and := true
		if a, ok := x.(*accesslogv3.AccessLogFilter_AndFilter); ok {
			subs = a.AndFilter.GetFilters()
		} else {
			subs = x.(*accesslogv3.AccessLogFilter_OrFilter).OrFilter.GetFilters()
			field, and = "or_filter", false
		}
		var fns []filterFunc
		for i, s := range subs {
			fn, err := buildFilter(s, rt)
			if err != nil {
				return nil, cfgerr.Index(field+".filters", i, err)
			}
			fns = append(fns, fn)
		}
		if and {
			return func(e *http.Exchange) bool {
				for _, fn := range fns {
					if !fn(e) {
						return false
					}
				}
				return true
			}, nil
		}
		return func(e *http.Exchange) bool {
			for _, fn := range fns {
				if fn(e) {
					return true
				}
			}
			return false
		}, nil
	case *accesslogv3.AccessLogFilter_HeaderFilter:
		m, err := route.NewHeaderMatcher(x.HeaderFilter.GetHeader())
		if err != nil {
			return nil, cfgerr.Field("header_filter.header", err)
		}
		return func(e *http.Exchange) bool { return e.Request != nil && m.Matches(e.Request) }, nil
	case *accesslogv3.AccessLogFilter_ResponseFlagFilter:
		var want http.ResponseFlag
		for i, name := range x.ResponseFlagFilter.GetFlags() {
			fl, ok := flagByName(name)
			if !ok {
				return nil, cfgerr.Errorf(fmt.Sprintf("response_flag_filter.flags[%d]", i), "%q is not a response flag skiff knows", name)
			}
			want |= fl
		}
		if want == 0 { // no flags: any flag
			return func(e *http.Exchange) bool { return e.Info.ResponseFlags != 0 }, nil
		}
		return func(e *http.Exchange) bool { return e.Info.ResponseFlags&want != 0 }, nil
	case *accesslogv3.AccessLogFilter_GrpcStatusFilter:
		g := x.GrpcStatusFilter
		var set [17]bool
		for _, st := range g.GetStatuses() {
			if int(st) < len(set) {
				set[st] = true
			}
		}
		exclude := g.GetExclude()
		return func(e *http.Exchange) bool {
			st, ok := grpcStatusOf(e)
			if !ok {
				return false
			}
			in := st >= 0 && st < len(set) && set[st]
			return in != exclude
		}, nil
	case nil:
		return nil, cfgerr.Errorf("", "an access log filter needs a filter_specifier")
	}
	name := "?"
	if fd := f.ProtoReflect().WhichOneof(f.ProtoReflect().Descriptor().Oneofs().ByName("filter_specifier")); fd != nil {
		name = string(fd.Name())
	}
	return nil, cfgerr.Errorf(name, "access log filter %s is not supported by skiff (status_code_filter, duration_filter, runtime_filter, not_health_check_filter, and_filter, or_filter, header_filter, response_flag_filter, grpc_status_filter are)", name)
}

// runtimeFilter is Envoy's RuntimeFilter: it samples percent_sampled (or
// the runtime's value at runtime_key) of the exchanges by their
// x-request-id, so that every proxy on a request's way logs it or none does
// (the first 8 hex digits of the UUID, as Envoy's UUID request ID
// extension's toInteger), or by a random number with
// use_independent_randomness or without a usable request ID.
func runtimeFilter(f *accesslogv3.RuntimeFilter, rt *runtime.Loader) (filterFunc, error) {
	if err := cfgerr.OnlyFields(f, "runtime_key", "percent_sampled", "use_independent_randomness"); err != nil {
		return nil, cfgerr.Field("runtime_filter", err)
	}
	key, def := runtime.NewKey(f.GetRuntimeKey()), runtime.FractionOf(f.GetPercentSampled())
	independent := f.GetUseIndependentRandomness()
	return func(e *http.Exchange) bool {
		r, ok := uint64(0), false
		if !independent {
			r, ok = requestIDInteger(e.Info.RequestID)
		}
		if !ok {
			r = rand.Uint64()
		}
		return rt.Current().FeatureEnabled(key, def, r)
	}, nil
}

// requestIDInteger is the value of a request ID's first 8 hex digits.
func requestIDInteger(id string) (uint64, bool) {
	if len(id) < 8 {
		return 0, false
	}
	v, err := strconv.ParseUint(id[:8], 16, 64)
	return v, err == nil
}

// comparison compiles a ComparisonFilter: its value is the runtime's
// integer at runtime_key when there is one, else default_value, as Envoy's.
func comparison(c *accesslogv3.ComparisonFilter, rt *runtime.Loader) (func(uint64) bool, error) {
	def, key := uint64(c.GetValue().GetDefaultValue()), c.GetValue().GetRuntimeKey()
	value := func() uint64 { return def }
	if key != "" && rt != nil {
		value = func() uint64 { return rt.Current().Integer(key, def) }
	}
	switch c.GetOp() {
	case accesslogv3.ComparisonFilter_EQ:
		return func(x uint64) bool { return x == value() }, nil
	case accesslogv3.ComparisonFilter_GE:
		return func(x uint64) bool { return x >= value() }, nil
	case accesslogv3.ComparisonFilter_LE:
		return func(x uint64) bool { return x <= value() }, nil
	case accesslogv3.ComparisonFilter_NE:
		return func(x uint64) bool { return x != value() }, nil
	}
	return nil, cfgerr.Errorf("op", "unknown comparison %v", c.GetOp())
}

func flagByName(name string) (http.ResponseFlag, bool) {
	for i := 0; i < 32; i++ {
		f := http.ResponseFlag(1) << i
		if s := f.String(); s == name {
			return f, true
		}
		if s := string(f.Append(nil, true)); s == name {
			return f, true
		}
	}
	return 0, false
}

// grpcStatusOf returns the exchange's gRPC status: grpc-status in the
// trailers or a trailers-only response, else mapped from the HTTP status.
func grpcStatusOf(e *http.Exchange) (int, bool) {
	if v, ok := e.ResponseTrailers().Get("grpc-status"); ok {
		n, err := strconv.Atoi(v)
		return n, err == nil
	}
	if v, ok := e.Response.Get("grpc-status"); ok {
		n, err := strconv.Atoi(v)
		return n, err == nil
	}
	if e.Info.ResponseCode == 0 {
		return 0, false
	}
	if e.Info.ResponseCode == 200 {
		return 2, true // UNKNOWN: a 200 without grpc-status
	}
	return int(http.GRPCStatusFromHTTP(e.Info.ResponseCode)), true
}

func newAccessLog(name string, m proto.Message) (*accesslogv3.AccessLog, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{Name: name, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: a}}, nil
}
