package hcm_test

import (
	"io"
	nethttp "net/http"
	"testing"
)

// TestUseDownstreamProtocol: a cluster with use_downstream_protocol_config
// (istiod's passthrough clusters) sends each request upstream in the
// protocol it came in: HTTP/1.1 as HTTP/1.1, HTTP/2 as HTTP/2.
func TestUseDownstreamProtocol(t *testing.T) {
	up := upstreamServer(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, r.Proto)
	}))
	e := newEnv(t, hcmYAML("up", ""), clusterWith(t, "up", `
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    use_downstream_protocol_config: { http_protocol_options: {}, http2_protocol_options: {} }
`, up))
	for _, tc := range []struct {
		client *nethttp.Client
		want   string
	}{{h1Client(t), "HTTP/1.1"}, {h2cClient(t), "HTTP/2.0"}} {
		resp, body := get(t, tc.client, "http://"+e.addr+"/")
		if resp.StatusCode != 200 || body != tc.want {
			t.Errorf("%s downstream: %d %q, want the upstream to see %s", resp.Proto, resp.StatusCode, body, tc.want)
		}
	}
}
