package listener

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/stats"
)

// httpListenerYAML is a listener whose HTTP connection manager answers every
// request itself; %s is its drain_type.
const httpListenerYAML = `
name: http
drain_type: %s
address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: h
      route_config:
        virtual_hosts:
        - name: v
          domains: ["*"]
          routes:
          - match: { prefix: / }
            direct_response: { status: 200, body: { inline_string: ok } }
      http_filters:
      - name: envoy.filters.http.router
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
`

// startHTTPListener builds and starts an HTTP listener with the given
// drain_type, whose connections see health as the server's health.
func startHTTPListener(t *testing.T, drainType string, health filter.ServerHealth) *Listener {
	t.Helper()
	reg, err := filters.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	pb := new(listenerv3.Listener)
	if err := protoyaml.Unmarshal([]byte(fmt.Sprintf(httpListenerYAML, drainType)), pb); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	st := stats.NewStore()
	fc := filter.Context{Logger: log, Stats: st, Clusters: upstream.NewManager(st), Buffers: bufpool.New(), Server: health}
	cfg, err := Build(pb, reg, fc, nil)
	if err != nil {
		t.Fatal(err)
	}
	serving := new(sync.WaitGroup)
	l, err := Start(cfg, Options{Logger: log, Stats: st, Sockets: NewSocketTable(log), ConnIDs: new(atomic.Uint64), Serving: serving})
	if err != nil {
		t.Fatal(err)
	}
	l.Accept()
	t.Cleanup(func() {
		l.StopAccepting()
		for _, ch := range AllChains(cfg) {
			ch.Conns().Close()
		}
		serving.Wait()
	})
	return l
}

// TestHealthCheckFailDrainsDefaultListeners: while the server fails its
// health checks (skiff admin healthcheck fail, Envoy's /healthcheck/fail),
// an HTTP connection of a listener with drain_type DEFAULT gets its next
// response with "connection: close"; one of a MODIFY_ONLY listener goes on.
func TestHealthCheckFailDrainsDefaultListeners(t *testing.T) {
	health := new(fakeHealth)
	for _, tc := range []struct {
		drainType string
		close     bool
	}{
		{"DEFAULT", true},
		{"MODIFY_ONLY", false},
	} {
		t.Run(tc.drainType, func(t *testing.T) {
			health.failed.Store(false)
			l := startHTTPListener(t, tc.drainType, health)
			c := dialListener(t, l)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			get := func() *http.Response {
				t.Helper()
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp
			}
			if resp := get(); resp.Close {
				t.Fatal("connection: close while the server is healthy")
			}
			health.failed.Store(true)
			if resp := get(); resp.Close != tc.close {
				t.Fatalf("health check failed: connection: close is %v, want %v", resp.Close, tc.close)
			}
		})
	}
}
