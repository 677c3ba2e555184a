// Package bootstrap loads skiff's bootstrap configuration: an Envoy
// envoy.config.bootstrap.v3.Bootstrap, read the way Envoy reads its -c file and its
// --config-yaml flag, and checked against what this release of skiff supports.
//
// The format follows the file name as in Envoy: ".pb" is binary proto, ".pb_text"
// text proto, ".json" JSON, and anything else (".yaml", ".yml", no extension) YAML,
// which also reads JSON. Every error starts with where the configuration came from
// and then names the field:
//
//	envoy.yaml: static_resources.listeners[0].address.socket_address.port_value: invalid value "abc" for uint32
//	envoy.yaml: tracing: not supported by skiff (field 9 of envoy.config.bootstrap.v3.Bootstrap)
//
// What is checked here: syntax and types (internal/protoyaml), the protoc-gen-validate
// rules of every message (cfgerr.Validate), the top-level fields skiff supports, and
// unique listener and cluster names. What is not: the content of listeners and
// clusters beyond their PGV rules, which the dataplane's builders check when they
// build them; their errors belong under ListenerPath(i) or ClusterPath(i), after
// SourceName.
//
// Supported bootstrap fields in this release:
//
//   - node: id, cluster, metadata, locality, user_agent_name, user_agent_version,
//     user_agent_build_version, client_features (all informational, sent to the
//     control plane as they are).
//   - static_resources: listeners, clusters, secrets (TLS certificates and
//     validation contexts that TLS contexts name; checked by the dataplane).
//   - dynamic_resources, layered_runtime: accepted as a whole (beyond PGV); their
//     content is for the components that use them to check.
//   - admin: address; access_log, access_log_path and profile_path are accepted.
//   - cluster_manager: accepted only when empty.
//   - stats_flush_interval: accepted (within PGV's [1ms, 5m) range) and has no
//     effect. It paces the flush to stats sinks, and skiff has no sinks (stats_sinks
//     is refused), so there is nothing for it to change.
//   - bootstrap_extensions: envoy.bootstrap.internal_listener alone (as
//     istio-agent's bootstrap has it), checked and without effect: it only lets
//     listeners be internal ones, and skiff refuses those where they are defined.
//   - stats_config: stats_matcher, use_all_default_tags, stats_tags and
//     allow_default_tag_overrides (see dataplane/statsconfig); not
//     histogram_bucket_settings (skiff's histograms have fixed log-linear
//     buckets).
//
// Anything else that is set is an error rather than ignored.
package bootstrap

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	internallistenerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/internal_listener/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/statsconfig"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

// OverrideName is how errors in the --config-yaml text are labelled.
const OverrideName = "--config-yaml"

// Load reads the bootstrap file at path and merges overrideYAML (Envoy's
// --config-yaml, YAML or JSON) over it with proto.Merge, which has the semantics of
// Envoy's MergeFrom: set scalars replace, messages merge, lists append. Either may be
// empty, not both. Errors in one source are labelled with its name (path or
// OverrideName); errors found in the merged result with SourceName(path, overrideYAML).
//
// Like Envoy, Load gives each static listener without a name a generated UUID name.
func Load(path, overrideYAML string) (*bootstrapv3.Bootstrap, error) {
	if path == "" && overrideYAML == "" {
		return nil, errors.New("bootstrap: no configuration: give a file (-c) or " + OverrideName)
	}
	b := &bootstrapv3.Bootstrap{}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = fmt.Errorf("%s: %w", pe.Op, pe.Err) // path is already the label
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if b, err = decode(path, data); err != nil {
			return nil, err
		}
	}
	if overrideYAML != "" {
		o, err := decode(OverrideName, []byte(overrideYAML))
		if err != nil {
			return nil, err
		}
		proto.Merge(b, o)
	}
	if err := finish(b); err != nil {
		return nil, fmt.Errorf("%s: %w", SourceName(path, overrideYAML), err)
	}
	return b, nil
}

