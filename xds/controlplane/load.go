package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	yamlv2 "go.yaml.in/yaml/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/protoyaml"
)

// A FileError is a resource file that could not be used. Err is a *cfgerr.Error
// whose path is relative to the top of the file (a list element's starts with its
// index, e.g. "[2].filter_chains[0]"), a *protoyaml.SyntaxError, or an I/O error.
type FileError struct {
	File string
	Err  error
}

func (e *FileError) Error() string { return e.File + ": " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// entry is one decoded resource and where it came from.
type entry struct {
	res  types.Resource
	name string
	file string // "" for a resource given to Set
	path string // path of the resource in its file: "", "[i]" or "resources[i]"
}

// where names the place an entry came from, for messages.
func (e entry) where() string {
	switch {
	case e.file == "":
		return "Set"
	case e.path == "":
		return e.file
	default:
		return e.file + " at " + e.path
	}
}

// set is a complete set of resources: by type URL, sorted by name.
type set map[resource.Type][]entry

// typeURLs are the resource types go-control-plane's snapshot cache serves, in its
// order (the order ADS sends them in).
func typeURLs() []resource.Type {
	var urls []resource.Type
	for t := range types.UnknownType {
		url, err := cachev3.GetResponseTypeURL(t)
		if err != nil {
			panic(err) // every ResponseType below UnknownType has a URL
		}
		urls = append(urls, url)
	}
	return urls
}

// shortName is the message name of a resource type URL, e.g. "Listener".
func shortName(url resource.Type) string {
	return url[strings.LastIndexByte(url, '.')+1:]
}

// isResourceFile reports whether a file name is one loadDir reads.
func isResourceFile(name string) bool {
	switch filepath.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// loadDir reads every resource file below dir. Names starting with "." are
// skipped, files and directories alike: editors' swap files, and the "..data"
// directories of a Kubernetes ConfigMap volume, whose files are also linked from
// the top. Symbolic links to files are followed; to directories, not. Every bad
// file is reported, each as a *FileError, joined with errors.Join.
func (l loader) loadDir(dir string) (set, error) {
	var (
		errs    []error
		entries []entry
	)
	root := walkRoot(dir)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root {
				return err
			}
			errs = append(errs, &FileError{File: path, Err: err})
			return nil
		}
		if path != root && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() || !isResourceFile(d.Name()) {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			fi, err := os.Stat(path)
			if err != nil {
				errs = append(errs, &FileError{File: path, Err: err})
				return nil
			}
			if !fi.Mode().IsRegular() {
				return nil
			}
		} else if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, &FileError{File: path, Err: err})
			return nil
		}
		got, err := l.decodeFile(path, data)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		entries = append(entries, got...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading resource directory: %w", err)
	}
	s, dupErrs := newSet(entries)
	errs = append(errs, dupErrs...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// walkRoot is dir spelled so that filepath.WalkDir follows it when it is a
// symbolic link to a directory (it follows no link below it), and names what it
// finds below it as filepath.Join(dir, ...).
func walkRoot(dir string) string {
	return dir + string(filepath.Separator)
}

// newSet groups entries by type and sorts them by name. A second resource with
// the name of an earlier one of the same type is an error.
func newSet(entries []entry) (set, []error) {
	var errs []error
	s := make(set)
	seen := make(map[resource.Type]map[string]entry)
	for _, e := range entries {
		url := resource.APITypePrefix + string(e.res.ProtoReflect().Descriptor().FullName())
		if seen[url] == nil {
			seen[url] = make(map[string]entry)
		}
		if prev, dup := seen[url][e.name]; dup {
			err := fmt.Errorf("duplicate %s %q: already defined in %s", shortName(url), e.name, prev.where())
			if e.file == "" {
				errs = append(errs, err)
			} else {
				errs = append(errs, &FileError{File: e.file, Err: cfgerr.Field(cfgerr.Join(e.path, nameField(e.res)), err)})
			}
			continue
		}
		seen[url][e.name] = e
		s[url] = append(s[url], e)
	}
	for _, es := range s {
		slices.SortFunc(es, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	}
	return s, errs
}

// nameField is the field holding a resource's name.
func nameField(m proto.Message) string {
	if m.ProtoReflect().Descriptor().Fields().ByName("cluster_name") != nil {
		return "cluster_name" // ClusterLoadAssignment
	}
	return "name"
}

// loader decodes resource files.
type loader struct {
	resolver resolver
	// list is a message with one field, "repeated google.protobuf.Any resources = 1",
	// that a file holding a list of resources decodes into.
	list protoreflect.MessageType
}

func newLoader() (loader, error) {
	r, err := newResolver()
	if err != nil {
		return loader{}, err
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:       proto.String("skiff/controlplane/resource_list.proto"),
		Package:    proto.String("skiff.controlplane"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"google/protobuf/any.proto"},
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("ResourceList"),
			Field: []*descriptorpb.FieldDescriptorProto{{
				Name:     proto.String("resources"),
				JsonName: proto.String("resources"),
				Number:   proto.Int32(1),
				Label:    descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(),
				Type:     descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(),
				TypeName: proto.String(".google.protobuf.Any"),
			}},
		}},
	}, protoregistry.GlobalFiles)
	if err != nil {
		return loader{}, err
	}
	return loader{resolver: r, list: dynamicpb.NewMessageType(fd.Messages().Get(0))}, nil
}

