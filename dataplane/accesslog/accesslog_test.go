package accesslog

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/internal/tlstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// exchange is a finished exchange as the connection manager leaves it.
func exchange() *http.Exchange {
	e := http.NewExchange(context.Background(), nil)
	var req http.Header
	req.Add(http.Method, "GET")
	req.Add(http.Scheme, "http")
	req.Add(http.Authority, "example.com")
	req.Add(http.Path, "/index.html")
	req.Add("user-agent", "curl/8")
	req.Add("x-request-id", "0c8a7b0e-6b1f-4a9a-9e55-1b4f0b1c2d3e")
	req.Add("x-forwarded-for", "10.0.0.1")
	e.Request = &req
	e.Response.Add(http.Status, "200")
	e.Response.Add("x-envoy-upstream-service-time", "3")
	e.ResponseTrailers().Add("grpc-status", "0")
	e.Info.Start = time.Date(2026, 11, 27, 12, 34, 56, 789_000_000, time.UTC)
	e.Info.Duration = 12 * time.Millisecond
	e.Info.Protocol = "HTTP/1.1"
	e.Info.ResponseCode = 200
	e.Info.BytesReceived = 5
	e.Info.BytesSent = 64
	e.Info.UpstreamHost = netip.MustParseAddrPort("10.1.2.3:8080")
	e.Info.UpstreamCluster = "backend"
	e.Info.DownstreamRemote = netip.MustParseAddrPort("192.0.2.1:5555")
	e.Info.DownstreamLocal = netip.MustParseAddrPort("127.0.0.1:10000")
	e.Info.RouteName = "r1"
	e.Info.ResponseCodeDetails = "via_upstream"
	e.Info.ConnectionID = 42
	return e
}

func TestDefaultFormat(t *testing.T) {
	f, err := ParseFormat(DefaultFormat)
	if err != nil {
		t.Fatal(err)
	}
	got := string(f.Append(nil, exchange()))
	want := `[2026-11-27T12:34:56.789Z] "GET /index.html HTTP/1.1" 200 - 5 64 12 3 "10.0.0.1" "curl/8" "0c8a7b0e-6b1f-4a9a-9e55-1b4f0b1c2d3e" "example.com" "10.1.2.3:8080"` + "\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	e := exchange()
	e.Request.Set("x-envoy-original-path", "/before/rewrite")
	e.Info.ResponseFlags = http.FlagUpstreamRequestTimeout | http.FlagUpstreamRetryLimitExceeded
	got = string(f.Append(nil, e))
	if !strings.Contains(got, `"GET /before/rewrite HTTP/1.1" 200 UT,URX `) {
		t.Errorf("original path or flags: %s", got)
	}
}

