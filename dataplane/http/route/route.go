package route

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// DefaultTimeout is Envoy's default for RouteAction.timeout.
const DefaultTimeout = 15 * time.Second

// MirrorPolicy is one of a route's request_mirror_policies (Envoy's shadow
// requests): a copy of the request goes to Cluster, fire and forget, its
// answer ignored.
type MirrorPolicy struct {
	Cluster string
	// Fraction is the share of requests mirrored (runtime_fraction's
	// default_value; all of them without one).
	Fraction runtime.Fraction
	// KeepHost is disable_shadow_host_suffix_append: the copy's :authority
	// is the request's instead of "<host>-shadow".
	KeepHost bool
}

// Mirrored reports whether a request whose random value is rnd is mirrored.
func (m *MirrorPolicy) Mirrored(rnd uint64) bool { return m.Fraction.Sample(rnd) }

// ShadowAuthority is the :authority of a mirrored copy of a request for
// authority: "-shadow" appended to the host, before any port, as Envoy's
// shadow requests have it.
func ShadowAuthority(authority string) string {
	host, port := authority, ""
	if i := strings.LastIndexByte(authority, ':'); i >= 0 && !strings.HasSuffix(authority, "]") {
		host, port = authority[:i], authority[i:]
	}
	return host + "-shadow" + port
}

// StreamDuration is a route's max_stream_duration.
type StreamDuration struct {
	// Max is max_stream_duration: it replaces the connection manager's
	// (0: no limit); nil leaves the manager's in force.
	Max *time.Duration
	// GRPCTimeoutHeaderMax is grpc_timeout_header_max: when set, a request's
	// grpc-timeout header is its stream's limit, capped at this (0: no cap).
	GRPCTimeoutHeaderMax *time.Duration
	// GRPCTimeoutHeaderOffset is grpc_timeout_header_offset, taken off the
	// grpc-timeout header's value.
	GRPCTimeoutHeaderOffset *time.Duration
}

// StreamLimit is how long a stream on route r may last in all, as Envoy's
// connection manager computes it (refreshDurationTimeout): for a request with
// a grpc-timeout header on a route that sets grpc_timeout_header_max, the
// header's value, capped and less the offset (0 if the offset takes it all);
// otherwise the route's max_stream_duration, or the manager's (managerMax, 0
// for none) if the route sets none. ok is false when the stream has no limit.
func (r *Route) StreamLimit(req *http.Header, managerMax time.Duration) (limit time.Duration, ok bool) {
	sd := r.MaxStreamDuration
	if sd != nil && sd.GRPCTimeoutHeaderMax != nil {
		if v, has := req.Get("grpc-timeout"); has {
			if limit, has = http.ParseGRPCTimeout(v); has {
				if m := *sd.GRPCTimeoutHeaderMax; m > 0 && limit > m {
					limit = m
				}
				if off := sd.GRPCTimeoutHeaderOffset; off != nil && limit > 0 {
					limit = max(limit-*off, 0)
				}
				return limit, true
			}
		}
	}
	if sd != nil && sd.Max != nil {
		return *sd.Max, *sd.Max > 0
	}
	return managerMax, managerMax > 0
}

// Action is what a route does with the requests it matches.
type Action uint8

// Actions.
const (
	// Forward sends the request to an upstream cluster (a RouteAction).
	Forward Action = iota
	// Redirect answers with a redirect (a RedirectAction).
	Redirect
	// DirectResponse answers with a fixed response (a DirectResponseAction).
	DirectResponse
)

func (a Action) String() string {
	switch a {
	case Forward:
		return "route"
	case Redirect:
		return "redirect"
	default:
		return "direct_response"
	}
}

