package h1

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// A requestCase is raw bytes sent to the server codec (with echo as the
// handler) and what must come of them: status 200 for the controls, or the
// error status the codec answers with and the Kind Serve returns.
type requestCase struct {
	name   string
	raw    string
	status int
	kind   Kind
}

const host = "Host: a\r\n"

// requestCases are the request-smuggling and malformed-message cases, and
// controls that must pass. They also seed FuzzServer.
var requestCases = []requestCase{
	// Controls.
	{"plain", "GET / HTTP/1.1\r\n" + host + "\r\n", 200, 0},
	{"leading CRLF", "\r\n\r\nGET / HTTP/1.1\r\n" + host + "\r\n", 200, 0},
	{"every method Envoy knows", "PROPFIND / HTTP/1.1\r\n" + host + "\r\n", 200, 0},
	{"TE chunked in capitals", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", 200, 0},
	{"chunk extension", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3;a=b;c\r\nabc\r\n0\r\n\r\n", 200, 0},
	{"tab in value", "GET / HTTP/1.1\r\n" + host + "X: a\tb\r\n\r\n", 200, 0},
	{"obs-text in value", "GET / HTTP/1.1\r\n" + host + "X: caf\xc3\xa9\r\n\r\n", 200, 0},

	// Framing: the smuggling family.
	{"CL and TE", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, KindFraming},
	{"TE and CL", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, KindFraming},
	{"identical content-lengths", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, KindFraming},
	{"content-length list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3, 3\r\n\r\nabc", 400, KindFraming},
	{"conflicting CL", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef", 400, KindFraming},
	{"conflicting CL list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 6\r\n\r\nabcdef", 400, KindFraming},
	{"CL plus sign", "POST / HTTP/1.1\r\n" + host + "Content-Length: +5\r\n\r\nabcde", 400, KindFraming},
	{"CL negative", "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n", 400, KindFraming},
	{"CL hex", "POST / HTTP/1.1\r\n" + host + "Content-Length: 0x5\r\n\r\nabcde", 400, KindFraming},
	{"CL inner space", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1 2\r\n\r\n", 400, KindFraming},
	{"CL empty", "POST / HTTP/1.1\r\n" + host + "Content-Length: \r\n\r\n", 400, KindFraming},
	{"CL overflow", "POST / HTTP/1.1\r\n" + host + "Content-Length: 99999999999999999999\r\n\r\n", 400, KindFraming},
	{"TE gzip", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\n\r\n", 501, KindFraming},
	{"TE chunked not last", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, gzip\r\n\r\n", 501, KindFraming},
	{"TE chunked twice", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, KindFraming},
	{"TE chunked twice in a list", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501, KindFraming},
	{"TE xchunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\n\r\n", 501, KindFraming},
	{"TE chunked with parameter", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked;q=1\r\n\r\n", 501, KindFraming},
	{"TE empty", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: \r\n\r\n", 501, KindFraming},
	{"TE identity", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: identity\r\n\r\n", 501, KindFraming},
	{"TE on CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, KindFraming},
	{"TE gzip then chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, KindFraming},
	{"body on CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 5\r\n\r\nabcde", 400, KindFraming},

	// Field syntax.
	{"space before colon", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, KindMalformed},
	{"tab before colon", "GET / HTTP/1.1\r\n" + host + "X\t: y\r\n\r\n", 400, KindMalformed},
	{"obs-fold", "GET / HTTP/1.1\r\n" + host + "X: a\r\n b\r\n\r\n", 400, KindMalformed},
	{"obs-fold of TE", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\n\tchunked\r\n\r\n", 400, KindMalformed},
	{"whitespace before first field", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, KindMalformed},
	{"no colon", "GET / HTTP/1.1\r\n" + host + "X\r\n\r\n", 400, KindMalformed},
	{"empty name", "GET / HTTP/1.1\r\n" + host + ": v\r\n\r\n", 400, KindMalformed},
	{"space in name", "GET / HTTP/1.1\r\n" + host + "X Y: z\r\n\r\n", 400, KindMalformed},
	{"non-token name", "GET / HTTP/1.1\r\n" + host + "X(: z\r\n\r\n", 400, KindMalformed},
	{"bare LF", "GET / HTTP/1.1\n" + "Host: a\n\n", 400, KindMalformed},
	{"bare LF in a field", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400, KindMalformed},
	{"bare CR in a value", "GET / HTTP/1.1\r\n" + host + "X: a\rb\r\n\r\n", 400, KindMalformed},
	{"NUL in a value", "GET / HTTP/1.1\r\n" + host + "X: a\x00b\r\n\r\n", 400, KindMalformed},
	{"DEL in a value", "GET / HTTP/1.1\r\n" + host + "X: a\x7fb\r\n\r\n", 400, KindMalformed},
	{"control in a value", "GET / HTTP/1.1\r\n" + host + "X: a\x1bb\r\n\r\n", 400, KindMalformed},

	// Request line and target.
	{"double space", "GET  / HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"no version", "GET /\r\n" + host + "\r\n", 400, KindMalformed},
	{"trailing space", "GET / HTTP/1.1 \r\n" + host + "\r\n", 400, KindMalformed},
	{"lower-case version", "GET / http/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"tab separator", "GET\t/ HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"space in target", "GET /a b HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"bad method", "G(T / HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"fragment", "GET /a#b HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"non-ASCII target", "GET /caf\xc3\xa9 HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"relative target", "GET a/b HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"asterisk for GET", "GET * HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"other scheme", "GET ftp://a/b HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"userinfo", "GET http://u@a/b HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"CONNECT path", "CONNECT /a HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, KindMalformed},
	{"unknown method", "FOO / HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},
	{"lower-case method", "get / HTTP/1.1\r\n" + host + "\r\n", 400, KindMalformed},

	// Host.
	{"no host", "GET / HTTP/1.1\r\n\r\n", 400, KindMissingHost},
	{"empty host", "GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, KindMissingHost},
	{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, KindMissingHost},
	{"host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, KindMalformed},
	{"host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, KindMalformed},
	{"host with path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, KindMalformed},

	// Chunked bodies.
	{"bad chunk size", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, KindMalformed},
	{"chunk size with space", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400, KindMalformed},
	{"chunk size bare LF", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400, KindMalformed},
	{"chunk data overrun", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400, KindMalformed},
	{"chunk size overflow", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400, KindMalformed},
	{"chunk size sign", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400, KindMalformed},
	{"chunk size 0x", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400, KindMalformed},
	{"chunk extension with a control", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3;a=\x01\r\nabc\r\n0\r\n\r\n", 400, KindMalformed},
	{"chunk extension bare CR", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n", 400, KindMalformed},
	{"trailer obs-fold", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n", 400, KindMalformed},
	{"trailer without colon", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nX\r\n\r\n", 400, KindMalformed},
}

func TestServerRequestCases(t *testing.T) {
	for _, tc := range requestCases {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			opts.CloseDelay = time.Second
			s := startServer(t, opts, echo)
			s.send(tc.raw)
			resp, _ := s.response("GET")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status == 200 {
				if resp.Close {
					t.Fatal("connection: close on a good request")
				}
				return
			}
			if !resp.Close || resp.ContentLength != 0 {
				t.Errorf("error response: close %v, content-length %d; want close and 0", resp.Close, resp.ContentLength)
			}
			if !s.closed() {
				t.Error("connection open after an error response")
			}
			var e *Error
			err := s.result()
			if !errors.As(err, &e) || e.Kind != tc.kind || e.Status != tc.status || e.Upstream {
				t.Fatalf("Serve = %#v, want a %v *Error with status %d", err, tc.kind, tc.status)
			}
			if e.Flags() != http.FlagDownstreamProtocolError || e.Details == "" {
				t.Errorf("flags %v, details %q; want DPE and details", e.Flags(), e.Details)
			}
		})
	}
}

func TestServerHeaderLimits(t *testing.T) {
	pad := func(n int) string { return strings.Repeat("p", n) }
	// A head of exactly size bytes: request line, host, one padded field,
	// the empty line.
	head := func(size int) string {
		base := "GET / HTTP/1.1\r\n" + host + "X: \r\n\r\n"
		return "GET / HTTP/1.1\r\n" + host + "X: " + pad(size-len(base)) + "\r\n\r\n"
	}
	for _, tc := range []struct {
		name     string
		opts     Options
		raw      string
		status   int
		kind     Kind
		details  string
		writeAll bool
	}{
		{"size at the limit", Options{MaxHeaderBytes: 300}, head(300), 200, 0, "", true},
		{"size over the limit", Options{MaxHeaderBytes: 300}, head(301), 431, KindHeadersTooLarge, DetailsHeadersTooLarge, true},
		{"size default", Options{}, head(DefaultMaxHeaderBytes), 200, 0, "", true},
		{"size default over", Options{}, head(DefaultMaxHeaderBytes + 1), 431, KindHeadersTooLarge, DetailsHeadersTooLarge, true},
		{"size without end", Options{}, "GET / HTTP/1.1\r\nX: " + pad(70<<10), 431, KindHeadersTooLarge, DetailsHeadersTooLarge, false},
		{"size beyond the pool", Options{MaxHeaderBytes: 100 << 10}, head(100 << 10), 200, 0, "", true},
		{"count at the limit", Options{MaxHeaders: 3}, "GET / HTTP/1.1\r\n" + host + "A: 1\r\nB: 2\r\n\r\n", 200, 0, "", true},
		{"count over the limit", Options{MaxHeaders: 3}, "GET / HTTP/1.1\r\n" + host + "A: 1\r\nB: 2\r\nC: 3\r\n\r\n", 431, KindTooManyHeaders, DetailsTooManyHeaders, true},
		{"count default over", Options{}, "GET / HTTP/1.1\r\n" + host + strings.Repeat("A: 1\r\n", DefaultMaxHeaders) + "\r\n", 431, KindTooManyHeaders, DetailsTooManyHeaders, true},
		{"trailer count", Options{MaxHeaders: 3}, "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431, KindTooManyHeaders, DetailsTooManyHeaders, true},
		{"trailer size", Options{MaxHeaderBytes: 300}, "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nA: " + pad(300) + "\r\n\r\n", 431, KindHeadersTooLarge, DetailsHeadersTooLarge, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.Buffers = testOptions().Buffers
			s := startServer(t, &opts, echo)
			go s.client.Write([]byte(tc.raw)) // may block: the server stops reading at the limit
			resp, _ := s.response("GET")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status == 200 {
				return
			}
			if !s.closed() {
				t.Error("connection open after 431")
			}
			var e *Error
			if err := s.result(); !errors.As(err, &e) || e.Kind != tc.kind || e.Details != tc.details {
				t.Fatalf("Serve = %v, want %v (%s)", err, tc.kind, tc.details)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	cause := errors.New("connection reset by peer")
	e := &Error{Kind: KindTruncated, Upstream: true, Msg: "connection ended in the body", Err: cause}
	if got := e.Error(); got != "h1: upstream truncated: connection ended in the body: connection reset by peer" {
		t.Fatalf("Error() = %q", got)
	}
	if !errors.Is(e, cause) {
		t.Fatal("Error does not unwrap to its cause")
	}
	if got := (&Error{Kind: KindHeadersTooLarge, Msg: "m"}).Error(); got != "h1: downstream headers_too_large: m" {
		t.Fatalf("Error() = %q", got)
	}
	if Kind(200).String() != "unknown" {
		t.Fatal("unknown Kind has a name")
	}
}
