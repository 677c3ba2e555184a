package listener

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

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

// holdFilter is a terminal filter that keeps each connection until the
// client closes it.
type holdFilter struct{}

func (holdFilter) OnConnection(context.Context, *filter.Conn) error { return nil }

func (holdFilter) ServeConn(_ context.Context, c *filter.Conn) {
	io.Copy(io.Discard, c.Conn)
	c.Close()
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
		// The connection's worker is back among the idle ones before the
		// next comes (a fixed sleep was too short under load).
		for deadline := time.Now().Add(5 * time.Second); idleWorkers(l) == 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Microsecond)
		}
	}
	if len(ids) != 1 {
		t.Errorf("20 connections in turn were served by %d goroutines, want 1", len(ids))
	}

	l.StopAccepting()
	deadline := time.Now().Add(workerIdle / 2) // well before the idle workers would time out
	for workerGoroutines(l) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := workerGoroutines(l); n > 0 {
		t.Errorf("%d workers after the listener stopped: idle workers stayed", n)
	}
}

// idleWorkers is the number of l's workers waiting for a connection.
func idleWorkers(l *Listener) int {
	l.workers.mu.Lock()
	defer l.workers.mu.Unlock()
	return len(l.workers.idle)
}

// workerGoroutines counts the goroutines running l's worker method: counting
// them rather than all goroutines keeps the tests from seeing goroutines of
// earlier tests that end meanwhile.
func workerGoroutines(l *Listener) int {
	frame := fmt.Sprintf("listener.(*Listener).worker(%p", l)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), frame)
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestIdleWorkersGo: the workers a burst of connections started go about
// workerIdle after their connections ended, while the listener accepts on.
func TestIdleWorkersGo(t *testing.T) {
	l := startTestListener(t, holdFilter{})
	defer l.StopAccepting()
	const burst = 8
	var conns []net.Conn
	for range burst {
		c, err := net.Dial("tcp", l.Bound()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for l.refs.Load() < burst+1 { // all being served
		time.Sleep(100 * time.Microsecond)
	}
	// The last worker started may not show in the stacks at once.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		n := workerGoroutines(l)
		if n == burst {
			break
		}
		if n > burst || time.Now().After(deadline) {
			t.Fatalf("%d workers serving %d connections", n, burst)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	for l.refs.Load() > 1 {
		time.Sleep(100 * time.Microsecond)
	}
	ended := time.Now()
	if n := workerGoroutines(l); n != burst {
		t.Errorf("%d workers right after the connections ended, want the %d idle", n, burst)
	}
	for workerGoroutines(l) > 0 && time.Since(ended) < 3*workerIdle {
		time.Sleep(10 * time.Millisecond)
	}
	if n := workerGoroutines(l); n > 0 {
		t.Errorf("%d workers %v after the connections ended: idle workers stayed", n, time.Since(ended))
	}
	if d := time.Since(ended); d < workerIdle/2 {
		t.Errorf("idle workers went after %v, before workerIdle (%v)", d, workerIdle)
	}

	// A connection after that is served as before.
	c, err := net.Dial("tcp", l.Bound()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// readOneFilter is a listener filter that reads one byte of the connection:
// it waits for the client's first byte, the listener filter timeout or the
// client's close.
type readOneFilter struct{}

func (readOneFilter) OnAccept(_ context.Context, c *filter.Conn) error {
	_, err := io.ReadFull(c.Conn, make([]byte, 1))
	return err
}

// startStatsListener starts a listener named l (stats listener.l.*) with
// cfg's chains and listener filters, and returns it with its stats.
func startStatsListener(t *testing.T, cfg *Config) (*Listener, *stats.Store) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	st := stats.NewStore()
	cfg.Name, cfg.StatPrefix = "l", "l"
	cfg.Sockets = []SocketSpec{{Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
	l, err := Start(cfg, Options{Logger: log, Stats: st, Sockets: NewSocketTable(log), ConnIDs: new(atomic.Uint64), Serving: new(sync.WaitGroup)})
	if err != nil {
		t.Fatal(err)
	}
	l.Accept()
	t.Cleanup(l.StopAccepting)
	return l, st
}

// waitStats waits until the listener's stats have the values in want
// (names relative to listener.l.).
func waitStats(t *testing.T, st *stats.Store, want map[string]int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := map[string]int64{}
		for name := range want {
			got[name], _ = st.Value("listener.l." + name)
		}
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("listener stats %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func dialListener(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Bound()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestStatsCountConnectionsOnceAChainTakesThem: as in Envoy, a connection
// is in downstream_pre_cx_active while its listener filters run and counts in
// downstream_cx_total, _active and _destroy only once a filter chain took it;
// one a listener filter ends (timeout, client close) or that no chain matches
// is counted only in the stat that says why.
func TestStatsCountConnectionsOnceAChainTakesThem(t *testing.T) {
	counts := func(pre, total, active, destroy int64) map[string]int64 {
		return map[string]int64{"downstream_pre_cx_active": pre, "downstream_cx_total": total,
			"downstream_cx_active": active, "downstream_cx_destroy": destroy}
	}
	t.Run("listener filters then a chain", func(t *testing.T) {
		l, st := startStatsListener(t, &Config{
			ListenerFilters:        []filter.ListenerFilter{readOneFilter{}},
			ListenerFiltersTimeout: time.Minute,
			DefaultChain:           &FilterChain{Name: "default", terminal: holdFilter{}, conns: NewConnSet()},
		})
		c := dialListener(t, l)
		waitStats(t, st, counts(1, 0, 0, 0))
		io.WriteString(c, "x")
		waitStats(t, st, counts(0, 1, 1, 0))
		c.Close()
		waitStats(t, st, counts(0, 1, 0, 1))
	})
	t.Run("client closes in a listener filter", func(t *testing.T) {
		l, st := startStatsListener(t, &Config{
			ListenerFilters:        []filter.ListenerFilter{readOneFilter{}},
			ListenerFiltersTimeout: time.Minute,
			DefaultChain:           &FilterChain{Name: "default", terminal: holdFilter{}, conns: NewConnSet()},
		})
		c := dialListener(t, l)
		waitStats(t, st, counts(1, 0, 0, 0))
		c.Close()
		want := counts(0, 0, 0, 0)
		want["downstream_listener_filter_remote_close"] = 1
		want["downstream_listener_filter_error"] = 0
		waitStats(t, st, want)
	})
	t.Run("listener filter timeout", func(t *testing.T) {
		l, st := startStatsListener(t, &Config{
			ListenerFilters:        []filter.ListenerFilter{readOneFilter{}},
			ListenerFiltersTimeout: 20 * time.Millisecond,
			DefaultChain:           &FilterChain{Name: "default", terminal: holdFilter{}, conns: NewConnSet()},
		})
		c := dialListener(t, l)
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read after the listener filter timeout: %v, want EOF", err)
		}
		want := counts(0, 0, 0, 0)
		want["downstream_pre_cx_timeout"] = 1
		waitStats(t, st, want)
	})
	t.Run("listener filter timeout, continue", func(t *testing.T) {
		l, st := startStatsListener(t, &Config{
			ListenerFilters:                  []filter.ListenerFilter{readOneFilter{}},
			ListenerFiltersTimeout:           20 * time.Millisecond,
			ContinueOnListenerFiltersTimeout: true,
			DefaultChain:                     &FilterChain{Name: "default", terminal: holdFilter{}, conns: NewConnSet()},
		})
		dialListener(t, l)
		want := counts(0, 1, 1, 0)
		want["downstream_pre_cx_timeout"] = 1 // counted although the connection goes on
		waitStats(t, st, want)
	})
	t.Run("no chain matches", func(t *testing.T) {
		never, err := newChainMatch(&listenerv3.FilterChainMatch{SourcePorts: []uint32{1}})
		if err != nil {
			t.Fatal(err)
		}
		l, st := startStatsListener(t, &Config{
			Chains: []*FilterChain{{Name: "port1", match: never, terminal: holdFilter{}, conns: NewConnSet()}},
		})
		c := dialListener(t, l)
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read on a connection no chain matches: %v, want EOF", err)
		}
		want := counts(0, 0, 0, 0)
		want["no_filter_chain_match"] = 1
		waitStats(t, st, want)
	})
}
