package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// goodListener is a valid listener on 127.0.0.1:PORT proxying to cluster c.
const goodListener = `
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l
          cluster: c`

// goodCluster is a valid STATIC cluster c.
const goodCluster = `
  - name: c
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } }`

// TestBadConfig: a bad bootstrap makes skiff exit non-zero before binding
// anything, naming the file and the field at fault.
func TestBadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		bootstrap string
		want      []string // substrings of stderr besides the file name
	}{{
		name: "malformed_yaml",
		bootstrap: `static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: PORT }
    filter_chains: []
`,
		want: []string{"line 4"},
	}, {
		name: "unknown_listener_field",
		bootstrap: "static_resources:\n  listeners:" + goodListener + `
    no_such_field: 1
  clusters:` + goodCluster + "\n",
		want: []string{"static_resources.listeners[0].no_such_field"},
	}, {
		name: "unknown_typed_config_field",
		bootstrap: "static_resources:\n  listeners:" + goodListener + `
          no_such_field: true
  clusters:` + goodCluster + "\n",
		want: []string{"static_resources.listeners[0].filter_chains[0].filters[0].typed_config.no_such_field"},
	}, {
		name: "unknown_type",
		bootstrap: "static_resources:\n  listeners:" + strings.Replace(goodListener,
			"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "envoy.extensions.filters.network.no_such_filter.v3.NoSuchFilter", 1) + `
  clusters:` + goodCluster + "\n",
		want: []string{"static_resources.listeners[0].filter_chains[0].filters[0].typed_config", "no_such_filter"},
	}, {
		name: "tcp_proxy_without_cluster",
		bootstrap: "static_resources:\n  listeners:" + strings.Replace(goodListener, "\n          cluster: c", "", 1) + `
  clusters:` + goodCluster + "\n",
		want: []string{"static_resources.listeners[0].filter_chains[0].filters[0].typed_config", "cluster"},
	}, {
		name: "duplicate_listener_name",
		bootstrap: "static_resources:\n  listeners:" + goodListener + strings.Replace(goodListener, "PORT", "0", 1) + `
  clusters:` + goodCluster + "\n",
		want: []string{"static_resources.listeners[1].name", "duplicate"},
	}, {
		name: "duplicate_listener_address",
		bootstrap: "static_resources:\n  listeners:" + goodListener + strings.Replace(goodListener, "name: l", "name: m", 1) + `
  clusters:` + goodCluster + "\n",
		want: []string{"static_resources.listeners[1].address", "PORT_ADDR"},
	}, {
		name: "duplicate_cluster_name",
		bootstrap: "static_resources:\n  listeners:" + goodListener + `
  clusters:` + goodCluster + goodCluster + "\n",
		want: []string{"static_resources.clusters[1].name", "duplicate"},
	}, {
		name: "endpoint_not_an_ip",
		bootstrap: "static_resources:\n  listeners:" + goodListener + `
  clusters:` + strings.Replace(goodCluster, "address: 127.0.0.1", "address: not-an-ip", 1) + "\n",
		want: []string{"static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address", "not-an-ip"},
	}, {
		name: "bootstrap_dns_resolver_not_an_ip",
		bootstrap: "dns_resolution_config: { resolvers: [{ socket_address: { address: dns.example, port_value: 53 } }] }\nstatic_resources:\n  listeners:" + goodListener + `
  clusters:` + goodCluster + "\n",
		want: []string{"dns_resolution_config.resolvers[0].socket_address.address", "dns.example"},
	}, {
		name: "sds_over_ads_without_ads",
		bootstrap: "static_resources:\n  listeners:" + strings.Replace(goodListener, "    - filters:", `    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs: [{ name: cert, sds_config: { ads: {} } }]
      filters:`, 1) + `
  clusters:` + goodCluster + "\n",
		want: []string{`static_resources.listeners[0]: secret "cert": sds_config.ads`, "needs dynamic_resources.ads_config"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			port := freePort(t)
			cfg := writeFile(t, "bootstrap.yaml", strings.ReplaceAll(tt.bootstrap, "PORT", strconv.Itoa(port)))
			for _, mode := range []string{"serve", "validate"} {
				r := runSkiff(t, "run", "-c", cfg, "--log-encoding", "json", "--runtime-dir", filepath.Join(t.TempDir(), "run"), "--mode", mode)
				if r.code == 0 {
					t.Fatalf("--mode %s: skiff exited 0 with a bad bootstrap; stdout:\n%s", mode, r.stdout)
				}
				want := append([]string{cfg}, tt.want...)
				for i := range want {
					want[i] = strings.ReplaceAll(want[i], "PORT_ADDR", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
				}
				if !containsAll(r.stderr, want...) {
					t.Errorf("--mode %s: stderr\n%s\nwant it to name the file %s and contain %q", mode, r.stderr, cfg, want[1:])
				}
				if n := boundLines(r.logs); n > 0 {
					t.Errorf("--mode %s: %d listeners were bound before the error", mode, n)
				}
				if addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port)); !portFree(addr) {
					t.Errorf("--mode %s: %s is not free after skiff exited", mode, addr)
				}
			}
		})
	}
}

// TestBadFlags: bad command lines exit non-zero, saying what is wrong.
func TestBadFlags(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	cfg := writeFile(t, "bootstrap.yaml", "static_resources:\n  listeners:"+
		strings.ReplaceAll(goodListener, "PORT", strconv.Itoa(port))+"\n  clusters:"+goodCluster+"\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown_flag", []string{"run", "-c", cfg, "--no-such-flag"}, "no-such-flag"},
		{"bad_duration", []string{"run", "-c", cfg, "--drain-time", "soon"}, "drain-time"},
		{"bad_mode", []string{"run", "-c", cfg, "--mode", "init_only"}, "--mode"},
		{"bad_level", []string{"run", "-c", cfg, "-l", "loud"}, "loud"},
		{"bad_encoding", []string{"run", "-c", cfg, "--log-encoding", "xml"}, "--log-encoding"},
		{"no_config", []string{"run"}, "-c"},
		{"missing_file", []string{"run", "-c", missing}, missing},
		{"argument", []string{"run", cfg}, cfg},
		{"both_drain_flags", []string{"run", "-c", cfg, "--drain-time", "1s", "--drain-time-s", "1"}, "drain-time"},
		{"bad_drain_strategy", []string{"run", "-c", cfg, "--drain-strategy", "eventually"}, "--drain-strategy"},
		{"envoy_style_unknown_flag", []string{"-c", cfg, "--no-such-flag"}, "no-such-flag"},
		{"bad_ip_version", []string{"run", "-c", cfg, "--local-address-ip-version", "v5"}, "--local-address-ip-version"},
		{"bad_component_log_level", []string{"run", "-c", cfg, "--component-log-level", "misc:loud"}, "--component-log-level"},
		{"negative_flush_interval", []string{"run", "-c", cfg, "--file-flush-interval-msec", "-1"}, "--file-flush-interval-msec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append(tt.args, "--runtime-dir", filepath.Join(t.TempDir(), "run"))
			r := runSkiff(t, args...)
			if r.code == 0 {
				t.Fatalf("skiff %s exited 0", strings.Join(args, " "))
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("skiff %s: stderr\n%s\nwant it to mention %q", strings.Join(args, " "), r.stderr, tt.want)
			}
			if n := boundLines(r.logs); n > 0 {
				t.Errorf("%d listeners were bound before the error", n)
			}
		})
	}
	if addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port)); !portFree(addr) {
		t.Errorf("%s is not free after the bad command lines", addr)
	}
}

// TestPortInUse: a listener port that is taken makes skiff exit non-zero naming
// the address; listeners bound before it are given back.
func TestPortInUse(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	free := freePort(t)
	for _, tt := range []struct {
		name      string
		listeners []listenerCfg
		path      string
	}{
		{"only", []listenerCfg{{Name: "l", Address: addr, Cluster: "c"}}, "static_resources.listeners[0].address:"},
		{"second", []listenerCfg{
			{Name: "first", Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(free)), Cluster: "c"},
			{Name: "l", Address: addr, Cluster: "c"},
		}, "static_resources.listeners[1].address:"},
		{"additional_address", []listenerCfg{{Name: "l", Additional: []string{addr}, Cluster: "c"}}, "static_resources.listeners[0].additional_addresses[0].address:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := bootstrap{Listeners: tt.listeners, Clusters: []clusterCfg{{Name: "c", Endpoints: []string{"127.0.0.1:9"}}}}
			cfg := writeFile(t, "bootstrap.yaml", b.yaml(t))
			r := runSkiff(t, "run", "-c", cfg, "--log-encoding", "json", "--runtime-dir", filepath.Join(t.TempDir(), "run"))
			if r.code == 0 {
				t.Fatalf("skiff exited 0 with listener address %s in use", addr)
			}
			if !containsAll(r.stderr, cfg, tt.path, `listener "l"`, addr, "in use") {
				t.Errorf("stderr\n%s\nwant it to name the file %s, the field %s, listener \"l\" and the address %s, and say it is in use", r.stderr, cfg, tt.path, addr)
			}
			if a := net.JoinHostPort("127.0.0.1", strconv.Itoa(free)); !portFree(a) {
				t.Errorf("%s is not free after skiff exited", a)
			}
		})
	}
}

// TestEnvoyFlags runs skiff the way a script written for Envoy would.
func TestEnvoyFlags(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	cfg := writeFile(t, "envoy.yaml", simple(up.Addr).yaml(t))
	// No --runtime-dir: skiff's default is under $XDG_RUNTIME_DIR.
	xdg := t.TempDir()
	p := startProcess(t, []string{"-c", cfg, "-l", "debug", "--drain-time-s", "1", "--drain-strategy", "immediate", "--cpuset-threads",
		"--service-node", "n1", "--service-cluster", "c1", "--concurrency", "2"},
		procOpts{env: []string{"XDG_RUNTIME_DIR=" + xdg}})
	p.WaitStarted(t) // text logs, which the harness parses too
	started := p.WaitMsg(t, startTimeout, "skiff started")
	if got := started.Fields["node"]; got != "n1" {
		t.Errorf("skiff started with node %q, want n1 from --service-node: %s", got, started.Raw)
	}
	c := dial(t, p.Addr(t, "l"))
	if err := echoAll(c, []byte("envoy style")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	p.WaitLog(t, startTimeout, "a DEBUG line (-l debug)", func(l LogLine) bool { return l.Level() == "DEBUG" })
	if _, err := os.Stat(filepath.Join(xdg, "skiff")); err != nil {
		t.Errorf("default runtime dir: %v", err)
	}
	p.Stop(t)
}

// TestConfigYAML: --config-yaml is merged over the file, as in Envoy.
func TestConfigYAML(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	// The file has the cluster, --config-yaml the listener.
	file := bootstrap{Clusters: []clusterCfg{{Name: "c", Endpoints: []string{up.Addr}}}}.yaml(t)
	flag := bootstrap{Listeners: []listenerCfg{{Name: "merged", Cluster: "c"}}}.yaml(t)
	p := startSkiff(t, file, "--config-yaml", flag)
	if err := echoAll(dial(t, p.Addr(t, "merged")), []byte("merged")); err != nil {
		t.Fatal(err)
	}

	// --config-yaml alone is a whole bootstrap.
	whole := simple(up.Addr).yaml(t)
	q := startProcess(t, []string{"run", "--config-yaml", whole, "--log-encoding", "json", "--runtime-dir", filepath.Join(t.TempDir(), "run")}, procOpts{})
	q.WaitStarted(t)
	if err := echoAll(dial(t, q.Addr(t, "l")), []byte("yaml only")); err != nil {
		t.Fatal(err)
	}
}

// TestValidateMode: --mode validate checks the configuration and exits without
// binding anything.
func TestValidateMode(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	b := simple("127.0.0.1:9")
	b.Listeners[0].Address = addr
	cfg := writeFile(t, "bootstrap.yaml", b.yaml(t))
	for _, args := range [][]string{
		{"run", "-c", cfg, "--mode", "validate"},
		{"--mode", "validate", "-c", cfg}, // Envoy's invocation
	} {
		args = append(args, "--runtime-dir", filepath.Join(t.TempDir(), "run"))
		r := runSkiff(t, args...)
		if r.code != 0 {
			t.Fatalf("skiff %s: exit status %d, want 0; stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
		if want := fmt.Sprintf("configuration '%s' OK\n", cfg); r.stdout != want {
			t.Errorf("skiff %s: stdout %q, want %q", strings.Join(args, " "), r.stdout, want)
		}
		if strings.Contains(r.stderr, "listener bound") {
			t.Errorf("--mode validate bound a listener:\n%s", r.stderr)
		}
		if !portFree(addr) {
			t.Errorf("%s is not free after --mode validate", addr)
		}
	}
}

// TestDisableHotRestart: with Envoy's --disable-hot-restart, skiff keeps no
// reconfig socket, logs and ignores SIGHUP (as Envoy does) while it goes on
// serving, refuses a hot restart asked through the admin API, and a second
// skiff on the same runtime directory exits with an error instead of taking
// over.
func TestDisableHotRestart(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	a := startAdminSkiff(t, simple(up.Addr), "--disable-hot-restart")
	if _, err := os.Stat(filepath.Join(a.RuntimeDir, "reconfig.sock")); !os.IsNotExist(err) {
		t.Errorf("reconfig.sock with --disable-hot-restart: %v", err)
	}
	a.Signal(t, syscall.SIGHUP)
	a.WaitLog(t, 10*time.Second, "SIGHUP logged and ignored", func(l LogLine) bool { return strings.Contains(l.Msg(), "caught SIGHUP and ignored it") })
	if err := echoAll(dial(t, a.Addr(t, "l")), []byte("still here")); err != nil {
		t.Fatalf("after SIGHUP: %v", err)
	}
	r := runSkiff(t, "admin", "--runtime-dir", a.RuntimeDir, "restart")
	if r.code == 0 || !strings.Contains(r.stderr, "hot restart is off") {
		t.Errorf("skiff admin restart: exit %d, stderr %q; want a refusal saying hot restart is off", r.code, r.stderr)
	}
	r = runSkiff(t, "run", "-c", a.ConfigPath, "--runtime-dir", a.RuntimeDir, "--disable-hot-restart", "--log-encoding", "json")
	if r.code == 0 || !strings.Contains(r.stderr, "--disable-hot-restart") {
		t.Errorf("a second skiff on the runtime dir: exit %d, stderr %q; want an error naming --disable-hot-restart", r.code, r.stderr)
	}
	select {
	case <-a.Exited():
		t.Fatal("the first skiff exited")
	default:
	}
}
