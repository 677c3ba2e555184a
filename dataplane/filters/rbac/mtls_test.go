package rbac

// These tests run the filters over real mutual TLS: a loopback listener
// terminates TLS with a DownstreamTlsContext (validation_context.trusted_ca,
// client certificates optional) as the listener's filter chain does, and
// hands the session to the filters in filter.Conn.TLS; the HTTP filter runs
// in a real HTTP connection manager, which passes it on as
// StreamInfo.DownstreamTLS.

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync/atomic"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/hcm"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/kittest"
	"github.com/skiffproxy/skiff/dataplane/filters/router"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/bufpool"
	"github.com/skiffproxy/skiff/internal/nettest"
	"github.com/skiffproxy/skiff/internal/protoyaml"
	"github.com/skiffproxy/skiff/internal/tlstest"
)

// pki is a CA, the server's certificate, and clients' certificates.
type pki struct {
	ca                 *tlstest.CA
	server             *tlstest.Leaf
	client, other, dns *tlstest.Leaf
	serverTLS          *tlscontext.Server
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{ca: tlstest.NewCA(t, "test ca")}
	p.server = p.ca.Issue(t, "server", "localhost")
	p.client = p.ca.Issue(t, "client", "spiffe://test/client")
	p.other = p.ca.Issue(t, "other", "spiffe://test/other")
	p.dns = p.ca.Issue(t, "by-dns", "client.test")
	var pb tlsv3.DownstreamTlsContext
	y := `common_tls_context:
  tls_certificates: [{certificate_chain: {inline_string: "` + pemLine(p.server.CertPEM) + `"}, private_key: {inline_string: "` + pemLine(p.server.KeyPEM) + `"}}]
  validation_context: {trusted_ca: {inline_string: "` + pemLine(p.ca.PEM) + `"}}`
	if err := protoyaml.Unmarshal([]byte(y), &pb); err != nil {
		t.Fatalf("DownstreamTlsContext: %v", err)
	}
	var err error
	if p.serverTLS, err = tlscontext.NewServer(&pb, tlscontext.Secrets{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// pemLine escapes PEM for a double-quoted YAML string.
func pemLine(b []byte) string { return strings.ReplaceAll(string(b), "\n", `\n`) }

// clientConfig is a client's TLS config, presenting leaf (nil: none).
func (p *pki) clientConfig(t *testing.T, leaf *tlstest.Leaf) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost"}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLS(t)}
	}
	return cfg
}

// serveTLS accepts on a loopback listener, terminates TLS with srv (nil:
// plaintext) as a filter chain's transport socket does, and hands each
// connection to serve. It returns the address; the listener and the
// connections end with the test.
func serveTLS(t *testing.T, srv *tlscontext.Server, serve func(context.Context, *filter.Conn)) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var ids atomic.Uint64
	addr := nettest.Serve(t, func(nc net.Conn) {
		defer nc.Close()
		c := filter.NewConn(nc, ids.Add(1), "test", nil)
		if srv != nil {
			tc := tls.Server(nc, srv.Config)
			if err := tc.HandshakeContext(ctx); err != nil {
				return
			}
			cs := tc.ConnectionState()
			c.Conn, c.TLS, c.TLSLocal = tc, &cs, srv.LocalCertificate(&cs)
		}
		serve(ctx, c)
	})
	t.Cleanup(cancel) // runs before Serve's, which waits for the connections
	return addr
}

// buildHCM is an HTTP connection manager whose only route answers 200 "ok",
// behind an RBAC filter with rules (YAML of an RBAC's rules).
func buildHCM(t *testing.T, rules string) filter.TerminalFilter {
	t.Helper()
	r := registry(t)
	if err := r.RegisterHTTP(router.Factory{}); err != nil {
		t.Fatal(err)
	}
	hf := hcm.Factory{Registry: r}
	if err := r.RegisterNetwork(hf); err != nil {
		t.Fatal(err)
	}
	y := `stat_prefix: in
route_config:
  virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: ok}}}]}]
http_filters:
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules: ` + rules + `
- name: envoy.filters.http.router
  typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
`
	fc, _ := kittest.Context()
	fc.Buffers = bufpool.New()
	fc.Listener = "test"
	nf, err := r.NetworkFilter(hcm.Name, anyOf(t, y, &hcmv3.HttpConnectionManager{}), fc)
	if err != nil {
		t.Fatalf("hcm: %v", err)
	}
	return nf.(filter.TerminalFilter)
}

