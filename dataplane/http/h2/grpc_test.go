package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/grpcecho"
)

// testService echoes payloads, fails with the status a request asks for, and
// sets headers and trailers.
func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// proxy forwards each downstream stream upstream over one ClientConn,
// streaming both ways, with trailers, as the router will.
type proxy struct{ cc *ClientConn }

type ender interface{ EndedWithHeader() bool }

func (p proxy) ServeStream(s http.ServerStream) {
	cs, err := p.cc.NewStream(s.Context())
	if err != nil {
		s.Reset(http.ResetRefusedStream)
		return
	}
	reqEnded := s.(ender).EndedWithHeader()
	if err := cs.WriteHeader(s.Header(), reqEnded); err != nil {
		s.Reset(http.ResetInternalError)
		return
	}
	var wg sync.WaitGroup
	if !reqEnded {
		wg.Go(func() {
			if err := pump(cs, s); err != nil {
				cs.Reset(http.ResetCancel)
				return
			}
			_ = cs.EndWithTrailers(s.Trailers())
		})
	}
	defer wg.Wait()
	rh, err := cs.ReadHeader()
	if err != nil {
		s.Reset(http.ResetInternalError)
		return
	}
	respEnded := cs.(ender).EndedWithHeader() // gRPC's trailers-only responses
	if err := s.WriteHeader(rh, respEnded); err != nil || respEnded {
		s.Reset(http.ResetNoError) // stop the request side if it still runs
		return
	}
	if err := pump(s, cs); err != nil {
		s.Reset(http.ResetInternalError)
		cs.Reset(http.ResetCancel)
		return
	}
	_ = s.EndWithTrailers(cs.Trailers())
	s.Reset(http.ResetNoError)
}

// pump copies a body.
func pump(dst io.Writer, src io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// TestGRPCThroughProxy: a grpc-go client -> our server codec -> a handler
// forwarding each stream through our client codec -> a grpc-go server.
func TestGRPCThroughProxy(t *testing.T) {
	// The backend.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, grpcecho.Service{})
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	defer func() { gs.Stop(); <-served }()

	// The proxy: small windows, to make flow control work across it.
	up := dialClient(t, lis.Addr().String(), ClientOptions{InitialStreamWindowSize: MinWindowSize, InitialConnectionWindowSize: MinWindowSize})
	ts := startServer(t, ServerOptions{InitialStreamWindowSize: MinWindowSize, InitialConnectionWindowSize: MinWindowSize}, proxy{cc: up})

	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("unary", func(t *testing.T) {
		var hdr, trl metadata.MD
		body := bytes.Repeat([]byte("grpc"), 1<<18) // 1 MiB through 64 KiB windows
		ctx := metadata.AppendToOutgoingContext(ctx, "x-md", "m")
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}, grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), body) {
			t.Errorf("payload of %d bytes came back as %d", len(body), len(resp.GetPayload().GetBody()))
		}
		if first(hdr["x-echo-md"]) != "m" || first(trl["x-unary-trailer"]) != "t" || first(trl["x-bin-bin"]) != "\x00\x01\xff" {
			t.Errorf("header %v trailer %v", hdr, trl)
		}
	})

	t.Run("unary error status (trailers-only)", func(t *testing.T) {
		var trl metadata.MD
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "no such thing: ünïcode"}}, grpc.Trailer(&trl))
		st, _ := status.FromError(err)
		if st.Code() != codes.NotFound || st.Message() != "no such thing: ünïcode" {
			t.Errorf("status %v", err)
		}
		if first(trl["x-unary-trailer"]) != "t" {
			t.Errorf("trailer %v", trl)
		}
	})

	t.Run("bidirectional streaming", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			msg := bytes.Repeat([]byte{byte(i)}, 1000*i)
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: msg}}); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(resp.GetPayload().GetBody(), msg) {
				t.Fatalf("message %d: %d bytes back", i, len(resp.GetPayload().GetBody()))
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
		if first(stream.Trailer()["x-stream-trailer"]) != "bye" {
			t.Errorf("trailer %v", stream.Trailer())
		}
	})

	t.Run("bidirectional streaming error status", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("one")}})
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&testpb.StreamingOutputCallRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.ResourceExhausted), Message: "enough"}})
		_, err = stream.Recv()
		if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || st.Message() != "enough" {
			t.Fatalf("status %v", err)
		}
		if first(stream.Trailer()["x-stream-trailer"]) != "bye" {
			t.Errorf("trailer %v", stream.Trailer())
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				body := bytes.Repeat([]byte{byte(i)}, 100*i)
				resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(resp.GetPayload().GetBody(), body) {
					t.Errorf("call %d: wrong payload", i)
				}
			})
		}
		wg.Wait()
	})

	t.Run("client cancels", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		stream, err := client.FullDuplexCall(cctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("x")}})
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		ccancel()
		if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
			t.Fatalf("after cancel: %v", err)
		}
		// The proxy's upstream connection is still good.
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	})
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("timed out")
	}
}
