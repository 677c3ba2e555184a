package netio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func forEachMode(t *testing.T, f func(t *testing.T, m mode)) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) { f(t, m) })
	}
}

func TestLargeTransferBothWays(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		const size = 32 << 20
		h := newHarness(t, m, time.Minute)
		toServer, toClient := randomBytes(1, size), randomBytes(2, size)
		p := NewPair(h.down, h.up, h.cfg)
		if got := p.dirs[ToUpstream].canSplice; got != m.splice {
			t.Fatalf("can splice = %v, want %v", got, m.splice)
		}
		if p.dirs[ToUpstream].splice {
			t.Fatal("splicing before any bulk data was seen")
		}
		run := h.start(t.Context(), p)
		cli := exchange(h.client, toServer, 1, nil)
		srv := exchange(h.server, toClient, 1, nil)
		checkBytes(t, "server received", waitExchange(t, "server", srv), toServer)
		checkBytes(t, "client received", waitExchange(t, "client", cli), toClient)

		res := waitResult(t, run)
		if res.End != Closed || res.Err != nil {
			t.Fatalf("Run = %v, %v; want closed, nil", res.End, res.Err)
		}
		if res.Sent != size || res.Received != size {
			t.Errorf("Result Sent/Received = %d/%d, want %d/%d", res.Sent, res.Received, size, size)
		}
		for _, c := range h.cfg.SentCounters {
			if c.Value() != size {
				t.Errorf("sent counter = %d, want %d", c.Value(), size)
			}
		}
		for _, c := range h.cfg.ReceivedCounters {
			if c.Value() != size {
				t.Errorf("received counter = %d, want %d", c.Value(), size)
			}
		}
		// Bulk data must have switched both directions to splice, and splice
		// must not have been silently given up on.
		if m.splice && (!p.dirs[ToUpstream].splice || !p.dirs[ToDownstream].splice) {
			t.Error("pair fell back from splice to copying")
		}
	})
}

// TestHalfCloseDownstream: the client sends a request and half-closes; the server
// answers only after reading end of stream, and the client reads the whole answer.
func TestHalfCloseDownstream(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		h := newHarness(t, m, 0)
		run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
		req, reply := []byte("GET / HTTP/1.0\r\n\r\n"), randomBytes(3, 4<<20)

		srv := make(chan error, 1)
		go func() {
			got, err := io.ReadAll(h.server) // returns at the forwarded end of stream
			if err == nil && !bytes.Equal(got, req) {
				err = errors.New("server got a different request")
			}
			if err == nil {
				_, err = h.server.Write(reply)
			}
			if err == nil {
				err = h.server.CloseWrite()
			}
			srv <- err
		}()
		if _, err := h.client.Write(req); err != nil {
			t.Fatal(err)
		}
		if err := h.client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(h.client)
		if err != nil {
			t.Fatalf("client read: %v", err)
		}
		checkBytes(t, "reply", got, reply)
		if err := <-srv; err != nil {
			t.Fatalf("server: %v", err)
		}
		if res := waitResult(t, run); res.End != Closed {
			t.Fatalf("End = %v (%v), want closed", res.End, res.Err)
		}
	})
}

// TestHalfCloseUpstream: the server speaks first and half-closes; the client
// answers after end of stream, and the server reads the whole answer.
func TestHalfCloseUpstream(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		h := newHarness(t, m, 0)
		run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
		banner, answer := randomBytes(4, 1<<20), randomBytes(5, 4<<20)

		cli := make(chan error, 1)
		go func() {
			got, err := io.ReadAll(h.client)
			if err == nil && !bytes.Equal(got, banner) {
				err = errors.New("client got a different banner")
			}
			if err == nil {
				_, err = h.client.Write(answer)
			}
			if err == nil {
				err = h.client.CloseWrite()
			}
			cli <- err
		}()
		if _, err := h.server.Write(banner); err != nil {
			t.Fatal(err)
		}
		if err := h.server.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(h.server)
		if err != nil {
			t.Fatalf("server read: %v", err)
		}
		checkBytes(t, "answer", got, answer)
		if err := <-cli; err != nil {
			t.Fatalf("client: %v", err)
		}
		if res := waitResult(t, run); res.End != Closed {
			t.Fatalf("End = %v (%v), want closed", res.End, res.Err)
		}
	})
}