// decodeFile decodes the resources in one file, which holds a single resource
// ({"@type": ..., fields}), a list of them, or {"resources": [list]}. A ".json"
// file must be JSON; any other is YAML, which includes JSON. An empty file holds
// no resources. Errors are *FileError.
func (l loader) decodeFile(file string, data []byte) ([]entry, error) {
	fail := func(err error) ([]entry, error) { return nil, &FileError{File: file, Err: err} }
	isJSON := filepath.Ext(file) == ".json"
	opts := protoyaml.Options{JSON: isJSON, Resolver: l.resolver}
	if empty(data, isJSON) {
		return nil, nil
	}
	// A first pass into a google.protobuf.Value finds syntax errors (and, in a
	// mapping, keys given twice) and tells the shape of the file.
	var shape structpb.Value
	if !isJSON && yamlList(data) {
		// protoyaml's duplicate-key check decodes the top of a YAML document as
		// a mapping; a sequence of two or more elements turns into entries with
		// nil keys, reported as "<nil>: key appears twice in one YAML mapping".
		// So a YAML list gets protoyaml's checks from checkYAMLList instead.
		if err := checkYAMLList(data); err != nil {
			return fail(err)
		}
		shape.Kind = &structpb.Value_ListValue{}
	} else if err := opts.Unmarshal(data, &shape); err != nil {
		return fail(err)
	}
	type located struct {
		any  *anypb.Any
		path string
	}
	var anys []located
	switch v := shape.GetKind().(type) {
	case *structpb.Value_StructValue:
		fields := v.StructValue.GetFields()
		if _, ok := fields["@type"]; ok {
			a := new(anypb.Any)
			if err := opts.Unmarshal(data, a); err != nil {
				return fail(err)
			}
			anys = append(anys, located{a, ""})
			break
		}
		if _, ok := fields["resources"]; !ok {
			return fail(cfgerr.Errorf("", `missing "@type": a resource file holds one resource, which names its type as in "@type": %s, or a list of them (a YAML sequence, a JSON array, or a "resources" list)`, resource.ListenerType))
		}
		list, err := l.decodeList(opts, data)
		if err != nil {
			return fail(err)
		}
		for i, a := range list {
			anys = append(anys, located{a, fmt.Sprintf("resources[%d]", i)})
		}
	case *structpb.Value_ListValue:
		// Decoded as {"resources": [...]}, with the "resources" taken off the paths.
		js := data
		if !isJSON {
			var err error
			if js, err = yaml.YAMLToJSON(data); err != nil {
				return fail(err) // cannot happen: the first pass converted it
			}
		}
		wrapped := slices.Concat([]byte(`{"resources":`), js, []byte("\n}"))
		list, err := l.decodeList(protoyaml.Options{JSON: true, Resolver: l.resolver}, wrapped)
		if err != nil {
			var ce *cfgerr.Error
			if errors.As(err, &ce) {
				err = &cfgerr.Error{Path: strings.TrimPrefix(ce.Path, "resources"), Err: ce.Err}
			}
			return fail(err)
		}
		for i, a := range list {
			anys = append(anys, located{a, fmt.Sprintf("[%d]", i)})
		}
	default:
		return fail(cfgerr.Errorf("", "expected a resource (a mapping with \"@type\") or a list of them, got %s", describe(&shape)))
	}
	entries := make([]entry, 0, len(anys))
	for _, a := range anys {
		e, err := l.unpack(a.any)
		if err != nil {
			return fail(cfgerr.Field(a.path, err))
		}
		e.file, e.path = file, a.path
		entries = append(entries, e)
	}
	return entries, nil
}

