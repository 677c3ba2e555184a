package admin

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/stats"
	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeDataplane is a Dataplane whose state the test sets.
type fakeDataplane struct {
	gen      atomic.Uint64
	applied  chan struct{}
	clusters *upstream.Manager

	mu       sync.Mutex
	drains   []bool // graceful, per call
	inbound  []bool // inboundOnly, per call
	reopen   atomic.Int32
	hcFailed atomic.Bool
}

func newFakeDataplane(st *stats.Store) *fakeDataplane {
	return &fakeDataplane{applied: make(chan struct{}), clusters: upstream.NewManager(st)}
}

func (f *fakeDataplane) Listeners() []dataplane.ListenerInfo {
	return []dataplane.ListenerInfo{{Name: "l", Bound: []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:41000"), netip.MustParseAddrPort("[::1]:41000")}}}
}
func (f *fakeDataplane) Clusters() *upstream.Manager { return f.clusters }
func (f *fakeDataplane) Generation() uint64          { return f.gen.Load() }
func (f *fakeDataplane) Applied() <-chan struct{}    { return f.applied }
func (f *fakeDataplane) DrainListeners(graceful, inboundOnly bool) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drains = append(f.drains, graceful)
	f.inbound = append(f.inbound, inboundOnly)
	return time.Now()
}

func (f *fakeDataplane) ReopenAccessLogs() { f.reopen.Add(1) }

func (f *fakeDataplane) SetHealthCheckFailed(failed bool) { f.hcFailed.Store(failed) }
func (f *fakeDataplane) HealthCheckFailed() bool          { return f.hcFailed.Load() }

func (f *fakeDataplane) drained() []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.drains)
}

func (f *fakeDataplane) apply() {
	if f.gen.Add(1) == 1 {
		close(f.applied)
	}
}

// fakeXDS is an XDSStatus (and VersionReporter) with fixed answers.
type fakeXDS struct {
	configs  []*statusv3.ClientConfig_GenericXdsConfig
	versions map[string]string
}

func (x *fakeXDS) GenericXdsConfigs() []*statusv3.ClientConfig_GenericXdsConfig { return x.configs }
func (x *fakeXDS) Versions() map[string]string                                  { return x.versions }

// testAdmin is a Server serving on a unix socket and a loopback port, with a
// client connection to each.
type testAdmin struct {
	srv      *Server
	dp       *fakeDataplane
	stats    *stats.Store
	levels   *slog.LevelVar
	unix     *grpc.ClientConn
	tcp      *grpc.ClientConn
	httpAddr string
	sock     string // the admin unix socket's path
}

func startTestAdmin(t *testing.T, configure func(*Options)) *testAdmin {
	t.Helper()
	st := stats.NewStore()
	ta := &testAdmin{dp: newFakeDataplane(st), stats: st, levels: new(slog.LevelVar)}
	opts := Options{
		Logger:    slog.New(slog.DiscardHandler),
		Dataplane: ta.dp,
		Stats:     st,
		Bootstrap: &bootstrapv3.Bootstrap{Node: &corev3.Node{Id: "node-1", Cluster: "c1"}},
		Levels:    ta.levels,
		Version:   "test",
	}
	if configure != nil {
		configure(&opts)
	}
	ta.srv = New(opts)
	sock := filepath.Join(t.TempDir(), SocketName)
	uln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta.httpAddr = tln.Addr().String()
	var wg sync.WaitGroup
	for _, ln := range []net.Listener{uln, tln} {
		wg.Go(func() {
			if err := ta.srv.Serve(ln); err != nil {
				t.Errorf("Serve(%s): %v", ln.Addr(), err)
			}
		})
	}
	dial := func(target string) *grpc.ClientConn {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		return cc
	}
	ta.unix, ta.tcp = dial("unix://"+sock), dial(ta.httpAddr)
	ta.sock = sock
	t.Cleanup(func() {
		ta.unix.Close()
		ta.tcp.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ta.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		wg.Wait()
	})
	return ta
}

