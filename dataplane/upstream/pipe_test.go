package upstream

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

// TestPipeEndpoint: an endpoint with a pipe address is a host reached over
// its unix socket, named by its path, beside a TCP one; a pipe without a
// path is a config error.
func TestPipeEndpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello")
			c.Close()
		}
	}()
	var pb clusterv3.Cluster
	if err := protoyaml.Unmarshal([]byte(`
name: c
type: STATIC
load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [
  { endpoint: { address: { pipe: { path: "`+path+`" } } } },
  { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } } }] }] }
`), &pb); err != nil {
		t.Fatal(err)
	}
	cfg, err := NewConfig(&pb)
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(stats.NewStore())
	m.Set([]Assignment{Static(cfg)})
	hosts := m.Get("c").Hosts()
	if len(hosts) != 2 || hosts[0].Pipe != path || hosts[0].String() != path || hosts[1].String() != "127.0.0.1:1" {
		t.Fatalf("hosts %v", hosts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := m.Get("c").Connect(ctx, hosts[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, err := io.ReadAll(c); err != nil || string(b) != "hello" {
		t.Fatalf("over the unix socket: %q, %v", b, err)
	}

	pb.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetPipe().Path = ""
	if _, err := NewConfig(&pb); !strings.HasSuffix(cfgerr.PathOf(err), "endpoint.address.pipe.path") {
		t.Errorf("a pipe without a path: %v", err)
	}
}
