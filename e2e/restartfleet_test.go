package e2e

import (
	"bufio"
	"context"
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

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// A fleet is a skiff and every process that takes over from it by hot restart.
// The Proxy harness follows one process; a fleet follows them all:
//
//   - every process runs in one process group (successors started by skiff
//     inherit it; a takeover started by the test joins it), so the test can
//     list them in /proc and signal them together;
//   - every process writes its stdout and stderr straight into one pipe whose
//     read end the test holds, so a successor's logs are read like its
//     parent's, and nothing closes the pipe under a successor when its parent
//     exits (Proxy's cmd.Wait would, after its WaitDelay);
//   - the test process is a child subreaper, so a successor is reparented to it
//     when its parent exits and the fleet's reaper collects every exit status
//     of the group (wait4 on the process group: it never touches another test's
//     children).
//
// The cleanup sends SIGTERM (and SIGCONT, for a stopped process) to the group,
// SIGKILL after exitTimeout, and fails the test if a process the test did not
// kill exited other than with status 0, or if the logs hold a race report or
// a panic.
type fleet struct {
	t testing.TB
	// Dir is the runtime directory every process shares; Config the bootstrap.
	Dir, Config string
	args        []string // the first process's arguments, after "skiff"
	pgid        int

	logs     *logSink
	logR     *os.File
	logW     *os.File // kept open for takeovers; closed by the cleanup
	readDone chan struct{}

	mu       sync.Mutex
	exits    map[int]procExit
	exitCh   chan struct{} // closed and replaced on every exit
	expected map[int]bool  // pids whose exit status the test checks itself
	children map[int]bool  // pids the test started: only the reaper can reap them
	reaped   chan struct{} // closed once no process of the group is left
}

// procExit is how and when a process of the fleet ended.
type procExit struct {
	status syscall.WaitStatus
	at     time.Time
}

func (e procExit) String() string {
	switch {
	case e.status.Exited():
		return fmt.Sprintf("exit status %d", e.status.ExitStatus())
	case e.status.Signaled():
		return fmt.Sprintf("killed by signal %d (%v)", int(e.status.Signal()), e.status.Signal())
	}
	return fmt.Sprintf("wait status %#x", uint32(e.status))
}

var subreaper = sync.OnceValue(func() error { return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })

// startFleet writes bootstrap into a temporary directory, runs
//
//	skiff run -c FILE --log-encoding json --runtime-dir DIR [extra...]
//
// and waits until it has started.
func startFleet(t testing.TB, bootstrap string, extra ...string) *fleet {
	t.Helper()
	if err := subreaper(); err != nil {
		t.Skipf("the test process cannot become a child subreaper (needed to follow successors): %v", err)
	}
	cfg := writeFile(t, "bootstrap.yaml", bootstrap)
	dir := filepath.Join(t.TempDir(), "run")
	f := &fleet{
		t: t, Dir: dir, Config: cfg, logs: newLogSink(), readDone: make(chan struct{}),
		exits: map[int]procExit{}, exitCh: make(chan struct{}), expected: map[int]bool{}, children: map[int]bool{}, reaped: make(chan struct{}),
		args: append([]string{"run", "-c", cfg, "--log-encoding", "json", "--runtime-dir", dir}, extra...),
	}
	var err error
	if f.logR, f.logW, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	go f.read()
	pid, err := f.exec(f.args, &syscall.SysProcAttr{Setpgid: true})
	if err != nil {
		f.logW.Close()
		<-f.readDone
		f.logR.Close()
		t.Fatalf("starting %s: %v", skiffBin, err)
	}
	f.pgid = pid
	go f.reap()
	t.Cleanup(f.cleanup)
	if got := f.started(0); got != pid {
		t.Fatalf("skiff started with pid %d, want %d", got, pid)
	}
	return f
}

// exec starts skiff with args, writing into the fleet's pipe. Nothing in the
// test waits for it: the reaper does.
func (f *fleet) exec(args []string, attr *syscall.SysProcAttr) (int, error) {
	cmd := exec.Command(skiffBin, args...)
	cmd.Stdout, cmd.Stderr = f.logW, f.logW
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=100 "+os.Getenv("GORACE"))
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	cmd.Process.Release() // the reaper waits for it, by process group
	f.mu.Lock()
	f.children[pid] = true
	f.mu.Unlock()
	return pid, nil
}

// takeover starts another `skiff run` on the fleet's runtime directory, in the
// fleet's process group, with the first process's arguments or with args if
// given. It returns at once.
func (f *fleet) takeover(args ...string) int {
	f.t.Helper()
	if len(args) == 0 {
		args = f.args
	}
	pid, err := f.exec(args, &syscall.SysProcAttr{Setpgid: true, Pgid: f.pgid})
	if err != nil {
		f.t.Fatalf("starting a takeover: %v", err)
	}
	return pid
}

// read copies the pipe into the log sink one whole line at a time (processes
// writing at once interleave by line, never inside one).
func (f *fleet) read() {
	defer close(f.readDone)
	r := bufio.NewReaderSize(f.logR, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 {
			f.logs.Write(line)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			f.logs.close()
			return
		}
	}
}

// reap waits for every process of the group, the successors the test process
// inherits as a subreaper included, and records how each ended.
func (f *fleet) reap() {
	defer close(f.reaped)
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-f.pgid, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return // ECHILD: no process of the group is left
		}
		f.mu.Lock()
		f.exits[pid] = procExit{status: ws, at: time.Now()}
		close(f.exitCh)
		f.exitCh = make(chan struct{})
		f.mu.Unlock()
	}
}