func (ta *testAdmin) admin(overUnix bool) adminv1.AdminServiceClient {
	if overUnix {
		return adminv1.NewAdminServiceClient(ta.unix)
	}
	return adminv1.NewAdminServiceClient(ta.tcp)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func httpGet(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestStateReadyAndHealth(t *testing.T) {
	ta := startTestAdmin(t, nil)
	ctx := ctxT(t)
	health := healthpb.NewHealthClient(ta.tcp)
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	expectHealth := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		for {
			r, err := watch.Recv()
			if err != nil {
				t.Fatalf("health watch: %v", err)
			}
			if r.GetStatus() == want {
				return
			}
		}
	}
	expect := func(want adminv1.ServerState, code int) {
		t.Helper()
		r, err := ta.admin(false).GetReady(ctx, &adminv1.GetReadyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetState() != want || r.GetReady() != (want == adminv1.ServerState_SERVER_STATE_LIVE) {
			t.Errorf("GetReady = %v, want state %v", r, want)
		}
		got, body, _ := httpGet(t, "http://"+ta.httpAddr+"/ready")
		if wantBody := strings.TrimPrefix(want.String(), "SERVER_STATE_") + "\n"; got != code || body != wantBody {
			t.Errorf("GET /ready = %d %q, want %d %q", got, body, code, wantBody)
		}
	}

	expectHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	expect(adminv1.ServerState_SERVER_STATE_INITIALIZING, http.StatusServiceUnavailable)
	if v, _ := ta.stats.Value("server.state"); v != 3 {
		t.Errorf("server.state = %d while initializing, want 3 (Envoy's INITIALIZING)", v)
	}

	ta.dp.apply()
	expectHealth(healthpb.HealthCheckResponse_SERVING)
	expect(adminv1.ServerState_SERVER_STATE_LIVE, http.StatusOK)
	r, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "skiff.admin.v1.AdminService"})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Check(skiff.admin.v1.AdminService) = %v, %v; want SERVING", r, err)
	}
	if v, _ := ta.stats.Value("server.live"); v != 1 {
		t.Errorf("server.live = %d when LIVE, want 1", v)
	}

	ta.srv.SetDraining()
	expectHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	expect(adminv1.ServerState_SERVER_STATE_DRAINING, http.StatusServiceUnavailable)

	info, err := ta.admin(false).GetServerInfo(ctx, &adminv1.GetServerInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetNodeId() != "node-1" || info.GetGeneration() != 1 || info.GetVersion() != "test" || info.GetState() != adminv1.ServerState_SERVER_STATE_DRAINING {
		t.Errorf("GetServerInfo = %v", info)
	}
}

func TestMutationsOnlyOverUnixSocket(t *testing.T) {
	ta := startTestAdmin(t, nil)
	ctx := ctxT(t)
	if _, err := ta.admin(false).SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: "debug"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("SetLogLevel over TCP: %v, want PermissionDenied", err)
	} else if !strings.Contains(err.Error(), "--admin-tcp-mutations") {
		t.Errorf("SetLogLevel over TCP: %v, want the error to name --admin-tcp-mutations", err)
	}
	if _, err := ta.admin(false).DrainListeners(ctx, &adminv1.DrainListenersRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("DrainListeners over TCP: %v, want PermissionDenied", err)
	}
	if _, err := ta.admin(false).StartHotRestart(ctx, &adminv1.StartHotRestartRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("StartHotRestart over TCP: %v, want PermissionDenied", err)
	}
	if _, err := ta.admin(false).ReopenLogs(ctx, &adminv1.ReopenLogsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ReopenLogs over TCP: %v, want PermissionDenied", err)
	}
	if _, err := ta.admin(false).SetHealthCheckFailed(ctx, &adminv1.SetHealthCheckFailedRequest{Failed: true}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("SetHealthCheckFailed over TCP: %v, want PermissionDenied", err)
	}
	if ta.levels.Level() != slog.LevelInfo || len(ta.dp.drained()) != 0 || ta.dp.reopen.Load() != 0 || ta.dp.hcFailed.Load() {
		t.Fatalf("a refused call changed the server: level %v, drains %v, reopens %d", ta.levels.Level(), ta.dp.drained(), ta.dp.reopen.Load())
	}
	// Reading is fine over TCP.
	if r, err := ta.admin(false).GetLogLevel(ctx, &adminv1.GetLogLevelRequest{}); err != nil || r.GetLevel() != "info" {
		t.Errorf("GetLogLevel over TCP = %v, %v; want info", r, err)
	}

	r, err := ta.admin(true).SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: "warning"})
	if err != nil {
		t.Fatalf("SetLogLevel over the unix socket: %v", err)
	}
	if r.GetLevel() != "warning" || r.GetPreviousLevel() != "info" || ta.levels.Level() != slog.LevelWarn {
		t.Errorf("SetLogLevel = %v, level now %v; want warning (was info)", r, ta.levels.Level())
	}
	if _, err := ta.admin(true).SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: "loud"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("SetLogLevel(loud): %v, want InvalidArgument", err)
	}
	if _, err := ta.admin(true).ReopenLogs(ctx, &adminv1.ReopenLogsRequest{}); err != nil || ta.dp.reopen.Load() != 1 {
		t.Errorf("ReopenLogs over the unix socket: %v, %d reopens; want 1", err, ta.dp.reopen.Load())
	}
	if r, err := ta.admin(true).SetHealthCheckFailed(ctx, &adminv1.SetHealthCheckFailedRequest{Failed: true}); err != nil || !r.GetFailing() || !ta.dp.hcFailed.Load() {
		t.Errorf("SetHealthCheckFailed over the unix socket = %v, %v; want failing", r, err)
	}
	if _, err := ta.admin(true).DrainListeners(ctx, &adminv1.DrainListenersRequest{Graceful: true}); err != nil {
		t.Fatalf("DrainListeners over the unix socket: %v", err)
	}
	if !slices.Equal(ta.dp.drained(), []bool{true}) || ta.srv.State() != adminv1.ServerState_SERVER_STATE_DRAINING {
		t.Errorf("after DrainListeners(graceful): drains %v, state %v; want [true], DRAINING", ta.dp.drained(), ta.srv.State())
	}
	_, err = ta.admin(true).StartHotRestart(ctx, &adminv1.StartHotRestartRequest{})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "hot restart is off") {
		t.Errorf("StartHotRestart: %v, want Unimplemented with an explanation", err)
	}

	open := startTestAdmin(t, func(o *Options) { o.TCPMutations = true })
	if _, err := open.admin(false).SetLogLevel(ctxT(t), &adminv1.SetLogLevelRequest{Level: "debug"}); err != nil {
		t.Errorf("SetLogLevel over TCP with TCPMutations: %v", err)
	}
}

