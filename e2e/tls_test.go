package e2e

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skiffproxy/skiff/internal/tlstest"
)

// TestTLSListener: filter chains terminate TLS (transport_socket
// envoy.transport_sockets.tls with a DownstreamTlsContext) with certificates
// from files: HTTP/1.1 and HTTP/2 chosen by ALPN behind one listener, the
// upstream told x-forwarded-proto https; and mutual TLS in front of a
// tcp_proxy, with the client certificate checked against trusted_ca and its
// URI SAN. Handshakes and refusals are counted under listener.<address>.ssl.
func TestTLSListener(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "e2e CA")
	certFile, keyFile := ca.Issue(t, "edge", "edge.example.com", "127.0.0.1", "spiffe://e2e/edge").Files(t, dir, "server-")
	caFile := writeFile(t, "ca.pem", string(ca.PEM))
	goodLeaf := ca.Issue(t, "client", "spiffe://e2e/client")
	goodClient := goodLeaf.TLS(t)
	otherClient := ca.Issue(t, "other", "spiffe://e2e/other").TLS(t)
	strangerCA := tlstest.NewCA(t, "stranger CA")
	stranger := strangerCA.Issue(t, "client", "spiffe://e2e/client").TLS(t)

	backend := httpBackend(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("x-seen-proto", r.Header.Get("x-forwarded-proto"))
		w.Header().Set("x-seen-xfcc", r.Header.Get("x-forwarded-client-cert"))
		fmt.Fprint(w, "hello over ", r.Proto)
	}))
	echo := startUpstream(t, "127.0.0.1", echoHandler)
	certs := fmt.Sprintf(`tls_certificates:
              - certificate_chain: { filename: %q }
                private_key: { filename: %q }`, certFile, keyFile)
	cfg := fmt.Sprintf(`node: { id: e2e-tls }
static_resources:
  listeners:
  - name: https
    stat_prefix: https
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            %s
            validation_context: { trusted_ca: { filename: %q } }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: { subject: true, uri: true, dns: true }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: backend } }]
  - name: mtls
    stat_prefix: mtls
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - transport_socket_connect_timeout: 2s
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: { tls_minimum_protocol_version: TLSv1_3 }
            %s
            validation_context:
              trusted_ca: { filename: %q }
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: { exact: "spiffe://e2e/client" }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: mtls
          cluster: echo
  clusters:
%s%s`, certs, caFile, certs, caFile, staticCluster("backend", false, backend), staticCluster("echo", false, echo.Addr))
	p := startSkiff(t, cfg)

	// HTTPS, HTTP/1.1 and HTTP/2 by ALPN; with a client certificate, the
	// upstream learns of it in x-forwarded-client-cert (SANITIZE_SET), and a
	// client without one cannot forge the header.
	h := sha256.Sum256(goodLeaf.Cert.Raw)
	wantXFCC := `By=spiffe://e2e/edge;Hash=` + hex.EncodeToString(h[:]) + `;Subject="CN=client";URI=spiffe://e2e/client`
	for _, tt := range []struct {
		h2   bool
		cert *tls.Certificate
		xfcc string
	}{{false, nil, ""}, {true, nil, ""}, {true, &goodClient, wantXFCC}} {
		tc := &tls.Config{RootCAs: ca.Pool(), ServerName: "edge.example.com"}
		if tt.cert != nil {
			tc.Certificates = []tls.Certificate{*tt.cert}
		}
		tr := &nethttp.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: tt.h2}
		if !tt.h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) nethttp.RoundTripper{} // HTTP/1.1 only
		}
		c := &nethttp.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, body := doGet(t, c, "https://"+p.Addr(t, "https")+"/", "x-forwarded-client-cert", "By=spiffe://forged")
		want := "hello over HTTP/1.1" // skiff goes upstream over HTTP/1.1 either way
		if resp.StatusCode != 200 || body != want || resp.Header.Get("x-seen-proto") != "https" || (resp.ProtoMajor == 2) != tt.h2 {
			t.Errorf("GET over TLS (h2 %v): %s %s %q, x-seen-proto %q; want 200 %q upstream, https, HTTP/2 %v",
				tt.h2, resp.Proto, resp.Status, body, resp.Header.Get("x-seen-proto"), want, tt.h2)
		}
		if got := resp.Header.Get("x-seen-xfcc"); got != tt.xfcc {
			t.Errorf("GET over TLS (client certificate %v): x-forwarded-client-cert upstream %q, want %q", tt.cert != nil, got, tt.xfcc)
		}
		tr.CloseIdleConnections()
	}
	// A client that does not trust skiff's certificate gets no answer.
	if _, err := tls.Dial("tcp", p.Addr(t, "https"), &tls.Config{ServerName: "edge.example.com"}); err == nil {
		t.Error("a client without the CA completed the handshake")
	}

	// Mutual TLS in front of tcp_proxy.
	mtls := func(cert *tls.Certificate) error {
		cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "edge.example.com"}
		if cert != nil {
			// Sent even when its issuer is not among the CAs skiff asks for
			// (Go's client would otherwise send none).
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		c, err := tls.Dial("tcp", p.Addr(t, "mtls"), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return echoRoundTrip(c, bytes.Repeat([]byte("tls bytes "), 100_000))
	}
	if err := mtls(&goodClient); err != nil {
		t.Errorf("mTLS with the expected client certificate: %v", err)
	}
	for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "another SAN": &otherClient, "an unknown CA": &stranger} {
		if err := mtls(cert); err == nil {
			t.Errorf("mTLS with %s: the bytes went through", name)
		}
	}

	// A client that never sends its ClientHello is closed after the chain's
	// transport_socket_connect_timeout, counted apart from TLS errors.
	mute, err := net.Dial("tcp", p.Addr(t, "mtls"))
	if err != nil {
		t.Fatal(err)
	}
	mute.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	if n, err := mute.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a client that sends nothing: read %d, %v; want the connection closed by skiff", n, err)
	} else if waited := time.Since(start); waited < time.Second {
		t.Errorf("a client that sends nothing was closed after %v, before the 2s transport_socket_connect_timeout", waited)
	}
	mute.Close()

	counters := func() map[string]int {
		r := runSkiff(t, "admin", "--runtime-dir", p.RuntimeDir, "stats", "--filter", `^listener\.(https|mtls)\.(ssl\.|downstream_cx_transport_socket_connect_timeout)`)
		m := map[string]int{}
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			name, v, ok := strings.Cut(l, ": ")
			if n, err := strconv.Atoi(v); ok && err == nil {
				m[strings.TrimPrefix(name, "listener.")] = n
			}
		}
		return m
	}
	want := map[string]int{
		"https.ssl.handshake":                                 3,
		"https.ssl.versions.TLSv1.3":                          3,
		"https.ssl.no_certificate":                            2,
		"https.ssl.connection_error":                          1,
		"mtls.ssl.handshake":                                  1,
		"mtls.ssl.connection_error":                           3,
		"mtls.ssl.fail_verify_no_cert":                        1,
		"mtls.ssl.fail_verify_san":                            1,
		"mtls.ssl.fail_verify_error":                          1,
		"mtls.ssl.fail_verify_cert_hash":                      0,
		"mtls.downstream_cx_transport_socket_connect_timeout": 1,
	}
	var got map[string]int
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = counters()
		ok := true
		for k, v := range want {
			ok = ok && got[k] == v
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssl stats:\n%v\nwant\n%v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTLSBadCertificate: a filter chain whose certificate cannot be read is a
// bootstrap error naming the field; skiff exits before binding.
func TestTLSBadCertificate(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.pem")
	cfg := writeFile(t, "bad-tls.yaml", fmt.Sprintf(`static_resources:
  listeners:
  - name: https
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: { filename: %q }
              private_key: { filename: %q }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
%s`, missing, missing, staticCluster("c", false, "127.0.0.1:1")))
	r := runSkiff(t, "run", "-c", cfg, "--runtime-dir", filepath.Join(t.TempDir(), "run"))
	if r.code == 0 || !strings.Contains(r.stderr, "transport_socket.typed_config.common_tls_context.tls_certificates[0].certificate_chain.filename") ||
		!strings.Contains(r.stderr, "missing.pem") {
		t.Errorf("skiff run with a missing certificate: exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "listener bound") {
		t.Errorf("skiff bound a listener before refusing the bootstrap:\n%s", r.stderr)
	}
}

// tlsUpstream is the YAML of a cluster's transport_socket originating TLS:
// SNI sni, trusting caFile, presenting the client certificate in certFile
// and keyFile (if given), with extra lines in common_tls_context.
func tlsUpstream(sni, caFile, certFile, keyFile, extra string) string {
	s := fmt.Sprintf(`    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: %s
        common_tls_context:
          validation_context: { trusted_ca: { filename: %q } }
`, sni, caFile)
	if certFile != "" {
		s += fmt.Sprintf(`          tls_certificates: [{ certificate_chain: { filename: %q }, private_key: { filename: %q } }]
`, certFile, keyFile)
	}
	if extra != "" {
		s += "          " + extra + "\n"
	}
	return s
}

// TestUpstreamTLS: clusters originate TLS (transport_socket with an
// UpstreamTlsContext): HTTP/1.1 and HTTP/2 (offered by ALPN) to an HTTPS
// upstream that requires skiff's client certificate, with the configured SNI
// and protocol versions; tcp_proxy moving 1 MB byte for byte over TLS; and a
// server whose certificate the cluster does not trust, refused with 503 UF.
// Handshakes and refusals are counted under cluster.<name>.ssl.
func TestUpstreamTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "upstream CA")
	serverCert := ca.Issue(t, "backend", "backend.test").TLS(t)
	clientCert, clientKey := ca.Issue(t, "skiff", "spiffe://e2e/skiff").Files(t, dir, "client-")
	caFile := writeFile(t, "upstream-ca.pem", string(ca.PEM))
	otherCAFile := writeFile(t, "other-ca.pem", string(tlstest.NewCA(t, "other CA").PEM))
	serverTLS := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()}

	https := httpsBackend(t, serverTLS, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		peer := ""
		if len(r.TLS.PeerCertificates) > 0 && len(r.TLS.PeerCertificates[0].URIs) > 0 {
			peer = r.TLS.PeerCertificates[0].URIs[0].String()
		}
		fmt.Fprintf(w, "%s %s %s %s", r.Proto, r.TLS.ServerName, tls.VersionName(r.TLS.Version), peer)
	}))
	logPath := filepath.Join(dir, "access.log")

	eln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eln.Close() })
	go func() {
		for {
			c, err := eln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()

	cfg := fmt.Sprintf(`node: { id: e2e-upstream-tls }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %[9]q
              log_format: { text_format_source: { inline_string: "%%REQ(:PATH)%% %%UPSTREAM_TLS_VERSION%% %%UPSTREAM_PEER_DNS_SAN%% %%UPSTREAM_LOCAL_URI_SAN%%\n" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - { match: { prefix: "/h1" }, route: { cluster: tls_h1 } }
              - { match: { prefix: "/h2" }, route: { cluster: tls_h2 } }
              - { match: { prefix: "/untrusted" }, route: { cluster: untrusted } }
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: tls_echo
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %[9]q
              log_format: { text_format_source: { inline_string: "tcp %%UPSTREAM_TLS_VERSION%% %%UPSTREAM_PEER_DNS_SAN%% %%UPSTREAM_LOCAL_URI_SAN%%\n" } }
  clusters:
%[1]s%[2]s%[3]s%[4]s%[5]s%[6]s%[7]s%[8]s`,
		staticCluster("tls_h1", false, https), tlsUpstream("backend.test", caFile, clientCert, clientKey, "tls_params: { tls_maximum_protocol_version: TLSv1_3 }"),
		staticCluster("tls_h2", true, https), tlsUpstream("backend.test", caFile, clientCert, clientKey, ""),
		staticCluster("untrusted", false, https), tlsUpstream("backend.test", otherCAFile, clientCert, clientKey, ""),
		staticCluster("tls_echo", false, eln.Addr().String()), tlsUpstream("echo.test", caFile, clientCert, clientKey, ""), logPath)
	p := startSkiff(t, cfg)

	c := &nethttp.Client{Timeout: 10 * time.Second}
	for path, want := range map[string]string{
		"/h1": "HTTP/1.1 backend.test TLS 1.3 spiffe://e2e/skiff",
		"/h2": "HTTP/2.0 backend.test TLS 1.2 spiffe://e2e/skiff",
	} {
		for range 3 { // the second and third reuse the pooled connection
			resp, body := doGet(t, c, "http://"+p.Addr(t, "http")+path)
			if resp.StatusCode != 200 || body != want {
				t.Errorf("GET %s: %s %q, want 200 %q", path, resp.Status, body, want)
			}
		}
	}
	resp, body := doGet(t, c, "http://"+p.Addr(t, "http")+"/untrusted")
	if resp.StatusCode != 503 {
		t.Errorf("GET /untrusted: %s %q, want 503", resp.Status, body)
	}

	conn, err := net.Dial("tcp", p.Addr(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if err := echoRoundTrip(conn, bytes.Repeat([]byte("upstream tls "), 80_000)); err != nil {
		t.Errorf("tcp_proxy over upstream TLS: %v", err)
	}
	conn.Close()

	r := runSkiff(t, "admin", "--runtime-dir", p.RuntimeDir, "stats", "--filter", `^cluster\.[a-z_0-9]+\.(ssl\.|upstream_cx_connect_fail)`)
	got := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		name, v, ok := strings.Cut(l, ": ")
		if n, err := strconv.Atoi(v); ok && err == nil {
			got[strings.TrimPrefix(name, "cluster.")] = n
		}
	}
	for name, want := range map[string]int{
		"tls_h1.ssl.handshake":               1,
		"tls_h1.ssl.versions.TLSv1.3":        1,
		"tls_h2.ssl.handshake":               1,
		"tls_h2.ssl.versions.TLSv1.2":        1,
		"tls_echo.ssl.handshake":             1,
		"untrusted.ssl.fail_verify_error":    1,
		"untrusted.upstream_cx_connect_fail": 1,
	} {
		if got[name] != want {
			t.Errorf("%s = %d, want %d (stats %v)", name, got[name], want, got)
		}
	}

	// The access logs tell the upstream TLS session: the server's DNS SAN
	// and skiff's client certificate.
	for _, want := range []string{
		"/h1 TLSv1.3 backend.test spiffe://e2e/skiff",
		"/h2 TLSv1.2 backend.test spiffe://e2e/skiff",
		"/untrusted - - -",
		"tcp TLSv1.2 backend.test spiffe://e2e/skiff",
	} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(logPath)
			if strings.Contains(string(b), want+"\n") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("access log has no line %q:\n%s", want, b)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// httpsBackend is a net/http server over TLS with cfg (HTTP/1.1, and HTTP/2
// by ALPN) on loopback, closed by the test's cleanup; its address.
func httpsBackend(t testing.TB, cfg *tls.Config, h nethttp.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &nethttp.Server{ReadHeaderTimeout: 10 * time.Second, TLSConfig: cfg, Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}

// TestStaticSecrets: certificates and CAs defined once in
// static_resources.secrets and named by TLS contexts (SDS secret configs
// without an sds_config): a listener terminating TLS with one, a cluster
// verifying its upstream with another and presenting a third. A secret that
// cannot be loaded, or a name with no secret, fails the bootstrap naming the
// field, before any socket is bound.
func TestStaticSecrets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "secrets CA")
	edgeCert, edgeKey := ca.Issue(t, "edge", "edge.test").Files(t, dir, "edge-")
	clientCert, clientKey := ca.Issue(t, "skiff", "spiffe://e2e/skiff").Files(t, dir, "client-")
	caFile := writeFile(t, "secrets-ca.pem", string(ca.PEM))

	backend := httpsBackend(t, &tls.Config{
		Certificates: []tls.Certificate{ca.Issue(t, "backend", "backend.test").TLS(t)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()},
		nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			fmt.Fprint(w, "client ", r.TLS.PeerCertificates[0].URIs[0])
		}))

	secrets := fmt.Sprintf(`  secrets:
  - name: edge-cert
    tls_certificate: { certificate_chain: { filename: %q }, private_key: { filename: %q } }
  - name: skiff-client
    tls_certificate: { certificate_chain: { filename: %q }, private_key: { filename: %q } }
  - name: mesh-ca
    validation_context: { trusted_ca: { filename: %q } }
`, edgeCert, edgeKey, clientCert, clientKey, caFile)
	listener := func(secret string) string {
		return fmt.Sprintf(`  listeners:
  - name: https
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs: [{ name: %s }]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: backend } }]
`, secret)
	}
	cluster := staticCluster("backend", false, backend) + `    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend.test
        common_tls_context:
          tls_certificate_sds_secret_configs: [{ name: skiff-client }]
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: backend.test } }]
            validation_context_sds_secret_config: { name: mesh-ca }
`
	p := startSkiff(t, "node: { id: e2e-secrets }\nstatic_resources:\n"+secrets+listener("edge-cert")+"  clusters:\n"+cluster)
	c := &nethttp.Client{Timeout: 10 * time.Second, Transport: &nethttp.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "edge.test"}}}
	resp, body := doGet(t, c, "https://"+p.Addr(t, "https")+"/")
	if resp.StatusCode != 200 || body != "client spiffe://e2e/skiff" {
		t.Errorf("GET through secrets: %s %q, want 200 %q", resp.Status, body, "client spiffe://e2e/skiff")
	}

	for _, tt := range []struct {
		name, cfg, want string
	}{
		{"a secret whose file is missing", "static_resources:\n" + strings.Replace(secrets, caFile, filepath.Join(dir, "missing.pem"), 1) + listener("edge-cert") + "  clusters:\n" + cluster,
			"static_resources.secrets[2].validation_context.trusted_ca.filename"},
		{"a name with no secret", "static_resources:\n" + secrets + listener("nope") + "  clusters:\n" + cluster,
			`static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: no secret "nope"`},
	} {
		r := runSkiff(t, "run", "-c", writeFile(t, "bad-secrets.yaml", tt.cfg), "--runtime-dir", filepath.Join(t.TempDir(), "run"))
		if r.code == 0 || !strings.Contains(r.stderr, tt.want) || strings.Contains(r.stderr, "listener bound") {
			t.Errorf("skiff run with %s: exit %d, want an error naming %s before binding:\n%s", tt.name, r.code, tt.want, r.stderr)
		}
	}
}