// decodeList decodes {"resources": [...]} into its Anys.
func (l loader) decodeList(opts protoyaml.Options, data []byte) ([]*anypb.Any, error) {
	m := l.list.New()
	if err := opts.Unmarshal(data, m.Interface()); err != nil {
		return nil, err
	}
	list := m.Get(m.Descriptor().Fields().ByNumber(1)).List()
	out := make([]*anypb.Any, list.Len())
	for i := range out {
		// The elements are dynamic messages of type Any; a round trip through the
		// wire format makes them *anypb.Any.
		b, err := proto.Marshal(list.Get(i).Message().Interface())
		if err != nil {
			return nil, cfgerr.Index("resources", i, err)
		}
		out[i] = new(anypb.Any)
		if err := proto.Unmarshal(b, out[i]); err != nil {
			return nil, cfgerr.Index("resources", i, err)
		}
	}
	return out, nil
}

// unpack turns an Any into a resource that can be served, and checks it: a type
// the snapshot cache serves, a name, and the protoc-gen-validate rules of the
// resource and of every typed_config in it.
func (l loader) unpack(a *anypb.Any) (entry, error) {
	m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{Resolver: l.resolver})
	if err != nil {
		return entry{}, cfgerr.Errorf("@type", "%v", err)
	}
	url := resource.APITypePrefix + string(m.ProtoReflect().Descriptor().FullName())
	if cachev3.GetResponseType(url) == types.UnknownType {
		names := make([]string, 0, types.UnknownType)
		for _, u := range typeURLs() {
			names = append(names, shortName(u))
		}
		return entry{}, cfgerr.Errorf("@type", "%s is not a resource type served over xDS (want one of %s)", m.ProtoReflect().Descriptor().FullName(), strings.Join(names, ", "))
	}
	name := cachev3.GetResourceName(m)
	if name == "" {
		return entry{}, cfgerr.Errorf(nameField(m), "missing: a resource served over xDS needs a name")
	}
	if err := validate(m, l.resolver); err != nil {
		return entry{}, err
	}
	return entry{res: m, name: name}, nil
}

// empty reports whether a file holds no document: only white space, or for YAML
// only comments.
func empty(data []byte, isJSON bool) bool {
	if len(bytes.TrimSpace(data)) == 0 {
		return true
	}
	if isJSON {
		return false
	}
	js, err := yaml.YAMLToJSON(data)
	return err == nil && bytes.Equal(bytes.TrimSpace(js), []byte("null"))
}

// yamlList reports whether data is a well-formed YAML document whose top is a sequence.
func yamlList(data []byte) bool {
	var top any
	if yamlv2.Unmarshal(data, &top) != nil {
		return false
	}
	_, ok := top.([]any)
	return ok
}

// checkYAMLList does for a YAML file whose top is a sequence what protoyaml does
// for one whose top is a mapping: it refuses a file of more than one document,
// and a key written twice in one mapping (which YAML-to-JSON conversion would
// silently resolve to the last).
func checkYAMLList(data []byte) error {
	dec := yamlv2.NewDecoder(bytes.NewReader(data))
	for docs := 1; ; docs++ {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// protoyaml words a syntax error with its line: it meets this one
			// before anything else.
			if perr := protoyaml.Unmarshal(data, new(structpb.Value)); perr != nil {
				return perr
			}
			return &protoyaml.SyntaxError{Format: "YAML", Err: err}
		}
		if docs > 1 && doc != nil {
			return &protoyaml.SyntaxError{Format: "YAML", Err: fmt.Errorf("document %d: a resource file is a single YAML document, found more after \"---\"", docs)}
		}
	}
	var top []yamlv2.MapSlice
	if yamlv2.Unmarshal(data, &top) != nil {
		return nil // not a sequence of mappings: decoding will say why
	}
	for i, m := range top {
		if err := duplicateKey(m, fmt.Sprintf("[%d]", i)); err != nil {
			return err
		}
	}
	return nil
}

func duplicateKey(v any, at string) error {
	switch v := v.(type) {
	case yamlv2.MapSlice:
		seen := make(map[string]bool, len(v))
		for _, item := range v {
			key := fmt.Sprint(item.Key)
			p := cfgerr.Join(at, key)
			if seen[key] {
				return cfgerr.Errorf(p, "key appears twice in one YAML mapping")
			}
			seen[key] = true
			if err := duplicateKey(item.Value, p); err != nil {
				return err
			}
		}
	case []any:
		for i, e := range v {
			if err := duplicateKey(e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// describe names the kind of a JSON value for an error message.
func describe(v *structpb.Value) string {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return fmt.Sprintf("string %q", k.StringValue)
	case *structpb.Value_NumberValue:
		return fmt.Sprintf("number %v", k.NumberValue)
	case *structpb.Value_BoolValue:
		return fmt.Sprintf("bool %v", k.BoolValue)
	}
	return "null"
}