func TestListeners(t *testing.T) {
	ta := startTestAdmin(t, nil)
	r, err := ta.admin(false).ListListeners(ctxT(t), &adminv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &adminv1.ListListenersResponse{Listeners: []*adminv1.ListenerStatus{{
		Name: "l", LocalAddress: "127.0.0.1:41000", AdditionalLocalAddresses: []string{"[::1]:41000"}}}}
	if !proto.Equal(r, want) {
		t.Errorf("ListListeners = %v, want %v", r, want)
	}
}

func staticBootstrap(t *testing.T) *bootstrapv3.Bootstrap {
	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: "node-1"},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: []*listenerv3.Listener{tlsListener(t)},
			Clusters:  []*clusterv3.Cluster{{Name: "backend"}},
			Secrets: []*tlsv3.Secret{{Name: "server-cert", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: inline("PUBLIC-CERTIFICATE"), PrivateKey: inline("PRIVATE-KEY")}}}},
		},
	}
}

func unpackDump(t *testing.T, r *adminv1.GetConfigDumpResponse) *adminv3.ConfigDump {
	t.Helper()
	cd := &adminv3.ConfigDump{}
	if err := r.GetConfigDump().UnmarshalTo(cd); err != nil {
		t.Fatalf("config_dump is not an envoy.admin.v3.ConfigDump: %v", err)
	}
	return cd
}

