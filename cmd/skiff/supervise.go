package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// supervise runs `skiff run` (args, without --supervise) under a small
// long-lived supervisor, for process managers that follow one pid and for
// containers, where skiff is PID 1:
//
//   - it becomes a child subreaper, so a hot-restart successor (a child of the
//     generation it replaces) is reparented to it when its parent exits;
//   - it forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the
//     current generation, the process that holds the runtime directory's lock;
//   - it reaps every child (and, as PID 1, every orphan reparented to it);
//   - it exits once no generation is left, with the last one's exit code.
func supervise(args []string, runtimeDir string, stderr io.Writer) error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("--supervise: becoming a subreaper: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--supervise: %w", err)
	}
	sigs := make(chan os.Signal, 16)
	forwarded := []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}
	signal.Notify(sigs, append(forwarded, syscall.SIGCHLD)...)
	defer signal.Stop(sigs)

	child := exec.Command(exe, append([]string{"run"}, args...)...)
	child.Stdin, child.Stdout, child.Stderr = nil, os.Stdout, os.Stderr
	if err := child.Start(); err != nil {
		return fmt.Errorf("--supervise: starting skiff: %w", err)
	}
	fmt.Fprintf(stderr, "skiff supervisor (pid %d): running skiff (pid %d)\n", os.Getpid(), child.Process.Pid)
	first := child.Process.Pid
	lastCode := 0
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			pid := currentGeneration(runtimeDir, first)
			if err := syscall.Kill(pid, sig.(syscall.Signal)); err != nil && !errors.Is(err, syscall.ESRCH) {
				fmt.Fprintf(stderr, "skiff supervisor: forwarding %v to pid %d: %v\n", sig, pid, err)
			}
			continue
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.ECHILD) {
				return exitError{lastCode} // no generation left
			}
			if err != nil || pid <= 0 {
				break // children remain, none exited now
			}
			switch {
			case ws.Exited():
				lastCode = ws.ExitStatus()
			case ws.Signaled():
				lastCode = 128 + int(ws.Signal())
			}
		}
	}
	return nil
}

// currentGeneration is the pid of the skiff that owns the runtime directory
// (it writes its pid into the lock file when it takes it), or fallback.
func currentGeneration(runtimeDir string, fallback int) int {
	b, err := os.ReadFile(filepath.Join(runtimeDir, "skiff.lock"))
	if err != nil {
		return fallback
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fallback
	}
	return pid
}

// withoutFlag removes --name and -name (with "=value" or a separate value when
// takesValue) from args.
func withoutFlag(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if a == "-"+name || a == "--"+name || a == "-"+name+"=true" || a == "--"+name+"=true" {
			continue
		}
		out = append(out, a)
	}
	return out
}