// readUntilError reads c until an error and returns it.
func readUntilError(c net.Conn) error {
	buf := make([]byte, 32<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
}

func TestUpstreamResetResetsDownstream(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		h := newHarness(t, m, 0)
		run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
		// Make sure the pair is copying, then reset from the server side.
		if _, err := h.client.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(h.server, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		h.server.SetLinger(0)
		h.server.Close()

		if err := readUntilError(h.client); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read error = %v, want ECONNRESET", err)
		}
		res := waitResult(t, run)
		if res.End != UpstreamReset || !errors.Is(res.Err, syscall.ECONNRESET) {
			t.Fatalf("Run = %v, %v; want upstream reset, ECONNRESET", res.End, res.Err)
		}
	})
}

func TestDownstreamResetResetsUpstream(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		h := newHarness(t, m, 0)
		run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
		if _, err := h.server.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(h.client, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		h.client.SetLinger(0)
		h.client.Close()

		if err := readUntilError(h.server); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("server read error = %v, want ECONNRESET", err)
		}
		res := waitResult(t, run)
		if res.End != DownstreamReset || res.Err == nil {
			t.Fatalf("Run = %v, %v; want downstream reset with an error", res.End, res.Err)
		}
	})
}

// TestResetDuringTransfer resets the client while the server streams to it: the
// pair must notice through the failing write, stop the idle direction, and return.
func TestResetDuringTransfer(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		h := newHarness(t, m, 0)
		run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
		srv := make(chan error, 1)
		go func() {
			chunk := randomBytes(6, 256<<10)
			for {
				if _, err := h.server.Write(chunk); err != nil {
					srv <- err
					return
				}
			}
		}()
		if _, err := io.ReadFull(h.client, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		h.client.SetLinger(0)
		h.client.Close()
		res := waitResult(t, run)
		if res.End != DownstreamReset {
			t.Fatalf("End = %v (%v), want downstream reset", res.End, res.Err)
		}
		select {
		case err := <-srv:
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Errorf("server write error = %v, want ECONNRESET or EPIPE", err)
			}
		case <-time.After(patience):
			t.Fatal("server kept writing to a reset upstream conn")
		}
	})
}

func TestIdleTimeoutClosesBoth(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		const idle = 50 * time.Millisecond
		h := newHarness(t, m, idle)
		start := time.Now()
		run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
		res := waitResult(t, run)
		if res.End != IdleTimeout || res.Err != nil {
			t.Fatalf("Run = %v, %v; want idle timeout, nil", res.End, res.Err)
		}
		// Timers never fire early, so this lower bound is safe; no upper bound
		// beyond patience is asserted.
		if elapsed := time.Since(start); elapsed < idle {
			t.Errorf("closed after %v, before the idle timeout %v", elapsed, idle)
		}
		for who, c := range map[string]*net.TCPConn{"client": h.client, "server": h.server} {
			c.SetReadDeadline(time.Now().Add(patience))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("%s read after idle close = %v, want EOF", who, err)
			}
		}
	})
}

func TestCancelClosesBoth(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		h := newHarness(t, m, 0)
		ctx, cancel := context.WithCancel(t.Context())
		run := h.start(ctx, NewPair(h.down, h.up, h.cfg))
		if _, err := h.client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(h.server, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		cancel()
		res := waitResult(t, run)
		if res.End != Canceled || !errors.Is(res.Err, context.Canceled) {
			t.Fatalf("Run = %v, %v; want canceled, context.Canceled", res.End, res.Err)
		}
		if res.Sent != 1 {
			t.Errorf("Sent = %d, want 1", res.Sent)
		}
		for who, c := range map[string]*net.TCPConn{"client": h.client, "server": h.server} {
			c.SetReadDeadline(time.Now().Add(patience))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("%s read after cancel = %v, want EOF", who, err)
			}
		}
	})
}

