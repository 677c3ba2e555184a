package h1

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

var body64 = bytes.Repeat([]byte("x"), 64)

const benchRequest = "GET /index.html HTTP/1.1\r\nhost: example.com\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"

// okHandler answers every request with 200 and a 64-byte body, reading the
// request body first. Its response Header is reused, as a connection
// manager's would be.
type okHandler struct {
	resp http.Header
	buf  []byte
}

func newOKHandler() *okHandler {
	return &okHandler{buf: make([]byte, 512)}
}

func (h *okHandler) ServeStream(s http.ServerStream) {
	for {
		if _, err := s.Read(h.buf); err != nil {
			break
		}
	}
	h.resp.Reset()
	h.resp.Add(http.Status, "200")
	h.resp.Add("content-type", "text/plain")
	h.resp.Add("content-length", "64")
	if s.WriteHeader(&h.resp, false) != nil {
		return
	}
	s.Write(body64)
	s.End()
}

// serverRoundTrip runs a ServerConn with okHandler on a loopback connection
// and returns a function that sends one keep-alive GET and reads the whole
// response, as a raw client that allocates nothing.
func serverRoundTrip(tb testing.TB) func() {
	client, conn := tcpPair(tb)
	c := NewServerConn(testOptions())
	done := make(chan error, 1)
	go func() { done <- c.Serve(context.Background(), conn, newOKHandler()) }()
	tb.Cleanup(func() { client.Close(); <-done })
	req := []byte(benchRequest)
	const want = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 64\r\n\r\n"
	resp := make([]byte, len(want)+64)
	return func() {
		if _, err := client.Write(req); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(client, resp); err != nil {
			tb.Fatal(err)
		}
		if string(resp[:len(want)]) != want {
			tb.Fatalf("response %q", resp)
		}
	}
}

// BenchmarkServer: a keep-alive GET through the server codec, answered 200
// with a 64-byte body, over loopback TCP.
func BenchmarkServer(b *testing.B) {
	rt := serverRoundTrip(b)
	for range 16 {
		rt()
	}
	b.ReportAllocs()
	for b.Loop() {
		rt()
	}
}

// fakeUpstream answers each request head it reads on conn with resp; it
// allocates nothing per request.
func fakeUpstream(conn net.Conn, resp []byte) {
	buf := make([]byte, 4096)
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

// clientRoundTrip runs a ClientConn against a fake upstream on a loopback
// connection and returns a function that sends one GET through it and reads
// the response (200, 64-byte body).
func clientRoundTrip(tb testing.TB) func() {
	conn, up := tcpPair(tb)
	resp := append([]byte("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 64\r\n\r\n"), body64...)
	go fakeUpstream(up, resp)
	cc := NewClientConn(conn, testOptions())
	tb.Cleanup(func() { cc.Close(); up.Close() })
	return clientGet(tb, cc)
}

func clientGet(tb testing.TB, cc *ClientConn) func() {
	var req http.Header
	req.Add(http.Method, "GET")
	req.Add(http.Scheme, "http")
	req.Add(http.Authority, "example.com")
	req.Add(http.Path, "/index.html")
	req.Add("user-agent", "bench")
	req.Add("accept", "*/*")
	buf := make([]byte, 512)
	ctx := context.Background()
	return func() {
		s, err := cc.NewStream(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		if err := s.WriteHeader(&req, true); err != nil {
			tb.Fatal(err)
		}
		h, err := s.ReadHeader()
		if err != nil {
			tb.Fatal(err)
		}
		if h.Value(http.Status) != "200" {
			tb.Fatalf("status %q", h.Value(http.Status))
		}
		n := 0
		for {
			m, err := s.Read(buf[n:])
			n += m
			if err == io.EOF {
				break
			}
			if err != nil {
				tb.Fatal(err)
			}
		}
		if n != 64 {
			tb.Fatalf("body of %d bytes", n)
		}
		if !cc.Available() {
			tb.Fatal("connection not reusable")
		}
	}
}

// BenchmarkClient: a GET through the client codec to an upstream answering
// 200 with a 64-byte body, over loopback TCP, on one kept-alive connection.
func BenchmarkClient(b *testing.B) {
	rt := clientRoundTrip(b)
	for range 16 {
		rt()
	}
	b.ReportAllocs()
	for b.Loop() {
		rt()
	}
}

// BenchmarkClientCancelable is BenchmarkClient with a cancelable context,
// which the connection's watcher goroutine follows.
func BenchmarkClientCancelable(b *testing.B) {
	conn, up := tcpPair(b)
	resp := append([]byte("HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n"), body64...)
	go fakeUpstream(up, resp)
	cc := NewClientConn(conn, testOptions())
	b.Cleanup(func() { cc.Close(); up.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var req http.Header
	req.Add(http.Method, "GET")
	req.Add(http.Authority, "example.com")
	req.Add(http.Path, "/")
	buf := make([]byte, 512)
	rt := func() {
		s, err := cc.NewStream(ctx)
		if err != nil {
			b.Fatal(err)
		}
		s.WriteHeader(&req, true)
		if _, err := s.ReadHeader(); err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := s.Read(buf); err != nil {
				break
			}
		}
	}
	for range 16 {
		rt()
	}
	b.ReportAllocs()
	for b.Loop() {
		rt()
	}
}

// BenchmarkRoundTrip: the client codec talking to the server codec.
func BenchmarkRoundTrip(b *testing.B) {
	conn, sconn := tcpPair(b)
	sc := NewServerConn(testOptions())
	done := make(chan error, 1)
	go func() { done <- sc.Serve(context.Background(), sconn, newOKHandler()) }()
	cc := NewClientConn(conn, testOptions())
	b.Cleanup(func() { cc.Close(); <-done })
	rt := clientGet(b, cc)
	for range 16 {
		rt()
	}
	b.ReportAllocs()
	for b.Loop() {
		rt()
	}
}

// TestSteadyStateAllocs checks what the benchmarks show: a keep-alive
// request through either codec allocates nothing.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	for name, rt := range map[string]func(){
		"server": serverRoundTrip(t),
		"client": clientRoundTrip(t),
	} {
		for range 16 {
			rt()
		}
		if allocs := testing.AllocsPerRun(200, rt); allocs != 0 {
			t.Errorf("%s: %v allocs per request, want 0", name, allocs)
		}
	}
}

// BenchmarkBaseline is the floor under BenchmarkServer and BenchmarkClient:
// the same exchange over loopback TCP between a raw client and a raw server
// that parse nothing.
func BenchmarkBaseline(b *testing.B) {
	client, conn := tcpPair(b)
	resp := append([]byte("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 64\r\n\r\n"), body64...)
	go fakeUpstream(conn, resp)
	b.Cleanup(func() { client.Close(); conn.Close() })
	req := []byte(benchRequest)
	got := make([]byte, len(resp))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServerParallel is BenchmarkServer over 32 connections at once per
// GOMAXPROCS, the way a load generator drives a proxy.
func BenchmarkServerParallel(b *testing.B) {
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		rt := serverRoundTrip(b)
		for pb.Next() {
			rt()
		}
	})
}
