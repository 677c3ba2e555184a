package hcm_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/nettest"
)

// rawExchange writes req on a new connection and returns everything read
// until the peer closes or timeout passes.
func rawExchange(t testing.TB, addr, req string, timeout time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

func get(t testing.TB, c *nethttp.Client, url string, hdr ...string) (*nethttp.Response, string) {
	t.Helper()
	req, err := nethttp.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestLocalReplies(t *testing.T) {
	closed := nettest.RefusedAddr(t).String()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	cfg := fmt.Sprintf(`
stat_prefix: ingress
route_config:
  name: local
  validate_clusters: false
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/nocluster" }
      route: { cluster: missing }
    - match: { prefix: "/nohost" }
      route: { cluster: empty }
    - match: { prefix: "/refused" }
      route: { cluster: refused }
    - match: { prefix: "/redirect" }
      redirect: { host_redirect: "example.com", path_redirect: "/there" }
    - match: { prefix: "/direct" }
      direct_response: { status: 418, body: { inline_string: "teapot" } }
    - match: { path: "/grpc.Svc/Method" }
      route: { cluster: missing }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: %q
`, logPath)
	empty := cluster(t, "empty", false)
	e := newEnv(t, cfg, empty, cluster(t, "refused", false, closed))
	c := h1Client(t)
	for _, tc := range []struct {
		path, want, body, details string
		status                    int
	}{
		{"/nothing", "", "", "route_not_found", 404},
		{"/nocluster", "", "", "cluster_not_found", 503},
		{"/nohost", "", "no healthy upstream", "no_healthy_upstream", 503},
		{"/refused", "", "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused", "", 503},
		{"/direct", "", "teapot", "", 418},
	} {
		resp, body := get(t, c, "http://"+e.addr+tc.path)
		if resp.StatusCode != tc.status || body != tc.body {
			t.Errorf("%s: %d %q, want %d %q", tc.path, resp.StatusCode, body, tc.status, tc.body)
		}
		if resp.Header.Get("server") != "envoy" {
			t.Errorf("%s: no server header: %v", tc.path, resp.Header)
		}
	}
	resp, _ := get(t, c, "http://"+e.addr+"/redirect/x")
	if resp.StatusCode != 301 || resp.Header.Get("location") != "http://example.com/there" {
		t.Errorf("redirect: %d %v", resp.StatusCode, resp.Header)
	}
	// A gRPC request gets a trailers-only gRPC answer.
	if gr := grpcCall(t, c, "http://"+e.addr+"/grpc.Svc/Method"); gr.StatusCode != 200 || gr.Header.Get("grpc-status") != "14" {
		t.Errorf("grpc local reply: %d %v", gr.StatusCode, gr.Header)
	}
	e.waitStat("http.ingress.no_route", 1)
	e.waitStat("http.ingress.no_cluster", 2)
	e.waitStat("http.ingress.downstream_rq_5xx", 3)
	e.waitStat("http.ingress.downstream_rq_4xx", 2)
	e.waitStat("http.ingress.downstream_rq_3xx", 1)

	// The access log, in Envoy's default format.
	var log string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(logPath)
		log = string(b)
		if strings.Count(log, "\n") >= 7 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Log(log)
	lines := strings.Split(strings.TrimSpace(log), "\n")
	if len(lines) != 7 {
		t.Fatalf("access log has %d lines:\n%s", len(lines), log)
	}
	for i, want := range []string{
		`"GET /nothing HTTP/1.1" 404 NR 0 0 `,
		`"GET /nocluster HTTP/1.1" 503 NC 0 0 `,
		`"GET /nohost HTTP/1.1" 503 UH 0 19 `,
		`"GET /refused HTTP/1.1" 503 UF 0 `,
		`"GET /direct HTTP/1.1" 418 - 0 6 `,
		`"GET /redirect/x HTTP/1.1" 301 - 0 0 `,
		`"POST /grpc.Svc/Method HTTP/1.1" 200 NC 0 0 `,
	} {
		if !strings.Contains(lines[i], want) || !strings.HasPrefix(lines[i], "[") {
			t.Errorf("line %d: %s\nwant it to contain %s", i, lines[i], want)
		}
	}
	if !strings.HasSuffix(lines[3], `"`+closed+`"`) {
		t.Errorf("UF line without the upstream host %s: %s", closed, lines[3])
	}
}

func TestMalformedAndOversized(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {}))
	e := newEnv(t, hcmYAML("backend", "max_request_headers_kb: 1\n"), cluster(t, "backend", false, up))
	big := "GET / HTTP/1.1\r\nhost: a\r\nx-big: " + strings.Repeat("b", 2000) + "\r\n\r\n"
	if got := rawExchange(t, e.addr, big, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 431 ") {
		t.Errorf("oversized head: %q", got)
	}
	if got := rawExchange(t, e.addr, "GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
		t.Errorf("smuggling attempt: %q", got)
	}
	if got := rawExchange(t, e.addr, "GET / HTTP/1.0\r\n\r\n", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 426 ") {
		t.Errorf("HTTP/1.0 without accept_http_10: %q", got)
	}
	e.waitStat("http.ingress.downstream_rq_4xx", 3)
	e.waitStat("http.ingress.downstream_cx_protocol_error", 2)
}

