package netio

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiffproxy/skiff/internal/nettest"
)

// listenLoopback listens on ip, port 0; cleanup closes the listener.
func listenLoopback(t testing.TB, ip string) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptorOf returns an Acceptor of ln; cleanup closes it.
func acceptorOf(t testing.TB, ln *net.TCPListener) *Acceptor {
	t.Helper()
	acc, err := NewAcceptor(ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { acc.Close() })
	return acc
}

// accept accepts a Conn; cleanup closes it.
func accept(t testing.TB, acc *Acceptor) *Conn {
	t.Helper()
	c, err := acc.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// acceptTCP accepts a *net.TCPConn; cleanup closes it.
func acceptTCP(t testing.TB, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sockopt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil || serr != nil {
		t.Fatalf("getsockopt: %v %v", err, serr)
	}
	return v
}

// An accepted and a dialed Conn: the addresses are each other's, TCP_NODELAY
// is on, keep-alive off (Envoy's default) or as asked, bytes and half-closes
// go through, and File hands out the same socket.
func TestDialAccept(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			if l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(ip)}); err != nil {
				t.Skipf("no %s: %v", ip, err)
			} else {
				l.Close()
			}
			ln := listenLoopback(t, ip)
			acc := acceptorOf(t, ln)
			ka := net.KeepAliveConfig{Enable: true, Idle: 90 * time.Second, Interval: 1500 * time.Millisecond, Count: 4}
			d, err := Dial(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort(), &DialOptions{Timeout: 5 * time.Second, KeepAlive: ka})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			a := accept(t, acc)

			if d.LocalAddr().String() != a.RemoteAddr().String() || d.RemoteAddr().String() != a.LocalAddr().String() {
				t.Errorf("dialed %v -> %v, accepted %v <- %v: want each other's", d.LocalAddr(), d.RemoteAddr(), a.LocalAddr(), a.RemoteAddr())
			}
			for _, c := range []*Conn{d, a} {
				if got, want := RemoteAddrPort(c), AddrPort(c.RemoteAddr()); got != want || !got.IsValid() {
					t.Errorf("RemoteAddrPort %v, RemoteAddr %v", got, want)
				}
			}
			if a.LocalAddr().String() != ln.Addr().String() {
				t.Errorf("accepted local %v, want the listener's %v", a.LocalAddr(), ln.Addr())
			}
			for name, c := range map[string]*Conn{"dialed": d, "accepted": a} {
				if sockopt(t, c, unix.IPPROTO_TCP, unix.TCP_NODELAY) == 0 {
					t.Errorf("%s: TCP_NODELAY off", name)
				}
			}
			if sockopt(t, a, unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0 {
				t.Error("accepted: SO_KEEPALIVE on; Envoy leaves it off")
			}
			if sockopt(t, d, unix.SOL_SOCKET, unix.SO_KEEPALIVE) == 0 ||
				sockopt(t, d, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) != 90 ||
				sockopt(t, d, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL) != 2 || // rounded up, as net does
				sockopt(t, d, unix.IPPROTO_TCP, unix.TCP_KEEPCNT) != 4 {
				t.Error("dialed: keep-alive not as configured")
			}

			if _, err := d.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			d.CloseWrite()
			got, err := io.ReadAll(a)
			if string(got) != "ping" || err != nil {
				t.Fatalf("accepted read %q, %v; want ping and EOF", got, err)
			}

			f, err := a.File()
			if err != nil {
				t.Fatal(err)
			}
			fc, err := net.FileConn(f) // as a hot-restart successor takes it
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			defer fc.Close()
			if fc.LocalAddr().String() != a.LocalAddr().String() {
				t.Errorf("File's socket is at %v, want %v", fc.LocalAddr(), a.LocalAddr())
			}
			if _, err := fc.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			a.Close()
			fc.Close()
			got, err = io.ReadAll(d)
			if string(got) != "pong" || err != nil {
				t.Fatalf("dialed read %q, %v; want pong and EOF", got, err)
			}
			local := d.LocalAddr().String() // asked while open: kept after Close
			d.Close()
			if d.LocalAddr() == nil || d.LocalAddr().String() != local {
				t.Errorf("dialed local after Close %v, want %s as before", d.LocalAddr(), local)
			}
		})
	}
}

