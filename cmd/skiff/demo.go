package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/skiffproxy/skiff/examples"
	"github.com/skiffproxy/skiff/internal/runtimedir"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/xds/bootstrap"
	"github.com/skiffproxy/skiff/xds/controlplane"
)

const (
	demoSource       = "examples/demo/bootstrap.yaml (embedded)"
	demoResourcesDir = "examples/demo/resources"
)

// demoCmd runs, in one process, skiff's three parts on loopback: a file-backed
// control plane serving examples/demo/resources, a data plane that takes its
// configuration from it over ADS, and two small HTTP upstreams (blue and green)
// to proxy to. Editing the resource files changes what the data plane does.
func demoCmd(args []string, stdout, stderr io.Writer) error {
	tuneGC()
	fs := flag.NewFlagSet("skiff demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listenPort := fs.Uint("listen-port", 10000, "port of the proxy's listener on 127.0.0.1")
	upstreamPort := fs.Uint("upstream-port", 10001, "port of the blue upstream on 127.0.0.1 (green is the next port)")
	xdsPort := fs.Uint("xds-port", 18000, "port of the control plane on 127.0.0.1")
	resources := fs.String("resources", "", "the control plane's resource directory (default: "+demoResourcesDir+" when run from the source tree with the default ports, else a copy in a temporary directory)")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warning, error, critical, off")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, p := range []uint{*listenPort, *upstreamPort, *upstreamPort + 1, *xdsPort} {
		if p == 0 || p > 65535 {
			return errors.New("ports must be between 1 and 65535")
		}
	}
	log, closeLog, err := newLogger(new(slog.LevelVar), *logLevel, "text", "", stderr)
	if err != nil {
		return err
	}
	defer closeLog()

	defaultPorts := *listenPort == 10000 && *upstreamPort == 10001
	dir := *resources
	if dir == "" {
		if fi, err := os.Stat(demoResourcesDir); err == nil && fi.IsDir() && defaultPorts {
			dir = demoResourcesDir // edit the files in the source tree
		} else {
			tmp, err := os.MkdirTemp("", "skiff-demo-resources-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			if err := writeDemoResources(tmp, *listenPort, *upstreamPort); err != nil {
				return err
			}
			dir = tmp
		}
	}

	b, err := bootstrap.Parse(demoSource, examples.DemoBootstrap())
	if err != nil {
		return err
	}
	xdsCluster := b.GetStaticResources().GetClusters()[0]
	xdsCluster.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().PortSpecifier = portValue(*xdsPort)
	b.Admin = nil // the demo serves no admin API; `skiff run` does

	srv, err := newServer(b, demoSource, log, tuning{drainTime: time.Second}, stats.NewStore())
	if err != nil {
		return err
	}
	runDir, err := os.MkdirTemp("", "skiff-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runDir)
	rd, err := runtimedir.Open(runDir)
	if err != nil {
		return err
	}
	defer rd.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	for i, color := range []string{"blue", "green"} {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *upstreamPort+uint(i)))
		if err != nil {
			return fmt.Errorf("demo upstream %s: %w (pick other ports with --upstream-port)", color, err)
		}
		hs := &http.Server{Handler: demoHandler(color), ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
	}

	cp, err := controlplane.New(controlplane.Options{Dir: dir, Logger: log.With("component", "controlplane")})
	if err != nil {
		return err
	}
	cpLn, err := controlplane.Listen(fmt.Sprintf("127.0.0.1:%d", *xdsPort))
	if err != nil {
		return fmt.Errorf("demo control plane: %w (pick another port with --xds-port)", err)
	}
	cpDone := make(chan error, 1)
	go func() { cpDone <- cp.Serve(ctx, cpLn) }()
	defer func() { <-cpDone }()

	fmt.Fprintf(stdout, `skiff demo: a control plane, a data plane and two upstreams, in this process, on loopback.

  control plane  127.0.0.1:%d  serving the files in %s
  data plane     127.0.0.1:%d  its listener and cluster come from the control plane over ADS
  upstreams      blue on 127.0.0.1:%d, green on 127.0.0.1:%d

  try it:     curl http://127.0.0.1:%d/
  change it:  in %s, set port_value %d to %d,
              save, and curl again: green answers; nothing restarted
  stop it:    Ctrl-C (or kill -TERM %d)
`, *xdsPort, dir, *listenPort, *upstreamPort, *upstreamPort+1, *listenPort,
		filepath.Join(dir, "endpoints.yaml"), *upstreamPort, *upstreamPort+1, os.Getpid())
	err = serve(ctx, serveOptions{srv: srv.srv, snap: srv.snap, boot: b, source: demoSource, log: log, drainTime: time.Second})
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w (pick another with --listen-port)", err)
	}
	return err
}

// writeDemoResources copies the embedded resource files into dir with the
// chosen ports.
func writeDemoResources(dir string, listenPort, upstreamPort uint) error {
	ports := strings.NewReplacer(
		"port_value: 10000", fmt.Sprintf("port_value: %d", listenPort),
		"port_value: 10001", fmt.Sprintf("port_value: %d", upstreamPort),
		"port value 10001", fmt.Sprintf("port value %d", upstreamPort),
		"on port\n# 10001", fmt.Sprintf("on port\n# %d", upstreamPort),
		"green on 10002", fmt.Sprintf("green on %d", upstreamPort+1),
	)
	return fs.WalkDir(examples.DemoResources(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(examples.DemoResources(), path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, path), []byte(ports.Replace(string(data))), 0o644)
	})
}

func demoHandler(color string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from the skiff demo upstream! (%s)\n\nYour request reached me through skiff's tcp_proxy:\n  %s %s %s\n  seen from %s (skiff's side of the upstream connection)\n",
			color, r.Method, r.URL.Path, r.Proto, r.RemoteAddr)
	})
}

func portValue(p uint) *corev3.SocketAddress_PortValue {
	return &corev3.SocketAddress_PortValue{PortValue: uint32(p)}
}
