// Package engine is the role-based access control engine the HTTP and the
// network RBAC filters share (Envoy's Filters::Common::RBAC): an
// envoy.config.rbac.v3.RBAC compiled into a tree of matchers that decides, for
// the attributes of a request or a connection, which policy matches and
// whether the action allows it.
//
// Evaluation does not allocate: the tree is made of one concrete node type,
// and header and string matching reuse the route table's matchers. (The one
// exception is an authenticated principal_name that gets as far as the peer
// certificate's subject: rendering it allocates, once per Input.)
package engine

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/x509name"
)

// Input is what a policy is evaluated against. Addresses that are not known
// are the zero netip.AddrPort, which no IP rule matches.
type Input struct {
	// Headers are the request headers (with :path, :authority, ...); nil for
	// a connection (network RBAC), which then matches header rules as Envoy
	// does, against no headers at all.
	Headers *http.Header
	// Local is the destination address (destination_ip, destination_port).
	Local netip.AddrPort
	// Source is the connection's remote address, after any PROXY protocol
	// (source_ip).
	Source netip.AddrPort
	// DirectRemote is the socket peer (direct_remote_ip).
	DirectRemote netip.AddrPort
	// Remote is the original client as the connection manager determined it,
	// x-forwarded-for considered (remote_ip); for a connection, Source.
	Remote netip.AddrPort
	// ServerName is the TLS SNI (requested_server_name).
	ServerName string
	// TLS is the downstream connection's TLS session (authenticated), nil
	// on a plain connection.
	TLS *tls.ConnectionState

	// subject is the peer certificate's subject once rendered (subjectSet).
	// Evaluate keeps it in the Input, so an Input serves one goroutine, and
	// a new TLS needs a new Input.
	subject    string
	subjectSet bool
}

// Mode says which filter the engine is built for: the network filter refuses
// header rules, as Envoy's does.
type Mode int

// Modes.
const (
	HTTP Mode = iota
	Network
)

// Action is an RBAC action.
type Action = rbacv3.RBAC_Action

// Engine is a compiled RBAC. It is immutable and safe for concurrent use.
type Engine struct {
	action   Action
	policies []policy // sorted by name: Envoy keeps them in a std::map
}

type policy struct {
	name        string
	permissions node // an or of the permissions
	principals  node // an or of the principals
}

// New compiles rules. Errors name the field inside rules.
func New(rules *rbacv3.RBAC, mode Mode) (*Engine, error) {
	if err := cfgerr.OnlyFields(rules, "action", "policies"); err != nil {
		return nil, err
	}
	e := &Engine{action: rules.GetAction()}
	switch e.action {
	case rbacv3.RBAC_ALLOW, rbacv3.RBAC_DENY, rbacv3.RBAC_LOG:
	default:
		return nil, cfgerr.Errorf("action", "unknown action %d", e.action)
	}
	c := compiler{mode: mode}
	names := make([]string, 0, len(rules.GetPolicies()))
	for name := range rules.GetPolicies() {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		pb := rules.GetPolicies()[name]
		path := "policies[" + name + "]"
		if err := cfgerr.OnlyFields(pb, "permissions", "principals"); err != nil {
			return nil, cfgerr.Field(path, err)
		}
		p := policy{name: name}
		var err error
		if p.permissions, err = c.permissionSet(pb.GetPermissions()); err != nil {
			return nil, cfgerr.Field(path+".permissions", err)
		}
		if p.principals, err = c.principalSet(pb.GetPrincipals()); err != nil {
			return nil, cfgerr.Field(path+".principals", err)
		}
		e.policies = append(e.policies, p)
	}
	return e, nil
}

// Action returns the engine's action.
func (e *Engine) Action() Action { return e.action }

// Policies returns the policy names in evaluation order (sorted).
func (e *Engine) Policies() []string {
	names := make([]string, len(e.policies))
	for i := range e.policies {
		names[i] = e.policies[i].name
	}
	return names
}

// Policy returns the name of policy i as Evaluate reports it, or "" for -1.
func (e *Engine) Policy(i int) string {
	if i < 0 {
		return ""
	}
	return e.policies[i].name
}

// Match returns the index of the first policy (in name order) that matches in,
// or -1: Envoy's checkPolicyMatch.
func (e *Engine) Match(in *Input) int {
	for i := range e.policies {
		p := &e.policies[i]
		if p.permissions.match(in) && p.principals.match(in) {
			return i
		}
	}
	return -1
}

// Evaluate decides in: allowed, and the index of the policy that matched
// (-1 for none). ALLOW allows when a policy matches, DENY when none does, LOG
// always (Envoy then hints the access log; skiff has no dynamic metadata for
// it yet).
func (e *Engine) Evaluate(in *Input) (allowed bool, policy int) {
	policy = e.Match(in)
	switch e.action {
	case rbacv3.RBAC_ALLOW:
		return policy >= 0, policy
	case rbacv3.RBAC_DENY:
		return policy < 0, policy
	}
	return true, policy
}

