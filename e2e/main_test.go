package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// testVersion is the version stamped into the binary under test.
const testVersion = "e2e-test"

// skiffBin is the path of the skiff binary TestMain built.
var skiffBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "skiff-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	skiffBin = filepath.Join(dir, "skiff")
	if err := buildSkiff(skiffBin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		// Every child process was reaped and every test upstream closed by the
		// tests' cleanups, so no goroutine of the harness may be left.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goroutines leaked:", err)
			return 1
		}
	}
	return code
}

// TestBinaryInputs makes the cached result of this package depend on skiff's
// sources. go test caches a package's result keyed on the files its tests opened
// (logged only while tests run, not in TestMain); the sources read by the
// "go build" child are invisible to it, so without this a changed skiff would be
// served a cached e2e pass.
func TestBinaryInputs(t *testing.T) {
	if err := touchSources(".."); err != nil {
		t.Fatal(err)
	}
}

// touchSources opens every file the binary is built from (see TestBinaryInputs).
func touchSources(root string) error {
	return filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "e2e", "tools", "bench", "testdata":
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".go", ".yaml", ".mod", ".sum":
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			return f.Close()
		}
		return nil
	})
}

// buildSkiff builds ./cmd/skiff into out, with -race when the tests run with it.
// go test puts its own toolchain first in PATH, so "go" is the go that runs us.
func buildSkiff(out string) error {
	// -pgo=off: the tests check behaviour, which the profile never changes,
	// and a build that follows cmd/skiff/default.pgo takes minutes with -race.
	args := []string{"build", "-pgo=off", "-o", out, "-ldflags", "-X main.version=" + testVersion}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/skiffproxy/skiff/cmd/skiff")
	cmd := exec.Command("go", args...)
	cmd.Dir = ".." // the module root; the test runs in e2e/
	start := time.Now()
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %v: %v\n%s", args, err, b)
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "e2e: built %s (race=%t) in %v\n", out, raceEnabled, time.Since(start).Round(time.Millisecond))
	}
	return nil
}