func TestCommands(t *testing.T) {
	e := exchange()
	for format, want := range map[string]string{
		"%PROTOCOL% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%":               "HTTP/1.1 200 via_upstream",
		"%REQ(:AUTHORITY)% %REQ(X-MISSING)% %RESP(:STATUS)%":               "example.com - 200",
		"%REQ(USER-AGENT):4% %TRAILER(GRPC-STATUS)%":                       "curl 0",
		"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT%": "192.0.2.1 10000",
		"%UPSTREAM_CLUSTER% %ROUTE_NAME% %CONNECTION_ID% %%":               "backend r1 42 %",
		"%START_TIME(%Y/%m/%d %H:%M:%S.%3f)%":                              "2026/11/27 12:34:56.789",
		"%START_TIME(%s)%":                                                 "1795782896",
		"%RESPONSE_FLAGS_LONG% %UPSTREAM_TRANSPORT_FAILURE_REASON%":        "- -",
	} {
		f, err := ParseFormat(format)
		if err != nil {
			t.Errorf("%s: %v", format, err)
			continue
		}
		if got := string(f.Append(nil, e)); got != want {
			t.Errorf("%s: %q, want %q", format, got, want)
		}
	}
	for _, bad := range []string{"%NOPE%", "%REQ%", "%REQ(x", "%PROTOCOL", "%START_TIME(%Q)%", "%REQ(a):x%"} {
		if _, err := ParseFormat(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestJSONFormat(t *testing.T) {
	l := build1(t, `
name: envoy.access_loggers.stdout
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format:
    json_format:
      code: "%RESPONSE_CODE%"
      path: "%REQ(:PATH)%"
      missing: "%REQ(X-NONE)%"
      mixed: "%PROTOCOL% to %UPSTREAM_CLUSTER%"
      nested: { cluster: "%UPSTREAM_CLUSTER%", num: 1 }
`, nil)
	tl := l.(*textLogger)
	line := tl.fm.append(nil, exchange())
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	if m["code"] != float64(200) || m["path"] != "/index.html" || m["missing"] != nil || m["mixed"] != "HTTP/1.1 to backend" {
		t.Errorf("%s", line)
	}
	if n, _ := m["nested"].(map[string]any); n["cluster"] != "backend" || n["num"] != float64(1) {
		t.Errorf("nested: %s", line)
	}
	if line[len(line)-1] != '\n' {
		t.Errorf("no newline: %q", line)
	}
}

// fileLogger builds an envoy.access_loggers.file logger writing format (a
// text_format_source, as written in a YAML double-quoted string: \n for a
// newline) to path.
func fileLogger(t *testing.T, path, format string, sinks *Sinks) Logger {
	t.Helper()
	return build1(t, `
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: `+path+`
  log_format: { text_format_source: { inline_string: "`+format+`" } }
`, sinks)
}

func build1(t *testing.T, y string, sinks *Sinks) Logger {
	t.Helper()
	var c accesslogv3.AccessLog
	if err := protoyaml.Unmarshal([]byte(y), &c); err != nil {
		t.Fatal(err)
	}
	ls, err := Build([]*accesslogv3.AccessLog{&c}, Options{Sinks: sinks})
	if err != nil {
		t.Fatal(err)
	}
	return ls[0]
}

func TestFilters(t *testing.T) {
	for _, tc := range []struct {
		filter string
		code   int
		flags  http.ResponseFlag
		want   bool
	}{
		{`status_code_filter: { comparison: { op: GE, value: { default_value: 500, runtime_key: "" } } }`, 503, 0, true},
		{`status_code_filter: { comparison: { op: GE, value: { default_value: 500, runtime_key: "" } } }`, 200, 0, false},
		{`response_flag_filter: { flags: [UH, UF] }`, 503, http.FlagUpstreamConnectionFailure, true},
		{`response_flag_filter: { flags: [UH] }`, 503, http.FlagUpstreamConnectionFailure, false},
		{`or_filter: { filters: [{ status_code_filter: { comparison: { op: EQ, value: { default_value: 404, runtime_key: "" } } } }, { response_flag_filter: {} }] }`, 200, http.FlagNoRouteFound, true},
		{`and_filter: { filters: [{ not_health_check_filter: {} }, { header_filter: { header: { name: user-agent, string_match: { prefix: curl } } } }] }`, 200, 0, true},
		{`grpc_status_filter: { statuses: [OK], exclude: true }`, 200, 0, false},
	} {
		l := build1(t, `
name: f
filter: { `+tc.filter+` }
typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog }
`, nil)
		e := exchange()
		e.Info.ResponseCode, e.Info.ResponseFlags = tc.code, tc.flags
		if got := l.(*filtered).keep(e); got != tc.want {
			t.Errorf("%s with %d %v: %v", tc.filter, tc.code, tc.flags, got)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for y, want := range map[string]string{
		`{ name: x, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /tmp/x, log_format: { text_format: "%BOGUS%" } } }`: "log_format.text_format",
		`{ name: x, filter: { traceable_filter: {} }, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog } }`:                 "traceable_filter",
		`{ name: x, typed_config: { "@type": type.googleapis.com/google.protobuf.Empty } }`:                                                                                       "not an access logger skiff supports",
	} {
		var c accesslogv3.AccessLog
		if err := protoyaml.Unmarshal([]byte(y), &c); err != nil {
			t.Fatal(err)
		}
		_, err := Build([]*accesslogv3.AccessLog{&c}, Options{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want it to mention %q", y, err, want)
		}
	}
}

func TestFileSink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	st := stats.NewStore()
	sinks := NewSinks(nil, st, 0)
	l := fileLogger(t, path, `%RESPONSE_CODE% %REQ(:PATH)%\n`, sinks)
	e := exchange()
	for range 100 {
		l.Log(e)
	}
	sinks.Close() // flushes
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(b), "200 /index.html\n") != 100 {
		t.Errorf("file holds %q", b)
	}
	if v, _ := st.Value("access_log.write_buffered"); v != 100 {
		t.Errorf("write_buffered = %d", v)
	}
	// After Close, entries are dropped, not written.
	l.Log(e)
	if v, _ := st.Value("access_log.logs_dropped"); v != 1 {
		t.Errorf("logs_dropped = %d", v)
	}
}

// TestFileSinkFlushInterval: a file sink writes what waits every flush
// interval (--file-flush-interval-msec), not before (fake time: synctest).
func TestFileSinkFlushInterval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	synctest.Test(t, func(t *testing.T) {
		sinks := NewSinks(nil, nil, 10*time.Second)
		defer sinks.Close()
		l := fileLogger(t, path, `%RESPONSE_CODE%\n`, sinks)
		l.Log(exchange())
		size := func() int {
			synctest.Wait()
			b, _ := os.ReadFile(path)
			return len(b)
		}
		time.Sleep(9 * time.Second)
		if n := size(); n != 0 {
			t.Fatalf("%d bytes written before the 10 s flush interval", n)
		}
		time.Sleep(2 * time.Second)
		if n := size(); n != len("200\n") {
			t.Fatalf("%d bytes written after the flush interval, want the entry", n)
		}
	})
}

// TestFileSinkReopen: after Reopen, entries go to a new file at the path,
// and what was written before stays in the file log rotation moved away.
func TestFileSinkReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.log")
	sinks := NewSinks(nil, nil, 0)
	defer sinks.Close()
	l := fileLogger(t, path, `%REQ(:PATH)%\n`, sinks)
	logPath := func(p string) {
		e := exchange()
		e.Request.Set(http.Path, p)
		l.Log(e)
	}
	waitFor := func(file, want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(file)
			if string(b) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s holds %q, want %q", file, b, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	logPath("/before")
	waitFor(path, "/before\n")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	sinks.Reopen()
	logPath("/after")
	waitFor(path, "/after\n")
	waitFor(path+".1", "/before\n")
}

func TestTextLogAllocs(t *testing.T) {
	sinks := NewSinks(nil, nil, 0)
	defer sinks.Close()
	l := build1(t, `
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: `+filepath.Join(t.TempDir(), "b.log")+`
`, sinks)
	e := exchange()
	for range 10 {
		l.Log(e)
	}
	if n := testing.AllocsPerRun(100, func() { l.Log(e) }); n > 0 {
		t.Errorf("%v allocs per entry", n)
	}
}

// alsServer is a gRPC access log service recording what it receives.
type alsServer struct {
	alsv3.UnimplementedAccessLogServiceServer
	mu       sync.Mutex
	msgs     []*alsv3.StreamAccessLogsMessage
	received chan struct{}
}

func (s *alsServer) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
		select {
		case s.received <- struct{}{}:
		default:
		}
	}
}

// startALS serves srv as an access log service on loopback until the test
// ends, and returns its address.
func startALS(t *testing.T, srv alsv3.AccessLogServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	alsv3.RegisterAccessLogServiceServer(gs, srv)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

func TestGRPCSink(t *testing.T) {
	srv := &alsServer{received: make(chan struct{}, 1)}
	addr := startALS(t, srv)

	st := stats.NewStore()
	sinks := NewSinks(nil, st, 0)
	l := build1(t, `
name: envoy.access_loggers.http_grpc
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
  common_config:
    log_name: edge
    transport_api_version: V3
    buffer_flush_interval: 0.05s
    grpc_service: { google_grpc: { target_uri: "`+addr+`", stat_prefix: als } }
  additional_request_headers_to_log: [X-Request-Id]
`, sinks)
	e := exchange()
	// StreamInfo's strings may be over a header too (a cluster_header's
	// value, say): the entries keep copies of them as well.
	var from http.Header
	from.Add("x-cluster", "backend")
	e.Info.UpstreamCluster = from.Value("x-cluster")
	l.Log(e)
	l.Log(e)
	from.Reset()
	from.Add("x-cluster", "zzzzzzz")
	// The exchange's header buffer serves the next request at once; the
	// entries, sent later, must not change with it.
	e.Request.Reset()
	e.Request.Add(http.Method, "PUT")
	e.Request.Add(http.Scheme, "ftps")
	e.Request.Add(http.Authority, "example.org")
	e.Request.Add(http.Path, "/other.html") // where "/index.html" was
	select {
	case <-srv.received:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received")
	}
	sinks.Close()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	first := srv.msgs[0]
	if first.GetIdentifier().GetLogName() != "edge" {
		t.Errorf("identifier %v", first.GetIdentifier())
	}
	var n int
	for _, m := range srv.msgs {
		for _, ent := range m.GetHttpLogs().GetLogEntry() {
			n++
			if ent.GetRequest().GetPath() != "/index.html" || ent.GetResponse().GetResponseCode().GetValue() != 200 ||
				ent.GetCommonProperties().GetUpstreamCluster() != "backend" ||
				ent.GetRequest().GetRequestHeaders()["x-request-id"] != "0c8a7b0e-6b1f-4a9a-9e55-1b4f0b1c2d3e" {
				t.Errorf("entry %v", ent)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d entries", n)
	}
	if v, _ := st.Value("access_logs.grpc_access_log.logs_written"); v != 2 {
		t.Errorf("logs_written = %d", v)
	}
}

// rejectingALS ends every stream with an error after its first message,
// as an access log service that refuses the client (or recycles streams).
type rejectingALS struct {
	alsv3.UnimplementedAccessLogServiceServer
}

func (rejectingALS) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	_, _ = stream.Recv()
	return status.Error(codes.PermissionDenied, "no")
}

// TestGRPCSinkEndsDroppedStreams: a stream the sink gives up after a failed
// Send is ended. Before, grpc-go kept each one's goroutine until the sink
// closed (a Send that fails with io.EOF does not finish the stream): about
// one per two flushes against a service that ends streams.
func TestGRPCSinkEndsDroppedStreams(t *testing.T) {
	addr := startALS(t, rejectingALS{})
	sinks := NewSinks(nil, stats.NewStore(), 0)
	defer sinks.Close()
	l := build1(t, `
name: envoy.access_loggers.http_grpc
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
  common_config:
    log_name: edge
    transport_api_version: V3
    buffer_flush_interval: 0.01s
    grpc_service: { google_grpc: { target_uri: "`+addr+`", stat_prefix: als } }
`, sinks)
	e := exchange()
	for range 40 {
		l.Log(e)
		time.Sleep(15 * time.Millisecond)
	}
	// The streams of the last flush or two may still be ending.
	deadline := time.Now().Add(10 * time.Second)
	for {
		buf := make([]byte, 1<<22)
		n := strings.Count(string(buf[:goruntime.Stack(buf, true)]), "grpc.newClientStreamWithParams.func")
		if n <= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d client stream goroutines alive after 40 flushes to a service that ends every stream", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func FuzzParseFormat(f *testing.F) {
	f.Add(DefaultFormat)
	f.Add("%REQ(a?b):3% %START_TIME(%Y %3f)% %%")
	f.Add("%")
	f.Add("%START_TIME(%c %E*S %E3f %Ez %E4Y %*f)% %REQ(a?b?c)%")
	f.Fuzz(func(t *testing.T, s string) {
		fm, err := ParseFormat(s)
		if err != nil {
			return
		}
		_ = fm.Append(nil, exchange())
	})
}

// TestComparisonRuntimeKey: a comparison's runtime_key takes its value from
// the runtime when the key is there, else the default, as Envoy's.
func TestComparisonRuntimeKey(t *testing.T) {
	var lr bootstrapv3.LayeredRuntime
	if err := protoyaml.Unmarshal([]byte(`layers: [{name: static, static_layer: {access_log.min_status: 400}}]`), &lr); err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(&lr)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		code int
		want bool
	}{
		{"access_log.min_status", 404, true}, // the runtime says 400
		{"access_log.other", 404, false},     // no such key: the default 500
		{"access_log.other", 503, true},
	} {
		var f accesslogv3.AccessLogFilter
		y := `status_code_filter: { comparison: { op: GE, value: { default_value: 500, runtime_key: ` + tc.key + ` } } }`
		if err := protoyaml.Unmarshal([]byte(y), &f); err != nil {
			t.Fatal(err)
		}
		keep, err := NewFilter(&f, rt)
		if err != nil {
			t.Fatal(err)
		}
		e := exchange()
		e.Info.ResponseCode = tc.code
		if got := keep(e); got != tc.want {
			t.Errorf("%s with %d: %v, want %v", tc.key, tc.code, got, tc.want)
		}
	}
}

// TestRuntimeFilter: runtime_filter samples by the request ID's first 8 hex
// digits (so proxies along a request agree), percent_sampled or the
// runtime's value at runtime_key deciding the share.
func TestRuntimeFilter(t *testing.T) {
	var lr bootstrapv3.LayeredRuntime
	if err := protoyaml.Unmarshal([]byte(`layers: [{name: static, static_layer: {log.sample: 50}}]`), &lr); err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(&lr)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		filter, id string
		want       bool
	}{
		{`{ runtime_key: none, percent_sampled: { numerator: 10 } }`, "00000009-aaaa", true},       // 9 % 100 < 10
		{`{ runtime_key: none, percent_sampled: { numerator: 10 } }`, "0000000a-aaaa", false},      // 10
		{`{ runtime_key: log.sample, percent_sampled: { numerator: 10 } }`, "00000031-aaaa", true}, // 49 < the runtime's 50
		{`{ runtime_key: log.sample }`, "00000032-aaaa", false},                                    // 50
		{`{ runtime_key: none }`, "00000000-aaaa", false},                                          // 0 % by default
	} {
		var f accesslogv3.AccessLogFilter
		if err := protoyaml.Unmarshal([]byte(`runtime_filter: `+tc.filter), &f); err != nil {
			t.Fatal(err)
		}
		keep, err := NewFilter(&f, rt)
		if err != nil {
			t.Fatal(err)
		}
		e := exchange()
		e.Info.RequestID = tc.id
		if got := keep(e); got != tc.want {
			t.Errorf("%s with request ID %s: %v, want %v", tc.filter, tc.id, got, tc.want)
		}
	}
}

func TestTLSCommands(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	peer := ca.Issue(t, "client", "spiffe://td/a", "spiffe://td/b", "client.test")
	local := ca.Issue(t, "edge", "edge.test")
	h := sha256.Sum256(peer.Cert.Raw)
	format := "%DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_PEER_DNS_SAN% " +
		"%DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_ISSUER% %DOWNSTREAM_LOCAL_DNS_SAN% %DOWNSTREAM_LOCAL_URI_SAN% " +
		"%DOWNSTREAM_PEER_FINGERPRINT_256% %DOWNSTREAM_PEER_SERIAL%"
	f, err := ParseFormat(format)
	if err != nil {
		t.Fatal(err)
	}
	e := exchange()
	if got := string(f.Append(nil, e)); got != "- - - - - - - - - -" {
		t.Errorf("plain connection: %q, want every command -", got)
	}
	e.Info.DownstreamTLS = &tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		PeerCertificates: []*x509.Certificate{peer.Cert}}
	e.Info.DownstreamLocalCert = local.Cert
	want := "TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256 spiffe://td/a,spiffe://td/b client.test CN=client CN=ca edge.test - " +
		hex.EncodeToString(h[:]) + " " + hex.EncodeToString(peer.Cert.SerialNumber.Bytes())
	if got := string(f.Append(nil, e)); got != want {
		t.Errorf("mutual TLS:\n%q\nwant\n%q", got, want)
	}

	// The upstream side: the server's certificate and skiff's own.
	up, err := ParseFormat("%UPSTREAM_TLS_VERSION% %UPSTREAM_TLS_CIPHER% %UPSTREAM_PEER_URI_SAN% %UPSTREAM_PEER_DNS_SAN% " +
		"%UPSTREAM_PEER_SUBJECT% %UPSTREAM_PEER_ISSUER% %UPSTREAM_LOCAL_URI_SAN% %UPSTREAM_LOCAL_SUBJECT%")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(up.Append(nil, e)); got != "- - - - - - - -" {
		t.Errorf("plain upstream: %q, want every command -", got)
	}
	e.Info.UpstreamTLS = &tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256,
		PeerCertificates: []*x509.Certificate{local.Cert}}
	e.Info.UpstreamLocalCert = peer.Cert
	want = "TLSv1.3 TLS_AES_128_GCM_SHA256 - edge.test CN=edge CN=ca spiffe://td/a,spiffe://td/b CN=client"
	if got := string(up.Append(nil, e)); got != want {
		t.Errorf("upstream TLS:\n%q\nwant\n%q", got, want)
	}
	ipPeer := ca.Issue(t, "by address", "10.0.0.1", "::1")
	ips, err := ParseFormat("%DOWNSTREAM_PEER_IP_SAN% %UPSTREAM_PEER_IP_SAN% %UPSTREAM_LOCAL_IP_SAN%")
	if err != nil {
		t.Fatal(err)
	}
	e.Info.DownstreamTLS.PeerCertificates = []*x509.Certificate{ipPeer.Cert}
	if got, want := string(ips.Append(nil, e)), "10.0.0.1,::1 - -"; got != want {
		t.Errorf("IP SANs: %q, want %q", got, want)
	}
	if _, err := ParseFormat("%UPSTREAM_PEER_FINGERPRINT_256%"); err == nil {
		t.Error("UPSTREAM_PEER_FINGERPRINT_256, which Envoy does not have, parsed")
	}

	// A subject as Envoy prints it (BoringSSL's RFC 2253): emailAddress by
	// its short name, a comma in a value escaped, last attribute first. Go's
	// pkix.Name.String gave "1.2.840.113549.1.9.1=#0c...,CN=...".
	subj, err := ParseFormat("%DOWNSTREAM_PEER_SUBJECT%")
	if err != nil {
		t.Fatal(err)
	}
	mailPeer := *ipPeer.Cert
	mailPeer.RawSubject, err = asn1.Marshal(pkix.RDNSequence{
		{{Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Value: "Acme, Inc., Sales"}},
		{{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, Value: "admin@example.com"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var rdns pkix.RDNSequence
	if _, err := asn1.Unmarshal(mailPeer.RawSubject, &rdns); err != nil {
		t.Fatal(err)
	}
	mailPeer.Subject = pkix.Name{}
	mailPeer.Subject.FillFromRDNSequence(&rdns)
	e.Info.DownstreamTLS.PeerCertificates = []*x509.Certificate{&mailPeer}
	if got, want := string(subj.Append(nil, e)), `emailAddress=admin@example.com,O=Acme\, Inc.\, Sales`; got != want {
		t.Errorf("subject: %q, want %q", got, want)
	}

	// URI SANs as the certificate spells them, as Envoy prints them: Go's
	// url.URL gave "spiffe://td/Upper" for the first.
	uris, err := ParseFormat("%DOWNSTREAM_PEER_URI_SAN%")
	if err != nil {
		t.Fatal(err)
	}
	sanPeer := *ipPeer.Cert
	ext, err := asn1.Marshal([]asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte("SPIFFE://td/Upper")},
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte("spiffe://td/b")},
	})
	if err != nil {
		t.Fatal(err)
	}
	sanPeer.Extensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: ext}}
	sanPeer.URIs = []*url.URL{{Scheme: "spiffe", Host: "td", Path: "/Upper"}, {Scheme: "spiffe", Host: "td", Path: "/b"}}
	e.Info.DownstreamTLS.PeerCertificates = []*x509.Certificate{&sanPeer}
	if got, want := string(uris.Append(nil, e)), "SPIFFE://td/Upper,spiffe://td/b"; got != want {
		t.Errorf("URI SANs: %q, want %q", got, want)
	}
}

