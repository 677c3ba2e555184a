package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/skiffproxy/skiff/internal/xdstest"
	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// The hot restart tests run real skiff processes under real load and make
// them hand over in every way there is: SIGHUP, the admin API's
// StartHotRestart, and another `skiff run` on the same runtime directory. See
// restartfleet_test.go for how a fleet of processes is followed, and
// restartload_test.go for the load.

// loadTestBootstrap is a TCP proxy listener ("http") and an HTTP connection
// manager ("hcm") on ports of their own in front of web, and a TCP listener on
// port 0 in front of echo. (Two listeners on 127.0.0.1:0 would share a socket
// spec; see TestHotRestartPortZeroListeners.)
func loadTestBootstrap(t testing.TB, web, echo string) string {
	return bootstrap{
		Listeners: []listenerCfg{
			{Name: "http", Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))), Cluster: "web"},
			{Name: "hcm", HTTP: true, Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))), Cluster: "web"},
			{Name: "tcp", Cluster: "echo"},
		},
		Clusters: []clusterCfg{{Name: "web", Endpoints: []string{web}}, {Name: "echo", Endpoints: []string{echo}}},
	}.yaml(t)
}

// TestHotRestartUnderLoad restarts skiff three times in a row, once by each
// trigger, under sustained load: HTTP/1.1 with a new connection per request
// and HTTP/1.1 keep-alive through a tcp_proxy listener, HTTP/1.1 keep-alive
// through an HTTP connection manager (wrk if installed, else goroutines), four
// long-lived TCP streams whose echo is checked byte for byte, and three idle
// HTTP/1.1 keep-alive connections to the HTTP connection manager that send
// one request after each restart. Not one connection may be refused, not one
// request fail, not one byte be lost or duplicated; the streams and the idle
// connections survive all three restarts, moved to each successor in turn;
// every parent exits 0.
func TestHotRestartUnderLoad(t *testing.T) {
	t.Parallel()
	web := startHTTPUpstream(t)
	echo := startUpstream(t, "127.0.0.1", longEchoHandler)
	f := startFleet(t, loadTestBootstrap(t, web.Addr, echo.Addr))
	httpAddr, hcmAddr, tcpAddr := f.addr("http"), f.addr("hcm"), f.addr("tcp")
	ss := startStreams(t, tcpAddr, 4)
	ss.waitProgress(t, make([]int64, len(ss)), 64<<10, "before the restarts")
	var idle []*idleHTTP
	for i := range 3 {
		idle = append(idle, dialIdleHTTP(t, hcmAddr, fmt.Sprintf("/idle/%d/start", i)))
	}

	pid := f.current()
	for _, how := range []string{"sighup", "admin", "takeover"} {
		closing, keepAlive := startHTTPLoad(t, httpAddr, false), startHTTPLoad(t, httpAddr, true)
		hcmKeepAlive := startHTTPLoad(t, hcmAddr, true)
		web.waitServed(t, web.served.Load(), 300, 15*time.Second, how+": the load before the restart")

		h := f.restart(how, pid)
		atHandover := ss.received()
		if h.moved < len(ss)+len(idle) {
			t.Errorf("%s: the parent moved %d connections, want at least the %d streams and the %d idle HTTP connections", how, h.moved, len(ss), len(idle))
		}
		// The successor alone carries the load now.
		web.waitServed(t, web.served.Load(), 300, 15*time.Second, how+": the load after the parent exited")
		ss.waitProgress(t, atHandover, 64<<10, how+": the streams after the parent exited")
		for i, c := range idle {
			if err := c.get(fmt.Sprintf("/idle/%d/%s", i, how)); err != nil {
				t.Errorf("%s: idle HTTP/1.1 connection %d after the parent exited: %v", how, i, err)
			}
		}

		for _, r := range []struct {
			name string
			res  loadResult
		}{{"a new connection per request", closing.stop(t)}, {"keep-alive", keepAlive.stop(t)}, {"keep-alive through the HTTP connection manager", hcmKeepAlive.stop(t)}} {
			t.Logf("%s: %s: %d requests, %d failed (%s); %d connections moved", how, r.name, r.res.requests, r.res.failures, r.res.detail, h.moved)
			if r.res.failures != 0 {
				t.Errorf("%s restart under load, %s: %d of %d requests failed: %s", how, r.name, r.res.failures, r.res.requests+r.res.failures, r.res.detail)
			}
			if r.res.requests < 100 {
				t.Errorf("%s restart under load, %s: only %d requests made: the test proves little", how, r.name, r.res.requests)
			}
		}
		pid = h.pid
	}
	ss.finish(t)
}

