package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// adminBlock is a bootstrap's admin section on loopback, port 0.
const adminBlock = "admin:\n  address: { socket_address: { address: \"127.0.0.1\", port_value: 0 } }\n"

// adminSkiff is a skiff started with an admin address, and gRPC connections to
// its admin API over TCP and over its unix socket.
type adminSkiff struct {
	*Proxy
	tcpAddr  string // the admin API's host:port
	sockPath string // <runtime-dir>/admin.sock
	tcp      *grpc.ClientConn
	unix     *grpc.ClientConn
}

// startAdminSkiff runs b with an admin address of 127.0.0.1:0.
func startAdminSkiff(t *testing.T, b bootstrap, extra ...string) *adminSkiff {
	t.Helper()
	return startAdminSkiffYAML(t, b.yaml(t), extra...)
}

// startAdminSkiffYAML is startAdminSkiff for a bootstrap written out.
func startAdminSkiffYAML(t *testing.T, yaml string, extra ...string) *adminSkiff {
	t.Helper()
	p := startSkiff(t, adminBlock+yaml, extra...)
	a := &adminSkiff{Proxy: p, sockPath: filepath.Join(p.RuntimeDir, "admin.sock")}
	for _, l := range p.Logs() {
		if l.Msg() == "admin listening" && l.Fields["network"] == "tcp" {
			a.tcpAddr = l.Fields["address"]
		}
	}
	if a.tcpAddr == "" {
		t.Fatal(`skiff logged no "admin listening" line for its TCP admin address before "skiff started"`)
	}
	a.tcp = grpcConn(t, a.tcpAddr)
	a.unix = grpcConn(t, "unix://"+a.sockPath)
	return a
}

