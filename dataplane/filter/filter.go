// Package filter defines the extension points of skiff's data path (listener
// filters and network filters; HTTP filters join them with the HTTP connection
// manager) and the Registry that maps a typed_config's type URL to the factory
// that builds it.
//
// A factory turns a decoded, validated config message into a filter value once,
// when a listener is built; that value then serves every connection of the filter
// chain it belongs to, so it must be safe for concurrent use and must not keep
// per-connection state of its own. Building never touches sockets, which is what
// lets skiff validate a whole configuration (and NACK it) before applying any of it.
package filter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/netio"
)

// Conn is a downstream connection as listener and network filters see it.
//
// Listener filters may refine the addressing and protocol fields before the filter
// chain is chosen; from then on the fields are read-only. The embedded net.Conn
// belongs to the terminal filter of the chain once ServeConn is called.
type Conn struct {
	net.Conn

	// ID identifies the connection in logs (Envoy's "ConnectionId").
	ID uint64
	// Listener is the name of the listener that accepted the connection.
	Listener string
	// Local is the destination address: the listener socket's address, or the
	// original destination when a listener filter restored it.
	Local netip.AddrPort
	// LocalRestored says a listener filter (original_dst) restored Local:
	// ORIGINAL_DST clusters connect there, and a listener with
	// use_original_dst may hand the connection over.
	LocalRestored bool
	// Remote is the source address: the socket peer, or the original client when a
	// listener filter (PROXY protocol) restored it.
	Remote netip.AddrPort
	// DirectRemote is always the socket peer.
	DirectRemote netip.AddrPort
	// ServerName is the TLS SNI, when a listener filter found one.
	ServerName string
	// TransportProtocol is "raw_buffer" unless a listener filter detected
	// another protocol (e.g. "tls").
	TransportProtocol string
	// ApplicationProtocols are the ALPN values offered by the client, if known.
	ApplicationProtocols []string
	// TLS is the state of the TLS session the filter chain's transport
	// socket terminated (then Conn is the *tls.Conn), nil on a plain
	// connection.
	TLS *tls.ConnectionState
	// TLSLocal is the certificate skiff presented in that session.
	TLSLocal *x509.Certificate
	// Logger carries the connection's attributes.
	Logger *slog.Logger

	drain      DrainDecision
	onDrain    atomic.Pointer[func(closeIdle bool)]
	drained    atomic.Bool // the hook ran for a drain (or there will be none)
	idleClosed atomic.Bool // the hook ran with closeIdle

	mover atomic.Pointer[moverBox]
	moved atomic.Bool
}

// RestoreOriginalDst sets Local to the connection's original destination
// if the kernel redirected it (SO_ORIGINAL_DST), marking it restored, and
// reports whether it did: the original_dst listener filter, which a
// listener with use_original_dst implies.
func (c *Conn) RestoreOriginalDst() bool {
	dst, ok := netio.OriginalDst(c.Conn, c.Local.Addr().Is6() && !c.Local.Addr().Is4In6())
	if ok {
		c.Local, c.LocalRestored = dst, true
	}
	return ok
}

type moverBox struct{ m Mover }

// MovedKind says what kind of connection a MovedConn is.
type MovedKind int

const (
	// MovedTCPPair is a TCP proxy pair: Down and Up, with the bytes read but
	// not yet written in each direction.
	MovedTCPPair MovedKind = iota
	// MovedHTTP1Idle is an idle HTTP/1.1 keep-alive downstream connection (no
	// request under way): Down only, Pending[0] holding the bytes read from
	// it but not yet parsed.
	MovedHTTP1Idle
)

// MovedConn is a connection stopped at a safe point so that a hot-restart
// successor can resume it.
type MovedConn struct {
	Kind        MovedKind
	Down, Up    net.Conn  // Up is nil for MovedHTTP1Idle
	Pending     [2][]byte // to upstream, to downstream
	Cluster     string
	Host        netip.AddrPort
	StatPrefix  string
	IdleTimeout time.Duration
	// Started is when the terminal filter began serving the connection; zero
	// if unknown.
	Started time.Time
	// Release must be called once the conns have been duplicated into the
	// successor: it closes this process's copies (the successor's keep the
	// connections open) and lets the filter's goroutine end.
	Release func()
}

// Mover is set on a connection by a terminal filter that can hand it over.
type Mover interface {
	// Move stops the connection at a safe point and returns it, or false if it
	// ended meanwhile or cannot be moved.
	Move() (*MovedConn, bool)
}

// SetMover makes m the connection's Mover (nil: it cannot be moved).
func (c *Conn) SetMover(m Mover) {
	if m == nil {
		c.mover.Store(nil)
		return
	}
	c.mover.Store(&moverBox{m})
}

// MarkMoved records that the connection went to a hot-restart successor: it
// goes on there, so this process does not count it as destroyed.
func (c *Conn) MarkMoved() { c.moved.Store(true) }

// Moved reports whether MarkMoved was called.
func (c *Conn) Moved() bool { return c.moved.Load() }

// Mover returns the connection's Mover, or nil.
func (c *Conn) Mover() Mover {
	if b := c.mover.Load(); b != nil {
		return b.m
	}
	return nil
}

// Adopter is a TerminalFilter that can resume a connection a hot-restart
// parent moved: c is the downstream side, m its state. Adopt is called only
// for a kind Adopts accepts, and owns c and m.Up.
type Adopter interface {
	TerminalFilter
	Adopts(kind MovedKind) bool
	Adopt(ctx context.Context, c *Conn, m *MovedConn)
}

