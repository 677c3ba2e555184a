package hcm_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	nethttp "net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerEcho is an upstream that answers with the request's header fields,
// one "name: value" line each (net/http's canonical names, sorted; each
// field of a repeated name on its own line), and counts the requests.
func headerEcho(t *testing.T, hits *atomic.Int32) string {
	return upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		hits.Add(1)
		var lines []string
		for name, vs := range r.Header {
			for _, v := range vs {
				lines = append(lines, strings.ToLower(name)+": "+v)
			}
		}
		sort.Strings(lines)
		io.WriteString(w, strings.Join(lines, "\n")+"\n")
	}))
}

// echoed returns the value lines of name in a headerEcho answer, joined
// with "|" ("" if none).
func echoed(body, name string) string {
	var vs []string
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			vs = append(vs, v)
		}
	}
	return strings.Join(vs, "|")
}

// TestRefusedUpgradeClosesConnection: an upgrade the configuration does not
// allow gets 403 with "connection: close" and the connection closes, as in
// Envoy, so that bytes sent after the upgrade request's head (a smuggled
// request) are never read as a request of their own.
func TestRefusedUpgradeClosesConnection(t *testing.T) {
	for _, tc := range []struct{ name, extra, upgrade string }{
		{"no upgrade_configs", "", "websocket"},
		{"type not configured", "upgrade_configs: [{ upgrade_type: websocket }]\n", "spdy/3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int32
			e := newEnv(t, hcmYAML("up", tc.extra), cluster(t, "up", false, headerEcho(t, &hits)))
			c := dialRaw(t, e.addr)
			io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: "+tc.upgrade+
				"\r\n\r\nHELLOGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := nethttp.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(resp.Body)
			if resp.StatusCode != 403 || !resp.Close {
				t.Errorf("refused upgrade: %d close=%v %v, want 403 with connection: close", resp.StatusCode, resp.Close, resp.Header)
			}
			rest, err := io.ReadAll(br)
			if err != nil || len(rest) != 0 {
				t.Errorf("after the 403: %q %v, want the connection closed", rest, err)
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("the upstream got %d requests, want none", n)
			}
			e.waitStat("http.ingress.downstream_rq_ws_on_non_ws_route", 1)
		})
	}
}

