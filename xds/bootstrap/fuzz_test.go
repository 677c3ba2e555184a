package bootstrap_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/xds/bootstrap"
)

// FuzzParse checks that the loader never panics, that every error starts with the
// file name, and that every bootstrap it accepts has uniquely named listeners and
// clusters and survives a binary round trip through Parse.
func FuzzParse(f *testing.F) {
	// The file names to pick from, one per format; the seeds' first argument
	// indexes it.
	names := [...]string{"envoy.yaml", "envoy.json", "envoy.pb", "envoy.pb_text", "envoy-config"}
	for i, name := range []string{"tcp_proxy.yaml", "tcp_proxy.json", "", "tcp_proxy.pb_text", "unnamed_listeners.yaml"} {
		if name != "" {
			f.Add(uint8(i), readTestdata(f, name))
		}
	}
	f.Add(uint8(0), []byte("tracing: {}\nnode: {id: a, id: b}\n"))
	f.Add(uint8(0), []byte("static_resources: {clusters: [{name: c}, {name: c}]}\n"))
	f.Add(uint8(1), []byte(`{"admin": {"address": {"socket_address": {"port_value": 70000}}}}`))
	f.Add(uint8(2), []byte("\x12\x05\x0a\x03\xb8\x3e\x01"))
	f.Add(uint8(3), []byte("node { id: \"a\" }"))
	f.Fuzz(func(t *testing.T, format uint8, data []byte) {
		name := names[int(format)%len(names)]
		b, err := bootstrap.Parse(name, data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), name+": ") {
				t.Fatalf("error does not start with the file name: %v", err)
			}
			return
		}
		listeners := map[string]bool{}
		for _, l := range b.GetStaticResources().GetListeners() {
			if l.GetName() == "" || listeners[l.GetName()] {
				t.Fatalf("listener name %q empty or repeated", l.GetName())
			}
			listeners[l.GetName()] = true
		}
		clusters := map[string]bool{}
		for _, c := range b.GetStaticResources().GetClusters() {
			if clusters[c.GetName()] {
				t.Fatalf("cluster name %q repeated", c.GetName())
			}
			clusters[c.GetName()] = true
		}
		bin, err := proto.Marshal(b)
		if err != nil {
			t.Fatalf("accepted bootstrap does not marshal: %v", err)
		}
		again, err := bootstrap.Parse("again.pb", bin)
		if err != nil {
			t.Fatalf("accepted bootstrap refused in binary form: %v", err)
		}
		if !proto.Equal(b, again) {
			t.Fatalf("binary round trip changed the bootstrap")
		}
	})
}