// A wildcard listener's connections learn their local address from the kernel.
func TestAcceptWildcard(t *testing.T) {
	ln := listenLoopback(t, "0.0.0.0")
	acc := acceptorOf(t, ln)
	port := ln.Addr().(*net.TCPAddr).Port
	d, err := net.DialTCP("tcp", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a := accept(t, acc)
	if a.LocalAddr().String() != d.RemoteAddr().String() {
		t.Errorf("accepted local %v, want %v", a.LocalAddr(), d.RemoteAddr())
	}
}

// Closing the Acceptor ends a waiting Accept as closing a net.Listener does.
func TestAcceptorClose(t *testing.T) {
	acc := acceptorOf(t, listenLoopback(t, "127.0.0.1"))
	errc := make(chan error, 1)
	go func() {
		_, err := acc.Accept()
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	acc.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// Dial fails as net.Dialer does: a refused connection, a timeout, a canceled
// context.
func TestDialErrors(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()

	t.Run("refused", func(t *testing.T) {
		_, got := Dial(context.Background(), closed, &DialOptions{Timeout: 5 * time.Second})
		_, want := (&net.Dialer{}).DialContext(context.Background(), "tcp", closed.String())
		if !errors.Is(got, syscall.ECONNREFUSED) || !errors.Is(want, syscall.ECONNREFUSED) {
			t.Fatalf("Dial: %v, net: %v; want both ECONNREFUSED", got, want)
		}
		if got.Error() != want.Error() {
			t.Errorf("Dial: %q, net: %q", got, want)
		}
	})

	full := nettest.UnansweredAddr(t)
	t.Run("timeout", func(t *testing.T) {
		_, err := Dial(context.Background(), full, &DialOptions{Timeout: 100 * time.Millisecond})
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Dial: %v, want a timeout", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "dial" {
			t.Errorf("Dial: %#v, want a dial *net.OpError", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := Dial(ctx, full, &DialOptions{Timeout: 10 * time.Second})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Dial: %v, want context.Canceled", err)
		}
	})
	// The context's deadline before the timeout: its error, never taken
	// for the connect timeout, and the context is done by then (the
	// poller's timer for the same instant may fire first).
	t.Run("context deadline", func(t *testing.T) {
		for range 10 {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			_, err := Dial(ctx, full, &DialOptions{Timeout: 10 * time.Second})
			ctxErr := ctx.Err()
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) || ctxErr == nil {
				t.Fatalf("Dial: %v (context: %v), want context.DeadlineExceeded with the context done", err, ctxErr)
			}
		}
	})
}

// Deadlines on a Conn from Accept: clearing them before any was set does
// nothing (netio.Pair clears them on every connection it starts), clearing
// them after one was set undoes it, and on a closed Conn both say so as
// net.Conn's do.
func TestConnDeadlines(t *testing.T) {
	ln := listenLoopback(t, "127.0.0.1")
	acc := acceptorOf(t, ln)
	dial := func() *net.TCPConn {
		client, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		return client
	}
	client := dial()
	c := accept(t, acc)
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("clearing unset deadlines: %v", err)
	}
	if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Fatalf("Read after clearing the deadline: %d, %v", n, err)
	}
	dial()
	c2 := accept(t, acc) // never had a deadline
	for _, c := range []*Conn{c, c2} {
		c.Close()
		for _, set := range []func(time.Time) error{c.SetDeadline, c.SetReadDeadline, c.SetWriteDeadline} {
			if err := set(time.Time{}); !errors.Is(err, net.ErrClosed) {
				t.Errorf("clearing a closed Conn's deadline: %v, want net.ErrClosed", err)
			}
		}
	}
}