// Parse decodes and checks a bootstrap held in memory, as Load does for a file.
// name picks the format by its extension and prefixes every error.
func Parse(name string, data []byte) (*bootstrapv3.Bootstrap, error) {
	b, err := decode(name, data)
	if err != nil {
		return nil, err
	}
	if err := finish(b); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

// SourceName is the label Load puts before errors about the merged configuration,
// for callers that report later errors about it (a listener the dataplane could not
// build) the same way: the file, OverrideName, or both.
func SourceName(path, overrideYAML string) string {
	switch {
	case path == "":
		return OverrideName
	case overrideYAML == "":
		return path
	default:
		return path + " with " + OverrideName
	}
}

// ListenerPath is the field path of the i-th static listener, under which the
// caller places errors from building it.
func ListenerPath(i int) string { return fmt.Sprintf("static_resources.listeners[%d]", i) }

// ClusterPath is the field path of the i-th static cluster.
func ClusterPath(i int) string { return fmt.Sprintf("static_resources.clusters[%d]", i) }

// SecretPath is the field path of the i-th static secret.
func SecretPath(i int) string { return fmt.Sprintf("static_resources.secrets[%d]", i) }

// ApplyNodeFlags applies Envoy's --service-node and --service-cluster flags, which
// override node.id and node.cluster when they are non-empty.
func ApplyNodeFlags(b *bootstrapv3.Bootstrap, serviceNode, serviceCluster string) {
	if serviceNode == "" && serviceCluster == "" {
		return
	}
	if b.Node == nil {
		b.Node = &corev3.Node{}
	}
	if serviceNode != "" {
		b.Node.Id = serviceNode
	}
	if serviceCluster != "" {
		b.Node.Cluster = serviceCluster
	}
}

// decode reads one source in the format its name implies. Errors carry the name.
func decode(name string, data []byte) (*bootstrapv3.Bootstrap, error) {
	b := &bootstrapv3.Bootstrap{}
	var err error
	switch {
	case strings.HasSuffix(name, ".pb"):
		if err = proto.Unmarshal(data, b); err != nil {
			err = fmt.Errorf("not a binary %s: %w", b.ProtoReflect().Descriptor().FullName(), err)
		} else {
			// The binary format keeps fields it does not know; Envoy refuses them
			// in a bootstrap, and so do the YAML, JSON and text readers.
			err = unknownFields(b.ProtoReflect(), "")
		}
	case strings.HasSuffix(name, ".pb_text"):
		if err = prototext.Unmarshal(data, b); err != nil {
			err = fmt.Errorf("not a text %s: %w", b.ProtoReflect().Descriptor().FullName(), err)
		}
	case strings.HasSuffix(name, ".json"):
		err = protoyaml.UnmarshalJSON(data, b)
	default:
		err = protoyaml.Unmarshal(data, b)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

// finish checks a decoded (and merged) bootstrap and names unnamed listeners.
func finish(b *bootstrapv3.Bootstrap) error {
	if err := cfgerr.Validate(b); err != nil {
		return err
	}
	if err := checkSupported(b); err != nil {
		return err
	}
	if err := checkNames(b); err != nil {
		return err
	}
	nameListeners(b)
	return nil
}

// checkSupported refuses every field skiff would otherwise ignore (see the package
// documentation for the list and the reasons).
func checkSupported(b *bootstrapv3.Bootstrap) error {
	if err := cfgerr.OnlyFields(b, "node", "static_resources", "dynamic_resources",
		"cluster_manager", "stats_flush_interval", "layered_runtime", "admin",
		"typed_dns_resolver_config", "dns_resolution_config", "use_tcp_for_dns_lookups", "bootstrap_extensions",
		"stats_config"); err != nil {
		return err
	}
	if _, err := statsconfig.New(b.GetStatsConfig()); err != nil {
		return cfgerr.Field("stats_config", err)
	}
	for i, e := range b.GetBootstrapExtensions() {
		if err := checkExtension(e); err != nil {
			return cfgerr.Index("bootstrap_extensions", i, err)
		}
	}
	if b.Node != nil {
		err := cfgerr.OnlyFields(b.Node, "id", "cluster", "metadata", "locality", "user_agent_name",
			"user_agent_version", "user_agent_build_version", "client_features")
		if err != nil {
			return cfgerr.Field("node", err)
		}
	}
	if b.StaticResources != nil {
		if err := cfgerr.OnlyFields(b.StaticResources, "listeners", "clusters", "secrets"); err != nil {
			return cfgerr.Field("static_resources", err)
		}
	}
	if b.Admin != nil {
		if err := cfgerr.OnlyFields(b.Admin, "address", "access_log", "access_log_path", "profile_path"); err != nil {
			return cfgerr.Field("admin", err)
		}
	}
	if b.ClusterManager != nil {
		if err := cfgerr.OnlyFields(b.ClusterManager); err != nil {
			return cfgerr.Field("cluster_manager", err)
		}
	}
	return nil
}

// internalListenerType is the one bootstrap extension skiff takes.
const internalListenerType = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"

// checkExtension accepts Envoy's envoy.bootstrap.internal_listener (as
// istio-agent's bootstrap carries it), which only lets listeners be
// internal ones: skiff has none (a listener with an envoy_internal_address is
// refused where it is defined), so it changes nothing. Any other extension
// is refused.
func checkExtension(e *corev3.TypedExtensionConfig) error {
	url := filter.TypedConfigURL(e.GetTypedConfig())
	if url[strings.LastIndexByte(url, '/')+1:] != internalListenerType {
		return cfgerr.Errorf("typed_config", "extension %q: type %s is not supported by skiff (only %s)", e.GetName(), url, internalListenerType)
	}
	var il internallistenerv3.InternalListener
	if err := filter.DecodeTypedConfig(e.GetTypedConfig(), &il); err != nil {
		return cfgerr.Errorf("typed_config", "extension %q: decoding %s: %w", e.GetName(), url, err)
	}
	return cfgerr.Field("typed_config", cfgerr.Validate(&il))
}

// checkNames refuses two static listeners or two static clusters with one name, as
// Envoy does. Unnamed listeners are left to nameListeners; an unnamed cluster has
// already failed PGV.
func checkNames(b *bootstrapv3.Bootstrap) error {
	sr := b.GetStaticResources()
	listeners := make(map[string]int, len(sr.GetListeners()))
	for i, l := range sr.GetListeners() {
		if l.GetName() == "" {
			continue
		}
		if first, dup := listeners[l.GetName()]; dup {
			return cfgerr.Errorf(ListenerPath(i)+".name", "duplicate listener name %q (also %s)", l.GetName(), ListenerPath(first))
		}
		listeners[l.GetName()] = i
	}
	clusters := make(map[string]int, len(sr.GetClusters()))
	for i, c := range sr.GetClusters() {
		if first, dup := clusters[c.GetName()]; dup {
			return cfgerr.Errorf(ClusterPath(i)+".name", "duplicate cluster name %q (also %s)", c.GetName(), ClusterPath(first))
		}
		clusters[c.GetName()] = i
	}
	return nil
}

// nameListeners gives each unnamed static listener a UUID name, as Envoy does. Envoy
// picks a random one; skiff derives it from the listener's position and content, so
// that the same file names its listeners the same way in every process, which a hot
// restart successor and the tests rely on.
func nameListeners(b *bootstrapv3.Bootstrap) {
	for i, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() == "" {
			l.Name = generatedName(i, l)
		}
	}
}

// generatedName is an RFC 9562 version 8 (application-defined) UUID from a SHA-256
// of the listener's index and deterministic encoding.
func generatedName(i int, l *listenerv3.Listener) string {
	body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(l) // l came from a decoder: it marshals
	h := sha256.New()
	fmt.Fprintf(h, "skiff static listener %d\x00", i)
	h.Write(body)
	u := h.Sum(nil)[:16]
	u[6] = u[6]&0x0f | 0x80 // version 8
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// unknownFields reports the first message under m (fields in number order, map
// entries in key order) that carries fields its descriptor does not know.
func unknownFields(m protoreflect.Message, path string) error {
	if raw := m.GetUnknown(); len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return cfgerr.Errorf(path, "unknown fields in %s", m.Descriptor().FullName())
		}
		return cfgerr.Errorf(path, "unknown field number %d (wire type %d) in %s", num, typ, m.Descriptor().FullName())
	}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		p := cfgerr.Join(path, fd.TextName())
		v := m.Get(fd)
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				continue
			}
			var keys []protoreflect.MapKey
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) })
			for _, k := range keys {
				if err := unknownFields(v.Map().Get(k).Message(), p+"["+k.String()+"]"); err != nil {
					return err
				}
			}
		case fd.IsList():
			if fd.Message() == nil {
				continue
			}
			for j := range v.List().Len() {
				if err := unknownFields(v.List().Get(j).Message(), fmt.Sprintf("%s[%d]", p, j)); err != nil {
					return err
				}
			}
		case fd.Message() != nil:
			if err := unknownFields(v.Message(), p); err != nil {
				return err
			}
		}
	}
	return nil
}
