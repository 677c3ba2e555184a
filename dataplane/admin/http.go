package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/grpc/status"

	"github.com/skiffproxy/skiff/internal/stats"
	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// httpHelp is the index page of the HTTP side.
const httpHelp = `skiff admin: the HTTP side of the admin API (the rest is gRPC: skiff admin, grpcurl, grpcdebug)

  /ready              200 LIVE when serving, 503 and the state otherwise
  /stats              counters and gauges, "name: value" lines; ?filter=RE2 ?usedonly ?format=json|prometheus
  /stats/prometheus   the same in Prometheus' text format, named as Envoy names them
  /config_dump        the running configuration as Envoy's JSON, secrets redacted; ?resource= ?name_regex= ?include_eds
  /clusters           clusters and hosts as Envoy's cluster::host::stat::value lines; ?format=json
  /listeners          listeners as Envoy's name::address lines; ?format=json
  /server_info        version, state, uptime and node as Envoy's JSON

POST, over the admin unix socket (or TCP with --admin-tcp-mutations), as Envoy's:
  /drain_listeners    ?graceful ?inboundonly
  /healthcheck/fail   /healthcheck/ok
  /logging            ?level=
  /reopen_logs
  /quitquitquit       exit at once, connections closed (SIGTERM drains first)
`

// httpHandler serves Envoy's HTTP admin endpoints: the read-only ones (GET),
// for scrapers, load balancer health checks and istioctl, and the POST ones
// that change the server under the gRPC calls' guard (see httpMutationAt).
func (s *Server) httpHandler(w http.ResponseWriter, r *http.Request) {
	if m, ok := httpMutationAt(r.URL.Path); ok {
		s.serveMutation(w, r, m)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed: this endpoint only reads (GET)", http.StatusMethodNotAllowed)
		return
	}
	switch r.URL.Path {
	case "/":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, httpHelp)
	case "/ready":
		s.serveReady(w)
	case "/stats":
		format := r.URL.Query().Get("format")
		switch format {
		case "", "json", "prometheus":
		default:
			http.Error(w, fmt.Sprintf("format %q: want json or prometheus", format), http.StatusBadRequest)
			return
		}
		s.serveStats(w, r, format)
	case "/stats/prometheus":
		s.serveStats(w, r, "prometheus")
	case "/config_dump":
		s.serveConfigDump(w, r)
	case "/clusters":
		s.serveClusters(w, r)
	case "/listeners":
		s.serveListeners(w, r)
	case "/server_info":
		s.serveServerInfo(w)
	default:
		http.Error(w, "not found\n\n"+httpHelp, http.StatusNotFound)
	}
}

// serveConfigDump answers as Envoy's /config_dump (what istioctl
// proxy-config reads through istio-agent): the envoy.admin.v3.ConfigDump in
// JSON with proto field names, as Envoy writes it, secrets redacted;
// ?resource=, ?name_regex= and ?include_eds as Envoy's. ?mask is refused.
func (s *Server) serveConfigDump(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Has("mask") {
		http.Error(w, "mask: not supported by skiff (resource and name_regex are)", http.StatusBadRequest)
		return
	}
	cd, err := s.configDump(q.Get("resource"), q.Get("name_regex"), q.Has("include_eds"))
	if err != nil {
		http.Error(w, status.Convert(err).Message(), http.StatusBadRequest)
		return
	}
	s.writeJSON(w, cd)
}

// serveReady answers as Envoy's /ready: 200 and LIVE, or 503 and the state.
func (s *Server) serveReady(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	st := s.State()
	if st != adminv1.ServerState_SERVER_STATE_LIVE {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, strings.TrimPrefix(st.String(), "SERVER_STATE_"))
}

func (s *Server) serveStats(w http.ResponseWriter, r *http.Request, format string) {
	q := r.URL.Query()
	f, err := newStatFilter(q.Get("filter"), q.Has("usedonly"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	samples := f.apply(s.opts.Stats.Snapshot())
	switch format {
	case "prometheus":
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writePrometheus(w, samples, s.opts.Tags)
	case "json":
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(statsJSON(samples))
	default:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		writeStatsText(w, samples)
	}
}

// statsJSON is Envoy's /stats?format=json: {"stats": [{"name": ..., "value":
// ...}, ..., {"histograms": {"supported_quantiles": [...],
// "computed_quantiles": [{"name": ..., "values": [{"interval": null,
// "cumulative": ...}]}]}}]}. skiff keeps no interval histograms.
func statsJSON(samples []stats.Sample) any {
	type quantile struct {
		Interval   *float64 `json:"interval"`
		Cumulative *float64 `json:"cumulative"`
	}
	type computed struct {
		Name   string     `json:"name"`
		Values []quantile `json:"values"`
	}
	type histograms struct {
		Supported []float64  `json:"supported_quantiles"`
		Computed  []computed `json:"computed_quantiles"`
	}
	out := []any{}
	var hs *histograms
	for _, s := range samples {
		if s.Kind != stats.KindHistogram {
			out = append(out, map[string]any{"name": s.Name, "value": s.Value})
			continue
		}
		if hs == nil {
			hs = &histograms{}
			for _, q := range envoyQuantiles {
				hs.Supported = append(hs.Supported, q.q*100)
			}
		}
		c := computed{Name: s.Name}
		for _, q := range envoyQuantiles {
			var v *float64
			if s.Histogram.Count > 0 {
				x := s.Histogram.Quantile(q.q)
				v = &x
			}
			c.Values = append(c.Values, quantile{Cumulative: v})
		}
		hs.Computed = append(hs.Computed, c)
	}
	if hs != nil {
		out = append(out, map[string]any{"histograms": hs})
	}
	return map[string]any{"stats": out}
}
