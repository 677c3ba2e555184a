package hcm_test

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// fakeUpstream answers each request head it reads on conn with resp; it
// allocates nothing per request.
func fakeUpstream(conn net.Conn, resp []byte) {
	buf := make([]byte, 8192)
	n := 0
	for {
		i := bytes.Index(buf[:n], []byte("\r\n\r\n"))
		if i < 0 {
			m, err := conn.Read(buf[n:])
			if err != nil {
				return
			}
			n += m
			continue
		}
		n = copy(buf, buf[i+4:n])
		if _, err := conn.Write(resp); err != nil {
			return
		}
	}
}

// rawUpstream serves fakeUpstream on a loopback listener.
func rawUpstream(tb testing.TB, resp []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go fakeUpstream(c, resp)
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

const benchRequest = "GET /index.html HTTP/1.1\r\nhost: example.com\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"

var upstreamResp = append([]byte("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 64\r\n\r\n"), bytes.Repeat([]byte("x"), 64)...)

// proxyRoundTrip returns a function that sends one keep-alive GET through
// the connection manager and the router to a raw upstream and reads the
// whole response, on one client connection.
func proxyRoundTrip(tb testing.TB) func() {
	up := rawUpstream(tb, upstreamResp)
	e := newEnv(tb, hcmYAML("backend", ""), cluster(tb, "backend", false, up))
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	req := []byte(benchRequest)
	buf := make([]byte, 4096)
	return func() {
		if _, err := c.Write(req); err != nil {
			tb.Fatal(err)
		}
		n := 0
		for {
			m, err := c.Read(buf[n:])
			n += m
			if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 && n-(i+4) >= 64 {
				break
			}
			if err != nil {
				tb.Fatal(err)
			}
		}
		if !bytes.HasPrefix(buf, []byte("HTTP/1.1 200 OK\r\n")) {
			tb.Fatalf("response %q", buf[:n])
		}
	}
}

// BenchmarkProxyH1KeepAlive: a small keep-alive GET through skiff's HTTP
// connection manager and router (HTTP/1.1 on both sides, over loopback, to
// an upstream answering 200 with 64 bytes), everything in process.
func BenchmarkProxyH1KeepAlive(b *testing.B) {
	rt := proxyRoundTrip(b)
	for range 64 {
		rt()
	}
	b.ReportAllocs()
	for b.Loop() {
		rt()
	}
}

var _ = io.EOF
