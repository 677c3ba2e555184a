package tlsinspector

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/stats"
)

func newFilter(t *testing.T, cfg *tlsv3.TlsInspector) (filter.ListenerFilter, *stats.Store) {
	t.Helper()
	st := stats.NewStore()
	f, err := Factory{}.Create(cfg, &filter.Context{Stats: st})
	if err != nil {
		t.Fatal(err)
	}
	return f, st
}

// accept runs f on the server side of a loopback TCP connection whose client
// side is given to client (in a goroutine); it returns the inspected conn
// (still open, to be read) and OnAccept's error.
func accept(t *testing.T, f filter.ListenerFilter, timeout time.Duration, client func(net.Conn)) (*filter.Conn, error) {
	t.Helper()
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
	c.SetReadDeadline(time.Now().Add(timeout))
	err = f.OnAccept(context.Background(), c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c, err
}

// readBack checks that want is still the first thing to read from c.
func readBack(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the peeked bytes: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("read back %x, want %x", got, want)
	}
}

func counters(st *stats.Store) map[string]int64 {
	m := map[string]int64{}
	for _, n := range []string{"client_hello_too_large", "tls_found", "tls_not_found", "alpn_found", "alpn_not_found", "sni_found", "sni_not_found"} {
		if v, _ := st.Value("tls_inspector." + n); v != 0 {
			m[n] = v
		}
	}
	return m
}

func wantCounters(t *testing.T, st *stats.Store, want map[string]int64) {
	t.Helper()
	got := counters(st)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("tls_inspector.%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("counters %v, want %v", got, want)
	}
}

// recorder passes on what a TLS client writes, keeping a copy of the first
// write (the ClientHello).
type recorder struct {
	net.Conn
	first chan []byte
}

func (r *recorder) Write(b []byte) (int, error) {
	select {
	case r.first <- slices.Clone(b):
	default:
	}
	return r.Conn.Write(b)
}