func TestHTTP10AndPipelining(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, r.URL.Path)
	}))
	e := newEnv(t, hcmYAML("backend", "http_protocol_options: { accept_http_10: true, default_host_for_http_10: default.host }\n"), cluster(t, "backend", false, up))
	got := rawExchange(t, e.addr, "GET /ten HTTP/1.0\r\n\r\n", 5*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.0 200 OK\r\n") || !strings.HasSuffix(got, "/ten") { // an HTTP/1.0 status line, as Envoy under accept_http_10
		t.Errorf("HTTP/1.0: %q", got)
	}
	// Three pipelined requests, answered in order on one connection.
	c := dialRaw(t, e.addr)
	io.WriteString(c, "GET /1 HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\nGET /3 HTTP/1.1\r\nhost: a\r\n\r\n")
	br := bufio.NewReader(c)
	for i := 1; i <= 3; i++ {
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != fmt.Sprintf("/%d", i) {
			t.Errorf("pipelined %d: %q", i, b)
		}
	}
}

// TestRequireTLS: through the connection manager, a virtual host's
// require_tls answers a plaintext request with a 301 to https, and lets one
// through whose x-forwarded-proto the (non-edge) manager trusts as https.
func TestRequireTLS(t *testing.T) {
	cfg := `
stat_prefix: ingress
route_config:
  name: local
  validate_clusters: false
  virtual_hosts:
  - name: secure
    domains: ["*"]
    require_tls: ALL
    routes:
    - match: { prefix: "/" }
      direct_response: { status: 200, body: { inline_string: "over tls" } }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg)
	c := h1Client(t)
	resp, _ := get(t, c, "http://"+e.addr+"/a?b=c", "host", "shop.example:8080")
	if resp.StatusCode != 301 || resp.Header.Get("location") != "https://shop.example:8080/a?b=c" {
		t.Errorf("plaintext request: %d, location %q; want 301 to https://shop.example:8080/a?b=c", resp.StatusCode, resp.Header.Get("location"))
	}
	resp, body := get(t, c, "http://"+e.addr+"/a", "x-forwarded-proto", "https")
	if resp.StatusCode != 200 || body != "over tls" {
		t.Errorf("request forwarded from TLS: %d %q, want 200", resp.StatusCode, body)
	}
}

// TestRuntimeFractionRoute: through the connection manager, a route with
// runtime_fraction takes a share of the requests and the next route the
// rest: each stream samples with its own random value.
func TestRuntimeFractionRoute(t *testing.T) {
	cfg := `
stat_prefix: ingress
route_config:
  name: local
  virtual_hosts:
  - name: shift
    domains: ["*"]
    routes:
    - match: { prefix: "/", runtime_fraction: { default_value: { numerator: 50 }, runtime_key: routing.shift } }
      direct_response: { status: 200, body: { inline_string: "canary" } }
    - match: { prefix: "/" }
      direct_response: { status: 200, body: { inline_string: "stable" } }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg)
	c := h1Client(t)
	seen := map[string]int{}
	for range 200 {
		_, body := get(t, c, "http://"+e.addr+"/")
		seen[body]++
	}
	if seen["canary"] < 50 || seen["stable"] < 50 {
		t.Errorf("200 requests at 50%%: %v, want both routes taking a share", seen)
	}
}

