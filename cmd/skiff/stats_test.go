package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/stats"
)

func runStats(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = statsCmd(args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestStatsCmd(t *testing.T) {
	dir := t.TempDir()
	st, err := stats.Open(filepath.Join(dir, statsFile), stats.WithCapacity(64))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Counter("listener.127.0.0.1_10000.downstream_cx_total").Add(3)
	st.Gauge("cluster.backend.upstream_cx_active").Set(-2)
	st.Counter("cluster.backend.upstream_cx_connect_fail")
	st.Counter("evil\x1b[2Jname").Inc()
	stats.NewServerStats(st, time.Now())

	out, errOut, err := runStats(t, "--runtime-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if errOut != "" {
		t.Fatalf("stderr for a live skiff: %q", errOut)
	}
	want := []string{
		"cluster.backend.upstream_cx_active: -2",
		"cluster.backend.upstream_cx_connect_fail: 0",
		`"evil\x1b[2Jname": 1`,
		"listener.127.0.0.1_10000.downstream_cx_total: 3",
		"server.hot_restart_generation: 1",
		"server.live: 1",
	}
	for _, w := range want {
		if !strings.Contains(out, w+"\n") {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}

	out, _, err = runStats(t, "--runtime-dir", dir, "--filter", `^cluster\.backend\.`, "--used-only")
	if err != nil || out != "cluster.backend.upstream_cx_active: -2\n" {
		t.Fatalf("filtered: %q, %v", out, err)
	}

	out, _, err = runStats(t, "--runtime-dir", dir, "-o", "json", "--filter", "listener|live")
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		Stats []struct {
			Name  string
			Value int64
			Type  string
			Mode  string `json:"import_mode"`
		}
		Generations []struct {
			Generation uint64
			Live       bool
		}
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	if len(j.Stats) != 2 || j.Stats[0].Value != 3 || j.Stats[0].Type != "counter" || j.Stats[1].Mode != "NeverImport" ||
		len(j.Generations) != 1 || !j.Generations[0].Live {
		t.Fatalf("json: %+v", j)
	}

	// The file a stopped skiff left still reads, with a note.
	st.Close()
	out, errOut, err = runStats(t, "--runtime-dir", dir, "--filter", "listener")
	if err != nil || out != "listener.127.0.0.1_10000.downstream_cx_total: 3\n" {
		t.Fatalf("stale: %q, %v", out, err)
	}
	if !strings.Contains(errOut, "no running skiff") || !strings.Contains(errOut, "exited") {
		t.Fatalf("stale note: %q", errOut)
	}
}

func TestStatsCmdErrors(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := runStats(t, "--runtime-dir", dir); err == nil || !strings.Contains(err.Error(), "no stats file") {
		t.Fatalf("missing file: %v", err)
	}
	if _, _, err := runStats(t, "--runtime-dir", dir, "--filter", "("); err == nil || !strings.Contains(err.Error(), "--filter") {
		t.Fatalf("bad regexp: %v", err)
	}
	if _, _, err := runStats(t, "-o", "yaml"); err == nil {
		t.Fatal("-o yaml accepted")
	}

	path := filepath.Join(dir, statsFile)
	st, err := stats.Open(path, stats.WithCapacity(16))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	b, _ := os.ReadFile(path)
	binary.NativeEndian.PutUint32(b[8:], 2) // the layout version
	os.WriteFile(path, b, 0o600)
	_, _, err = runStats(t, "--runtime-dir", dir)
	if err == nil || !strings.Contains(err.Error(), "layout version 2") {
		t.Fatalf("wrong version: %v", err)
	}
	os.WriteFile(path, []byte("not a region"), 0o600)
	if _, _, err = runStats(t, "--runtime-dir", dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt file: %v", err)
	}
}