func TestConfigDumpStatic(t *testing.T) {
	b := staticBootstrap(t)
	before := proto.Clone(b)
	ta := startTestAdmin(t, func(o *Options) { o.Bootstrap = b })
	ctx := ctxT(t)
	r, err := ta.admin(false).GetConfigDump(ctx, &adminv1.GetConfigDumpRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cd := unpackDump(t, r)
	var types []string
	for _, a := range cd.GetConfigs() {
		types = append(types, string(a.MessageName().Name()))
	}
	if want := []string{"BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "RoutesConfigDump", "SecretsConfigDump"}; !slices.Equal(types, want) {
		t.Errorf("config dump holds %v, want %v", types, want)
	}
	ld, cld, sd := &adminv3.ListenersConfigDump{}, &adminv3.ClustersConfigDump{}, &adminv3.SecretsConfigDump{}
	cd.GetConfigs()[2].UnmarshalTo(ld)
	cd.GetConfigs()[1].UnmarshalTo(cld)
	cd.GetConfigs()[4].UnmarshalTo(sd)
	if ss := sd.GetStaticSecrets(); len(ss) != 1 || ss[0].GetName() != "server-cert" || ss[0].GetSecret() == nil {
		t.Errorf("static secrets %v: want server-cert", ss)
	}
	if len(ld.GetStaticListeners()) != 1 || len(cld.GetStaticClusters()) != 1 || ld.GetStaticListeners()[0].GetLastUpdated() == nil {
		t.Errorf("static listeners %v, static clusters %v: want one of each, with last_updated", ld.GetStaticListeners(), cld.GetStaticClusters())
	}
	js, err := protojson.Marshal(cd)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(js); strings.Contains(s, "PRIVATE-KEY") || strings.Contains(s, "KEY-PASSWORD") || !strings.Contains(s, redacted) {
		t.Errorf("config dump shows the secrets of the bootstrap (or redacts nothing):\n%s", s)
	}
	if !proto.Equal(b, before) {
		t.Error("GetConfigDump changed the bootstrap it dumps")
	}

	// ?resource= and ?name_regex=.
	r, err = ta.admin(false).GetConfigDump(ctx, &adminv1.GetConfigDumpRequest{Resource: "static_clusters"})
	if err != nil {
		t.Fatal(err)
	}
	if cd := unpackDump(t, r); len(cd.GetConfigs()) != 1 || !cd.GetConfigs()[0].MessageIs(&adminv3.ClustersConfigDump_StaticCluster{}) {
		t.Errorf("resource static_clusters: %v, want one StaticCluster", cd.GetConfigs())
	}
	r, err = ta.admin(false).GetConfigDump(ctx, &adminv1.GetConfigDumpRequest{Resource: "static_listeners", NameRegex: "^nothing$"})
	if err != nil {
		t.Fatal(err)
	}
	if cd := unpackDump(t, r); len(cd.GetConfigs()) != 0 {
		t.Errorf("name_regex ^nothing$: %v, want nothing", cd.GetConfigs())
	}
	for _, req := range []*adminv1.GetConfigDumpRequest{{Resource: "no_such_field"}, {NameRegex: "("}} {
		if _, err := ta.admin(false).GetConfigDump(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("GetConfigDump(%v): %v, want InvalidArgument", req, err)
		}
	}

	// The HTTP side's /config_dump, as Envoy's: JSON with proto field
	// names, the same dump, redacted.
	base := "http://" + ta.httpAddr
	code, body, h := httpGet(t, base+"/config_dump")
	if code != http.StatusOK || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /config_dump: %d %q\n%s", code, h.Get("Content-Type"), body)
	}
	var fromHTTP adminv3.ConfigDump
	if err := protojson.Unmarshal([]byte(body), &fromHTTP); err != nil {
		t.Fatalf("GET /config_dump is not a ConfigDump in JSON: %v\n%s", err, body)
	}
	if !proto.Equal(&fromHTTP, cd) || !strings.Contains(body, `"static_listeners"`) || strings.Contains(body, "PRIVATE-KEY") {
		t.Errorf("GET /config_dump differs from GetConfigDump, has no proto field names or shows a key:\n%s", body)
	}
	if _, body, _ := httpGet(t, base+"/config_dump?resource=static_clusters&name_regex=^back"); !strings.Contains(body, "envoy.admin.v3.ClustersConfigDump.StaticCluster") {
		t.Errorf("GET /config_dump?resource=static_clusters:\n%s", body)
	}
	for _, q := range []string{"?resource=no_such_field", "?name_regex=(", "?mask=configs"} {
		if code, body, _ := httpGet(t, base+"/config_dump"+q); code != http.StatusBadRequest {
			t.Errorf("GET /config_dump%s = %d, want 400\n%s", q, code, body)
		}
	}
}