func grpcConn(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (a *adminSkiff) admin(overUnix bool) adminv1.AdminServiceClient {
	if overUnix {
		return adminv1.NewAdminServiceClient(a.unix)
	}
	return adminv1.NewAdminServiceClient(a.tcp)
}

// rpcCtx is a context for one admin call.
func rpcCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// adminGet fetches path from the admin API's HTTP side.
func (a *adminSkiff) adminGet(t *testing.T, path string) (int, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get("http://" + a.tcpAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// clusterHost returns the admin API's view of one host of a cluster.
func (a *adminSkiff) clusterHost(t *testing.T, cluster, host string) *adminv1.HostStatus {
	t.Helper()
	r, err := a.admin(false).ListClusters(rpcCtx(t), &adminv1.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.GetClusters() {
		for _, h := range c.GetHosts() {
			if c.GetName() == cluster && h.GetAddress() == host {
				return h
			}
		}
	}
	t.Fatalf("ListClusters has no host %s in cluster %s: %v", host, cluster, r)
	return nil
}

// waitFor polls cond every 20 ms for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAdminInfoListenersClusters: server info, the listeners with the port
// chosen for port 0, and the clusters with per-host counters after traffic.
func TestAdminInfoListenersClusters(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	refused := refusingAddr(t)
	b := simple(up.Addr)
	b.Node = "e2e-admin"
	b.Listeners = append(b.Listeners, listenerCfg{Name: "dead", Cluster: "dead"})
	b.Clusters = append(b.Clusters, clusterCfg{Name: "dead", Endpoints: []string{refused}})
	a := startAdminSkiff(t, b)
	ctx := rpcCtx(t)

	info, err := a.admin(false).GetServerInfo(ctx, &adminv1.GetServerInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetState() != adminv1.ServerState_SERVER_STATE_LIVE || info.GetGeneration() != 1 || info.GetNodeId() != "e2e-admin" ||
		!strings.HasPrefix(info.GetVersion(), testVersion+" ") || info.GetPid() != int64(a.Pid()) || info.GetHotRestartEpoch() != 0 ||
		info.GetRuntimeDir() != a.RuntimeDir || info.GetUptime().AsDuration() <= 0 {
		t.Errorf("GetServerInfo = %v", info)
	}

	ls, err := a.admin(false).ListListeners(ctx, &adminv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range ls.GetListeners() {
		got = append(got, l.GetName()+"="+l.GetLocalAddress())
		if strings.HasSuffix(l.GetLocalAddress(), ":0") {
			t.Errorf("listener %s reported at %s, want the port the system chose", l.GetName(), l.GetLocalAddress())
		}
	}
	if want := []string{"dead=" + a.Addr(t, "dead"), "l=" + a.Addr(t, "l")}; !slices.Equal(got, want) {
		t.Errorf("ListListeners = %v, want %v (the addresses skiff logged as bound)", got, want)
	}

	for i := range 2 {
		c := dial(t, a.Addr(t, "l"))
		if err := echoRoundTrip(c, []byte("hello admin")); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Close()
	}
	c := dial(t, a.Addr(t, "dead"))
	expectClosed(t, c, 10*time.Second)
	waitFor(t, "the connections to end", func() bool {
		return a.clusterHost(t, "c", up.Addr).GetCxActive() == 0 && a.clusterHost(t, "dead", refused).GetCxConnectFail() == 1
	})
	h := a.clusterHost(t, "c", up.Addr)
	if h.GetCxTotal() != 2 || h.GetCxConnectFail() != 0 || h.GetWeight() != 1 || !h.GetHealthy() || h.GetHealthStatus() != "UNKNOWN" {
		t.Errorf("host %s after two connections: %v", up.Addr, h)
	}
	if d := a.clusterHost(t, "dead", refused); d.GetCxTotal() != 1 || d.GetCxConnectFail() != 1 {
		t.Errorf("refusing host %s after one attempt: %v", refused, d)
	}
	cl, err := a.admin(false).ListClusters(ctx, &adminv1.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if c := cl.GetClusters()[0]; c.GetName() != "c" || c.GetAddedViaApi() || c.GetLbPolicy() != "ROUND_ROBIN" {
		t.Errorf("cluster c: %v, want a static ROUND_ROBIN cluster", c)
	}
}

// TestAdminStats: a regex filter, used-only, and a WatchStats stream that sees
// a counter change.
func TestAdminStats(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr))
	ctx := rpcCtx(t)

	r, err := a.admin(false).GetStats(ctx, &adminv1.GetStatsRequest{Filter: `^cluster\.c\.upstream_cx_`})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]int64{}
	for _, s := range r.GetStats() {
		names[s.GetName()] = s.GetValue()
		if !strings.HasPrefix(s.GetName(), "cluster.c.upstream_cx_") {
			t.Errorf("GetStats(^cluster.c.upstream_cx_) returned %s", s.GetName())
		}
	}
	if v, ok := names["cluster.c.upstream_cx_total"]; !ok || v != 0 {
		t.Errorf("GetStats: cluster.c.upstream_cx_total = %d (present %t), want 0", v, ok)
	}
	used, err := a.admin(false).GetStats(ctx, &adminv1.GetStatsRequest{UsedOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	// Used as Envoy means it: written. A counter at 0 never was; a gauge
	// at 0 was if it was set (server.state is 0 once live).
	usedNames := map[string]bool{}
	for _, s := range used.GetStats() {
		usedNames[s.GetName()] = true
		switch s.GetType() {
		case adminv1.StatType_STAT_TYPE_HISTOGRAM:
			if s.GetHistogram().GetCount() == 0 {
				t.Errorf("GetStats(used_only) returned the empty histogram %s", s.GetName())
			}
		case adminv1.StatType_STAT_TYPE_COUNTER:
			if s.GetValue() == 0 {
				t.Errorf("GetStats(used_only) returned %s = %d", s.GetName(), s.GetValue())
			}
		}
	}
	if !usedNames["server.state"] || usedNames["cluster.c.upstream_cx_total"] {
		t.Errorf("GetStats(used_only): server.state (set to 0: live) missing, or cluster.c.upstream_cx_total (0) there: %v", usedNames)
	}

	stream, err := a.admin(false).WatchStats(ctx, &adminv1.WatchStatsRequest{Filter: `^tcp\.l\.downstream_cx_total$`, Interval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetStats()) != 1 || first.GetStats()[0].GetValue() != 0 {
		t.Fatalf("first WatchStats message: %v, want tcp.l.downstream_cx_total at 0", first.GetStats())
	}
	c := dial(t, a.Addr(t, "l"))
	if err := echoRoundTrip(c, []byte("count me")); err != nil {
		t.Fatal(err)
	}
	next, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(next.GetStats()) != 1 || next.GetStats()[0].GetValue() != 1 {
		t.Errorf("WatchStats after a connection: %v, want tcp.l.downstream_cx_total at 1", next.GetStats())
	}
}

// TestAdminConfigDump: a static bootstrap comes back as a valid
// envoy.admin.v3.ConfigDump with its listeners and clusters.
func TestAdminConfigDump(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	b := simple(up.Addr)
	b.Node = "e2e-dump"
	a := startAdminSkiff(t, b)
	r, err := a.admin(false).GetConfigDump(rpcCtx(t), &adminv1.GetConfigDumpRequest{IncludeEds: true})
	if err != nil {
		t.Fatal(err)
	}
	cd := &adminv3.ConfigDump{}
	if err := r.GetConfigDump().UnmarshalTo(cd); err != nil {
		t.Fatalf("config_dump is not an envoy.admin.v3.ConfigDump: %v", err)
	}
	if err := cd.ValidateAll(); err != nil {
		t.Errorf("config dump does not validate: %v", err)
	}
	var (
		bd  adminv3.BootstrapConfigDump
		ld  adminv3.ListenersConfigDump
		cld adminv3.ClustersConfigDump
		ed  adminv3.EndpointsConfigDump
	)
	for _, a := range cd.GetConfigs() {
		switch {
		case a.MessageIs(&bd):
			a.UnmarshalTo(&bd)
		case a.MessageIs(&ld):
			a.UnmarshalTo(&ld)
		case a.MessageIs(&cld):
			a.UnmarshalTo(&cld)
		case a.MessageIs(&ed):
			a.UnmarshalTo(&ed)
		}
	}
	if bd.GetBootstrap().GetNode().GetId() != "e2e-dump" {
		t.Errorf("bootstrap dump: node %v, want e2e-dump", bd.GetBootstrap().GetNode())
	}
	if len(ld.GetStaticListeners()) != 1 || len(cld.GetStaticClusters()) != 1 || len(ed.GetStaticEndpointConfigs()) != 1 {
		t.Fatalf("config dump: %d static listeners, %d static clusters, %d static endpoint configs; want 1 each",
			len(ld.GetStaticListeners()), len(cld.GetStaticClusters()), len(ed.GetStaticEndpointConfigs()))
	}
	l, c := &listenerv3.Listener{}, &clusterv3.Cluster{}
	if err := ld.GetStaticListeners()[0].GetListener().UnmarshalTo(l); err != nil || l.GetName() != "l" {
		t.Errorf("static listener: %v, %v; want l", l, err)
	}
	if err := cld.GetStaticClusters()[0].GetCluster().UnmarshalTo(c); err != nil || c.GetName() != "c" {
		t.Errorf("static cluster: %v, %v; want c", c, err)
	}
}

// TestAdminLogLevel: a log level set over the admin API takes effect at once.
func TestAdminLogLevel(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr))
	ctx := rpcCtx(t)
	debugLine := func(l LogLine) bool { return l.Msg() == "tcp_proxy: connection done" }

	round := func() {
		c := dial(t, a.Addr(t, "l"))
		if err := echoRoundTrip(c, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		waitFor(t, "the connection to end", func() bool { return a.clusterHost(t, "c", up.Addr).GetCxActive() == 0 })
	}
	round()
	if slices.ContainsFunc(a.Logs(), debugLine) {
		t.Fatal("skiff logged a debug line at log level info")
	}
	r, err := a.admin(true).SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetLevel() != "debug" || r.GetPreviousLevel() != "info" {
		t.Errorf("SetLogLevel(debug) = %v", r)
	}
	if g, err := a.admin(false).GetLogLevel(ctx, &adminv1.GetLogLevelRequest{}); err != nil || g.GetLevel() != "debug" {
		t.Errorf("GetLogLevel = %v, %v; want debug", g, err)
	}
	round()
	a.WaitLog(t, 10*time.Second, "a debug line after the level became debug", debugLine)
}

// TestAdminDrainListeners: DrainListeners stops the listeners accepting while
// open connections go on, and the server is no longer ready.
func TestAdminDrainListeners(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr), "--drain-time", "60s")
	ctx := rpcCtx(t)
	addr := a.Addr(t, "l")
	c := dial(t, addr)
	if err := echoRoundTrip(c, []byte("before the drain")); err != nil {
		t.Fatal(err)
	}
	health := healthpb.NewHealthClient(a.tcp)
	if h, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the drain: %v, %v; want SERVING", h, err)
	}
	if code, body := a.adminGet(t, "/ready"); code != http.StatusOK || body != "LIVE\n" {
		t.Fatalf("GET /ready before the drain: %d %q, want 200 LIVE", code, body)
	}

	if _, err := a.admin(true).DrainListeners(ctx, &adminv1.DrainListenersRequest{}); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, addr, 10*time.Second)
	if err := echoRoundTrip(c, []byte("after the drain")); err != nil {
		t.Errorf("open connection after DrainListeners: %v", err)
	}
	if code, body := a.adminGet(t, "/ready"); code != http.StatusServiceUnavailable || body != "DRAINING\n" {
		t.Errorf("GET /ready after the drain: %d %q, want 503 DRAINING", code, body)
	}
	if h, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health after the drain: %v, %v; want NOT_SERVING", h, err)
	}
	if r, err := a.admin(false).GetReady(ctx, &adminv1.GetReadyRequest{}); err != nil || r.GetReady() || r.GetState() != adminv1.ServerState_SERVER_STATE_DRAINING {
		t.Errorf("GetReady after the drain: %v, %v", r, err)
	}
	c.Close()
	a.Stop(t)
}

// TestAdminShutdownDraining: while skiff drains after SIGTERM, the admin API
// still answers and reports DRAINING.
func TestAdminShutdownDraining(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr), "--drain-time", "60s")
	c := dial(t, a.Addr(t, "l"))
	if err := echoRoundTrip(c, []byte("keep me open")); err != nil {
		t.Fatal(err)
	}
	a.Signal(t, syscall.SIGTERM)
	waitFor(t, "/ready to say DRAINING", func() bool {
		code, body := a.adminGet(t, "/ready")
		return code == http.StatusServiceUnavailable && body == "DRAINING\n"
	})
	h, err := healthpb.NewHealthClient(a.unix).Check(rpcCtx(t), &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health while draining: %v, %v; want NOT_SERVING", h, err)
	}
	c.Close()
	if code := a.Wait(t, exitTimeout); code != 0 {
		t.Fatalf("skiff exited with %d after the drain, want 0", code)
	}
	if _, err := os.Stat(a.sockPath); !os.IsNotExist(err) {
		t.Errorf("admin socket still there after skiff exited: %v", err)
	}
}

