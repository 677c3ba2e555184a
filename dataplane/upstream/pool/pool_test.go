package pool

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"go.uber.org/goleak"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/netio"
	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/internal/statstest"
	"github.com/skiffproxy/skiff/internal/tlstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is an HTTP/1.1 and h2c upstream counting its connections.
type server struct {
	addr  string
	conns atomic.Int32
}

func startServer(t testing.TB, h nethttp.HandlerFunc) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String()}
	srv := &nethttp.Server{Handler: h, ConnState: func(_ net.Conn, st nethttp.ConnState) {
		if st == nethttp.StateNew {
			s.conns.Add(1)
		}
	}}
	srv.Protocols = new(nethttp.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return s
}

func newCluster(t testing.TB, st *stats.Store, extra string, addrs ...string) *upstream.Cluster {
	t.Helper()
	m := upstream.NewManager(st)
	m.Set([]upstream.Assignment{upstream.Static(clusterConfig(t, extra, addrs...))})
	return m.Get("c")
}

// clusterConfig is the Config of a STATIC cluster "c" of addrs with extra
// YAML.
func clusterConfig(t testing.TB, extra string, addrs ...string) *upstream.Config {
	t.Helper()
	eps := ""
	for _, a := range addrs {
		ap := netip.MustParseAddrPort(a)
		eps += fmt.Sprintf("{ endpoint: { address: { socket_address: { address: %q, port_value: %d } } } },", ap.Addr(), ap.Port())
	}
	y := fmt.Sprintf(`
name: c
type: STATIC
connect_timeout: 1s
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [%s] }] }
%s`, eps, extra)
	var pb clusterv3.Cluster
	if err := protoyaml.Unmarshal([]byte(y), &pb); err != nil {
		t.Fatal(err)
	}
	cfg, err := upstream.NewConfig(&pb)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// http2Options is the cluster YAML that makes its pools speak HTTP/2.
const http2Options = `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http2_protocol_options: {} }
`

func get(t testing.TB, p *Pool, path string) (string, error) {
	t.Helper()
	c, s, err := p.Acquire(context.Background(), nil)
	if err != nil {
		return "", err
	}
	return roundTrip(p, c, s, path)
}

// roundTrip sends a GET of path on s, a stream on c, reads the response's
// body and releases c.
func roundTrip(p *Pool, c *Conn, s http.ClientStream, path string) (string, error) {
	defer p.Release(c)
	defer s.Close()
	var h http.Header
	h.Add(http.Method, "GET")
	h.Add(http.Scheme, "http")
	h.Add(http.Authority, "x")
	h.Add(http.Path, path)
	if err := s.WriteHeader(&h, true); err != nil {
		return "", err
	}
	if _, err := s.ReadHeader(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(s)
	return string(b), err
}

func TestKeepAliveReuse(t *testing.T) {
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, r.URL.Path) })
	st := stats.NewStore()
	cl := newCluster(t, st, "", srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	for i := range 10 {
		if body, err := get(t, p, fmt.Sprintf("/%d", i)); err != nil || body != fmt.Sprintf("/%d", i) {
			t.Fatalf("%d: %q %v", i, body, err)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d upstream connections, want 1 (keep-alive)", n)
	}
	if v, _ := st.Value("cluster.c.upstream_cx_http1_total"); v != 1 {
		t.Errorf("upstream_cx_http1_total = %d", v)
	}
}

func TestMaxRequestsPerConnection(t *testing.T) {
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {})
	st := stats.NewStore()
	cl := newCluster(t, st, `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: { max_requests_per_connection: 3 }
    explicit_http_config: { http_protocol_options: {} }
`, srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	for range 9 {
		if _, err := get(t, p, "/"); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.conns.Load(); n != 3 {
		t.Errorf("%d connections for 9 requests at 3 per connection", n)
	}
	if v, _ := st.Value("cluster.c.upstream_cx_max_requests"); v != 3 {
		t.Errorf("upstream_cx_max_requests = %d", v)
	}
}

func TestHTTP2Multiplexing(t *testing.T) {
	release := make(chan struct{})
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		<-release
		io.WriteString(w, r.Proto)
	})
	st := stats.NewStore()
	cl := newCluster(t, st, http2Options, srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			body, err := get(t, p, "/")
			if err == nil && body != "HTTP/2.0" {
				err = fmt.Errorf("body %q", body)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections for 20 concurrent streams", n)
	}
}

func TestOverflow(t *testing.T) {
	release := make(chan struct{})
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) { <-release })
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	st := stats.NewStore()
	cl := newCluster(t, st, `
circuit_breakers: { thresholds: [{ max_connections: 1, max_pending_requests: 1 }] }
`, srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	first := make(chan error, 1)
	go func() { _, err := get(t, p, "/"); first <- err }() // holds the one connection
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	pending := make(chan error, 1)
	go func() { _, _, err := p.Acquire(ctx, nil); pending <- err }() // waits: pending
	time.Sleep(50 * time.Millisecond)
	if _, _, err := p.Acquire(context.Background(), nil); !errors.Is(err, ErrOverflow) {
		t.Errorf("third request: %v, want ErrOverflow", err)
	}
	cancel()
	if err := <-pending; !errors.Is(err, context.Canceled) {
		t.Errorf("pending request: %v", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Error(err)
	}
	if v, _ := st.Value("cluster.c.upstream_rq_pending_overflow"); v != 1 {
		t.Errorf("upstream_rq_pending_overflow = %d", v)
	}
}

func TestConnectError(t *testing.T) {
	addr := nettest.RefusedAddr(t).String()
	st := stats.NewStore()
	cl := newCluster(t, st, "", addr)
	m := NewManager(Options{})
	defer m.Close()
	_, _, err := m.Pool(cl, cl.Hosts()[0], "", "").Acquire(context.Background(), nil)
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Reason() != "delayed connect error: Connection refused" {
		t.Errorf("%v", err)
	}
}

func TestStaleIdleConnection(t *testing.T) {
	checkStaleIdle(t, "", func(c net.Conn) net.Conn { return c })
}

// answerOnceUpstream is an HTTP/1.1 upstream (over TLS if wrap makes it so)
// that answers each connection's first request with "ok" and closes the
// connection when beforeClose returns (TLS: close_notify, then FIN).
// accepted counts its connections.
func answerOnceUpstream(t *testing.T, wrap func(net.Conn) net.Conn, beforeClose func()) (addr string, accepted *atomic.Int32) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int32)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			raw.SetDeadline(time.Now().Add(5 * time.Second))
			c := wrap(raw)
			c.Read(make([]byte, 4096))
			io.WriteString(c, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
			beforeClose()
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), accepted
}