func TestConfigDumpAndCSDSFromXDS(t *testing.T) {
	l := tlsListener(t)
	la, err := anypb.New(l)
	if err != nil {
		t.Fatal(err)
	}
	now := timestamppb.Now()
	x := &fakeXDS{
		configs: []*statusv3.ClientConfig_GenericXdsConfig{
			{TypeUrl: listenerTypeURL, Name: "tls", VersionInfo: "v1", XdsConfig: la, LastUpdated: now, ClientStatus: adminv3.ClientResourceStatus_ACKED},
			{TypeUrl: clusterTypeURL, Name: "bad", ClientStatus: adminv3.ClientResourceStatus_NACKED,
				ErrorState: &adminv3.UpdateFailureState{VersionInfo: "v2", Details: "cluster \"bad\": connect_timeout: must be positive"}},
		},
		versions: map[string]string{listenerTypeURL: "v1", clusterTypeURL: "v1"},
	}
	keep := proto.Clone(x.configs[0])
	ta := startTestAdmin(t, func(o *Options) { o.XDS = x })
	ctx := ctxT(t)

	csds := statusv3.NewClientStatusDiscoveryServiceClient(ta.tcp)
	resp, err := csds.FetchClientStatus(ctx, &statusv3.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetConfig()) != 1 {
		t.Fatalf("FetchClientStatus returned %d ClientConfigs, want exactly 1", len(resp.GetConfig()))
	}
	cfg := resp.GetConfig()[0]
	if cfg.GetNode().GetId() != "node-1" || len(cfg.GetGenericXdsConfigs()) != 2 {
		t.Fatalf("ClientConfig = %v, want node-1 with 2 generic_xds_configs", cfg)
	}
	if g := cfg.GetGenericXdsConfigs()[1]; g.GetClientStatus() != adminv3.ClientResourceStatus_NACKED || g.GetErrorState().GetVersionInfo() != "v2" {
		t.Errorf("NACKed cluster shown as %v", g)
	}
	js, _ := protojson.Marshal(resp)
	if strings.Contains(string(js), "PRIVATE-KEY") {
		t.Errorf("CSDS shows a private key:\n%s", js)
	}
	if !proto.Equal(x.configs[0], keep) {
		t.Error("CSDS changed what the xDS client returned")
	}
	if _, err := csds.FetchClientStatus(ctx, &statusv3.ClientStatusRequest{NodeMatchers: []*matcherv3.NodeMatcher{{}}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchClientStatus with node_matchers: %v, want InvalidArgument", err)
	}
	stream, err := csds.StreamClientStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := stream.Send(&statusv3.ClientStatusRequest{}); err != nil {
			t.Fatal(err)
		}
		if r, err := stream.Recv(); err != nil || len(r.GetConfig()) != 1 {
			t.Fatalf("StreamClientStatus: %v, %v", r, err)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("StreamClientStatus after CloseSend: %v, want EOF", err)
	}

	r, err := ta.admin(false).GetConfigDump(ctx, &adminv1.GetConfigDumpRequest{Resource: "dynamic_listeners"})
	if err != nil {
		t.Fatal(err)
	}
	cd := unpackDump(t, r)
	if len(cd.GetConfigs()) != 1 {
		t.Fatalf("dynamic_listeners: %d entries, want 1", len(cd.GetConfigs()))
	}
	dl := &adminv3.ListenersConfigDump_DynamicListener{}
	cd.GetConfigs()[0].UnmarshalTo(dl)
	if dl.GetName() != "tls" || dl.GetActiveState().GetVersionInfo() != "v1" || dl.GetClientStatus() != adminv3.ClientResourceStatus_ACKED {
		t.Errorf("dynamic listener = %v, want tls active at v1, ACKED", dl)
	}
	if js, _ := protojson.Marshal(cd); strings.Contains(string(js), "PRIVATE-KEY") {
		t.Errorf("config dump shows a private key:\n%s", js)
	}
	r, err = ta.admin(false).GetConfigDump(ctx, &adminv1.GetConfigDumpRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ld := &adminv3.ListenersConfigDump{}
	unpackDump(t, r).GetConfigs()[2].UnmarshalTo(ld)
	if ld.GetVersionInfo() != "v1" {
		t.Errorf("listeners dump version_info = %q, want v1 (from Versions)", ld.GetVersionInfo())
	}

	// Without xDS: the node and nothing else.
	plain := startTestAdmin(t, nil)
	resp, err = statusv3.NewClientStatusDiscoveryServiceClient(plain.unix).FetchClientStatus(ctx, &statusv3.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetConfig()) != 1 || resp.GetConfig()[0].GetNode().GetId() != "node-1" || len(resp.GetConfig()[0].GetGenericXdsConfigs()) != 0 {
		t.Errorf("CSDS without xDS = %v, want one ClientConfig with the node and no resources", resp)
	}
}

func TestStats(t *testing.T) {
	ta := startTestAdmin(t, nil)
	c := ta.stats.Counter("cluster.backend.upstream_cx_total")
	ta.stats.Counter("cluster.backend.upstream_cx_connect_fail")
	ctx := ctxT(t)

	r, err := ta.admin(false).GetStats(ctx, &adminv1.GetStatsRequest{Filter: `^cluster\.backend\.`})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetStats()) != 2 || r.GetStats()[0].GetName() != "cluster.backend.upstream_cx_connect_fail" || r.GetStats()[1].GetType() != adminv1.StatType_STAT_TYPE_COUNTER {
		t.Errorf("GetStats(^cluster.backend.) = %v", r.GetStats())
	}
	ta.stats.Histogram("cluster.backend.upstream_cx_length_ms").Record(7)
	r, err = ta.admin(false).GetStats(ctx, &adminv1.GetStatsRequest{Filter: `_ms$`})
	if err != nil {
		t.Fatal(err)
	}
	want := &adminv1.Stat{Name: "cluster.backend.upstream_cx_length_ms", Type: adminv1.StatType_STAT_TYPE_HISTOGRAM,
		Histogram: &adminv1.Histogram{Count: 1, Sum: 7, Buckets: []*adminv1.HistogramBucket{{Lower: 7, Upper: 7, Count: 1}}}}
	if len(r.GetStats()) != 1 || !proto.Equal(r.GetStats()[0], want) {
		t.Errorf("GetStats(_ms$) = %v, want %v", r.GetStats(), want)
	}
	if _, err := ta.admin(false).GetStats(ctx, &adminv1.GetStatsRequest{Filter: "("}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetStats with a bad regex: %v, want InvalidArgument", err)
	}

	stream, err := ta.admin(false).WatchStats(ctx, &adminv1.WatchStatsRequest{Filter: "upstream_cx_total$", Interval: durationpb.New(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetStats()) != 1 || first.GetStats()[0].GetValue() != 0 {
		t.Errorf("first WatchStats message = %v, want the counter at 0", first.GetStats())
	}
	c.Add(3)
	next, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(next.GetStats()) != 1 || next.GetStats()[0].GetValue() != 3 {
		t.Errorf("WatchStats after the change = %v, want the counter at 3", next.GetStats())
	}

	// Shutdown ends the stream.
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ta.srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err == nil {
		t.Error("WatchStats stream still open after Shutdown")
	}
}

func TestHTTP(t *testing.T) {
	ta := startTestAdmin(t, nil)
	ta.stats.Counter("cluster.backend.upstream_cx_total").Add(3)
	ta.stats.Counter("listener.127.0.0.1_10000.downstream_cx_total").Inc()
	ta.stats.Counter("tcp.in.downstream_cx_total")
	base := "http://" + ta.httpAddr

	code, body, h := httpGet(t, base+"/stats/prometheus")
	if code != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Errorf("GET /stats/prometheus: %d, Content-Type %q", code, h.Get("Content-Type"))
	}
	for _, want := range []string{
		"# TYPE envoy_cluster_upstream_cx_total counter\nenvoy_cluster_upstream_cx_total{envoy_cluster_name=\"backend\"} 3\n",
		`envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_10000"} 1`,
		`envoy_tcp_downstream_cx_total{envoy_tcp_prefix="in"} 0`,
		"# TYPE envoy_server_live gauge\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /stats/prometheus lacks %q:\n%s", want, body)
		}
	}
	if _, body, _ := httpGet(t, base+"/stats/prometheus?usedonly&filter=cluster"); strings.Contains(body, "tcp") || !strings.Contains(body, "backend") {
		t.Errorf("GET /stats/prometheus?usedonly&filter=cluster:\n%s", body)
	}
	if _, body, _ := httpGet(t, base+"/stats?filter=upstream_cx_total"); body != "cluster.backend.upstream_cx_total: 3\n" {
		t.Errorf("GET /stats?filter=upstream_cx_total = %q", body)
	}
	ta.stats.Histogram("cluster.backend.upstream_cx_length_ms").Record(4)
	if _, body, _ := httpGet(t, base+"/stats?format=json&filter=backend"); !strings.Contains(body, `{"name":"cluster.backend.upstream_cx_total","value":3}`) ||
		!strings.Contains(body, `"computed_quantiles":[{"name":"cluster.backend.upstream_cx_length_ms","values":[{"interval":null,"cumulative":4}`) {
		t.Errorf("GET /stats?format=json = %s", body)
	}
	if code, _, _ := httpGet(t, base+"/stats?filter=("); code != http.StatusBadRequest {
		t.Errorf("GET /stats?filter=( = %d, want 400", code)
	}
	if code, _, _ := httpGet(t, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
	resp, err := http.Post(base+"/stats", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /stats = %d, want 405", resp.StatusCode)
	}

	// HTTP/2 without TLS (prior knowledge) reaches the HTTP side too.
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	defer tr.CloseIdleConnections()
	resp, err = (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(base + "/stats?filter=upstream_cx_total")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || string(b) != "cluster.backend.upstream_cx_total: 3\n" {
		t.Errorf("GET /stats over h2c: %s %q", resp.Proto, b)
	}
}

func TestReflection(t *testing.T) {
	ta := startTestAdmin(t, nil)
	stream, err := reflectionpb.NewServerReflectionClient(ta.tcp).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"skiff.admin.v1.AdminService", "envoy.service.status.v3.ClientStatusDiscoveryService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, want %s among them", names, want)
		}
	}
}