// TestAdminShutdownNow: POST /quitquitquit over the admin unix socket makes
// skiff exit at once with status 0, its open connection closed rather than
// drained for the 120 s drain time (Envoy's /quitquitquit); over TCP it is
// refused and skiff serves on. `skiff admin shutdown` (the gRPC call) ends a
// SIGTERM drain under way the same way.
func TestAdminShutdownNow(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	t.Run("quitquitquit", func(t *testing.T) {
		t.Parallel()
		a := startAdminSkiff(t, simple(up.Addr), "--drain-time", "120s")
		c := dial(t, a.Addr(t, "l"))
		if err := echoRoundTrip(c, []byte("before")); err != nil {
			t.Fatal(err)
		}
		post := func(client *http.Client, url string) (int, string) {
			t.Helper()
			resp, err := client.Post(url, "text/plain", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		tcp := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 20 * time.Second}
		if code, body := post(tcp, "http://"+a.tcpAddr+"/quitquitquit"); code != http.StatusForbidden {
			t.Fatalf("POST /quitquitquit over TCP: %d %q, want 403", code, body)
		}
		if err := echoRoundTrip(c, []byte("after the refused quit")); err != nil {
			t.Fatalf("connection after a refused /quitquitquit: %v", err)
		}
		unix := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", a.sockPath)
			}}, Timeout: 20 * time.Second}
		if code, body := post(unix, "http://skiff/quitquitquit"); code != http.StatusOK || body != "OK\n" {
			t.Fatalf("POST /quitquitquit over the unix socket: %d %q, want 200 OK", code, body)
		}
		if code := a.Wait(t, exitTimeout); code != 0 {
			t.Errorf("skiff exited with %d after /quitquitquit, want 0", code)
		}
		if _, err := expectClosed(t, c, 10*time.Second); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("connection ended with %v, want EOF or a reset", err)
		}
	})
	t.Run("during a drain", func(t *testing.T) {
		t.Parallel()
		a := startAdminSkiff(t, simple(up.Addr), "--drain-time", "120s")
		c := dial(t, a.Addr(t, "l"))
		if err := echoRoundTrip(c, []byte("before")); err != nil {
			t.Fatal(err)
		}
		a.Signal(t, syscall.SIGTERM)
		waitFor(t, "/ready to say DRAINING", func() bool {
			code, body := a.adminGet(t, "/ready")
			return code == http.StatusServiceUnavailable && body == "DRAINING\n"
		})
		if err := echoRoundTrip(c, []byte("draining")); err != nil {
			t.Fatalf("connection during the drain: %v", err)
		}
		if r := runSkiff(t, "admin", "--runtime-dir", a.RuntimeDir, "shutdown"); r.code != 0 || r.stdout != "skiff is shutting down\n" {
			t.Fatalf("skiff admin shutdown: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if code := a.Wait(t, exitTimeout); code != 0 {
			t.Errorf("skiff exited with %d after skiff admin shutdown, want 0", code)
		}
		if _, err := expectClosed(t, c, 10*time.Second); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("connection ended with %v, want EOF or a reset", err)
		}
	})
}

