package examples_test

import (
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/filters"
	"github.com/skiffproxy/skiff/examples"
	"github.com/skiffproxy/skiff/internal/stats"
	"github.com/skiffproxy/skiff/xds/bootstrap"
	"github.com/skiffproxy/skiff/xds/controlplane"
)

// TestExamplesValidate loads every example bootstrap and checks it the way
// `skiff run --mode validate` does, so the examples cannot rot.
func TestExamplesValidate(t *testing.T) {
	var found int
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "bootstrap.yaml" {
			return err
		}
		found++
		t.Run(path, func(t *testing.T) {
			b, err := bootstrap.Load(path, "")
			if err != nil {
				t.Fatal(err)
			}
			reg, err := filters.Builtin()
			if err != nil {
				t.Fatal(err)
			}
			srv := dataplane.NewServer(dataplane.Options{Logger: slog.New(slog.DiscardHandler), Registry: reg, Stats: stats.NewStore()})
			snap := &dataplane.Snapshot{Listeners: b.GetStaticResources().GetListeners(), Clusters: b.GetStaticResources().GetClusters()}
			if err := srv.Validate(snap); err != nil {
				t.Fatal(err)
			}
		})
		return nil
	})
	if err != nil || found == 0 {
		t.Fatalf("walking the examples: %v (%d found)", err, found)
	}
}

func TestDemoBootstrapIsTheFile(t *testing.T) {
	onDisk, err := os.ReadFile("demo/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(onDisk) != string(examples.DemoBootstrap()) {
		t.Fatal("the embedded demo bootstrap differs from examples/demo/bootstrap.yaml")
	}
	entries, err := fs.ReadDir(examples.DemoResources(), ".")
	if err != nil || len(entries) != 3 {
		t.Fatalf("embedded demo resources: %v, %v", entries, err)
	}
}

// TestDemoResourcesServe loads the demo's resource files the way the demo's
// control plane does.
func TestDemoResourcesServe(t *testing.T) {
	if _, err := controlplane.New(controlplane.Options{Dir: "demo/resources", Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
}