// TestXFFJoinedAndAppended: the x-forwarded-for fields of a request are one
// list, joined with ",", as Envoy's inline header; the trusted hops are
// counted from its end and the peer's address is appended with "," and no
// space (Utility::appendXff).
func TestXFFJoinedAndAppended(t *testing.T) {
	var hits atomic.Int32
	cfg := hcmYAML("up", "use_remote_address: true\nxff_num_trusted_hops: 1\n")
	e := newEnv(t, cfg, cluster(t, "up", false, headerEcho(t, &hits)))
	for _, tc := range []struct{ name, fields, xff, ext string }{
		{"two fields", "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n", "1.2.3.4,5.6.7.8,127.0.0.1", "5.6.7.8"},
		{"an empty field", "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For:\r\nX-Forwarded-For: 9.9.9.9\r\n", "1.2.3.4,9.9.9.9,127.0.0.1", "9.9.9.9"},
		{"one field", "X-Forwarded-For: 1.2.3.4, 5.6.7.8\r\n", "1.2.3.4, 5.6.7.8,127.0.0.1", "5.6.7.8"},
		{"none", "", "127.0.0.1", "127.0.0.1"},
	} {
		got := rawExchange(t, e.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"+tc.fields+"\r\n", 5*time.Second)
		_, body, _ := strings.Cut(got, "\r\n\r\n")
		if xff := echoed(body, "x-forwarded-for"); xff != tc.xff {
			t.Errorf("%s: upstream x-forwarded-for %q, want %q", tc.name, xff, tc.xff)
		}
		if tc.name != "none" { // (a request of its own without x-forwarded-for is internal)
			if ext := echoed(body, "x-envoy-external-address"); ext != tc.ext {
				t.Errorf("%s: x-envoy-external-address %q, want %q", tc.name, ext, tc.ext)
			}
		}
	}
}

// TestXForwardedProto: with use_remote_address, a client's x-forwarded-proto
// stays when there are trusted hops in front and is overwritten when there
// are none; without it, it stays; a missing one is set.
func TestXForwardedProto(t *testing.T) {
	var hits atomic.Int32
	up := cluster(t, "up", false, headerEcho(t, &hits))
	for _, tc := range []struct {
		name, extra, xfp, want string
	}{
		{"edge", "use_remote_address: true\n", "https", "http"},
		{"trusted hop", "use_remote_address: true\nxff_num_trusted_hops: 1\n", "https", "https"},
		{"trusted hop, none sent", "use_remote_address: true\nxff_num_trusted_hops: 1\n", "", "http"},
		{"not the edge", "", "https", "https"},
	} {
		e := newEnv(t, hcmYAML("up", tc.extra), up)
		c := h1Client(t)
		hdr := []string{}
		if tc.xfp != "" {
			hdr = append(hdr, "x-forwarded-proto", tc.xfp)
		}
		_, body := get(t, c, "http://"+e.addr+"/", hdr...)
		if got := echoed(body, "x-forwarded-proto"); got != tc.want {
			t.Errorf("%s: upstream x-forwarded-proto %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestConnectionNominatedHeaders: the fields an HTTP/1.1 request's
// connection header nominates are removed, as Envoy's HTTP/1 codec does; a
// connection header with 10 tokens or more, or nominating an
// x-forwarded-* field Envoy protects, a pseudo-header or a long te, gets 400
// (http1.connection_header_rejected) and the connection closes.
func TestConnectionNominatedHeaders(t *testing.T) {
	var hits atomic.Int32
	e := newEnv(t, hcmYAML("up", ""), cluster(t, "up", false, headerEcho(t, &hits)))
	got := rawExchange(t, e.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nConnection: x-other , close\r\n"+
		"X-Secret: 1\r\nx-other: 2\r\nX-Kept: 3\r\nTE: trailers, gzip\r\n\r\n", 5*time.Second)
	_, body, _ := strings.Cut(got, "\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 200 ") || echoed(body, "x-secret") != "" || echoed(body, "x-other") != "" ||
		echoed(body, "x-kept") != "3" || echoed(body, "connection") != "" {
		t.Errorf("nominated fields:\n%s", got)
	}
	nine := "Connection: a,b,c,d,e,f,g,h,close\r\n"
	if got := rawExchange(t, e.addr, "GET / HTTP/1.1\r\nHost: a\r\n"+nine+"\r\n", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
		t.Errorf("9 tokens: %q", got)
	}
	for _, conn := range []string{
		"Connection: a,b,c,d,e,f,g,h,i,j\r\n",
		"Connection: a,b,c,d,e\r\nConnection: f,g,h, ,i\r\n", // a blank token counts
		"Connection: X-Forwarded-For\r\nX-Forwarded-For: 1.2.3.4\r\n",
		"Connection: close, x-forwarded-host\r\n",
		"Connection: x-forwarded-proto\r\n",
		"Connection: :authority\r\n",
		"Connection: te\r\nte: trailers, " + strings.Repeat("x", 250) + "\r\n",
	} {
		got := rawExchange(t, e.addr, "GET / HTTP/1.1\r\nHost: a\r\n"+conn+"\r\n", 5*time.Second)
		resp, err := nethttp.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
		if err != nil {
			t.Fatalf("%q: %v", conn, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 400 || !resp.Close || string(b) != "Bad Request" {
			t.Errorf("%q: %d close=%v %q, want 400 Bad Request with connection: close", conn, resp.StatusCode, resp.Close, b)
		}
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("the upstream got %d requests, want 2", n)
	}
	e.waitStat("http.ingress.downstream_rq_4xx", 7)
	e.waitStat("http.ingress.downstream_cx_protocol_error", 7)
}

// TestInternalHeadersStripped: an external request loses every x-envoy-*
// header Envoy's cleanInternalHeaders removes.
func TestInternalHeadersStripped(t *testing.T) {
	var hits atomic.Int32
	e := newEnv(t, hcmYAML("up", ""), cluster(t, "up", false, headerEcho(t, &hits)))
	names := []string{"retriable-status-codes", "retriable-header-names", "retry-on", "retry-grpc-on", "max-retries",
		"upstream-alt-stat-name", "upstream-rq-timeout-ms", "upstream-rq-per-try-timeout-ms",
		"upstream-rq-timeout-alt-response", "expected-rq-timeout-ms", "force-trace", "ip-tags", "original-url",
		"hedge-on-per-try-timeout"}
	var req strings.Builder
	req.WriteString("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n")
	for _, n := range names {
		req.WriteString("x-envoy-" + n + ": 1\r\n")
	}
	req.WriteString("\r\n")
	got := rawExchange(t, e.addr, req.String(), 5*time.Second)
	_, body, _ := strings.Cut(got, "\r\n\r\n")
	for _, n := range names {
		if v := echoed(body, "x-envoy-"+n); v != "" && !(n == "expected-rq-timeout-ms" && v == "15000") {
			t.Errorf("x-envoy-%s reached the upstream: %q", n, v)
		}
	}
}

// TestMissingHost: a request without a host (HTTP/1.0 without
// default_host_for_http_10, HTTP/2 with neither :authority nor host) gets
// 400, as in Envoy (missing_host_header).
func TestMissingHost(t *testing.T) {
	var hits atomic.Int32
	up := cluster(t, "up", false, headerEcho(t, &hits))
	e := newEnv(t, hcmYAML("up", "http_protocol_options: { accept_http_10: true }\n"), up)
	if got := rawExchange(t, e.addr, "GET / HTTP/1.0\r\n\r\n", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.0 400 ") {
		t.Errorf("HTTP/1.0 without host: %q", got)
	}

	e2 := newEnv(t, "codec_type: HTTP2\n"+hcmYAML("up", ""), up)
	_, fr := dialH2(t, e2.addr)
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("HTTP/2 without :authority: %v", err)
		}
		if hf, ok := f.(*http2.HeadersFrame); ok && hf.StreamID == 1 {
			fields, err := dec.DecodeFull(hf.HeaderBlockFragment())
			if err != nil || len(fields) == 0 || fields[0].Name != ":status" || fields[0].Value != "400" {
				t.Errorf("HTTP/2 without :authority: %v %v, want :status 400", fields, err)
			}
			break
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the upstream got %d requests, want none", n)
	}
}

// TestHTTPSURLOnPlaintextEdge: an edge proxy (use_remote_address, no trusted
// hops) refuses an absolute https URL over plaintext with 403, as Envoy's
// codec does (http1.https_url_on_plaintext_connection); behind a trusted hop
// it is served.
func TestHTTPSURLOnPlaintextEdge(t *testing.T) {
	var hits atomic.Int32
	up := cluster(t, "up", false, headerEcho(t, &hits))
	for _, tc := range []struct {
		extra  string
		status string
	}{
		{"use_remote_address: true\n", "403"},
		{"use_remote_address: true\nxff_num_trusted_hops: 1\n", "200"},
	} {
		e := newEnv(t, hcmYAML("up", tc.extra), up)
		got := rawExchange(t, e.addr, "GET https://a/x HTTP/1.1\r\nhost: a\r\n\r\n", 5*time.Second)
		if !strings.HasPrefix(got, "HTTP/1.1 "+tc.status+" ") {
			t.Errorf("%q: %q, want %s", tc.extra, got, tc.status)
		}
	}
}

// TestInlineHeadersJoined: repeated fields of Envoy's inline headers are one
// field, their values joined with ",", both ways: user-agent in the request
// and content-type in the response reach the other side joined, while
// repeated fields of other names (accept, x-custom) stay as they came.
func TestInlineHeadersJoined(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header()["Content-Type"] = []string{"text/plain", "charset=utf-8"}
		w.Header()["X-Custom"] = []string{"1", "2"}
		fmt.Fprintf(w, "user-agent %q accept %q\n", r.Header.Values("User-Agent"), r.Header.Values("Accept"))
	}))
	e := newEnv(t, hcmYAML("up", ""), cluster(t, "up", false, up))
	got := rawExchange(t, e.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"+
		"User-Agent: a\r\nAccept: x\r\nUser-Agent: b\r\nAccept: y\r\n\r\n", 5*time.Second)
	head, body, _ := strings.Cut(got, "\r\n\r\n")
	if want := `user-agent ["a,b"] accept ["x" "y"]`; !strings.Contains(body, want) {
		t.Errorf("the upstream saw %q, want %s", body, want)
	}
	lower := strings.ToLower(head)
	if !strings.Contains(lower, "\r\ncontent-type: text/plain,charset=utf-8\r\n") || strings.Count(lower, "content-type:") != 1 {
		t.Errorf("response head without one joined content-type:\n%s", head)
	}
	if strings.Count(lower, "x-custom:") != 2 {
		t.Errorf("response head without its two x-custom fields:\n%s", head)
	}
}