// TestAdminReflectionAndCSDS: reflection lists the services (grpcurl list),
// and CSDS answers an empty request with exactly this skiff's node.
func TestAdminReflectionAndCSDS(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	b := simple(up.Addr)
	b.Node = "e2e-csds"
	a := startAdminSkiff(t, b)
	ctx := rpcCtx(t)

	stream, err := reflectionpb.NewServerReflectionClient(a.tcp).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	lr, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	var services []string
	for _, s := range lr.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	for _, want := range []string{"skiff.admin.v1.AdminService", "envoy.service.status.v3.ClientStatusDiscoveryService", "grpc.health.v1.Health"} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection lists %v, want %s among them", services, want)
		}
	}

	resp, err := statusv3.NewClientStatusDiscoveryServiceClient(a.tcp).FetchClientStatus(ctx, &statusv3.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetConfig()) != 1 {
		t.Fatalf("CSDS returned %d ClientConfigs, want exactly 1: %v", len(resp.GetConfig()), resp)
	}
	if cfg := resp.GetConfig()[0]; cfg.GetNode().GetId() != "e2e-csds" || len(cfg.GetGenericXdsConfigs()) != 0 {
		t.Errorf("CSDS ClientConfig = %v, want node e2e-csds and no xDS resources (static bootstrap)", cfg)
	}
}

