package stats

import (
	"context"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"
)

func TestServerStats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewStore()
		ctx, cancel := context.WithCancel(t.Context())
		start := time.Now()
		ss := NewServerStats(s, start)
		if v, _ := s.Value("server.live"); v != 1 {
			t.Fatalf("server.live = %d", v)
		}
		// Someone else asking for server.live gets the NeverImport gauge.
		if g := s.Gauge("server.live"); g.Value() != 1 || s.Snapshot()[0].Mode != NeverImport {
			t.Fatal("server.live is not NeverImport")
		}
		done := make(chan struct{})
		go func() {
			ss.Run(ctx, time.Second)
			close(done)
		}()
		time.Sleep(90*time.Second + time.Millisecond)
		synctest.Wait()
		if v, _ := s.Value("server.uptime"); v != 90 {
			t.Fatalf("server.uptime = %d after 90s", v)
		}
		cancel()
		<-done
		if v, _ := s.Value("server.live"); v != 0 {
			t.Fatalf("server.live = %d after the end", v)
		}
	})
}

func TestServerStatsInRegion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	old := openTest(t, path, WithCapacity(64))
	old.Counter("c").Inc()
	s := openTest(t, path)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	ss := NewServerStats(s, time.Now().Add(-time.Hour))
	go func() {
		ss.Run(ctx, 5*time.Millisecond)
		close(done)
	}()
	old.reg.crash()
	deadline := time.Now().Add(5 * time.Second)
	for {
		snap := readTest(t, path)
		gen, _ := statOf(snap, "server.hot_restart_generation", KindGauge)
		up, _ := statOf(snap, "server.uptime", KindGauge)
		if gen.Value == 2 && up.Value >= 3600 && len(snap.Generations) == 1 {
			break // and the crashed generation was swept by the ticker
		}
		if time.Now().After(deadline) {
			t.Fatalf("server stats in the file: %+v, generations %+v", snap.Stats, snap.Generations)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}