func (f *fleet) cleanup() {
	t := f.t
	select {
	case <-f.reaped:
	default:
		// The group exists while the reaper runs, so its id is not reused yet.
		syscall.Kill(-f.pgid, syscall.SIGTERM)
		syscall.Kill(-f.pgid, syscall.SIGCONT)
		select {
		case <-f.reaped:
		case <-time.After(exitTimeout):
			t.Errorf("skiff processes %v still running %v after SIGTERM; sending SIGKILL", f.procs(), exitTimeout)
			syscall.Kill(-f.pgid, syscall.SIGKILL)
			<-f.reaped
		}
	}
	f.logW.Close()
	select {
	case <-f.readDone:
	case <-time.After(5 * time.Second):
		// Something outside the group holds the pipe: stop reading.
		f.logR.Close()
		<-f.readDone
	}
	f.logR.Close()
	f.mu.Lock()
	for pid, e := range f.exits {
		if !f.expected[pid] && !(e.status.Exited() && e.status.ExitStatus() == 0) {
			t.Errorf("skiff pid %d ended with %v, want exit status 0", pid, e)
		}
	}
	f.mu.Unlock()
	out := f.logs.String()
	for _, bad := range []string{"WARNING: DATA RACE", "panic: ", "fatal error: "} {
		if strings.Contains(out, bad) {
			t.Errorf("skiff's output contains %q", bad)
		}
	}
	if t.Failed() {
		t.Logf("skiff fleet %s\n--- output of every process ---\n%s", strings.Join(f.args, " "), tail(out, 300))
	}
}

// expect marks pid as a process whose exit status the test checks itself (it
// killed it, or it is meant to fail).
func (f *fleet) expect(pid int) {
	f.mu.Lock()
	f.expected[pid] = true
	f.mu.Unlock()
}

// kill sends sig to pid, which may then end however sig makes it.
func (f *fleet) kill(pid int, sig syscall.Signal) {
	f.t.Helper()
	f.expect(pid)
	if err := syscall.Kill(pid, sig); err != nil {
		f.t.Fatalf("kill %d %v: %v", pid, sig, err)
	}
}

// mark is the position in the logs after the last line read so far.
func (f *fleet) mark() int {
	lines, _ := f.logs.snapshot()
	return len(lines)
}

// waitLog waits up to timeout for a log line at position from or later for
// which match is true, and returns it with its position.
func (f *fleet) waitLog(from int, timeout time.Duration, what string, match func(LogLine) bool) (LogLine, int) {
	f.t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	gone := false
	for {
		lines, changed := f.logs.snapshot()
		for i := from; i < len(lines); i++ {
			if match(lines[i]) {
				return lines[i], i
			}
		}
		from = max(from, len(lines))
		if gone {
			f.t.Fatalf("waiting for %s: every skiff process has exited", what)
		}
		select {
		case <-changed:
		case <-f.reaped:
			gone = true
			select {
			case <-f.readDone:
			case <-time.After(time.Second):
			}
		case <-timer.C:
			f.t.Fatalf("waiting for %s: not logged within %v", what, timeout)
		}
	}
}

