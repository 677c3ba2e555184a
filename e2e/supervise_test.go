package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSupervise runs `skiff run --supervise`: the supervisor outlives hot
// restarts (SIGHUP sent to it is forwarded to the current generation), every
// generation is reaped, traffic and an open connection survive, and SIGTERM
// ends the last generation and then the supervisor, with its exit code 0 and
// no skiff process left behind.
func TestSupervise(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	cfg := writeFile(t, "bootstrap.yaml", simple(up.Addr).yaml(t))
	dir := filepath.Join(t.TempDir(), "run")
	sup := startProcess(t, []string{"run", "--supervise", "-c", cfg, "--log-encoding", "json", "--runtime-dir", dir}, procOpts{})
	sup.WaitStarted(t)
	addr := sup.Addr(t, "l")
	open := dial(t, addr)
	if err := echoRoundTrip(open, []byte("before")); err != nil {
		t.Fatal(err)
	}
	first := owner(t, dir)
	for i := range 2 {
		sup.Signal(t, syscall.SIGHUP)
		deadline := time.Now().Add(30 * time.Second)
		for o := owner(t, dir); (o == first || o == 0) && time.Now().Before(deadline); o = owner(t, dir) {
			time.Sleep(20 * time.Millisecond)
		}
		next := owner(t, dir)
		if next == first {
			t.Fatalf("restart %d: the runtime dir is still owned by pid %d", i+1, first)
		}
		waitGone(t, first)
		first = next
		if err := echoRoundTrip(open, []byte("after a restart")); err != nil {
			t.Fatalf("restart %d: the open connection broke: %v", i+1, err)
		}
		c := dial(t, addr)
		if err := echoRoundTrip(c, []byte("new")); err != nil {
			t.Fatalf("restart %d: %v", i+1, err)
		}
		c.Close()
	}
	if sup.Pid() == first {
		t.Fatal("the supervisor itself owns the runtime dir")
	}
	open.Close()
	sup.Signal(t, syscall.SIGTERM)
	if code := sup.Wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the supervisor exited %d, want 0 (the last generation's code)", code)
	}
	waitGone(t, first)
}

// owner is the pid in the runtime dir's lock file.
func owner(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "skiff.lock"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitGone waits until pid no longer exists (reaped, not a zombie).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	t.Fatalf("pid %d is still there:\n%s", pid, st)
}
