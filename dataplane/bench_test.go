package dataplane

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

const upstreamResponse = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"

// closingUpstream answers each connection's first line with a small
// response and closes, as an HTTP/1.1 server does for "connection: close".
func closingUpstream(b *testing.B) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	resp := []byte(upstreamResponse)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				if _, err := bufio.NewReader(c).ReadSlice('\n'); err == nil {
					_, _ = c.Write(resp)
				}
			})
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// BenchmarkConnPerRequest is the bench's h1close through tcp_proxy: each op
// opens a connection, sends a request, reads the response to EOF and closes.
// "direct" is the same against the upstream itself: the difference between
// the two is what the proxy costs (allocs/op included, as the client and the
// upstream run in the same process).
func BenchmarkConnPerRequest(b *testing.B) {
	up := closingUpstream(b)
	s, _ := newTestServer(b, time.Second)
	if err := s.Apply(&Snapshot{
		Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "up")},
		Clusters:  []*clusterv3.Cluster{staticCluster("up", up)},
	}); err != nil {
		b.Fatal(err)
	}
	req := []byte("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
	resp := upstreamResponse
	buf := make([]byte, 256)
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
	}{{"direct", up}, {"proxied", boundAddr(b, s, "l")}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			raddr := net.TCPAddrFromAddrPort(tc.addr)
			for b.Loop() {
				c, err := net.DialTCP("tcp", nil, raddr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				n := 0
				for {
					m, err := c.Read(buf[n:])
					n += m
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				c.Close()
				if n != len(resp) {
					b.Fatalf("response of %d bytes: %q", n, buf[:n])
				}
			}
		})
	}
}
