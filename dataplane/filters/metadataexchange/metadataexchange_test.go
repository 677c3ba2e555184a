package metadataexchange

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiometa"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/istiotypes"
	"github.com/skiffproxy/skiff/internal/stats"
)

func newFilter(t *testing.T, nodeID string) *Filter {
	t.Helper()
	m := istiotypes.New(istiotypes.MetadataExchange)
	r := m.ProtoReflect()
	r.Set(r.Descriptor().Fields().ByName("protocol"), protoreflect.ValueOfString("istio-peer-exchange"))
	md, _ := structpb.NewStruct(map[string]any{"NAME": nodeID, "NAMESPACE": "default", "LABELS": map[string]any{"app": nodeID}})
	f, err := create(m, &filter.Context{Stats: stats.NewStore(), Node: &corev3.Node{Id: nodeID, Metadata: md}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// tcpPair is two ends of a loopback TCP connection (net.Pipe would not do:
// both ends of the exchange write before they read).
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if b, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	a.SetDeadline(time.Now().Add(10 * time.Second))
	b.SetDeadline(time.Now().Add(10 * time.Second))
	return a, b
}

// readFrame reads an exchange frame as istio-proxy does.
func readFrame(c net.Conn) (*structpb.Struct, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	if m := binary.BigEndian.Uint32(hdr[:4]); m != 0x3D230467 {
		return nil, fmt.Errorf("magic %#x", m)
	}
	data := make([]byte, binary.BigEndian.Uint32(hdr[4:]))
	if _, err := io.ReadFull(c, data); err != nil {
		return nil, err
	}
	var a anypb.Any
	var s structpb.Struct
	if err := proto.Unmarshal(data, &a); err != nil || a.GetTypeUrl() != "type.googleapis.com/google.protobuf.Struct" || a.UnmarshalTo(&s) != nil {
		return nil, fmt.Errorf("the frame's data is not an Any of a Struct: %v (%s)", err, a.GetTypeUrl())
	}
	return &s, nil
}

// TestExchange: on a connection that negotiated istio-peer-exchange both
// ends write their frame (header, Any of the Struct of the workload
// metadata and id) and read the peer's; the stream goes on intact after it.
// skiff's two ends talk to each other, and to a peer written as
// istio-proxy's.
func TestExchange(t *testing.T) {
	client, server := newFilter(t, "sidecar~10.0.0.1~a.default"), newFilter(t, "sidecar~10.0.0.2~b.default")
	a, b := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		err := server.handle(b, "istio-peer-exchange")
		if err == nil {
			_, err = b.Write([]byte("from the server"))
		}
		done <- err
	}()
	if err := client.handle(a, "istio-peer-exchange"); err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}
	buf := make([]byte, len("from the server"))
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "from the server" {
		t.Fatalf("the stream after the exchange: %q, %v", buf, err)
	}

	// Against an istio-proxy written by hand: it sees skiff's frame.
	a, b = tcpPair(t)
	seen := make(chan *structpb.Struct, 1)
	go func() {
		s, err := readFrame(b)
		if err != nil {
			b.Close()
			return
		}
		seen <- s
		b.Write(client.frame) // any valid frame will do
		b.Write([]byte("stream"))
	}()
	if err := client.handle(a, "istio-peer-exchange"); err != nil {
		t.Fatal(err)
	}
	s := <-seen
	if s.GetFields()[istiometa.KeyID].GetStringValue() != "sidecar~10.0.0.1~a.default" ||
		s.GetFields()[istiometa.KeyMetadata].GetStructValue().GetFields()["NAME"].GetStringValue() != "sidecar~10.0.0.1~a.default" {
		t.Errorf("skiff's metadata: %v", s)
	}
	buf = make([]byte, len("stream"))
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "stream" {
		t.Fatalf("after the exchange: %q, %v", buf, err)
	}
	if v := client.stats.MetadataAdded.Value(); v != 2 {
		t.Errorf("metadata_added %d, want 2", v)
	}
}

// TestExchangeFailures: a connection without the protocol passes
// untouched; a peer that sends no initial header (no exchange filter)
// fails the connection, counted.
func TestExchangeFailures(t *testing.T) {
	f := newFilter(t, "x")
	for _, alpn := range []string{"", "istio-http/1.1", "istio"} {
		if err := f.handle(nil, alpn); err != nil {
			t.Errorf("ALPN %q: %v", alpn, err)
		}
	}
	if f.stats.ALPNNotFound.Value() != 3 {
		t.Errorf("alpn_protocol_not_found %d, want 3", f.stats.ALPNNotFound.Value())
	}
	a, b := tcpPair(t)
	go b.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if err := f.handle(a, "istio-peer-exchange"); !errors.Is(err, ErrExchange) {
		t.Errorf("a peer without the exchange: %v, want ErrExchange", err)
	}
	if f.stats.ALPNFound.Value() != 1 || f.stats.InitialHeaderNotFound.Value() != 1 {
		t.Errorf("alpn_protocol_found %d, initial_header_not_found %d; want 1 and 1", f.stats.ALPNFound.Value(), f.stats.InitialHeaderNotFound.Value())
	}
}
