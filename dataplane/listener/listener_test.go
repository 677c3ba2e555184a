package listener

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/internal/stats"
)

// goroutineFilter is a terminal filter that writes the ID of the goroutine
// serving the connection and closes it.
type goroutineFilter struct{}

func (goroutineFilter) OnConnection(context.Context, *filter.Conn) error { return nil }

func (goroutineFilter) ServeConn(_ context.Context, c *filter.Conn) {
	io.WriteString(c.Conn, strconv.FormatUint(goroutineID(), 10))
	c.Close()
}

// goroutineID parses "goroutine N [running]:" from the caller's stack.
func goroutineID() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	id, _ := strconv.ParseUint(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	return id
}

func startTestListener(t *testing.T, terminal filter.TerminalFilter) *Listener {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	serving := new(sync.WaitGroup)
	cfg := &Config{
		Name:         "l",
		Sockets:      []SocketSpec{{Addr: netip.MustParseAddrPort("127.0.0.1:0")}},
		StatPrefix:   "l",
		DefaultChain: &FilterChain{Name: "default", terminal: terminal, conns: NewConnSet()},
	}
	l, err := Start(cfg, Options{Logger: log, Stats: stats.NewStore(), Sockets: NewSocketTable(log), ConnIDs: new(atomic.Uint64), Serving: serving})
	if err != nil {
		t.Fatal(err)
	}
	l.Accept()
	return l
}

// TestWorkersServeConnectionsInTurn: connections that come one after another
// are served by the goroutine that served the one before, and the idle
// workers go when the listener is done.
func TestWorkersServeConnectionsInTurn(t *testing.T) {
	before := runtime.NumGoroutine()
	l := startTestListener(t, goroutineFilter{})
	addr := l.Bound()[0].String()
	ids := map[string]int{}
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		id, err := io.ReadAll(c) // to the filter's close
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids[string(id)]++
		for l.refs.Load() > 1 { // the connection is still being served
			time.Sleep(100 * time.Microsecond)
		}
		time.Sleep(time.Millisecond) // and its worker waits for the next
	}
	if len(ids) > 3 {
		t.Errorf("20 connections in turn were served by %d goroutines, want 1 (a few if a worker was late back)", len(ids))
	}

	l.StopAccepting()
	deadline := time.Now().Add(workerIdle / 2) // well before the idle workers would time out
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after the listener stopped, %d before it started: idle workers stayed", n, before)
	}
}