// Route is one compiled route of a virtual host. A Route is immutable and
// shared by every request that matches it.
type Route struct {
	// Name is the route's name (may be empty).
	Name string
	// VirtualHost is the virtual host the route belongs to.
	VirtualHost *VirtualHost
	// Action is what the route does; it says which fields below apply.
	Action Action

	// Forward routes.

	// Timeout is the upstream timeout for the whole request, retries
	// included: timeout, 15 s if unset; 0 means none.
	Timeout time.Duration
	// IdleTimeout is idle_timeout, overriding the connection manager's
	// stream_idle_timeout when set (0 disables it).
	IdleTimeout *time.Duration
	// MaxGRPCTimeout is max_grpc_timeout: when set, a gRPC request's
	// timeout is its grpc-timeout header capped at this value (0: no cap;
	// no header: infinity capped), instead of Timeout.
	MaxGRPCTimeout *time.Duration
	// GRPCTimeoutOffset is grpc_timeout_offset, subtracted from the
	// grpc-timeout header when that leaves it positive.
	GRPCTimeoutOffset *time.Duration
	// MaxStreamDuration is max_stream_duration, which the connection manager
	// applies (StreamLimit); nil if the route has none.
	MaxStreamDuration *StreamDuration
	// HashPolicies are hash_policy: what a consistent hash load balancer
	// places a request by (Hash).
	HashPolicies []HashPolicy
	// Mirrors are request_mirror_policies: where the router sends copies
	// of the route's requests (see MirrorPolicy).
	Mirrors []MirrorPolicy
	// Upgrades are upgrade_configs: upgrade types (lower case) the route
	// allows (true) or refuses (false) whatever the connection manager's
	// upgrade_configs say; nil if it has none (see UpgradeAllowed).
	Upgrades map[string]bool
	// TerminateConnect: the route's CONNECT upgrade has a connect_config, so
	// the router terminates a CONNECT request, as Envoy's TcpUpstream: the
	// request's body goes to the upstream host over a TCP connection, whose
	// bytes are the response's body after a 200 skiff makes. Without it a
	// CONNECT request is proxied like any other (the upstream terminates it).
	TerminateConnect bool
	// Retry is the retry policy (the route's, else the virtual host's), or
	// nil for no retries.
	Retry *RetryPolicy
	// AutoHostRewrite asks the router to set :authority to the hostname of
	// the upstream host it picked (auto_host_rewrite).
	AutoHostRewrite bool
	// AppendXForwardedHost is append_x_forwarded_host: the router appends
	// the original host to x-forwarded-host on an automatic host rewrite;
	// RewriteRequest does it for the others.
	AppendXForwardedHost bool
	// ClusterNotFoundCode is the status to answer with when the cluster
	// ClusterFor names does not exist (cluster_not_found_response_code).
	ClusterNotFoundCode int

	// Redirect routes.

	// Redirect is the redirect to answer with.
	Redirect *RedirectAction

	// Redirect and DirectResponse routes.

	// Status is the response status: the redirect's code or the direct
	// response's status.
	Status int
	// Body is the direct response's body (nil for none).
	Body []byte

	// All routes.

	// Decorator is the route's decorator, for tracing (nil if none). skiff
	// has no tracer yet; Envoy uses it only on traced requests.
	Decorator *Decorator
	// Metadata is the route's metadata, for filters and logs.
	Metadata *corev3.Metadata

	match       routeMatch
	clusters    clusterSpec
	pathRewrite pathRewrite
	host        hostRewrite
	reqMut      []*headerMutation
	respMut     []*headerMutation
	statusText  string
	perFilter   []PerFilterConfig // typed_per_filter_config of every level, merged (see PerFilter)
}

// Decorator is a route's envoy.config.route.v3.Decorator.
type Decorator struct {
	Operation string
	Propagate bool // true unless propagate is false
}

// RedirectAction is a compiled envoy.config.route.v3.RedirectAction.
type RedirectAction struct {
	// Code is the response status: 301, 302, 303, 307 or 308.
	Code int
	// Scheme replaces the request's ("https" for https_redirect), or "".
	Scheme string
	// Host replaces the request's host, or "".
	Host string
	// Port, when not 0, is appended to the host (and a port in the
	// request's host is dropped).
	Port uint32
	// Path replaces the request's path (path_redirect), or "".
	Path string
	// PrefixRewrite replaces the matched prefix of the path, or "".
	PrefixRewrite string
	// StripQuery drops the query string (unless Path has its own).
	StripQuery bool

	// toHTTPS is a virtual host's require_tls redirect: the request's URL
	// with https, its host kept as it is (Envoy's createSslRedirectPath).
	toHTTPS bool

	port         string // ":N"
	pathHasQuery bool
	rewrite      pathRewrite
}