// kind is what a node tests.
type kind uint8

const (
	kAny kind = iota
	kNone
	kAnd
	kOr
	kNot
	kHeader
	kPath
	kDestIP
	kDestPort
	kDestPortRange
	kServerName
	kSourceIP
	kDirectRemoteIP
	kRemoteIP
	kAuthenticated
)

// node is one permission or principal rule.
type node struct {
	kind     kind
	children []node
	header   *route.HeaderMatcher
	str      *route.StringMatcher // nil for an authenticated without principal_name
	prefix   netip.Prefix
	lo, hi   int64 // a port, or a port range [lo, hi)
}

func (n *node) match(in *Input) bool {
	switch n.kind {
	case kAny:
		return true
	case kNone:
		return false
	case kAnd:
		for i := range n.children {
			if !n.children[i].match(in) {
				return false
			}
		}
		return true
	case kOr:
		for i := range n.children {
			if n.children[i].match(in) {
				return true
			}
		}
		return false
	case kNot:
		return !n.children[0].match(in)
	case kHeader:
		if in.Headers == nil {
			var none http.Header
			return n.header.Matches(&none)
		}
		return n.header.Matches(in.Headers)
	case kPath:
		if in.Headers == nil {
			return false
		}
		path, ok := in.Headers.Get(http.Path)
		if !ok {
			return false
		}
		if i := strings.IndexAny(path, "?#"); i >= 0 {
			path = path[:i]
		}
		return n.str.Match(path)
	case kDestIP:
		return matchIP(n.prefix, in.Local)
	case kDestPort:
		return in.Local.IsValid() && int64(in.Local.Port()) == n.lo
	case kDestPortRange:
		p := int64(in.Local.Port())
		return in.Local.IsValid() && p >= n.lo && p < n.hi
	case kServerName:
		return n.str.Match(in.ServerName)
	case kSourceIP:
		return matchIP(n.prefix, in.Source)
	case kDirectRemoteIP:
		return matchIP(n.prefix, in.DirectRemote)
	case kRemoteIP:
		return matchIP(n.prefix, in.Remote)
	case kAuthenticated:
		return in.authenticated(n.str)
	}
	return false
}

// authenticated is Envoy's AuthenticatedMatcher: never on a plain
// connection; on a TLS one, always without a principal_name (peer
// certificate or not), otherwise when principal_name matches one of the
// peer certificate's URI SANs, one of its DNS SANs, or its subject (""
// without a certificate), tried in that order.
func (in *Input) authenticated(m *route.StringMatcher) bool {
	if in.TLS == nil {
		return false
	}
	if m == nil {
		return true
	}
	if len(in.TLS.PeerCertificates) == 0 {
		return m.Match("")
	}
	peer := in.TLS.PeerCertificates[0]
	if matchURISANs(peer, m) {
		return true
	}
	for _, name := range peer.DNSNames {
		if m.Match(name) {
			return true
		}
	}
	return m.Match(in.peerSubject(peer))
}

// peerSubject renders peer's subject as the access log's
// %DOWNSTREAM_PEER_SUBJECT% does, once per Input.
func (in *Input) peerSubject(peer *x509.Certificate) string {
	if !in.subjectSet {
		in.subject, in.subjectSet = x509name.String(peer.RawSubject), true
	}
	return in.subject
}

// matchURISANs reports whether m matches one of c's URI SANs, each as the
// certificate spells it (the IA5String's bytes, which Envoy's
// uriSanPeerCertificate returns and url.URL.String need not reproduce). The
// strings it matches point into the parsed extension, so that nothing is
// copied; a matcher does not keep what it matches.
func matchURISANs(c *x509.Certificate, m *route.StringMatcher) bool {
	found := false
	x509name.URISANs(c, func(uri string) bool {
		found = m.Match(uri)
		return !found
	})
	return found
}

// matchIP is Envoy's CidrRange::isInRange: same family, and in the prefix.
func matchIP(p netip.Prefix, ap netip.AddrPort) bool {
	if !ap.IsValid() {
		return false
	}
	a := ap.Addr().Unmap()
	return a.Is4() == p.Addr().Is4() && p.Contains(a)
}

type compiler struct {
	mode Mode
}

// maxDepth bounds nesting, so that a hostile config cannot exhaust the stack
// at evaluation time.
const maxDepth = 64

func (c *compiler) permissionSet(pbs []*rbacv3.Permission) (node, error) {
	n := node{kind: kOr}
	for i, pb := range pbs {
		child, err := c.permission(pb, 0)
		if err != nil {
			return node{}, cfgerr.Index("", i, err)
		}
		n.children = append(n.children, child)
	}
	return simplify(n), nil
}