// The HTTP side's /clusters, as Envoy's: its text lines and ?format=json.
func TestHTTPClusters(t *testing.T) {
	ta := startTestAdmin(t, func(o *Options) {
		o.Bootstrap = &bootstrapv3.Bootstrap{StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{{Name: "backend"}}}}
	})
	cfg, err := upstream.NewConfig(&clusterv3.Cluster{Name: "backend",
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxConnections: wrapperspb.UInt32(5)}}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints = []upstream.Endpoint{
		{Addr: netip.MustParseAddrPort("127.0.0.1:8080"), Weight: 2, Hostname: "a.test", Locality: "us-east/a/1"},
		{Addr: netip.MustParseAddrPort("[::1]:9090"), Weight: 1, Priority: 1, Health: corev3.HealthStatus_UNHEALTHY, Locality: "//"},
	}
	ta.dp.clusters.Set([]upstream.Assignment{upstream.Static(cfg)})
	base := "http://" + ta.httpAddr
	code, body, _ := httpGet(t, base+"/clusters")
	if code != http.StatusOK {
		t.Fatalf("GET /clusters: %d\n%s", code, body)
	}
	for _, want := range []string{
		"backend::observability_name::backend\n",
		"backend::default_priority::max_connections::5\n",
		"backend::default_priority::max_retries::3\n",
		"backend::added_via_api::false\n",
		"backend::127.0.0.1:8080::cx_total::0\n",
		"backend::127.0.0.1:8080::hostname::a.test\n",
		"backend::127.0.0.1:8080::health_flags::healthy\n",
		"backend::127.0.0.1:8080::weight::2\n",
		"backend::127.0.0.1:8080::region::us-east\n",
		"backend::127.0.0.1:8080::sub_zone::1\n",
		"backend::[::1]:9090::health_flags::/failed_eds_health\n",
		"backend::[::1]:9090::priority::1\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /clusters lacks %q:\n%s", want, body)
		}
	}
	_, body, _ = httpGet(t, base+"/clusters?format=json")
	var cs adminv3.Clusters
	if err := protojson.Unmarshal([]byte(body), &cs); err != nil {
		t.Fatalf("GET /clusters?format=json is not an envoy.admin.v3.Clusters: %v\n%s", err, body)
	}
	if len(cs.GetClusterStatuses()) != 1 || len(cs.GetClusterStatuses()[0].GetHostStatuses()) != 2 {
		t.Fatalf("GET /clusters?format=json: %v", &cs)
	}
	h := cs.GetClusterStatuses()[0].GetHostStatuses()[1]
	if h.GetAddress().GetSocketAddress().GetAddress() != "::1" || h.GetHealthStatus().GetEdsHealthStatus() != corev3.HealthStatus_UNHEALTHY {
		t.Errorf("second host: %v", h)
	}
	if code, _, _ := httpGet(t, base+"/clusters?format=yaml"); code != http.StatusBadRequest {
		t.Errorf("GET /clusters?format=yaml = %d, want 400", code)
	}
}