// TestPauseResume streams random data both ways through a succession of pairs
// on the same conns, pausing each one mid-transfer and resuming with its
// pending bytes; every byte must arrive exactly once, in order.
func TestPauseResume(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		const size, segments = 24 << 20, 8
		h := newHarness(t, m, time.Minute)
		toServer, toClient := randomBytes(7, size), randomBytes(8, size)
		cliGate, srvGate := make(chan struct{}, segments), make(chan struct{}, segments)
		cli := exchange(h.client, toServer, segments, cliGate)
		srv := exchange(h.server, toClient, segments, srvGate)

		var pending [2][]byte
		var sent, received int64
		pendingSeen := 0
		for i := range segments {
			p := ResumePair(h.down, h.up, h.cfg, pending)
			run := h.start(t.Context(), p)
			moved := h.sent.Value() + h.received.Value()
			cliGate <- struct{}{}
			srvGate <- struct{}{}
			last := i == segments-1
			if !last {
				// Pause once bytes are flowing, i.e. somewhere mid-segment. The
				// peers cannot finish before the next segment is released, so
				// the pair cannot end otherwise.
				waitFor(t, "bytes to move", func() bool { return h.sent.Value()+h.received.Value() > moved })
				p.Pause()
			}
			res := waitResult(t, run)
			sent += res.Sent
			received += res.Received
			if last {
				if res.End != Closed || res.Err != nil {
					t.Fatalf("last pair: Run = %v, %v; want closed", res.End, res.Err)
				}
				break
			}
			if res.End != Paused || res.Err != nil {
				t.Fatalf("pair %d: Run = %v, %v; want paused", i, res.End, res.Err)
			}
			pending = res.Pending
			if len(pending[0])+len(pending[1]) > 0 {
				pendingSeen++
			}
		}
		checkBytes(t, "server received", waitExchange(t, "server", srv), toServer)
		checkBytes(t, "client received", waitExchange(t, "client", cli), toClient)
		if sent != size || received != size || h.sent.Value() != size || h.received.Value() != size {
			t.Errorf("sent %d (counter %d), received %d (counter %d), want %d each",
				sent, h.sent.Value(), received, h.received.Value(), size)
		}
		t.Logf("%d of %d pauses had pending bytes", pendingSeen, segments-1)
	})
}

// TestPauseStalledWrite pauses a pair whose upstream peer does not read, so a
// write is stuck with bytes in hand: Pause must not wait for it, the bytes must
// come back as pending, and a resumed pair must deliver them exactly once.
func TestPauseStalledWrite(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		if m.wrapUp {
			t.Skip("writes through Write (no raw descriptor) are finished, not interrupted, by Pause")
		}
		const size = 16 << 20
		h := newHarness(t, m, 0)
		data := randomBytes(9, size)
		p := NewPair(h.down, h.up, h.cfg)
		run := h.start(t.Context(), p)
		cliDone := make(chan error, 1)
		go func() { _, err := h.client.Write(data); cliDone <- err }()

		// Wait until the sent counter has stopped moving: the pair is blocked
		// writing to the server, which reads nothing.
		prev, still := uint64(0), 0
		waitFor(t, "the upstream write to stall", func() bool {
			v := h.sent.Value()
			if v > 0 && v == prev {
				still++
			} else {
				still = 0
			}
			prev = v
			return still >= 100
		})
		p.Pause()
		res := waitResult(t, run)
		if res.End != Paused || res.Err != nil {
			t.Fatalf("Run = %v, %v; want paused", res.End, res.Err)
		}
		if len(res.Pending[ToUpstream]) == 0 {
			t.Fatal("a pair stalled in a write paused without pending bytes")
		}
		if int64(len(res.Pending[ToUpstream]))+res.Sent > size {
			t.Fatalf("pending %d + sent %d exceeds the %d bytes written", len(res.Pending[ToUpstream]), res.Sent, size)
		}

		run2 := h.start(t.Context(), ResumePair(h.down, h.up, h.cfg, res.Pending))
		got := make([]byte, size)
		if _, err := io.ReadFull(h.server, got); err != nil {
			t.Fatalf("server read: %v", err)
		}
		checkBytes(t, "server received", got, data)
		if err := <-cliDone; err != nil {
			t.Fatalf("client write: %v", err)
		}
		h.client.CloseWrite()
		h.server.CloseWrite()
		if _, err := io.ReadAll(h.client); err != nil {
			t.Fatalf("client read: %v", err)
		}
		res2 := waitResult(t, run2)
		if res2.End != Closed || res.Sent+res2.Sent != size {
			t.Fatalf("resumed Run = %v (%v), sent %d+%d; want closed, %d", res2.End, res2.Err, res.Sent, res2.Sent, size)
		}
	})
}

