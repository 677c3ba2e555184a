package dataplane

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/skiffproxy/skiff/internal/nettest"
)

// originalDstCluster is an ORIGINAL_DST cluster, its connections from
// source (if valid), with use_http_header if header.
func originalDstCluster(name string, source netip.AddrPort, header bool) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		CleanupInterval:      durationpb.New(200 * time.Millisecond),
	}
	if source.IsValid() {
		c.UpstreamBindConfig = &corev3.BindConfig{SourceAddress: sockAddr(source).GetSocketAddress()}
	}
	if header {
		c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{UseHttpHeader: true}}
	}
	return c
}

// whoAmI is an upstream on addr that tells each connection "<addr> from
// <client IP>\n" and then echoes.
func whoAmI(t *testing.T, addr string) {
	t.Helper()
	nettest.ServeAt(t, addr, func(c net.Conn) {
		defer c.Close()
		fmt.Fprintf(c, "%s from %s\n", addr, c.RemoteAddr().(*net.TCPAddr).IP)
		io.Copy(c, c)
	})
}

// TestOriginalDstHeader: an ORIGINAL_DST cluster with use_http_header sends
// each request to the host its x-envoy-original-dst-host names, made on
// demand and dropped after a cleanup interval without use; a request without
// it has no host (503, upstream_cx_none_healthy).
func TestOriginalDstHeader(t *testing.T) {
	up := httpGreeter(t, "up")
	s, st := newTestServer(t, time.Second)
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{hcmListener("h", loopback0, "r")},
		Routes:   map[string]*routev3.RouteConfiguration{"r": routeTo("r", "orig")},
		Clusters: []*clusterv3.Cluster{originalDstCluster("orig", netip.AddrPort{}, true)}}); err != nil {
		t.Fatal(err)
	}
	url := "http://" + boundAddr(t, s, "h").String() + "/"
	tr := &nethttp.Transport{}
	defer tr.CloseIdleConnections()
	get := func(dst string) int {
		req, _ := nethttp.NewRequest("GET", url, nil)
		if dst != "" {
			req.Header.Set("x-envoy-original-dst-host", dst)
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(up.String()); code != 200 {
		t.Fatalf("with the header: %d", code)
	}
	cl := s.Clusters().Get("orig")
	if hosts := cl.Hosts(); len(hosts) != 1 || hosts[0].Addr != up {
		t.Errorf("hosts %v, want %v", hosts, up)
	}
	if code := get(""); code != 503 {
		t.Errorf("without the header: %d, want 503", code)
	}
	if v, _ := st.Value("cluster.orig.upstream_cx_none_healthy"); v != 1 {
		t.Errorf("upstream_cx_none_healthy = %d, want 1", v)
	}
	tr.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for len(cl.Hosts()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("hosts %v still there after the cleanup interval", cl.Hosts())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const netnsEnv = "SKIFF_TEST_IN_NETNS"

// inNetns runs the test again in a child process with a network namespace of
// its own (and a user namespace when not root), where the test may program
// nftables; it reports whether the caller is that child. It skips the test
// where namespaces cannot be made.
func inNetns(t *testing.T) bool {
	if os.Getenv(netnsEnv) == "1" {
		if err := linkUp("lo"); err != nil {
			t.Fatalf("bringing lo up: %v", err)
		}
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if os.Geteuid() != 0 {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		t.Logf("in a network namespace:\n%s", out)
	case errors.As(err, &ee):
		t.Fatalf("in a network namespace: %v\n%s", err, out)
	default:
		t.Skipf("cannot make a network namespace here: %v", err)
	}
	return false
}

// linkUp sets the flag IFF_UP on interface name.
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// redirect adds the nftables rule that sends TCP connections made to dst
// (port dstPort, or any if 0), except those from exempt, to
// 127.0.0.1:port, as a sidecar's iptables REDIRECT does (with Istio's
// 127.0.0.6 exemption).
func redirect(t *testing.T, dst, exempt netip.Addr, dstPort, port uint16) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "capture"})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "output", Table: tb, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // daddr
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst.AsSlice()},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // saddr
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: exempt.AsSlice()},
	}
	if dstPort != 0 {
		exprs = append(exprs,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, // dport
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(dstPort)})
	}
	exprs = append(exprs,
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: exprs})
	if err := c.Flush(); err != nil {
		t.Fatalf("nftables: %v", err)
	}
}