func (c *compiler) principalSet(pbs []*rbacv3.Principal) (node, error) {
	n := node{kind: kOr}
	for i, pb := range pbs {
		child, err := c.principal(pb, 0)
		if err != nil {
			return node{}, cfgerr.Index("", i, err)
		}
		n.children = append(n.children, child)
	}
	return simplify(n), nil
}

// simplify turns an or/and of a single child into that child (an empty or
// never matches and an empty and always does, as in Envoy; PGV already
// refuses empty sets where Envoy does).
func simplify(n node) node {
	if (n.kind == kOr || n.kind == kAnd) && len(n.children) == 1 {
		return n.children[0]
	}
	if n.kind == kOr && len(n.children) == 0 {
		return node{kind: kNone}
	}
	if n.kind == kAnd && len(n.children) == 0 {
		return node{kind: kAny}
	}
	return n
}

func (c *compiler) permission(pb *rbacv3.Permission, depth int) (node, error) {
	if depth > maxDepth {
		return node{}, fmt.Errorf("rules nested more than %d deep", maxDepth)
	}
	switch r := pb.GetRule().(type) {
	case *rbacv3.Permission_Any:
		if !r.Any {
			// PGV requires any: true; false would never match.
			return node{kind: kNone}, nil
		}
		return node{kind: kAny}, nil
	case *rbacv3.Permission_AndRules:
		return c.permissionList(kAnd, "and_rules.rules", r.AndRules.GetRules(), depth)
	case *rbacv3.Permission_OrRules:
		return c.permissionList(kOr, "or_rules.rules", r.OrRules.GetRules(), depth)
	case *rbacv3.Permission_NotRule:
		child, err := c.permission(r.NotRule, depth+1)
		if err != nil {
			return node{}, cfgerr.Field("not_rule", err)
		}
		return node{kind: kNot, children: []node{child}}, nil
	case *rbacv3.Permission_Header:
		n, err := c.header(r.Header)
		return n, cfgerr.Field("header", err)
	case *rbacv3.Permission_UrlPath:
		n, err := pathMatcher(r.UrlPath)
		return n, cfgerr.Field("url_path", err)
	case *rbacv3.Permission_DestinationIp:
		p, err := cidr(r.DestinationIp)
		return node{kind: kDestIP, prefix: p}, cfgerr.Field("destination_ip", err)
	case *rbacv3.Permission_DestinationPort:
		return node{kind: kDestPort, lo: int64(r.DestinationPort)}, nil
	case *rbacv3.Permission_DestinationPortRange:
		lo, hi := int64(r.DestinationPortRange.GetStart()), int64(r.DestinationPortRange.GetEnd())
		if lo > hi {
			return node{}, cfgerr.Errorf("destination_port_range", "start %d is above end %d", lo, hi)
		}
		return node{kind: kDestPortRange, lo: lo, hi: hi}, nil
	case *rbacv3.Permission_RequestedServerName:
		sm, err := route.NewStringMatcher(r.RequestedServerName)
		if err != nil {
			return node{}, cfgerr.Field("requested_server_name", err)
		}
		return node{kind: kServerName, str: sm}, nil
	case *rbacv3.Permission_Metadata:
		return node{}, cfgerr.Errorf("metadata", "not supported by skiff (no dynamic metadata yet)")
	case *rbacv3.Permission_Matcher:
		return node{}, cfgerr.Errorf("matcher", "not supported by skiff")
	case *rbacv3.Permission_UriTemplate:
		return node{}, cfgerr.Errorf("uri_template", "not supported by skiff")
	case *rbacv3.Permission_SourcedMetadata:
		return node{}, cfgerr.Errorf("sourced_metadata", "not supported by skiff (no dynamic metadata yet)")
	}
	return node{}, fmt.Errorf("a permission needs a rule")
}

func (c *compiler) permissionList(k kind, field string, pbs []*rbacv3.Permission, depth int) (node, error) {
	n := node{kind: k}
	for i, pb := range pbs {
		child, err := c.permission(pb, depth+1)
		if err != nil {
			return node{}, cfgerr.Index(field, i, err)
		}
		n.children = append(n.children, child)
	}
	return simplify(n), nil
}

