package netio

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h), which is also
// IP6T_SO_ORIGINAL_DST's number at SOL_IPV6.
const soOriginalDst = 80

// OriginalDst asks the kernel for the original destination of c, a TCP
// connection an iptables or nftables REDIRECT or DNAT sent here (the IPv6
// one if v6): false if it has none (no connection tracking, or not a
// socket).
func OriginalDst(c net.Conn, v6 bool) (dst netip.AddrPort, ok bool) {
	sc, isSock := c.(syscall.Conn)
	if !isSock {
		return netip.AddrPort{}, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false
	}
	_ = rc.Control(func(fd uintptr) { dst, ok = originalDst(int(fd), v6) })
	return dst, ok
}

func originalDst(fd int, v6 bool) (netip.AddrPort, bool) {
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
