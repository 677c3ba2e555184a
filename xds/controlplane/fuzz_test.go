package controlplane

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// FuzzDecodeFile checks that no input crashes decodeFile, and that what it
// accepts can be served: a resource type of the cache, with a name.
func FuzzDecodeFile(f *testing.F) {
	for _, s := range []string{tcpProxyListener, httpListenerYAML, tcpListenersYAML, routeYAML, clusterYAML, endpointsJSON, "resources: []", "- {}", "", "[1, 2]"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	files, _ := filepath.Glob("testdata/istio-router/*.json")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(string(data), true)
		}
	}
	l := testLoader(f)
	f.Fuzz(func(t *testing.T, content string, isJSON bool) {
		name := "f.yaml"
		if isJSON {
			name = "f.json"
		}
		entries, err := l.decodeFile(name, []byte(content))
		if err != nil {
			if !strings.HasPrefix(err.Error(), name+": ") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		for _, e := range entries {
			if e.name == "" || e.name != cachev3.GetResourceName(e.res) {
				t.Fatalf("entry %q for a resource named %q", e.name, cachev3.GetResourceName(e.res))
			}
		}
		if _, errs := newSet(entries); len(errs) == 0 {
			s, _ := newSet(entries)
			if _, _, err := s.snapshot(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
