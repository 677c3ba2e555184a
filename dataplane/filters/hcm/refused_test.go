package hcm_test

import (
	"bufio"
	"io"
	nethttp "net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// accessLogYAML is an access log to path with format, for hcmYAML's extra.
func accessLogYAML(path, format string) string {
	return `access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: ` + path + `
    log_format: { text_format_source: { inline_string: "` + format + `" } }
`
}

// waitLog returns the access log at path once it has lines lines (or after
// 5 s).
func waitLog(path string, lines int) string {
	var log string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(path)
		if log = string(b); strings.Count(log, "\n") >= lines {
			break
		}
	}
	return log
}

// refusedExchange sends raw on a new connection and returns the response,
// its body, and whether the connection was closed after it.
func refusedExchange(t *testing.T, addr, raw string) (*nethttp.Response, string, bool) {
	t.Helper()
	c := dialRaw(t, addr)
	io.WriteString(c, raw)
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%q: no answer: %v", raw, err)
	}
	b, _ := io.ReadAll(resp.Body)
	_, err = br.ReadByte()
	c.Close() // as a client would: the server lingers until then
	return resp, string(b), err == io.EOF
}

// TestCodecRefusalLocalReply: a request the HTTP/1.1 codec refuses is
// answered as Envoy's codec has its connection manager answer it
// (sendProtocolError, sendLocalReply): the status's text as a text/plain
// body, the manager's date and server headers, "connection: close" and the
// connection closed; logged once, with the codec's details and DPE and no
// request headers; counted as a request answered before it was complete.
func TestCodecRefusalLocalReply(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {}))
	logPath := t.TempDir() + "/access.log"
	e := newEnv(t, hcmYAML("up", "max_request_headers_kb: 1\n"+
		accessLogYAML(logPath, `%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %PROTOCOL%\n`)),
		cluster(t, "up", false, up))
	want := ""
	for i, tc := range []struct {
		name, raw string
		status    int
		body, log string
	}{
		{"malformed header line", "GET / HTTP/1.1\r\nhost: a\r\nfoo bar\r\n\r\n", 400, "Bad Request",
			"- 400 DPE http1.codec_error HTTP/1.1"},
		{"oversized head", "GET / HTTP/1.1\r\nhost: a\r\nx-big: " + strings.Repeat("b", 2000) + "\r\n\r\n", 431,
			"Request Header Fields Too Large", "- 431 DPE http1.headers_too_large HTTP/1.1"},
		{"transfer-encoding gzip", "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n", 501, "Not Implemented",
			"- 501 DPE http1.invalid_transfer_encoding HTTP/1.1"},
	} {
		resp, body, closed := refusedExchange(t, e.addr, tc.raw)
		if resp.StatusCode != tc.status || body != tc.body || resp.Header.Get("content-type") != "text/plain" {
			t.Errorf("%s: %d %q (%s), want %d %q (text/plain)", tc.name, resp.StatusCode, body, resp.Header.Get("content-type"), tc.status, tc.body)
		}
		if resp.Header.Get("date") == "" || resp.Header.Get("server") != "envoy" {
			t.Errorf("%s: date %q, server %q, want the manager's", tc.name, resp.Header.Get("date"), resp.Header.Get("server"))
		}
		if !resp.Close || !closed {
			t.Errorf("%s: connection: close %v, closed %v, want both", tc.name, resp.Close, closed)
		}
		e.waitStat("http.ingress.downstream_rq_total", int64(i+1))
		want += tc.log + "\n"
	}
	if log := waitLog(logPath, 3); log != want {
		t.Errorf("access log:\n%s\nwant:\n%s", log, want)
	}
	e.waitStat("http.ingress.downstream_rq_4xx", 2)
	e.waitStat("http.ingress.downstream_rq_5xx", 1)
	e.waitStat("http.ingress.downstream_rq_too_large", 1)
	e.waitStat("http.ingress.downstream_cx_protocol_error", 3)
	e.waitStat("http.ingress.downstream_rq_response_before_rq_complete", 3)
}

// TestCodecRefusalLocalReplyConfig: local_reply_config rewrites the answer
// to a request the codec refused, as Envoy's does (it is a local reply).
func TestCodecRefusalLocalReplyConfig(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {}))
	e := newEnv(t, hcmYAML("up", `local_reply_config:
  mappers:
  - filter: { status_code_filter: { comparison: { op: EQ, value: { default_value: 400, runtime_key: lr.400 } } } }
    status_code: 421
    headers_to_add: [{ header: { key: x-mapped, value: "yes" } }]
  body_format:
    text_format: "[%RESPONSE_CODE%] %LOCAL_REPLY_BODY% %RESPONSE_CODE_DETAILS%"
`), cluster(t, "up", false, up))
	resp, body, closed := refusedExchange(t, e.addr, "GET / HTTP/1.1\r\nhost: a\r\nfoo bar\r\n\r\n")
	if resp.StatusCode != 421 || body != "[421] Bad Request http1.codec_error" || resp.Header.Get("x-mapped") != "yes" || !closed {
		t.Errorf("%d %q x-mapped=%q closed=%v, want 421 \"[421] Bad Request http1.codec_error\" with x-mapped, closed",
			resp.StatusCode, body, resp.Header.Get("x-mapped"), closed)
	}
}