// TestLocalReplyConfig: local_reply_config rewrites skiff's own replies as
// Envoy's: the first mapper whose filter matches changes the status, the
// body and the headers, a mapper's body_format_override or the config's
// body_format renders the body (%LOCAL_REPLY_BODY% is the body before it),
// a gRPC request gets the rewritten status as its grpc-status, and a
// direct response is a local reply too.
func TestLocalReplyConfig(t *testing.T) {
	cfg := `
stat_prefix: ingress
route_config:
  name: local
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/direct" }
      direct_response: { status: 200, body: { inline_string: "hello" } }
    - match: { prefix: "/grpc.Svc/" }
      direct_response: { status: 503 }
local_reply_config:
  mappers:
  - filter: { status_code_filter: { comparison: { op: EQ, value: { default_value: 404, runtime_key: lr.404 } } } }
    status_code: 410
    body: { inline_string: "gone away" }
    headers_to_add: [{ header: { key: x-mapped, value: "404" } }]
  - filter: { header_filter: { header: { name: x-json, present_match: true } } }
    body_format_override:
      json_format: { code: "%RESPONSE_CODE%", message: "%LOCAL_REPLY_BODY%", path: "%REQ(:PATH)%" }
  body_format:
    text_format: "[%RESPONSE_CODE%] %LOCAL_REPLY_BODY%"
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`
	e := newEnv(t, cfg)
	c := h1Client(t)
	for _, tc := range []struct {
		path, hdr         string
		status            int
		body, ct, xMapped string
	}{
		// No route: 404, mapped to 410 with its body, rendered by body_format.
		{"/nothing", "", 410, "[410] gone away", "text/plain", "404"},
		// The JSON mapper: the status stays, the body is its override's.
		{"/direct", "x-json", 200, `{"code":200,"message":"hello","path":"/direct"}` + "\n", "application/json", ""},
		// No mapper: body_format alone.
		{"/direct", "", 200, "[200] hello", "text/plain", ""},
	} {
		var kv []string
		if tc.hdr != "" {
			kv = []string{tc.hdr, "1"}
		}
		resp, body := get(t, c, "http://"+e.addr+tc.path, kv...)
		if resp.StatusCode != tc.status || body != tc.body || resp.Header.Get("content-type") != tc.ct || resp.Header.Get("x-mapped") != tc.xMapped {
			t.Errorf("%s %s: %d %q content-type %q x-mapped %q; want %d %q %q %q", tc.path, tc.hdr, resp.StatusCode, body,
				resp.Header.Get("content-type"), resp.Header.Get("x-mapped"), tc.status, tc.body, tc.ct, tc.xMapped)
		}
	}
	// A gRPC request's local reply is gRPC: grpc-status from the (mapped)
	// status, grpc-message the rendered body.
	resp := grpcCall(t, c, "http://"+e.addr+"/nothing.Svc/M")
	// 410 maps to gRPC UNKNOWN (2), as any status Envoy has no entry for.
	if got := resp.Header.Get("grpc-status") + resp.Trailer.Get("grpc-status"); got != "2" {
		t.Errorf("gRPC local reply: grpc-status %q, want 2 (UNKNOWN, from 410)", got)
	}
	if got := resp.Header.Get("grpc-message") + resp.Trailer.Get("grpc-message"); got != "[410] gone away" {
		t.Errorf("gRPC local reply: grpc-message %q, want the rendered body", got)
	}
}