// TestAdminPrometheus: /stats/prometheus names stats as Envoy does.
func TestAdminPrometheus(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr))
	c := dial(t, a.Addr(t, "l"))
	if err := echoRoundTrip(c, []byte("scrape me")); err != nil {
		t.Fatal(err)
	}
	code, body := a.adminGet(t, "/stats/prometheus")
	if code != http.StatusOK {
		t.Fatalf("GET /stats/prometheus: %d\n%s", code, body)
	}
	for _, want := range []string{
		`(?m)^# TYPE envoy_cluster_upstream_cx_total counter\nenvoy_cluster_upstream_cx_total\{envoy_cluster_name="c"\} 1$`,
		`(?m)^# TYPE envoy_tcp_downstream_cx_total counter\nenvoy_tcp_downstream_cx_total\{envoy_tcp_prefix="l"\} 1$`,
		`(?m)^envoy_listener_downstream_cx_total\{envoy_listener_address="127\.0\.0\.1_\d+"\} 1$`,
		`(?m)^# TYPE envoy_cluster_upstream_cx_active gauge\nenvoy_cluster_upstream_cx_active\{envoy_cluster_name="c"\} 1$`,
		`(?m)^envoy_server_live\{\} 1$`,
	} {
		if !regexp.MustCompile(want).MatchString(body) {
			t.Errorf("GET /stats/prometheus does not match %s:\n%s", want, body)
		}
	}
	if _, body := a.adminGet(t, "/stats?filter=^tcp%5C.l%5C.downstream_cx_total$"); body != "tcp.l.downstream_cx_total: 1\n" {
		t.Errorf("GET /stats?filter=^tcp\\.l\\.downstream_cx_total$ = %q", body)
	}
}

