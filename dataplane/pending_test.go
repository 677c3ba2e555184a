package dataplane

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/internal/stats"
)

// TestPendingListenerFilterConns: a connection still in its listener
// filters (a client that sends nothing, listener_filters_timeout 0s: no
// timeout) ends with its listener's drain once the listener is removed, and
// at the end of a shutdown's drain. Before, it belonged to nothing that
// ends connections: it held the removed listener for good, and Shutdown
// waited for it past its context, for ever.
func TestPendingListenerFilterConns(t *testing.T) {
	a := namedEcho(t, "a")
	s, st := newTestServer(t, 200*time.Millisecond)
	silent := func(name string) *listenerv3.Listener {
		l := inspectedListener(t, name, "a")
		l.ListenerFiltersTimeout = durationpb.New(0)
		return l
	}
	clusters := []*clusterv3.Cluster{staticCluster("a", a)}
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{silent("gone"), silent("kept")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	dialPending := func(name string) net.Conn {
		t.Helper()
		c := dialPending(t, s, st, name)
		t.Cleanup(func() { c.Close() })
		return c
	}
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err := c.Read(b[:])
		return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	}
	gone, kept := dialPending("gone"), dialPending("kept")
	if err := s.Apply(&Snapshot{Listeners: []*listenerv3.Listener{silent("kept")}, Clusters: clusters}); err != nil {
		t.Fatal(err)
	}
	if !closed(gone) {
		t.Error("the removed listener's pending connection was still open 5 s after its 200 ms drain")
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		gone.Close() // let them end
		kept.Close()
		<-done
		t.Fatal("Shutdown with a 300 ms context waited more than 10 s for a connection in its listener filters")
	}
	if !closed(kept) {
		t.Error("the pending connection was still open after Shutdown")
	}
}

// inspectedListener is a tcp_proxy listener to cluster whose tls_inspector
// listener filter waits for a client's first bytes; its stat prefix is its
// name.
func inspectedListener(t *testing.T, name, cluster string) *listenerv3.Listener {
	t.Helper()
	inspector, err := anypb.New(&tlsinspectorv3.TlsInspector{})
	if err != nil {
		t.Fatal(err)
	}
	l := tcpListener(name, loopback0, cluster)
	l.StatPrefix = name
	l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: inspector}}}
	return l
}

// dialPending connects to listener name of s and waits until the connection
// is in its listener filters (downstream_pre_cx_active 1). The caller closes
// it.
func dialPending(t *testing.T, s *Server, st *stats.Store, name string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", boundAddr(t, s, name).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if v, _ := st.Value("listener." + name + ".downstream_pre_cx_active"); v == 1 {
			return c // its listener filter waits for the first bytes
		}
		if time.Now().After(deadline) {
			c.Close()
			t.Fatalf("listener %s: no connection in its listener filters", name)
		}
	}
}
