package hcm_test

import (
	"bufio"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/nettest"
)

// connectYAML is a connection manager with CONNECT enabled (hcmUpgrades:
// its upgrade_configs line, or none) whose connect_matcher route sends
// CONNECT requests to cluster up with the route's upgrade_configs
// (routeUpgrades), and everything else to up as well.
func connectYAML(hcmUpgrades, routeUpgrades string) string {
	return `
stat_prefix: ingress
` + hcmUpgrades + `
route_config:
  name: local
  virtual_hosts:
  - name: proxy
    domains: ["*"]
    routes:
    - match: { connect_matcher: {} }
      route: { cluster: up` + routeUpgrades + ` }
      response_headers_to_add: [{ header: { key: x-tunnel, value: skiff } }]
    - match: { prefix: "/" }
      route: { cluster: up }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
}

const terminate = ", upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }]"

// tcpEchoUpstream is a TCP server that sends back what it reads and closes its
// side once the client closed its own; got receives each connection's bytes.
func tcpEchoUpstream(t *testing.T) (addr string, got <-chan string) {
	ch := make(chan string, 4)
	addr = nettest.Serve(t, func(c net.Conn) {
		defer c.Close()
		var all strings.Builder
		io.Copy(io.MultiWriter(c, &all), c)
		c.(*net.TCPConn).CloseWrite()
		ch <- all.String()
	})
	return addr, ch
}

// TestConnectTerminated: a route whose CONNECT upgrade has a connect_config
// terminates HTTP/1.1 CONNECT as Envoy does: a TCP connection to the
// upstream host, a 200 made by skiff (with the route's response headers),
// then the bytes both ways, the request's headers never sent upstream, and
// each side's end passed on as a half-close.
func TestConnectTerminated(t *testing.T) {
	up, got := tcpEchoUpstream(t)
	e := newEnv(t, connectYAML("upgrade_configs: [{ upgrade_type: CONNECT }]", terminate), cluster(t, "up", false, up))

	c := dialRaw(t, e.addr)
	// The first bytes follow the head at once, as clients send them.
	io.WriteString(c, "CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\nping")
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, &nethttp.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("x-tunnel") != "skiff" {
		t.Fatalf("CONNECT answered %d %v, want 200 with x-tunnel", resp.StatusCode, resp.Header)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("the bytes sent with the head came back as %q (%v)", buf, err)
	}
	echoThrough(t, c, br, c.(*net.TCPConn).CloseWrite, "pong")
	if b := <-got; b != "pingpong" {
		t.Errorf("the host read %q, want only the tunnel's bytes", b)
	}
	e.waitStat("http.ingress.downstream_cx_upgrades_total", 1)
	e.waitStat("http.ingress.downstream_cx_upgrades_active", 0)
	e.waitStat("cluster.up.upstream_cx_total", 1)
	e.waitStat("cluster.up.upstream_cx_destroy_remote", 1)
	e.waitStat("http.ingress.downstream_rq_2xx", 1)
}

// TestConnectTerminatedHTTP2: the same over an HTTP/2 stream (RFC 9113
// section 8.5), with Go's HTTP/2 client: DATA frames carry the bytes, and
// END_STREAM each way is a half-close.
func TestConnectTerminatedHTTP2(t *testing.T) {
	up, got := tcpEchoUpstream(t)
	e := newEnv(t, "codec_type: HTTP2\n"+connectYAML("upgrade_configs: [{ upgrade_type: CONNECT }]", terminate), cluster(t, "up", false, up))

	pr, pw := io.Pipe()
	req, err := nethttp.NewRequest("CONNECT", "http://"+e.addr, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "db.internal:5432"
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("x-tunnel") != "skiff" {
		t.Fatalf("CONNECT answered %d %v, want 200 with x-tunnel", resp.StatusCode, resp.Header)
	}
	echoThrough(t, pw, resp.Body, pw.Close, "ping", "pong")
	if b := <-got; b != "pingpong" {
		t.Errorf("the host read %q, want only the tunnel's bytes", b)
	}
	e.waitStat("http.ingress.downstream_cx_upgrades_total", 1)
}

// TestConnectProxied: without connect_config the CONNECT request goes to the
// upstream like any other (which terminates it, as another proxy would),
// and its 2xx makes a tunnel.
func TestConnectProxied(t *testing.T) {
	heads := make(chan string, 1)
	up := nettest.Serve(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := nethttp.ReadRequest(br)
		if err != nil {
			heads <- err.Error()
			return
		}
		heads <- req.Method + " " + req.RequestURI + " " + req.Host
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		io.Copy(c, br)
	})
	e := newEnv(t, connectYAML("upgrade_configs: [{ upgrade_type: CONNECT }]", ""), cluster(t, "up", false, up))

	c := dialRaw(t, e.addr)
	io.WriteString(c, "CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, &nethttp.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT answered %v %v", resp, err)
	}
	if h := <-heads; h != "CONNECT db.internal:5432 db.internal:5432" {
		t.Errorf("upstream read %q", h)
	}
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("through the tunnel: %q %v", buf, err)
	}
}

// TestConnectProxiedHTTP2: an HTTP/1.1 CONNECT proxied to an HTTP/2 upstream
// goes as HTTP/2's CONNECT (no :scheme, no :path), its DATA the tunnel.
func TestConnectProxiedHTTP2(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.Method != "CONNECT" || r.Host != "db.internal:5432" || r.ProtoMajor != 2 {
			nethttp.Error(w, r.Method+" "+r.Host+" "+r.Proto, 400)
			return
		}
		w.WriteHeader(200)
		w.(nethttp.Flusher).Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			w.Write(buf[:n])
			w.(nethttp.Flusher).Flush()
			if err != nil {
				return
			}
		}
	}))
	e := newEnv(t, connectYAML("upgrade_configs: [{ upgrade_type: CONNECT }]", ""), cluster(t, "up", true, up))

	c := dialRaw(t, e.addr)
	io.WriteString(c, "CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, &nethttp.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		b, _ := io.ReadAll(br)
		t.Fatalf("CONNECT answered %v %v %q", resp, err, b)
	}
	echoThrough(t, c, br, c.(*net.TCPConn).CloseWrite, "ping", "pong")
}

// echoThrough sends each message through a tunnel whose far end echoes and
// reads it back, then ends the client's side with closeWrite and checks that
// the far end's end follows, with nothing before it.
func echoThrough(t *testing.T, w io.Writer, r io.Reader, closeWrite func() error, msgs ...string) {
	t.Helper()
	for _, msg := range msgs {
		io.WriteString(w, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(r, buf); err != nil || string(buf) != msg {
			t.Fatalf("through the tunnel: %q %v, want %q", buf, err, msg)
		}
	}
	closeWrite()
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Errorf("after the client's end: %q %v, want the far end's", rest, err)
	}
}

// TestConnectRefused: CONNECT is off unless upgrade_configs enables it
// (Envoy's 403, and the connection closes); enabled, a CONNECT request only
// matches connect_matcher routes (404 without one); a terminating route's
// host refusing the connection is a connect failure (503 UF).
func TestConnectRefused(t *testing.T) {
	up, _ := tcpEchoUpstream(t)
	const req = "CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\n"

	off := newEnv(t, connectYAML("", ""), cluster(t, "up", false, up))
	if got := rawExchange(t, off.addr, req, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 403 ") || !strings.Contains(got, "connection: close") {
		t.Errorf("CONNECT not enabled: %q, want 403 and connection: close", got)
	}
	off.waitStat("http.ingress.downstream_rq_ws_on_non_ws_route", 1)
	off.waitStat("http.ingress.downstream_cx_upgrades_total", 0)

	noRoute := newEnv(t, hcmYAML("up", "upgrade_configs: [{ upgrade_type: CONNECT }]\n"), cluster(t, "up", false, up))
	if got := rawExchange(t, noRoute.addr, req, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 404 ") {
		t.Errorf("CONNECT without a connect_matcher route: %q, want 404", got)
	}

	refused := newEnv(t, connectYAML("upgrade_configs: [{ upgrade_type: CONNECT }]", terminate), cluster(t, "up", false, nettest.RefusedAddr(t).String()))
	got := rawExchange(t, refused.addr, req, 5*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.1 503 ") || !strings.Contains(got, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure") {
		t.Errorf("CONNECT to a refusing host: %q, want 503 connect failure", got)
	}
	refused.waitStat("cluster.up.upstream_cx_connect_fail", 1)
}
