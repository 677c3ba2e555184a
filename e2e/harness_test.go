package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts of the harness. They bound waits for things that must happen; none of
// them is a performance assertion.
const (
	startTimeout = 30 * time.Second // from exec to "skiff started"
	exitTimeout  = 20 * time.Second // from SIGTERM (or a bad config) to exit
	ioTimeout    = 60 * time.Second // deadline of every client connection
)

// Proxy is a skiff child process. Start one with startSkiff (a data plane from a
// bootstrap, waited for until it serves) or startProcess (any command line).
//
// The process runs in its own process group. The test's cleanup sends SIGTERM to
// the group if the process is still running, SIGKILL if it has not exited
// exitTimeout later, and always reaps it; it then fails the test if skiff exited
// non-zero after that SIGTERM or if its stderr holds a data race report or a
// panic, and logs skiff's output if the test failed.
type Proxy struct {
	// ConfigPath is the bootstrap file, "" if the command line has none.
	ConfigPath string
	// RuntimeDir is the --runtime-dir startSkiff passed.
	RuntimeDir string

	cmd    *exec.Cmd
	stderr *logSink
	stdout *logSink
	done   chan struct{} // closed once the process is reaped
	state  *os.ProcessState
	err    error // from cmd.Wait

	mu    sync.Mutex
	addrs map[string][]string // listener name -> bound addresses, in log order
}

// procOpts are the less common settings of startProcess.
type procOpts struct {
	env []string // added to the test's environment
}

// startProcess starts the skiff binary with args and returns at once.
func startProcess(t testing.TB, args []string, o procOpts) *Proxy {
	t.Helper()
	p := &Proxy{stderr: newLogSink(), stdout: newLogSink(), done: make(chan struct{})}
	cmd := exec.Command(skiffBin, args...)
	cmd.Stdout = p.stdout
	cmd.Stderr = p.stderr
	// A -race binary sleeps atexit_sleep_ms (1 s by default) before it exits, to
	// let other threads report races; a shorter wait keeps the tests quick.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=100 "+os.Getenv("GORACE"))
	cmd.Env = append(cmd.Env, o.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Should anything inherit skiff's stdout or stderr and outlive it, Wait gives
	// up on the copy after this long instead of blocking the test.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", skiffBin, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		p.state = cmd.ProcessState
		p.stderr.close()
		p.stdout.close()
		close(p.done)
	}()
	t.Cleanup(func() { p.cleanup(t) })
	return p
}

func (p *Proxy) cleanup(t testing.TB) {
	select {
	case <-p.done:
	default:
		p.signalGroup(syscall.SIGTERM)
		killed := false
		select {
		case <-p.done:
		case <-time.After(exitTimeout):
			t.Errorf("skiff (pid %d) still running %v after SIGTERM; sending SIGKILL", p.cmd.Process.Pid, exitTimeout)
			p.signalGroup(syscall.SIGKILL)
			killed = true
			<-p.done
		}
		if !killed && p.state.ExitCode() != 0 {
			t.Errorf("skiff (pid %d) exited with %v after SIGTERM at the end of the test, want exit status 0", p.cmd.Process.Pid, p.state)
		}
	}
	p.endSuccessors(t)
	out := p.stderr.String()
	for _, bad := range []string{"WARNING: DATA RACE", "panic: ", "fatal error: "} {
		if strings.Contains(out, bad) {
			t.Errorf("skiff's stderr contains %q", bad)
		}
	}
	if t.Failed() {
		t.Logf("skiff %s: %v\n--- stderr ---\n%s\n--- stdout ---\n%s", strings.Join(p.cmd.Args[1:], " "), p.state, tail(out, 200), tail(p.stdout.String(), 50))
	}
}

