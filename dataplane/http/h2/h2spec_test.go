package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
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

// buildH2spec builds github.com/summerwind/h2spec, pinned in tools/h2spec/go.mod,
// with the Go module proxy (or the module cache). SKIFF_H2SPEC names a prebuilt
// binary instead.
func buildH2spec(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("SKIFF_H2SPEC"); bin != "" {
		return bin
	}
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "..", "tools", "h2spec")
	bin := filepath.Join(t.TempDir(), "h2spec")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/summerwind/h2spec/cmd/h2spec")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building h2spec in %s: %v\n%s", dir, err, out)
	}
	return bin
}

var h2specSummary = regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// TestH2spec runs the h2spec conformance suite (generic, http2 and hpack
// sections, strict cases included) against a server; any failure fails the
// test.
func TestH2spec(t *testing.T) {
	if testing.Short() {
		t.Skip("h2spec: skipped in -short mode")
	}
	bin := buildH2spec(t)
	ts := startServer(t, ServerOptions{}, h2specHandler{})
	_, port, _ := net.SplitHostPort(ts.addr)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"-h", "127.0.0.1", "-p", port, "-o", "2", "--strict"}
	args = append(args, strings.Fields(os.Getenv("SKIFF_H2SPEC_ARGS"))...) // e.g. -v, or a section
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	m := h2specSummary.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("h2spec: %v, no summary line:\n%s", err, out.String())
	}
	t.Logf("h2spec: %s", m[0])
	if testing.Verbose() && os.Getenv("SKIFF_H2SPEC_ARGS") != "" {
		t.Log(out.String())
	}
	if failed, _ := strconv.Atoi(m[4]); failed > 0 || err != nil {
		t.Errorf("h2spec: %v\n%s", err, failures(out.String()))
	}
}

// failures keeps h2spec's "Failures:" section, or everything.
func failures(out string) string {
	if i := strings.Index(out, "Failures:"); i >= 0 {
		return out[i:]
	}
	return out
}