// routeMatch is a compiled RouteMatch.
type routeMatch struct {
	kind          pathKind
	value         string // lower case when !caseSensitive
	caseSensitive bool
	re            *regexp.Regexp
	grpc          bool
	headers       []*HeaderMatcher
	query         []*queryMatcher
	// fraction is runtime_fraction: the share of requests (by the stream's
	// random value) the route matches, which runtime may override.
	fraction *runtime.RuntimeFraction
	runtime  *runtime.Loader
}

type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathRegex
	pathSeparatedPrefix
	// pathConnect is connect_matcher: CONNECT requests, with or without a
	// path, and nothing else.
	pathConnect
)

// matches reports whether the request matches. path is :path without its
// query and fragment (and path parameters, if so configured); query is what
// follows the first '?'.
func (m *routeMatch) matches(h *http.Header, path, query string, hasQuery bool, random uint64) bool {
	if m.fraction != nil && !m.fraction.Enabled(m.runtime.Current(), random) {
		return false
	}
	switch m.kind {
	case pathPrefix:
		if m.caseSensitive {
			if !strings.HasPrefix(path, m.value) {
				return false
			}
		} else if !hasPrefixFoldASCII(path, m.value) {
			return false
		}
	case pathExact:
		if m.caseSensitive {
			if path != m.value {
				return false
			}
		} else if !http.EqualFoldLower(path, m.value) {
			return false
		}
	case pathSeparatedPrefix:
		if len(path) < len(m.value) || (len(path) > len(m.value) && path[len(m.value)] != '/') {
			return false
		}
		if m.caseSensitive {
			if path[:len(m.value)] != m.value {
				return false
			}
		} else if !http.EqualFoldLower(path[:len(m.value)], m.value) {
			return false
		}
	case pathRegex:
		if !m.re.MatchString(path) {
			return false
		}
	case pathConnect:
		if h.Method() != "CONNECT" {
			return false
		}
	}
	if m.grpc && !isGRPC(h) {
		return false
	}
	if !matchAll(m.headers, h) {
		return false
	}
	for _, q := range m.query {
		if !q.matches(query, hasQuery) {
			return false
		}
	}
	return true
}

// isGRPC is Envoy's Grpc::Common::isGrpcRequestHeaders: content-type is
// application/grpc or application/grpc+something (not grpc-web).
func isGRPC(h *http.Header) bool {
	ct := h.Value("content-type")
	const grpc = "application/grpc"
	return strings.HasPrefix(ct, grpc) && (len(ct) == len(grpc) || ct[len(grpc)] == '+')
}

// matchedLen is the length of the part of :path a prefix_rewrite replaces:
// the configured prefix or path, or for a regex the whole path (without the
// query).
func (m *routeMatch) matchedLen(pathOnly string) int {
	if m.kind == pathRegex {
		return len(pathOnly)
	}
	return len(m.value)
}

// clusterSpec says where a Forward route sends requests.
type clusterSpec struct {
	name     string
	header   string
	weighted *weightedClusters
}

type weightedClusters struct {
	entries   []weightedEntry
	total     uint64
	header    string // header_name: the random value's source
	perFilter bool   // a cluster has a typed_per_filter_config: look at the entries'
}

type weightedEntry struct {
	name, header string
	weight       uint64
	perFilter    []PerFilterConfig // when the weightedClusters' perFilter is set
}

// pathRewrite is prefix_rewrite or regex_rewrite.
type pathRewrite struct {
	prefix string
	re     *regexp.Regexp
	sub    string // a regexp.Expand template
}

func (p *pathRewrite) set() bool { return p.prefix != "" || p.re != nil }

// hostRewrite is host_rewrite_literal, host_rewrite_header or
// host_rewrite_path_regex.
type hostRewrite struct {
	literal string
	header  string
	re      *regexp.Regexp
	sub     string
}

// splitPath returns the part of path routes match on (Envoy's
// removeQueryAndFragment, after cutting path parameters at ';' if asked)
// and the query string.
func splitPath(path string, ignoreParams bool) (p, query string, hasQuery bool) {
	p = path
	cut := "?#"
	if ignoreParams {
		cut = "?#;"
	}
	if i := strings.IndexAny(path, cut); i >= 0 {
		p = path[:i]
	}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		query, hasQuery = path[i+1:], true
	}
	return p, query, hasQuery
}