// checkStaleIdle: an upstream that closes every connection after its first
// response, without saying so, is noticed before the pool reuses the
// connection. wrap makes the server's side of each connection (TLS, or the
// socket itself); extra is the cluster's configuration beyond its endpoint.
func checkStaleIdle(t *testing.T, extra string, wrap func(net.Conn) net.Conn) {
	addr, accepted := answerOnceUpstream(t, wrap, func() { time.Sleep(10 * time.Millisecond) })
	cl := newCluster(t, stats.NewStore(), extra, addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	for range 2 {
		if body, err := get(t, p, "/"); err != nil || body != "ok" {
			t.Fatalf("%q %v", body, err)
		}
		time.Sleep(PeekAfter + 50*time.Millisecond)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("%d connections accepted", n)
	}
}

func TestNoAllocsOnReuse(t *testing.T) {
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {})
	cl := newCluster(t, stats.NewStore(), "", srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	c, s, err := p.Acquire(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Reset(http.ResetCancel)
	s.Close()
	p.Release(c)
	// Acquire and release an idle connection's stream without using it: the
	// h1 codec closes a stream that was never written, so measure the pool
	// lookup only.
	if n := testing.AllocsPerRun(100, func() { _ = m.Pool(cl, cl.Hosts()[0], "", "") }); n != 0 {
		t.Errorf("%v allocs per pool lookup", n)
	}
}

// The sweeper closes the idle connections of a host that left its cluster
// and removes its pool; the host's next pool is a new one.
func TestSweepRemovesGonePool(t *testing.T) {
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "ok") })
	ap := netip.MustParseAddrPort(srv.addr)
	um := upstream.NewManager(stats.NewStore())
	um.Set([]upstream.Assignment{upstream.Static(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second,
		Endpoints: []upstream.Endpoint{{Addr: ap, Weight: 1}}})})
	cl := um.Get("c")
	h := cl.Hosts()[0]
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, h, "", "")
	if body, err := get(t, p, "/"); err != nil || body != "ok" {
		t.Fatalf("get: %q, %v", body, err)
	}
	um.Set([]upstream.Assignment{upstream.Static(&upstream.Config{Name: "c", StatName: "c", ConnectTimeout: time.Second})})
	if !h.Gone() {
		t.Fatal("the host is not gone after leaving the cluster")
	}
	for deadline := time.Now().Add(10 * sweepEvery); m.lookup(0, poolKey{h: h}) != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the gone host's pool was not removed")
		}
	}
	if m.Pool(cl, h, "", "") == p {
		t.Error("the host's pool after the sweep is the removed one")
	}
}

