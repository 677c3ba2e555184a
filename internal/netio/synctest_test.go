package netio

import (
	"context"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/skiffproxy/skiff/internal/bufpool"
)

// These tests run the pair over net.Pipe conns inside a synctest bubble, so the
// idle timer runs on the bubble's fake clock and the timing can be asserted
// exactly. net.Pipe has no syscall.Conn and no CloseWrite: the pair copies
// through buffers and ends at the first end of stream.

func pipePair(t *testing.T, cfg *Config) (client, server net.Conn, p *Pair, done <-chan Result) {
	client, down := net.Pipe()
	up, server := net.Pipe()
	p = NewPair(down, up, cfg)
	ch := make(chan Result, 1)
	go func() { ch <- p.Run(t.Context()) }()
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server, p, ch
}

func TestIdleTimeoutSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Minute
		client, server, _, done := pipePair(t, &Config{Buffers: bufpool.New(), IdleTimeout: idle})
		go io.Copy(io.Discard, client)
		go io.Copy(io.Discard, server)
		notDone := func(when string) {
			t.Helper()
			synctest.Wait()
			select {
			case r := <-done:
				t.Fatalf("%s: pair ended (%v)", when, r.End)
			default:
			}
		}
		// A byte in either direction just before each deadline keeps the pair
		// alive, well past several idle periods.
		for i := range 6 {
			time.Sleep(idle - time.Second)
			w := client
			if i%2 == 1 {
				w = server
			}
			if _, err := w.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			notDone("after activity")
		}
		time.Sleep(idle - time.Nanosecond)
		notDone("just before the idle timeout")
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		select {
		case r := <-done:
			if r.End != IdleTimeout || r.Sent != 3 || r.Received != 3 {
				t.Fatalf("Run = %v, sent %d, received %d; want idle timeout, 3, 3", r.End, r.Sent, r.Received)
			}
		default:
			t.Fatal("pair still open after the idle timeout")
		}
	})
}

// TestPauseSynctest pauses a pair whose peers are idle, and checks that the
// conns are left open and usable.
func TestPauseSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := &Config{Buffers: bufpool.New(), IdleTimeout: time.Minute}
		client, down := net.Pipe()
		up, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		p := NewPair(down, up, cfg)
		done := make(chan Result, 1)
		go func() { done <- p.Run(context.Background()) }()
		time.Sleep(time.Second)
		p.Pause()
		synctest.Wait()
		r := <-done
		if r.End != Paused || len(r.Pending[0])+len(r.Pending[1]) != 0 {
			t.Fatalf("Run = %+v, want paused with nothing pending", r)
		}
		// The idle timer is stopped with the pair: nothing closes the conns later.
		time.Sleep(2 * time.Minute)
		p2 := ResumePair(down, up, cfg, r.Pending)
		go func() { done <- p2.Run(context.Background()) }()
		go func() { client.Write([]byte("hi")); client.Close() }()
		got, err := io.ReadAll(server)
		if err != nil || string(got) != "hi" {
			t.Fatalf("server read %q, %v; want \"hi\"", got, err)
		}
		if r := <-done; r.End != Closed || r.Sent != 2 {
			t.Fatalf("resumed Run = %v (%v), sent %d; want closed, 2", r.End, r.Err, r.Sent)
		}
	})
}