// TestAdminStatsConfig: a bootstrap's stats_config decides which stats
// exist (stats_matcher: the tcp_proxy's are left out of /stats, Prometheus
// and the stats file) and the Prometheus labels (stats_tags written as
// istio-agent writes them, with an ECMAScript look-ahead and [:digit:]
// classes, and a fixed_value; use_all_default_tags off, so no envoy_ tags).
func TestAdminStatsConfig(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiffYAML(t, `stats_config:
  use_all_default_tags: false
  stats_tags:
  - tag_name: cluster_name
    regex: '^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)'
  - tag_name: listener_address
    regex: '^listener(?=\.)\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)'
  - tag_name: mesh
    fixed_value: m1
  stats_matcher:
    inclusion_list:
      patterns: [{prefix: cluster.}, {prefix: listener.}, {prefix: server.}]
`+simple(up.Addr).yaml(t))
	c := dial(t, a.Addr(t, "l"))
	if err := echoRoundTrip(c, []byte("scrape me")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	code, body := a.adminGet(t, "/stats/prometheus")
	if code != http.StatusOK {
		t.Fatalf("GET /stats/prometheus: %d\n%s", code, body)
	}
	for _, want := range []string{
		`(?m)^# TYPE envoy_cluster_upstream_cx_total counter\nenvoy_cluster_upstream_cx_total\{cluster_name="c",mesh="m1"\} 1$`,
		`(?m)^envoy_listener_downstream_cx_total\{listener_address="127\.0\.0\.1_\d+",mesh="m1"\} 1$`,
		`(?m)^envoy_server_live\{mesh="m1"\} 1$`,
	} {
		if !regexp.MustCompile(want).MatchString(body) {
			t.Errorf("GET /stats/prometheus does not match %s:\n%s", want, body)
		}
	}
	if strings.Contains(body, "envoy_tcp_") || strings.Contains(body, "envoy_cluster_name") {
		t.Errorf("GET /stats/prometheus has a stat the inclusion list leaves out, or a default tag:\n%s", body)
	}
	if _, body := a.adminGet(t, "/stats"); strings.Contains(body, "tcp.l.") || !strings.Contains(body, "cluster.c.upstream_cx_total: 1") {
		t.Errorf("GET /stats:\n%s", body)
	}
	if r := runSkiff(t, "stats", "--runtime-dir", a.RuntimeDir); r.code != 0 || strings.Contains(r.stdout, "tcp.l.") ||
		!strings.Contains(r.stdout, "cluster.c.upstream_cx_total") {
		t.Errorf("skiff stats (the stats file): exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestAdminSocketMode: <runtime-dir>/admin.sock is a socket only its owner can use.
func TestAdminSocketMode(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	// No admin address in the bootstrap: the unix socket is served all the same.
	p := startSkiff(t, simple(up.Addr).yaml(t))
	sock := filepath.Join(p.RuntimeDir, "admin.sock")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want a socket with mode 0600", sock, fi.Mode())
	}
	r, err := adminv1.NewAdminServiceClient(grpcConn(t, "unix://"+sock)).GetReady(rpcCtx(t), &adminv1.GetReadyRequest{})
	if err != nil || !r.GetReady() {
		t.Errorf("GetReady over %s: %v, %v", sock, r, err)
	}
}

// TestAdminRemoteAddressRefused: an admin address that is not loopback needs
// --admin-allow-remote; without it skiff exits before binding anything.
func TestAdminRemoteAddressRefused(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	cfg := writeFile(t, "bootstrap.yaml", "admin:\n  address: { socket_address: { address: \"0.0.0.0\", port_value: 0 } }\n"+simple(up.Addr).yaml(t))
	r := runSkiff(t, "run", "-c", cfg, "--log-encoding", "json", "--runtime-dir", filepath.Join(t.TempDir(), "run"))
	if r.code == 0 {
		t.Fatalf("skiff with a non-loopback admin address exited 0; stderr:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "admin.address") || !strings.Contains(r.stderr, "--admin-allow-remote") {
		t.Errorf("stderr does not name admin.address and --admin-allow-remote:\n%s", r.stderr)
	}
	for _, l := range r.logs {
		if l.Msg() == "listener bound" || l.Msg() == "admin listening" {
			t.Errorf("skiff bound a socket before refusing the admin address: %s", l.Raw)
		}
	}
	// With the flag the configuration is accepted (validate binds nothing).
	ok := runSkiff(t, "run", "-c", cfg, "--mode", "validate", "--admin-allow-remote")
	if ok.code != 0 || !strings.Contains(ok.stdout, "OK") {
		t.Errorf("--mode validate --admin-allow-remote: exit %d\n%s%s", ok.code, ok.stdout, ok.stderr)
	}
}

// TestAdminMutationsOverTCP: calls that change skiff are refused over TCP by
// default, accepted over the unix socket, and over TCP with
// --admin-tcp-mutations.
func TestAdminMutationsOverTCP(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr))
	ctx := rpcCtx(t)
	if _, err := a.admin(false).SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: "debug"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("SetLogLevel over TCP: %v, want PermissionDenied", err)
	}
	if _, err := a.admin(false).DrainListeners(ctx, &adminv1.DrainListenersRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("DrainListeners over TCP: %v, want PermissionDenied", err)
	}
	if _, err := a.admin(false).StartHotRestart(ctx, &adminv1.StartHotRestartRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("StartHotRestart over TCP: %v, want PermissionDenied", err)
	}
	// The listener still accepts: the refused drain did nothing.
	if err := echoRoundTrip(dial(t, a.Addr(t, "l")), []byte("still here")); err != nil {
		t.Error(err)
	}
	// Over the unix socket it is accepted: a successor takes over.
	if r, err := a.admin(true).StartHotRestart(ctx, &adminv1.StartHotRestartRequest{}); err != nil || r.GetPid() <= 0 || r.GetHotRestartEpoch() != 1 {
		t.Errorf("StartHotRestart over the unix socket: %v, %v; want the successor's pid and epoch 1", r, err)
	}

	open := startAdminSkiff(t, simple(up.Addr), "--admin-tcp-mutations")
	if _, err := open.admin(false).SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: "warning"}); err != nil {
		t.Errorf("SetLogLevel over TCP with --admin-tcp-mutations: %v", err)
	}
}

