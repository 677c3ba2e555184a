package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/internal/tlstest"
	"github.com/skiffproxy/skiff/internal/xdstest"
	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

const xdsNode = "e2e-node"

// xdsBootstrap is a bootstrap whose listeners and clusters come over ADS from
// the control plane at cpAddr (delta or state of the world).
func xdsBootstrap(cpAddr string, delta bool) string {
	host, port, _ := net.SplitHostPort(cpAddr)
	apiType := "GRPC"
	if delta {
		apiType = "DELTA_GRPC"
	}
	return fmt.Sprintf(`node: { id: %s, cluster: e2e }
dynamic_resources:
  ads_config:
    api_type: %s
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: { cluster_name: xds }
  cds_config: { ads: {}, resource_api_version: V3 }
  lds_config: { ads: {}, resource_api_version: V3 }
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
`, xdsNode, apiType, host, port)
}

func xdsAddress(addr string) *corev3.Address {
	ap := netip.MustParseAddrPort(addr)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}
}

func xdsEDSCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(time.Second),
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}},
	}
}

func xdsAssignment(name string, hosts ...string) *endpointv3.ClusterLoadAssignment {
	var eps []*endpointv3.LbEndpoint
	for _, h := range hosts {
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: xdsAddress(h)}}})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}
}

func xdsListener(name, cluster string) *listenerv3.Listener {
	a, _ := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})
	return &listenerv3.Listener{
		Name:    name,
		Address: xdsAddress("127.0.0.1:0"),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}}}},
	}
}

func xdsResources(cla *endpointv3.ClusterLoadAssignment, ls ...*listenerv3.Listener) map[resourcev3.Type][]types.Resource {
	m := map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {xdsEDSCluster(cla.GetClusterName())},
		resourcev3.EndpointType: {cla},
		resourcev3.ListenerType: {},
	}
	for _, l := range ls {
		m[resourcev3.ListenerType] = append(m[resourcev3.ListenerType], l)
	}
	return m
}