// ClusterFor returns the upstream cluster for a request to a Forward route:
// the configured cluster, the first value of cluster_header, or a weighted
// choice. rnd is the request's random value (Envoy's stream random): a
// weighted choice takes rnd modulo the total weight, or the value of the
// weighted clusters' header_name when that is one unsigned integer, and
// walks the clusters' cumulative weights. "" means there is no cluster (the
// header is missing): answer ClusterNotFoundCode.
func (r *Route) ClusterFor(h *http.Header, rnd uint64) string {
	switch {
	case r.clusters.weighted != nil:
		return r.clusters.weighted.pick(h, rnd)
	case r.clusters.header != "":
		return h.Value(r.clusters.header)
	default:
		return r.clusters.name
	}
}

func (w *weightedClusters) pick(h *http.Header, rnd uint64) string {
	e := &w.entries[w.index(h, rnd)]
	if e.header != "" {
		return h.Value(e.header)
	}
	return e.name
}

// index is the position of the cluster a request picks.
func (w *weightedClusters) index(h *http.Header, rnd uint64) int {
	sel := rnd
	if w.header != "" {
		var stack [2]string
		if vals := h.Values(stack[:0], w.header); len(vals) == 1 {
			if n, ok := SimpleAtoiUint64(vals[0]); ok {
				sel = n
			}
		}
	}
	sel %= w.total
	var end uint64
	for i := range w.entries {
		end += w.entries[i].weight
		if sel < end {
			return i
		}
	}
	return len(w.entries) - 1 // unreachable: sel < total
}

