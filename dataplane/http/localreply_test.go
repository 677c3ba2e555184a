package http_test

import (
	"context"
	"io"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// stream is a ServerStream that records the response.
type stream struct {
	req, resp http.Header
	body      []byte
	ended     bool
}

func (s *stream) Header() *http.Header               { return &s.req }
func (s *stream) EndedWithHeader() bool              { return true }
func (s *stream) Read([]byte) (int, error)           { return 0, io.EOF }
func (s *stream) Trailers() *http.Header             { return &http.Header{} }
func (s *stream) Reset(http.ResetCode)               {}
func (s *stream) Context() context.Context           { return context.Background() }
func (s *stream) Protocol() string                   { return "HTTP/1.1" }
func (s *stream) End() error                         { s.ended = true; return nil }
func (s *stream) EndWithTrailers(*http.Header) error { return s.End() }
func (s *stream) Write(p []byte) (int, error) {
	s.body = append(s.body, p...)
	return len(p), nil
}
func (s *stream) WriteHeader(h *http.Header, end bool) error {
	h.CopyTo(&s.resp)
	s.ended = end
	return nil
}

func (s *stream) Response() (bool, *http.Header, string, bool) {
	return true, &s.resp, string(s.body), s.ended
}

func (s *stream) Clear() {
	s.resp.Reset()
	s.body = s.body[:0]
	s.ended = false
}

func newExchange(method, path string, kv ...string) (*http.Exchange, *stream) {
	s := &stream{}
	s.req.Add(http.Method, method)
	s.req.Add(http.Path, path)
	for i := 0; i+1 < len(kv); i += 2 {
		s.req.Add(kv[i], kv[i+1])
	}
	return http.NewExchange(context.Background(), s), s
}

func TestLocalReply(t *testing.T) {
	e, s := newExchange("GET", "/")
	e.Response.Add("x-from-filter", "1")
	if err := e.LocalReply(503, "no healthy upstream", "no_healthy_upstream", http.FlagNoHealthyUpstream); err != nil {
		t.Fatal(err)
	}
	_, h, body, ended := s.Response()
	if h.Value(":status") != "503" || h.Value("content-length") != "19" || h.Value("content-type") != "text/plain" ||
		h.Value("x-from-filter") != "1" || body != "no healthy upstream" || !ended {
		t.Errorf("reply %s%q ended %v", h, body, ended)
	}
	if e.Info.ResponseCode != 503 || e.Info.ResponseCodeDetails != "no_healthy_upstream" || e.Info.ResponseFlags.String() != "UH" {
		t.Errorf("info %+v", e.Info)
	}
}

func TestLocalReplyHead(t *testing.T) {
	e, s := newExchange("HEAD", "/")
	if err := e.LocalReply(404, "not found", "route_not_found", http.FlagNoRouteFound); err != nil {
		t.Fatal(err)
	}
	_, h, body, ended := s.Response()
	if h.Value(":status") != "404" || h.Value("content-length") != "9" || body != "" || !ended {
		t.Errorf("reply %s%q", h, body)
	}
}

func TestLocalReplyEmpty(t *testing.T) {
	e, s := newExchange("OPTIONS", "/")
	if err := e.LocalReply(200, "", "cors_response", 0); err != nil {
		t.Fatal(err)
	}
	_, h, body, ended := s.Response()
	if h.Len() != 1 || h.Value(":status") != "200" || body != "" || !ended {
		t.Errorf("reply %s%q", h, body)
	}
}

// TestLocalReplyContentHeaders: as Envoy's prepareLocalReply, a
// content-type the caller added stays with a body, and content-type and
// content-length go without one.
func TestLocalReplyContentHeaders(t *testing.T) {
	e, s := newExchange("GET", "/")
	e.Response.Add("content-type", "application/json")
	if err := e.LocalReply(503, `{"e":1}`, "d", 0); err != nil {
		t.Fatal(err)
	}
	_, h, body, _ := s.Response()
	if h.Value("content-type") != "application/json" || h.Value("content-length") != "7" || body != `{"e":1}` {
		t.Errorf("reply with a body: %s%q", h, body)
	}
	e, s = newExchange("GET", "/")
	e.Response.Add("content-type", "application/json")
	e.Response.Add("content-length", "12")
	if err := e.LocalReply(503, "", "d", 0); err != nil {
		t.Fatal(err)
	}
	if _, h, _, _ := s.Response(); h.Has("content-type") || h.Has("content-length") {
		t.Errorf("reply without a body: %s", h)
	}
}

func TestLocalReplyGRPC(t *testing.T) {
	for _, tc := range []struct {
		ct, status, grpcStatus, msg string
		explicit                    int64
	}{
		{"application/grpc", "200", "7", "access denied%0A100%25 \xe2", -1},
		{"application/grpc+proto", "200", "7", "access denied%0A100%25 \xe2", -1},
		{"application/grpc;charset=x", "200", "8", "access denied%0A100%25 \xe2", 8},
		{"application/grpcx", "403", "", "", -1},
		{"application/json", "403", "", "", -1},
	} {
		e, s := newExchange("POST", "/svc/M", "content-type", tc.ct)
		var err error
		if tc.explicit >= 0 {
			err = e.LocalReplyGRPC(403, uint32(tc.explicit), "access denied\n100% \xe2", "d", 0)
		} else {
			err = e.LocalReply(403, "access denied\n100% \xe2", "d", 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		_, h, body, ended := s.Response()
		if h.Value(":status") != tc.status || h.Value("grpc-status") != tc.grpcStatus || !ended {
			t.Errorf("%s: reply %s%q", tc.ct, h, body)
		}
		if tc.grpcStatus == "" {
			continue
		}
		if want := "access denied%0A100%25 %E2"; h.Value("grpc-message") != want || body != "" || h.Value("content-type") != "application/grpc" {
			t.Errorf("%s: reply %s%q", tc.ct, h, body)
		}
		if e.Info.ResponseCode != 200 {
			t.Errorf("response code %d", e.Info.ResponseCode)
		}
	}
}

func TestLocalReplyAllocs(t *testing.T) {
	e, s := newExchange("GET", "/")
	n := testing.AllocsPerRun(100, func() {
		s.Clear()
		e.Response.Reset()
		if err := e.LocalReply(429, "local_rate_limited", "local_rate_limited", http.FlagRateLimited); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Errorf("LocalReply allocates %v times", n)
	}
}

func TestGRPCStatusFromHTTP(t *testing.T) {
	for status, want := range map[int]uint32{400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14, 500: 2, 418: 2} {
		if got := http.GRPCStatusFromHTTP(status); got != want {
			t.Errorf("%d: %d, want %d", status, got, want)
		}
	}
}