func (c *compiler) principal(pb *rbacv3.Principal, depth int) (node, error) {
	if depth > maxDepth {
		return node{}, fmt.Errorf("identifiers nested more than %d deep", maxDepth)
	}
	switch id := pb.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		if !id.Any {
			return node{kind: kNone}, nil
		}
		return node{kind: kAny}, nil
	case *rbacv3.Principal_AndIds:
		return c.principalList(kAnd, "and_ids.ids", id.AndIds.GetIds(), depth)
	case *rbacv3.Principal_OrIds:
		return c.principalList(kOr, "or_ids.ids", id.OrIds.GetIds(), depth)
	case *rbacv3.Principal_NotId:
		child, err := c.principal(id.NotId, depth+1)
		if err != nil {
			return node{}, cfgerr.Field("not_id", err)
		}
		return node{kind: kNot, children: []node{child}}, nil
	case *rbacv3.Principal_Authenticated_:
		if err := cfgerr.OnlyFields(id.Authenticated, "principal_name"); err != nil {
			return node{}, cfgerr.Field("authenticated", err)
		}
		n := node{kind: kAuthenticated}
		if pn := id.Authenticated.GetPrincipalName(); pn != nil {
			sm, err := route.NewStringMatcher(pn)
			if err != nil {
				return node{}, cfgerr.Field("authenticated.principal_name", err)
			}
			n.str = sm
		}
		return n, nil
	case *rbacv3.Principal_SourceIp:
		//lint:ignore SA1019 source_ip is deprecated but still Envoy's API (Istio sends it)
		p, err := cidr(id.SourceIp)
		return node{kind: kSourceIP, prefix: p}, cfgerr.Field("source_ip", err)
	case *rbacv3.Principal_DirectRemoteIp:
		p, err := cidr(id.DirectRemoteIp)
		return node{kind: kDirectRemoteIP, prefix: p}, cfgerr.Field("direct_remote_ip", err)
	case *rbacv3.Principal_RemoteIp:
		p, err := cidr(id.RemoteIp)
		return node{kind: kRemoteIP, prefix: p}, cfgerr.Field("remote_ip", err)
	case *rbacv3.Principal_Header:
		n, err := c.header(id.Header)
		return n, cfgerr.Field("header", err)
	case *rbacv3.Principal_UrlPath:
		n, err := pathMatcher(id.UrlPath)
		return n, cfgerr.Field("url_path", err)
	case *rbacv3.Principal_Metadata:
		return node{}, cfgerr.Errorf("metadata", "not supported by skiff (no dynamic metadata yet)")
	case *rbacv3.Principal_FilterState:
		return node{}, cfgerr.Errorf("filter_state", "not supported by skiff (no filter state yet)")
	case *rbacv3.Principal_SourcedMetadata:
		return node{}, cfgerr.Errorf("sourced_metadata", "not supported by skiff (no dynamic metadata yet)")
	case *rbacv3.Principal_Custom:
		return node{}, cfgerr.Errorf("custom", "not supported by skiff")
	}
	return node{}, fmt.Errorf("a principal needs an identifier")
}

func (c *compiler) principalList(k kind, field string, pbs []*rbacv3.Principal, depth int) (node, error) {
	n := node{kind: k}
	for i, pb := range pbs {
		child, err := c.principal(pb, depth+1)
		if err != nil {
			return node{}, cfgerr.Index(field, i, err)
		}
		n.children = append(n.children, child)
	}
	return simplify(n), nil
}

func (c *compiler) header(pb *routev3.HeaderMatcher) (node, error) {
	if c.mode == Network {
		// Envoy's network RBAC refuses header rules at config time.
		return node{}, fmt.Errorf("header rules are not supported by the network RBAC filter (a connection has no headers)")
	}
	hm, err := route.NewHeaderMatcher(pb)
	if err != nil {
		return node{}, err
	}
	return node{kind: kHeader, header: hm}, nil
}

func pathMatcher(pb *matcherv3.PathMatcher) (node, error) {
	if err := cfgerr.OnlyFields(pb, "path"); err != nil {
		return node{}, err
	}
	sm, err := route.NewStringMatcher(pb.GetPath())
	if err != nil {
		return node{}, cfgerr.Field("path", err)
	}
	return node{kind: kPath, str: sm}, nil
}

// cidr compiles a CidrRange as Envoy's CidrRange::create does: the address
// masked to prefix_len (0 when unset: every address of the family).
func cidr(pb *corev3.CidrRange) (netip.Prefix, error) {
	if err := cfgerr.OnlyFields(pb, "address_prefix", "prefix_len"); err != nil {
		return netip.Prefix{}, err
	}
	a, err := netip.ParseAddr(pb.GetAddressPrefix())
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, cfgerr.Errorf("address_prefix", "%q is not an IP address", pb.GetAddressPrefix())
	}
	bits := int(pb.GetPrefixLen().GetValue())
	if bits > a.BitLen() {
		return netip.Prefix{}, cfgerr.Errorf("prefix_len", "%d is longer than the %d bits of %s", bits, a.BitLen(), a)
	}
	// skiff presents IPv4 clients of dual-stack listeners as IPv4 (Envoy as
	// ::ffff:a.b.c.d), so an IPv4-mapped range becomes the IPv4 range that
	// matches the same clients.
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}
