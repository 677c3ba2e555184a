package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestControlPlaneBinary runs `skiff controlplane` over a directory and a
// `skiff run` data plane against it, both real processes: traffic flows, an
// edited file takes effect without disturbing an open connection, and an
// invalid file is reported (file and field) while the last good set keeps
// serving.
func TestControlPlaneBinary(t *testing.T) {
	t.Parallel()
	upA := startUpstream(t, "127.0.0.1", echoHandler)
	upB := startUpstream(t, "127.0.0.1", echoHandler)
	dir := t.TempDir()
	listenPort := freePort(t)
	write := func(name, content string) {
		t.Helper()
		// Write and rename, as editors do, so the control plane never reads
		// half a file.
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	endpoints := func(addr string) string {
		host, port, _ := net.SplitHostPort(addr)
		return fmt.Sprintf(`"@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
cluster_name: backend
endpoints:
- lb_endpoints:
  - endpoint: { address: { socket_address: { address: %s, port_value: %s } } }
`, host, port)
	}
	write("listener.yaml", fmt.Sprintf(`"@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: ingress
address: { socket_address: { address: 127.0.0.1, port_value: %d } }
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: ingress
      cluster: backend
`, listenPort))
	write("cluster.yaml", `"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: backend
type: EDS
connect_timeout: 1s
eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }
`)
	write("endpoints.yaml", endpoints(upA.Addr))

	cpPort := freePort(t)
	cpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cpPort))
	cp := startProcess(t, []string{"controlplane", "--resources", dir, "--listen", cpAddr, "--log-encoding", "json"}, procOpts{})
	cp.WaitLog(t, startTimeout, "control plane serving", func(l LogLine) bool { return strings.Contains(l.Msg(), "serving") })

	p := startSkiff(t, xdsBootstrap(cpAddr, true))
	addr := waitListener(t, p, "ingress")
	old := dial(t, addr)
	if err := echoRoundTrip(old, []byte("hello")); err != nil {
		t.Fatal(err)
	}

	// Edit the endpoints: new connections go to B, the open one stays on A.
	write("endpoints.yaml", endpoints(upB.Addr))
	deadline := time.Now().Add(20 * time.Second)
	for upB.accepted.Load() == 0 && time.Now().Before(deadline) {
		c := dial(t, addr)
		if err := echoRoundTrip(c, []byte("x")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	if upB.accepted.Load() == 0 {
		t.Fatal("the edited endpoints never took effect")
	}
	if err := echoRoundTrip(old, []byte("still on A")); err != nil {
		t.Fatal(err)
	}

	// An invalid file: reported with file and field, last good set still served.
	write("cluster.yaml", `"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: backend
type: EDS
connect_timeout: "one second"
`)
	bad := cp.WaitLog(t, 20*time.Second, "invalid file reported", func(l LogLine) bool { return l.Level() == "ERROR" })
	if !strings.Contains(bad.Fields["file"], "cluster.yaml") || !strings.Contains(bad.Fields["field"], "connect_timeout") {
		t.Fatalf("the invalid file is not named with its field: %v", bad.Fields)
	}
	c := dial(t, addr)
	if err := echoRoundTrip(c, []byte("after the bad file")); err != nil {
		t.Fatal(err)
	}
}
