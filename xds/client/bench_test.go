package client

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/skiffproxy/skiff/internal/xdstest"
	"github.com/skiffproxy/skiff/xds/resource"
)

// BenchmarkPush10kClusters measures a control-plane push of 10,000 EDS clusters
// of 10 endpoints each (and one listener): from the push until the client has
// ACKed CDS, EDS and applied it all to a real data plane, and the live heap the
// configuration costs per cluster. The goals: under 1 s and under
// 10 KiB per cluster.
//
//	go test -run '^$' -bench Push -benchtime 3x ./xds/client/
func BenchmarkPush10kClusters(b *testing.B) { benchPush(b, 10000, 10, 1) }

// BenchmarkPush1kListeners is the same for 1,000 listeners (each a TCP proxy
// on its own port-0 socket) over 10 clusters.
func BenchmarkPush1kListeners(b *testing.B) { benchPush(b, 10, 10, 1000) }

func benchPush(b *testing.B, clusters, endpointsPer, listeners int) {
	up := greeter(b, "x")
	var baseline runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&baseline)

	cp := xdstest.Start(b, "127.0.0.1:0", nodeID)
	f := newFixtureWith(b, cp, setup{})
	res := func(gen int) map[resourcev3.Type][]types.Resource {
		m := map[resourcev3.Type][]types.Resource{}
		for i := range clusters {
			name := fmt.Sprintf("cluster-%05d", i)
			m[resourcev3.ClusterType] = append(m[resourcev3.ClusterType], edsCluster(name))
			hosts := make([]netip.AddrPort, endpointsPer)
			for j := range hosts {
				hosts[j] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(gen), byte(i >> 8), byte(i)}), uint16(1000+j))
			}
			if i == 0 {
				hosts[0] = up
			}
			m[resourcev3.EndpointType] = append(m[resourcev3.EndpointType], assignment(name, hosts...))
		}
		for i := range listeners {
			m[resourcev3.ListenerType] = append(m[resourcev3.ListenerType], tcpListener(fmt.Sprintf("listener-%04d", i), loopback0, "cluster-00000"))
		}
		return m
	}
	// Each push changes every endpoint (the generation is in the addresses), so
	// every ClusterLoadAssignment is new to the client.
	b.ResetTimer()
	var total time.Duration
	for i := range b.N {
		b.StopTimer()
		m := res(i + 1)
		b.StartTimer()
		start := time.Now()
		v := cp.Push(m)
		waitApplied(b, f, v)
		total += time.Since(start)
	}
	b.StopTimer()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc) - float64(baseline.HeapAlloc)
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/push")
	if clusters >= listeners {
		b.ReportMetric(heap/1024/float64(clusters), "KiB/cluster")
	} else {
		b.ReportMetric(heap/1024/float64(listeners), "KiB/listener")
	}
	b.ReportMetric(heap/(1<<20), "MiB-heap")
	if n := len(f.dp.Clusters().Clusters()); n != clusters+1 {
		b.Fatalf("the data plane runs %d clusters, want %d", n, clusters+1)
	}
	hosts := 0
	for _, c := range f.dp.Clusters().Clusters() {
		hosts += len(c.Hosts())
	}
	if hosts < clusters*endpointsPer {
		b.Fatalf("the data plane has %d hosts, want %d", hosts, clusters*endpointsPer)
	}
}

// waitApplied waits until the client accepted version v of every type.
func waitApplied(b *testing.B, f *fixture, v string) {
	b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		vs := f.client.Versions()
		if vs[resource.ClusterType] == v && vs[resource.EndpointType] == v && vs[resource.ListenerType] == v {
			return
		}
		time.Sleep(time.Millisecond)
	}
	b.Fatalf("version %s not applied: %v", v, f.client.Versions())
}
