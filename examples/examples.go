// Package examples holds skiff's example configurations. They are embedded so
// that `skiff demo` runs without the source tree, and tested so that they keep
// working.
package examples

import _ "embed"

//go:embed demo/bootstrap.yaml
var demoBootstrap []byte

// DemoBootstrap returns the bootstrap `skiff demo` runs (examples/demo/bootstrap.yaml).
func DemoBootstrap() []byte { return append([]byte(nil), demoBootstrap...) }