// get sends GET / over a new connection (cfg nil: plaintext) and returns the
// status and body.
func get(t *testing.T, addr string, cfg *tls.Config) (int, string) {
	t.Helper()
	scheme := "http"
	if cfg != nil {
		scheme = "https"
	}
	c := &nethttp.Client{Transport: &nethttp.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(scheme + "://" + addr + "/")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// TestHTTPAuthenticatedOverMTLS: the HTTP filter matches authenticated
// principals against the client certificate the connection presented.
func TestHTTPAuthenticatedOverMTLS(t *testing.T) {
	p := newPKI(t)
	named := serveTLS(t, p.serverTLS, buildHCM(t, `{policies: {client: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {exact: "spiffe://test/client"}}}, {authenticated: {principal_name: {exact: client.test}}}]}}}`).ServeConn)
	anyTLS := buildHCM(t, `{policies: {tls: {permissions: [{any: true}], principals: [{authenticated: {}}]}}}`)
	anyOverTLS := serveTLS(t, p.serverTLS, anyTLS.ServeConn)
	anyPlain := serveTLS(t, nil, anyTLS.ServeConn)
	for _, tc := range []struct {
		name   string
		addr   string
		cfg    *tls.Config
		status int
	}{
		{"URI SAN", named, p.clientConfig(t, p.client), 200},
		{"DNS SAN", named, p.clientConfig(t, p.dns), 200},
		{"other client", named, p.clientConfig(t, p.other), 403},
		{"no client certificate", named, p.clientConfig(t, nil), 403},
		{"any TLS, with a certificate", anyOverTLS, p.clientConfig(t, p.other), 200},
		{"any TLS, without a certificate", anyOverTLS, p.clientConfig(t, nil), 200},
		{"plaintext", anyPlain, nil, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := get(t, tc.addr, tc.cfg)
			want := "ok"
			if tc.status == 403 {
				want = DeniedBody
			}
			if status != tc.status || body != want {
				t.Errorf("got %d %q, want %d %q", status, body, tc.status, want)
			}
		})
	}
}

// TestNetworkAuthenticatedOverMTLS: the network filter lets a connection
// whose client certificate matches through, and closes the others.
func TestNetworkAuthenticatedOverMTLS(t *testing.T) {
	p := newPKI(t)
	f, st := buildNetwork(t, `
stat_prefix: tls_in
rules:
  policies:
    client:
      permissions: [{any: true}]
      principals: [{authenticated: {principal_name: {exact: "spiffe://test/client"}}}]
`)
	results := make(chan error, 1)
	addr := serveTLS(t, p.serverTLS, func(ctx context.Context, c *filter.Conn) {
		err := f.OnConnection(ctx, c)
		results <- err
		if err == nil {
			io.WriteString(c, "welcome")
		}
	})
	for _, tc := range []struct {
		name    string
		leaf    *tlstest.Leaf
		allowed bool
	}{
		{"client", p.client, true},
		{"other client", p.other, false},
		{"no client certificate", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", addr, p.clientConfig(t, tc.leaf))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// TLS 1.3 ends the handshake before the server has checked the
			// client's certificate: the server's answer or close tells.
			got, _ := io.ReadAll(c)
			err = <-results
			var de *DeniedError
			switch {
			case tc.allowed && (err != nil || string(got) != "welcome"):
				t.Errorf("err %v, read %q; want the connection served", err, got)
			case !tc.allowed && (!errors.As(err, &de) || de.Policy != "" || len(got) != 0):
				t.Errorf("err %v, read %q; want it denied, no policy matched", err, got)
			}
		})
	}
	for name, want := range map[string]int64{"tls_in.rbac.allowed": 1, "tls_in.rbac.denied": 2} {
		if got := counter(t, st, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}