// startTLSServer is an HTTPS upstream (HTTP/1.1, and HTTP/2 by ALPN if h2)
// with a certificate for server.test from ca, counting its connections.
func startTLSServer(t testing.TB, ca *tlstest.CA, h2 bool, h nethttp.HandlerFunc) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String()}
	srv := &nethttp.Server{Handler: h, ConnState: func(_ net.Conn, st nethttp.ConnState) {
		if st == nethttp.StateNew {
			s.conns.Add(1)
		}
	}, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "server", "server.test").TLS(t)}}}
	srv.Protocols = new(nethttp.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(h2)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close(); <-done })
	return s
}

// tlsCluster is the YAML of a transport_socket trusting ca, SNI server.test,
// TLS 1.3 allowed.
func tlsCluster(t testing.TB, ca *tlstest.CA) string {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: server.test
    common_tls_context:
      tls_params: { tls_maximum_protocol_version: TLSv1_3 }
      validation_context: { trusted_ca: { filename: %q } }
`, caFile)
}

// TestTLSKeepAliveReuse: HTTP/1.1 over TLS 1.3 keeps its connection across
// idle spells longer than PeekAfter (the liveness check sees the session
// tickets the server sent, not a dead connection), and offers http/1.1 by
// ALPN to a server that would prefer h2.
func TestTLSKeepAliveReuse(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	srv := startTLSServer(t, ca, true, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, r.Proto+" "+r.URL.Path) })
	st := stats.NewStore()
	cl := newCluster(t, st, tlsCluster(t, ca), srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	for i := range 4 {
		want := fmt.Sprintf("HTTP/1.1 /%d", i)
		if body, err := get(t, p, fmt.Sprintf("/%d", i)); err != nil || body != want {
			t.Fatalf("%d: %q %v, want %q", i, body, err, want)
		}
		if i%2 == 1 {
			time.Sleep(PeekAfter + 50*time.Millisecond)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d upstream connections, want 1 (keep-alive over TLS)", n)
	}
	statstest.Expect(t, st, map[string]int64{"cluster.c.ssl.handshake": 1, "cluster.c.ssl.versions.TLSv1.3": 1, "cluster.c.upstream_cx_http1_total": 1})
}

// TestTLSStaleIdleConnection: an HTTPS upstream that closes its idle
// connections (with a close_notify alert) is noticed before reuse.
func TestTLSStaleIdleConnection(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "server", "server.test").TLS(t)}}
	checkStaleIdle(t, tlsCluster(t, ca), func(c net.Conn) net.Conn { return tls.Server(c, cfg) })
}

// TestTLSHTTP2: a cluster speaking HTTP/2 over TLS offers h2 by ALPN (the
// UpstreamTlsContext names no protocol) and multiplexes on one connection.
func TestTLSHTTP2(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	srv := startTLSServer(t, ca, true, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, r.Proto) })
	st := stats.NewStore()
	cl := newCluster(t, st, tlsCluster(t, ca)+http2Options, srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			if body, err := get(t, p, "/"); err != nil || body != "HTTP/2.0" {
				t.Errorf("%q %v, want HTTP/2.0", body, err)
			}
		})
	}
	wg.Wait()
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestAliveTLS: the liveness check of an idle TLS connection reads what came
// through TLS without waiting: TLS 1.3 session tickets the client has not
// read yet keep the connection (which then carries a request), a
// close_notify retires it.
func TestAliveTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	srv := startTLSServer(t, ca, false, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "ok") })
	st := stats.NewStore()
	cl := newCluster(t, st, tlsCluster(t, ca), srv.addr)
	conn := func() *Conn {
		nc, err := cl.Connect(context.Background(), cl.Hosts()[0])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		tc := nc.(*tls.Conn)
		if tc.ConnectionState().Version != tls.VersionTLS13 {
			t.Fatalf("version %x, want TLS 1.3", tc.ConnectionState().Version)
		}
		return &Conn{tls: tc}
	}
	c := conn()
	time.Sleep(50 * time.Millisecond) // the server's tickets arrive, unread
	if !c.alive() {
		t.Fatal("an idle TLS 1.3 connection with session tickets to read was judged dead")
	}
	c.tls.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c.tls, "GET / HTTP/1.1\r\nhost: x\r\n\r\n")
	resp, err := nethttp.ReadResponse(bufio.NewReader(c.tls), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a request after the liveness check: %v %v", resp, err)
	}
	resp.Body.Close()

	d := conn()
	d.tls.NetConn().(*netio.Conn).CloseWrite()
	time.Sleep(50 * time.Millisecond) // the server sees EOF and closes
	if d.alive() {
		t.Error("a TLS connection the server closed was judged alive")
	}

	// A server that sends bytes nobody asked for on an idle connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stray := make(chan struct{})
	go func() {
		defer close(stray)
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		defer raw.Close()
		sc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "server", "server.test").TLS(t)}})
		if sc.Handshake() == nil {
			io.WriteString(sc, "HTTP/1.1 408 Request Timeout\r\n\r\n")
			sc.Read(make([]byte, 1)) // until the client closes
		}
	}()
	other := newCluster(t, stats.NewStore(), tlsCluster(t, ca), ln.Addr().String())
	nc, err := other.Connect(context.Background(), other.Hosts()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	time.Sleep(50 * time.Millisecond)
	if (&Conn{tls: nc.(*tls.Conn)}).alive() {
		t.Error("an idle TLS connection with stray bytes was judged alive")
	}
	nc.Close()
	<-stray
}

// TestTransportUpdateRetiresConns: a cluster update that changes the TLS
// settings (here: another CA to trust) retires the pooled connections made
// with the old ones, as Envoy drains an updated cluster's pools; the next
// request makes a new connection with the new settings (and fails, the
// server's CA being no longer trusted).
func TestTransportUpdateRetiresConns(t *testing.T) {
	ca, other := tlstest.NewCA(t, "upstream CA"), tlstest.NewCA(t, "other CA")
	srv := startTLSServer(t, ca, false, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "ok") })
	st := stats.NewStore()
	um := upstream.NewManager(st)
	cfg := func(ca *tlstest.CA) *upstream.Config { return clusterConfig(t, tlsCluster(t, ca), srv.addr) }
	first := cfg(ca)
	um.Set([]upstream.Assignment{upstream.Static(first)})
	cl := um.Get("c")
	m := NewManager(Options{})
	defer m.Close()
	for range 2 {
		if body, err := get(t, m.Pool(cl, cl.Hosts()[0], "", ""), "/"); err != nil || body != "ok" {
			t.Fatalf("%q %v", body, err)
		}
		// The same configuration again (as an update of endpoints only
		// leaves it) keeps the connection.
		um.Set([]upstream.Assignment{upstream.Static(first)})
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections before the TLS change, want 1", n)
	}
	um.Set([]upstream.Assignment{upstream.Static(cfg(other))})
	cl = um.Get("c")
	if body, err := get(t, m.Pool(cl, cl.Hosts()[0], "", ""), "/"); err == nil {
		t.Errorf("after the update: %q over the connection of the old TLS settings", body)
	}
}

// TestAliveTLSRenegotiation: a TLS 1.2 server (openssl s_server) that asks
// an idle connection to renegotiate (allow_renegotiation: true): the
// renegotiation cannot finish without waiting, so the liveness check
// retires the connection and the next request gets a new one, instead of
// failing on a half-renegotiated connection (as it did when the check only
// looked for a read timeout).
func TestAliveTLSRenegotiation(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("needs openssl s_server")
	}
	ca := tlstest.NewCA(t, "upstream CA")
	certFile, keyFile := ca.Issue(t, "server", "server.test").Files(t, t.TempDir(), "s-")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command("openssl", "s_server", "-accept", addr, "-cert", certFile, "-key", keyFile, "-tls1_2", "-crlf", "-naccept", "2")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor := func(prefix string) {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("s_server ended")
				}
				t.Log("s_server:", l)
				if strings.HasPrefix(l, prefix) {
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no %q from s_server", prefix)
			}
		}
	}
	waitFor("ACCEPT")
	st := stats.NewStore()
	cl := newCluster(t, st, tlsCluster(t, ca)+"    allow_renegotiation: true\n", addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	for i := range 2 {
		res := make(chan error, 1)
		go func() {
			body, err := get(t, p, "/")
			if err == nil && body != "ok" {
				err = fmt.Errorf("body %q", body)
			}
			res <- err
		}()
		waitFor("GET /")
		io.WriteString(stdin, "HTTP/1.1 200 OK\ncontent-length: 2\n\nok")
		select {
		case err := <-res:
			if err != nil {
				t.Fatalf("request %d: %v", i+1, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d: no response", i+1)
		}
		if i == 0 {
			// s_server reads its commands from a read of their own.
			time.Sleep(100 * time.Millisecond)
			io.WriteString(stdin, "r\n") // HelloRequest on the idle connection
			time.Sleep(PeekAfter + 200*time.Millisecond)
		}
	}
	// The second request went over a new connection (the usual case), or
	// over the old one if its renegotiation happened to complete within the
	// check (the server answers fast).
	if v, _ := st.Value("cluster.c.ssl.handshake"); v != 1 && v != 2 {
		t.Errorf("ssl.handshake = %d, want 1 or 2", v)
	}
}

// TestMaxConnectionPools: a cluster's max_connection_pools bounds the pools
// auto_sni makes (one per name): past it Pool gives none and counts
// upstream_cx_pool_overflow; an existing pool is still found.
func TestMaxConnectionPools(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	st := stats.NewStore()
	cl := newCluster(t, st, tlsCluster(t, ca)+`
circuit_breakers: { thresholds: [{ max_connection_pools: 2 }] }
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: {} }
    upstream_http_protocol_options: { auto_sni: true }
