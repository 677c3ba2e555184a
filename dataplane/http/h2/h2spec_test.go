package h2

import (
	"io"
	"net"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/h2spectest"
)

// h2specHandler reads the request body and answers 200 with a body long enough
// for h2spec's flow-control cases (they need at least 5 bytes).
type h2specHandler struct{}

func (h2specHandler) ServeStream(s http.ServerStream) {
	if _, err := io.Copy(io.Discard, s); err != nil {
		return
	}
	var h http.Header
	h.Add(http.Status, "200")
	h.Add("content-type", "text/plain")
	if err := s.WriteHeader(&h, false); err != nil {
		return
	}
	if _, err := s.Write([]byte("skiff answers h2spec: a body of some length, for flow control\n")); err != nil {
		return
	}
	_ = s.End()
}

// TestH2spec runs the h2spec conformance suite (generic, http2 and hpack
// sections, strict cases included) against a server; any failure fails the
// test.
func TestH2spec(t *testing.T) {
	ts := startServer(t, ServerOptions{}, h2specHandler{})
	_, port, _ := net.SplitHostPort(ts.addr)
	h2spectest.Run(t, port)
}