// TestAdminCLI: 'skiff admin' against a running skiff, for people and for scripts.
func TestAdminCLI(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr))
	adm := func(args ...string) result {
		t.Helper()
		return runSkiff(t, append([]string{"admin", "--runtime-dir", a.RuntimeDir}, args...)...)
	}
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"info"}, []string{"state", "LIVE", "generation"}},
		{[]string{"ready"}, []string{"LIVE"}},
		{[]string{"listeners"}, []string{"LISTENER", "l", a.Addr(t, "l")}},
		{[]string{"clusters"}, []string{"CLUSTER", "c", up.Addr, "UNKNOWN"}},
		{[]string{"stats", "--filter", `^cluster\.c\.membership_total$`}, []string{"cluster.c.membership_total: 1"}},
		{[]string{"config-dump"}, []string{"listener", "cluster", "static"}},
		{[]string{"csds"}, []string{"0 xDS resources"}},
		{[]string{"log-level"}, []string{"info"}},
		{[]string{"log-level", "debug"}, []string{"log level debug (was info)"}},
		{[]string{"reopen-logs"}, []string{"access logs reopened"}},
	} {
		r := adm(tt.args...)
		if r.code != 0 {
			t.Errorf("skiff admin %v: exit %d\n%s", tt.args, r.code, r.stderr)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("skiff admin %v printed:\n%s\nwant %q in it", tt.args, r.stdout, w)
			}
		}
	}

	// profile writes pprof's gzipped protobuf.
	for _, args := range [][]string{{"cpu", "--duration", "200ms"}, {"heap"}} {
		out := filepath.Join(t.TempDir(), args[0]+".pprof")
		r := adm(append([]string{"profile", "--out", out}, args...)...)
		b, err := os.ReadFile(out)
		if r.code != 0 || err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b || !strings.Contains(r.stdout, "go tool pprof "+out) {
			t.Errorf("skiff admin profile %v: exit %d, %v, %d bytes starting %x\n%s%s", args, r.code, err, len(b), b[:min(len(b), 2)], r.stdout, r.stderr)
		}
	}

	// -o json is protojson of the response.
	r := adm("-o", "json", "config-dump")
	var dump struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &dump); err != nil || len(dump.Configs) == 0 {
		t.Errorf("skiff admin -o json config-dump: %v\n%s%s", err, r.stdout, r.stderr)
	}
	r = adm("listeners", "-o", "json")
	var ls struct {
		Listeners []struct {
			Name         string `json:"name"`
			LocalAddress string `json:"localAddress"`
		} `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil || len(ls.Listeners) != 1 || ls.Listeners[0].LocalAddress != a.Addr(t, "l") {
		t.Errorf("skiff admin listeners -o json: %v\n%s", err, r.stdout)
	}

	// Over TCP a drain or a reopen is refused, with the reason.
	for _, cmd := range []string{"drain", "reopen-logs"} {
		r = runSkiff(t, "admin", "--addr", a.tcpAddr, cmd)
		if r.code == 0 || !strings.Contains(r.stderr, "PermissionDenied") || !strings.Contains(r.stderr, "admin.sock") {
			t.Errorf("skiff admin --addr TCP %s: exit %d, stderr %q; want a refusal naming the unix socket", cmd, r.code, r.stderr)
		}
	}
	// restart hands over to a successor, which answers from then on.
	if r := adm("restart"); r.code != 0 || !strings.Contains(r.stdout, "hot restart started: pid") {
		t.Errorf("skiff admin restart: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// No skiff there: a clear error.
	if r := runSkiff(t, "admin", "--runtime-dir", t.TempDir(), "info"); r.code == 0 || !strings.Contains(r.stderr, "no admin socket") {
		t.Errorf("skiff admin without a skiff: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := adm("drain"); r.code != 0 || !strings.Contains(r.stdout, "stopped accepting") {
		t.Errorf("skiff admin drain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := adm("ready"); r.code != 1 || !strings.Contains(r.stdout, "DRAINING") {
		t.Errorf("skiff admin ready after a drain: exit %d, %q; want 1 and DRAINING", r.code, r.stdout)
	}
}
