// Package grpcecho is the gRPC service skiff's tests proxy: grpc-go's interop
// TestService, echoing payloads (unary and full-duplex streaming), answering
// with the status a request asks for, and sending headers and trailers the
// tests look for after they crossed skiff.
package grpcecho

import (
	"context"
	"io"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Service implements testpb.TestServiceServer:
//   - UnaryCall echoes the payload, copies the request's x-md metadata into
//     the x-echo-md response header, and sends the trailers x-unary-trailer: t
//     and x-bin-bin: 00 01 ff;
//   - FullDuplexCall echoes each message and ends with the trailer
//     x-stream-trailer: bye;
//   - a request whose response_status has a code ends the call with it.
type Service struct {
	testpb.UnimplementedTestServiceServer
}

// UnaryCall implements testpb.TestServiceServer.
func (Service) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md["x-md"]; len(v) > 0 {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-echo-md", v[0]))
	}
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-unary-trailer", "t", "x-bin-bin", "\x00\x01\xff"))
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// FullDuplexCall implements testpb.TestServiceServer.
func (Service) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	stream.SetTrailer(metadata.Pairs("x-stream-trailer", "bye"))
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if st := in.GetResponseStatus(); st.GetCode() != 0 {
			return status.Error(codes.Code(st.GetCode()), st.GetMessage())
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: in.GetPayload()}); err != nil {
			return err
		}
	}
}

// Start serves Service on a loopback port until the test ends and returns
// its address.
func Start(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, Service{})
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}
