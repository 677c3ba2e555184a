package route

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// HashPolicy is one of a route's hash_policy entries: what of a request a
// consistent hash load balancer (RING_HASH, MAGLEV) places it by.
type HashPolicy struct {
	kind     hashKind
	name     string // the header (lower case), cookie or query parameter
	re       *regexp.Regexp
	sub      string         // header.regex_rewrite
	ttl      *time.Duration // cookie: set one of this max age when the request has none
	path     string         // cookie
	attrs    string         // cookie: "; name=value" for each attribute
	terminal bool
}

type hashKind uint8

const (
	hashHeader hashKind = iota + 1
	hashCookie
	hashSourceIP
	hashQuery
)

func compileHashPolicies(pbs []*routev3.RouteAction_HashPolicy) ([]HashPolicy, error) {
	var out []HashPolicy
	for i, pb := range pbs {
		p, err := compileHashPolicy(pb)
		if err != nil {
			return nil, cfgerr.Index("hash_policy", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func compileHashPolicy(pb *routev3.RouteAction_HashPolicy) (HashPolicy, error) {
	p := HashPolicy{terminal: pb.GetTerminal()}
	if err := cfgerr.OnlyFields(pb, "header", "cookie", "connection_properties", "query_parameter", "terminal"); err != nil {
		return p, err
	}
	switch s := pb.GetPolicySpecifier().(type) {
	case *routev3.RouteAction_HashPolicy_Header_:
		if err := cfgerr.OnlyFields(s.Header, "header_name", "regex_rewrite"); err != nil {
			return p, cfgerr.Field("header", err)
		}
		p.kind, p.name = hashHeader, http.LowerASCII(s.Header.GetHeaderName())
		if rr := s.Header.GetRegexRewrite(); rr != nil {
			re, sub, err := compileRegexRewrite(rr)
			if err != nil {
				return p, cfgerr.Field("header.regex_rewrite", err)
			}
			p.re, p.sub = re, sub
		}
	case *routev3.RouteAction_HashPolicy_Cookie_:
		c := s.Cookie
		if err := cfgerr.OnlyFields(c, "name", "ttl", "path", "attributes"); err != nil {
			return p, cfgerr.Field("cookie", err)
		}
		p.kind, p.name, p.path = hashCookie, c.GetName(), c.GetPath()
		if c.Ttl != nil {
			ttl, err := duration("cookie.ttl", c.GetTtl())
			if err != nil {
				return p, err
			}
			p.ttl = &ttl
		}
		for _, a := range c.GetAttributes() {
			if a.GetValue() == "" {
				p.attrs += "; " + a.GetName()
			} else {
				p.attrs += "; " + a.GetName() + "=" + a.GetValue()
			}
		}
	case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
		if err := cfgerr.OnlyFields(s.ConnectionProperties, "source_ip"); err != nil {
			return p, cfgerr.Field("connection_properties", err)
		}
		if !s.ConnectionProperties.GetSourceIp() {
			return p, cfgerr.Errorf("connection_properties.source_ip", "must be true")
		}
		p.kind = hashSourceIP
	case *routev3.RouteAction_HashPolicy_QueryParameter_:
		p.kind, p.name = hashQuery, s.QueryParameter.GetName()
	default:
		return p, cfgerr.Errorf("", "one of header, cookie, connection_properties, query_parameter is required")
	}
	return p, nil
}

// HashInput is what hash policies hash besides the request: the
// downstream's address (the client's, as the connection manager took it),
// and the connection's own two.
type HashInput struct {
	Remote              netip.AddrPort
	DirectRemote, Local netip.AddrPort
}

// Hash computes the request's hash from the route's hash policies, as
// Envoy's HashPolicyImpl::generateHash: each policy that finds its input
// hashes it with xxHash64, folded into the hash so far (rotated left by one
// and XORed); a terminal one that produced a hash ends the list. ok is false
// when no policy produced a hash. setCookie, when not empty, is a Set-Cookie
// value for the response: a cookie policy with a ttl made the cookie the
// request did not have.
func (r *Route) Hash(req *http.Header, in HashInput) (hash uint64, ok bool, setCookie string) {
	for i := range r.HashPolicies {
		p := &r.HashPolicies[i]
		h, found, cookie := p.evaluate(req, in)
		if found {
			if ok {
				hash = (hash<<1 | hash>>63) ^ h
			} else {
				hash, ok = h, true
			}
			if cookie != "" {
				setCookie = cookie
			}
		}
		if p.terminal && ok {
			break
		}
	}
	return hash, ok, setCookie
}

func (p *HashPolicy) evaluate(req *http.Header, in HashInput) (uint64, bool, string) {
	switch p.kind {
	case hashHeader:
		var buf [4]string
		vals := req.Values(buf[:0], p.name)
		if len(vals) == 0 {
			return 0, false, ""
		}
		if p.re != nil {
			for i, v := range vals {
				vals[i] = replaceAllRE2(p.re, v, p.sub)
			}
		}
		// The same hash whatever the order of the values (Envoy sorts
		// them and chains each value's hash as the next one's seed).
		slices.Sort(vals)
		if len(vals) == 1 {
			return xxhash.Sum64String(vals[0]), true, ""
		}
		seed := uint64(0)
		for _, v := range vals {
			d := xxhash.NewWithSeed(seed)
			d.WriteString(v)
			seed = d.Sum64()
		}
		return seed, true, ""
	case hashCookie:
		if v, found := cookieValue(req, p.name); found && v != "" {
			return xxhash.Sum64String(v), true, ""
		}
		if p.ttl == nil {
			return 0, false, ""
		}
		// As Envoy's router: the same value for every request of a
		// connection, from its addresses.
		v := fmt.Sprintf("%016x", xxhash.Sum64String(in.DirectRemote.String()+in.Local.String()))
		set := p.name + `="` + v + `"`
		if *p.ttl > 0 {
			set += "; Max-Age=" + strconv.FormatInt(int64(*p.ttl/time.Second), 10)
		}
		if p.path != "" {
			set += "; Path=" + p.path
		}
		set += p.attrs + "; HttpOnly"
		return xxhash.Sum64String(v), true, set
	case hashSourceIP:
		if !in.Remote.IsValid() {
			return 0, false, ""
		}
		return xxhash.Sum64String(in.Remote.Addr().String()), true, ""
	case hashQuery:
		_, query, hasQuery := splitPath(req.Path(), false)
		if !hasQuery {
			return 0, false, ""
		}
		if v, found := queryParam(query, p.name); found {
			return xxhash.Sum64String(v), true, ""
		}
	}
	return 0, false, ""
}

// cookieValue finds cookie name in the request's cookie headers (without
// the quotes around a quoted value), as Envoy's parseCookieValue.
func cookieValue(req *http.Header, name string) (string, bool) {
	var buf [2]string
	for _, line := range req.Values(buf[:0], "cookie") {
		for line != "" {
			var pair string
			pair, line, _ = strings.Cut(line, ";")
			k, v, found := strings.Cut(strings.TrimSpace(pair), "=")
			if !found || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}