// TestUpstreamAutoSNI: a cluster with upstream_http_protocol_options
// auto_sni and auto_san_validation sends each request's host as SNI, on
// connections pooled apart per name, and checks the server's certificate
// for it: a host the certificate does not name gets 503.
func TestUpstreamAutoSNI(t *testing.T) {
	t.Parallel()
	ca := tlstest.NewCA(t, "sni CA")
	caFile := writeFile(t, "sni-ca.pem", string(ca.PEM))
	backend := httpsBackend(t, &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "backend", "a.test", "b.test").TLS(t)}},
		nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			fmt.Fprint(w, "sni ", r.TLS.ServerName)
		}))

	cluster := staticCluster("backend", false, backend) + tlsUpstream("default.test", caFile, "", "", "") + `    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http_protocol_options: {} }
        upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true }
`
	p := startSkiff(t, `node: { id: e2e-auto-sni }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: backend } }]
  clusters:
`+cluster)
	c := &nethttp.Client{Timeout: 10 * time.Second}
	get := func(host string) (int, string) {
		req, err := nethttp.NewRequest("GET", "http://"+p.Addr(t, "http")+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for range 2 { // the second round reuses each name's connection
		for _, host := range []string{"a.test", "b.test:8443"} {
			want := "sni " + strings.TrimSuffix(host, ":8443")
			if code, body := get(host); code != 200 || body != want {
				t.Errorf("Host %s: %d %q, want 200 %q", host, code, body, want)
			}
		}
	}
	if code, body := get("c.test"); code != 503 {
		t.Errorf("Host c.test, which the certificate does not name: %d %q, want 503", code, body)
	}
	r := runSkiff(t, "admin", "--runtime-dir", p.RuntimeDir, "stats", "--filter", `^cluster\.backend\.ssl\.(handshake|fail_verify_san)$`)
	for _, want := range []string{"cluster.backend.ssl.handshake: 2", "cluster.backend.ssl.fail_verify_san: 1"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stats: %q, want %s", r.stdout, want)
		}
	}
}
