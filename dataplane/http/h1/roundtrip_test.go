package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// streamEcho streams the request body back as the response body (chunked),
// in the sizes it reads, and the request trailers back as response trailers.
var streamEcho = handlerFunc(func(s http.ServerStream) {
	if err := s.WriteHeader(header(":status", "200"), false); err != nil {
		return
	}
	buf := make([]byte, 10000)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			s.EndWithTrailers(s.Trailers())
			return
		}
		if err != nil {
			s.Reset(http.ResetProtocolError)
			return
		}
	}
})

func TestRoundTripLargeBodies(t *testing.T) {
	conn, sconn := tcpPair(t)
	done := make(chan error, 1)
	go func() { done <- NewServerConn(trailerOptions()).Serve(context.Background(), sconn, streamEcho) }()
	cc := NewClientConn(conn, trailerOptions())
	defer func() { cc.Close(); <-done }()

	body := make([]byte, 1<<20+7)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range body {
		body[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct {
		name    string
		length  bool
		writeSz int
	}{
		{"content-length, large writes", true, 300 << 10},
		{"content-length, small writes", true, 1000},
		{"chunked, large writes", false, 100 << 10},
		{"chunked, small writes", false, 7 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := header(":method", "POST", ":authority", "a", ":path", "/echo")
			if tc.length {
				req.Add("content-length", itoa(len(body)))
			}
			s, err := cc.NewStream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if err := s.WriteHeader(req, false); err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte, 1)
			go func() { // the response, while the request is still being sent
				if _, err := s.ReadHeader(); err != nil {
					t.Error(err)
					got <- nil
					return
				}
				b, err := io.ReadAll(s)
				if err != nil {
					t.Error(err)
				}
				got <- b
			}()
			for p := body; len(p) > 0; {
				n := min(tc.writeSz, len(p))
				if _, err := s.Write(p[:n]); err != nil {
					t.Fatal(err)
				}
				p = p[n:]
			}
			var tr *http.Header
			if !tc.length {
				tr = header("x-checksum", "1234")
			}
			if err := s.EndWithTrailers(tr); err != nil {
				t.Fatal(err)
			}
			if b := <-got; !bytes.Equal(b, body) {
				t.Fatalf("echoed %d bytes, want the %d sent", len(b), len(body))
			}
			if !tc.length && s.Trailers().Value("x-checksum") != "1234" {
				t.Fatalf("trailers %q", s.Trailers().String())
			}
			if !cc.Available() {
				t.Fatal("connection not reusable")
			}
		})
	}
}

// TestClientReadHeaderFlushesHeldHead: a head held for its small body goes
// out when ReadHeader is called first, so an upstream that answers on the
// head alone is heard.
func TestClientReadHeaderFlushesHeldHead(t *testing.T) {
	cc := upstream(t, testOptions(), func(conn net.Conn, br *bufio.Reader) {
		for line, _ := br.ReadString('\n'); line != "\r\n" && line != ""; line, _ = br.ReadString('\n') {
		}
		io.WriteString(conn, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	})
	s, _ := cc.NewStream(context.Background())
	if err := s.WriteHeader(header(":method", "POST", ":authority", "a", ":path", "/", "content-length", "5"), false); err != nil {
		t.Fatal(err)
	}
	h, err := s.ReadHeader()
	if err != nil || h.Value(":status") != "413" {
		t.Fatalf("ReadHeader = %v, %v", h, err)
	}
}
