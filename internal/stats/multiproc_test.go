package stats

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The test binary re-executes itself as a child process in one of these roles
// (see TestMain); it talks to the test over stdin and stdout, one word a line.
const (
	childEnv   = "SKIFF_STATS_TEST_CHILD"
	childPath  = "SKIFF_STATS_TEST_PATH"
	childID    = "SKIFF_STATS_TEST_ID"
	churnIters = 5000
)

func childMain(role string) int {
	path := os.Getenv(childPath)
	in := bufio.NewScanner(os.Stdin)
	s, err := Open(path, WithCapacity(4096))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	switch role {
	case "parent":
		// The old generation: counts, waits for its successor, counts more
		// while it "drains", and exits.
		c := s.Counter("cluster.a.upstream_cx_total")
		c.Add(1000)
		g := s.Gauge("cluster.a.upstream_cx_active")
		g.Add(3)
		s.GaugeMode("server.live", NeverImport).Set(1)
		s.Scope("cluster.removed.").Counter("upstream_cx_total").Add(7)
		fmt.Println("ready")
		in.Scan()
		c.Add(500)
		g.Add(-3)
		if err := s.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 1
		}
		return 0
	case "churn":
		// Creates and releases stats as fast as it can, in step with another
		// churning process, on names of its own and names both use.
		id := os.Getenv(childID)
		fmt.Println("ready")
		in.Scan()
		for i := range churnIters {
			s.Counter(fmt.Sprint("shared.", i%100)).Inc()
			sc := s.Scope(fmt.Sprintf("churn.%s.%d.", id, i))
			sc.Counter("upstream_cx_total").Inc()
			sc.GaugeMode("membership_total", NeverImport).Inc()
			sc.Gauge("upstream_cx_active").Inc()
			common := s.Scope(fmt.Sprint("common.", i%7, "."))
			common.Counter("x").Inc()
			sc.Close()
			common.Close()
		}
		fmt.Println("done")
		in.Scan()
		s.Close()
		return 0
	case "crash":
		s.Counter("crash.c").Add(5)
		s.Scope("crash.scope.").Counter("x").Inc()
		fmt.Println("ready")
		in.Scan()
		os.Exit(3) // no Close: the holds stay, the locks go
	case "crash-locked":
		// Dies in the middle of an allocator operation, with the lock held and
		// the structures half changed.
		s.Counter("crash.c").Add(5)
		r := s.reg
		if err := r.lock(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 1
		}
		r.begin()
		r.hdr32(hSlotsUsed).Store(r.g.slotCap)
		r.hdr32(hSlotFree).Store(0)
		r.hdr32(hSlotHW).Add(3)
		os.Exit(4)
	}
	return 2
}

type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startChild(t *testing.T, role, path string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{childEnv + "=" + role, childPath + "=" + path}, env...)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out.(*os.File).SetReadDeadline(time.Now().Add(60 * time.Second))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return &child{cmd: cmd, in: in, out: bufio.NewScanner(out)}
}

func (c *child) expect(t *testing.T, word string) {
	t.Helper()
	if !c.out.Scan() || c.out.Text() != word {
		t.Fatalf("child said %q (%v), want %q", c.out.Text(), c.out.Err(), word)
	}
}

func (c *child) send(t *testing.T, word string) {
	t.Helper()
	if _, err := fmt.Fprintln(c.in, word); err != nil {
		t.Fatal(err)
	}
}

func (c *child) wait(t *testing.T, code int) {
	t.Helper()
	err := c.cmd.Wait()
	if got := c.cmd.ProcessState.ExitCode(); got != code {
		t.Fatalf("child exited %d (%v), want %d", got, err, code)
	}
}

