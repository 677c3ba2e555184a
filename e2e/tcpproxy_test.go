package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestConcurrentEcho opens many connections at once through one listener and
// checks every echoed byte.
func TestConcurrentEcho(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	p := startSkiff(t, simple(up.Addr).yaml(t))
	addr := p.Addr(t, "l")

	const conns = 200
	// All connections are established before any sends, so they are all open at once.
	var dialed, done sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, conns)
	for i := range conns {
		dialed.Add(1)
		done.Go(func() {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			dialed.Done()
			if err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioTimeout))
			<-start
			payload := randomBytes(uint64(i), 32<<10+i*97) // 32 KiB to 51 KiB
			if err := echoAll(c.(*net.TCPConn), payload); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
			}
		})
	}
	dialed.Wait()
	close(start)
	done.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 10 {
			t.Error(err)
		}
	}
	if n > 10 {
		t.Errorf("... %d connections failed in all", n)
	}
	if got := up.accepted.Load(); n == 0 && got != conns {
		t.Errorf("upstream accepted %d connections, want %d (one per downstream connection)", got, conns)
	}
}

// TestLargeTransfer moves 64 MiB each way at the same time, over IPv4 and over
// an IPv6 listener, and compares hashes.
func TestLargeTransfer(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	v6 := haveIPv6Loopback()
	up4 := startDuplexUpstream(t, "127.0.0.1")
	b := bootstrap{
		Listeners: []listenerCfg{{Name: "v4", Cluster: "up4"}},
		Clusters:  []clusterCfg{{Name: "up4", Endpoints: []string{up4.Addr}}},
	}
	var up6 *duplexUpstream
	if v6 {
		up6 = startDuplexUpstream(t, "::1")
		b.Listeners = append(b.Listeners, listenerCfg{Name: "v6", Address: "[::1]:0", Additional: []string{"127.0.0.1:0"}, Cluster: "up6"})
		b.Clusters = append(b.Clusters, clusterCfg{Name: "up6", Endpoints: []string{up6.Addr}})
	}
	p := startSkiff(t, b.yaml(t))

	t.Run("ipv4", func(t *testing.T) {
		t.Parallel()
		duplexTransfer(t, p.Addr(t, "v4"), up4, 1, size, size)
	})
	t.Run("ipv6", func(t *testing.T) {
		if !v6 {
			t.Skip("no IPv6 loopback (::1) on this machine")
		}
		t.Parallel()
		addrs := p.Addrs(t, "v6")
		if len(addrs) != 2 || !strings.HasPrefix(addrs[0], "[::1]:") || !strings.HasPrefix(addrs[1], "127.0.0.1:") {
			t.Fatalf("listener v6 bound to %v, want [::1]:port and its additional address 127.0.0.1:port", addrs)
		}
		duplexTransfer(t, addrs[0], up6, 2, size, size)
		// The additional address serves the same filter chain.
		duplexTransfer(t, addrs[1], up6, 3, 1<<20, 1<<20)
	})
}

