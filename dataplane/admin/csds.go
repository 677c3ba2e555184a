package admin

import (
	"context"
	"errors"
	"io"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// csds implements Envoy's ClientStatusDiscoveryService for skiff's own xDS
// client, as gRPC's xDS client does: one ClientConfig, for the bootstrap's node.
type csds struct {
	statusv3.UnimplementedClientStatusDiscoveryServiceServer
	s *Server
}

func (c *csds) FetchClientStatus(_ context.Context, req *statusv3.ClientStatusRequest) (*statusv3.ClientStatusResponse, error) {
	return c.s.clientStatus(req)
}

func (c *csds) StreamClientStatus(stream grpc.BidiStreamingServer[statusv3.ClientStatusRequest, statusv3.ClientStatusResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp, err := c.s.clientStatus(req)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// clientStatus answers a ClientStatusRequest: the node and what the xDS client
// holds, secrets redacted.
func (s *Server) clientStatus(req *statusv3.ClientStatusRequest) (*statusv3.ClientStatusResponse, error) {
	if len(req.GetNodeMatchers()) > 0 {
		// skiff is one client with one node: there is nothing to select.
		return nil, status.Error(codes.InvalidArgument, "node_matchers are not supported: skiff answers for its own node only; send an empty ClientStatusRequest")
	}
	node := &corev3.Node{}
	if n := s.opts.Bootstrap.GetNode(); n != nil {
		node = proto.Clone(n).(*corev3.Node)
	}
	cfg := &statusv3.ClientConfig{Node: node}
	if x := s.xdsStatus(); x != nil {
		for _, g := range x.GenericXdsConfigs() {
			g = proto.Clone(g).(*statusv3.ClientConfig_GenericXdsConfig)
			if req.GetExcludeResourceContents() {
				g.XdsConfig = nil
			}
			Redact(g)
			cfg.GenericXdsConfigs = append(cfg.GenericXdsConfigs, g)
		}
	}
	return &statusv3.ClientStatusResponse{Config: []*statusv3.ClientConfig{cfg}}, nil
}
