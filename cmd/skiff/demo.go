package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/skiffproxy/skiff/examples"
	"github.com/skiffproxy/skiff/internal/runtimedir"
	"github.com/skiffproxy/skiff/xds/bootstrap"
)

const demoSource = "examples/demo/bootstrap.yaml (embedded)"

// demoCmd runs, in one process, a small HTTP upstream on loopback and a skiff data
// plane from the embedded demo bootstrap proxying to it.
func demoCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("skiff demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listenPort := fs.Uint("listen-port", 10000, "port of the proxy's listener on 127.0.0.1")
	upstreamPort := fs.Uint("upstream-port", 10001, "port of the demo upstream on 127.0.0.1")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warning, error, critical, off")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listenPort > 65535 || *upstreamPort > 65535 {
		return errors.New("ports must be at most 65535")
	}
	log, closeLog, err := newLogger(*logLevel, "text", "", stderr)
	if err != nil {
		return err
	}
	defer closeLog()

	b, err := bootstrap.Parse(demoSource, examples.DemoBootstrap())
	if err != nil {
		return err
	}
	sr := b.GetStaticResources()
	sr.GetListeners()[0].GetAddress().GetSocketAddress().PortSpecifier = portValue(*listenPort)
	sr.GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().PortSpecifier = portValue(*upstreamPort)

	srv, err := newServer(b, demoSource, log, time.Second)
	if err != nil {
		return err
	}
	dirPath, err := os.MkdirTemp("", "skiff-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dirPath)
	dir, err := runtimedir.Open(dirPath)
	if err != nil {
		return err
	}
	defer dir.Close()

	upstream, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *upstreamPort))
	if err != nil {
		return fmt.Errorf("demo upstream: %w (pick another with --upstream-port)", err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(demoHandler), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(upstream)
	defer hs.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(stdout, `skiff demo: a TCP proxy on 127.0.0.1:%d in front of a small HTTP upstream on 127.0.0.1:%d.

  try it:   curl http://127.0.0.1:%d/
  stop it:  Ctrl-C (or kill -TERM %d)

The configuration is an ordinary Envoy bootstrap: examples/demo/bootstrap.yaml.
`, *listenPort, *upstreamPort, *listenPort, os.Getpid())
	err = serve(ctx, srv.srv, srv.snap, demoSource, log, time.Second, b)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w (pick another with --listen-port)", err)
	}
	return err
}

func demoHandler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Hello from the skiff demo upstream!\n\nYour request reached me through skiff's tcp_proxy:\n  %s %s %s\n  seen from %s (skiff's side of the upstream connection)\n",
		r.Method, r.URL.Path, r.Proto, r.RemoteAddr)
}

func portValue(p uint) *corev3.SocketAddress_PortValue {
	return &corev3.SocketAddress_PortValue{PortValue: uint32(p)}
}
