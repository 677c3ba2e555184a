#!/usr/bin/env bash
# skiff as the proxy under test of ../shared/bench/run.sh (its SUT_CMD contract):
#
#   go build -o /tmp/skiff ./cmd/skiff
#   SKIFF=/tmp/skiff SUT_CMD=$PWD/bench/sut-skiff.sh HAPROXY_SPLICE=1 \
#     SCENARIOS="h1close tcp" /work/shared/bench/run.sh
#
# It writes an Envoy bootstrap with one tcp_proxy listener per L4 scenario
# (BENCH_LISTEN_L4_HTTP -> BENCH_UPSTREAM_HTTP, BENCH_LISTEN_L4_TCP ->
# BENCH_UPSTREAM_TCP) and one HTTP connection manager per L7 scenario
# (BENCH_LISTEN_HTTP with codec HTTP1, BENCH_LISTEN_H2C with codec HTTP2, both
# routing to BENCH_UPSTREAM_HTTP over pooled HTTP/1.1 keep-alive connections,
# as the peers do), and execs skiff in the foreground. As Envoy's "best
# practices for benchmarking Envoy" ask, the proxies do comparable work: access
# logs are off, as for the peers; generate_request_id is off (no x-request-id)
# and the router's suppress_envoy_headers on (no x-envoy-expected-rq-timeout-ms
# upstream, no x-envoy-upstream-service-time downstream), since HAProxy and
# nginx add no such headers and the backend and the client pay for parsing
# them (measured: 1-4 µs of the Go backend's CPU per request); dynamic_stats
# is off as that page says (skiff has no per-virtual-cluster stats to skip).
# For the same reason the two headers Envoy adds by default and the peers do
# not are left out: `server: envoy` on responses (server_header_transformation
# PASS_THROUGH: the backend's own server header, of which it sends none) and
# `x-forwarded-proto: http` on requests (removed by the route configuration's
# request_headers_to_remove); together 40 bytes a request, and the Go
# backend allocates for x-forwarded-proto, a header outside its table of
# common names (measured in alternating runs: about 3 µs less backend CPU
# and 4 µs less skiff CPU per h1ka request without them).
set -euo pipefail

skiff=${SKIFF:-}
if [[ -z $skiff ]]; then
  skiff="$BENCH_DIR/skiff"
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && go build -o "$skiff" ./cmd/skiff)
fi

listener() {  # name listen-addr cluster
  local host=${2%:*} port=${2##*:}
  cat <<YAML
  - name: $1
    address: { socket_address: { address: "$host", port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: $1
          cluster: $3
YAML
}

http_listener() {  # name listen-addr codec cluster
  local host=${2%:*} port=${2##*:}
  cat <<YAML
  - name: $1
    address: { socket_address: { address: "$host", port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: $3
          generate_request_id: false
          server_header_transformation: PASS_THROUGH
          route_config:
            name: $1
            request_headers_to_remove: [x-forwarded-proto]
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: $4 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
              dynamic_stats: false
YAML
}

cluster() {  # name upstream-addr
  local host=${2%:*} port=${2##*:}
  cat <<YAML
  - name: $1
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: "$host", port_value: $port } } }
YAML
}

cfg="$BENCH_DIR/skiff.yaml"
{
  echo "node: { id: bench, cluster: bench }"
  echo "static_resources:"
  echo "  listeners:"
  listener l4_http "$BENCH_LISTEN_L4_HTTP" backend_http
  listener l4_tcp "$BENCH_LISTEN_L4_TCP" backend_tcp
  http_listener http "$BENCH_LISTEN_HTTP" HTTP1 backend_http
  http_listener h2c "$BENCH_LISTEN_H2C" HTTP2 backend_http
  echo "  clusters:"
  cluster backend_http "$BENCH_UPSTREAM_HTTP"
  cluster backend_tcp "$BENCH_UPSTREAM_TCP"
} >"$cfg"

exec "$skiff" run -c "$cfg" --concurrency "${BENCH_WORKERS:-1}" -l warning \
  --runtime-dir "$BENCH_DIR/run" --drain-time 1s
