package dataplane

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

// refusedWithin dials addr until the connection is refused, for up to timeout.
func refusedWithin(t *testing.T, addr netip.AddrPort, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		if err == nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections after %v", addr, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGenerationAndApplied(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, time.Second)
	if s.Generation() != 0 {
		t.Fatalf("Generation = %d before any Apply, want 0", s.Generation())
	}
	select {
	case <-s.Applied():
		t.Fatal("Applied is closed before any Apply")
	default:
	}
	bad := &Snapshot{Listeners: []*listenerv3.Listener{tcpListener("", loopback0, "a")}}
	if err := s.Apply(bad); err == nil {
		t.Fatal("Apply of a listener without a name succeeded")
	}
	if s.Generation() != 0 {
		t.Fatalf("Generation = %d after a failed Apply, want 0", s.Generation())
	}
	snap := &Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: []*clusterv3.Cluster{staticCluster("a", a)}}
	for want := uint64(1); want <= 2; want++ {
		if err := s.Apply(snap); err != nil {
			t.Fatal(err)
		}
		if s.Generation() != want {
			t.Errorf("Generation = %d, want %d", s.Generation(), want)
		}
	}
	select {
	case <-s.Applied():
	default:
		t.Fatal("Applied is not closed after Apply")
	}
}

func TestDrainListeners(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, 10*time.Second)
	clusters := []*clusterv3.Cluster{staticCluster("a", a)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "l")
	c, r, _ := dialGreeting(t, addr)

	if at := s.DrainListeners(false, false); time.Since(at) > time.Second || time.Until(at) > 0 {
		t.Errorf("DrainListeners(false) returned %v, want about now", at)
	}
	refusedWithin(t, addr, 5*time.Second)
	echoOnce(t, c, r, "accepted before the drain, still served")

	// A listener added after the drain is not started.
	more := []*listenerv3.Listener{tcpListener("l", loopback0, "a"), tcpListener("m", loopback0, "a")}
	if err := s.Apply(&Snapshot{Listeners: more, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	for _, l := range s.Listeners() {
		if l.Name == "m" {
			t.Errorf("listener m was started after DrainListeners: %v", l.Bound)
		}
	}
}

// TestDrainListenersInboundOnly: as Envoy's ?inboundonly, only the
// INBOUND listener stops accepting (an outbound and an unspecified one go
// on), a listener added afterwards is started unless it is inbound, and a
// drain of every listener then widens it.
func TestDrainListenersInboundOnly(t *testing.T) {
	a := namedEcho(t, "a")
	s, _ := newTestServer(t, 10*time.Second)
	clusters := []*clusterv3.Cluster{staticCluster("a", a)}
	withDirection := func(name string, d corev3.TrafficDirection) *listenerv3.Listener {
		l := tcpListener(name, loopback0, "a")
		l.TrafficDirection = d
		return l
	}
	listeners := []*listenerv3.Listener{
		withDirection("in", corev3.TrafficDirection_INBOUND),
		withDirection("out", corev3.TrafficDirection_OUTBOUND),
		withDirection("unspecified", corev3.TrafficDirection_UNSPECIFIED),
	}
	if err := s.Apply(&Snapshot{Listeners: listeners, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	in, out, unspecified := boundAddr(t, s, "in"), boundAddr(t, s, "out"), boundAddr(t, s, "unspecified")
	s.DrainListeners(false, true)
	refusedWithin(t, in, 5*time.Second)
	dialGreeting(t, out)
	dialGreeting(t, unspecified)

	more := append(listeners, withDirection("in2", corev3.TrafficDirection_INBOUND), withDirection("out2", corev3.TrafficDirection_OUTBOUND))
	if err := s.Apply(&Snapshot{Listeners: more, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	started := map[string]bool{}
	for _, l := range s.Listeners() {
		started[l.Name] = len(l.Bound) > 0
	}
	if started["in2"] || !started["out2"] {
		t.Errorf("after an inbound-only drain: in2 started %t, out2 started %t; want false, true", started["in2"], started["out2"])
	}
	dialGreeting(t, boundAddr(t, s, "out2"))

	s.DrainListeners(false, false)
	refusedWithin(t, out, 5*time.Second)
	refusedWithin(t, unspecified, 5*time.Second)
}

func TestDrainListenersGraceful(t *testing.T) {
	a := namedEcho(t, "a")
	const drain = time.Second
	s, _ := newTestServer(t, drain)
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{tcpListener("l", loopback0, "a")}, Clusters: []*clusterv3.Cluster{staticCluster("a", a)}}); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, s, "l")
	at := s.DrainListeners(true, false)
	if d := time.Until(at); d <= 0 || d > drain {
		t.Errorf("DrainListeners(true) stops accepting in %v, want within the drain time %v", d, drain)
	}
	// Still accepting during the drain time...
	dialGreeting(t, addr)
	// ... and not after it.
	refusedWithin(t, addr, 5*time.Second)
	if time.Now().Before(at) {
		t.Errorf("listeners stopped accepting before %v", at)
	}
}