// NewConn wraps an accepted connection.
func NewConn(c net.Conn, id uint64, listener string, log *slog.Logger) *Conn {
	conn := &Conn{Conn: c, ID: id, Listener: listener, TransportProtocol: "raw_buffer", Logger: log}
	// Unmapped (::ffff:a.b.c.d as a.b.c.d), so that IPv4 prefixes match
	// clients of dual-stack listeners, as they do in Envoy.
	conn.Local = netio.AddrPort(c.LocalAddr())
	conn.Remote = netio.RemoteAddrPort(c)
	conn.DirectRemote = conn.Remote
	return conn
}

// DrainDecision is a filter chain's drain state, which its connections share
// (Envoy's Network::DrainDecision); the listener's ConnSet implements it.
type DrainDecision interface {
	// Draining is closed when the chain drains: it was removed or changed,
	// a graceful drain began, or skiff shuts down.
	Draining() <-chan struct{}
	// ClosingIdle is closed when idle connections are to end at once (skiff
	// shuts down).
	ClosingIdle() <-chan struct{}
	// DrainClose reports whether a connection should end at its next safe
	// point now (Envoy's drainClose): never before the chain drains, then
	// always with the immediate drain strategy, or with a probability that
	// grows from 0 to 1 over the drain time with the gradual one, so that
	// clients do not all reconnect at once.
	DrainClose() bool
}

// Draining is closed when the connection should end at its next safe point: the
// listener or filter chain that accepted it was removed or changed, or skiff is
// shutting down. Protocols with a graceful end (HTTP/2 GOAWAY, HTTP/1.1
// "Connection: close") use it, asking DrainClose when to end; a TCP proxy
// simply runs on until the drain time is over and its context is canceled.
// Nil before SetDrain.
func (c *Conn) Draining() <-chan struct{} {
	if c.drain == nil {
		return nil
	}
	return c.drain.Draining()
}

// DrainClose reports whether the connection should end at its next safe point
// now: false unless its chain drains; see DrainDecision.
func (c *Conn) DrainClose() bool { return c.drain != nil && c.drain.DrainClose() }

// SetDrain is called by the listener once it has chosen the connection's
// filter chain: d is that chain's drain state.
func (c *Conn) SetDrain(d DrainDecision) { c.drain = d }

// OnDrain makes f run when the connection's chain drains, at once if it
// drains already: f(false) for a drain that only discourages further use (a
// filter chain changed or removed, a graceful drain: the connection ends when
// DrainClose says so, and an idle HTTP/1.1 connection stays open for its next
// request, as in Envoy), then f(true) if idle connections are to end at once
// (skiff shuts down); each at most once, and f(true) alone if that comes
// first. The listener runs it before the drain it was asked for returns, so
// that a drain is in effect by the time it is reported begun. f must not
// block.
func (c *Conn) OnDrain(f func(closeIdle bool)) {
	c.onDrain.Store(&f)
	if c.drain == nil {
		return
	}
	select {
	case <-c.drain.ClosingIdle():
		c.Drain(true)
		return
	default:
	}
	select {
	case <-c.drain.Draining():
		c.Drain(false)
	default:
	}
}

// Drain runs the connection's drain hook (see OnDrain); the listener calls it
// for every connection of a chain that drains.
func (c *Conn) Drain(closeIdle bool) {
	f := c.onDrain.Load()
	if f == nil {
		return
	}
	if closeIdle {
		if c.idleClosed.CompareAndSwap(false, true) {
			c.drained.Store(true)
			(*f)(true)
		}
		return
	}
	if !c.idleClosed.Load() && c.drained.CompareAndSwap(false, true) {
		(*f)(false)
	}
}

// ListenerFilter runs on a new connection before its filter chain is chosen. It
// may peek at the first bytes the client sent and set Conn fields the chain match
// uses (ServerName, TransportProtocol, ApplicationProtocols, Local, Remote).
type ListenerFilter interface {
	// OnAccept inspects c. An error closes the connection; the error is logged.
	OnAccept(ctx context.Context, c *Conn) error
}

// NetworkFilter sees every new connection of its filter chain, in order. A filter
// that is not terminal may only inspect the connection and accept or reject it.
type NetworkFilter interface {
	// OnConnection returns an error to close the connection (e.g. an RBAC deny).
	OnConnection(ctx context.Context, c *Conn) error
}

// TerminalFilter is a NetworkFilter that takes the connection over: the TCP proxy,
// the HTTP connection manager. It must be the last filter of its chain.
type TerminalFilter interface {
	NetworkFilter
	// ServeConn owns c until it returns and must close it before returning.
	// ctx is canceled when the connection must end now (drain time over).
	ServeConn(ctx context.Context, c *Conn)
}

// Factory is what every filter factory has: a name and the config message type
// whose type URL keys it in the Registry.
type Factory interface {
	// Name is the filter's canonical name, e.g. "envoy.filters.network.tcp_proxy".
	Name() string
	// ConfigType returns an empty message of the filter's typed_config type.
	ConfigType() proto.Message
}

// NetworkFactory builds network filters.
type NetworkFactory interface {
	Factory
	// Create builds a filter from its decoded config, which the Registry has
	// already checked against its proto constraints. Errors should be located
	// with cfgerr so they name the offending field.
	Create(cfg proto.Message, fc *Context) (NetworkFilter, error)
}

// HTTPFactory builds HTTP filters (Envoy's http_filters of an HTTP connection
// manager). The router is one, and must be the last of its chain.
type HTTPFactory interface {
	Factory
	Create(cfg proto.Message, fc *Context) (http.Filter, error)
}

// ListenerFactory builds listener filters.
type ListenerFactory interface {
	Factory
	Create(cfg proto.Message, fc *Context) (ListenerFilter, error)
}
