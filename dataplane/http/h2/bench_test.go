package h2

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// benchHandler answers a small response without reading a body. It reuses
// its response headers, as the connection manager will, so that the
// benchmark counts the codec's allocations.
type benchHandler struct {
	body    []byte
	headers *sync.Pool
}

func (b benchHandler) ServeStream(s http.ServerStream) {
	h := b.headers.Get().(*http.Header)
	defer b.headers.Put(h)
	h.Reset()
	h.Add(http.Status, "200")
	h.Add("content-type", "text/plain")
	if s.WriteHeader(h, false) != nil {
		return
	}
	_, _ = s.Write(b.body)
	_ = s.End()
}

// BenchmarkRoundTrip is a small GET and its 128-byte response over one
// loopback connection, our client to our server (both sides' allocations
// count).
func BenchmarkRoundTrip(b *testing.B) {
	ts := startServer(b, ServerOptions{}, benchHandler{body: make([]byte, 128), headers: &sync.Pool{New: func() any { return new(http.Header) }}})
	cc := dialClient(b, ts.addr, ClientOptions{})
	req := reqHeader("GET", "/bench", "user-agent", "skiff-bench")
	b.Run("serial", func(b *testing.B) {
		buf := make([]byte, 512)
		b.ReportAllocs()
		for b.Loop() {
			benchOne(b, cc, req, buf)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 512)
			var h http.Header
			req.CopyTo(&h)
			for pb.Next() {
				benchOne(b, cc, &h, buf)
			}
		})
	})
}

func benchOne(b *testing.B, cc *ClientConn, req *http.Header, buf []byte) {
	cs, err := cc.NewStream(context.Background())
	for err != nil { // at the concurrency limit: wait for a slot
		cs, err = cc.NewStream(context.Background())
	}
	if err := cs.WriteHeader(req, true); err != nil {
		b.Fatal(err)
	}
	if _, err := cs.ReadHeader(); err != nil {
		b.Fatal(err)
	}
	for {
		_, err := cs.Read(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	_ = cs.(interface{ Close() error }).Close()
}
