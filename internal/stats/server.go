package stats

import (
	"context"
	"time"
)

// ServerStats are Envoy's server.* stats that any running skiff keeps:
//
//	server.live                    1 while serving, 0 once Run's ctx is done (draining)
//	server.uptime                  seconds since start, updated by Run
//	server.hot_restart_generation  the Store's generation in its region
//
// All three are NeverImport gauges: a hot-restart successor starts its own.
// Others may update server.live too (the admin API does, from the server's
// state); they get the same NeverImport gauge as long as NewServerStats runs
// first.
type ServerStats struct {
	s            *Store
	start        time.Time
	live, uptime Gauge
}

// NewServerStats creates the server.* stats and sets them: server.live to 1,
// server.uptime from start, server.hot_restart_generation from s.
func NewServerStats(s *Store, start time.Time) *ServerStats {
	ss := &ServerStats{
		s:      s,
		start:  start,
		live:   s.GaugeMode("server.live", NeverImport),
		uptime: s.GaugeMode("server.uptime", NeverImport),
	}
	s.GaugeMode("server.hot_restart_generation", NeverImport).Set(int64(s.Generation()))
	ss.uptime.Set(int64(time.Since(start) / time.Second))
	ss.live.Set(1)
	return ss
}

// Run updates server.uptime every interval until ctx is done, then sets
// server.live to 0. Each interval it also reclaims the stats of generations that
// have exited or crashed (Store.Sweep). Start it with
//
//	go stats.NewServerStats(st, start).Run(ctx, time.Second)
//
// so that the stats exist before the go statement returns.
func (ss *ServerStats) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			ss.live.Set(0)
			return
		case now := <-t.C:
			ss.uptime.Set(int64(now.Sub(ss.start) / time.Second))
			if _, err := ss.s.Sweep(); err != nil {
				ss.s.log.Warn("stats region: reclaiming the stats of exited generations", "error", err)
			}
		}
	}
}