func TestRealHandshake(t *testing.T) {
	f, st := newFilter(t, &tlsv3.TlsInspector{})
	first := make(chan []byte, 1)
	c, err := accept(t, f, 5*time.Second, func(cc net.Conn) {
		tls.Client(&recorder{cc, first}, &tls.Config{ServerName: "A.Example", NextProtos: []string{"h2", "http/1.1"}}).Handshake()
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.TransportProtocol != "tls" || c.ServerName != "a.example" || !slices.Equal(c.ApplicationProtocols, []string{"h2", "http/1.1"}) {
		t.Errorf("got %q %q %q", c.TransportProtocol, c.ServerName, c.ApplicationProtocols)
	}
	readBack(t, c, <-first)
	wantCounters(t, st, map[string]int64{"tls_found": 1, "sni_found": 1, "alpn_found": 1})
}

func TestNoSNINoALPN(t *testing.T) {
	f, st := newFilter(t, &tlsv3.TlsInspector{})
	first := make(chan []byte, 1)
	c, err := accept(t, f, 5*time.Second, func(cc net.Conn) {
		tls.Client(&recorder{cc, first}, &tls.Config{InsecureSkipVerify: true}).Handshake()
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.TransportProtocol != "tls" || c.ServerName != "" || c.ApplicationProtocols != nil {
		t.Errorf("got %q %q %q", c.TransportProtocol, c.ServerName, c.ApplicationProtocols)
	}
	readBack(t, c, <-first)
	wantCounters(t, st, map[string]int64{"tls_found": 1, "sni_not_found": 1, "alpn_not_found": 1})
}

// TestSplitHello sends a ClientHello in small TLS records, a few bytes per
// TCP segment, with pauses: the inspector waits for the rest.
func TestSplitHello(t *testing.T) {
	f, st := newFilter(t, &tlsv3.TlsInspector{InitialReadBufferSize: wrapperspb.UInt32(256)})
	hello := refragment(captureHello(t, &tls.Config{ServerName: "b.example", NextProtos: []string{strings.Repeat("p", 200), "h2"}}), 50)
	c, err := accept(t, f, 5*time.Second, func(cc net.Conn) {
		for b := hello; len(b) > 0; {
			n := min(len(b), 97)
			cc.Write(b[:n])
			b = b[n:]
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.TransportProtocol != "tls" || c.ServerName != "b.example" || len(c.ApplicationProtocols) != 2 {
		t.Errorf("got %q %q %q", c.TransportProtocol, c.ServerName, c.ApplicationProtocols)
	}
	readBack(t, c, hello)
	wantCounters(t, st, map[string]int64{"tls_found": 1, "sni_found": 1, "alpn_found": 1})
}

func TestPlainText(t *testing.T) {
	f, st := newFilter(t, &tlsv3.TlsInspector{})
	msg := []byte("hello, plain world\n")
	c, err := accept(t, f, 5*time.Second, func(cc net.Conn) { cc.Write(msg) })
	if err != nil {
		t.Fatal(err)
	}
	if c.TransportProtocol != "raw_buffer" || c.ServerName != "" {
		t.Errorf("got %q %q", c.TransportProtocol, c.ServerName)
	}
	readBack(t, c, msg)
	wantCounters(t, st, map[string]int64{"tls_not_found": 1})
}

func TestCloseOnParsingErrors(t *testing.T) {
	f, st := newFilter(t, &tlsv3.TlsInspector{CloseConnectionOnClientHelloParsingErrors: true})
	_, err := accept(t, f, 5*time.Second, func(cc net.Conn) { cc.Write([]byte("GET / HTTP/1.1\r\n")) })
	if !errors.Is(err, ErrNotTLS) {
		t.Errorf("error %v, want ErrNotTLS", err)
	}
	wantCounters(t, st, map[string]int64{"tls_not_found": 1})
}

func TestTooLarge(t *testing.T) {
	f, st := newFilter(t, &tlsv3.TlsInspector{MaxClientHelloSize: wrapperspb.UInt32(300)})
	hello := captureHello(t, &tls.Config{ServerName: "a.example", NextProtos: []string{strings.Repeat("p", 250)}})
	_, err := accept(t, f, 5*time.Second, func(cc net.Conn) { cc.Write(hello) })
	if !errors.Is(err, ErrClientHelloTooLarge) {
		t.Errorf("error %v, want ErrClientHelloTooLarge", err)
	}
	wantCounters(t, st, map[string]int64{"client_hello_too_large": 1})
}

func TestTimeout(t *testing.T) {
	f, st := newFilter(t, &tlsv3.TlsInspector{})
	hello := captureHello(t, &tls.Config{ServerName: "a.example"})
	start := time.Now()
	_, err := accept(t, f, 100*time.Millisecond, func(cc net.Conn) { cc.Write(hello[:20]) })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("error %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
	wantCounters(t, st, map[string]int64{})
}

func TestEOF(t *testing.T) {
	f, _ := newFilter(t, &tlsv3.TlsInspector{})
	hello := captureHello(t, &tls.Config{ServerName: "a.example"})
	_, err := accept(t, f, 5*time.Second, func(cc net.Conn) { cc.Write(hello[:20]); cc.(*net.TCPConn).CloseWrite() })
	if !errors.Is(err, io.EOF) {
		t.Errorf("error %v, want EOF", err)
	}
}

// TestNotTCP: a connection that is not a *net.TCPConn is left alone.
func TestNotTCP(t *testing.T) {
	f, _ := newFilter(t, &tlsv3.TlsInspector{})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := filter.NewConn(a, 1, "l", nil)
	if err := f.OnAccept(context.Background(), c); err != nil || c.TransportProtocol != "raw_buffer" {
		t.Errorf("got %v %q", err, c.TransportProtocol)
	}
}

func TestConfig(t *testing.T) {
	for _, tt := range []struct {
		cfg  proto.Message
		want string
	}{
		{&tlsv3.TlsInspector{EnableJa3Fingerprinting: wrapperspb.Bool(true)}, "enable_ja3_fingerprinting"},
		{&tlsv3.TlsInspector{EnableJa4Fingerprinting: wrapperspb.Bool(true)}, "enable_ja4_fingerprinting"},
		{&tlsv3.TlsInspector{MaxClientHelloSize: wrapperspb.UInt32(20000)}, "max_client_hello_size"},
		{&tlsv3.TlsInspector{EnableJa3Fingerprinting: wrapperspb.Bool(false), InitialReadBufferSize: wrapperspb.UInt32(1024)}, ""},
	} {
		_, err := Factory{}.Create(tt.cfg, &filter.Context{})
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%v: error %v, want one naming %q", tt.cfg, err, tt.want)
		}
	}
}
