package e2e

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"text/template"
)

// bootstrap is an Envoy v3 bootstrap of tcp_proxy listeners and STATIC clusters,
// rendered as YAML by yaml().
type bootstrap struct {
	Node      string // node.id, "" for none
	Listeners []listenerCfg
	Clusters  []clusterCfg
}

// listenerCfg is a listener with one filter chain holding a tcp_proxy, or
// with HTTP an HTTP connection manager routing everything to Cluster.
type listenerCfg struct {
	Name string
	HTTP bool
	// Address is host:port; "" is 127.0.0.1:0 (a port chosen by the system).
	Address string
	// Additional are additional_addresses, host:port each.
	Additional []string
	// Cluster is the tcp_proxy's cluster; Weighted, if set, is used instead.
	Cluster  string
	Weighted []weightedCluster
	// IdleTimeout is the tcp_proxy idle_timeout as a proto Duration ("1s"); "" leaves it unset.
	IdleTimeout string
	// MaxConnectAttempts is the tcp_proxy max_connect_attempts; 0 leaves it unset.
	MaxConnectAttempts int
	// MaxDuration is the tcp_proxy max_downstream_connection_duration as a
	// proto Duration; "" leaves it unset.
	MaxDuration string
}

type weightedCluster struct {
	Name   string
	Weight int
}

// clusterCfg is a STATIC cluster.
type clusterCfg struct {
	Name      string
	Endpoints []string // host:port each
	// ConnectTimeout is a proto Duration; "" is 1s.
	ConnectTimeout string
}

var bootstrapTmpl = template.Must(template.New("bootstrap").Funcs(template.FuncMap{
	"sockaddr": sockaddrYAML,
}).Parse(`{{with .Node}}node:
  id: {{.}}
  cluster: e2e
{{end}}static_resources:
{{- if .Listeners}}
  listeners:
{{- end}}
{{- range .Listeners}}
  - name: {{.Name}}
    address: {{sockaddr .Address}}
{{- if .Additional}}
    additional_addresses:
{{- range .Additional}}
    - address: {{sockaddr .}}
{{- end}}
{{- end}}
    filter_chains:
    - filters:
{{- if .HTTP}}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {{.Name}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: {{.Cluster}} }
{{- else}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {{.Name}}
{{- if .Weighted}}
          weighted_clusters:
            clusters:
{{- range .Weighted}}
            - { name: {{.Name}}, weight: {{.Weight}} }
{{- end}}
{{- else}}
          cluster: {{.Cluster}}
{{- end}}
{{- with .IdleTimeout}}
          idle_timeout: {{.}}
{{- end}}
{{- with .MaxConnectAttempts}}
          max_connect_attempts: {{.}}
{{- end}}
{{- with .MaxDuration}}
          max_downstream_connection_duration: {{.}}
{{- end}}
{{- end}}
{{- end}}
{{- if .Clusters}}
  clusters:
{{- end}}
{{- range .Clusters}}
  - name: {{.Name}}
    type: STATIC
    connect_timeout: {{or .ConnectTimeout "1s"}}
    load_assignment:
      cluster_name: {{.Name}}
      endpoints:
      - lb_endpoints:
{{- range .Endpoints}}
        - endpoint: { address: {{sockaddr .}} }
{{- end}}
{{- end}}
`))

// sockaddrYAML renders host:port as an Envoy Address in YAML flow style.
func sockaddrYAML(hostport string) (string, error) {
	if hostport == "" {
		hostport = "127.0.0.1:0"
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("port of %q: %v", hostport, err)
	}
	return fmt.Sprintf(`{ socket_address: { address: %q, port_value: %s } }`, host, port), nil
}

// yaml renders b.
func (b bootstrap) yaml(t testing.TB) string {
	t.Helper()
	var sb strings.Builder
	if err := bootstrapTmpl.Execute(&sb, b); err != nil {
		t.Fatalf("rendering bootstrap: %v", err)
	}
	return sb.String()
}

// simple is a bootstrap with one listener "l" proxying to cluster "c" of the
// given endpoints.
func simple(endpoints ...string) bootstrap {
	return bootstrap{
		Listeners: []listenerCfg{{Name: "l", Cluster: "c"}},
		Clusters:  []clusterCfg{{Name: "c", Endpoints: endpoints}},
	}
}