`, "127.0.0.1:1")
	m := NewManager(Options{})
	defer m.Close()
	h := cl.Hosts()[0]
	a, b := m.Pool(cl, h, "a.test", ""), m.Pool(cl, h, "b.test", "")
	if a == nil || b == nil || a == b {
		t.Fatalf("two names: pools %p, %p", a, b)
	}
	if c := m.Pool(cl, h, "c.test", ""); c != nil {
		t.Error("a third name got a pool past max_connection_pools: 2")
	}
	if m.Pool(cl, h, "a.test", "") != a {
		t.Error("the first name's pool was not found again")
	}
	if v, _ := st.Value("cluster.c.upstream_cx_pool_overflow"); v != 1 {
		t.Errorf("upstream_cx_pool_overflow = %d, want 1", v)
	}
}

// TestPoolKeepsItsNames: the SNI and SAN a request asks for are strings
// over its header's buffer (see http.Header), which the next request on the
// connection overwrites. The pool keeps its own copies, as its key and for
// its dials: after the buffer took another name, the first name still finds
// its pool, the other name does not, and the pool still dials the first.
// (Keeping the request's strings, a request for c.test was sent over the
// connection made and verified for a.test: e2e TestUpstreamAutoSNI, once in
// a while.)
func TestPoolKeepsItsNames(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	cl := newCluster(t, stats.NewStore(), tlsCluster(t, ca)+`
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: {} }
    upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true }