// findLog returns the first line at position from or later for which match
// is true, without waiting.
func (f *fleet) findLog(from int, match func(LogLine) bool) (LogLine, bool) {
	lines, _ := f.logs.snapshot()
	for _, l := range lines[min(from, len(lines)):] {
		if match(l) {
			return l, true
		}
	}
	return LogLine{}, false
}

// waitMsg waits for a line whose msg is msg, from position from.
func (f *fleet) waitMsg(from int, timeout time.Duration, msg string) (LogLine, int) {
	f.t.Helper()
	return f.waitLog(from, timeout, fmt.Sprintf("msg %q", msg), func(l LogLine) bool { return l.Msg() == msg })
}

// started waits for a "skiff started" line from position from and returns its pid.
func (f *fleet) started(from int) int {
	f.t.Helper()
	l, _ := f.waitMsg(from, startTimeout, "skiff started")
	return logPid(f.t, l)
}

// current is the pid of the last "skiff started" line.
func (f *fleet) current() int {
	f.t.Helper()
	lines, _ := f.logs.snapshot()
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i].Msg() == "skiff started" {
			return logPid(f.t, lines[i])
		}
	}
	f.t.Fatal(`no "skiff started" line yet`)
	return 0
}

func logPid(t testing.TB, l LogLine) int {
	t.Helper()
	pid, err := strconv.Atoi(l.Fields["pid"])
	if err != nil || pid <= 0 {
		t.Fatalf("log line without a pid: %s", l.Raw)
	}
	return pid
}

// logTime is the time a line was logged at.
func logTime(t testing.TB, l LogLine) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, l.Fields["time"])
	if err != nil {
		t.Fatalf("log line without a time: %s", l.Raw)
	}
	return ts
}

// addr is the address of listener name in the first "listener bound" line for
// it (successors log the inherited address again).
func (f *fleet) addr(name string) string {
	f.t.Helper()
	l, _ := f.waitLog(0, 30*time.Second, "listener "+name+" bound", func(l LogLine) bool {
		return l.Msg() == "listener bound" && l.Fields["listener"] == name
	})
	return l.Fields["address"]
}

// exit reports how pid ended, if the fleet's reaper has seen it end.
func (f *fleet) exit(pid int) (procExit, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.exits[pid]
	return e, ok
}

