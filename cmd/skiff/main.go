// Command skiff is an xDS-driven L4/L7 proxy: a data plane that runs Envoy v3
// configuration, from a bootstrap file or a control plane.
//
//	skiff run -c bootstrap.yaml   run a data plane (Envoy's command-line flags work)
//	skiff demo                    run a self-contained demo on loopback
//	skiff version                 print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `skiff is an xDS-driven L4/L7 proxy data plane (Envoy v3 configuration).

Usage:
  skiff run -c FILE [flags]   run a data plane from an Envoy bootstrap (see 'skiff run -h')
  skiff demo [flags]          run a demo on loopback: an upstream and a proxy in front of it
  skiff controlplane [flags]  serve Envoy resources from files over ADS (xDS)
  skiff admin [flags] CMD     query or steer a running skiff over its gRPC admin API
  skiff stats [flags]         print a skiff's counters straight from its stats file
  skiff version               print the version

Envoy's own invocation also works: 'skiff -c FILE ...' is 'skiff run -c FILE ...'.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exitError carries a process exit code through the subcommands.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd := args[0]; {
	case cmd == "run":
		err = runCmd(args[1:], stdout, stderr)
	case cmd == "demo":
		err = demoCmd(args[1:], stdout, stderr)
	case cmd == "controlplane":
		err = controlplaneCmd(args[1:], stdout, stderr)
	case cmd == "admin":
		err = adminCmd(args[1:], stdout, stderr)
	case cmd == "stats":
		err = statsCmd(args[1:], stdout, stderr)
	case cmd == "version" || cmd == "--version":
		fmt.Fprintf(stdout, "skiff %s\n", versionString())
	case cmd == "help" || cmd == "-h" || cmd == "--help":
		fmt.Fprint(stdout, usage)
	case len(cmd) > 1 && cmd[0] == '-':
		// Scripts written for Envoy call the binary with flags only.
		err = runCmd(args, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "skiff: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintf(stderr, "skiff: %v\n", err)
		return 1
	}
}
