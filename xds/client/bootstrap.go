package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/xds/resource"
)

// maxRecvMsgSize bounds one xDS response. Istio's pushes exceed gRPC's default
// of 4 MiB on large meshes.
const maxRecvMsgSize = 512 << 20

// Dialer opens the gRPC connection to a control plane described by a
// GrpcService. The connection is lazy: failures to reach the server show up on
// the streams, which retry.
type Dialer func(svc *corev3.GrpcService) (*grpc.ClientConn, error)

// SourcesFromBootstrap reads the bootstrap's dynamic_resources and RTDS layers.
// Errors name the field.
func SourcesFromBootstrap(b *bootstrapv3.Bootstrap) (Sources, error) {
	var s Sources
	dr := b.GetDynamicResources()
	if err := cfgerr.OnlyFields(dr, "lds_config", "cds_config", "ads_config"); err != nil {
		return s, cfgerr.Field("dynamic_resources", err)
	}
	if ads := dr.GetAdsConfig(); ads != nil {
		if err := checkAPIConfigSource(ads); err != nil {
			return s, cfgerr.Field("dynamic_resources.ads_config", err)
		}
		s.ADS = ads
	}
	for _, c := range []struct {
		field string
		src   *corev3.ConfigSource
		dst   **corev3.ConfigSource
	}{
		{"lds_config", dr.GetLdsConfig(), &s.Listener},
		{"cds_config", dr.GetCdsConfig(), &s.Cluster},
	} {
		if c.src == nil {
			continue
		}
		if err := checkConfigSource(c.src, s.ADS != nil); err != nil {
			return s, cfgerr.Field("dynamic_resources."+c.field, err)
		}
		*c.dst = c.src
	}
	for i, r := range runtime.RTDSLayers(b.GetLayeredRuntime()) {
		if err := checkConfigSource(r.Source, s.ADS != nil); err != nil {
			return s, cfgerr.Field(fmt.Sprintf("layered_runtime.layers[%d].rtds_layer.rtds_config", i), err)
		}
		s.Runtime = append(s.Runtime, r)
	}
	// Static resources may take secrets by SDS: their config sources must
	// be usable from the bootstrap alone.
	check := func(path string, m proto.Message) error {
		for _, ref := range resource.SecretRefs(m) {
			s.StaticSecrets = true
			if err := checkConfigSource(ref.Source, s.ADS != nil); err != nil {
				return cfgerr.Field(fmt.Sprintf("%s: secret %q: sds_config", path, ref.Name), err)
			}
		}
		return nil
	}
	for i, l := range b.GetStaticResources().GetListeners() {
		if err := check(fmt.Sprintf("static_resources.listeners[%d]", i), l); err != nil {
			return s, err
		}
	}
	for i, c := range b.GetStaticResources().GetClusters() {
		if err := check(fmt.Sprintf("static_resources.clusters[%d]", i), c); err != nil {
			return s, err
		}
	}
	return s, nil
}

func checkConfigSource(src *corev3.ConfigSource, haveADS bool) error {
	if err := cfgerr.OnlyFields(src, "ads", "api_config_source", "self", "initial_fetch_timeout", "resource_api_version"); err != nil {
		return err
	}
	switch {
	case src.GetAds() != nil:
		if !haveADS {
			return cfgerr.Errorf("ads", "needs dynamic_resources.ads_config")
		}
	case src.GetApiConfigSource() != nil:
		return cfgerr.Field("api_config_source", checkAPIConfigSource(src.GetApiConfigSource()))
	case src.GetSelf() != nil:
		return cfgerr.Errorf("self", "a bootstrap config source cannot be self")
	default:
		return cfgerr.Errorf("", "needs ads or api_config_source (path config sources are not supported by skiff)")
	}
	return nil
}

func checkAPIConfigSource(api *corev3.ApiConfigSource) error {
	if err := cfgerr.OnlyFields(api, "api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"); err != nil {
		return err
	}
	switch api.GetApiType() {
	case corev3.ApiConfigSource_GRPC, corev3.ApiConfigSource_DELTA_GRPC,
		corev3.ApiConfigSource_AGGREGATED_GRPC, corev3.ApiConfigSource_AGGREGATED_DELTA_GRPC:
	default:
		return cfgerr.Errorf("api_type", "%s is not supported by skiff (GRPC and DELTA_GRPC are)", api.GetApiType())
	}
	if len(api.GetGrpcServices()) != 1 {
		return cfgerr.Errorf("grpc_services", "exactly one gRPC service is needed (got %d)", len(api.GetGrpcServices()))
	}
	gs := api.GetGrpcServices()[0]
	if err := cfgerr.OnlyFields(gs, "envoy_grpc", "google_grpc", "timeout", "initial_metadata"); err != nil {
		return cfgerr.Field("grpc_services[0]", err)
	}
	if g := gs.GetGoogleGrpc(); g != nil {
		if err := cfgerr.OnlyFields(g, "target_uri", "stat_prefix", "channel_credentials"); err != nil {
			return cfgerr.Field("grpc_services[0].google_grpc", err)
		}
		if g.GetTargetUri() == "" {
			return cfgerr.Errorf("grpc_services[0].google_grpc.target_uri", "must not be empty")
		}
	}
	return nil
}