// waitExit waits up to timeout for pid to end. known is false if the process
// is gone without the fleet's reaper seeing it end (a skiff that was still
// running reaped its successor).
func (f *fleet) waitExit(pid int, timeout time.Duration) (e procExit, known bool) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f.mu.Lock()
		e, ok := f.exits[pid]
		ch := f.exitCh
		child := f.children[pid]
		f.mu.Unlock()
		if ok {
			return e, true
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			// Gone, so reaped: the reaper records it as soon as it is
			// scheduled again, which on a loaded machine can take a while.
			// A process the test started has no other parent to reap it, so
			// its record will come; a successor may have been reaped by its
			// parent, so its record may never come.
			grace := time.Second
			if child {
				grace = max(time.Until(deadline), grace)
			}
			select {
			case <-ch:
				continue
			case <-time.After(grace):
			}
			f.mu.Lock()
			e, ok = f.exits[pid]
			f.mu.Unlock()
			if !ok && child {
				f.t.Fatalf("skiff pid %d, started by the test, is gone but the fleet's reaper has not recorded its exit", pid)
			}
			return e, ok
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("skiff pid %d still running %v later", pid, timeout)
		}
		select {
		case <-ch:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitExitOK waits for pid to end and fails the test unless it exited 0 (or
// ended out of the reaper's sight).
func (f *fleet) waitExitOK(pid int, timeout time.Duration, what string) procExit {
	f.t.Helper()
	e, known := f.waitExit(pid, timeout)
	if known && !(e.status.Exited() && e.status.ExitStatus() == 0) {
		f.t.Fatalf("%s (pid %d) ended with %v, want exit status 0", what, pid, e)
	}
	return e
}

// procInfo is a process of the fleet's group, from /proc.
type procInfo struct {
	pid, ppid int
	state     string // R, S, T, Z, ...
}

// procs lists the processes of the fleet's group that have not ended
// (zombies left out).
func (f *fleet) procs() []procInfo { return groupProcs(f.pgid) }

// groupProcs lists the processes of process group pgid that have not ended
// (zombies left out).
func groupProcs(pgid int) []procInfo {
	var out []procInfo
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold anything, so split after
		// its last parenthesis.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		pgrp, _ := strconv.Atoi(fields[2])
		if pgrp != pgid || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		out = append(out, procInfo{pid: pid, ppid: ppid, state: fields[0]})
	}
	return out
}

// fds counts pid's open file descriptors, leaving out the splice pipes
// tcp_proxy keeps for reuse, which it returns apart in pipes (descriptors,
// two per pipe). Those sit in a sync.Pool and are closed when the garbage
// collector empties it, so how many are open at a moment depends on when the
// process last collected, not on whether something leaks. A splice pipe is
// a pipe whose read and write ends are both open in the process.
func fds(t testing.TB, pid int) (n, pipes int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("open files of pid %d: %v", pid, err)
	}
	type ends struct{ fds, r, w int }
	pipe := map[string]*ends{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "pipe:") {
			n++ // a descriptor closed since ReadDir counts as open: a leak would stay
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			n++
			continue
		}
		var flags int
		for line := range strings.Lines(string(info)) {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				f, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				flags = int(f)
			}
		}
		p := pipe[target]
		if p == nil {
			p = &ends{}
			pipe[target] = p
		}
		p.fds++
		switch flags & syscall.O_ACCMODE {
		case syscall.O_RDONLY:
			p.r++
		case syscall.O_WRONLY:
			p.w++
		}
	}
	for _, p := range pipe {
		if p.r > 0 && p.w > 0 {
			pipes += p.fds
		} else {
			n += p.fds
		}
	}
	return n, pipes
}

// openFiles describes pid's open file descriptors, one line each: the
// descriptor, what it points at, and for a TCP socket its local and remote
// addresses and state, as /proc shows them. A test that finds a descriptor
// too many logs it to say which.
func openFiles(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return []string{err.Error()}
	}
	socks := tcpSockets(pid)
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			target = err.Error()
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			if s, ok := socks[strings.TrimSuffix(inode, "]")]; ok {
				target += " " + s
			}
		}
		out = append(out, e.Name()+" -> "+target)
	}
	return out
}

// tcpSockets maps the inodes of the TCP sockets in pid's network namespace
// to "local remote state" in /proc/net/tcp's hexadecimal notation.
func tcpSockets(pid int) map[string]string {
	m := map[string]string{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 {
				continue
			}
			m[fs[9]] = f + " " + fs[1] + " " + fs[2] + " st=" + fs[3]
		}
	}
	return m
}

