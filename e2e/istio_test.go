package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/internal/tlstest"
	"github.com/skiffproxy/skiff/internal/xdstest"
)

// mtlsBackend is httpBackend over TLS (HTTP/1.1) with a certificate of ca,
// requiring a client certificate of ca: a pod behind its sidecar, whose
// inbound listener prefers Istio's metadata exchange to HTTP.
func mtlsBackend(t testing.TB, ca *tlstest.CA, h nethttp.Handler) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{ca.Issue(t, "backend", "spiffe://cluster.local/ns/default/sa/backend").TLS(t)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		NextProtos:   []string{"istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2", "istio", "http/1.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// HTTP/1.1 whatever the ALPN (net/http would drop a connection that
	// negotiated istio-http/1.1), with the TLS state in r.TLS.
	type tlsKey struct{}
	srv := &nethttp.Server{
		Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			cs := r.Context().Value(tlsKey{}).(*tls.Conn).ConnectionState()
			r.TLS = &cs
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, tlsKey{}, c.(plainHTTPConn).Conn)
		},
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(plainHTTPListener{ln}) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}

// plainHTTPListener hands net/http its TLS connections as plainHTTPConns.
type plainHTTPListener struct{ net.Listener }

func (l plainHTTPListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return plainHTTPConn{c.(*tls.Conn)}, nil
}

// plainHTTPConn is a TLS connection net/http does not see as one.
type plainHTTPConn struct{ *tls.Conn }

// istioRouterNode is the node istiod pushed the gateway resources to.
const istioRouterNode = "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local"

// loadIstioRouter decodes the resources istiod pushed to an ingress gateway
// (../dataplane/testdata/istio/router, exactly as received).
func loadIstioRouter(t *testing.T) map[resourcev3.Type][]types.Resource {
	t.Helper()
	files, err := filepath.Glob("../dataplane/testdata/istio/router/*.pb")
	if err != nil || len(files) == 0 {
		t.Fatalf("no gateway resources: %v", err)
	}
	out := map[resourcev3.Type][]types.Resource{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m types.Resource
		var typ resourcev3.Type
		switch base := filepath.Base(f); {
		case strings.HasPrefix(base, "Listener-"):
			m, typ = &listenerv3.Listener{}, resourcev3.ListenerType
		case strings.HasPrefix(base, "ClusterLoadAssignment-"):
			m, typ = &endpointv3.ClusterLoadAssignment{}, resourcev3.EndpointType
		case strings.HasPrefix(base, "Cluster-"):
			m, typ = &clusterv3.Cluster{}, resourcev3.ClusterType
		case strings.HasPrefix(base, "RouteConfiguration-"):
			m, typ = &routev3.RouteConfiguration{}, resourcev3.RouteType
		}
		if err := proto.Unmarshal(b, m); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[typ] = append(out[typ], m)
	}
	return out
}

func setSocketAddress(a *corev3.Address, addr string) {
	ap := netip.MustParseAddrPort(addr)
	sa := a.GetSocketAddress()
	sa.Address = ap.Addr().String()
	sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}
}

