package router

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/internal/nettest"
)

// refusingH2 is an HTTP/2 upstream that refuses (RST_STREAM
// REFUSED_STREAM) the first stream it sees and answers 200 to the others;
// streams counts them.
func refusingH2(t *testing.T) (addr string, streams *atomic.Int32) {
	t.Helper()
	streams = new(atomic.Int32)
	serve := func(c net.Conn) {
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		_ = fr.WriteSettings()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
				}
			case *http2.HeadersFrame:
				if streams.Add(1) == 1 {
					_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
					continue
				}
				var b bytes.Buffer
				_ = hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: b.Bytes(), EndHeaders: true, EndStream: true})
			}
		}
	}
	return nettest.Serve(t, serve), streams
}

const h2Options = `typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } } }, `

// TestRefusedStreamFollowsRetryPolicy: an HTTP/2 REFUSED_STREAM is not
// retried without a retry policy that says so (Envoy's connection pool does
// not retry it); with refused-stream it is, counted as a retry.
func TestRefusedStreamFollowsRetryPolicy(t *testing.T) {
	for _, tc := range []struct {
		name, policy, status string
		streams, retries     int64
	}{
		{"no policy", "", "503", 1, 0},
		{"refused-stream", "retry_policy: { retry_on: refused-stream, num_retries: 1, retry_back_off: { base_interval: 0.001s } }", "200", 2, 1},
	} {
		addr, streams := refusingH2(t)
		f := newFixtureWith(t, `
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: c, `+tc.policy+` }
`, &routerv3.Router{}, clusterYAML("c", h2Options, addr))
		d := newDown("GET", "/", nil)
		e := f.serve(d)
		retries, _ := f.st.Value("cluster.c.upstream_rq_retry")
		if d.resp.Value(":status") != tc.status || int64(streams.Load()) != tc.streams || retries != tc.retries {
			t.Errorf("%s: %s after %d streams, upstream_rq_retry %d; want %s, %d, %d", tc.name,
				d.resp.Value(":status"), streams.Load(), retries, tc.status, tc.streams, tc.retries)
		}
		if tc.status == "503" && (e.Info.ResponseCodeDetails != "upstream_reset_before_response_started{remote_refused_stream_reset}" ||
			e.Info.ResponseFlags&http.FlagUpstreamRemoteReset == 0) {
			t.Errorf("%s: details %q flags %v", tc.name, e.Info.ResponseCodeDetails, e.Info.ResponseFlags)
		}
	}
}