// endSuccessors stops what is left of skiff's process group once skiff
// itself has exited: the successors of its hot restarts, which outlive it. A
// group with members keeps its id, so signalling it cannot reach a stranger.
func (p *Proxy) endSuccessors(t testing.TB) {
	pgid := p.cmd.Process.Pid
	if len(groupProcs(pgid)) == 0 {
		return
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(exitTimeout)
	for len(groupProcs(pgid)) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("skiff successors %v still running %v after SIGTERM; sending SIGKILL", groupProcs(pgid), exitTimeout)
			syscall.Kill(-pgid, syscall.SIGKILL)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signalGroup signals skiff's process group, unless skiff was already reaped
// (its pid, and so the group id, could then be reused).
func (p *Proxy) signalGroup(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// Signal sends sig to the skiff process.
func (p *Proxy) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// Pid is the process id of skiff.
func (p *Proxy) Pid() int { return p.cmd.Process.Pid }

// Exited is closed once skiff has exited and been reaped.
func (p *Proxy) Exited() <-chan struct{} { return p.done }

// Wait waits up to timeout for skiff to exit and returns its exit code (-1 if
// a signal killed it).
func (p *Proxy) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.state.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("skiff (pid %d) did not exit within %v", p.Pid(), timeout)
		return 0
	}
}

// Stop sends SIGTERM and checks that skiff exits with status 0 within exitTimeout.
func (p *Proxy) Stop(t testing.TB) {
	t.Helper()
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t, exitTimeout); code != 0 {
		t.Fatalf("skiff exited with %v after SIGTERM, want 0", p.state)
	}
}

// Stderr is everything skiff wrote to stderr so far.
func (p *Proxy) Stderr() string { return p.stderr.String() }

// Stdout is everything skiff wrote to stdout so far.
func (p *Proxy) Stdout() string { return p.stdout.String() }

// Logs returns the lines skiff wrote to stderr so far.
func (p *Proxy) Logs() []LogLine {
	lines, _ := p.stderr.snapshot()
	return lines
}

// WaitLog waits up to timeout for a stderr line for which match is true and
// returns it. It fails the test if skiff exits or the time is up first.
func (p *Proxy) WaitLog(t testing.TB, timeout time.Duration, what string, match func(LogLine) bool) LogLine {
	t.Helper()
	l, err := p.stderr.wait(timeout, match)
	if err != nil {
		t.Fatalf("waiting for %s on skiff's stderr: %v", what, err)
	}
	return l
}

// WaitMsg waits for a log line whose msg is msg.
func (p *Proxy) WaitMsg(t testing.TB, timeout time.Duration, msg string) LogLine {
	t.Helper()
	return p.WaitLog(t, timeout, fmt.Sprintf("msg %q", msg), func(l LogLine) bool { return l.Msg() == msg })
}

// WaitStarted waits for skiff's "skiff started" line and records the addresses of
// the "listener bound" lines before it (every listener is bound by then).
func (p *Proxy) WaitStarted(t testing.TB) {
	t.Helper()
	p.WaitMsg(t, startTimeout, "skiff started")
	addrs := map[string][]string{}
	for _, l := range p.Logs() {
		if l.Msg() == "listener bound" {
			name, addr := l.Fields["listener"], l.Fields["address"]
			if name == "" || addr == "" {
				t.Fatalf("listener bound line without listener or address: %s", l.Raw)
			}
			addrs[name] = append(addrs[name], addr)
		}
	}
	p.mu.Lock()
	p.addrs = addrs
	p.mu.Unlock()
}

// Addrs returns every address listener name is bound to, its address first and
// then its additional_addresses, as host:port with the port the system chose.
func (p *Proxy) Addrs(t testing.TB, name string) []string {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.addrs[name]
	if len(a) == 0 {
		t.Fatalf("skiff logged no \"listener bound\" line for listener %q (has: %v)", name, p.addrs)
	}
	return a
}

// Addr returns the first address listener name is bound to.
func (p *Proxy) Addr(t testing.TB, name string) string {
	t.Helper()
	return p.Addrs(t, name)[0]
}

// startSkiff writes bootstrap into a temporary directory and runs
//
//	skiff run -c FILE --log-encoding json --runtime-dir DIR [extra...]
//
// then waits until skiff has started and bound its listeners.
func startSkiff(t testing.TB, bootstrap string, extra ...string) *Proxy {
	t.Helper()
	cfg := writeFile(t, "bootstrap.yaml", bootstrap)
	dir := filepath.Join(t.TempDir(), "run")
	args := append([]string{"run", "-c", cfg, "--log-encoding", "json", "--runtime-dir", dir}, extra...)
	p := startProcess(t, args, procOpts{})
	p.ConfigPath, p.RuntimeDir = cfg, dir
	p.WaitStarted(t)
	return p
}