// TestIstioGateway pushes what istiod sent an ingress gateway, unchanged but
// for addresses (the listener on a free loopback port, the EDS endpoints on
// test backends), from a go-control-plane server to the real binary, and
// sends the VirtualService's traffic through it. As istio-agent does, a
// second server (the bootstrap's sds-grpc; istio-agent's is a unix socket)
// serves the workload certificate ("default") and the mesh's CA ("ROOTCA")
// by SDS, and
// one of the backends is a pod with a sidecar (its endpoint labelled
// tlsMode: istio): the gateway reaches it over mTLS with those secrets.
func TestIstioGateway(t *testing.T) {
	res := loadIstioRouter(t)
	meshCA := tlstest.NewCA(t, "mesh CA")
	gatewayID := "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
	// backend.example.com's three endpoints become three backends; the
	// first takes mTLS only.
	backends := map[string]string{}
	for i := range 3 {
		name := fmt.Sprintf("backend-%d", i)
		serve := httpBackend
		if i == 0 {
			serve = func(t testing.TB, h nethttp.Handler) string { return mtlsBackend(t, meshCA, h) }
		}
		addr := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			if r.TLS != nil {
				w.Header().Set("x-seen-client-id", r.TLS.PeerCertificates[0].URIs[0].String())
				w.Header().Set("x-seen-alpn", r.TLS.NegotiatedProtocol)
			}
			w.Header().Set("x-upstream", name)
			w.Header().Set("x-seen-path", r.URL.RequestURI())
			w.Header().Set("x-seen-decorator", r.Header.Get("x-envoy-decorator-operation"))
			w.Header().Set("x-seen-peer-id", r.Header.Get("x-envoy-peer-metadata-id"))
			w.Header().Set("x-seen-attempt-count", r.Header.Get("x-envoy-attempt-count"))
			w.Header().Set("x-seen-request-id", r.Header.Get("x-request-id"))
			// An upstream peer's metadata, which the gateway removes.
			w.Header().Set("x-envoy-peer-metadata-id", "sidecar~10.0.0.1~backend")
			fmt.Fprintf(w, "hello from %s", name)
		}))
		backends[addr] = name
	}
	var backendAddrs []string
	for a := range backends {
		backendAddrs = append(backendAddrs, a)
	}
	echo := startUpstream(t, "127.0.0.1", echoHandler)
	for _, r := range res[resourcev3.EndpointType] {
		cla := r.(*endpointv3.ClusterLoadAssignment)
		for _, lle := range cla.GetEndpoints() {
			for i, lbe := range lle.GetLbEndpoints() {
				a := lbe.GetEndpoint().GetAddress()
				if a.GetSocketAddress().GetPortValue() == 19000 {
					setSocketAddress(a, echo.Addr)
					continue
				}
				setSocketAddress(a, backendAddrs[i])
				if backends[backendAddrs[i]] == "backend-0" {
					md, _ := structpb.NewStruct(map[string]any{"tlsMode": "istio"})
					if lbe.Metadata == nil {
						lbe.Metadata = &corev3.Metadata{}
					}
					if lbe.Metadata.FilterMetadata == nil {
						lbe.Metadata.FilterMetadata = map[string]*structpb.Struct{}
					}
					lbe.Metadata.FilterMetadata["envoy.transport_socket_match"] = md
				}
			}
		}
	}
	l := res[resourcev3.ListenerType][0].(*listenerv3.Listener)
	setSocketAddress(l.GetAddress(), "127.0.0.1:0")

	cp := xdstest.Start(t, "127.0.0.1:0", istioRouterNode)
	cp.Push(res)
	agent := xdstest.Start(t, "127.0.0.1:0", istioRouterNode)
	workload := meshCA.Issue(t, "istio-ingressgateway", gatewayID)
	agent.Push(map[resourcev3.Type][]types.Resource{resourcev3.SecretType: {
		workload.Secret("default"),
		meshCA.Secret("ROOTCA"),
	}})
	host, port, _ := net.SplitHostPort(cp.Addr())
	sdsHost, sdsPort, _ := net.SplitHostPort(agent.Addr())
	a := startAdminSkiffYAML(t, fmt.Sprintf(`node:
  id: %s
  cluster: istio-ingressgateway.istio-system
  metadata: { NAMESPACE: istio-system, CLUSTER_ID: Kubernetes, NAME: gw-0, LABELS: { istio: ingressgateway } }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: { cluster_name: xds }
  cds_config: { ads: {}, resource_api_version: V3 }
  lds_config: { ads: {}, resource_api_version: V3 }
static_resources:
  clusters:
  - name: xds
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: %s, port_value: %s } } }
  - name: sds-grpc
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: %s, port_value: %s } } }
`, istioRouterNode, host, port, sdsHost, sdsPort))
	p := a.Proxy
	addr := waitListener(t, p, l.GetName())
	for _, r := range cp.Requests() {
		if d, ok := r.(*discoveryv3.DiscoveryRequest); ok && d.GetErrorDetail() != nil {
			t.Fatalf("skiff NACKed istiod's resources: %s", d.GetErrorDetail().GetMessage())
		}
	}

	// The config dump prints as JSON, Istio's own config types included.
	r := runSkiff(t, "admin", "--runtime-dir", p.RuntimeDir, "config-dump", "-o", "json")
	alpnType := regexp.MustCompile(`"@type":\s*"type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"`)
	if r.code != 0 || !alpnType.MatchString(r.stdout) {
		t.Errorf("skiff admin config-dump -o json: exit %d, stderr %q, istio.alpn's config not printed", r.code, r.stderr)
	}
	// The SDS secrets are dumped as Envoy dumps them, the private key redacted.
	secretsDump := regexp.MustCompile(`(?s)"dynamic_?[aA]ctive_?[sS]ecrets":.*"name":\s*"default"`)
	if !secretsDump.MatchString(r.stdout) || strings.Contains(r.stdout, "PRIVATE KEY") {
		t.Errorf("skiff admin config-dump -o json: the SDS secrets are missing or their private key is not redacted:\n%s", r.stdout)
	}
	// So does the HTTP side's /config_dump, as Envoy's (istioctl
	// proxy-config reads it through istio-agent).
	if code, body := a.adminGet(t, "/config_dump?include_eds"); code != nethttp.StatusOK || !alpnType.MatchString(body) ||
		!secretsDump.MatchString(body) || strings.Contains(body, "PRIVATE KEY") || !strings.Contains(body, `"dynamic_endpoint_configs"`) {
		t.Errorf("GET /config_dump?include_eds: %d\n%s", code, body)
	}

	c := h1Client(t)
	seen := map[string]bool{}
	for i := range 6 {
		resp, body := doGet(t, c, "http://"+addr+"/api/items?i="+fmt.Sprint(i), "host", "shop.example.com")
		if resp.StatusCode != 200 {
			t.Fatalf("GET /api/items: %d %q", resp.StatusCode, body)
		}
		up := resp.Header.Get("x-upstream")
		if !strings.HasPrefix(body, "hello from backend-") || up == "" {
			t.Fatalf("GET /api/items reached %q: %q", up, body)
		}
		seen[up] = true
		if id := resp.Header.Get("x-seen-client-id"); (up == "backend-0") != (id == gatewayID) {
			t.Errorf("%s saw the client certificate %q (want the gateway's SDS certificate on backend-0 alone)", up, id)
		}
		if alpn := resp.Header.Get("x-seen-alpn"); up == "backend-0" && alpn != "istio-http/1.1" {
			t.Errorf("the mTLS connection negotiated ALPN %q, want istio-http/1.1 (istio.alpn's override)", alpn)
		}
		for h, want := range map[string]string{
			"x-seen-path":          "/api/items?i=" + fmt.Sprint(i),
			"x-seen-decorator":     "backend.example.com:80/api*", // the route's decorator, egress
			"x-seen-peer-id":       istioRouterNode,               // istio.metadata_exchange
			"x-seen-attempt-count": "1",                           // include_request_attempt_count
			"server":               "istio-envoy",
		} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s = %q, want %q", h, got, want)
			}
		}
		if rid := resp.Header.Get("x-seen-request-id"); len(rid) != 36 || (rid[14] != '4' && rid[14] != '9') {
			t.Errorf("x-request-id upstream %q is not a UUID with a trace reason", rid)
		}
		if v := resp.Header.Get("x-envoy-peer-metadata-id"); v != "" {
			t.Errorf("the upstream's x-envoy-peer-metadata-id went downstream: %q", v)
		}
	}
	if len(seen) < 3 {
		t.Errorf("6 requests reached only %v of the three endpoints", seen)
	}

	// No route: 404, as Envoy.
	resp, body := doGet(t, c, "http://"+addr+"/elsewhere", "host", "shop.example.com")
	if resp.StatusCode != 404 {
		t.Fatalf("GET /elsewhere: %d %q, want 404", resp.StatusCode, body)
	}
}

