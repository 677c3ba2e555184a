// Package peek looks at the first bytes a client sent on a TCP connection
// without consuming them, as Envoy's listener filters do (recv with MSG_PEEK):
// the bytes stay in the socket's receive queue for whatever reads the
// connection next, so the connection can go on as the plain TCP socket a
// terminal filter (tcp_proxy's splice) wants.
package peek

import (
	"errors"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/skiffproxy/skiff/internal/netio"
)

// Decision is what a Peek callback says about the bytes seen so far.
type Decision int

const (
	// More asks for more bytes: Peek waits for them.
	More Decision = iota
	// Done ends Peek.
	Done
)

// ErrFull is returned by Peek when max bytes are queued and the callback still
// wants more.
var ErrFull = errors.New("peek: buffer limit reached")

// Socket returns c as a conn Peek can look into if it is a plain TCP socket
// (as accepted: no bytes read from it and kept aside).
func Socket(c net.Conn) (syscall.Conn, bool) {
	if !netio.IsSocket(c) {
		return nil, false
	}
	return c.(syscall.Conn), true
}

// Peek calls decide with the bytes at the head of c's receive queue (at most
// max of them; initial sizes the first buffer), at once if there are some and
// again each time more arrive, until it returns Done. It waits under c's read
// deadline (an error satisfying errors.Is(err, os.ErrDeadlineExceeded) when it
// passes), returns io.EOF if the peer ends the stream before decide is done
// and ErrFull if max bytes do not satisfy it. Nothing is consumed. The slice
// passed to decide is only valid during the call.
func Peek(c syscall.Conn, initial, max int, decide func(b []byte) Decision) error {
	if initial <= 0 || initial > max {
		initial = max
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, initial)
	seen := 0
	var result error
	// One RawConn.Read for the whole loop: returning false waits for the poller's
	// next readiness event, which comes when bytes arrive after the peek that
	// saw too few (an edge between two Read calls could be lost).
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false
			case err != nil:
				result = err
				return true
			case n == 0:
				result = io.EOF
				return true
			case n == seen:
				// Nothing new: a wake-up for the peer's FIN (the queued
				// bytes hide it from recv) or a spurious one.
				if peerClosed(fd) {
					result = io.EOF
					return true
				}
				return false
			}
			seen = n
			if decide(buf[:n]) == Done {
				return true
			}
			if n < len(buf) {
				if peerClosed(fd) { // its wake-up may be gone already
					result = io.EOF
					return true
				}
				return false
			}
			if len(buf) >= max {
				result = ErrFull
				return true
			}
			buf = make([]byte, min(2*len(buf), max)) // and peek again: more may be queued
		}
	})
	if err != nil {
		return err
	}
	return result
}

// peerClosed reports whether the peer of the socket fd has shut down its
// sending side.
func peerClosed(fd uintptr) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(p, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
	}
}
