// Package h2spectest runs the h2spec HTTP/2 conformance suite
// (github.com/summerwind/h2spec, pinned in tools/h2spec/go.mod) against a
// server under test.
package h2spectest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

var summary = regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// Run runs every h2spec case (generic, http2 and hpack sections, strict
// cases included) against 127.0.0.1:port and fails t on any failure, with
// h2spec's list of failures. SKIFF_H2SPEC names a prebuilt h2spec binary;
// otherwise it is built from tools/h2spec with the Go module proxy or cache.
// SKIFF_H2SPEC_ARGS adds arguments (-v, or a section) and, with go test -v,
// shows the whole output.
func Run(t *testing.T, port string) {
	t.Helper()
	if testing.Short() {
		t.Skip("h2spec: skipped in -short mode")
	}
	bin := build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"-h", "127.0.0.1", "-p", port, "-o", "2", "--strict"}
	args = append(args, strings.Fields(os.Getenv("SKIFF_H2SPEC_ARGS"))...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	m := summary.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("h2spec: %v, no summary line:\n%s", err, out.String())
	}
	t.Logf("h2spec: %s", m[0])
	if testing.Verbose() && os.Getenv("SKIFF_H2SPEC_ARGS") != "" {
		t.Log(out.String())
	}
	if failed, _ := strconv.Atoi(m[4]); failed > 0 || err != nil {
		s := out.String()
		if i := strings.Index(s, "Failures:"); i >= 0 {
			s = s[i:]
		}
		t.Errorf("h2spec: %v\n%s", err, s)
	}
}

func build(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("SKIFF_H2SPEC"); bin != "" {
		return bin
	}
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "tools", "h2spec")
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