func TestPauseBeforeRun(t *testing.T) {
	h := newHarness(t, testModes()[0], 0)
	pending := [2][]byte{[]byte("up"), []byte("down")}
	p := ResumePair(h.down, h.up, h.cfg, pending)
	p.Pause()
	res := p.Run(t.Context())
	if res.End != Paused || string(res.Pending[ToUpstream]) != "up" || string(res.Pending[ToDownstream]) != "down" {
		t.Fatalf("Run = %+v; want paused with the pending bytes handed back", res)
	}
	// The conns are untouched: a resumed pair delivers the pending bytes.
	run := h.start(t.Context(), ResumePair(h.down, h.up, h.cfg, res.Pending))
	for _, c := range []struct {
		conn *net.TCPConn
		want string
	}{{h.server, "up"}, {h.client, "down"}} {
		got := make([]byte, len(c.want))
		if _, err := io.ReadFull(c.conn, got); err != nil || string(got) != c.want {
			t.Fatalf("read %q, %v; want %q", got, err, c.want)
		}
	}
	h.client.CloseWrite()
	h.server.CloseWrite()
	if res := waitResult(t, run); res.End != Closed {
		t.Fatalf("End = %v, want closed", res.End)
	}
	p.Pause() // after Run: does nothing
}

func TestRunTwicePanics(t *testing.T) {
	h := newHarness(t, testModes()[0], 0)
	p := NewPair(h.down, h.up, h.cfg)
	p.Pause()
	p.Run(t.Context())
	defer func() {
		if recover() == nil {
			t.Error("second Run did not panic")
		}
	}()
	p.Run(t.Context())
}

func TestEndReasonString(t *testing.T) {
	for r, want := range map[EndReason]string{
		Closed: "closed", DownstreamReset: "downstream reset", UpstreamReset: "upstream reset",
		IdleTimeout: "idle timeout", Canceled: "canceled", Paused: "paused", 0: "EndReason(0)",
	} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", r, got, want)
		}
	}
}

// TestPauseAfterHalfClose pauses a pair whose downstream already half-closed: the
// resumed pair must see that end of stream again and still finish cleanly.
func TestPauseAfterHalfClose(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		h := newHarness(t, m, 0)
		p := NewPair(h.down, h.up, h.cfg)
		run := h.start(t.Context(), p)
		if _, err := h.client.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		h.client.CloseWrite()
		if got, err := io.ReadAll(h.server); err != nil || string(got) != "request" {
			t.Fatalf("server read %q, %v", got, err)
		}
		p.Pause()
		res := waitResult(t, run)
		if res.End != Paused {
			t.Fatalf("End = %v (%v), want paused", res.End, res.Err)
		}
		run = h.start(t.Context(), ResumePair(h.down, h.up, h.cfg, res.Pending))
		if _, err := h.server.Write([]byte("reply")); err != nil {
			t.Fatal(err)
		}
		h.server.CloseWrite()
		if got, err := io.ReadAll(h.client); err != nil || string(got) != "reply" {
			t.Fatalf("client read %q, %v", got, err)
		}
		if res := waitResult(t, run); res.End != Closed || res.Err != nil {
			t.Fatalf("resumed Run = %v, %v; want closed", res.End, res.Err)
		}
	})
}

// TestResetErrorNamesConn checks that a reset's error says which operation
// failed on which connection, the way package net does.
func TestResetErrorNamesConn(t *testing.T) {
	h := newHarness(t, testModes()[0], 0)
	run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
	h.server.SetLinger(0)
	h.server.Close()
	res := waitResult(t, run)
	var op *net.OpError
	if !errors.As(res.Err, &op) || op.Op != "read" || op.Addr.String() != h.up.RemoteAddr().String() {
		t.Fatalf("Err = %v; want a read *net.OpError naming %v", res.Err, h.up.RemoteAddr())
	}
	t.Log(res.Err)
}

