// Package protoyaml decodes protobuf messages from YAML or JSON the way Envoy reads
// its configuration, and reports a failure at the field it is about.
//
// Envoy loads YAML by converting it to JSON and handing that to the protobuf JSON
// parser; this package does the same with sigs.k8s.io/yaml and protojson, so input
// Envoy accepts decodes to the same message here (YAML 1.1 scalars aside: see
// Options.Unmarshal). What it adds is
// the error: protojson says "(line 1:873): unknown field" about a JSON text the user
// never wrote, so on failure the input is walked against the message descriptors to
// find the smallest failing value, and the error is a *cfgerr.Error naming it, e.g.
//
//	static_resources.listeners[0].address.socket_address.port_value: invalid value "abc" for uint32
//
// Input that is not well-formed YAML or JSON gives a *SyntaxError instead, which keeps
// the parser's line number. Those two are the only error types Unmarshal returns.
package protoyaml

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	yamlv2 "go.yaml.in/yaml/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"sigs.k8s.io/yaml"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// Resolver finds the message types named by google.protobuf.Any "@type" fields and
// the extensions named by "[full.name]" keys. *protoregistry.Types implements it.
type Resolver interface {
	protoregistry.MessageTypeResolver
	protoregistry.ExtensionTypeResolver
}

// Options configures decoding. The zero value is ready to use.
type Options struct {
	// Resolver resolves Any type URLs, both Envoy's "type.googleapis.com/pkg.Msg"
	// form and the bare "pkg.Msg" form (protoregistry strips everything up to the
	// last '/'). Nil means protoregistry.GlobalTypes: the types linked into the binary.
	Resolver Resolver

	// JSON makes Unmarshal accept JSON only, as Envoy does for a ".json" file: YAML
	// is a syntax error, and syntax errors carry a line and a column.
	JSON bool
}

// Unmarshal decodes a single YAML or JSON document into m with Options{}.
func Unmarshal(data []byte, m proto.Message) error { return Options{}.Unmarshal(data, m) }

// UnmarshalJSON decodes a JSON document into m with Options{JSON: true}.
func UnmarshalJSON(data []byte, m proto.Message) error {
	return Options{JSON: true}.Unmarshal(data, m)
}

// Unmarshal decodes a single YAML or JSON document into m, which is reset first.
// With o.JSON, only JSON is accepted.
//
// YAML is read as sigs.k8s.io/yaml reads it (anchors, aliases and "<<" merge keys)
// and converted to JSON, so keys are visited in sorted order and the error reported
// is the first in that order. Its scalars are YAML 1.1's: unlike in Envoy's YAML 1.2
// reader, unquoted yes, no, on, off, y and n are booleans, so a string field given
// one is an error, which says to quote it. A key written twice in one mapping is an
// error, as it is in JSON. Input that is already valid JSON is decoded as JSON
// directly, which keeps its key order and allows the tab indentation YAML forbids.
// More than one non-empty document ("---") is an error: a message is one document.
func (o Options) Unmarshal(data []byte, m proto.Message) error {
	if o.JSON {
		var raw json.RawMessage
		if err := json.Unmarshal(data, &raw); err != nil {
			return jsonSyntaxError(data, err)
		}
		return o.decodeJSON(data, m)
	}
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' && json.Valid(trimmed) {
		return o.decodeJSON(data, m)
	}
	if err := checkYAML(data); err != nil {
		return err
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		// The document parsed (checkYAML) but has no JSON form: a key that is not a
		// scalar, or a float such as .inf that JSON cannot spell.
		return &SyntaxError{Format: "YAML", Err: fmt.Errorf("no JSON equivalent: %w", err)}
	}
	return o.decodeJSON(js, m)
}

// decodeJSON decodes syntactically valid JSON and, when protojson refuses it, finds
// the field at fault.
func (o Options) decodeJSON(data []byte, m proto.Message) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		// protojson would say "unexpected token null"; an empty YAML file (or one of
		// only comments) ends up here, and deserves a plainer word.
		return &cfgerr.Error{Err: fmt.Errorf("empty document: expected a mapping of %s fields", m.ProtoReflect().Descriptor().FullName())}
	}
	opts := protojson.UnmarshalOptions{Resolver: o.resolver()}
	err := opts.Unmarshal(data, m)
	if err == nil {
		return nil
	}
	w := walker{resolver: opts.Resolver}
	if tree, perr := parse(data); perr == nil {
		if located := w.message(tree, m.ProtoReflect().Descriptor(), nil); located != nil {
			return located
		}
	}
	// The walker found every piece acceptable on its own, so the failure is about
	// the whole (recursion depth, a required proto2 field): keep protojson's words.
	return &cfgerr.Error{Err: errors.New(cleanReason(err))}
}

