package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

// levelTrace is below Debug: what go-control-plane says about every watch and
// response.
const levelTrace = slog.LevelDebug - 4

// xdsLogger is go-control-plane's log.Logger on a slog.Logger. Its Infof lines
// are per watch and per request, so they go to Debug; its Debugf lines go below.
type xdsLogger struct{ log *slog.Logger }

func (l xdsLogger) logf(level slog.Level, format string, args []any) {
	if l.log.Enabled(context.Background(), level) {
		l.log.Log(context.Background(), level, fmt.Sprintf(format, args...))
	}
}

func (l xdsLogger) Debugf(format string, args ...any) { l.logf(levelTrace, format, args) }
func (l xdsLogger) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args) }
func (l xdsLogger) Warnf(format string, args ...any)  { l.logf(slog.LevelWarn, format, args) }
func (l xdsLogger) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args) }

// streamLog logs the life of xDS streams: a client's arrival (at its first
// request, which carries the node) and departure, and every update a client
// rejects (NACKs), with the reason the client gave.
type streamLog struct {
	log *slog.Logger

	mu      sync.Mutex
	streams map[int64]string // stream ID -> the service it is for, until its first request is logged
}

func newStreamLog(log *slog.Logger) *streamLog {
	return &streamLog{log: log, streams: make(map[int64]string)}
}

func (c *streamLog) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, typeURL string) error {
			c.open(id, typeURL)
			return nil
		},
		DeltaStreamOpenFunc: func(_ context.Context, id int64, typeURL string) error {
			c.open(id, typeURL)
			return nil
		},
		StreamClosedFunc:      c.closed,
		DeltaStreamClosedFunc: c.closed,
		StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
			c.request(id, req.GetNode(), false)
			if req.GetErrorDetail() != nil {
				c.log.Warn("client rejected an update (NACK)", "node", req.GetNode().GetId(), "stream", id,
					"type", shortName(req.GetTypeUrl()), "nonce", req.GetResponseNonce(),
					"still_at_version", req.GetVersionInfo(), "reason", req.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			c.request(id, req.GetNode(), true)
			if req.GetErrorDetail() != nil {
				c.log.Warn("client rejected an update (NACK)", "node", req.GetNode().GetId(), "stream", id,
					"type", shortName(req.GetTypeUrl()), "nonce", req.GetResponseNonce(), "reason", req.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			c.log.Debug("sent", "stream", id, "type", shortName(resp.GetTypeUrl()), "version", resp.GetVersionInfo(),
				"resources", len(resp.GetResources()), "nonce", resp.GetNonce())
		},
		StreamDeltaResponseFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			c.log.Debug("sent", "stream", id, "type", shortName(resp.GetTypeUrl()), "version", resp.GetSystemVersionInfo(),
				"resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()), "nonce", resp.GetNonce())
		},
	}
}

func (c *streamLog) open(id int64, typeURL string) {
	service := "ADS"
	if typeURL != "" {
		service = shortName(typeURL)
	}
	c.mu.Lock()
	c.streams[id] = service
	c.mu.Unlock()
}

func (c *streamLog) request(id int64, node *corev3.Node, delta bool) {
	c.mu.Lock()
	service := c.streams[id]
	if service != "" {
		c.streams[id] = "" // logged
	}
	c.mu.Unlock()
	if service != "" {
		c.log.Info("client connected", "node", node.GetId(), "cluster", node.GetCluster(), "stream", id, "service", service, "delta", delta)
	}
}

func (c *streamLog) closed(id int64, node *corev3.Node) {
	c.mu.Lock()
	delete(c.streams, id)
	c.mu.Unlock()
	c.log.Info("client disconnected", "node", node.GetId(), "stream", id)
}
