package route

import (
	"fmt"
	"math"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// DefaultMaxDirectResponseBodySize is Envoy's default for
// max_direct_response_body_size_bytes.
const DefaultMaxDirectResponseBodySize = 4096

// Options are what compiling a route configuration needs from its
// surroundings.
type Options struct {
	// ClusterExists reports whether a cluster is defined. When
	// validate_clusters is in effect (set to true, or unset in an inline
	// route_config) every cluster a route names (cluster, weighted cluster
	// names; not those read from headers) must exist. When ClusterExists is
	// nil there is nothing to check against and the check is the caller's.
	ClusterExists func(name string) bool
	// Runtime is the layered runtime whose keys override the fractions of
	// routes' runtime_fraction matches. Nil: the defaults apply.
	Runtime *runtime.Loader
	// FilterConfigs builds the HTTP filters' per-route configurations
	// (typed_per_filter_config of the route configuration, its virtual hosts,
	// routes and weighted clusters). The HTTP filter registry provides it
	// (filter.Registry.RouteConfigs). When nil, a typed_per_filter_config
	// entry is an error.
	FilterConfigs FilterConfigBuilder
}

// Compile validates a RouteConfiguration (as RDS delivers it) and compiles it
// into a Table. Errors are *cfgerr.Error with the path of the offending field
// inside the RouteConfiguration; fields skiff does not implement are refused
// by name (see the package documentation for the list).
func Compile(rc *routev3.RouteConfiguration, opts Options) (*Table, error) {
	return compile(rc, opts, false)
}

// CompileInline is Compile for an HTTP connection manager's inline
// route_config, where validate_clusters defaults to true.
func CompileInline(rc *routev3.RouteConfiguration, opts Options) (*Table, error) {
	return compile(rc, opts, true)
}

// compiler carries the route configuration's settings down to the routes.
type compiler struct {
	opts             Options
	validateClusters bool
	maxBody          uint32
	mostSpecificWins bool
	cfgReq, cfgResp  *headerMutation

	// typed_per_filter_config of the levels above the route being compiled,
	// and the names of those levels for errors.
	rcFilters, vhFilters []levelConfig
	vhMerged             []PerFilterConfig
	rcWhere, vhWhere     string

	// request_mirror_policies of the route configuration and the virtual
	// host: a route without its own takes the most specific non-empty one.
	rcMirrors, vhMirrors []MirrorPolicy
}

func compile(rc *routev3.RouteConfiguration, opts Options, inline bool) (*Table, error) {
	if rc == nil {
		return nil, cfgerr.Errorf("", "no route configuration")
	}
	if err := cfgerr.OnlyFields(rc, "name", "virtual_hosts", "response_headers_to_add", "response_headers_to_remove",
		"request_headers_to_add", "request_headers_to_remove", "most_specific_header_mutations_wins",
		"validate_clusters", "max_direct_response_body_size_bytes", "ignore_port_in_host_matching",
		"ignore_path_parameters_in_path_matching", "metadata", "typed_per_filter_config",
		"request_mirror_policies"); err != nil {
		return nil, err
	}
	if err := cfgerr.Validate(rc); err != nil {
		return nil, err
	}
	c := &compiler{
		opts:             opts,
		validateClusters: inline,
		maxBody:          DefaultMaxDirectResponseBodySize,
		mostSpecificWins: rc.GetMostSpecificHeaderMutationsWins(),
	}
	if v := rc.GetValidateClusters(); v != nil {
		c.validateClusters = v.GetValue()
	}
	if v := rc.GetMaxDirectResponseBodySizeBytes(); v != nil {
		c.maxBody = v.GetValue()
	}
	var err error
	if c.cfgReq, err = compileMutation(false, "request_headers_to_add", rc.GetRequestHeadersToAdd(), "request_headers_to_remove", rc.GetRequestHeadersToRemove()); err != nil {
		return nil, err
	}
	if c.cfgResp, err = compileMutation(true, "response_headers_to_add", rc.GetResponseHeadersToAdd(), "response_headers_to_remove", rc.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	if c.rcMirrors, err = compileMirrorPolicies(rc.GetRequestMirrorPolicies()); err != nil {
		return nil, err
	}
	c.rcWhere = describe("route configuration", rc.GetName(), "")
	if c.rcFilters, err = c.filterConfigs(rc.GetTypedPerFilterConfig(), c.rcWhere); err != nil {
		return nil, err
	}
	t := &Table{
		name:             rc.GetName(),
		ignorePort:       rc.GetIgnorePortInHostMatching(),
		ignorePathParams: rc.GetIgnorePathParametersInPathMatching(),
		exact:            map[string]*VirtualHost{},
		Metadata:         rc.GetMetadata(),
		proto:            rc,
	}
	seen := map[string]string{} // domain -> where it was first seen
	suffix := map[int]map[string]*VirtualHost{}
	prefix := map[int]map[string]*VirtualHost{}
	for i, vpb := range rc.GetVirtualHosts() {
		vh, err := c.virtualHost(vpb)
		if err != nil {
			return nil, cfgerr.Index("virtual_hosts", i, err)
		}
		t.vhosts = append(t.vhosts, vh)
		for j, d := range vpb.GetDomains() {
			here := fmt.Sprintf("virtual_hosts[%d].domains[%d]", i, j)
			d = http.LowerASCII(d)
			if where, dup := seen[d]; dup {
				if d == "*" {
					return nil, cfgerr.Errorf(here, "only one virtual host may have the domain \"*\" (%s has it)", where)
				}
				return nil, cfgerr.Errorf(here, "duplicate domain %q (%s has it): domains must be unique across virtual hosts", d, where)
			}
			seen[d] = here
			switch {
			case d == "*":
				t.def = vh
			case d != "" && d[0] == '*':
				addWildcard(suffix, d[1:], vh)
			case d != "" && d[len(d)-1] == '*':
				addWildcard(prefix, d[:len(d)-1], vh)
			default:
				t.exact[d] = vh
			}
		}
	}
	t.suffix = sortWildcards(suffix)
	t.prefix = sortWildcards(prefix)
	t.onlyDefault = len(t.exact) == 0 && len(t.suffix) == 0 && len(t.prefix) == 0
	return t, nil
}

func addWildcard(m map[int]map[string]*VirtualHost, key string, vh *VirtualHost) {
	if m[len(key)] == nil {
		m[len(key)] = map[string]*VirtualHost{}
	}
	m[len(key)][key] = vh
}

// sortWildcards orders wildcard sets longest first: the longest wildcard wins.
func sortWildcards(m map[int]map[string]*VirtualHost) []wildcards {
	var out []wildcards
	for n, hosts := range m {
		out = append(out, wildcards{n: n, hosts: hosts})
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].n > out[j-1].n; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func (c *compiler) virtualHost(pb *routev3.VirtualHost) (*VirtualHost, error) {
	if err := cfgerr.OnlyFields(pb, "name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "include_request_attempt_count",
		"include_attempt_count_in_response", "include_is_timeout_retry_header", "retry_policy", "metadata",
		"typed_per_filter_config", "request_mirror_policies", "require_tls"); err != nil {
		return nil, err
	}
	vh := &VirtualHost{
		Name:                          pb.GetName(),
		Domains:                       pb.GetDomains(),
		IncludeRequestAttemptCount:    pb.GetIncludeRequestAttemptCount(),
		IncludeAttemptCountInResponse: pb.GetIncludeAttemptCountInResponse(),
		IncludeIsTimeoutRetryHeader:   pb.GetIncludeIsTimeoutRetryHeader(),
		Metadata:                      pb.GetMetadata(),
		RequireTLS:                    pb.GetRequireTls(),
	}
	if vh.RequireTLS != routev3.VirtualHost_NONE {
		vh.tlsRedirect = &Route{VirtualHost: vh, Action: Redirect, Status: 301, statusText: "301",
			Redirect: &RedirectAction{Code: 301, Scheme: "https", toHTTPS: true}}
	}
	req, err := compileMutation(false, "request_headers_to_add", pb.GetRequestHeadersToAdd(), "request_headers_to_remove", pb.GetRequestHeadersToRemove())
	if err != nil {
		return nil, err
	}
	resp, err := compileMutation(true, "response_headers_to_add", pb.GetResponseHeadersToAdd(), "response_headers_to_remove", pb.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	var retry *RetryPolicy
	if rp := pb.GetRetryPolicy(); rp != nil {
		if retry, err = compileRetryPolicy(rp); err != nil {
			return nil, cfgerr.Field("retry_policy", err)
		}
	}
	if c.vhMirrors, err = compileMirrorPolicies(pb.GetRequestMirrorPolicies()); err != nil {
		return nil, err
	}
	c.vhWhere = describe("virtual host", pb.GetName(), c.rcWhere)
	if c.vhFilters, err = c.filterConfigs(pb.GetTypedPerFilterConfig(), c.vhWhere); err != nil {
		return nil, err
	}
	c.vhMerged = mergeFilterConfigs(c.vhFilters, c.rcFilters)
	for i, rpb := range pb.GetRoutes() {
		r, err := c.route(rpb, vh, retry, req, resp)
		if err != nil {
			return nil, cfgerr.Index("routes", i, err)
		}
		vh.routes = append(vh.routes, r)
	}
	return vh, nil
}

// levels orders the header mutations of a route, its virtual host and the
// route configuration as Envoy evaluates them: most specific first, or least
// specific first with most_specific_header_mutations_wins.
func (c *compiler) levels(route, vhost, config *headerMutation) []*headerMutation {
	var out []*headerMutation
	order := []*headerMutation{route, vhost, config}
	if c.mostSpecificWins {
		order = []*headerMutation{config, vhost, route}
	}
	for _, m := range order {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

// route compiles a route of vh, whose retry policy and header mutations
// (nil if none) the route inherits.
func (c *compiler) route(pb *routev3.Route, vh *VirtualHost, vhRetry *RetryPolicy, vhReq, vhResp *headerMutation) (*Route, error) {
	if err := cfgerr.OnlyFields(pb, "name", "match", "route", "redirect", "direct_response", "metadata", "decorator",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"typed_per_filter_config"); err != nil {
		return nil, err
	}
	r := &Route{Name: pb.GetName(), VirtualHost: vh, Metadata: pb.GetMetadata()}
	m, err := c.routeMatch(pb.GetMatch())
	if err != nil {
		return nil, cfgerr.Field("match", err)
	}
	r.match = m
	req, err := compileMutation(false, "request_headers_to_add", pb.GetRequestHeadersToAdd(), "request_headers_to_remove", pb.GetRequestHeadersToRemove())
	if err != nil {
		return nil, err
	}
	resp, err := compileMutation(true, "response_headers_to_add", pb.GetResponseHeadersToAdd(), "response_headers_to_remove", pb.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	r.reqMut = c.levels(req, vhReq, c.cfgReq)
	r.respMut = c.levels(resp, vhResp, c.cfgResp)
	where := describe("route", pb.GetName(), c.vhWhere)
	routeFilters, err := c.filterConfigs(pb.GetTypedPerFilterConfig(), where)
	if err != nil {
		return nil, err
	}
	r.perFilter = c.vhMerged
	if routeFilters != nil {
		r.perFilter = mergeFilterConfigs(routeFilters, c.vhFilters, c.rcFilters)
	}
	if d := pb.GetDecorator(); d != nil {
		if err := cfgerr.OnlyFields(d, "operation", "propagate"); err != nil {
			return nil, cfgerr.Field("decorator", err)
		}
		r.Decorator = &Decorator{Operation: d.GetOperation(), Propagate: d.Propagate == nil || d.GetPropagate().GetValue()}
	}
	switch a := pb.GetAction().(type) {
	case *routev3.Route_Route:
		r.Action = Forward
		if err := c.routeAction(r, a.Route, vhRetry, routeFilters, where); err != nil {
			return nil, cfgerr.Field("route", err)
		}
	case *routev3.Route_Redirect:
		r.Action = Redirect
		if err := c.redirect(r, a.Redirect); err != nil {
			return nil, cfgerr.Field("redirect", err)
		}
	case *routev3.Route_DirectResponse:
		r.Action = DirectResponse
		if err := c.directResponse(r, a.DirectResponse); err != nil {
			return nil, cfgerr.Field("direct_response", err)
		}
	default:
		return nil, cfgerr.Errorf("", "one of route, redirect, direct_response is required")
	}
	return r, nil
}

func (c *compiler) routeMatch(pb *routev3.RouteMatch) (routeMatch, error) {
	var m routeMatch
	if pb == nil {
		return m, cfgerr.Errorf("", "is required")
	}
	if err := cfgerr.OnlyFields(pb, "prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive",
		"headers", "query_parameters", "grpc", "runtime_fraction", "connect_matcher"); err != nil {
		return m, err
	}
	if rf := pb.GetRuntimeFraction(); rf != nil {
		if err := cfgerr.OnlyFields(rf, "default_value", "runtime_key"); err != nil {
			return m, cfgerr.Field("runtime_fraction", err)
		}
		f := runtime.RuntimeFractionOf(rf, runtime.Fraction{})
		m.fraction, m.runtime = &f, c.opts.Runtime
	}
	m.caseSensitive = pb.CaseSensitive == nil || pb.GetCaseSensitive().GetValue()
	switch p := pb.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		m.kind, m.value = pathPrefix, p.Prefix
	case *routev3.RouteMatch_Path:
		m.kind, m.value = pathExact, p.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		m.kind, m.value = pathSeparatedPrefix, p.PathSeparatedPrefix
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return m, cfgerr.Field("safe_regex", err)
		}
		m.kind, m.re = pathRegex, re
		// case_sensitive does not apply to regexes (use (?i)).
		m.caseSensitive = true
	case *routev3.RouteMatch_ConnectMatcher_:
		if err := cfgerr.Field("connect_matcher", cfgerr.OnlyFields(p.ConnectMatcher)); err != nil {
			return m, err
		}
		m.kind = pathConnect
	default:
		return m, cfgerr.Errorf("", "one of prefix, path, safe_regex, path_separated_prefix, connect_matcher is required")
	}
	if !m.caseSensitive {
		m.value = http.LowerASCII(m.value)
	}
	var err error
	if m.headers, err = compileHeaderMatchers("headers", pb.GetHeaders()); err != nil {
		return m, err
	}
	for i, q := range pb.GetQueryParameters() {
		qm, err := newQueryMatcher(q)
		if err != nil {
			return m, cfgerr.Index("query_parameters", i, err)
		}
		m.query = append(m.query, qm)
	}
	m.grpc = pb.GetGrpc() != nil
	if err := cfgerr.Field("grpc", cfgerr.OnlyFields(pb.GetGrpc())); err != nil {
		return m, err
	}
	return m, nil
}

// routeAction compiles a route's RouteAction; routeFilters are the route's
// own typed_per_filter_config (the level below a weighted cluster's) and where
// names the route for errors.
func (c *compiler) routeAction(r *Route, pb *routev3.RouteAction, vhRetry *RetryPolicy, routeFilters []levelConfig, where string) error {
	// max_grpc_timeout and grpc_timeout_offset are deprecated, but Istio sends them.
	if err := cfgerr.OnlyFields(pb, "cluster", "cluster_header", "weighted_clusters", "cluster_not_found_response_code",
		"prefix_rewrite", "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header",
		"host_rewrite_path_regex", "append_x_forwarded_host", "timeout", "idle_timeout", "retry_policy",
		"max_grpc_timeout", "grpc_timeout_offset", "max_stream_duration", "hash_policy",
		"request_mirror_policies", "upgrade_configs"); err != nil {
		return err
	}
	for i, u := range pb.GetUpgradeConfigs() {
		if err := cfgerr.OnlyFields(u, "upgrade_type", "enabled", "connect_config"); err != nil {
			return cfgerr.Index("upgrade_configs", i, err)
		}
		if err := cfgerr.OnlyFields(u.GetConnectConfig()); err != nil {
			return cfgerr.Index("upgrade_configs", i, cfgerr.Field("connect_config", err))
		}
		t := http.LowerASCII(u.GetUpgradeType())
		if r.Upgrades == nil {
			r.Upgrades = map[string]bool{}
		}
		r.Upgrades[t] = u.Enabled == nil || u.GetEnabled().GetValue()
		if t == "connect" {
			// Used for CONNECT only, as in Envoy (another type's is ignored).
			r.TerminateConnect = u.GetConnectConfig() != nil
		}
	}
	switch cs := pb.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if err := c.checkCluster("cluster", cs.Cluster); err != nil {
			return err
		}
		r.clusters.name = cs.Cluster
	case *routev3.RouteAction_ClusterHeader:
		r.clusters.header = http.LowerASCII(cs.ClusterHeader)
	case *routev3.RouteAction_WeightedClusters:
		w, err := c.weightedClusters(cs.WeightedClusters, r, routeFilters, where)
		if err != nil {
			return cfgerr.Field("weighted_clusters", err)
		}
		r.clusters.weighted = w
	default:
		return cfgerr.Errorf("", "one of cluster, cluster_header, weighted_clusters is required")
	}
	switch pb.GetClusterNotFoundResponseCode() {
	case routev3.RouteAction_SERVICE_UNAVAILABLE:
		r.ClusterNotFoundCode = 503
	case routev3.RouteAction_NOT_FOUND:
		r.ClusterNotFoundCode = 404
	case routev3.RouteAction_INTERNAL_SERVER_ERROR:
		r.ClusterNotFoundCode = 500
	default:
		return cfgerr.Errorf("cluster_not_found_response_code", "unknown code %d", pb.GetClusterNotFoundResponseCode())
	}
	r.pathRewrite.prefix = pb.GetPrefixRewrite()
	if rr := pb.GetRegexRewrite(); rr != nil {
		if r.pathRewrite.prefix != "" {
			return cfgerr.Errorf("regex_rewrite", "specify only one of prefix_rewrite and regex_rewrite")
		}
		re, tmpl, err := compileRegexRewrite(rr)
		if err != nil {
			return cfgerr.Field("regex_rewrite", err)
		}
		r.pathRewrite.re, r.pathRewrite.sub = re, tmpl
	}
	switch hr := pb.GetHostRewriteSpecifier().(type) {
	case *routev3.RouteAction_HostRewriteLiteral:
		r.host.literal = hr.HostRewriteLiteral
	case *routev3.RouteAction_AutoHostRewrite:
		r.AutoHostRewrite = hr.AutoHostRewrite.GetValue()
	case *routev3.RouteAction_HostRewriteHeader:
		r.host.header = http.LowerASCII(hr.HostRewriteHeader)
	case *routev3.RouteAction_HostRewritePathRegex:
		re, tmpl, err := compileRegexRewrite(hr.HostRewritePathRegex)
		if err != nil {
			return cfgerr.Field("host_rewrite_path_regex", err)
		}
		r.host.re, r.host.sub = re, tmpl
	}
	r.AppendXForwardedHost = pb.GetAppendXForwardedHost()
	r.Timeout = DefaultTimeout
	var err error
	if pb.Timeout != nil {
		if r.Timeout, err = duration("timeout", pb.GetTimeout()); err != nil {
			return err
		}
	}
	if r.IdleTimeout, err = optDuration("idle_timeout", pb.GetIdleTimeout()); err != nil {
		return err
	}
	//lint:ignore SA1019 see above
	if r.MaxGRPCTimeout, err = optDuration("max_grpc_timeout", pb.GetMaxGrpcTimeout()); err != nil {
		return err
	}
	//lint:ignore SA1019 see above
	if r.GRPCTimeoutOffset, err = optDuration("grpc_timeout_offset", pb.GetGrpcTimeoutOffset()); err != nil {
		return err
	}
	if r.HashPolicies, err = compileHashPolicies(pb.GetHashPolicy()); err != nil {
		return err
	}
	if r.Mirrors, err = compileMirrorPolicies(pb.GetRequestMirrorPolicies()); err != nil {
		return err
	}
	// Policies are not merged: the most specific non-empty list is the route's.
	for _, up := range [][]MirrorPolicy{c.vhMirrors, c.rcMirrors} {
		if len(r.Mirrors) == 0 {
			r.Mirrors = up
		}
	}
	if msd := pb.GetMaxStreamDuration(); msd != nil {
		if r.MaxStreamDuration, err = compileStreamDuration(msd); err != nil {
			return cfgerr.Field("max_stream_duration", err)
		}
	}
	r.Retry = vhRetry
	if rp := pb.GetRetryPolicy(); rp != nil {
		p, err := compileRetryPolicy(rp)
		if err != nil {
			return cfgerr.Field("retry_policy", err)
		}
		r.Retry = p
	}
	return nil
}

// duration converts a Duration, refusing negative ones as Envoy does
// (DurationUtil::durationToMilliseconds).
func duration(field string, d *durationpb.Duration) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, cfgerr.Errorf(field, "%v", err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, cfgerr.Errorf(field, "must not be negative")
	}
	return v, nil
}

// compileMirrorPolicies compiles a request_mirror_policies list (of a
// route, a virtual host or the route configuration).
func compileMirrorPolicies(pbs []*routev3.RouteAction_RequestMirrorPolicy) ([]MirrorPolicy, error) {
	var out []MirrorPolicy
	for i, mp := range pbs {
		m, err := compileMirrorPolicy(mp)
		if err != nil {
			return nil, cfgerr.Index("request_mirror_policies", i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// compileMirrorPolicy compiles one of a RouteAction's
// request_mirror_policies. trace_sampled has nothing to do without a tracer.
func compileMirrorPolicy(pb *routev3.RouteAction_RequestMirrorPolicy) (MirrorPolicy, error) {
	if err := cfgerr.OnlyFields(pb, "cluster", "runtime_fraction", "trace_sampled",
		"disable_shadow_host_suffix_append"); err != nil {
		return MirrorPolicy{}, err
	}
	if pb.GetCluster() == "" {
		return MirrorPolicy{}, cfgerr.Errorf("cluster", "is required (cluster_header is not supported)")
	}
	m := MirrorPolicy{Cluster: pb.GetCluster(), Fraction: runtime.Percent(100), KeepHost: pb.GetDisableShadowHostSuffixAppend()}
	if rf := pb.GetRuntimeFraction(); rf != nil {
		if err := cfgerr.OnlyFields(rf, "default_value"); err != nil {
			return MirrorPolicy{}, cfgerr.Field("runtime_fraction", err)
		}
		m.Fraction = runtime.FractionOf(rf.GetDefaultValue())
	}
	return m, nil
}

// compileStreamDuration compiles a RouteAction's max_stream_duration.
func compileStreamDuration(pb *routev3.RouteAction_MaxStreamDuration) (*StreamDuration, error) {
	if err := cfgerr.OnlyFields(pb, "max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"); err != nil {
		return nil, err
	}
	sd := &StreamDuration{}
	var err error
	if sd.Max, err = optDuration("max_stream_duration", pb.GetMaxStreamDuration()); err != nil {
		return nil, err
	}
	if sd.GRPCTimeoutHeaderMax, err = optDuration("grpc_timeout_header_max", pb.GetGrpcTimeoutHeaderMax()); err != nil {
		return nil, err
	}
	if sd.GRPCTimeoutHeaderOffset, err = optDuration("grpc_timeout_header_offset", pb.GetGrpcTimeoutHeaderOffset()); err != nil {
		return nil, err
	}
	return sd, nil
}

// optDuration is duration for a field whose absence means something: nil.
func optDuration(field string, d *durationpb.Duration) (*time.Duration, error) {
	if d == nil {
		return nil, nil
	}
	v, err := duration(field, d)
	if err != nil {
		return nil, err
	}
	return &v, nil
}

func (c *compiler) checkCluster(field, name string) error {
	if c.validateClusters && c.opts.ClusterExists != nil && !c.opts.ClusterExists(name) {
		return cfgerr.Errorf(field, "unknown cluster %q (validate_clusters is in effect)", name)
	}
	return nil
}

func (c *compiler) weightedClusters(pb *routev3.WeightedCluster, r *Route, routeFilters []levelConfig, where string) (*weightedClusters, error) {
	// total_weight is deprecated, but when a control plane sends it its rule holds.
	if err := cfgerr.OnlyFields(pb, "clusters", "total_weight", "header_name", "use_hash_policy"); err != nil {
		return nil, err
	}
	if uh := pb.GetUseHashPolicy(); uh.GetValue() {
		return nil, cfgerr.Errorf("use_hash_policy", "not supported by skiff (hash policies are not)")
	}
	w := &weightedClusters{header: http.LowerASCII(pb.GetHeaderName())}
	for i, cw := range pb.GetClusters() {
		if err := cfgerr.OnlyFields(cw, "name", "cluster_header", "weight", "typed_per_filter_config"); err != nil {
			return nil, cfgerr.Index("clusters", i, err)
		}
		switch {
		case cw.GetName() == "" && cw.GetClusterHeader() == "":
			return nil, cfgerr.Index("clusters", i, fmt.Errorf("one of name or cluster_header is required"))
		case cw.GetName() != "" && cw.GetClusterHeader() != "":
			return nil, cfgerr.Index("clusters", i, fmt.Errorf("only one of name or cluster_header can be set"))
		}
		if cw.GetName() != "" {
			if err := c.checkCluster("name", cw.GetName()); err != nil {
				return nil, cfgerr.Index("clusters", i, err)
			}
		}
		e := weightedEntry{name: cw.GetName(), header: http.LowerASCII(cw.GetClusterHeader()), weight: uint64(cw.GetWeight().GetValue())}
		cwName := cw.GetName()
		if cwName == "" {
			cwName = "cluster_header " + cw.GetClusterHeader()
		}
		own, err := c.filterConfigs(cw.GetTypedPerFilterConfig(), describe("weighted cluster", cwName, where))
		if err != nil {
			return nil, cfgerr.Index("clusters", i, err)
		}
		if own != nil {
			w.perFilter = true
			e.perFilter = mergeFilterConfigs(own, routeFilters, c.vhFilters, c.rcFilters)
		}
		w.total += e.weight
		if w.total > math.MaxUint32 {
			return nil, cfgerr.Errorf("clusters", "the weights add up to more than %d", uint32(math.MaxUint32))
		}
		w.entries = append(w.entries, e)
	}
	if w.total == 0 {
		return nil, cfgerr.Errorf("clusters", "the sum of the weights must be greater than 0")
	}
	if w.perFilter {
		// The clusters without a typed_per_filter_config of their own see the
		// route's.
		for i := range w.entries {
			if w.entries[i].perFilter == nil {
				w.entries[i].perFilter = r.perFilter
			}
		}
	}
	//lint:ignore SA1019 see above
	if tw := pb.GetTotalWeight(); tw != nil && tw.GetValue() > 0 && uint64(tw.GetValue()) != w.total {
		return nil, cfgerr.Errorf("total_weight", "is %d but the weights add up to %d", tw.GetValue(), w.total)
	}
	return w, nil
}

var redirectCodes = map[routev3.RedirectAction_RedirectResponseCode]int{
	routev3.RedirectAction_MOVED_PERMANENTLY:  301,
	routev3.RedirectAction_FOUND:              302,
	routev3.RedirectAction_SEE_OTHER:          303,
	routev3.RedirectAction_TEMPORARY_REDIRECT: 307,
	routev3.RedirectAction_PERMANENT_REDIRECT: 308,
}

func (c *compiler) redirect(r *Route, pb *routev3.RedirectAction) error {
	if err := cfgerr.OnlyFields(pb, "https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
		"path_redirect", "prefix_rewrite", "regex_rewrite", "response_code", "strip_query"); err != nil {
		return err
	}
	code, ok := redirectCodes[pb.GetResponseCode()]
	if !ok {
		return cfgerr.Errorf("response_code", "unknown code %d", pb.GetResponseCode())
	}
	rd := &RedirectAction{
		Code:          code,
		Scheme:        pb.GetSchemeRedirect(),
		Host:          pb.GetHostRedirect(),
		Port:          pb.GetPortRedirect(),
		Path:          pb.GetPathRedirect(),
		PrefixRewrite: pb.GetPrefixRewrite(),
		StripQuery:    pb.GetStripQuery(),
	}
	if pb.GetHttpsRedirect() {
		rd.Scheme = "https"
	}
	if rd.Port > 65535 {
		return cfgerr.Errorf("port_redirect", "%d is not a port", rd.Port)
	}
	if rd.Port != 0 {
		rd.port = ":" + strconv.FormatUint(uint64(rd.Port), 10)
	}
	for i := 0; i < len(rd.Path); i++ {
		if rd.Path[i] == '?' {
			rd.pathHasQuery = true
		}
	}
	rd.rewrite.prefix = rd.PrefixRewrite
	if rr := pb.GetRegexRewrite(); rr != nil {
		re, tmpl, err := compileRegexRewrite(rr)
		if err != nil {
			return cfgerr.Field("regex_rewrite", err)
		}
		rd.rewrite.re, rd.rewrite.sub = re, tmpl
	}
	r.Redirect = rd
	r.Status = code
	r.statusText = strconv.Itoa(code)
	return nil
}

func (c *compiler) directResponse(r *Route, pb *routev3.DirectResponseAction) error {
	if err := cfgerr.OnlyFields(pb, "status", "body"); err != nil {
		return err
	}
	if pb.GetStatus() < 200 || pb.GetStatus() > 599 { // as PGV has it
		return cfgerr.Errorf("status", "%d is not an HTTP status code", pb.GetStatus())
	}
	r.Status = int(pb.GetStatus())
	r.statusText = strconv.Itoa(r.Status)
	if b := pb.GetBody(); b != nil {
		if err := cfgerr.OnlyFields(b, "inline_bytes", "inline_string"); err != nil {
			return cfgerr.Field("body", err)
		}
		switch s := b.GetSpecifier().(type) {
		case *corev3.DataSource_InlineBytes:
			r.Body = s.InlineBytes
		case *corev3.DataSource_InlineString:
			r.Body = []byte(s.InlineString)
		}
		if uint64(len(r.Body)) > uint64(c.maxBody) {
			return cfgerr.Errorf("body", "is %d bytes, more than max_direct_response_body_size_bytes (%d)", len(r.Body), c.maxBody)
		}
	}
	return nil
}