// The HTTP side's /server_info and /listeners, as Envoy's.
func TestHTTPServerInfoAndListeners(t *testing.T) {
	ta := startTestAdmin(t, nil)
	base := "http://" + ta.httpAddr
	_, body, _ := httpGet(t, base+"/server_info")
	var si adminv3.ServerInfo
	if err := protojson.Unmarshal([]byte(body), &si); err != nil {
		t.Fatalf("GET /server_info is not an envoy.admin.v3.ServerInfo: %v\n%s", err, body)
	}
	if si.GetVersion() != "test" || si.GetNode().GetId() != "node-1" || si.GetState() != adminv3.ServerInfo_INITIALIZING || si.GetUptimeCurrentEpoch() == nil {
		t.Errorf("GET /server_info: %v", &si)
	}
	if _, body, _ := httpGet(t, base+"/listeners"); body != "l::127.0.0.1:41000\n" {
		t.Errorf("GET /listeners = %q", body)
	}
	_, body, _ = httpGet(t, base+"/listeners?format=json")
	var ls adminv3.Listeners
	if err := protojson.Unmarshal([]byte(body), &ls); err != nil {
		t.Fatalf("GET /listeners?format=json: %v\n%s", err, body)
	}
	if st := ls.GetListenerStatuses(); len(st) != 1 || st[0].GetName() != "l" || st[0].GetLocalAddress().GetSocketAddress().GetPortValue() != 41000 ||
		st[0].GetAdditionalLocalAddresses()[0].GetSocketAddress().GetAddress() != "::1" {
		t.Errorf("GET /listeners?format=json: %v", &ls)
	}
}