// settledFDs counts pid's open files as fds does once the count has stayed
// the same for five readings 100 ms apart (connections being set up or torn
// down come and go), within 10 s.
func settledFDs(t testing.TB, pid int) int {
	t.Helper()
	last, same := -1, 0
	for range 100 {
		n, _ := fds(t, pid)
		if n == last {
			if same++; same == 4 {
				return n
			}
		} else {
			last, same = n, 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// handover is what one hot restart looked like from outside.
type handover struct {
	how            string
	parent, pid    int       // the process handing over and its successor
	trigger        time.Time // when the test triggered it
	tookOver       time.Time // the successor's "took over from the parent"
	started        time.Time // the successor's "skiff started"
	parentExit     time.Time // when the parent was seen to end (zero if not seen)
	moved          int       // connections_moved in the parent's "handed over"
	adminRespPid   int64     // the pid StartHotRestart answered (admin only)
	adminRespEpoch uint32
}

// restart makes the running skiff, parent, hand over by the means how names
// ("sighup", "admin": StartHotRestart over admin.sock, "takeover": another
// skiff run on the runtime dir), waits for the successor to serve and for the
// parent to exit 0, and returns what it saw.
func (f *fleet) restart(how string, parent int) handover {
	f.t.Helper()
	h := handover{how: how, parent: parent}
	from := f.mark()
	h.trigger = time.Now()
	switch how {
	case "sighup":
		if err := syscall.Kill(parent, syscall.SIGHUP); err != nil {
			f.t.Fatalf("SIGHUP to pid %d: %v", parent, err)
		}
	case "admin":
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		r, err := f.admin().StartHotRestart(ctx, &adminv1.StartHotRestartRequest{})
		if err != nil {
			f.t.Fatalf("StartHotRestart: %v", err)
		}
		h.adminRespPid, h.adminRespEpoch = r.GetPid(), r.GetHotRestartEpoch()
	case "takeover":
		f.takeover()
	default:
		f.t.Fatalf("no restart trigger %q", how)
	}
	l, _ := f.waitMsg(from, startTimeout, "hot restart: took over from the parent")
	h.tookOver = logTime(f.t, l)
	l, _ = f.waitLog(from, startTimeout, "the successor's \"skiff started\"", func(l LogLine) bool {
		return l.Msg() == "skiff started" && l.Fields["pid"] != strconv.Itoa(parent)
	})
	h.pid, h.started = logPid(f.t, l), logTime(f.t, l)
	l, _ = f.waitMsg(from, startTimeout, "hot restart: handed over")
	h.moved, _ = strconv.Atoi(l.Fields["connections_moved"])
	if e := f.waitExitOK(parent, 30*time.Second, "the parent after handing over"); !e.at.IsZero() {
		h.parentExit = e.at
	}
	if how == "admin" && h.adminRespPid != int64(h.pid) {
		f.t.Fatalf("StartHotRestart answered pid %d, but pid %d took over", h.adminRespPid, h.pid)
	}
	return h
}

// admin is a new gRPC connection to the admin API on admin.sock, closed at the
// end of the test. (A connection made earlier stays with the process that
// answered it, even after a successor binds admin.sock anew.)
func (f *fleet) admin() adminv1.AdminServiceClient {
	f.t.Helper()
	cc, err := grpc.NewClient("unix://"+filepath.Join(f.Dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { cc.Close() })
	return adminv1.NewAdminServiceClient(cc)
}

// adminStats reads the stats matching filter (RE2) through an admin API.
func adminStats(t testing.TB, a adminv1.AdminServiceClient, filter string) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := a.GetStats(ctx, &adminv1.GetStatsRequest{Filter: filter})
	if err != nil {
		t.Fatalf("GetStats(%s): %v", filter, err)
	}
	out := map[string]int64{}
	for _, s := range r.GetStats() {
		out[s.GetName()] = int64(s.GetValue())
	}
	return out
}

// fileStats is what `skiff stats --runtime-dir DIR -o json` reads from the
// stats file.
type fileStats struct {
	Stats []struct {
		Name  string          `json:"name"`
		Value json.RawMessage `json:"value"`
	} `json:"stats"`
	Generations []struct {
		Generation uint64 `json:"generation"`
		PID        int    `json:"pid"`
		Live       bool   `json:"live"`
	} `json:"generations"`
}

func (s fileStats) value(name string) (int64, bool) {
	for _, st := range s.Stats {
		if st.Name == name {
			v, err := strconv.ParseInt(string(st.Value), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// statsFile runs `skiff stats --runtime-dir DIR -o json`.
func (f *fleet) statsFile() fileStats {
	f.t.Helper()
	r := runSkiff(f.t, "stats", "--runtime-dir", f.Dir, "-o", "json")
	if r.code != 0 {
		f.t.Fatalf("skiff stats: exit %d\n%s", r.code, r.stderr)
	}
	var s fileStats
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		f.t.Fatalf("skiff stats -o json: %v\n%s", err, r.stdout)
	}
	return s
}

// statCounter reads one stat from the stats file, failing if it is missing.
func (f *fleet) statCounter(name string) int64 {
	f.t.Helper()
	v, ok := f.statsFile().value(name)
	if !ok {
		f.t.Fatalf("the stats file has no %s", name)
	}
	return v
}