func (o Options) resolver() Resolver {
	if o.Resolver == nil {
		return protoregistry.GlobalTypes
	}
	return o.Resolver
}

// SyntaxError reports input that is not one well-formed YAML or JSON document, or
// has no JSON equivalent. It has no field path; Line (1-based) is set when the
// parser reported one, and Column too for JSON.
type SyntaxError struct {
	Format       string // "YAML" or "JSON"
	Line, Column int
	Err          error
}

func (e *SyntaxError) Error() string {
	var pos string
	switch {
	case e.Line > 0 && e.Column > 0:
		pos = fmt.Sprintf("line %d, column %d: ", e.Line, e.Column)
	case e.Line > 0:
		pos = fmt.Sprintf("line %d: ", e.Line)
	}
	return e.Format + " syntax error: " + pos + e.Err.Error()
}

func (e *SyntaxError) Unwrap() error { return e.Err }

// checkYAML reports syntax errors with their line, more than one document, and a
// key written twice in a mapping (which sigs.k8s.io/yaml would silently resolve to
// the last one).
func checkYAML(data []byte) error {
	dec := yamlv2.NewDecoder(bytes.NewReader(data))
	for docs := 1; ; docs++ {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return yamlSyntaxError(err)
		}
		// sigs.k8s.io/yaml reads only the first document, so content in any later
		// one would be dropped silently; a trailing "---" with nothing after it is
		// harmless.
		if docs > 1 && doc != nil {
			return &SyntaxError{Format: "YAML", Err: fmt.Errorf("document %d: a message is a single YAML document, found more after \"---\"", docs)}
		}
	}
	// Decoding into MapSlice keeps the keys of each mapping as written, in order, and
	// (unlike decoding into a map) leaves out keys that come from "<<" merges, so a
	// duplicate here is a key the user wrote twice, not an override of a merged one.
	var probe any
	if yamlv2.Unmarshal(data, &probe) != nil {
		return nil
	}
	if _, isMap := probe.(map[any]any); !isMap {
		// Not a mapping at the top (a list, a scalar): decoding says why it is
		// not a message. (yaml.v2 would decode a sequence into a MapSlice of
		// keyless items.)
		return nil
	}
	var top yamlv2.MapSlice
	if yamlv2.Unmarshal(data, &top) != nil {
		return nil
	}
	return duplicateKey(top, "")
}

// duplicateKey finds a key written twice in one mapping of a MapSlice tree. Its path
// spells keys as written, since this runs before keys are matched to fields.
func duplicateKey(v any, at string) error {
	switch v := v.(type) {
	case yamlv2.MapSlice:
		seen := make(map[string]bool, len(v))
		for _, item := range v {
			key := fmt.Sprint(item.Key)
			p := cfgerr.Join(at, key)
			if seen[key] {
				return &cfgerr.Error{Path: p, Err: errors.New("key appears twice in one YAML mapping")}
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

// yamlSyntaxError turns go-yaml's "yaml: line 3: did not find expected key" into a
// SyntaxError with Line set.
func yamlSyntaxError(err error) *SyntaxError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	se := &SyntaxError{Format: "YAML"}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ": "); ok {
			if n, convErr := strconv.Atoi(num); convErr == nil {
				se.Line, msg = n, tail
			}
		}
	}
	se.Err = errors.New(msg)
	return se
}

// jsonSyntaxError converts encoding/json's byte offset into a line and column.
func jsonSyntaxError(data []byte, err error) *SyntaxError {
	se := &SyntaxError{Format: "JSON", Err: err}
	var jse *json.SyntaxError
	if errors.As(err, &jse) {
		off := min(int(jse.Offset), len(data))
		before := data[:off]
		se.Line = bytes.Count(before, []byte("\n")) + 1
		se.Column = off - (bytes.LastIndexByte(before, '\n') + 1)
		if se.Column == 0 {
			se.Column = 1
		}
	}
	return se
}

// cleanReason strips protojson's "proto: " prefix and its "(line 1:873)" position:
// the position is into the JSON that YAML was converted to, which the user never saw,
// and the field path replaces it.
func cleanReason(err error) string {
	s := err.Error()
	if rest, ok := strings.CutPrefix(s, "proto:"); ok {
		// The protobuf module randomly uses a non-breaking space after "proto:" to
		// stop callers from matching its messages exactly.
		s = strings.TrimLeft(rest, " \u00a0")
	}
	s = strings.TrimPrefix(s, "syntax error ")
	if strings.HasPrefix(s, "(line ") {
		if _, after, ok := strings.Cut(s, "): "); ok {
			s = after
		}
	}
	return s
}
