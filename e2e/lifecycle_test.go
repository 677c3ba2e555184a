package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// waitRefused dials addr until the connection is refused, for up to timeout.
// While the signal is being handled a connection may still get through (it is
// closed at once) or be reset (the listening socket was closed with it in its
// accept queue).
func waitRefused(t *testing.T, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		switch {
		case err == nil:
			c.Close()
		case errors.Is(err, syscall.ECONNREFUSED):
			return
		case errors.Is(err, syscall.ECONNRESET):
		default:
			t.Fatalf("dial %s after the signal: %v, want connection refused", addr, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections %v after the signal", addr, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGracefulStop: after SIGTERM skiff refuses new connections, lets the open
// one finish, and exits 0 as soon as it has, long before the drain time.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			p := startSkiff(t, simple(up.Addr).yaml(t), "--drain-time", "120s")
			addr := p.Addr(t, "l")
			c := dial(t, addr)
			if err := echoRoundTrip(c, []byte("before the signal")); err != nil {
				t.Fatal(err)
			}

			p.Signal(t, sig)
			waitRefused(t, addr, 10*time.Second)
			// The open connection goes on working while skiff drains.
			for i := range 5 {
				if err := echoRoundTrip(c, fmt.Appendf(nil, "draining %d", i)); err != nil {
					t.Fatalf("round trip %d after %v: %v", i, sig, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			select {
			case <-p.Exited():
				t.Fatalf("skiff exited while a connection was still open and within the drain time")
			default:
			}
			if err := echoAll(c, []byte("last words")); err != nil {
				t.Fatal(err)
			}
			c.Close()
			// The drain time is 120 s; with nothing left open skiff exits now.
			if code := p.Wait(t, 20*time.Second); code != 0 {
				t.Fatalf("skiff exited with status %d after %v and a finished drain, want 0", code, sig)
			}
		})
	}
}

// TestDrainTimeout: a connection that never finishes is closed when the drain
// time is over, and skiff exits 0.
func TestDrainTimeout(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	p := startSkiff(t, simple(up.Addr).yaml(t), "--drain-time", "1s")
	c := dial(t, p.Addr(t, "l"))
	if err := echoRoundTrip(c, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	signaled := time.Now()
	p.Signal(t, syscall.SIGTERM)
	// Within the drain time the connection still works.
	if err := echoRoundTrip(c, []byte("still here")); err != nil {
		t.Fatalf("right after SIGTERM: %v", err)
	}
	code := p.Wait(t, 20*time.Second)
	elapsed := time.Since(signaled)
	if code != 0 {
		t.Errorf("skiff exited with status %d at the end of the drain time, want 0", code)
	}
	if elapsed < 800*time.Millisecond {
		t.Errorf("skiff exited %v after SIGTERM, before the 1s drain time was over, with a connection open", elapsed)
	}
	got, err := expectClosed(t, c, 10*time.Second)
	if len(got) != 0 {
		t.Errorf("read %q after the drain", got)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection ended with %v, want EOF or a reset", err)
	}
}

// TestSecondSignal: a second SIGTERM during the drain ends it at once.
func TestSecondSignal(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	p := startSkiff(t, simple(up.Addr).yaml(t), "--drain-time", "120s")
	c := dial(t, p.Addr(t, "l"))
	if err := echoRoundTrip(c, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	p.Signal(t, syscall.SIGTERM)
	waitRefused(t, p.Addr(t, "l"), 10*time.Second) // the first signal has been handled
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t, 20*time.Second); code != 0 {
		t.Errorf("skiff exited with status %d after a second SIGTERM, want 0", code)
	}
	if _, err := expectClosed(t, c, 10*time.Second); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection ended with %v, want EOF or a reset", err)
	}
}

// TestRuntimeDir: instances with their own --runtime-dir run side by side; an
// instance given a live instance's directory refuses to start.
func TestRuntimeDir(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	cfg := simple(up.Addr).yaml(t)
	a := startSkiff(t, cfg)
	b := startSkiff(t, cfg)
	if a.RuntimeDir == b.RuntimeDir {
		t.Fatal("the harness gave both instances the same runtime dir")
	}
	for i, p := range []*Proxy{a, b, a, b} {
		c := dial(t, p.Addr(t, "l"))
		if err := echoAll(c, fmt.Appendf(nil, "instance %d", i%2)); err != nil {
			t.Fatalf("instance %d: %v", i%2, err)
		}
	}

	// A third instance on a's directory takes over from a (a hot restart): a
	// hands over its sockets and exits 0; the port stays the same.
	aAddr := a.Addr(t, "l")
	c := startSkiff(t, cfg, "--runtime-dir", a.RuntimeDir)
	if code := a.Wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the instance taken over exited %d, want 0", code)
	}
	if got := c.Addr(t, "l"); got != aAddr {
		t.Fatalf("the successor serves %s, want the inherited %s", got, aAddr)
	}
	if err := echoAll(dial(t, aAddr), []byte("successor")); err != nil {
		t.Fatal(err)
	}
	// The others are untouched.
	if err := echoAll(dial(t, b.Addr(t, "l")), []byte("b still serving")); err != nil {
		t.Fatal(err)
	}

	// An owner that crashed leaves its lock released and a stale reconfig
	// socket: the next instance starts afresh.
	c.Signal(t, syscall.SIGKILL)
	c.Wait(t, 10*time.Second)
	d := startSkiff(t, cfg, "--runtime-dir", a.RuntimeDir)
	if err := echoAll(dial(t, d.Addr(t, "l")), []byte("after a crash")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(a.RuntimeDir); err != nil {
		t.Error(err)
	} else if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir %s has mode %v, want a directory of mode 0700", a.RuntimeDir, fi.Mode())
	}
}

// boundLines counts the "listener bound" lines among logs.
func boundLines(logs []LogLine) int {
	n := 0
	for _, l := range logs {
		if l.Msg() == "listener bound" {
			n++
		}
	}
	return n
}
