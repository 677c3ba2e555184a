package runtimedir

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestOpenCreatesPrivateDirAndLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "run")
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("runtime dir mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	owner, _ := os.ReadFile(d.File("skiff.lock"))
	if strings.TrimSpace(string(owner)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q, want our pid", owner)
	}

	// The same directory is refused while d holds it (flock locks are per open
	// file description, so this models a second process), and free afterwards.
	_, err = Open(path)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Open: %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	// A different directory is independent.
	other, err := Open(filepath.Join(t.TempDir(), "b"))
	if err != nil {
		t.Fatalf("a second, different runtime dir: %v", err)
	}
	other.Close()

	d.Close()
	d2, err := Open(path)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	d2.Close()
}

func TestOpenRefusesSharedDir(t *testing.T) {
	path := t.TempDir()
	if err := os.Chmod(path, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "0700") {
		t.Fatalf("Open of a 0755 dir: %v, want a refusal naming 0700", err)
	}
}

func TestDefaultIsPerUser(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/4242")
	if got := Default(); got != "/run/user/4242/skiff" {
		t.Fatalf("Default() = %q with XDG_RUNTIME_DIR set", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got := Default(); !strings.HasSuffix(got, "skiff") && !strings.Contains(got, "skiff-"+strconv.Itoa(os.Getuid())) {
		t.Fatalf("Default() = %q, want a per-user path", got)
	}
}