// render builds the access log y (no sinks) and renders exchange() with it.
func render(t *testing.T, y string) string {
	t.Helper()
	return string(build1(t, y, nil).(*textLogger).fm.append(nil, exchange()))
}

// buildErr builds the access log y and returns Build's error.
func buildErr(t *testing.T, y string) error {
	t.Helper()
	var c accesslogv3.AccessLog
	if err := protoyaml.Unmarshal([]byte(y), &c); err != nil {
		t.Fatal(err)
	}
	_, err := Build([]*accesslogv3.AccessLog{&c}, Options{})
	return err
}

// TestFileEmptyFormat: FileAccessLog's format set to "" is Envoy's default
// format, not an empty line.
func TestFileEmptyFormat(t *testing.T) {
	got := render(t, `
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /dev/null
  format: ""
`)
	f, err := ParseFormat(DefaultFormat)
	if err != nil {
		t.Fatal(err)
	}
	if want := string(f.Append(nil, exchange())); got != want {
		t.Errorf("got %q, want the default format's %q", got, want)
	}
}

// TestHeaderAlternatives: REQ, RESP and TRAILER take one alternative header;
// a second is a configuration error naming the field, as in Envoy.
func TestHeaderAlternatives(t *testing.T) {
	for _, cmd := range []string{"REQ", "RESP", "TRAILER"} {
		err := buildErr(t, `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format: { text_format_source: { inline_string: "%`+cmd+`(a?b?c)%" } }
`)
		if err == nil || !strings.Contains(err.Error(), "log_format.text_format_source") ||
			!strings.Contains(err.Error(), "more than 1 alternative header") {
			t.Errorf("%s(a?b?c): %v", cmd, err)
		}
	}
	f, err := ParseFormat("%REQ(x-missing?user-agent)%")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(f.Append(nil, exchange())); got != "curl/8" {
		t.Errorf("one alternative: %q", got)
	}
}

