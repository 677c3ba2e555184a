package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTCPProxyAccessLog: tcp_proxy's access_log writes one entry per
// connection when it ends, in Envoy's default format (no request: "- - -")
// and in a JSON format, with the bytes each way, the upstream host, and the
// response flag of a connection that found no upstream (UF).
func TestTCPProxyAccessLog(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	dir := t.TempDir()
	text, js := filepath.Join(dir, "tcp.log"), filepath.Join(dir, "tcp.json")
	listener := func(name, cluster string) string {
		return fmt.Sprintf(`  - name: %s
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: %s
          cluster: %s
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %q
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %q
              log_format:
                json_format: { listener: %s, flags: "%%RESPONSE_FLAGS%%", rx: "%%BYTES_RECEIVED%%", tx: "%%BYTES_SENT%%", upstream: "%%UPSTREAM_HOST%%", cluster: "%%UPSTREAM_CLUSTER%%", local: "%%UPSTREAM_LOCAL_ADDRESS%%", attempts: "%%UPSTREAM_REQUEST_ATTEMPT_COUNT%%", failure: "%%UPSTREAM_TRANSPORT_FAILURE_REASON%%" }
`, name, name, cluster, text, js, name)
	}
	refused := refusingAddr(t)
	cfg := "static_resources:\n  listeners:\n" + listener("ok", "echo") + listener("refused", "refused") + `  clusters:
` + staticCluster("echo", false, up.Addr) + staticCluster("refused", false, refused)
	p := startSkiff(t, cfg)

	c := dial(t, p.Addr(t, "ok"))
	if err := echoRoundTrip(c, []byte("hello, access log")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := dial(t, p.Addr(t, "refused"))
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, r) // skiff closes it

	// (Byte counts are JSON numbers and a missing value null, as in Envoy.)
	type entry struct {
		Listener, Flags, Cluster string
		Rx, Tx, Attempts         json.Number
		Upstream, Local, Failure *string
	}
	var got map[string]entry
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = map[string]entry{}
		b, _ := os.ReadFile(js)
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var e entry
			if json.Unmarshal([]byte(l), &e) == nil {
				got[e.Listener] = e
			}
		}
		if len(got) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(got) != 2 {
		b, _ := os.ReadFile(js)
		t.Logf("%s:\n%s", js, b)
	}
	// As Envoy's tcp_proxy: the upstream connection's local address once
	// connected; for a failed connection the host last tried and why.
	str := func(p *string) string {
		if p == nil {
			return "<null>"
		}
		return *p
	}
	if e := got["ok"]; e.Flags != "-" || e.Rx != "17" || e.Tx != "17" || str(e.Upstream) != up.Addr || e.Cluster != "echo" ||
		!strings.HasPrefix(str(e.Local), "127.0.0.1:") || e.Attempts != "1" || e.Failure != nil {
		t.Errorf("the proxied connection's entry: %+v (local %s, failure %s)", e, str(e.Local), str(e.Failure))
	}
	if e := got["refused"]; e.Flags != "UF,URX" || e.Rx != "0" || str(e.Upstream) != refused || e.Cluster != "refused" ||
		e.Local != nil || e.Attempts != "1" || str(e.Failure) != "delayed connect error: Connection refused" {
		t.Errorf("the refused connection's entry: %+v (upstream %s, failure %s)", e, str(e.Upstream), str(e.Failure))
	}
	b, _ := os.ReadFile(text)
	line := regexp.MustCompile(`^\[\d{4}-\d\d-\d\dT[0-9:.]+Z\] "- - -" 0 - 17 17 \d+ - "-" "-" "-" "-" "` + regexp.QuoteMeta(up.Addr) + `"$`)
	var found bool
	for _, l := range strings.Split(string(b), "\n") {
		found = found || line.MatchString(l)
	}
	if !found {
		t.Errorf("no default-format line like %s in:\n%s", line, b)
	}
}

// TestAccessLogReopenOnSIGUSR1: as with Envoy, SIGUSR1 makes skiff reopen its
// access log files, so that logrotate can move a file away and the next
// entries go to a new one at the configured path; skiff keeps serving.
func TestAccessLogReopenOnSIGUSR1(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, "127.0.0.1", echoHandler)
	path := filepath.Join(t.TempDir(), "tcp.log")
	cfg := fmt.Sprintf(`static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l
          cluster: echo
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %q
              log_format: { text_format_source: { inline_string: "%%BYTES_RECEIVED%%\n" } }
  clusters:
`, path) + staticCluster("echo", false, up.Addr)
	p := startSkiff(t, cfg)
	roundTrip := func(msg string) {
		t.Helper()
		c := dial(t, p.Addr(t, "l"))
		if err := echoRoundTrip(c, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	waitFor := func(file, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(file)
			if string(b) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s holds %q, want %q", file, b, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	roundTrip("12345")
	waitFor(path, "5\n")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	p.Signal(t, syscall.SIGUSR1)
	p.WaitLog(t, 10*time.Second, "the reopen logged", func(l LogLine) bool { return strings.Contains(l.Msg(), "reopening the access logs") })
	roundTrip("1234567")
	waitFor(path, "7\n")
	waitFor(path+".1", "5\n")
	select {
	case <-p.Exited():
		t.Fatal("skiff exited on SIGUSR1")
	default:
	}
}