// TestCodecRefusalHeaderTimeout: request_headers_timeout running out is
// answered as Envoy's onRequestHeaderTimeout: 408 "request header timeout"
// (no DPE), and the connection closes.
func TestCodecRefusalHeaderTimeout(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {}))
	logPath := t.TempDir() + "/access.log"
	e := newEnv(t, hcmYAML("up", "request_headers_timeout: 0.1s\n"+
		accessLogYAML(logPath, `%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n`)),
		cluster(t, "up", false, up))
	resp, body, closed := refusedExchange(t, e.addr, "GET / HTTP/1.1\r\nhost: a\r\n")
	if resp.StatusCode != 408 || body != "request header timeout" || !resp.Close || !closed {
		t.Errorf("%d %q close=%v closed=%v, want 408 \"request header timeout\", closed", resp.StatusCode, body, resp.Close, closed)
	}
	if log := waitLog(logPath, 1); log != "408 - request_header_timeout\n" {
		t.Errorf("access log %q", log)
	}
	e.waitStat("http.ingress.downstream_rq_header_timeout", 1)
}

// TestResponseBeforeRequestComplete: a response sent while the request body
// is still arriving closes an HTTP/1.1 connection, saying
// "connection: close", and is counted in
// downstream_rq_response_before_rq_complete, as Envoy's encodeHeaders does;
// a request whose body is all in stays on a persistent connection.
func TestResponseBeforeRequestComplete(t *testing.T) {
	e := newEnv(t, `
stat_prefix: ingress
route_config:
  name: local
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: "/" }
      direct_response: { status: 200, body: { inline_string: "early" } }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`)
	// The whole body is in: the connection goes on.
	c := dialRaw(t, e.addr)
	br := bufio.NewReader(c)
	for i := range 2 {
		io.WriteString(c, "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nabcd")
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "early" || resp.Close {
			t.Errorf("complete request %d: %d %q close=%v, want 200 \"early\" on a persistent connection", i, resp.StatusCode, b, resp.Close)
		}
	}
	e.waitStat("http.ingress.downstream_rq_total", 2)
	if n := e.stat("http.ingress.downstream_rq_response_before_rq_complete"); n != 0 {
		t.Errorf("downstream_rq_response_before_rq_complete = %d after complete requests", n)
	}

	// Six of ten bytes still to come: answered, then closed.
	resp, body, closed := refusedExchange(t, e.addr, "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabcd")
	if resp.StatusCode != 200 || body != "early" || !resp.Close || !closed {
		t.Errorf("incomplete request: %d %q close=%v closed=%v, want 200 \"early\" with connection: close, closed",
			resp.StatusCode, body, resp.Close, closed)
	}
	e.waitStat("http.ingress.downstream_rq_response_before_rq_complete", 1)
}

// TestUnderscoresRejectHTTP1: headers_with_underscores_action REJECT_REQUEST
// refuses an HTTP/1.1 request in the codec, as Envoy's does: 400 "Bad
// Request", http1.unexpected_underscore with DPE, the connection closed;
// before the manager's checks, so an HTTP/1.0 request gets that 400 rather
// than the 426 for HTTP/1.0.
func TestUnderscoresRejectHTTP1(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {}))
	logPath := t.TempDir() + "/access.log"
	e := newEnv(t, hcmYAML("up", "common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }\n"+
		accessLogYAML(logPath, `%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n`)),
		cluster(t, "up", false, up))
	for i, raw := range []string{
		"GET / HTTP/1.1\r\nhost: a\r\nx_y: 1\r\n\r\n",
		"GET / HTTP/1.0\r\nx_y: 1\r\n\r\n",
	} {
		resp, body, closed := refusedExchange(t, e.addr, raw)
		if resp.StatusCode != 400 || body != "Bad Request" || !resp.Close || !closed {
			t.Errorf("%q: %d %q close=%v closed=%v, want 400 \"Bad Request\", closed", raw, resp.StatusCode, body, resp.Close, closed)
		}
		e.waitStat("http.ingress.downstream_rq_total", int64(i+1))
	}
	const want = "400 DPE http1.unexpected_underscore\n400 DPE http1.unexpected_underscore\n"
	if log := waitLog(logPath, 2); log != want {
		t.Errorf("access log:\n%s\nwant:\n%s", log, want)
	}
}
