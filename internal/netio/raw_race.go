//go:build race

package netio

import (
	"runtime"
	"unsafe"
)

// ioSync is only an address: the race detector's stand-in for the order that
// bytes through a socket impose (a write happens before the read that gets its
// bytes), as package syscall has for its Read and Write.
var ioSync int64

// raceRead tells the race detector that read(2) filled p[:n].
func raceRead(p []byte, n int) {
	if n > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), n)
	}
	runtime.RaceAcquire(unsafe.Pointer(&ioSync))
}

// raceWrite tells the race detector that write(2) is about to read p.
func raceWrite(p []byte) {
	runtime.RaceReleaseMerge(unsafe.Pointer(&ioSync))
	if len(p) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&p[0]), len(p))
	}
}