// The hot-restart case with real processes: the parent counts, the successor
// maps the region and continues, the parent exits, and the successor's values
// include everything the parent counted.
func TestCountersContinueAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	parent := startChild(t, "parent", path)
	parent.expect(t, "ready")

	s := openTest(t, path)
	if s.Generation() != 2 {
		t.Fatalf("successor generation %d", s.Generation())
	}
	c := s.Counter("cluster.a.upstream_cx_total")
	g := s.Gauge("cluster.a.upstream_cx_active")
	live := s.GaugeMode("server.live", NeverImport)
	if c.Value() != 1000 || g.Value() != 3 || live.Value() != 0 {
		t.Fatalf("successor starts with counter %d, gauge %d, live %d; want 1000, 3, 0", c.Value(), g.Value(), live.Value())
	}
	c.Inc()
	g.Inc()
	live.Set(1)

	parent.send(t, "exit")
	parent.wait(t, 0)
	if c.Value() != 1501 || g.Value() != 1 || live.Value() != 1 {
		t.Fatalf("after the parent exited: counter %d, gauge %d, live %d; want 1501, 1, 1", c.Value(), g.Value(), live.Value())
	}
	snap := readTest(t, path)
	if _, ok := statOf(snap, "cluster.removed.upstream_cx_total", KindCounter); ok {
		t.Fatal("the parent's own stat outlived it")
	}
	if st, _ := statOf(snap, "server.live", KindGauge); st.Value != 1 || len(st.Generations) != 1 || st.Generations[0] != 2 {
		t.Fatalf("server.live in the file: %+v", st)
	}
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

// Two processes allocate and free at the same time; nothing is lost or
// corrupted.
func TestConcurrentAllocatorsAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	s := openTest(t, path, WithCapacity(4096))
	a := startChild(t, "churn", path, childID+"=a")
	b := startChild(t, "churn", path, childID+"=b")
	a.expect(t, "ready")
	b.expect(t, "ready")
	a.send(t, "go")
	b.send(t, "go")
	a.expect(t, "done")
	b.expect(t, "done")

	snap := readTest(t, path)
	for i := range 100 {
		st, ok := statOf(snap, fmt.Sprint("shared.", i), KindCounter)
		if want := int64(2 * churnIters / 100); !ok || st.Value != want || len(st.Generations) != 2 {
			t.Fatalf("shared.%d = %+v, want %d held by both", i, st, want)
		}
	}
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
	a.send(t, "exit")
	b.send(t, "exit")
	a.wait(t, 0)
	b.wait(t, 0)
	snap = readTest(t, path)
	if len(snap.Stats) != 1 || snap.Stats[0].Name != "stats.overflow" || snap.Stats[0].Value != 0 {
		t.Fatalf("left after both exited: %+v", snap.Stats)
	}
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

func TestCrashedGenerationReclaimed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	c := startChild(t, "crash", path)
	c.expect(t, "ready")
	s := openTest(t, path)
	if st, ok := statOf(readTest(t, path), "crash.c", KindCounter); !ok || st.Value != 5 {
		t.Fatalf("crash.c before the crash: %+v", st)
	}
	c.send(t, "die")
	c.wait(t, 3)
	if n, err := s.Sweep(); err != nil || n != 2 {
		t.Fatalf("Sweep freed %d (%v), want the crashed child's 2 own stats (stats.overflow is shared)", n, err)
	}
	snap := readTest(t, path)
	if len(snap.Stats) != 1 || len(snap.Generations) != 1 {
		t.Fatalf("after the sweep: %+v %+v", snap.Stats, snap.Generations)
	}
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
}

func TestCrashWithAllocatorLockHeld(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	c := startChild(t, "crash-locked", path)
	c.wait(t, 4)
	if snap := readTest(t, path); snap.Consistent {
		t.Fatal("a reader did not notice the operation in progress")
	}
	s := openTest(t, path)
	if err := s.reg.verify(); err != nil {
		t.Fatal(err)
	}
	s.Counter("after").Inc()
	snap := readTest(t, path)
	if !snap.Consistent || len(snap.Stats) != 2 {
		t.Fatalf("after repair: consistent %v, %+v", snap.Consistent, snap.Stats)
	}
}