// TestXDS drives the real binary from an in-test go-control-plane server, over
// state-of-the-world and delta ADS.
func TestXDS(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			t.Parallel()
			upA := startUpstream(t, "127.0.0.1", echoHandler)
			upB := startUpstream(t, "127.0.0.1", echoHandler)
			cp := xdstest.Start(t, "127.0.0.1:0", xdsNode)
			cpAddr := cp.Addr()
			v1 := cp.Push(xdsResources(xdsAssignment("backend", upA.Addr), xdsListener("ingress", "backend")))
			p := startSkiff(t, xdsBootstrap(cpAddr, delta))
			addr := waitListener(t, p, "ingress")

			// Traffic flows; a long-lived connection is open on host A.
			old := dial(t, addr)
			if err := echoRoundTrip(old, []byte("first")); err != nil {
				t.Fatal(err)
			}
			if upA.accepted.Load() != 1 {
				t.Fatalf("host A accepted %d connections", upA.accepted.Load())
			}

			// An endpoint update redirects new connections while the old one goes on.
			cp.Push(xdsResources(xdsAssignment("backend", upB.Addr), xdsListener("ingress", "backend")))
			deadline := time.Now().Add(20 * time.Second)
			for upB.accepted.Load() == 0 && time.Now().Before(deadline) {
				c := dial(t, addr)
				if err := echoRoundTrip(c, []byte("new")); err != nil {
					t.Fatal(err)
				}
				c.Close()
				time.Sleep(50 * time.Millisecond)
			}
			if upB.accepted.Load() == 0 {
				t.Fatal("new connections never reached host B after the endpoint update")
			}
			if err := echoRoundTrip(old, []byte("old connection still works")); err != nil {
				t.Fatalf("the connection to host A broke on an endpoint update: %v", err)
			}

			// An invalid listener is NACKed with the field path; traffic keeps flowing.
			bad := xdsListener("broken", "backend")
			bad.FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
			cp.Push(xdsResources(xdsAssignment("backend", upB.Addr), xdsListener("ingress", "backend"), bad))
			nack := waitNACK(t, cp, delta)
			if !strings.Contains(nack, `Listener "broken"`) || !strings.Contains(nack, "filter_chains[0].filters[0].typed_config") {
				t.Fatalf("NACK error_detail %q does not name the listener and the field", nack)
			}
			if err := echoRoundTrip(old, []byte("after the NACK")); err != nil {
				t.Fatal(err)
			}
			checkCSDSAfterNACK(t, p)
			c := dial(t, addr)
			if err := echoRoundTrip(c, []byte("new after the NACK")); err != nil {
				t.Fatal(err)
			}

			// The control plane restarts: traffic is undisturbed, and the client
			// reconnects and resyncs from the versions it has.
			cp.Stop()
			if err := echoRoundTrip(old, []byte("control plane down")); err != nil {
				t.Fatal(err)
			}
			cp2 := xdstest.Start(t, cpAddr, xdsNode)
			cp2.Push(xdsResources(xdsAssignment("backend", upA.Addr), xdsListener("ingress", "backend"), xdsListener("second", "backend")))
			if delta {
				if r := cp2.DeltaRequest(resourcev3.ClusterType, 0); r.GetInitialResourceVersions()["backend"] == "" {
					t.Fatalf("delta reconnect without initial_resource_versions: %v", r)
				}
			} else if r := cp2.Request(resourcev3.ClusterType, 0); r.GetVersionInfo() == "" {
				t.Fatalf("reconnect without the accepted version (%s): %v", v1, r)
			}
			second := waitListener(t, p, "second")
			c2 := dial(t, second)
			if err := echoRoundTrip(c2, []byte("resynced")); err != nil {
				t.Fatal(err)
			}
			if err := echoRoundTrip(old, []byte("still the same connection")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// waitNACK returns the error_detail of the first NACK the control plane got.
func waitNACK(t *testing.T, cp *xdstest.ControlPlane, delta bool) string {
	t.Helper()
	for n := 0; ; n++ {
		if delta {
			if r := cp.DeltaRequest(resourcev3.ListenerType, n); r.GetErrorDetail() != nil {
				return r.GetErrorDetail().GetMessage()
			}
			continue
		}
		r := cp.Request(resourcev3.ListenerType, n)
		if r.GetErrorDetail() != nil {
			return r.GetErrorDetail().GetMessage()
		}
	}
}

// waitListener waits until skiff binds the named listener (xDS listeners come
// after start-up) and returns its address.
func waitListener(t *testing.T, p *Proxy, name string) string {
	t.Helper()
	l := p.WaitLog(t, 30*time.Second, "listener "+name+" bound", func(l LogLine) bool {
		return l.Msg() == "listener bound" && l.Fields["listener"] == name
	})
	return l.Fields["address"]
}

// checkCSDSAfterNACK asks the admin API's CSDS what it knows after an LDS NACK:
// exactly one ClientConfig (skiff's node), the accepted listener ACKED with its
// version, the rejected one NACKED with the error.
func checkCSDSAfterNACK(t *testing.T, p *Proxy) {
	t.Helper()
	cc := grpcConn(t, "unix:"+filepath.Join(p.RuntimeDir, "admin.sock"))
	resp, err := statusv3.NewClientStatusDiscoveryServiceClient(cc).FetchClientStatus(rpcCtx(t), &statusv3.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetConfig()) != 1 || resp.GetConfig()[0].GetNode().GetId() != xdsNode {
		t.Fatalf("CSDS: want one ClientConfig for node %s, got %v", xdsNode, resp)
	}
	var ingress, broken *statusv3.ClientConfig_GenericXdsConfig
	for _, g := range resp.GetConfig()[0].GetGenericXdsConfigs() {
		if g.GetTypeUrl() != resourcev3.ListenerType {
			continue
		}
		switch g.GetName() {
		case "ingress":
			ingress = g
		case "broken":
			broken = g
		}
	}
	if ingress.GetClientStatus() != adminv3.ClientResourceStatus_ACKED || ingress.GetVersionInfo() == "" || ingress.GetXdsConfig() == nil {
		t.Errorf("CSDS: listener ingress = %v, want ACKED with its version and config", ingress)
	}
	if broken.GetClientStatus() != adminv3.ClientResourceStatus_NACKED || !strings.Contains(broken.GetErrorState().GetDetails(), "typed_config") {
		t.Errorf("CSDS: listener broken = %v, want NACKED with the error", broken)
	}
	info, err := adminv1.NewAdminServiceClient(cc).GetServerInfo(rpcCtx(t), &adminv1.GetServerInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetState() != adminv1.ServerState_SERVER_STATE_LIVE {
		t.Errorf("server state %v after xDS initialized, want LIVE", info.GetState())
	}
}

// TestListenerBreakingLDSRestart pushes, under continuous connects, a listener
// update that changes a socket option: skiff hands the change to a hot-restart
// successor, which binds the new socket while the parent's keeps accepting.
// Not one connection may fail, and the new option must be in effect on the
// socket that serves afterwards.
func TestListenerBreakingLDSRestart(t *testing.T) {
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("ss (iproute2) is needed to read the listening socket's receive buffer")
	}
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	cp := xdstest.Start(t, "127.0.0.1:0", xdsNode)
	port := freePort(t)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	withRcvbuf := func(n int64) *listenerv3.Listener {
		l := xdsListener("ingress", "backend")
		l.Address = xdsAddress(listen)
		l.SocketOptions = []*corev3.SocketOption{{Level: 1 /* SOL_SOCKET */, Name: 8, /* SO_RCVBUF */
			Value: &corev3.SocketOption_IntValue{IntValue: n}, State: corev3.SocketOption_STATE_PREBIND}}
		return l
	}
	cp.Push(xdsResources(xdsAssignment("backend", up.Addr), withRcvbuf(32768)))
	p := startSkiff(t, xdsBootstrap(cp.Addr(), false))
	addr := waitListener(t, p, "ingress")
	if rb := listenRcvbuf(t, port); rb != 65536 {
		t.Fatalf("receive buffer before the update: %d, want 65536 (the kernel doubles 32768)", rb)
	}

	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			// Paced and bounded: each connection leaves a TIME_WAIT behind.
			for i := 0; i < 2000; i++ {
				time.Sleep(5 * time.Millisecond)
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					err = echoRoundTrip(c, []byte("through the restart"))
					c.Close()
				}
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	cp.Push(xdsResources(xdsAssignment("backend", up.Addr), withRcvbuf(131072)))
	p.WaitLog(t, 60*time.Second, "the successor took over", func(l LogLine) bool { return l.Msg() == "hot restart: took over from the parent" })
	if code := p.Wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the parent exited %d after handing over, want 0", code)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d connections failed across the listener-breaking restart; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr)
	}
	if ok.Load() < 20 {
		t.Fatalf("only %d connections made: the test proves nothing", ok.Load())
	}
	if rb := listenRcvbuf(t, port); rb != 262144 {
		t.Fatalf("receive buffer of the serving socket after the update: %d, want 262144", rb)
	}
}

// listenRcvbuf reads the receive buffer size (skmem rb) of the one socket
// listening on 127.0.0.1:port, from ss.
func listenRcvbuf(t *testing.T, port int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ss", "-ltnm", fmt.Sprintf("sport = :%d", port)).CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`\brb(\d+)`).FindAllStringSubmatch(string(out), -1)
		if len(m) == 1 {
			n, _ := strconv.Atoi(m[0][1])
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("want exactly one socket listening on port %d, ss says:\n%s", port, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestXDSOverMTLS: the ADS cluster's transport_socket makes the control
// plane connection mutual TLS, as Envoy's (istiod's port 15012 asks for
// it): skiff presents its certificate, checks the control plane's against
// the cluster's CA and SNI, and follows what it is sent; a control plane
// whose certificate the cluster does not trust gets no request.
func TestXDSOverMTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "mesh CA")
	clientCert, clientKey := ca.Issue(t, "skiff", "spiffe://cluster.local/ns/default/sa/skiff").Files(t, dir, "client-")
	caFile := writeFile(t, "ca.pem", string(ca.PEM))
	serve := func(issuer *tlstest.CA) *xdstest.ControlPlane {
		cert := issuer.Issue(t, "istiod", "istiod.istio-system.svc", "127.0.0.1").TLS(t)
		creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()})
		return xdstest.Start(t, "127.0.0.1:0", xdsNode, grpc.Creds(creds))
	}
	up := startUpstream(t, "127.0.0.1", echoHandler)

	cp := serve(ca)
	cp.Push(xdsResources(xdsAssignment("backend", up.Addr), xdsListener("ingress", "backend")))
	p := startSkiff(t, xdsBootstrap(cp.Addr(), false)+tlsUpstream("istiod.istio-system.svc", caFile, clientCert, clientKey, ""))
	c := dial(t, waitListener(t, p, "ingress"))
	if err := echoRoundTrip(c, []byte("configured over mTLS")); err != nil {
		t.Fatal(err)
	}
	if r := cp.Request(resourcev3.ListenerType, 0); r.GetNode().GetId() != xdsNode {
		t.Errorf("LDS request over mTLS: %v", r)
	}

	// google_grpc with ssl_credentials: the same, through gRPC's own TLS.
	cp2 := serve(ca)
	cp2.Push(xdsResources(xdsAssignment("backend", up.Addr), xdsListener("ingress", "backend")))
	g := startSkiff(t, fmt.Sprintf(`node: { id: %s, cluster: e2e }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - google_grpc:
        target_uri: %s
        stat_prefix: xds
        channel_credentials:
          ssl_credentials:
            root_certs: { filename: %q }
            cert_chain: { filename: %q }
            private_key: { filename: %q }
  cds_config: { ads: {}, resource_api_version: V3 }
  lds_config: { ads: {}, resource_api_version: V3 }
`, xdsNode, cp2.Addr(), caFile, clientCert, clientKey))
	c2 := dial(t, waitListener(t, g, "ingress"))
	if err := echoRoundTrip(c2, []byte("configured over google_grpc mTLS")); err != nil {
		t.Fatal(err)
	}

	untrusted := serve(tlstest.NewCA(t, "another CA"))
	q := startSkiff(t, xdsBootstrap(untrusted.Addr(), false)+tlsUpstream("istiod.istio-system.svc", caFile, clientCert, clientKey, ""))
	refused := regexp.MustCompile(`(?m)^cluster\.xds\.ssl\.fail_verify_error: [1-9]`)
	waitFor(t, "a refused TLS handshake with the untrusted control plane", func() bool {
		return refused.MatchString(runSkiff(t, "stats", "--runtime-dir", q.RuntimeDir).stdout)
	})
	if n := len(untrusted.Requests()); n != 0 {
		t.Errorf("the untrusted control plane got %d requests", n)
	}
}