`, "127.0.0.1:1")
	m := NewManager(Options{})
	defer m.Close()
	h := cl.Hosts()[0]
	var req http.Header
	req.Set(http.Authority, "a.test")
	name := req.Authority()
	a := m.Pool(cl, h, name, name)
	req.Reset()
	req.Set(http.Authority, "c.test") // the same bytes of the buffer
	if name != "c.test" {
		t.Fatalf("the header's string reads %q after the buffer took c.test: the test no longer shows what it is about", name)
	}
	if got := m.Pool(cl, h, "a.test", "a.test"); got != a {
		t.Errorf("a.test: pool %p, want the one made for it, %p", got, a)
	}
	if got := m.Pool(cl, h, "c.test", "c.test"); got == a {
		t.Error("c.test: got a.test's pool")
	}
	if a.tls.SNI != "a.test" || a.tls.SAN != "a.test" {
		t.Errorf("a.test's pool dials with SNI %q, SAN %q", a.tls.SNI, a.tls.SAN)
	}
}

// TestAcquireOnDroppedPool: a request that looked its pool up just before
// the sweeper dropped it (empty and unused for emptyPoolLife) gets its
// connection in the Manager's pool for the same host instead, which sweeps
// and closes it; before, the connection was made in the dropped pool, which
// nothing swept or closed again (an HTTP/2 connection stayed open and
// counted in upstream_cx_active for good, and Manager.Close waited for it).
func TestAcquireOnDroppedPool(t *testing.T) {
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "ok") })
	st := stats.NewStore()
	cl := newCluster(t, st, http2Options, srv.addr)
	m := NewManager(Options{})
	h := cl.Hosts()[0]
	p := m.Pool(cl, h, "", "") // the router's look-up
	// The sweeper, meanwhile.
	p.mu.Lock()
	p.lastUsed = time.Now().Add(-2 * emptyPoolLife)
	p.mu.Unlock()
	if !p.sweep(time.Now()) {
		t.Fatal("the sweep kept the pool")
	}
	// The router goes on with the pool it looked up.
	if body, err := get(t, p, "/"); err != nil || body != "ok" {
		t.Fatalf("GET through the dropped pool: %q, %v", body, err)
	}
	np := m.Pool(cl, h, "", "")
	p.mu.Lock()
	dropped := p.total
	p.mu.Unlock()
	np.mu.Lock()
	live := np.total
	np.mu.Unlock()
	if np == p || dropped != 0 || live != 1 {
		t.Fatalf("connections: %d in the dropped pool, %d in the Manager's (a new one: %t); want 0 and 1", dropped, live, np != p)
	}
	closed := make(chan struct{})
	go func() { m.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Manager.Close did not return: a connection it does not know is open")
	}
	if v, _ := st.Value("cluster.c.upstream_cx_active"); v != 0 {
		t.Errorf("upstream_cx_active %d after Close, want 0", v)
	}
}

// TestUpstreamCloseOfIdleConnection: an upstream that closes an idle
// keep-alive connection, without saying so in its response, has the pool
// close it at once (upstream_cx_destroy_remote, upstream_cx_active back to
// 0), without waiting for a request or the idle timeout, as Envoy's pool
// sees the close in its event loop; the next request, sent right after and
// well within PeekAfter, goes over a new connection.
func TestUpstreamCloseOfIdleConnection(t *testing.T) {
	checkUpstreamClose(t, "", func(c net.Conn) net.Conn { return c })
}

// TestTLSUpstreamCloseOfIdleConnection: the same over TLS (close_notify,
// then FIN).
func TestTLSUpstreamCloseOfIdleConnection(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "server", "server.test").TLS(t)}}
	checkUpstreamClose(t, tlsCluster(t, ca), func(c net.Conn) net.Conn { return tls.Server(c, cfg) })
}

// checkUpstreamClose is TestUpstreamCloseOfIdleConnection with the
// cluster's extra configuration and wrap making the server's side of each
// connection.
func checkUpstreamClose(t *testing.T, extra string, wrap func(net.Conn) net.Conn) {
	closeNow := make(chan struct{}, 2)
	addr, accepted := answerOnceUpstream(t, wrap, func() { <-closeNow })
	st := stats.NewStore()
	cl := newCluster(t, st, extra, addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	if body, err := get(t, p, "/"); err != nil || body != "ok" {
		t.Fatalf("%q %v", body, err)
	}
	closeNow <- struct{}{}
	statstest.Wait(t, st, "cluster.c.upstream_cx_destroy_remote", 1)
	statstest.Wait(t, st, "cluster.c.upstream_cx_active", 0)
	closeNow <- struct{}{}
	if body, err := get(t, p, "/"); err != nil || body != "ok" {
		t.Fatalf("after the close: %q %v", body, err)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("%d connections accepted, want 2", n)
	}
	if v, _ := st.Value("cluster.c.upstream_cx_destroy_local"); v != 0 {
		t.Errorf("upstream_cx_destroy_local = %d, want 0", v)
	}
}

// TestMaxConnectionDurationIdle: an idle HTTP/1.1 connection is closed when
// its max_connection_duration is up, without a request to notice it
// (upstream_cx_max_duration_reached, a local close), as Envoy's connection
// duration timer closes it.
func TestMaxConnectionDurationIdle(t *testing.T) {
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "ok") })
	st := stats.NewStore()
	cl := newCluster(t, st, `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: { max_connection_duration: 0.1s }
    explicit_http_config: { http_protocol_options: {} }
`, srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	if body, err := get(t, p, "/"); err != nil || body != "ok" {
		t.Fatalf("%q %v", body, err)
	}
	statstest.Wait(t, st, "cluster.c.upstream_cx_max_duration_reached", 1)
	statstest.Wait(t, st, "cluster.c.upstream_cx_active", 0)
	if v, _ := st.Value("cluster.c.upstream_cx_destroy_local"); v != 1 {
		t.Errorf("upstream_cx_destroy_local = %d, want 1", v)
	}
}

// TestMaxConnectionDurationBusyHTTP2: an HTTP/2 connection whose
// max_connection_duration is up while it carries a stream drains, as in
// Envoy: counted at once, it takes no new stream (the next request gets a
// new connection) and is closed once its last stream ends.
func TestMaxConnectionDurationBusyHTTP2(t *testing.T) {
	release := make(chan struct{})
	srv := startServer(t, func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.URL.Path == "/held" {
			<-release
		}
		io.WriteString(w, "ok")
	})
	st := stats.NewStore()
	cl := newCluster(t, st, `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: { max_connection_duration: 0.1s }
    explicit_http_config: { http2_protocol_options: {} }
`, srv.addr)
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	c, s, err := p.Acquire(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() {
		body, err := roundTrip(p, c, s, "/held")
		if err == nil && body != "ok" {
			err = fmt.Errorf("body %q", body)
		}
		held <- err
	}()
	statstest.Wait(t, st, "cluster.c.upstream_cx_max_duration_reached", 1)
	if body, err := get(t, p, "/"); err != nil || body != "ok" {
		t.Fatalf("%q %v", body, err)
	}
	if n := srv.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the first one draining)", n)
	}
	p.mu.Lock()
	closed := c.closed
	p.mu.Unlock()
	if closed {
		t.Error("the draining connection was closed while it carried a stream")
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatalf("the stream on the draining connection: %v", err)
	}
	// Release closed it.
	p.mu.Lock()
	closed = c.closed
	p.mu.Unlock()
	if !closed {
		t.Error("the draining connection is open after its last stream")
	}
}

// byteCounter is a conn that counts the bytes read from and written to it.
type byteCounter struct {
	net.Conn
	read, written *atomic.Int64
}

func (c byteCounter) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c byteCounter) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// countingListener counts the bytes of every connection it accepts, above
// TLS when tlsCfg is set.
type countingListener struct {
	net.Listener
	tlsCfg        *tls.Config
	read, written atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.tlsCfg != nil {
		c = tls.Server(c, l.tlsCfg)
	}
	return byteCounter{c, &l.read, &l.written}, nil
}

// TestUpstreamByteCounters: the bytes an HTTP pool's connections send and
// receive count in the cluster's upstream_cx_tx_bytes_total and
// upstream_cx_rx_bytes_total (they stayed 0 for HTTP clusters, counted only
// by tcp_proxy), over TLS as Envoy counts them: the HTTP bytes, not the
// records'. The upstream counts what it read and wrote at the same level
// (over TLS only for HTTP/1.1: net/http serves HTTP/2 only on a *tls.Conn,
// which a counting wrapper hides).
func TestUpstreamByteCounters(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	for _, tc := range []struct {
		name  string
		tls   bool
		extra string
	}{
		{"HTTP/1.1", false, ""},
		{"HTTP/1.1 over TLS", true, tlsCluster(t, ca)},
		{"HTTP/2", false, http2Options},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cl := &countingListener{Listener: ln}
			srv := &nethttp.Server{Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				io.WriteString(w, strings.Repeat("x", 1000))
			})}
			srv.Protocols = new(nethttp.Protocols)
			srv.Protocols.SetHTTP1(true)
			if tc.tls {
				cl.tlsCfg = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "server", "server.test").TLS(t)}}
			} else {
				srv.Protocols.SetUnencryptedHTTP2(true)
			}
			done := make(chan struct{})
			go func() { defer close(done); _ = srv.Serve(cl) }()
			defer func() { srv.Close(); <-done }()

			st := stats.NewStore()
			c := newCluster(t, st, tc.extra, ln.Addr().String())
			m := NewManager(Options{})
			defer m.Close()
			p := m.Pool(c, c.Hosts()[0], "", "")
			for i := range 3 {
				if body, err := get(t, p, fmt.Sprintf("/%d", i)); err != nil || len(body) != 1000 {
					t.Fatalf("%d: %d bytes, %v", i, len(body), err)
				}
			}
			// HTTP/2's SETTINGS acknowledgements and window updates may
			// still be under way: wait until both sides agree.
			var tx, rx int64
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				tx, _ = st.Value("cluster.c.upstream_cx_tx_bytes_total")
				rx, _ = st.Value("cluster.c.upstream_cx_rx_bytes_total")
				if (tx == cl.read.Load() && rx == cl.written.Load()) || time.Now().After(deadline) {
					break
				}
			}
			if tx != cl.read.Load() || rx != cl.written.Load() || rx < 3000 {
				t.Errorf("upstream_cx_tx_bytes_total %d, upstream_cx_rx_bytes_total %d; the upstream read %d and wrote %d bytes",
					tx, rx, cl.read.Load(), cl.written.Load())
			}
		})
	}
}

// TestCodecCloseCountsWhoClosed: a connection its codec ends is counted in
// upstream_cx_destroy_remote when the upstream closed or reset it, and in
// upstream_cx_destroy_local when skiff closed it (a response with
// connection: close, which skiff acts on before the upstream's FIN), as
// Envoy's pool counts the connection's RemoteClose and LocalClose.
func TestCodecCloseCountsWhoClosed(t *testing.T) {
	for _, tc := range []struct {
		name, answer  string
		reset         bool // the upstream resets the connection after answer
		local, remote int64
	}{
		{"connection close", "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", false, 1, 0},
		{"body until close", "HTTP/1.1 200 OK\r\n\r\nok", false, 0, 1},
		{"reset in the body", "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok", true, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := nettest.Serve(t, func(c net.Conn) {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 4096))
				io.WriteString(c, tc.answer)
				switch {
				case tc.reset:
					c.(*net.TCPConn).SetLinger(0)
				case tc.local > 0:
					io.Copy(io.Discard, c) // until skiff closes: the close is its own
				}
			})
			st := stats.NewStore()
			cl := newCluster(t, st, "", addr)
			m := NewManager(Options{})
			defer m.Close()
			p := m.Pool(cl, cl.Hosts()[0], "", "")
			body, err := get(t, p, "/")
			if tc.reset != (err != nil) || (err == nil && body != "ok") {
				t.Fatalf("get = %q, %v", body, err)
			}
			checkDestroys(t, st, tc.local, tc.remote)
		})
	}
}

// TestHTTP2UpstreamCloseCountsRemote: an HTTP/2 connection the upstream
// closes is counted in upstream_cx_destroy_remote; one the pool closes
// itself, in upstream_cx_destroy_local.
func TestHTTP2UpstreamCloseCountsRemote(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nethttp.Server{Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, _ *nethttp.Request) {
		io.WriteString(w, "ok")
	})}
	srv.Protocols = new(nethttp.Protocols)
	srv.Protocols.SetUnencryptedHTTP2(true)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	defer func() { srv.Close(); <-served }()

	st := stats.NewStore()
	cl := newCluster(t, st, http2Options, ln.Addr().String())
	m := NewManager(Options{})
	defer m.Close()
	p := m.Pool(cl, cl.Hosts()[0], "", "")
	if body, err := get(t, p, "/"); err != nil || body != "ok" {
		t.Fatalf("%q %v", body, err)
	}
	srv.Close() // closes the idle connection
	checkDestroys(t, st, 0, 1)
}

// checkDestroys waits for one connection of cluster c to be destroyed and
// checks how it was counted.
func checkDestroys(t *testing.T, st *stats.Store, local, remote int64) {
	t.Helper()
	statstest.Wait(t, st, "cluster.c.upstream_cx_destroy", 1)
	l, _ := st.Value("cluster.c.upstream_cx_destroy_local")
	r, _ := st.Value("cluster.c.upstream_cx_destroy_remote")
	if l != local || r != remote {
		t.Errorf("upstream_cx_destroy_local %d, _remote %d; want %d, %d", l, r, local, remote)
	}
}
