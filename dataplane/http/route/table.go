package route

import (
	"strings"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// Table is a compiled route configuration: the virtual hosts, found by
// :authority, and their routes, tried in order. A Table is immutable and safe
// for concurrent use; a configuration update compiles a new one.
type Table struct {
	name   string
	vhosts []*VirtualHost

	exact       map[string]*VirtualHost
	suffix      []wildcards // "*.foo.com", longest first
	prefix      []wildcards // "foo.*", longest first
	def         *VirtualHost
	onlyDefault bool

	ignorePort       bool
	ignorePathParams bool

	// Metadata is the route configuration's metadata.
	Metadata *corev3.Metadata

	proto *routev3.RouteConfiguration
}

// wildcards are the wildcard domains of one length, without their '*'.
type wildcards struct {
	n     int
	hosts map[string]*VirtualHost
}

// VirtualHost is a compiled virtual host.
type VirtualHost struct {
	// Name is the virtual host's name.
	Name string
	// Domains are the domains as configured.
	Domains []string
	// IncludeRequestAttemptCount asks the router to send
	// x-envoy-attempt-count upstream.
	IncludeRequestAttemptCount bool
	// IncludeAttemptCountInResponse asks the router to send
	// x-envoy-attempt-count downstream.
	IncludeAttemptCountInResponse bool
	// IncludeIsTimeoutRetryHeader asks the router to send
	// x-envoy-is-timeout-retry upstream on retries.
	IncludeIsTimeoutRetryHeader bool
	// Metadata is the virtual host's metadata.
	Metadata *corev3.Metadata
	// RequireTLS is require_tls: which requests that did not come over TLS
	// (x-forwarded-proto is not https) are redirected to https.
	RequireTLS routev3.VirtualHost_TlsRequirementType

	routes      []*Route
	tlsRedirect *Route // answers the requests RequireTLS redirects
}

// Routes returns the virtual host's routes in matching order.
func (v *VirtualHost) Routes() []*Route { return v.routes }

// Name is the route configuration's name.
func (t *Table) Name() string { return t.name }

// VirtualHosts returns the virtual hosts in configuration order.
func (t *Table) VirtualHosts() []*VirtualHost { return t.vhosts }

// Proto returns the RouteConfiguration the table was compiled from.
func (t *Table) Proto() *routev3.RouteConfiguration { return t.proto }

// Match returns the route for a request, or nil when no virtual host or no
// route matches (the router answers 404 with the NR flag). The virtual host
// is chosen by :authority (see VirtualHostFor); a request without :authority
// matches only a table whose sole domain is "*", and one without :path
// matches no route. Routes are tried in order and the first that matches
// wins; random is the stream's random value (ExchangeRandom), which samples
// runtime_fraction matches as it picks weighted clusters. Match does not
// allocate, except to join repeated header fields a header matcher looks at.
func (t *Table) Match(h *http.Header, random uint64) *Route {
	var vh *VirtualHost
	if t.onlyDefault {
		vh = t.def
	} else if host, ok := h.Get(http.Authority); ok {
		vh = t.VirtualHostFor(host)
	}
	if vh == nil {
		return nil
	}
	if vh.tlsRedirect != nil && vh.redirectsToTLS(h) {
		return vh.tlsRedirect
	}
	path, ok := h.Get(http.Path)
	if !ok && h.Method() != "CONNECT" {
		return nil
	}
	// A CONNECT request has no path (but for HTTP/2's extended CONNECT): a
	// connect_matcher route matches it, as in Envoy, where path matchers see
	// an empty path.
	p, q, hasQ := splitPath(path, t.ignorePathParams)
	for _, r := range vh.routes {
		if r.match.matches(h, p, q, hasQ, random) {
			return r
		}
	}
	return nil
}

// redirectsToTLS is Envoy's require_tls check, made before any route is
// matched: a request whose x-forwarded-proto is not https is redirected,
// with EXTERNAL_ONLY only if it is not internal (x-envoy-internal: true).
func (v *VirtualHost) redirectsToTLS(h *http.Header) bool {
	if proto, _ := h.Get("x-forwarded-proto"); proto == "https" {
		return false
	}
	if v.RequireTLS == routev3.VirtualHost_EXTERNAL_ONLY {
		internal, _ := h.Get("x-envoy-internal")
		return internal != "true"
	}
	return true
}

// VirtualHostFor returns the virtual host for an :authority, as Envoy picks
// it: case-insensitively, an exact domain first, then the longest matching
// suffix wildcard ("*.foo.com", "*-bar.foo.com"), then the longest prefix
// wildcard ("foo.*"), then "*". A wildcard matches at least one character.
// The port in host takes part in the match ("foo.com:8080" does not match the
// domain "foo.com") unless ignore_port_in_host_matching is set; the HTTP
// connection manager's strip_matching_host_port and strip_any_host_port
// remove it from the request beforehand (see StripPort).
func (t *Table) VirtualHostFor(host string) *VirtualHost {
	if t.onlyDefault {
		return t.def
	}
	if t.ignorePort {
		if i := PortStart(host); i >= 0 {
			host = host[:i]
		}
	}
	var buf [256]byte
	if hasUpperASCII(host) {
		if len(host) <= len(buf) {
			b := buf[:len(host)]
			for i := 0; i < len(host); i++ {
				b[i] = lowerByte(host[i])
			}
			host = unsafe.String(&b[0], len(b))
		} else {
			host = http.LowerASCII(host)
		}
	}
	if vh := t.exact[host]; vh != nil {
		return vh
	}
	for _, w := range t.suffix {
		if w.n < len(host) {
			if vh := w.hosts[host[len(host)-w.n:]]; vh != nil {
				return vh
			}
		}
	}
	for _, w := range t.prefix {
		if w.n < len(host) {
			if vh := w.hosts[host[:w.n]]; vh != nil {
				return vh
			}
		}
	}
	return t.def
}

// PortStart returns the index of the ':' that starts the port in an
// authority, or -1 if it has none (Envoy's HeaderUtility::getPortStart): the
// last ':' unless it is inside an IPv6 literal's brackets.
func PortStart(host string) int {
	i := strings.LastIndexByte(host, ':')
	if i < 0 {
		return -1
	}
	if j := strings.LastIndexByte(host, ']'); j >= 0 && j > i {
		return -1
	}
	return i
}

// StripTrailingHostDot removes a trailing dot from the :authority's host
// ("example.com.:8080" becomes "example.com:8080"), the HTTP connection
// manager's strip_trailing_host_dot, as Envoy's
// HeaderUtility::stripTrailingHostDot. It reports whether it changed it.
func StripTrailingHostDot(h *http.Header) bool {
	host := h.Authority()
	end := len(host)
	if i := PortStart(host); i >= 0 {
		end = i
	}
	if end == 0 || host[end-1] != '.' {
		return false
	}
	h.Set(http.Authority, host[:end-1]+host[end:])
	return true
}

// StripPort removes the port from :authority as the HTTP connection manager's
// strip_matching_host_port (listenerPort >= 0: only that port) and
// strip_any_host_port (listenerPort < 0: any port) do, before routing. CONNECT
// requests keep their port. It reports whether it removed one.
func StripPort(h *http.Header, listenerPort int) bool {
	if h.Method() == "CONNECT" {
		return false
	}
	host := h.Authority()
	i := PortStart(host)
	if i < 0 {
		return false
	}
	port, ok := SimpleAtoiUint64(host[i+1:])
	if !ok || port > 1<<32-1 {
		return false
	}
	if listenerPort >= 0 && port != uint64(listenerPort) {
		return false
	}
	h.Set(http.Authority, host[:i])
	return true
}