// TestPathNormalization: normalize_path, merge_slashes and
// path_with_escaped_slashes_action change the :path the upstream sees, or
// answer the request, as Envoy's: escaped slashes first (rejected with 400,
// or unescaped and forwarded, or unescaped and answered with a 307 to the
// new path), then dot segments, then repeated slashes; the query is kept.
func TestPathNormalization(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, r.RequestURI)
	}))
	for _, tc := range []struct {
		extra, path string
		want        string // the upstream's path, or a response's start
	}{
		{"", "/a/../b//c%2Fd", "/a/../b//c%2Fd"},
		{"normalize_path: true", "/a/./b/../c?x=/..", "/a/c?x=/.."},
		{"merge_slashes: true", "//a///b", "/a/b"},
		{"normalize_path: true\nmerge_slashes: true", "/a/..//b", "/b"},
		{"path_with_escaped_slashes_action: KEEP_UNCHANGED", "/a%2Fb", "/a%2Fb"},
		{"path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD", "/a%2fb%5Cc?q=%2F", "/a/b\\c?q=%2F"},
		{"path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD\nnormalize_path: true", "/a/..%2Fb", "/b"},
		{"path_with_escaped_slashes_action: REJECT_REQUEST", "/a%2Fb", "HTTP/1.1 400 "},
		{"path_with_escaped_slashes_action: REJECT_REQUEST", "/a%20b", "/a%20b"},
		{"path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", "/a%2Fb?q", "HTTP/1.1 307 "},
	} {
		e := newEnv(t, hcmYAML("up", tc.extra), cluster(t, "up", false, up))
		resp := rawExchange(t, e.addr, "GET "+tc.path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10*time.Second)
		if strings.HasPrefix(tc.want, "HTTP/") {
			if !strings.HasPrefix(resp, tc.want) {
				t.Errorf("%s, %s: %q, want %s", tc.extra, tc.path, resp, tc.want)
			}
			if strings.Contains(tc.want, "307") && !strings.Contains(strings.ToLower(resp), "\r\nlocation: /a/b?q\r\n") {
				t.Errorf("%s, %s: %q, want location /a/b?q", tc.extra, tc.path, resp)
			}
			continue
		}
		if !strings.HasPrefix(resp, "HTTP/1.1 200 ") || !strings.HasSuffix(resp, "\r\n\r\n"+tc.want) {
			t.Errorf("%s, %s: %q, want the upstream to see %q", tc.extra, tc.path, resp, tc.want)
		}
	}
}

// TestStripTrailingHostDot: strip_trailing_host_dot takes the dot off the
// host before routing, so "example.com." finds the virtual host of
// "example.com".
func TestStripTrailingHostDot(t *testing.T) {
	cfg := func(strip bool) string {
		return fmt.Sprintf(`
stat_prefix: ingress
strip_trailing_host_dot: %v
route_config:
  name: local
  virtual_hosts:
  - name: example
    domains: ["example.com", "example.com:8080"]
    routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "example" } } }]
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`, strip)
	}
	for _, tc := range []struct {
		strip bool
		host  string
		want  int
	}{
		{true, "example.com.", 200},
		{true, "example.com.:8080", 200},
		{false, "example.com.", 404},
	} {
		e := newEnv(t, cfg(tc.strip))
		resp, _ := get(t, h1Client(t), "http://"+e.addr+"/", "host", tc.host)
		if resp.StatusCode != tc.want {
			t.Errorf("strip %v, host %q: %d, want %d", tc.strip, tc.host, resp.StatusCode, tc.want)
		}
	}
}