// TestOriginalDstRedirect: transparent proxying as a sidecar does it, in a
// network namespace with the kernel's NAT: connections to 127.0.0.9:8080 are
// redirected to skiff's listener, whose original_dst listener filter restores
// where they were going; its tcp_proxy's ORIGINAL_DST cluster connects there,
// from 127.0.0.6 (upstream_bind_config, which the redirect exempts, as
// Istio's does). (With connection tracking on, a connection made to the
// listener itself is "restored" to its own address, as in Envoy, and would
// loop: istiod's virtual listener has a chain for its own port that sends
// those to the BlackHoleCluster.)
func TestOriginalDstRedirect(t *testing.T) {
	if !inNetns(t) {
		return
	}
	whoAmI(t, "127.0.0.9:8080")
	s, st := newTestServer(t, time.Second)
	od, _ := anypb.New(&originaldstv3.OriginalDst{})
	l := tcpListener("capture", loopback0, "orig")
	l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.original_dst",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: od}}}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{l},
		Clusters: []*clusterv3.Cluster{originalDstCluster("orig", netip.MustParseAddrPort("127.0.0.6:0"), false)}}); err != nil {
		t.Fatal(err)
	}
	port := boundAddr(t, s, "capture").Port()
	redirect(t, netip.MustParseAddr("127.0.0.9"), netip.MustParseAddr("127.0.0.6"), 8080, port)

	c, err := net.DialTimeout("tcp", "127.0.0.9:8080", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || line != "127.0.0.9:8080 from 127.0.0.6\n" {
		t.Fatalf("through the redirect: %q %v, want the original destination, reached from 127.0.0.6", line, err)
	}
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the redirect: %q %v", buf, err)
	}
	if v, _ := st.Value("cluster.orig.upstream_cx_total"); v != 1 {
		t.Errorf("upstream_cx_total = %d, want 1", v)
	}
}

// TestUseOriginalDst: a sidecar's outbound capture, as istiod configures it:
// every connection to 127.0.0.9 is redirected to a virtual listener with
// use_original_dst, which hands each to the listener of its original
// destination, here one with bind_to_port false (127.0.0.9:8080, whose
// tcp_proxy goes to the app at 127.0.0.10:8080); a destination without a
// listener (127.0.0.9:9090) stays on the virtual listener's own chain, whose
// ORIGINAL_DST cluster passes it through.
func TestUseOriginalDst(t *testing.T) {
	if !inNetns(t) {
		return
	}
	whoAmI(t, "127.0.0.10:8080")
	whoAmI(t, "127.0.0.9:9090")
	s, st := newTestServer(t, time.Second)
	virtual := tcpListener("virtual", loopback0, "passthrough")
	virtual.UseOriginalDst = wrapperspb.Bool(true)
	outbound := tcpListener("127.0.0.9_8080", netip.MustParseAddrPort("127.0.0.9:8080"), "app")
	outbound.BindToPort = wrapperspb.Bool(false)
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{virtual, outbound},
		Clusters: []*clusterv3.Cluster{
			originalDstCluster("passthrough", netip.MustParseAddrPort("127.0.0.6:0"), false),
			staticCluster("app", netip.MustParseAddrPort("127.0.0.10:8080")),
		}}); err != nil {
		t.Fatal(err)
	}
	redirect(t, netip.MustParseAddr("127.0.0.9"), netip.MustParseAddr("127.0.0.6"), 0, boundAddr(t, s, "virtual").Port())
	for _, tc := range []struct{ dial, want string }{
		{"127.0.0.9:8080", "127.0.0.10:8080 from 127.0.0.1\n"},
		{"127.0.0.9:9090", "127.0.0.9:9090 from 127.0.0.6\n"},
	} {
		c, err := net.DialTimeout("tcp", tc.dial, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || line != tc.want {
			t.Errorf("connection to %s: %q %v, want %q", tc.dial, line, err, tc.want)
		}
	}
	for name, want := range map[string]int64{
		"listener.127.0.0.9_8080.downstream_cx_total": 1,
		"listener.127.0.0.1_0.downstream_cx_total":    1, // the pass-through one
	} {
		if v, _ := st.Value(name); v != want {
			t.Errorf("%s = %d, want %d", name, v, want)
		}
	}
}
