// Package nettest has loopback helpers for tests of network code.
package nettest

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// UnansweredAddr returns the address of a loopback listener that never
// accepts and whose accept queue is full, so that the kernel drops the SYN of
// a further connect: the loopback way to make a connect time out. It skips
// the test if the queue does not fill. Cleanup closes the listener and the
// connections that filled it.
func UnansweredAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	fd, addr := boundSocket(t)
	if err := unix.Listen(fd, 0); err != nil { // the smallest queue
		t.Fatal(err)
	}
	for range 64 {
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err != nil {
			return addr // this one was not answered: the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("the listener's accept queue did not fill")
	return addr
}

// RefusedAddr returns a loopback address where a connect is refused (RST):
// a socket bound to it and never listening holds the port until the test
// ends, so that no listener the test starts meanwhile can be given it (a
// port taken from a listener that was closed again can be, and a request
// meant to fail then reaches that listener).
func RefusedAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	_, addr := boundSocket(t)
	return addr
}

// boundSocket is a TCP socket bound to a free loopback port, and its
// address; Cleanup closes it.
func boundSocket(t testing.TB) (int, netip.AddrPort) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
}
