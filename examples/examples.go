// Package examples holds skiff's example configurations. They are embedded so
// that `skiff demo` runs without the source tree, and tested so that they keep
// working.
package examples

import (
	"embed"
	"io/fs"
)

//go:embed demo/bootstrap.yaml demo/resources/*.yaml
var demo embed.FS

// DemoBootstrap returns the bootstrap `skiff demo` runs (examples/demo/bootstrap.yaml).
func DemoBootstrap() []byte {
	b, err := demo.ReadFile("demo/bootstrap.yaml")
	if err != nil {
		panic(err) // embedded at build time
	}
	return b
}

// DemoResources returns the resource files the demo's control plane serves
// (examples/demo/resources).
func DemoResources() fs.FS {
	sub, err := fs.Sub(demo, "demo/resources")
	if err != nil {
		panic(err) // embedded at build time
	}
	return sub
}