// TestIstioTCPMetadataExchange: TCP between two meshed proxies, both skiff,
// configured as istiod configures a sidecar's outbound TCP cluster (mTLS
// offering istio-peer-exchange, the metadata exchange filter on the
// cluster) and a sidecar's inbound TCP chain (mTLS, the exchange filter
// before tcp_proxy). The two exchange their workload metadata in-band and
// the stream goes through byte for byte after it.
func TestIstioTCPMetadataExchange(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "mesh CA")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	inCert, inKey := ca.Issue(t, "inbound", "spiffe://cluster.local/ns/default/sa/echo").Files(t, dir, "in-")
	outCert, outKey := ca.Issue(t, "outbound", "spiffe://cluster.local/ns/default/sa/client").Files(t, dir, "out-")
	// mx is the filter as a list entry whose "- " is at column indent.
	mx := func(indent int) string {
		pad := strings.Repeat(" ", indent+2)
		return "name: istio.metadata_exchange\n" + pad + "typed_config:\n" +
			pad + `  "@type": type.googleapis.com/udpa.type.v1.TypedStruct` + "\n" +
			pad + "  type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange\n" +
			pad + "  value: { protocol: istio-peer-exchange, enable_discovery: true }"
	}
	echo := startUpstream(t, "127.0.0.1", echoHandler)
	inbound := startSkiff(t, fmt.Sprintf(`
node: { id: "sidecar~127.0.0.2~echo.default~default.svc.cluster.local", metadata: { NAME: echo-0, NAMESPACE: default } }
static_resources:
  listeners:
  - name: inbound
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [istio-peer-exchange, h2, http/1.1]
            tls_certificates: [{ certificate_chain: { filename: %q }, private_key: { filename: %q } }]
            validation_context: { trusted_ca: { filename: %q } }
      filters:
      - %s
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: inbound
          cluster: echo
  clusters:
%s`, inCert, inKey, caFile, mx(6), staticCluster("echo", false, echo.Addr)))
	outbound := startSkiff(t, fmt.Sprintf(`
node: { id: "sidecar~127.0.0.1~client.default~default.svc.cluster.local", metadata: { NAME: client-0, NAMESPACE: default } }
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: echo
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{ lb_endpoints: [{ endpoint: { address: %s } }] }]
    filters:
    - %s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.9000_._.echo.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificates: [{ certificate_chain: { filename: %q }, private_key: { filename: %q } }]
          validation_context: { trusted_ca: { filename: %q } }
`, sock(inbound.Addr(t, "inbound")), mx(4), outCert, outKey, caFile))

	for i := range 3 {
		c, err := net.DialTimeout("tcp", outbound.Addr(t, "outbound"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(ioTimeout))
		if err := echoAll(c.(*net.TCPConn), randomBytes(uint64(i), 256<<10)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Close()
	}
	for _, p := range []*Proxy{inbound, outbound} {
		st := runSkiff(t, "admin", "--runtime-dir", p.RuntimeDir, "stats")
		for _, want := range []string{"metadata_exchange.alpn_protocol_found: 3", "metadata_exchange.metadata_added: 3"} {
			if !strings.Contains(st.stdout, want) {
				t.Errorf("stats lack %q:\n%s", want, st.stdout)
			}
		}
	}
}

// istioAgentNode is the node id of testdata/istio-agent-bootstrap.json.tmpl.
const istioAgentNode = "sidecar~10.0.0.1~app.default~default.svc.cluster.local"

// TestIstioAgentBootstrap runs skiff as istio-agent runs Envoy: with its
// command line and a rendering of its envoy_bootstrap.json (its stats_config with
// Istio's 44 stats_tags and inclusion list, xds-grpc and sds-grpc on unix
// sockets, the internal_listener extension, the runtime layers, the
// prometheus and readiness listeners; the listeners bind loopback here, not
// 0.0.0.0). istiod's resources come over ADS from the agent's socket; the
// readiness listener reaches the agent; the prometheus listener serves
// skiff's admin /stats/prometheus with the inclusion list applied and
// Istio's tags.
func TestIstioAgentBootstrap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	cp := xdstest.Start(t, "unix:"+filepath.Join(dir, "XDS"), istioAgentNode)
	inbound, outbound := xdsListener("ingress", "backend"), xdsListener("egress", "backend")
	inbound.TrafficDirection, outbound.TrafficDirection = corev3.TrafficDirection_INBOUND, corev3.TrafficDirection_OUTBOUND
	cp.Push(xdsResources(xdsAssignment("backend", up.Addr), inbound, outbound))
	agent := httpBackend(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.URL.Path != "/healthz/ready" {
			nethttp.NotFound(w, r)
		}
	}))
	_, agentPort, _ := net.SplitHostPort(agent)
	tmpl, err := os.ReadFile("testdata/istio-agent-bootstrap.json.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	adminPort, statsPort, healthPort := freePort(t), freePort(t), freePort(t)
	cfg := strings.NewReplacer("__DIR__", dir, "__ADMIN_PORT__", fmt.Sprint(adminPort), "__AGENT_PORT__", agentPort,
		"__STATS_PORT__", fmt.Sprint(statsPort), "__HEALTH_PORT__", fmt.Sprint(healthPort)).Replace(string(tmpl))
	// istio-agent's command line for its proxy (pkg/envoy: args()), but -l
	// info, which the harness's start-up line needs, and
	// --admin-tcp-mutations, which a wrapper would add for the agent's drain.
	p := startSkiff(t, cfg, "--admin-tcp-mutations", "--drain-time-s", "45", "--drain-strategy", "immediate", "--local-address-ip-version", "v4",
		"--file-flush-interval-msec", "1000", "--disable-hot-restart", "--allow-unknown-static-fields",
		"-l", "info", "--component-log-level", "misc:error", "--log-format", "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t",
		"--concurrency", "2")

	c := dial(t, waitListener(t, p, "ingress"))
	if err := echoRoundTrip(c, []byte("through istiod's listener")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	get := func(port int, path string) (int, string) {
		t.Helper()
		resp, err := nethttp.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		if _, err := io.Copy(&b, resp.Body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b.String()
	}
	if code, _ := get(healthPort, "/healthz/ready"); code != nethttp.StatusOK {
		t.Errorf("GET /healthz/ready through the readiness listener: %d", code)
	}
	// istio-agent's readiness check (pilot-agent's GetReadinessStats and
	// GetUpdateStatusStats): both lines there, live, workers started, the
	// initial CDS and LDS accepted.
	if _, body := get(adminPort, `/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)`); body != "listener_manager.workers_started: 1\nserver.state: 0\n" {
		t.Errorf("istio-agent's readiness query answers %q", body)
	}
	_, body := get(adminPort, `/stats?usedonly&filter=^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)$`)
	for _, want := range []string{"cluster_manager.cds.update_success: ", "listener_manager.lds.update_success: "} {
		if !strings.Contains(body, want) {
			t.Errorf("istio-agent's update query answers %q, without %s", body, want)
		}
	}
	code, body := get(statsPort, "/stats/prometheus")
	if code != nethttp.StatusOK {
		t.Fatalf("GET /stats/prometheus through the prometheus listener: %d\n%s", code, body)
	}
	for _, want := range []string{
		// The ADS connection goes through the xds-grpc cluster, as Envoy's.
		`(?m)^envoy_cluster_upstream_cx_total\{cluster_name="xds-grpc"\} [1-9]`,
		`(?m)^envoy_cluster_upstream_cx_active\{cluster_name="xds-grpc"\} 1$`,
		`(?m)^envoy_server_live\{\} 1$`,
	} {
		if !regexp.MustCompile(want).MatchString(body) {
			t.Errorf("GET /stats/prometheus does not match %s:\n%s", want, body)
		}
	}
	for _, unwanted := range []string{"envoy_tcp_", "envoy_listener_downstream", `cluster_name="backend"`, "envoy_cluster_name"} {
		if strings.Contains(body, unwanted) {
			t.Errorf("GET /stats/prometheus has %s, which the inclusion list or use_all_default_tags: false leaves out:\n%s", unwanted, body)
		}
	}

	// The agent's drain at pod termination (graceful there; here at once):
	// the inbound listener stops, the outbound one serves on.
	egress := waitListener(t, p, "egress")
	resp, err := nethttp.Post(fmt.Sprintf("http://127.0.0.1:%d/drain_listeners?inboundonly", adminPort), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != nethttp.StatusOK {
		t.Fatalf("POST /drain_listeners?inboundonly: %d", resp.StatusCode)
	}
	waitRefused(t, waitListener(t, p, "ingress"), 10*time.Second)
	c = dial(t, egress)
	if err := echoRoundTrip(c, []byte("outbound after the inbound drain")); err != nil {
		t.Errorf("the outbound listener after an inbound-only drain: %v", err)
	}
}