// duplexTransfer sends up bytes to a duplexUpstream through addr while it sends
// down bytes back, and checks both streams' hashes and lengths.
func duplexTransfer(t *testing.T, addr string, u *duplexUpstream, seed uint32, up, down int) {
	t.Helper()
	c := dial(t, addr)
	clientSeed := uint64(seed) | 1<<40 // the client's stream differs from the upstream's

	sentc := make(chan *hashWriter, 1)
	errc := make(chan error, 1)
	go func() {
		var hdr [8]byte
		binary.BigEndian.PutUint32(hdr[:4], seed)
		binary.BigEndian.PutUint32(hdr[4:], uint32(down))
		sent := newHashWriter()
		_, err := c.Write(hdr[:])
		if err == nil {
			_, err = io.Copy(io.MultiWriter(c, sent), io.LimitReader(randomStream(clientSeed), int64(up)))
		}
		if err == nil {
			err = c.CloseWrite()
		}
		sentc <- sent
		errc <- err
	}()
	got := newHashWriter()
	_, rerr := io.Copy(got, c)
	sent := <-sentc
	if err := <-errc; err != nil {
		t.Fatalf("sending to %s after %d bytes: %v", addr, sent.n, err)
	}
	if rerr != nil {
		t.Fatalf("receiving from %s after %d bytes: %v", addr, got.n, rerr)
	}
	want := newHashWriter()
	io.Copy(want, io.LimitReader(randomStream(uint64(seed)), int64(down)))
	if got.n != want.n || got.sum() != want.sum() {
		t.Errorf("downstream received %d bytes (sha256 %s), upstream sent %d (sha256 %s)", got.n, got.sum(), want.n, want.sum())
	}

	// The upstream records what it read once it has seen EOF, which may be a
	// moment after the client saw the upstream's EOF.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, ok := u.result(seed)
		if ok {
			if r.n != sent.n || hexSum(r.sum) != sent.sum() {
				t.Errorf("upstream received %d bytes (sha256 %s), downstream sent %d (sha256 %s)", r.n, hexSum(r.sum), sent.n, sent.sum())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream recorded no result for the connection with seed %d", seed)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHalfClose checks that a FIN in one direction leaves the other open.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	sha := startUpstream(t, "127.0.0.1", shaHandler)

	// The upstream half-closes first: it sends a greeting and its FIN, then reads
	// what the client sends until the client's FIN, and reports it here.
	greeting := randomBytes(7, 256<<10)
	reports := make(chan string, 1)
	first := startUpstream(t, "127.0.0.1", func(c *net.TCPConn) {
		if _, err := c.Write(greeting); err != nil {
			reports <- "write: " + err.Error()
			return
		}
		if err := c.CloseWrite(); err != nil {
			reports <- "close write: " + err.Error()
			return
		}
		h := newHashWriter()
		if _, err := io.Copy(h, c); err != nil {
			reports <- "read: " + err.Error()
			return
		}
		reports <- fmt.Sprintf("%s %d\n", h.sum(), h.n)
	})
	b := bootstrap{
		Listeners: []listenerCfg{{Name: "sha", Cluster: "sha"}, {Name: "first", Cluster: "first"}},
		Clusters: []clusterCfg{
			{Name: "sha", Endpoints: []string{sha.Addr}},
			{Name: "first", Endpoints: []string{first.Addr}},
		},
	}
	p := startSkiff(t, b.yaml(t))

	t.Run("downstream_first", func(t *testing.T) {
		t.Parallel()
		for _, size := range []int{0, 1, 1 << 20} {
			c := dial(t, p.Addr(t, "sha"))
			req := randomBytes(uint64(size), size)
			if _, err := c.Write(req); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("close write: %v", err)
			}
			reply, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("%d-byte request: reading the reply after %q: %v", size, reply, err)
			}
			if want := shaReply(req); string(reply) != want {
				t.Errorf("%d-byte request: reply %q, want %q then EOF", size, reply, want)
			}
			c.Close()
		}
	})

	t.Run("upstream_first", func(t *testing.T) {
		t.Parallel()
		c := dial(t, p.Addr(t, "first"))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading the greeting after %d bytes: %v", len(got), err)
		}
		if !bytes.Equal(got, greeting) {
			t.Fatalf("greeting: got %d bytes, want %d: %s", len(got), len(greeting), firstDiff(got, greeting))
		}
		// The upstream is done sending; the client is not.
		body := randomBytes(8, 1<<20)
		for i := 0; i < len(body); i += 64 << 10 {
			if _, err := c.Write(body[i : i+64<<10]); err != nil {
				t.Fatalf("writing after the upstream's FIN, at byte %d: %v", i, err)
			}
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-reports:
			if want := shaReply(body); r != want {
				t.Errorf("upstream received %q, want %q", r, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("upstream did not see the client's data and FIN")
		}
	})
}

// TestUpstreamRefused checks max_connect_attempts against refusing endpoints.
func TestUpstreamRefused(t *testing.T) {
	t.Parallel()
	echo := startUpstream(t, "127.0.0.1", echoHandler)
	refusing1, refusing2 := refusingAddr(t), refusingAddr(t)
	b := bootstrap{
		Listeners: []listenerCfg{
			{Name: "retry", Cluster: "mixed", MaxConnectAttempts: 3},
			{Name: "once", Cluster: "mixed"},
			{Name: "dead", Cluster: "dead", MaxConnectAttempts: 3},
		},
		Clusters: []clusterCfg{
			{Name: "mixed", Endpoints: []string{refusing1, echo.Addr}},
			{Name: "dead", Endpoints: []string{refusing1, refusing2}},
		},
	}
	p := startSkiff(t, b.yaml(t))

	t.Run("retry", func(t *testing.T) {
		// Not parallel: "once" shares the cluster, and the round robin's position
		// would otherwise depend on the other test's connections.
		for i := range 20 {
			c := dial(t, p.Addr(t, "retry"))
			if err := echoAll(c, fmt.Appendf(nil, "connection %d", i)); err != nil {
				t.Fatalf("connection %d with max_connect_attempts 3 and one refusing endpoint of two: %v", i, err)
			}
			c.Close()
		}
	})
	t.Run("once", func(t *testing.T) {
		// Envoy's default max_connect_attempts is 1: a refused connect is not retried.
		ok, failed := 0, 0
		for i := range 10 {
			c := dial(t, p.Addr(t, "once"))
			if err := echoAll(c, fmt.Appendf(nil, "connection %d", i)); err != nil {
				failed++
			} else {
				ok++
			}
			c.Close()
		}
		if ok == 0 || failed == 0 {
			t.Errorf("without max_connect_attempts, %d of 10 connections succeeded and %d failed; want some of each (round robin over a refusing and a working endpoint, no retry)", ok, failed)
		}
	})
	t.Run("all_refusing", func(t *testing.T) {
		c := dial(t, p.Addr(t, "dead"))
		got, err := expectClosed(t, c, 10*time.Second)
		if len(got) != 0 {
			t.Errorf("read %q from a connection whose upstreams all refuse", got)
		}
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("connection ended with %v, want EOF or a reset", err)
		}
		p.WaitLog(t, 10*time.Second, "a log line about the failed upstream connect", func(l LogLine) bool {
			lvl := l.Level()
			return (lvl == "WARN" || lvl == "ERROR") && strings.Contains(strings.ToLower(l.Raw), "connect") &&
				(strings.Contains(l.Raw, refusing1) || strings.Contains(l.Raw, refusing2))
		})
	})
}