// result is the outcome of a skiff process that was expected to end by itself.
type result struct {
	code           int
	stdout, stderr string
	logs           []LogLine
}

// runSkiff runs skiff with args and waits up to exitTimeout for it to exit.
func runSkiff(t testing.TB, args ...string) result {
	t.Helper()
	p := startProcess(t, args, procOpts{})
	code := p.Wait(t, exitTimeout)
	return result{code: code, stdout: p.Stdout(), stderr: p.Stderr(), logs: p.Logs()}
}

// writeFile writes content to a new file name in a temporary directory.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func tail(s string, lines int) string {
	ls := strings.SplitAfter(s, "\n")
	if len(ls) <= lines {
		return s
	}
	return fmt.Sprintf("[... %d lines ...]\n", len(ls)-lines) + strings.Join(ls[len(ls)-lines:], "")
}

// LogLine is a line skiff wrote. Fields holds its attributes when the line is a
// log record in slog's JSON or text encoding, and is nil otherwise (a panic, a
// usage message).
type LogLine struct {
	Raw    string
	Fields map[string]string
}

// Msg is the line's msg attribute.
func (l LogLine) Msg() string { return l.Fields["msg"] }

// Level is the line's level attribute (INFO, WARN, DEBUG, ...).
func (l LogLine) Level() string { return l.Fields["level"] }

func parseLogLine(raw string) LogLine {
	l := LogLine{Raw: raw}
	if strings.HasPrefix(raw, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(raw), &m) == nil {
			l.Fields = make(map[string]string, len(m))
			for k, v := range m {
				if s, ok := v.(string); ok {
					l.Fields[k] = s
				} else {
					b, _ := json.Marshal(v)
					l.Fields[k] = string(b)
				}
			}
		}
		return l
	}
	if f, ok := parseTextRecord(raw); ok {
		l.Fields = f
	}
	return l
}

// parseTextRecord parses a line of slog's TextHandler: key=value pairs separated
// by spaces, values quoted with strconv.Quote when they need it.
func parseTextRecord(s string) (map[string]string, bool) {
	if !strings.HasPrefix(s, "time=") {
		return nil, false
	}
	out := map[string]string{}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return nil, false
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return nil, false
			}
			val, _ = strconv.Unquote(q)
			s = s[len(q):]
		} else {
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		out[key] = val
		s = strings.TrimPrefix(s, " ")
	}
	return out, true
}

// logSink collects a process's output as lines and lets tests wait for one.
type logSink struct {
	mu      sync.Mutex
	buf     bytes.Buffer // everything
	partial []byte       // the line being written
	lines   []LogLine
	changed chan struct{} // closed and replaced on every new line, and at close
	closed  bool
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

func (s *logSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(b)
	s.partial = append(s.partial, b...)
	added := false
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		s.lines = append(s.lines, parseLogLine(string(s.partial[:i])))
		s.partial = s.partial[i+1:]
		added = true
	}
	if added {
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return len(b), nil
}

// close marks the end of the output (the process exited).
func (s *logSink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 {
		s.lines = append(s.lines, parseLogLine(string(s.partial)))
		s.partial = nil
	}
	s.closed = true
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *logSink) snapshot() ([]LogLine, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LogLine(nil), s.lines...), s.changed
}

var errExited = errors.New("skiff exited")

func (s *logSink) wait(timeout time.Duration, match func(LogLine) bool) (LogLine, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	seen := 0
	for {
		s.mu.Lock()
		lines, changed, closed := s.lines[seen:], s.changed, s.closed
		s.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, nil
			}
		}
		seen += len(lines)
		if closed {
			return LogLine{}, errExited
		}
		select {
		case <-changed:
		case <-timer.C:
			return LogLine{}, fmt.Errorf("not seen within %v", timeout)
		}
	}
}
