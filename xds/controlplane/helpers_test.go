package controlplane

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait is how long a test waits for something that should happen.
const wait = 10 * time.Second

// logBuffer collects log lines for a test to look at.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the log lines containing every one of parts.
func (b *logBuffer) lines(parts ...string) []string {
	var out []string
	for line := range strings.Lines(b.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// waitLog waits for a log line containing every one of parts and returns it.
func (b *logBuffer) waitLog(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if l := b.lines(parts...); len(l) > 0 {
			return l[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line with %q in:\n%s", parts, b.String())
	return ""
}

func newLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	b := new(logBuffer)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", b.String())
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// testServer is a Server serving on loopback for the length of a test.
type testServer struct {
	*Server
	addr string
	logs *logBuffer
	conn *grpc.ClientConn
}

// serve starts a server for dir ("" for none) on a TCP loopback port.
func serve(t *testing.T, dir string) *testServer {
	t.Helper()
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, dir, l, l.Addr().String())
}

func serveOn(t *testing.T, dir string, l net.Listener, target string) *testServer {
	t.Helper()
	log, logs := newLogger(t)
	s, err := New(Options{Dir: dir, Logger: log})
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &testServer{Server: s, addr: l.Addr().String(), logs: logs, conn: conn}
}

// bidi is the client side of an xDS stream, SotW or delta.
type bidi[Req, Resp any] interface {
	Send(Req) error
	Recv() (Resp, error)
}

// client reads an xDS stream in the background so that a test can wait for a
// response with a timeout, or check that none comes.
type client[Req, Resp any] struct {
	t      *testing.T
	stream bidi[Req, Resp]
	resps  chan Resp
}

// open starts a stream with newStream, which is given a context that ends with the test.
func open[Req, Resp any, S bidi[Req, Resp]](t *testing.T, newStream func(context.Context, ...grpc.CallOption) (S, error)) *client[Req, Resp] {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := newStream(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &client[Req, Resp]{t: t, stream: s, resps: make(chan Resp, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.resps)
		for {
			r, err := s.Recv()
			if err != nil {
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c
}

func (c *client[Req, Resp]) send(req Req) {
	c.t.Helper()
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client[Req, Resp]) recv() Resp {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatal("stream ended")
		}
		return r
	case <-time.After(wait):
		c.t.Fatal("no response")
	}
	panic("unreachable")
}

// none checks that nothing arrives for d.
func (c *client[Req, Resp]) none(d time.Duration) {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if ok {
			c.t.Fatalf("unexpected response: %v", r)
		}
	case <-time.After(d):
	}
}

type sotwClient = client[*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse]
type deltaClient = client[*discoveryv3.DeltaDiscoveryRequest, *discoveryv3.DeltaDiscoveryResponse]

func ads(t *testing.T, conn *grpc.ClientConn) *sotwClient {
	return open[*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse](t, discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources)
}

func deltaADS(t *testing.T, conn *grpc.ClientConn) *deltaClient {
	return open[*discoveryv3.DeltaDiscoveryRequest, *discoveryv3.DeltaDiscoveryResponse](t, discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources)
}

var testNode = &corev3.Node{Id: "test-node", Cluster: "test"}

// req is a SotW request: a first subscription when resp is nil, else the ACK of resp.
func req(typeURL string, resp *discoveryv3.DiscoveryResponse, names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{
		Node: testNode, TypeUrl: typeURL, ResourceNames: names,
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(),
	}
}

// unpackAll decodes resources of type T, by name.
func unpackAll[T proto.Message](t *testing.T, anys []*anypb.Any) map[string]T {
	t.Helper()
	out := make(map[string]T)
	for _, a := range anys {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		v, ok := m.(T)
		if !ok {
			t.Fatalf("got a %T", m)
		}
		out[nameOf(m)] = v
	}
	return out
}

func nameOf(m proto.Message) string {
	if n, ok := m.(interface{ GetClusterName() string }); ok && n.GetClusterName() != "" {
		return n.GetClusterName()
	}
	return m.(interface{ GetName() string }).GetName()
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// writeFile writes name below dir the way editors save: a temporary file renamed
// over the old one.
func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(name))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// writeFiles makes a directory holding files (name -> content).
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		writeFile(t, dir, name, content)
	}
	return dir
}