// TestHotRestartTenInARow restarts an xDS-driven skiff ten times with SIGHUP,
// waiting for each handover, while the control plane moves the cluster to
// another endpoint before each. Afterwards exactly one skiff is left, it
// serves the configuration pushed last, its open files did not grow with the
// restarts, the runtime directory holds only its four files, and the stats
// file neither grew nor kept the generations that exited.
func TestHotRestartTenInARow(t *testing.T) {
	t.Parallel()
	var ups []*upstream
	for i := range 3 {
		ups = append(ups, startUpstream(t, "127.0.0.1", nameHandler(fmt.Sprintf("u%d", i))))
	}
	last := startUpstream(t, "127.0.0.1", nameHandler("last"))
	cp := xdstest.Start(t, "127.0.0.1:0", xdsNode)
	push := func(host string) {
		cp.Push(xdsResources(xdsAssignment("backend", host), xdsListener("ingress", "backend")))
	}
	push(ups[0].Addr)
	f := startFleet(t, xdsBootstrap(cp.Addr(), false))
	addr := f.addr("ingress")

	type footprint struct {
		fds          int      // open files other than splice pipes
		pipes        int      // descriptors of the splice pipes kept for reuse
		files        []string // what they all are
		size, blocks int64    // of the stats file
		stats        []string // the names in it
		generation   int64    // server.hot_restart_generation
	}
	measure := func(pid int) footprint {
		t.Helper()
		var fp footprint
		// Counted once the successor follows the control plane (its xDS
		// connection is one of its files) and the count stays put.
		waitFor(t, "the successor connected to the control plane", func() bool {
			v, _ := f.statsFile().value("control_plane.connected_state")
			return v == 1
		})
		fp.fds = settledFDs(t, pid)
		_, fp.pipes = fds(t, pid)
		fp.files = openFiles(pid)
		fi, err := os.Stat(filepath.Join(f.Dir, "stats"))
		if err != nil {
			t.Fatal(err)
		}
		fp.size, fp.blocks = fi.Size(), fi.Sys().(*syscall.Stat_t).Blocks
		// The generations that exited are reclaimed within a second or two.
		var s fileStats
		waitFor(t, "the stats file to hold only the live generation", func() bool {
			s = f.statsFile()
			return len(s.Generations) == 1 && s.Generations[0].PID == pid && s.Generations[0].Live
		})
		for _, st := range s.Stats {
			fp.stats = append(fp.stats, st.Name)
		}
		fp.generation, _ = s.value("server.hot_restart_generation")
		return fp
	}

	pid := f.current()
	var first footprint
	for i := 1; i <= 10; i++ {
		if i == 10 {
			push(last.Addr)
		} else {
			push(ups[i%3].Addr)
		}
		h := f.restart("sighup", pid)
		pid = h.pid
		if _, err := askName(addr); err != nil {
			t.Fatalf("a connection after restart %d: %v", i, err)
		}
		if i == 1 {
			first = measure(pid)
		}
	}
	if got := pollName(addr, "last", 10*time.Second); got != "last" {
		t.Errorf("the last skiff routes to %q 10s after the last endpoint update, want the endpoint pushed last (\"last\")", got)
	}

	if ps := f.procs(); len(ps) != 1 || ps[0].pid != pid {
		t.Errorf("skiff processes left after ten restarts: %+v, want only pid %d", ps, pid)
	}
	now := measure(pid) // before the admin connection below adds a descriptor
	info, err := f.admin().GetServerInfo(rpcCtx(t), &adminv1.GetServerInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetPid() != int64(pid) || info.GetHotRestartEpoch() != 10 {
		t.Errorf("admin ServerInfo: pid %d, hot restart epoch %d; want pid %d, epoch 10", info.GetPid(), info.GetHotRestartEpoch(), pid)
	}
	// One connection at a time uses two pipes (one per direction) besides
	// the one the pool starts with; pipes a collection dropped wait for
	// their cleanup. Sixteen descriptors is generous for that, and far
	// below what leaking a pipe per connection or per restart would give.
	if now.fds > first.fds+2 || now.pipes > 16 {
		t.Errorf("open files of the skiff after 10 restarts: %d and %d of splice pipes, after 1: %d and %d (a descriptor leaks with each restart)\nafter 1:\n\t%s\nafter 10:\n\t%s",
			now.fds, now.pipes, first.fds, first.pipes, strings.Join(first.files, "\n\t"), strings.Join(now.files, "\n\t"))
	}
	if now.size != first.size || now.blocks > first.blocks+8 {
		t.Errorf("stats file after 10 restarts: %d bytes, %d blocks allocated; after 1: %d bytes, %d blocks", now.size, now.blocks, first.size, first.blocks)
	}
	if !slices.Equal(now.stats, first.stats) {
		t.Errorf("stats after 10 restarts differ from after 1:\nafter 1:  %v\nafter 10: %v", first.stats, now.stats)
	}
	if now.generation != first.generation+9 {
		t.Errorf("server.hot_restart_generation after 10 restarts: %d, after 1: %d; want 9 more", now.generation, first.generation)
	}
	ents, err := os.ReadDir(f.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"admin.sock", "reconfig.sock", "skiff.lock", "stats"}; !slices.Equal(names, want) {
		t.Errorf("runtime dir after 10 restarts holds %v, want %v", names, want)
	}
	t.Logf("after 1 restart: %d open files and %d of splice pipes, stats file %d bytes (%d blocks), %d stats; after 10: %d open files and %d of splice pipes, %d blocks, %d stats",
		first.fds, first.pipes, first.size, first.blocks, len(first.stats), now.fds, now.pipes, now.blocks, len(now.stats))
}

// pollName asks addr for its upstream's name until it is want, for up to
// timeout, and returns the last answer.
// idleHTTP is an HTTP/1.1 keep-alive connection that stays idle between
// the requests a test makes on it.
type idleHTTP struct {
	c  net.Conn
	br *bufio.Reader
}

func dialIdleHTTP(t testing.TB, addr, path string) *idleHTTP {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ih := &idleHTTP{c: c, br: bufio.NewReader(c)}
	if err := ih.get(path); err != nil {
		t.Fatal(err)
	}
	return ih
}

// get makes one request on the connection and checks the answer: 200, the
// upstream's body, and the connection kept open.
func (ih *idleHTTP) get(path string) error {
	ih.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(ih.c, "GET %s HTTP/1.1\r\nHost: skiff\r\n\r\n", path); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	resp, err := nethttp.ReadResponse(ih.br, nil)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != 200 || string(b) != httpBody(path) || resp.Close {
		return fmt.Errorf("GET %s: %d %q, close %v; want 200 %q on a kept connection", path, resp.StatusCode, b, resp.Close, httpBody(path))
	}
	return nil
}

func pollName(addr, want string, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		name, err := askName(addr)
		if err != nil {
			name = err.Error()
		}
		if name == want || time.Now().After(deadline) {
			return name
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stalledSuccessor is the command line of a `skiff run` that takes over f's
// runtime directory and then never becomes ready: its bootstrap has no
// listeners and waits for a control plane that refuses connections, with no
// initial fetch timeout. It stays between "taking over" and ready until it is
// killed.
func stalledSuccessor(t testing.TB, f *fleet) []string {
	host, port, _ := net.SplitHostPort(refusingAddr(t))
	cfg := writeFile(t, "stalled.yaml", fmt.Sprintf(`node: { id: stalled, cluster: e2e }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: { cluster_name: xds }
  cds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s }
  lds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s }
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: %s, port_value: %s } } }
`, host, port))
	return []string{"run", "-c", cfg, "--log-encoding", "json", "--runtime-dir", f.Dir}
}

// TestHotRestartSuccessorFails makes the successor fail at each step of the
// handover: it exits before saying hello, it is killed after receiving the
// parent's state but before it is ready, and it hangs (stopped) until the
// parent's ready timeout. Each time the parent keeps serving (an open
// connection goes on, new ones are accepted), logs "hot restart abandoned",
// counts server.hot_restart_abandoned, and a later restart works and moves
// the open connection.
func TestHotRestartSuccessorFails(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", longEchoHandler)

	// run starts a skiff, makes a restart fail with fail (which returns a part
	// of the reason the parent must log, and what to do once the parent gave
	// up), and checks the parent and a later restart.
	run := func(t *testing.T, fail func(t *testing.T, f *fleet, parent int) (reason string, abandoned func())) {
		// A short ready timeout, for the successor that hangs.
		f := startFleet(t, simple(up.Addr).yaml(t), "--hot-restart-ready-timeout", "8s")
		addr := f.addr("l")
		parent := f.current()
		open := dial(t, addr)
		roundTrip := func(msg string) error {
			open.SetDeadline(time.Now().Add(ioTimeout)) // the hang outlasts dial's deadline
			return echoRoundTrip(open, []byte(msg))
		}
		if err := roundTrip("before"); err != nil {
			t.Fatal(err)
		}
		from := f.mark()
		reason, abandoned := fail(t, f, parent)
		l, _ := f.waitMsg(from, 90*time.Second, "hot restart abandoned; this skiff keeps serving")
		if !strings.Contains(l.Fields["reason"], reason) {
			t.Errorf("abandoned with reason %q, want it to mention %q", l.Fields["reason"], reason)
		}
		if abandoned != nil {
			abandoned()
		}
		if got := f.statCounter("server.hot_restart_abandoned"); got != 1 {
			t.Errorf("server.hot_restart_abandoned = %d after one failed restart, want 1", got)
		}
		if ps := f.procs(); len(ps) != 1 || ps[0].pid != parent {
			t.Errorf("processes after the failed restart: %+v, want the parent (pid %d) alone", ps, parent)
		}
		if err := roundTrip("after the failed restart"); err != nil {
			t.Fatalf("the open connection after the failed restart: %v", err)
		}
		if err := echoAll(dial(t, addr), []byte("a new connection to the parent")); err != nil {
			t.Fatal(err)
		}

		h := f.restart("sighup", parent)
		if h.moved != 1 {
			t.Errorf("the later restart moved %d connections, want the open one", h.moved)
		}
		if err := roundTrip("moved to the successor"); err != nil {
			t.Fatalf("the open connection after the later restart: %v", err)
		}
		if err := echoAll(dial(t, addr), []byte("a new connection to the successor")); err != nil {
			t.Fatal(err)
		}
		if got := f.statCounter("server.hot_restart_abandoned"); got != 1 {
			t.Errorf("server.hot_restart_abandoned = %d in the successor, want the 1 it inherited", got)
		}
	}

	t.Run("exits before hello", func(t *testing.T) {
		t.Parallel()
		run(t, func(t *testing.T, f *fleet, parent int) (string, func()) {
			r := runSkiff(t, "admin", "--runtime-dir", f.Dir, "restart", "--binary", "/bin/false")
			if r.code == 0 || !strings.Contains(r.stderr, "exited before taking over") {
				t.Errorf("skiff admin restart --binary /bin/false: exit %d, stderr %q; want a failure saying the successor exited", r.code, r.stderr)
			}
			return "exited before taking over", nil
		})
	})

	t.Run("killed before ready", func(t *testing.T) {
		t.Parallel()
		run(t, func(t *testing.T, f *fleet, parent int) (string, func()) {
			from := f.mark()
			s := f.takeover(stalledSuccessor(t, f)...)
			f.waitMsg(from, startTimeout, "hot restart: taking over")
			f.kill(s, syscall.SIGKILL)
			if e, _ := f.waitExit(s, 10*time.Second); !e.status.Signaled() {
				t.Errorf("the successor ended with %v, want killed", e)
			}
			return "waiting for the successor to be ready", nil
		})
	})

	t.Run("hangs", func(t *testing.T) {
		t.Parallel()
		run(t, func(t *testing.T, f *fleet, parent int) (string, func()) {
			// A connection to the parent's admin API made now stays with the
			// parent; the successor binds admin.sock anew.
			adm := f.admin()
			if _, err := adm.GetServerInfo(rpcCtx(t), &adminv1.GetServerInfoRequest{}); err != nil {
				t.Fatal(err)
			}
			from := f.mark()
			s := f.takeover(stalledSuccessor(t, f)...)
			f.waitMsg(from, startTimeout, "hot restart: taking over")
			f.kill(s, syscall.SIGSTOP)

			// While the hung successor holds the restart, every other trigger is
			// refused, and says why.
			_, err := adm.StartHotRestart(rpcCtx(t), &adminv1.StartHotRestartRequest{})
			if err == nil || !strings.Contains(err.Error(), "already in progress") {
				t.Errorf("StartHotRestart during a restart: %v, want an error saying one is already in progress", err)
			}
			syscall.Kill(parent, syscall.SIGHUP)
			f.waitLog(from, 10*time.Second, "SIGHUP refused", func(l LogLine) bool {
				return l.Msg() == "hot restart not started" && strings.Contains(l.Fields["error"], "already in progress")
			})
			// (What it says is TestHotRestartRefusedTakeoverSaysWhy's business.)
			other := f.takeover()
			f.expect(other)
			if e, known := f.waitExit(other, exitTimeout); !known || !e.status.Exited() || e.status.ExitStatus() == 0 {
				t.Errorf("a second skiff run on the runtime dir during a restart ended with %v, want a failure", e)
			}
			if err := echoAll(dial(t, f.addr("l")), []byte("while the successor hangs")); err != nil {
				t.Error(err)
			}
			// The parent gives up on it but cannot end it (it did not start
			// it); its operator would.
			return "waiting for the successor to be ready", func() {
				f.kill(s, syscall.SIGKILL)
				f.waitExit(s, 10*time.Second)
			}
		})
	})
}

// TestHotRestartRefusedTakeoverSaysWhy: a skiff run on a runtime dir whose
// skiff is busy with another successor is refused, and its error says why
// ("a hot restart is already in progress"), every time: ten at once.
func TestHotRestartRefusedTakeoverSaysWhy(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	f := startFleet(t, simple(up.Addr).yaml(t))
	from := f.mark()
	s := f.takeover(stalledSuccessor(t, f)...)
	// Once it logs "taking over" it holds the parent's state and the parent
	// is busy with it.
	f.waitMsg(from, startTimeout, "hot restart: taking over")
	var others []int
	for range 10 {
		p := f.takeover()
		f.expect(p)
		others = append(others, p)
	}
	for _, p := range others {
		if e, known := f.waitExit(p, exitTimeout); !known || !e.status.Exited() || e.status.ExitStatus() == 0 {
			t.Errorf("skiff run (pid %d) during a restart ended with %v, want a failure", p, e)
		}
	}
	// Their errors are the lines that are not JSON.
	var errs []string
	f.waitLog(from, 10*time.Second, "the ten errors", func(l LogLine) bool {
		if strings.HasPrefix(l.Raw, "skiff: ") {
			errs = append(errs, l.Raw)
		}
		return len(errs) == len(others)
	})
	bad := 0
	for _, e := range errs {
		if !strings.Contains(e, "already in progress") {
			bad++
			if bad == 1 {
				t.Errorf("a refused skiff run said %q, want it to say a hot restart is already in progress", e)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d refused skiff runs did not say why", bad, len(errs))
	}
	f.kill(s, syscall.SIGKILL)
	f.waitMsg(from, 30*time.Second, "hot restart abandoned; this skiff keeps serving")
}

// TestHotRestartCountersContinue: counters read through the admin API keep
// growing across a restart instead of starting over, the admin address
// (handed over with the listeners) answers from the successor,
// server.hot_restart_generation goes up by one and the restart epoch too.
func TestHotRestartCountersContinue(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	f := startFleet(t, adminBlock+fixedPort(t, up.Addr).yaml(t))
	addr := f.addr("l")
	adminLine, _ := f.waitLog(0, startTimeout, "the admin address", func(l LogLine) bool {
		return l.Msg() == "admin listening" && l.Fields["network"] == "tcp"
	})
	adminAddr := adminLine.Fields["address"]
	_, port, _ := net.SplitHostPort(addr)
	names := []string{
		"listener.127.0.0.1_" + port + ".downstream_cx_total",
		"tcp.l.downstream_cx_total",
		"cluster.c.upstream_cx_total",
		"server.hot_restart_generation",
	}
	filter := "^(" + strings.ReplaceAll(strings.Join(names, "|"), ".", `\.`) + ")$"
	read := func() (map[string]int64, *adminv1.GetServerInfoResponse) {
		t.Helper()
		cc, err := grpc.NewClient(adminAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		a := adminv1.NewAdminServiceClient(cc)
		info, err := a.GetServerInfo(rpcCtx(t), &adminv1.GetServerInfoRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return adminStats(t, a, filter), info
	}
	connect := func(n int) {
		t.Helper()
		for i := range n {
			if err := echoAll(dial(t, addr), fmt.Appendf(nil, "connection %d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}

	connect(5)
	// Counters are updated as connections end; wait for the last one.
	var before map[string]int64
	var info *adminv1.GetServerInfoResponse
	waitFor(t, "the counters of 5 connections", func() bool {
		before, info = read()
		return before[names[0]] == 5 && before[names[1]] == 5 && before[names[2]] == 5
	})
	if info.GetHotRestartEpoch() != 0 {
		t.Errorf("hot restart epoch before any restart: %d, want 0", info.GetHotRestartEpoch())
	}

	h := f.restart("sighup", f.current())
	connect(3)
	var after map[string]int64
	waitFor(t, "the counters to go on from 5 to 8", func() bool {
		after, info = read()
		return after[names[0]] == 8 && after[names[1]] == 8 && after[names[2]] == 8
	})
	if info.GetPid() != int64(h.pid) || info.GetHotRestartEpoch() != 1 {
		t.Errorf("the admin address answered as pid %d, epoch %d; want the successor, pid %d, epoch 1", info.GetPid(), info.GetHotRestartEpoch(), h.pid)
	}
	if after[names[3]] != before[names[3]]+1 {
		t.Errorf("server.hot_restart_generation: %d before the restart, %d after; want one more", before[names[3]], after[names[3]])
	}
	// The stats file, read from outside, agrees.
	s := f.statsFile()
	for _, n := range names {
		if v, ok := s.value(n); !ok || v != after[n] {
			t.Errorf("stats file: %s = %d (present %t), the admin API says %d", n, v, ok, after[n])
		}
	}
}

// gatedSkiff writes a script that runs skiff with its arguments once the
// returned file exists (at most 60 s later), for a successor that takes its
// time.
func gatedSkiff(t testing.TB) (script, gate string) {
	dir := t.TempDir()
	gate = filepath.Join(dir, "go")
	script = filepath.Join(dir, "gated-skiff")
	body := fmt.Sprintf("#!/bin/sh\ni=0\nwhile [ ! -e %q ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\nexec %q \"$@\"\n", gate, skiffBin)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, gate
}

// TestHotRestartSecondTriggerRefused: while a restart started with the admin
// API is under way (its successor takes its time to start), a second admin call
// and a SIGHUP are refused with a clear answer, and the first restart
// completes.
func TestHotRestartSecondTriggerRefused(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	f := startFleet(t, simple(up.Addr).yaml(t))
	addr := f.addr("l")
	parent := f.current()
	script, gate := gatedSkiff(t)

	from := f.mark()
	type answer struct {
		r   *adminv1.StartHotRestartResponse
		err error
	}
	first := make(chan answer, 1)
	adm := f.admin()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		r, err := adm.StartHotRestart(ctx, &adminv1.StartHotRestartRequest{Binary: script})
		first <- answer{r, err}
	}()
	l, _ := f.waitMsg(from, startTimeout, "hot restart: successor started")
	successor := logPid(t, l)

	_, err := f.admin().StartHotRestart(rpcCtx(t), &adminv1.StartHotRestartRequest{})
	if err == nil || !strings.Contains(err.Error(), "already in progress") {
		t.Errorf("a second StartHotRestart while one is under way: %v, want an error saying one is already in progress", err)
	}
	syscall.Kill(parent, syscall.SIGHUP)
	f.waitLog(from, 10*time.Second, "SIGHUP refused", func(l LogLine) bool {
		return l.Msg() == "hot restart not started" && strings.Contains(l.Fields["error"], "already in progress")
	})

	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a := <-first
	if a.err != nil || a.r.GetPid() != int64(successor) {
		t.Fatalf("the first StartHotRestart: %v, %v; want success with pid %d", a.r, a.err, successor)
	}
	if got := f.started(from); got != successor {
		t.Errorf("pid %d started, want %d", got, successor)
	}
	f.waitExitOK(parent, 30*time.Second, "the parent")
	if err := echoAll(dial(t, addr), []byte("served by the successor")); err != nil {
		t.Fatal(err)
	}
}

// TestHotRestartPortZeroListeners: listeners on 127.0.0.1:0 to different
// clusters keep their own ports across restarts. (They all have the same
// socket spec key, "tcp/127.0.0.1:0/...", and a successor finds inherited
// sockets by key; which of them a listener gets then depends on map order.)
func TestHotRestartPortZeroListeners(t *testing.T) {
	t.Parallel()
	var b bootstrap
	for _, name := range []string{"a", "b", "c", "d"} {
		up := startUpstream(t, "127.0.0.1", nameHandler(name))
		b.Listeners = append(b.Listeners, listenerCfg{Name: name, Cluster: name})
		b.Clusters = append(b.Clusters, clusterCfg{Name: name, Endpoints: []string{up.Addr}})
	}
	f := startFleet(t, b.yaml(t))
	addrs := map[string]string{}
	for _, l := range b.Listeners {
		addrs[l.Name] = f.addr(l.Name)
	}
	pid := f.current()
	for i := 1; i <= 10; i++ {
		pid = f.restart("sighup", pid).pid
		var wrong []string
		for _, l := range b.Listeners {
			got, err := askName(addrs[l.Name])
			if err != nil {
				t.Fatalf("after restart %d: listener %s: %v", i, l.Name, err)
			}
			if got != l.Name {
				wrong = append(wrong, fmt.Sprintf("listener %s (%s) reaches cluster %s", l.Name, addrs[l.Name], got))
			}
		}
		if len(wrong) > 0 {
			t.Fatalf("after restart %d the 127.0.0.1:0 listeners swapped sockets: %s", i, strings.Join(wrong, ", "))
		}
	}
}

// TestHotRestartAbandonedParentKeepsAdminSocket: once a successor that got as
// far as receiving the parent's state dies before it is ready, the parent that keeps
// serving must still answer its admin API on <runtime-dir>/admin.sock, and the
// runtime directory's lock file must name it, not the dead successor (skiff run
// --supervise signals the pid in the lock file).
func TestHotRestartAbandonedParentKeepsAdminSocket(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	f := startFleet(t, simple(up.Addr).yaml(t))
	parent := f.current()
	from := f.mark()
	s := f.takeover(stalledSuccessor(t, f)...)
	f.waitMsg(from, startTimeout, "hot restart: taking over")
	f.kill(s, syscall.SIGKILL)
	f.waitMsg(from, 30*time.Second, "hot restart abandoned; this skiff keeps serving")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := f.admin().GetServerInfo(ctx, &adminv1.GetServerInfoRequest{})
	if err != nil || info.GetPid() != int64(parent) {
		t.Errorf("admin API on admin.sock after the successor died: %v, %v; want the parent, pid %d, to answer", info, err, parent)
	}
	b, err := os.ReadFile(filepath.Join(f.Dir, "skiff.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if owner := strings.TrimSpace(string(b)); owner != strconv.Itoa(parent) {
		t.Errorf("skiff.lock names pid %s after the successor (pid %d) died, want the parent, pid %d", owner, s, parent)
	}
}

// TestHotRestartTakeoverDuringStartedRestart: while a restart the admin API
// started is under way (its successor is still starting), an operator's skiff
// run on the same runtime dir must be refused like any second trigger, not
// taken for the successor: otherwise the admin call reports a pid that did not
// take over, and the successor it started takes over from the operator's
// process afterwards (two restarts for one request).
func TestHotRestartTakeoverDuringStartedRestart(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	f := startFleet(t, simple(up.Addr).yaml(t))
	script, gate := gatedSkiff(t)
	from := f.mark()
	type answer struct {
		r   *adminv1.StartHotRestartResponse
		err error
	}
	first := make(chan answer, 1)
	adm := f.admin()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		r, err := adm.StartHotRestart(ctx, &adminv1.StartHotRestartRequest{Binary: script})
		first <- answer{r, err}
	}()
	l, _ := f.waitMsg(from, startTimeout, "hot restart: successor started")
	successor := logPid(t, l)

	op := f.takeover()
	f.expect(op)
	tookOver := func(l LogLine) bool { return l.Msg() == "hot restart: took over from the parent" }
	deadline := time.Now().Add(startTimeout)
	for {
		if _, ok := f.findLog(from, tookOver); ok {
			t.Errorf("an operator's skiff run (pid %d) took over while the restart the admin API started (successor pid %d) was under way", op, successor)
			break
		}
		if e, ok := f.exit(op); ok {
			if e.status.Exited() && e.status.ExitStatus() == 0 {
				t.Errorf("the operator's skiff run (pid %d) exited 0 without taking over, want a failure", op)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the operator's skiff run (pid %d) neither took over nor exited within %v", op, startTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a := <-first
	if a.err != nil || a.r.GetPid() != int64(successor) {
		t.Fatalf("StartHotRestart: %v, %v; want success with pid %d", a.r, a.err, successor)
	}
	// Let whatever follows settle: the successor the admin API started serves.
	f.waitLog(from, startTimeout, "the admin API's successor started", func(l LogLine) bool {
		return l.Msg() == "skiff started" && l.Fields["pid"] == strconv.Itoa(successor)
	})
	if n := countMsgs(f, from, "hot restart: took over from the parent"); n != 1 {
		t.Errorf("%d processes took over for one StartHotRestart call, want 1", n)
	}
	waitFor(t, "one skiff left", func() bool { return len(f.procs()) == 1 })
}

func countMsgs(f *fleet, from int, msg string) int {
	lines, _ := f.logs.snapshot()
	n := 0
	for _, l := range lines[from:] {
		if l.Msg() == msg {
			n++
		}
	}
	return n
}

// TestHotRestartMovedConnectionCountedOnce: a connection moved to the
// successor is one downstream connection, not two: the listener's
// downstream_cx_total agrees with the tcp_proxy's after the restart, and
// downstream_cx_destroy counts only connections that ended.
func TestHotRestartMovedConnectionCountedOnce(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	f := startFleet(t, fixedPort(t, up.Addr).yaml(t))
	addr := f.addr("l")
	_, port := splitPort(t, addr)
	total := "listener.127.0.0.1_" + port + ".downstream_cx_total"
	destroy := "listener.127.0.0.1_" + port + ".downstream_cx_destroy"
	active := "listener.127.0.0.1_" + port + ".downstream_cx_active"

	var open []*net.TCPConn
	for i := range 3 {
		c := dial(t, addr)
		if err := echoRoundTrip(c, fmt.Appendf(nil, "open %d", i)); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	for i := range 2 {
		if err := echoAll(dial(t, addr), fmt.Appendf(nil, "closed %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "5 connections counted", func() bool {
		s := f.statsFile()
		v, _ := s.value(total)
		d, _ := s.value(destroy)
		return v == 5 && d == 2
	})
	h := f.restart("sighup", f.current())
	if h.moved != 3 {
		t.Fatalf("moved %d connections, want 3", h.moved)
	}
	for i, c := range open {
		if err := echoRoundTrip(c, fmt.Appendf(nil, "moved %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	s := f.statsFile()
	v, _ := s.value(total)
	d, _ := s.value(destroy)
	a, _ := s.value(active)
	tp, _ := s.value("tcp.l.downstream_cx_total")
	if v != 5 || tp != 5 || d != 2 || a != 3 {
		t.Errorf("after moving 3 open connections: %s = %d, tcp.l.downstream_cx_total = %d, %s = %d, %s = %d; want 5, 5, 2 and 3 (no connection was opened or closed)",
			total, v, tp, destroy, d, active, a)
	}
}

// TestHotRestartMovedConnectionKeepsItsStart: a TCP proxy pair moved to the
// successor keeps the time it began, so its max_downstream_connection_duration
// runs out when it would have in the parent, not that long after the move.
func TestHotRestartMovedConnectionKeepsItsStart(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	const limit = 4 * time.Second
	b := fixedPort(t, up.Addr)
	b.Listeners[0].MaxDuration = limit.String()
	f := startFleet(t, b.yaml(t))
	start := time.Now()
	c := dial(t, f.addr("l"))
	if err := echoRoundTrip(c, []byte("before")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(limit / 2)
	if h := f.restart("sighup", f.current()); h.moved != 1 {
		t.Fatalf("moved %d connections, want 1", h.moved)
	}
	if err := echoRoundTrip(c, []byte("after")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * limit))
	_, err := c.Read(make([]byte, 1))
	closed := time.Since(start)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %v, want the connection closed at max_downstream_connection_duration", err)
	}
	// Counted from the move it would end at limit/2 + the restart + limit.
	if closed < limit || closed > limit+limit/3 {
		t.Errorf("closed %v after it began, want about max_downstream_connection_duration (%v)", closed, limit)
	}
	waitFor(t, "the successor counts the duration's end", func() bool {
		v, _ := f.statsFile().value("tcp.l.max_downstream_connection_duration")
		return v == 1
	})
}

// TestHotRestartMovedHTTPConnectionCountedOnce: idle HTTP/1.1 connections an
// HTTP connection manager hands over are counted once in its
// http.<stat_prefix>.downstream_cx_* stats, go on with the successor, and are
// counted as destroyed only when they end there.
func TestHotRestartMovedHTTPConnectionCountedOnce(t *testing.T) {
	t.Parallel()
	web := startHTTPUpstream(t)
	f := startFleet(t, bootstrap{
		Listeners: []listenerCfg{{Name: "h", HTTP: true, Cluster: "web"}},
		Clusters:  []clusterCfg{{Name: "web", Endpoints: []string{web.Addr}}},
	}.yaml(t))
	addr := f.addr("h")
	var idle []*idleHTTP
	for i := range 3 {
		idle = append(idle, dialIdleHTTP(t, addr, fmt.Sprintf("/before/%d", i)))
	}
	stat := func(s fileStats, name string) int64 {
		v, _ := s.value("http.h.downstream_cx_" + name)
		return v
	}
	h := f.restart("sighup", f.current())
	if h.moved != len(idle) {
		t.Errorf("moved %d connections, want the %d idle ones", h.moved, len(idle))
	}
	for i, c := range idle {
		if err := c.get(fmt.Sprintf("/after/%d", i)); err != nil {
			t.Fatalf("idle connection %d after the restart: %v", i, err)
		}
	}
	s := f.statsFile()
	if tot, http1, act, des := stat(s, "total"), stat(s, "http1_total"), stat(s, "active"), stat(s, "destroy"); tot != 3 || http1 != 3 || act != 3 || des != 0 {
		t.Errorf("after moving 3 idle connections: total %d, http1_total %d, active %d, destroy %d; want 3, 3, 3, 0", tot, http1, act, des)
	}
	idle[0].c.Close()
	waitFor(t, "the closed connection counted as destroyed", func() bool {
		s := f.statsFile()
		return stat(s, "destroy") == 1 && stat(s, "active") == 2
	})
}

// fixedPort is simple(endpoints...) with the listener on a free port rather than
// port 0: its stats are named after its configured address
// (listener.127.0.0.1_<port>.*).
func fixedPort(t testing.TB, endpoints ...string) bootstrap {
	b := simple(endpoints...)
	b.Listeners[0].Address = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	return b
}

func splitPort(t testing.TB, addr string) (string, string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

// TestHotRestartFigures measures hot restarts under load (as
// TestHotRestartUnderLoad's, but for the idle connections), for each trigger:
// the time from the trigger until the successor accepts (its first "listener
// bound", on an inherited socket), until it has taken over ("took over from the
// parent"), until it logs "skiff started", and until the parent has exited;
// and the requests that failed. It asserts nothing about time and runs only
// when asked to:
//
//	SKIFF_E2E_FIGURES=5 go test -run TestHotRestartFigures -v ./e2e/
//
// (the number is the restarts per trigger).
func TestHotRestartFigures(t *testing.T) {
	reps, _ := strconv.Atoi(os.Getenv("SKIFF_E2E_FIGURES"))
	if reps <= 0 {
		t.Skip("set SKIFF_E2E_FIGURES=N to measure N hot restarts per trigger")
	}
	type row struct {
		accepting, tookOver, started, parentExit time.Duration
		requests, failed                         int64
		moved                                    int
	}
	summary := map[string][]row{}
	triggers := []string{"sighup", "admin", "takeover"}
	for _, how := range triggers {
		t.Run(how, func(t *testing.T) {
			web := startHTTPUpstream(t)
			echo := startUpstream(t, "127.0.0.1", longEchoHandler)
			f := startFleet(t, loadTestBootstrap(t, web.Addr, echo.Addr))
			httpAddr, hcmAddr := f.addr("http"), f.addr("hcm")
			ss := startStreams(t, f.addr("tcp"), 4)
			pid := f.current()
			for i := range reps {
				closing, keepAlive := startHTTPLoad(t, httpAddr, false), startHTTPLoad(t, httpAddr, true)
				hcmKeepAlive := startHTTPLoad(t, hcmAddr, true)
				web.waitServed(t, web.served.Load(), 200, 15*time.Second, "load before the restart")
				from := f.mark()
				h := f.restart(how, pid)
				web.waitServed(t, web.served.Load(), 200, 15*time.Second, "load after the restart")
				rc, rk, rh := closing.stop(t), keepAlive.stop(t), hcmKeepAlive.stop(t)
				bound, _ := f.waitMsg(from, time.Second, "listener bound")
				r := row{
					accepting: logTime(t, bound).Sub(h.trigger), tookOver: h.tookOver.Sub(h.trigger),
					started: h.started.Sub(h.trigger), parentExit: h.parentExit.Sub(h.trigger),
					requests: rc.requests + rk.requests + rh.requests, failed: rc.failures + rk.failures + rh.failures, moved: h.moved,
				}
				summary[how] = append(summary[how], r)
				t.Logf("%s #%d: accepting %v, took over %v, started %v, parent exited %v; %d requests, %d failed; %d connections moved",
					how, i+1, ms(r.accepting), ms(r.tookOver), ms(r.started), ms(r.parentExit), r.requests, r.failed, r.moved)
				pid = h.pid
			}
			ss.finish(t)
		})
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "hot restart figures (%d restarts per trigger, race detector %t; median / max, from the trigger):\n", reps, raceEnabled)
	fmt.Fprintf(&sb, "%-9s %-19s %-19s %-19s %-19s %s\n", "trigger", "accepting", "took over", "skiff started", "parent exited", "failed requests")
	for _, how := range triggers {
		rows := summary[how]
		if len(rows) == 0 {
			continue
		}
		stat := func(get func(row) time.Duration) string {
			var d []time.Duration
			for _, r := range rows {
				d = append(d, get(r))
			}
			sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
			return fmt.Sprintf("%v / %v", ms(d[len(d)/2]), ms(d[len(d)-1]))
		}
		var req, failed int64
		for _, r := range rows {
			req, failed = req+r.requests, failed+r.failed
		}
		fmt.Fprintf(&sb, "%-9s %-19s %-19s %-19s %-19s %d of %d\n", how,
			stat(func(r row) time.Duration { return r.accepting }), stat(func(r row) time.Duration { return r.tookOver }),
			stat(func(r row) time.Duration { return r.started }), stat(func(r row) time.Duration { return r.parentExit }), failed, req)
	}
	t.Log(sb.String())
}

func ms(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