// post makes a POST to path of ta's HTTP side, over its unix socket or TCP.
func (ta *testAdmin) post(t *testing.T, overUnix bool, path string) (int, string) {
	t.Helper()
	tr := &http.Transport{}
	if overUnix {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", ta.sock)
		}
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("http://"+ta.httpAddr+path, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Envoy's POST endpoints that change the server: only POST, refused over
// TCP as the gRPC calls are, served over the admin unix socket.
func TestHTTPMutations(t *testing.T) {
	ta := startTestAdmin(t, nil)
	post := func(overUnix bool, path string) (int, string) {
		t.Helper()
		return ta.post(t, overUnix, path)
	}
	if code, body := post(false, "/healthcheck/fail"); code != http.StatusForbidden || !strings.Contains(body, "--admin-tcp-mutations") || ta.dp.hcFailed.Load() {
		t.Errorf("POST /healthcheck/fail over TCP: %d %q, failed %t", code, body, ta.dp.hcFailed.Load())
	}
	if code, _, _ := httpGet(t, "http://"+ta.httpAddr+"/healthcheck/fail"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /healthcheck/fail = %d, want 405", code)
	}
	drains := func() []bool {
		ta.dp.mu.Lock()
		defer ta.dp.mu.Unlock()
		return slices.Clone(ta.dp.drains)
	}
	inbound := func() []bool {
		ta.dp.mu.Lock()
		defer ta.dp.mu.Unlock()
		return slices.Clone(ta.dp.inbound)
	}
	for _, tt := range []struct {
		path, want string
		code       int
		check      func() bool
	}{
		{"/healthcheck/fail", "OK\n", http.StatusOK, func() bool { return ta.dp.hcFailed.Load() }},
		{"/healthcheck/ok", "OK\n", http.StatusOK, func() bool { return !ta.dp.hcFailed.Load() }},
		{"/reopen_logs", "OK\n", http.StatusOK, func() bool { return ta.dp.reopen.Load() == 1 }},
		{"/logging?level=debug", "level: debug\n", http.StatusOK, func() bool { return ta.levels.Level() == slog.LevelDebug }},
		{"/logging", "level: debug\n", http.StatusOK, func() bool { return true }},
		{"/logging?level=loud", "", http.StatusBadRequest, func() bool { return ta.levels.Level() == slog.LevelDebug }},
		{"/drain_listeners?graceful&skip_exit", "", http.StatusBadRequest, func() bool { return len(drains()) == 0 }},
		{"/drain_listeners?inboundonly&graceful", "OK\n", http.StatusOK, func() bool {
			return slices.Equal(drains(), []bool{true}) && slices.Equal(inbound(), []bool{true})
		}},
		{"/drain_listeners", "OK\n", http.StatusOK, func() bool {
			return slices.Equal(drains(), []bool{true, false}) && slices.Equal(inbound(), []bool{true, false})
		}},
	} {
		code, body := post(true, tt.path)
		if code != tt.code || (tt.want != "" && body != tt.want) || !tt.check() {
			t.Errorf("POST %s over the unix socket: %d %q (check %t), want %d %q", tt.path, code, body, tt.check(), tt.code, tt.want)
		}
	}
}

// TestShutdown: Shutdown (gRPC) and POST /quitquitquit (HTTP) call
// Options.Shutdown, under the guard of the calls that change the server;
// without the hook both say it is not available.
func TestShutdown(t *testing.T) {
	var calls atomic.Int32
	ta := startTestAdmin(t, func(o *Options) { o.Shutdown = func() { calls.Add(1) } })
	ctx := ctxT(t)
	if _, err := ta.admin(false).Shutdown(ctx, &adminv1.ShutdownRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Shutdown over TCP: %v, want PermissionDenied", err)
	}
	if code, body := ta.post(t, false, "/quitquitquit"); code != http.StatusForbidden || !strings.Contains(body, "--admin-tcp-mutations") {
		t.Errorf("POST /quitquitquit over TCP: %d %q, want 403", code, body)
	}
	if code, _, _ := httpGet(t, "http://"+ta.httpAddr+"/quitquitquit"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /quitquitquit = %d, want 405", code)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("Shutdown called %d times by refused requests", n)
	}
	if code, body := ta.post(t, true, "/quitquitquit"); code != http.StatusOK || body != "OK\n" || calls.Load() != 1 {
		t.Errorf("POST /quitquitquit over the unix socket: %d %q, %d calls; want 200 OK, 1 call", code, body, calls.Load())
	}
	if _, err := ta.admin(true).Shutdown(ctx, &adminv1.ShutdownRequest{}); err != nil || calls.Load() != 2 {
		t.Errorf("Shutdown over the unix socket: %v, %d calls; want 2 calls", err, calls.Load())
	}

	none := startTestAdmin(t, nil)
	if _, err := none.admin(true).Shutdown(ctx, &adminv1.ShutdownRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Shutdown without the hook: %v, want Unimplemented", err)
	}
	if code, _ := none.post(t, true, "/quitquitquit"); code != http.StatusNotImplemented {
		t.Errorf("POST /quitquitquit without the hook: %d, want 501", code)
	}
}
