package nettest

import (
	"net"
	"sync"
	"testing"
)

// Serve is a loopback TCP server that runs serve on each connection it
// accepts, on a goroutine of its own; serve owns the connection (it closes
// it). It returns the server's address. Cleanup closes the listener and
// waits for every serve to return.
func Serve(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	return ServeAt(t, "127.0.0.1:0", serve)
}

// ServeAt is Serve listening on addr.
func ServeAt(t testing.TB, addr string, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serve(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}
