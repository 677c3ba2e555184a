// Package originaldst is the listener filter envoy.filters.listener.original_dst:
// it restores a connection's original destination, the address the client
// connected to before an iptables (or nftables) REDIRECT or DNAT sent it to
// the listener, from the kernel's connection tracking (SO_ORIGINAL_DST, and
// IP6T_SO_ORIGINAL_DST for IPv6). The connection's Local becomes that address
// and is marked restored: filter chains match on it, ORIGINAL_DST clusters
// connect to it, and a listener with use_original_dst hands the connection to
// the listener bound there. A connection the kernel did not redirect keeps its
// address, not marked restored, as in Envoy.
package originaldst

import (
	"context"
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.listener.original_dst"

// Factory builds original_dst filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &originaldstv3.OriginalDst{} }

// Create implements filter.ListenerFactory.
func (Factory) Create(m proto.Message, _ *filter.Context) (filter.ListenerFilter, error) {
	// traffic_direction matters on Windows only.
	if err := cfgerr.OnlyFields(m, "traffic_direction"); err != nil {
		return nil, err
	}
	return Filter{}, nil
}

// Filter is a built original_dst filter.
type Filter struct{}

// OnAccept implements filter.ListenerFilter.
func (Filter) OnAccept(_ context.Context, c *filter.Conn) error {
	Restore(c)
	return nil
}

// Restore sets c.Local to the connection's original destination if the
// kernel redirected it, and reports whether it did.
func Restore(c *filter.Conn) bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var dst netip.AddrPort
	_ = rc.Control(func(fd uintptr) { dst, ok = OriginalDst(int(fd), c.Local.Addr().Is6() && !c.Local.Addr().Is4In6()) })
	if !ok {
		return false
	}
	c.Local, c.LocalRestored = dst, true
	return true
}

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h), which is also
// IP6T_SO_ORIGINAL_DST's number at SOL_IPV6.
const soOriginalDst = 80

// OriginalDst asks the kernel for socket fd's original destination (the
// IPv6 one if v6): false if it has none (no connection tracking, or not a
// redirected connection).
func OriginalDst(fd int, v6 bool) (netip.AddrPort, bool) {
	var sa unix.RawSockaddrAny
	n := uint32(unsafe.Sizeof(sa))
	level := unix.SOL_IP
	if v6 {
		level = unix.SOL_IPV6
	}
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soOriginalDst,
		uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return netip.AddrPort{}, false
	}
	switch sa.Addr.Family {
	case unix.AF_INET:
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&in.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), port), true
	case unix.AF_INET6:
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&in.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(in.Addr), port), true
	}
	return netip.AddrPort{}, false
}
