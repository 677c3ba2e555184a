// Package kittest helps test HTTP filters without a connection manager: a
// recording ServerStream, Exchanges built on it, and route tables whose
// typed_per_filter_config the filters' factories build (Routes, Routed).
package kittest

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Stream is a ServerStream that records the response written to it.
type Stream struct {
	Req  http.Header
	Ctx  context.Context
	Prot string

	mu        sync.Mutex
	resp      http.Header
	body      []byte
	wrote     bool
	headerEnd bool
	ended     bool
	reset     bool
	resetCode http.ResetCode
}

// NewStream returns a stream whose request has the given method and path
// (and :authority example.com, :scheme http) and the header pairs kv.
func NewStream(ctx context.Context, method, path string, kv ...string) *Stream {
	s := &Stream{Ctx: ctx, Prot: "HTTP/1.1"}
	s.Req.Add(http.Method, method)
	s.Req.Add(http.Path, path)
	s.Req.Add(http.Authority, "example.com")
	s.Req.Add(http.Scheme, "http")
	for i := 0; i+1 < len(kv); i += 2 {
		s.Req.AddLower(kv[i], kv[i+1])
	}
	return s
}

// Exchange returns an Exchange for a request like NewStream's, with
// context.Background.
func Exchange(method, path string, kv ...string) (*http.Exchange, *Stream) {
	return ExchangeCtx(context.Background(), method, path, kv...)
}

// ExchangeCtx is Exchange with a context (for the exchange and the stream).
func ExchangeCtx(ctx context.Context, method, path string, kv ...string) (*http.Exchange, *Stream) {
	s := NewStream(ctx, method, path, kv...)
	return http.NewExchange(ctx, s), s
}

// Header implements http.ServerStream.
func (s *Stream) Header() *http.Header { return &s.Req }

// EndedWithHeader reports that the request has no body.
func (s *Stream) EndedWithHeader() bool { return true }

// Read implements http.ServerStream: the request has no body.
func (s *Stream) Read([]byte) (int, error) { return 0, io.EOF }

// Trailers implements http.ServerStream.
func (s *Stream) Trailers() *http.Header { return &http.Header{} }

// WriteHeader implements http.ServerStream.
func (s *Stream) WriteHeader(h *http.Header, end bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h.CopyTo(&s.resp)
	s.wrote, s.headerEnd, s.ended = true, end, end
	return nil
}

// Write implements http.ServerStream.
func (s *Stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = append(s.body, p...)
	return len(p), nil
}

// End implements http.ServerStream.
func (s *Stream) End() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	return nil
}

// EndWithTrailers implements http.ServerStream.
func (s *Stream) EndWithTrailers(*http.Header) error { return s.End() }

// Reset implements http.ServerStream.
func (s *Stream) Reset(code http.ResetCode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset, s.resetCode = true, code
}

// Context implements http.ServerStream.
func (s *Stream) Context() context.Context { return s.Ctx }

// Protocol implements http.ServerStream.
func (s *Stream) Protocol() string { return s.Prot }

// Response is what was written: whether headers were, their copy, the body,
// and whether the response ended.
func (s *Stream) Response() (wrote bool, h *http.Header, body string, ended bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var c http.Header
	s.resp.CopyTo(&c)
	return s.wrote, &c, string(s.body), s.ended
}

// Status returns the written :status, or "".
func (s *Stream) Status() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resp.Value(http.Status)
}

// ResetCode reports whether the stream was reset, and how.
func (s *Stream) ResetCode() (http.ResetCode, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resetCode, s.reset
}

// Clear forgets the response, so that a Stream and its Exchange can serve
// another request in a benchmark.
func (s *Stream) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resp.Reset()
	s.body = s.body[:0]
	s.wrote, s.headerEnd, s.ended, s.reset = false, false, false, false
}

// Context returns a filter.Context over a fresh in-memory stats store, with
// HTTP filters' stat prefix "http.test.".
func Context() (*filter.Context, *stats.Store) {
	st := stats.NewStore()
	return &filter.Context{Logger: slog.New(slog.DiscardHandler), Stats: st, HTTPStatPrefix: "http.test."}, st
}

// Value returns the value of the counter or gauge called name in st, and
// whether it exists.
func Value(st *stats.Store, name string) (int64, bool) {
	for _, s := range st.Snapshot() {
		if s.Name == name {
			return s.Value, true
		}
	}
	return 0, false
}

// Addr parses an address:port, panicking on error (tests only).
func Addr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// Routes compiles a RouteConfiguration written in YAML as a connection
// manager's inline route_config, its typed_per_filter_config entries built by
// reg's factories with fc.
func Routes(tb testing.TB, reg *filter.Registry, fc *filter.Context, y string) *route.Table {
	tb.Helper()
	t, err := CompileRoutes(tb, reg, fc, y)
	if err != nil {
		tb.Fatalf("compiling the routes: %v", err)
	}
	return t
}

// CompileRoutes is Routes returning the compile error.
func CompileRoutes(tb testing.TB, reg *filter.Registry, fc *filter.Context, y string) (*route.Table, error) {
	tb.Helper()
	var rc routev3.RouteConfiguration
	if err := protoyaml.Unmarshal([]byte(y), &rc); err != nil {
		tb.Fatalf("parsing %s: %v", y, err)
	}
	return route.CompileInline(&rc, route.Options{FilterConfigs: reg.RouteConfigs(fc), Runtime: fc.Runtime})
}

// Routed returns an Exchange like Exchange's (with :authority host), its
// Route matched in t (nil when no route matches).
func Routed(t *route.Table, method, host, path string, kv ...string) (*http.Exchange, *Stream) {
	e, s := Exchange(method, path, kv...)
	e.Request.Set(http.Authority, host)
	if r := t.Match(e.Request, route.ExchangeRandom(e)); r != nil {
		e.Route = r
	}
	return e, s
}