// TestUpstreamClose checks that bytes sent before an upstream's close all arrive,
// followed by EOF.
func TestUpstreamClose(t *testing.T) {
	t.Parallel()
	const size = 3<<20 + 17
	up := startUpstream(t, "127.0.0.1", sendHandler(11, size))
	p := startSkiff(t, simple(up.Addr).yaml(t))
	for range 3 {
		c := dial(t, p.Addr(t, "l"))
		got, err := expectClosed(t, c, 20*time.Second)
		if err != nil {
			t.Fatalf("after %d bytes: %v, want EOF after %d", len(got), err, size)
		}
		if want := randomBytes(11, size); !bytes.Equal(got, want) {
			t.Fatalf("got %d bytes, want the %d the upstream sent: %s", len(got), size, firstDiff(got, want))
		}
		c.Close()
	}
}

// TestUpstreamReset checks that an upstream's RST reaches the client as a reset.
func TestUpstreamReset(t *testing.T) {
	t.Parallel()
	const small, large = 64 << 10, 4 << 20
	acked := startUpstream(t, "127.0.0.1", resetHandler(21, small, true))
	abrupt := startUpstream(t, "127.0.0.1", resetHandler(22, large, false))
	b := bootstrap{
		Listeners: []listenerCfg{{Name: "acked", Cluster: "acked"}, {Name: "abrupt", Cluster: "abrupt"}},
		Clusters: []clusterCfg{
			{Name: "acked", Endpoints: []string{acked.Addr}},
			{Name: "abrupt", Endpoints: []string{abrupt.Addr}},
		},
	}
	p := startSkiff(t, b.yaml(t))

	t.Run("after_the_bytes", func(t *testing.T) {
		t.Parallel()
		// The upstream resets only once the client has all its bytes, so the
		// client must see every byte and then the reset.
		c := dial(t, p.Addr(t, "acked"))
		got := make([]byte, small)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("reading the upstream's bytes: %v", err)
		}
		if want := randomBytes(21, small); !bytes.Equal(got, want) {
			t.Fatalf("bytes before the reset differ: %s", firstDiff(got, want))
		}
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatalf("writing the ack: %v", err)
		}
		rest, err := expectClosed(t, c, 10*time.Second)
		if len(rest) != 0 || !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after the upstream's reset: read %d more bytes and %v, want ECONNRESET (skiff propagates resets)", len(rest), err)
		}
	})
	t.Run("mid_stream", func(t *testing.T) {
		t.Parallel()
		// The upstream resets right after writing: whatever arrives is a prefix of
		// what it sent, and then the connection is reset.
		c := dial(t, p.Addr(t, "abrupt"))
		got, err := expectClosed(t, c, 20*time.Second)
		if want := randomBytes(22, large); len(got) > large || !bytes.Equal(got, want[:len(got)]) {
			t.Errorf("got %d bytes that are not a prefix of what the upstream sent: %s", len(got), firstDiff(got, want))
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after %d bytes the connection ended with %v, want ECONNRESET (skiff propagates resets)", len(got), err)
		}
	})
}

// TestIdleTimeout checks tcp_proxy's idle_timeout.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	b := simple(up.Addr)
	b.Listeners[0].IdleTimeout = "1s"
	p := startSkiff(t, b.yaml(t))

	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		c := dial(t, p.Addr(t, "l"))
		if err := echoRoundTrip(c, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		got, err := expectClosed(t, c, 10*time.Second)
		if len(got) != 0 {
			t.Errorf("read %q from an idle connection", got)
		}
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("idle connection ended with %v, want EOF or a reset", err)
		}
	})
	t.Run("busy", func(t *testing.T) {
		t.Parallel()
		c := dial(t, p.Addr(t, "l"))
		// Traffic every 300 ms for 2.7 s: never idle for the 1 s timeout.
		for i := range 9 {
			time.Sleep(300 * time.Millisecond)
			if err := echoRoundTrip(c, fmt.Appendf(nil, "ping %d", i)); err != nil {
				t.Fatalf("round trip %d (after about %v): %v", i, time.Duration(i+1)*300*time.Millisecond, err)
			}
		}
		if err := echoAll(c, []byte("bye")); err != nil {
			t.Fatal(err)
		}
	})
}
