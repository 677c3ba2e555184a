// Package runtimedir manages the directory where a skiff instance keeps its
// per-instance files: the lock that makes it the directory's owner, and later the
// reconfig socket, the admin socket and the stats region.
//
// Two skiffs with different runtime directories never see each other's files.
// Two skiffs given the same directory meet at its lock: the second one learns
// who owns it instead of silently sharing sockets and stats.
package runtimedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Default returns the per-user default runtime directory:
// $XDG_RUNTIME_DIR/skiff, else /run/user/<uid>/skiff when /run/user/<uid> exists,
// else <tmp>/skiff-<uid>.
func Default() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "skiff")
	}
	uid := os.Getuid()
	if d := fmt.Sprintf("/run/user/%d", uid); isDir(d) {
		return filepath.Join(d, "skiff")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("skiff-%d", uid))
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// Dir is an opened and locked runtime directory.
type Dir struct {
	Path string
	lock *os.File
}

// ErrInUse is returned (wrapped) by Open when another live process holds the
// directory.
var ErrInUse = errors.New("runtime directory in use")

// Open creates path (mode 0700) if needed, checks that it belongs to the current
// user and is not accessible to others, and takes its lock.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("runtime dir: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("runtime dir: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != os.Getuid() {
		return nil, fmt.Errorf("runtime dir %s: not owned by the current user (uid %d)", path, os.Getuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("runtime dir %s: mode %v gives access to other users; it must be 0700", path, fi.Mode().Perm())
	}
	lockPath := filepath.Join(path, "skiff.lock")
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("runtime dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(lockPath)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by skiff pid %s; give this instance its own --runtime-dir",
				ErrInUse, path, strings.TrimSpace(string(owner)))
		}
		return nil, fmt.Errorf("runtime dir: locking %s: %w", lockPath, err)
	}
	writePID(f)
	return &Dir{Path: path, lock: f}, nil
}

// Adopt returns the Dir at path whose lock a hot-restart parent handed over as
// lock (a descriptor of the same open lock file: the lock is shared with it and
// outlives the parent). The lock file keeps naming the parent until Claim.
func Adopt(path string, lock *os.File) *Dir {
	return &Dir{Path: path, lock: lock}
}

// Claim writes this process's pid into the lock file, as the directory's
// owner: a hot-restart successor does so once it takes over.
func (d *Dir) Claim() {
	writePID(d.lock)
}

// writePID overwrites the pid in the lock file, then cuts what is left of a
// longer one: a reader (skiff run --supervise forwarding a signal) never sees
// the file empty.
func writePID(f *os.File) {
	b := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if _, err := f.WriteAt(b, 0); err == nil {
		f.Truncate(int64(len(b)))
	}
}

// LockFile returns the open lock file, to hand to a hot-restart successor.
func (d *Dir) LockFile() *os.File { return d.lock }

// File returns the path of a file in the directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// Close releases the lock. The directory and its files stay.
func (d *Dir) Close() error {
	return d.lock.Close()
}
