package h1

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// refusalHandler is a RefusalHandler: ServeStream answers 200, ServeRefused
// calls refused.
type refusalHandler struct {
	refused func(s http.ServerStream, err *Error)
}

func (refusalHandler) ServeStream(s http.ServerStream) { respond(s, "200", "") }

func (h refusalHandler) ServeRefused(s http.ServerStream, err *Error) { h.refused(s, err) }

// TestServerRefusalHandler: a handler that is a RefusalHandler answers the
// requests the codec refuses, as Envoy's codec has its connection manager
// answer them: on a stream without request headers whose response closes
// the connection; the codec writes nothing of its own, and Serve still
// returns the Error.
func TestServerRefusalHandler(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		status    int
		details   string
	}{
		{"no colon", "GET /x HTTP/1.1\r\nHost: a\r\nfoo bar\r\n\r\n", 400, DetailsCodecError},
		{"TE gzip", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, DetailsInvalidTransferEnc},
		{"no host", "GET /x HTTP/1.1\r\n\r\n", 400, DetailsMissingHost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type seen struct {
				err     *Error
				fields  int
				ended   bool
				readErr error
				proto   string
			}
			got := make(chan seen, 1)
			h := refusalHandler{func(s http.ServerStream, err *Error) {
				_, rerr := s.Read(make([]byte, 8))
				rr := s.(interface{ RequestReceived() bool })
				got <- seen{err, s.Header().Len(), s.EndedWithHeader() || rr.RequestReceived(), rerr, s.Protocol()}
				respond(s, "599", "refused by the manager", "x-from", "manager")
			}}
			s := startServer(t, testOptions(), h)
			s.send(tc.raw)
			resp, body := s.response("GET")
			if resp.StatusCode != 599 || body != "refused by the manager" || resp.Header.Get("x-from") != "manager" || !resp.Close {
				t.Errorf("response %d %q close=%v, want the handler's 599 with connection: close", resp.StatusCode, body, resp.Close)
			}
			if !s.closed() {
				t.Error("connection left open")
			}
			var e *Error
			if err := s.result(); !errors.As(err, &e) || e.Status != tc.status || e.Details != tc.details {
				t.Fatalf("Serve: %v, want an Error with status %d, details %s", err, tc.status, tc.details)
			}
			sn := <-got
			if sn.err != e || sn.fields != 0 || sn.ended || sn.readErr != error(e) || sn.proto != "HTTP/1.1" {
				t.Errorf("ServeRefused saw err %v, %d request fields, complete=%v, Read error %v, %s; want Serve's error, none, false, the error, HTTP/1.1",
					sn.err, sn.fields, sn.ended, sn.readErr, sn.proto)
			}
		})
	}
}

// TestServerRefusalHandlerSilent: a RefusalHandler that sends nothing leaves
// the answer to the codec (bodiless, connection: close); one that resets the
// stream gets no answer at all.
func TestServerRefusalHandlerSilent(t *testing.T) {
	const bad = "GET / HTTP/1.1\r\nHost: a\r\nfoo bar\r\n\r\n"
	t.Run("silent", func(t *testing.T) {
		s := startServer(t, testOptions(), refusalHandler{func(http.ServerStream, *Error) {}})
		s.send(bad)
		resp, body := s.response("GET")
		if resp.StatusCode != 400 || body != "" || !resp.Close {
			t.Errorf("response %d %q close=%v, want the codec's bodiless 400 with connection: close", resp.StatusCode, body, resp.Close)
		}
		if !s.closed() {
			t.Error("connection left open")
		}
	})
	t.Run("reset", func(t *testing.T) {
		s := startServer(t, testOptions(), refusalHandler{func(st http.ServerStream, _ *Error) { st.Reset(http.ResetCancel) }})
		s.send(bad)
		s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(s.client); len(b) != 0 {
			t.Errorf("got %q (%v), want nothing after a reset", b, err)
		}
		s.result()
	})
}

// TestServerRejectUnderscores: under RejectUnderscores a header field name
// with an underscore is refused with 400 (http1.unexpected_underscore), as
// the field is parsed: before the checks of the complete head (the missing
// Host here); otherwise the field passes.
func TestServerRejectUnderscores(t *testing.T) {
	const raw = "GET / HTTP/1.1\r\nx_y: 1\r\n\r\n"
	opts := testOptions()
	opts.RejectUnderscores = true
	s := startServer(t, opts, echo)
	s.send(raw)
	if resp, _ := s.response("GET"); resp.StatusCode != 400 || !resp.Close {
		t.Errorf("status %d close=%v, want 400 with connection: close", resp.StatusCode, resp.Close)
	}
	if !s.closed() {
		t.Error("connection left open")
	}
	var e *Error
	if err := s.result(); !errors.As(err, &e) || e.Details != DetailsUnexpectedUnderscore || e.Kind != KindMalformed {
		t.Errorf("Serve: %v, want a KindMalformed Error with details %s", err, DetailsUnexpectedUnderscore)
	}

	s = startServer(t, testOptions(), echo)
	s.send("GET / HTTP/1.1\r\nHost: a\r\nx_y: 1\r\n\r\n")
	if resp, _ := s.response("GET"); resp.StatusCode != 200 {
		t.Errorf("without RejectUnderscores: status %d, want 200", resp.StatusCode)
	}
}

// TestServerRequestReceived: RequestReceived says whether the whole request
// is in: no body; a Content-Length body all in the codec's buffer, or read
// to its last byte (before Read returns io.EOF); not a body still arriving.
func TestServerRequestReceived(t *testing.T) {
	type step struct {
		before, afterRead bool
	}
	for _, tc := range []struct {
		name, raw string
		read      int // bytes of body to read before the second look
		want      step
	}{
		{"no body", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, step{true, true}},
		{"body buffered", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", 0, step{true, true}},
		{"body arriving, read to its last byte", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel", 5, step{false, true}},
		{"body arriving", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel", 3, step{false, false}},
		{"chunked, not read", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0, step{false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan step, 1)
			var s *server
			s = startServer(t, testOptions(), handlerFunc(func(st http.ServerStream) {
				rr := st.(interface{ RequestReceived() bool })
				var sp step
				sp.before = rr.RequestReceived()
				if tc.read > 0 {
					if tc.read > 3 {
						s.send(strings.Repeat("o", tc.read-3))
					}
					if _, err := io.ReadFull(st, make([]byte, tc.read)); err != nil {
						t.Errorf("read: %v", err)
					}
				}
				sp.afterRead = rr.RequestReceived()
				got <- sp
				respond(st, "200", "")
			}))
			s.send(tc.raw)
			s.response("POST")
			if sp := <-got; sp != tc.want {
				t.Errorf("RequestReceived %+v, want %+v", sp, tc.want)
			}
		})
	}
}
