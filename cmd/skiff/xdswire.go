package main

import (
	"context"
	"fmt"
	"log/slog"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
	"github.com/skiffproxy/skiff/xds/client"
)

// xdsRun is a running xDS client.
type xdsRun struct {
	client *client.Client
	ready  chan struct{} // closed once the first round of configuration is in place
	done   chan struct{}
}

// checkDynamic validates the bootstrap's dynamic_resources and layered_runtime
// without connecting anywhere, and returns the runtime loader the data plane's
// filters and the xDS client's RTDS subscriptions share.
func checkDynamic(b *bootstrapv3.Bootstrap) (*runtime.Loader, error) {
	rt, err := runtime.New(b.GetLayeredRuntime())
	if err != nil {
		return nil, cfgerr.Field("layered_runtime", err)
	}
	if _, err := client.SourcesFromBootstrap(b); err != nil {
		return nil, err
	}
	return rt, nil
}

// startXDS starts the xDS client when the bootstrap has dynamic_resources,
// or static resources that take secrets by SDS; it returns nil otherwise.
// The client applies snap's static resources itself, together with what
// the control plane sends, and stops when ctx is done.
func startXDS(ctx context.Context, srv *dataplane.Server, snap *dataplane.Snapshot, b *bootstrapv3.Bootstrap, log *slog.Logger, initial *restartv1.XdsState) (*xdsRun, error) {
	srcs, err := client.SourcesFromBootstrap(b)
	if err != nil {
		return nil, err
	}
	if b.GetDynamicResources() == nil && !srcs.StaticSecrets {
		return nil, nil
	}
	node := proto.Clone(b.GetNode()).(*corev3.Node)
	if node == nil {
		node = &corev3.Node{}
	}
	node.UserAgentName = "skiff"
	node.UserAgentVersionType = &corev3.Node_UserAgentVersion{UserAgentVersion: version}
	node.ClientFeatures = append(node.ClientFeatures, "envoy.lb.does_not_support_overprovisioning", "xds.config.resource-ttl")
	x := &xdsRun{ready: make(chan struct{}), done: make(chan struct{})}
	c, err := client.New(client.Options{
		Node:      node,
		Logger:    log,
		Dataplane: srv,
		Static:    *snap,
		Runtime:   srv.Runtime(),
		Sources:   srcs,
		Stats:     srv.Stats(),
		Initial:   initial,
		Dial:      client.NewDialer(b, fmt.Sprintf("skiff/%s", version), srv.Clusters()),
		OnInitialized: func() {
			srv.MarkInitialized()
			close(x.ready)
		},
	})
	if err != nil {
		return nil, err
	}
	x.client = c
	go func() {
		defer close(x.done)
		c.Run(ctx)
	}()
	return x, nil
}