// TestTextFormatSource: text_format_source is any DataSource, read when the
// configuration loads: a file, inline_bytes or inline_string.
func TestTextFormatSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "format.txt")
	if err := os.WriteFile(path, []byte("%RESPONSE_CODE% from file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const stdout = `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format: { text_format_source: `
	for src, want := range map[string]string{
		`{ filename: "` + path + `" }`:         "200 from file\n",
		`{ inline_bytes: "JVBST1RPQ09MJQ==" }`: "HTTP/1.1", // base64 of %PROTOCOL%
		`{ inline_string: "%ROUTE_NAME%" }`:    "r1",
	} {
		if got := render(t, stdout+src+" }\n"); got != want {
			t.Errorf("%s: %q, want %q", src, got, want)
		}
	}
	err := buildErr(t, stdout+`{ filename: "`+path+`.missing" } }`+"\n")
	if err == nil || !strings.Contains(err.Error(), "log_format.text_format_source.filename") {
		t.Errorf("missing file: %v, want an error naming text_format_source.filename", err)
	}
}

// TestJSONOmitEmptyValues: with omit_empty_values, as in Envoy, a missing
// command inside a string renders as "" (not "-"), keys with null values and
// nested objects left empty are dropped, and lists keep their other elements;
// text formats render a missing value as "".
func TestJSONOmitEmptyValues(t *testing.T) {
	const stdout = `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format:
`
	for _, tc := range []struct{ format, want string }{
		{`{ omit_empty_values: true, json_format: { mix: "a%REQ(x-nope)%b", code: "%RESPONSE_CODE%" } }`,
			`{"code":200,"mix":"ab"}` + "\n"},
		{`{ json_format: { mix: "a%REQ(x-nope)%b", gone: "%REQ(x-nope)%" } }`,
			`{"gone":null,"mix":"a-b"}` + "\n"},
		{`{ omit_empty_values: true, json_format: { gone: "%REQ(x-nope)%", lit: null, n: { m: "%REQ(x-nope)%" }, l: ["%REQ(x-nope)%", null, 1] } }`,
			`{"l":[1]}` + "\n"},
		{`{ omit_empty_values: true, json_format: { gone: "%REQ(x-nope)%" } }`, "{}\n"},
		{`{ omit_empty_values: true, text_format: "a%REQ(x-nope)%b %PROTOCOL%" }`, "ab HTTP/1.1"},
		{`{ text_format: "a%REQ(x-nope)%b" }`, "a-b"},
	} {
		if got := render(t, stdout+"    "+tc.format+"\n"); got != tc.want {
			t.Errorf("%s:\n%q, want\n%q", tc.format, got, tc.want)
		}
	}
}

// TestJSONLists: lists in a json_format hold templates (typed as other
// values), constants, objects and lists, as Envoy's JSON formatter does.
func TestJSONLists(t *testing.T) {
	got := render(t, `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /dev/null
  log_format:
    json_format:
      a: ["%RESPONSE_CODE%", "x", "%PROTOCOL% via %UPSTREAM_CLUSTER%", "%REQ(x-nope)%", 1.5, true, null]
      b: [{ c: "%ROUTE_NAME%" }, ["%BYTES_SENT%"], []]
`)
	want := `{"a":[200,"x","HTTP/1.1 via backend",null,1.5,true,null],"b":[{"c":"r1"},[64],[]]}` + "\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// The deprecated typed_json_format and json_format take them too.
	for _, field := range []string{"typed_json_format", "json_format"} {
		got := render(t, `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /dev/null
  `+field+`: { a: ["%RESPONSE_CODE%", "x"] }
`)
		if want := `{"a":[200,"x"]}` + "\n"; got != want {
			t.Errorf("%s: %q, want %q", field, got, want)
		}
	}
	err := buildErr(t, `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format: { json_format: { a: ["x", "%BOGUS%"] } }
`)
	if err == nil || !strings.Contains(err.Error(), "log_format.json_format") || !strings.Contains(err.Error(), "a[1]") {
		t.Errorf("bad command in a list: %v", err)
	}
}

// TestJSONLogAllocs: a JSON line with lists and nested objects is rendered
// without allocating in steady state.
func TestJSONLogAllocs(t *testing.T) {
	l := build1(t, `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format:
    omit_empty_values: true
    json_format: { a: ["%RESPONSE_CODE%", "x%REQ(x-nope)%"], n: { p: "%REQ(:PATH)%", t: "%START_TIME(%F %T)%" } }
`, nil)
	fm, e := l.(*textLogger).fm, exchange()
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = fm.append(buf[:0], e) }); n > 0 {
		t.Errorf("%v allocs per line", n)
	}
}