// SimpleAtoiUint64 is absl::SimpleAtoi for uint64, as Envoy parses numbers in
// headers (the router's, the fault filter's): surrounding ASCII
// whitespace and a '+' are allowed, overflow is not.
func SimpleAtoiUint64(s string) (uint64, bool) {
	s = trimASCIISpace(s)
	if len(s) > 0 && s[0] == '+' {
		s = s[1:]
	}
	if s == "" {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' || n > (1<<64-1)/10 {
			return 0, false
		}
		d := uint64(c - '0')
		if n*10 > 1<<64-1-d {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// MutateRequest applies the request_headers_to_add/remove of the route, its
// virtual host and the route configuration to the request headers h, most
// specific first (least specific first with most_specific_header_mutations_wins),
// each level as Envoy's HeaderParser does (see headerMutation). info feeds the
// %COMMAND% formatters; it may be nil. Call it before RewriteRequest, as Envoy
// evaluates the mutations before the host and path rewrites.
func (r *Route) MutateRequest(h *http.Header, info *http.StreamInfo) {
	applyAll(r.reqMut, h, info)
}

// MutateResponse applies the response_headers_to_add/remove of the route, its
// virtual host and the route configuration to the response headers h.
func (r *Route) MutateResponse(h *http.Header, info *http.StreamInfo) {
	applyAll(r.respMut, h, info)
}

// RewriteRequest applies the route's host rewrite (host_rewrite_literal,
// host_rewrite_header, host_rewrite_path_regex; auto_host_rewrite is left to
// the router, see AutoHostRewrite) and path rewrite (prefix_rewrite,
// regex_rewrite) to the request headers, and reports whether :path changed.
// With keepOriginal (the router's default, unless suppress_envoy_headers), the
// path before the rewrite goes into x-envoy-original-path and the host before
// the rewrite into x-envoy-original-host.
func (r *Route) RewriteRequest(h *http.Header, keepOriginal bool) bool {
	if r.Action != Forward {
		return false
	}
	r.rewriteHost(h, keepOriginal)
	if !r.pathRewrite.set() {
		return false
	}
	path, has := h.Get(http.Path)
	if !has {
		return false // CONNECT: nothing to rewrite
	}
	newPath, ok := r.rewritePath(path, &r.pathRewrite)
	if !ok || newPath == "" {
		// As Envoy, an empty result leaves the path alone.
		return false
	}
	if keepOriginal {
		h.Set("x-envoy-original-path", path)
	}
	h.Set(http.Path, newPath)
	return true
}

// rewritePath computes the rewritten :path (Envoy's
// currentUrlPathAfterRewriteWithMatchedPath): a prefix rewrite replaces the
// matched part of the path (its configured prefix or path, or the whole path
// for a regex route), the query staying; a regex rewrite replaces every match
// in the path without its query. false means no rewrite applies.
func (r *Route) rewritePath(path string, pr *pathRewrite) (string, bool) {
	pathOnly, _, _ := splitPath(path, false)
	if pr.prefix != "" {
		n := min(r.match.matchedLen(pathOnly), len(path))
		return pr.prefix + path[n:], true
	}
	if pr.re != nil {
		rewritten := replaceAllRE2(pr.re, pathOnly, pr.sub)
		return rewritten + path[len(pathOnly):], true
	}
	return "", false
}

// replaceAllRE2 is RE2::GlobalReplace with a rewrite compiled by
// compileRewriteTemplate: both replace successive non-overlapping matches and
// skip an empty match right after a previous one.
func replaceAllRE2(re *regexp.Regexp, s, template string) string {
	return re.ReplaceAllString(s, template)
}

func (r *Route) rewriteHost(h *http.Header, keepOriginal bool) {
	var host string
	switch {
	case r.host.literal != "":
		host = r.host.literal
	case r.host.header != "":
		host = h.Value(r.host.header)
	case r.host.re != nil:
		pathOnly, _, _ := splitPath(h.Path(), false)
		host = replaceAllRE2(r.host.re, pathOnly, r.host.sub)
	}
	if host == "" {
		return
	}
	UpdateAuthority(h, host, r.AppendXForwardedHost, keepOriginal)
}

// UpdateAuthority sets :authority to host as Envoy's
// Http::Utility::updateAuthority does: with appendXFH the old host is appended
// to x-forwarded-host (unless it is already its last entry), and with
// keepOriginal it is kept in x-envoy-original-host. The router uses it for
// auto_host_rewrite.
func UpdateAuthority(h *http.Header, host string, appendXFH, keepOriginal bool) {
	old := h.Authority()
	if old != "" {
		if appendXFH {
			xfh, ok := h.Get("x-forwarded-host")
			switch {
			case !ok || xfh == "":
				h.Set("x-forwarded-host", old)
			case lastToken(xfh) != old:
				h.Set("x-forwarded-host", xfh+","+old)
			}
		}
		if keepOriginal {
			h.Set("x-envoy-original-host", old)
		}
	}
	h.Set(http.Authority, host)
}

func lastToken(s string) string {
	if i := strings.LastIndexByte(s, ','); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Reply builds the response of a Redirect or DirectResponse route into resp
// (which should be empty) and returns the body to send. resp gets :status, a
// location (for a redirect; for a direct response with a 3xx or 201 status,
// the request's own URL, as Envoy does), the route's response header
// mutations, and content-type: text/plain when there is a body and the
// mutations set no content-type. content-length is the codec's business.
// Unlike Envoy, which rewrites the request's :path before computing a
// redirect's location, Reply leaves the request as it is.
func (r *Route) Reply(req, resp *http.Header, info *http.StreamInfo) []byte {
	switch r.Action {
	case Redirect:
		resp.Add(http.Status, r.statusText)
		resp.Add("location", r.Location(req))
	case DirectResponse:
		resp.Add(http.Status, r.statusText)
		if _, hasPath := req.Get(http.Path); hasPath && (r.Status == 201 || (r.Status >= 300 && r.Status <= 399)) {
			resp.Add("location", newURI(nil, req, req.Path()))
		}
	default:
		return nil
	}
	r.MutateResponse(resp, info)
	if len(r.Body) > 0 && !resp.Has("content-type") {
		resp.Add("content-type", "text/plain")
	}
	return r.Body
}

// Location is the URL a Redirect route sends the request to.
func (r *Route) Location(req *http.Header) string {
	rd := r.Redirect
	if rd == nil {
		return ""
	}
	path := req.Path()
	if rd.toHTTPS {
		return "https://" + req.Authority() + path
	}
	if rd.rewrite.set() {
		if p, ok := r.rewritePath(path, &rd.rewrite); ok && p != "" {
			path = p
		}
	}
	return newURI(rd, req, path)
}

// newURI is Envoy's Http::Utility::newUri: the redirect's scheme, host, port
// and path where it has them, the request's otherwise.
func newURI(rd *RedirectAction, req *http.Header, path string) string {
	scheme := req.Scheme()
	if rd != nil && rd.Scheme != "" {
		scheme = rd.Scheme
	}
	if scheme == "" {
		scheme = "http"
	}
	port := ""
	if rd != nil {
		port = rd.port
	}
	host := ""
	if rd != nil && rd.Host != "" {
		host = rd.Host
	} else {
		host = requestHost(req, scheme, port)
	}
	if rd != nil && rd.Path != "" {
		if rd.pathHasQuery {
			path = rd.Path
		} else if i := strings.IndexByte(path, '?'); i >= 0 {
			path = rd.Path + path[i:]
		} else {
			path = rd.Path
		}
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	if rd != nil && !rd.pathHasQuery && rd.StripQuery {
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
	}
	return scheme + "://" + host + port + path
}

// requestHost is Envoy's processRequestHost: the request's host, without its
// port when the redirect sets one, or when the scheme changes and the port is
// the default of the request's protocol (x-forwarded-proto, else :scheme).
func requestHost(req *http.Header, newScheme, newPort string) string {
	host := req.Authority()
	if host == "" {
		return host
	}
	end := -1
	if host[0] == '[' {
		if i := strings.LastIndex(host, "]:"); i >= 0 {
			end = i + 1
		}
	} else {
		end = strings.LastIndexByte(host, ':')
	}
	if end < 0 {
		return host
	}
	port := host[end:]
	proto, ok := req.Get("x-forwarded-proto")
	if !ok {
		proto = req.Scheme()
	}
	remove := newPort != ""
	if newScheme != proto {
		remove = remove || (proto == "https" && port == ":443") || (proto == "http" && port == ":80")
	}
	if remove {
		return host[:end]
	}
	return host
}

// compileRewriteTemplate turns an RE2 rewrite string (\0 to \9 for groups, \\
// for a backslash) into a regexp.Expand template, checking it as
// RE2::CheckRewriteString does.
func compileRewriteTemplate(re *regexp.Regexp, rewrite string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(rewrite); i++ {
		c := rewrite[i]
		switch c {
		case '$':
			b.WriteString("$$")
		case '\\':
			if i+1 >= len(rewrite) {
				return "", fmt.Errorf("rewrite %q ends with a lone backslash", rewrite)
			}
			i++
			d := rewrite[i]
			switch {
			case d == '\\':
				b.WriteByte('\\')
			case d >= '0' && d <= '9':
				n := int(d - '0')
				if n > re.NumSubexp() {
					return "", fmt.Errorf("rewrite %q refers to \\%d but the pattern has %d groups", rewrite, n, re.NumSubexp())
				}
				b.WriteString("${" + strconv.Itoa(n) + "}")
			default:
				return "", fmt.Errorf("rewrite %q: invalid escape \\%c (use \\0 to \\9 or \\\\)", rewrite, d)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// compileRegexRewrite compiles a RegexMatchAndSubstitute.
func compileRegexRewrite(pb *matcherv3.RegexMatchAndSubstitute) (*regexp.Regexp, string, error) {
	if err := cfgerr.OnlyFields(pb, "pattern", "substitution"); err != nil {
		return nil, "", err
	}
	re, err := compileSearchRegex(pb.GetPattern())
	if err != nil {
		return nil, "", cfgerr.Field("pattern", err)
	}
	tmpl, err := compileRewriteTemplate(re, pb.GetSubstitution())
	if err != nil {
		return nil, "", cfgerr.Field("substitution", err)
	}
	return re, tmpl, nil
}

// GetOperation returns the decorator's operation, or "" for a nil Decorator.
func (d *Decorator) GetOperation() string {
	if d == nil {
		return ""
	}
	return d.Operation
}

// UpgradeAllowed is Envoy's createUpgradeFilterChain decision for an upgrade
// of type up (lower case) on route r (nil: no route): a route's
// upgrade_configs entry decides, else the connection manager's (hcm; a type
// it lists with enabled false, or does not list, is refused).
func UpgradeAllowed(r *Route, hcm map[string]bool, up string) bool {
	if r != nil {
		if allowed, found := r.Upgrades[up]; found {
			return allowed
		}
	}
	return hcm[up]
}