// NewDialer returns the Dialer for a bootstrap: envoy_grpc names one of its
// static clusters, google_grpc gives a gRPC target URI, including unix:
// paths such as Istio's agent socket. With clusters (the dataplane's), an
// envoy_grpc service is reached as Envoy's gRPC clients reach it: through
// the cluster, whose load balancer picks the host, whose transport socket
// makes the connection TLS if it has one (TLS to the control plane, ALPN h2
// unless the context says otherwise), and whose stats count the connections
// (cluster.xds-grpc.upstream_cx_active, which Istio's dashboards watch),
// with the cluster's name as :authority. Without clusters, the cluster's
// first endpoint is dialed, in plaintext.
func NewDialer(b *bootstrapv3.Bootstrap, userAgent string, clusters *upstream.Manager) Dialer {
	return func(svc *corev3.GrpcService) (*grpc.ClientConn, error) {
		opts := []grpc.DialOption{
			grpc.WithUserAgent(userAgent),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		}
		var target string
		if name := svc.GetEnvoyGrpc().GetClusterName(); name != "" && clusters != nil {
			if bootstrapCluster(b, name) == nil {
				return nil, cfgerr.Errorf("envoy_grpc.cluster_name", "no static cluster named %q", name)
			}
			target = "passthrough:///" + name
			opts = append(opts,
				grpc.WithTransportCredentials(insecure.NewCredentials()), // TLS, if any, is the cluster's
				grpc.WithAuthority(name),
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
					cl := clusters.Get(name)
					if cl == nil {
						return nil, fmt.Errorf("cluster %q not found", name)
					}
					return cl.Open(ctx, upstream.ConnectOptions{ALPN: []string{"h2"}})
				}))
		} else {
			t, creds, err := resolveTarget(b, svc)
			if err != nil {
				return nil, err
			}
			target = t
			opts = append(opts, grpc.WithTransportCredentials(creds))
		}
		if md := svc.GetInitialMetadata(); len(md) > 0 {
			kv := make([]string, 0, 2*len(md))
			for _, h := range md {
				kv = append(kv, h.GetKey(), h.GetValue())
			}
			opts = append(opts, grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(metadata.AppendToOutgoingContext(ctx, kv...), desc, cc, method, o...)
			}))
		}
		return grpc.NewClient(target, opts...)
	}
}

// bootstrapCluster is the bootstrap's static cluster of that name, or nil.
func bootstrapCluster(b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

// resolveTarget finds the gRPC target of a service dialed directly, not
// through the dataplane's cluster, and the credentials to use: a
// google_grpc service's channel_credentials, plaintext for an envoy_grpc
// one (its TLS is the cluster's transport socket, through the cluster).
func resolveTarget(b *bootstrapv3.Bootstrap, svc *corev3.GrpcService) (string, credentials.TransportCredentials, error) {
	if g := svc.GetGoogleGrpc(); g != nil {
		switch cc := g.GetChannelCredentials().GetCredentialSpecifier().(type) {
		case nil, *corev3.GrpcService_GoogleGrpc_ChannelCredentials_LocalCredentials:
			return g.GetTargetUri(), insecure.NewCredentials(), nil
		case *corev3.GrpcService_GoogleGrpc_ChannelCredentials_SslCredentials:
			cfg, err := tlscontext.ChannelTLS(cc.SslCredentials)
			if err != nil {
				return "", nil, cfgerr.Field("google_grpc.channel_credentials.ssl_credentials", err)
			}
			return g.GetTargetUri(), credentials.NewTLS(cfg), nil
		}
		return "", nil, cfgerr.Errorf("google_grpc.channel_credentials.google_default", "not supported by skiff (ssl_credentials and local_credentials are)")
	}
	name := svc.GetEnvoyGrpc().GetClusterName()
	if name == "" {
		return "", nil, errors.New("needs envoy_grpc.cluster_name or google_grpc.target_uri")
	}
	if c := bootstrapCluster(b, name); c != nil {
		if c.GetTransportSocket() != nil {
			return "", nil, cfgerr.Errorf("envoy_grpc.cluster_name", "cluster %q has a transport_socket: TLS needs the dataplane's cluster", name)
		}
		// Without the dataplane's cluster: its first endpoint.
		var first *corev3.Address
		for _, lle := range c.GetLoadAssignment().GetEndpoints() {
			if lbes := lle.GetLbEndpoints(); len(lbes) > 0 && first == nil {
				first = lbes[0].GetEndpoint().GetAddress()
			}
		}
		if first == nil {
			return "", nil, cfgerr.Errorf("envoy_grpc.cluster_name", "static cluster %q has no endpoint to dial", name)
		}
		if p := first.GetPipe(); p != nil {
			return "unix:" + p.GetPath(), insecure.NewCredentials(), nil
		}
		sa := first.GetSocketAddress()
		if ip, err := netip.ParseAddr(sa.GetAddress()); err == nil {
			return "passthrough:///" + netip.AddrPortFrom(ip, uint16(sa.GetPortValue())).String(), insecure.NewCredentials(), nil
		}
		return "dns:///" + fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()), insecure.NewCredentials(), nil
	}
	return "", nil, cfgerr.Errorf("envoy_grpc.cluster_name", "no static cluster named %q", name)
}