// segmentsIn is the number of TCP segments c has received.
func segmentsIn(t *testing.T, c *net.TCPConn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("TCP_INFO: %v", ierr)
	}
	return info.Segs_in
}

// TestLastBytesCarryTheEnd: bytes the upstream sent just before it ended reach
// the client with the end (FIN) in the same segment, not in one each, when the
// pair writes to a raw socket; and a reset right after the last bytes still
// ends the pair as a reset once they are forwarded (the read that finds the
// reset after them must not lose it: the kernel reports it once).
func TestLastBytesCarryTheEnd(t *testing.T) {
	for _, m := range testModes() {
		if m.wrapDown {
			continue // written through Write: no MSG_MORE, nothing to check
		}
		t.Run(m.name+"/fin", func(t *testing.T) {
			h := newHarness(t, m, 0)
			answer := []byte("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
			// Both are in the pair's upstream socket before it first reads.
			if _, err := h.server.Write(answer); err != nil {
				t.Fatal(err)
			}
			if err := h.server.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			before := segmentsIn(t, h.client)
			run := h.start(t.Context(), NewPair(h.down, h.up, h.cfg))
			got, err := io.ReadAll(h.client)
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			checkBytes(t, "answer", got, answer)
			if n := segmentsIn(t, h.client) - before; n != 1 {
				t.Errorf("the client received the answer and the end in %d segments, want 1", n)
			}
			h.client.Close()
			if res := waitResult(t, run); res.End != Closed {
				t.Fatalf("End = %v (%v), want closed", res.End, res.Err)
			}
		})
		t.Run(m.name+"/reset", func(t *testing.T) {
			h := newHarness(t, m, 0)
			if _, err := h.server.Write([]byte("last words")); err != nil {
				t.Fatal(err)
			}
			h.server.SetLinger(0)
			h.server.Close()
			waitFor(t, "the reset to reach the pair's upstream socket", func() bool {
				return segmentsIn(t, h.up.(*net.TCPConn)) >= 3 // SYN-ACK, the bytes, RST
			})
			res := waitResult(t, h.start(t.Context(), NewPair(h.down, h.up, h.cfg)))
			if res.End != UpstreamReset || !errors.Is(res.Err, syscall.ECONNRESET) {
				t.Fatalf("Run = %v, %v; want upstream reset, ECONNRESET", res.End, res.Err)
			}
		})
	}
}

// TestPauseKeepsResetFoundAhead: when the read ahead finds a reset after the
// upstream's last bytes and the write of those bytes is stalled by a client
// that does not read, a pause must not hand the conns over as whole (the
// kernel reports a reset once; a successor would read a clean end): the
// client gets a reset, whether the pair ends at once or after resuming.
func TestPauseKeepsResetFoundAhead(t *testing.T) {
	h := newHarness(t, mode{name: "buffer"}, 0)
	// Fill the path to the client, which reads nothing yet.
	chunk := make([]byte, 64<<10)
	h.down.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		if _, err := h.down.Write(chunk); err != nil {
			break
		}
	}
	p := NewPair(h.down, h.up, h.cfg)
	run := h.start(t.Context(), p)
	if _, err := h.server.Write(randomBytes(3, 60000)); err != nil {
		t.Fatal(err)
	}
	h.server.SetLinger(0)
	h.server.Close()
	rc, err := h.up.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pair to read the server's bytes and the reset", func() bool {
		var inq int
		var info *unix.TCPInfo
		rc.Control(func(fd uintptr) {
			inq, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		})
		return inq == 0 && info != nil && info.State == unix.BPF_TCP_CLOSE
	})
	p.Pause()
	res := waitResult(t, run)
	if res.End == Paused {
		// (The reset came after the read ahead: the resumed pair finds it.
		// Its writes wait for the client to read, so it is waited for after.)
		run = h.start(t.Context(), ResumePair(h.down, h.up, h.cfg, res.Pending))
	}
	if err := readUntilError(h.client); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read error = %v, want ECONNRESET", err)
	}
	if res.End == Paused {
		res = waitResult(t, run)
	}
	if res.End != UpstreamReset {
		t.Fatalf("the pair ended %v (%v), want upstream reset", res.End, res.Err)
	}
}