// TestStartTimeStrftime: START_TIME formats with strftime's conversions as
// Envoy's (absl::FormatTime in UTC, the C locale), absl's %E extensions and
// Envoy's fractional seconds; an unknown conversion is an error.
func TestStartTimeStrftime(t *testing.T) {
	at := func(s string, ns int) time.Time {
		tm, err := time.Parse(time.DateTime, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.Add(time.Duration(ns))
	}
	fri := at("2026-11-27 12:34:56", 789_000_000) // exchange()'s
	for _, tc := range []struct {
		at           time.Time
		format, want string
	}{
		// Expected values from glibc's strftime in the C locale (but %Z,
		// which absl renders as UTC).
		{fri, "%a|%A|%b|%B|%h|%c", "Fri|Friday|Nov|November|Nov|Fri Nov 27 12:34:56 2026"},
		{fri, "%C|%d|%D|%e|%F|%g|%G|%H|%I|%j", "20|27|11/27/26|27|2026-11-27|26|2026|12|12|331"},
		{fri, "%k|%l|%m|%M|%n|%p|%P|%r|%R|%s|%S|%t|%T", "12|12|11|34|\n|PM|pm|12:34:56 PM|12:34|1795782896|56|\t|12:34:56"},
		{fri, "%u|%U|%V|%w|%W|%x|%X|%y|%Y|%z|%Z|%%", "5|47|48|5|47|11/27/26|12:34:56|26|2026|+0000|UTC|%"},
		{at("2026-01-01 13:05:07", 0), "%c|%e|%I|%j|%l|%p|%r|%U|%V|%W|%u|%w", "Thu Jan  1 13:05:07 2026| 1|01|001| 1|PM|01:05:07 PM|00|01|00|4|4"},
		{at("2025-12-30 00:00:00", 0), "%g %G %V %U %W %u %j %l %I %p", "26 2026 01 52 52 2 364 12 12 AM"},
		{at("2024-01-01 00:00:00", 0), "%V %U %W %k %a", "01 00 01  0 Mon"},
		// absl's extensions and Envoy's fractional seconds.
		{fri, "%F %T %Ez|%E*z|%E4Y", "2026-11-27 12:34:56 +00:00|+00:00:00|2026"},
		{fri, "%E3S|%E6S|%E*S|%E2f|%E*f", "56.789|56.789000|56.789|78|789"},
		{fri, "%f|%3f|%1f|%*f", "789000000|789|7|789"},
		{at("2026-11-27 12:34:56", 0), "%E*S|%E*f|%*f|%E1S", "56|0|0|56.0"},
	} {
		f, err := ParseFormat("%START_TIME(" + tc.format + ")%")
		if err != nil {
			t.Errorf("%s: %v", tc.format, err)
			continue
		}
		e := exchange()
		e.Info.Start = tc.at
		if got := string(f.Append(nil, e)); got != tc.want {
			t.Errorf("%s at %v:\n%q, want\n%q", tc.format, tc.at, got, tc.want)
		}
	}
	for _, bad := range []string{"%Q", "%E", "%Ex", "%E0f", "%3Y", "%*", "%-d"} {
		err := buildErr(t, `
name: x
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format: { text_format: "%START_TIME(`+bad+`)%" }
`)
		if err == nil || !strings.Contains(err.Error(), "log_format.text_format") {
			t.Errorf("%s: %v, want an error naming log_format.text_format", bad, err)
		}
	}
}

// TestStartTimeAllocs: rendering a START_TIME format allocates nothing.
func TestStartTimeAllocs(t *testing.T) {
	f, err := ParseFormat("%START_TIME(%c %D %r %G-W%V-%u %j %Ez %E*S %*f %Z)%")
	if err != nil {
		t.Fatal(err)
	}
	e := exchange()
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { buf = f.Append(buf[:0], e) }); n > 0 {
		t.Errorf("%v allocs per entry", n)
	}
}
