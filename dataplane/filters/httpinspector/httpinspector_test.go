package httpinspector

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/stats"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDetect(t *testing.T) {
	for _, tt := range []struct {
		in    string
		proto string
		res   Result
	}{
		{"GET / HTTP/1.1\r\nhost: a\r\n\r\n", "http/1.1", Found},
		{"POST /x?y=1 HTTP/1.0\r\n", "http/1.0", Found},
		{"GET / HTTP/1.1\n", "http/1.1", Found},
		{"OPTIONS * HTTP/1.1\r\n", "http/1.1", Found},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c", Found},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", "h2c", Found},
		{"", "", More},
		{"G", "", More},
		{"GET", "", More},
		{"GET /", "", More},
		{"GET / ", "", More},
		{"GET / HTTP/1.", "", More},
		{"GET / HTTP/1.1", "", More},
		{"PRI * HTTP/2.0\r\n", "", More},
		{"GET / HTTP/2.0\r\n", "", NotFound},
		{"GET / HTTP/1.2", "", NotFound},
		{"GET / HTTP/1.1x", "", NotFound},
		{"GET / HTTP/1.1 \r\n", "", NotFound},
		{"GET  / HTTP/1.1\r\n", "", NotFound},
		{"GET /\r\n", "", NotFound},
		{"\r\nGET / HTTP/1.1\r\n", "", NotFound},
		{"\x16\x03\x01\x02\x00", "", NotFound},
		{"SSH-2.0-OpenSSH_9.6\r\n", "", NotFound},
		{"G(T / HTTP/1.1\r\n", "", NotFound},
		{"PRI * HTTP/2.1\r\n\r\nSM\r\n\r\n", "", NotFound},
	} {
		proto, res := Detect([]byte(tt.in))
		if proto != tt.proto || res != tt.res {
			t.Errorf("Detect(%q) = %q %v, want %q %v", tt.in, proto, res, tt.proto, tt.res)
		}
	}
}

// accept runs a new http_inspector on the server side of a loopback TCP
// connection whose client side is given to client (in a goroutine).
func accept(t *testing.T, transport string, timeout time.Duration, client func(net.Conn)) (*filter.Conn, *stats.Store, error) {
	t.Helper()
	st := stats.NewStore()
	f, err := Factory{}.Create(&httpv3.HttpInspector{}, &filter.Context{Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { cc.Close(); <-done })
	go func() { defer close(done); client(cc) }()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	c := filter.NewConn(sc, 1, "l", nil)
	if transport != "" {
		c.TransportProtocol = transport
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	err = f.OnAccept(context.Background(), c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c, st, err
}

func readBack(t *testing.T, c net.Conn, want string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the peeked bytes: %v", err)
	}
	if string(got) != want {
		t.Fatalf("read back %q, want %q", got, want)
	}
}

func wantCounters(t *testing.T, st *stats.Store, want map[string]int64) {
	t.Helper()
	for _, n := range []string{"http10_found", "http11_found", "http2_found", "http_not_found"} {
		if v, _ := st.Value("http_inspector." + n); v != want[n] {
			t.Errorf("http_inspector.%s = %d, want %d", n, v, want[n])
		}
	}
}

func TestOverTCP(t *testing.T) {
	for _, tt := range []struct {
		name   string
		chunks []string
		proto  string
		stat   string
	}{
		{"http/1.1", []string{"GET /index.html HTTP/1.1\r\nhost: a.example\r\n\r\n"}, "http/1.1", "http11_found"},
		{"http/1.0 in pieces", []string{"GE", "T / HT", "TP/1.0", "\r\n\r\n"}, "http/1.0", "http10_found"},
		{"h2c", []string{"PRI * HTTP/2.0\r\n", "\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"}, "h2c", "http2_found"},
		{"not http", []string{"\x16\x03\x01\x00\x05hello"}, "", "http_not_found"},
		{"request line too long", []string{"GET /" + strings.Repeat("a", MaxInspectSize) + " HTTP/1.1\r\n"}, "", "http_not_found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, st, err := accept(t, "", 5*time.Second, func(cc net.Conn) {
				for _, ch := range tt.chunks {
					cc.Write([]byte(ch))
					time.Sleep(10 * time.Millisecond)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			if tt.proto != "" {
				want = []string{tt.proto}
			}
			if !slices.Equal(c.ApplicationProtocols, want) || c.TransportProtocol != "raw_buffer" {
				t.Errorf("got %q %q, want %q", c.TransportProtocol, c.ApplicationProtocols, want)
			}
			readBack(t, c, strings.Join(tt.chunks, ""))
			wantCounters(t, st, map[string]int64{tt.stat: 1})
		})
	}
}

// TestTLSSkipped: a connection tls_inspector found to be TLS is not inspected.
func TestTLSSkipped(t *testing.T) {
	c, st, err := accept(t, "tls", 5*time.Second, func(cc net.Conn) {})
	if err != nil || c.ApplicationProtocols != nil {
		t.Errorf("got %v %q", err, c.ApplicationProtocols)
	}
	wantCounters(t, st, nil)
}

func TestTimeout(t *testing.T) {
	_, st, err := accept(t, "", 100*time.Millisecond, func(cc net.Conn) { cc.Write([]byte("GET / HT")) })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("error %v, want a deadline error", err)
	}
	wantCounters(t, st, nil)
}

func TestEOF(t *testing.T) {
	_, _, err := accept(t, "", 5*time.Second, func(cc net.Conn) { cc.Write([]byte("GET / HT")); cc.(*net.TCPConn).CloseWrite() })
	if !errors.Is(err, io.EOF) {
		t.Errorf("error %v, want EOF", err)
	}
}

func TestNotTCP(t *testing.T) {
	f, err := Factory{}.Create(&httpv3.HttpInspector{}, &filter.Context{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := filter.NewConn(a, 1, "l", nil)
	if err := f.OnAccept(context.Background(), c); err != nil || c.ApplicationProtocols != nil {
		t.Errorf("got %v %q", err, c.ApplicationProtocols)
	}
}
