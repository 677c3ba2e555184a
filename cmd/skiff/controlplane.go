package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/skiffproxy/skiff/xds/controlplane"
)

// controlplaneCmd serves the Envoy resources of a directory over xDS, and pushes
// every valid change to the files.
func controlplaneCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("skiff controlplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: skiff controlplane --resources DIR [flags]

Serves the Envoy v3 resources in DIR over gRPC xDS (ADS and the per-type services,
state of the world and delta) to any node. Every *.yaml, *.yml and *.json file below
DIR holds one resource with its "@type", or a list of them. Changes to the files are
pushed as they happen; a file with a mistake is logged, with the field at fault, and
the last valid set keeps being served.

Flags:
`)
		fs.PrintDefaults()
	}
	dir := fs.String("resources", "", "directory of resource files (read recursively)")
	listen := fs.String("listen", "127.0.0.1:18000", "address to serve xDS on: host:port, or unix:PATH")
	var logLevel string
	fs.StringVar(&logLevel, "l", "info", "log level: trace, debug, info, warning, error, critical, off")
	fs.StringVar(&logLevel, "log-level", "info", "same as -l")
	logEncoding := fs.String("log-encoding", "text", "log encoding: text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (did you mean --resources %s?)", fs.Arg(0), fs.Arg(0))
	}
	if *dir == "" {
		return errors.New("no resources: give a directory with --resources DIR")
	}
	log, closeLog, err := newLogger(new(slog.LevelVar), logLevel, *logEncoding, "", stderr)
	if err != nil {
		return err
	}
	defer closeLog()

	srv, err := controlplane.New(controlplane.Options{Dir: *dir, Logger: log})
	if err != nil {
		return err
	}
	l, err := controlplane.Listen(*listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	address := l.Addr().String()
	if l.Addr().Network() == "unix" {
		address = "unix:" + address
	}
	log.Info("control plane serving", "address", address, "resources", *dir, "version", srv.Version())
	if err := srv.Serve(ctx, l); err != nil {
		return err
	}
	log.Info("control plane stopped", "version", srv.Version())
	return nil
}
