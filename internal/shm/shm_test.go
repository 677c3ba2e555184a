package shm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func tempFile(t *testing.T, size int64) (string, *os.File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "region")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path, f
}

func TestMapSharesBetweenMappings(t *testing.T) {
	path, f := tempFile(t, 8192)
	a, err := Map(f, 8192)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	b, err := Map(f2, 8192)
	if err != nil {
		t.Fatal(err)
	}
	wa, wb := Uint64(a.Bytes(), 4096), Uint64(b.Bytes(), 4096)
	wa.Add(5)
	wb.Add(2)
	if wa.Load() != 7 {
		t.Fatalf("shared word = %d, want 7", wa.Load())
	}

	// After Detach, a's pointer stays usable, keeps the preserved prefix and no
	// longer shares.
	if err := a.Detach(4104); err != nil {
		t.Fatal(err)
	}
	if wa.Load() != 7 {
		t.Fatalf("detached word = %d, want the preserved 7", wa.Load())
	}
	wa.Add(100)
	if wb.Load() != 7 {
		t.Fatalf("a write after Detach reached the file: %d", wb.Load())
	}
	if err := a.Detach(0); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if err := b.Detach(0); err != nil {
		t.Fatal(err)
	}
}

func TestMapRefusesShortFile(t *testing.T) {
	_, f := tempFile(t, 100)
	if _, err := Map(f, 4096); err == nil {
		t.Fatal("mapping past the end of the file succeeded")
	}
}

func TestWordChecks(t *testing.T) {
	b := make([]byte, 16)
	for _, off := range []int{-8, 9, 16, 12} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Uint64 at %d did not panic", off)
				}
			}()
			Uint64(b, off)
		}()
	}
	Uint32(b, 12).Store(1)
	Int64(b, 8).Store(-1)
}

func TestLocksArePerOpenFile(t *testing.T) {
	path, f := tempFile(t, 0)
	g, err := os.Open(path) // read-only: may test, not take
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	h, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	if ok, err := TryLock(f, 7); !ok || err != nil {
		t.Fatalf("TryLock: %v %v", ok, err)
	}
	if ok, err := TryLock(f, 7); !ok || err != nil {
		t.Fatalf("retaking a held lock: %v %v", ok, err)
	}
	if locked, err := Locked(g, 7); !locked || err != nil {
		t.Fatalf("Locked from another open file = %v, %v", locked, err)
	}
	if locked, _ := Locked(f, 7); locked {
		t.Fatal("Locked reports the caller's own lock")
	}
	if locked, _ := Locked(g, 8); locked {
		t.Fatal("a neighbouring byte is locked")
	}
	if ok, _ := TryLock(h, 7); ok {
		t.Fatal("a second open file took a held lock")
	}
	err = Lock(h, 7, 20*time.Millisecond)
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("Lock on a held byte: %v, want ErrLockTimeout", err)
	}

	// Closing the holder releases its locks, as a crash would.
	done := make(chan error, 1)
	go func() { done <- Lock(h, 7, 5*time.Second) }()
	time.Sleep(10 * time.Millisecond)
	f.Close()
	if err := <-done; err != nil {
		t.Fatalf("Lock after the holder closed: %v", err)
	}
	if err := Unlock(h, 7); err != nil {
		t.Fatal(err)
	}
	if locked, _ := Locked(g, 7); locked {
		t.Fatal("still locked after Unlock")
	}
}
