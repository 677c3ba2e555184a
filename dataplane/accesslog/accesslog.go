// Package accesslog writes skiff's HTTP access logs, configured as Envoy's
// access_log (envoy.config.accesslog.v3.AccessLog) of an HTTP connection
// manager:
//
//   - envoy.access_loggers.file (FileAccessLog) and envoy.access_loggers.stdout
//     / .stderr (StdoutAccessLog, StderrAccessLog): lines in Envoy's default
//     format, or a log_format (SubstitutionFormatString) with text_format,
//     text_format_source (a file, inline_bytes or inline_string, read when
//     the configuration loads) or json_format (objects and lists, values
//     typed as Envoy's), or FileAccessLog's format (empty: the default) /
//     json_format / typed_json_format, with the %COMMAND%s listed by
//     Commands and START_TIME's strftime conversions;
//   - envoy.access_loggers.http_grpc (HttpGrpcAccessLogConfig): entries
//     streamed to a gRPC access log service
//     (envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs), batched
//     by buffer_size_bytes and buffer_flush_interval.
//
// Filters: status_code_filter, duration_filter (a comparison's runtime_key
// reads Options.Runtime), runtime_filter, not_health_check_filter (what the health_check HTTP
// filter matched is a health check), response_flag_filter,
// grpc_status_filter, header_filter, and_filter, or_filter. Anything else is
// refused by name. The connection manager's local_reply_config uses the same
// filters (NewFilter) and formats (NewBodyFormat).
//
// # Never blocking a request
//
// Log formats an entry on the request's goroutine into a buffer (text logs
// allocate nothing in steady state) and hands it to a sink: file and stdout
// sinks append to a memory buffer that a goroutine writes out every second
// (or when 64 KiB are waiting), and the gRPC sink queues entries for its
// stream. When a sink is full (a slow disk, a gRPC service that does not keep
// up), the entry is dropped and counted (access_logs.file.logs_dropped,
// access_logs.grpc_access_log.logs_dropped) instead of waiting.
package accesslog

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	grpcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Logger writes one entry per exchange it accepts. Log is called once the
// exchange is over, on its goroutine, and must not block.
type Logger interface {
	Log(e *http.Exchange)
}

// Options are what Build needs from its surroundings.
type Options struct {
	// Sinks are the shared writers (files, stdout, gRPC streams). Nil: Build
	// checks the configuration and returns loggers that write nowhere.
	Sinks *Sinks
	// Clusters is where an http_grpc logger's envoy_grpc cluster is found.
	Clusters *upstream.Manager
	// Node identifies this proxy to a gRPC access log service.
	Node *corev3.Node
	// Stats counts written and dropped entries. Nil: not counted.
	Stats *stats.Store
	// Logger logs sink failures. Nil: discard.
	Logger *slog.Logger
	// Runtime overrides the values of filters' comparisons (their
	// runtime_key). Nil: the default values apply.
	Runtime *runtime.Loader
}

// Names of the access loggers.
const (
	FileName     = "envoy.access_loggers.file"
	StdoutName   = "envoy.access_loggers.stdout"
	StderrName   = "envoy.access_loggers.stderr"
	HTTPGRPCName = "envoy.access_loggers.http_grpc"
)

// Build builds the access loggers of an access_log list. Errors name the
// field, relative to the list's element.
func Build(cfgs []*accesslogv3.AccessLog, o Options) ([]Logger, error) {
	if o.Stats == nil {
		o.Stats = stats.NewStore()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var out []Logger
	for i, c := range cfgs {
		l, err := build(c, &o)
		if err != nil {
			return nil, cfgerr.Index("access_log", i, err)
		}
		out = append(out, l)
	}
	return out, nil
}

func build(c *accesslogv3.AccessLog, o *Options) (Logger, error) {
	if err := cfgerr.OnlyFields(c, "name", "filter", "typed_config"); err != nil {
		return nil, err
	}
	if err := cfgerr.Validate(c); err != nil {
		return nil, err
	}
	var flt filterFunc
	if f := c.GetFilter(); f != nil {
		var err error
		if flt, err = buildFilter(f, o.Runtime); err != nil {
			return nil, cfgerr.Field("filter", err)
		}
	}
	tc := c.GetTypedConfig()
	if tc == nil {
		return nil, cfgerr.Errorf("typed_config", "access log %q has no typed_config", c.GetName())
	}
	m, err := tc.UnmarshalNew()
	if err != nil {
		return nil, cfgerr.Errorf("typed_config", "access log %q: decoding %s: %w", c.GetName(), tc.GetTypeUrl(), err)
	}
	if err := cfgerr.Validate(m); err != nil {
		return nil, cfgerr.Field("typed_config", err)
	}
	var l Logger
	switch cfg := m.(type) {
	case *filev3.FileAccessLog:
		l, err = buildFile(cfg, o)
	case *streamv3.StdoutAccessLog:
		l, err = buildStream(cfg.GetLogFormat(), "/dev/stdout", o)
	case *streamv3.StderrAccessLog:
		l, err = buildStream(cfg.GetLogFormat(), "/dev/stderr", o)
	case *grpcv3.HttpGrpcAccessLogConfig:
		l, err = buildGRPC(cfg, o)
	default:
		return nil, cfgerr.Errorf("typed_config", "access log %q: type %s is not an access logger skiff supports (%s, %s, %s, %s)",
			c.GetName(), tc.GetTypeUrl(), FileName, StdoutName, StderrName, HTTPGRPCName)
	}
	if err != nil {
		return nil, cfgerr.Field("typed_config", err)
	}
	if flt != nil {
		return &filtered{flt, l}, nil
	}
	return l, nil
}

type filtered struct {
	keep filterFunc
	l    Logger
}

func (f *filtered) Log(e *http.Exchange) {
	if f.keep(e) {
		f.l.Log(e)
	}
}

// formatter renders an entry.
type formatter interface {
	append(dst []byte, e *http.Exchange) []byte
}

type textFormatter struct{ f *Format }

func (t textFormatter) append(dst []byte, e *http.Exchange) []byte { return t.f.Append(dst, e) }

func buildFile(cfg *filev3.FileAccessLog, o *Options) (Logger, error) {
	if err := cfgerr.OnlyFields(cfg, "path", "format", "json_format", "typed_json_format", "log_format"); err != nil {
		return nil, err
	}
	var fm formatter
	var err error
	switch f := cfg.GetAccessLogFormat().(type) {
	case nil:
		fm, err = textOf(DefaultFormat)
	case *filev3.FileAccessLog_Format:
		// As Envoy's: an empty format is the default one.
		//lint:ignore SA1019 deprecated in Envoy, but still accepted there
		s := f.Format
		if s == "" {
			s = DefaultFormat
		}
		fm, err = textOf(s)
		err = cfgerr.Field("format", err)
	case *filev3.FileAccessLog_JsonFormat:
		//lint:ignore SA1019 deprecated in Envoy, but still accepted there
		fm, err = jsonOf(f.JsonFormat, false)
		err = cfgerr.Field("json_format", err)
	case *filev3.FileAccessLog_TypedJsonFormat:
		//lint:ignore SA1019 deprecated in Envoy, but still accepted there
		fm, err = jsonOf(f.TypedJsonFormat, false)
		err = cfgerr.Field("typed_json_format", err)
	case *filev3.FileAccessLog_LogFormat:
		fm, err = substitutionFormat(f.LogFormat)
		err = cfgerr.Field("log_format", err)
	}
	if err != nil {
		return nil, err
	}
	return newTextLogger(cfg.GetPath(), fm, o), nil
}

func buildStream(sf *corev3.SubstitutionFormatString, path string, o *Options) (Logger, error) {
	var fm formatter
	var err error
	if sf == nil {
		fm, err = textOf(DefaultFormat)
	} else {
		fm, err = substitutionFormat(sf)
		err = cfgerr.Field("log_format", err)
	}
	if err != nil {
		return nil, err
	}
	return newTextLogger(path, fm, o), nil
}

func textOf(s string) (formatter, error) {
	f, err := ParseFormat(s)
	if err != nil {
		return nil, err
	}
	return textFormatter{f}, nil
}

// substitutionFormat builds a config.core.v3.SubstitutionFormatString.
func substitutionFormat(sf *corev3.SubstitutionFormatString) (formatter, error) {
	if err := cfgerr.OnlyFields(sf, "text_format", "json_format", "text_format_source", "omit_empty_values", "content_type", "json_format_options"); err != nil {
		return nil, err
	}
	if len(sf.GetFormatters()) > 0 {
		return nil, cfgerr.Errorf("formatters", "formatter extensions are not supported by skiff")
	}
	omit := sf.GetOmitEmptyValues()
	switch f := sf.GetFormat().(type) {
	case *corev3.SubstitutionFormatString_TextFormat:
		//lint:ignore SA1019 deprecated in Envoy, but still accepted there
		fm, err := textOf(f.TextFormat)
		return omitted(fm, omit), cfgerr.Field("text_format", err)
	case *corev3.SubstitutionFormatString_TextFormatSource:
		s, err := dataSource(f.TextFormatSource)
		if err != nil {
			return nil, cfgerr.Field("text_format_source", err)
		}
		fm, err := textOf(s)
		return omitted(fm, omit), cfgerr.Field("text_format_source", err)
	case *corev3.SubstitutionFormatString_JsonFormat:
		if o := sf.GetJsonFormatOptions(); o != nil {
			if err := cfgerr.OnlyFields(o, "sort_properties"); err != nil {
				return nil, cfgerr.Field("json_format_options", err)
			}
		}
		fm, err := jsonOf(f.JsonFormat, omit)
		return fm, cfgerr.Field("json_format", err)
	}
	return nil, cfgerr.Errorf("", "one of text_format, text_format_source, json_format is required")
}

// dataSource reads a DataSource as Envoy's formats do, at configuration
// time: a file (filename), inline_bytes or inline_string.
func dataSource(src *corev3.DataSource) (string, error) {
	if err := cfgerr.OnlyFields(src, "filename", "inline_string", "inline_bytes"); err != nil {
		return "", err
	}
	switch s := src.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(s.Filename)
		if err != nil {
			return "", cfgerr.Field("filename", err)
		}
		return string(b), nil
	case *corev3.DataSource_InlineBytes:
		return string(s.InlineBytes), nil
	case *corev3.DataSource_InlineString:
		return s.InlineString, nil
	}
	return "", nil
}

// omitted makes a text format render missing values as "" (omit_empty_values).
func omitted(fm formatter, omit bool) formatter {
	if !omit || fm == nil {
		return fm
	}
	return omitText{fm.(textFormatter).f}
}

type omitText struct{ f *Format }

func (t omitText) append(dst []byte, e *http.Exchange) []byte { return t.f.appendEmpty(dst, e, "") }

// jsonFormatter renders a json_format: one JSON object per line, its keys
// sorted, as Envoy's. A value that is a single command keeps its type (a
// number for a numeric command, null when missing); one that mixes text and
// commands is a string, a missing command in it rendering as "-" (as "" with
// omit_empty_values). With omit_empty_values, as Envoy's: keys whose value
// is null (missing or literal) are left out, as are nested objects left
// empty; list elements that would be null are dropped, the list kept.
type jsonFormatter struct {
	fields []jsonField
	omit   bool
}

type jsonField struct {
	key string // JSON-encoded, with the quotes
	v   jsonValue
}

// jsonValue is one value of a json_format: exactly one of its fields is set.
type jsonValue struct {
	lit    string         // a constant, JSON-encoded (number, bool, null, string)
	f      *Format        // a string with %COMMAND%s
	nested *jsonFormatter // an object
	list   *[]jsonValue   // a list
}

func jsonOf(st *structpb.Struct, omit bool) (formatter, error) {
	j, err := jsonStruct(st, omit, "")
	if err != nil {
		return nil, err
	}
	return j, nil
}

func jsonStruct(st *structpb.Struct, omit bool, path string) (*jsonFormatter, error) {
	j := &jsonFormatter{omit: omit}
	keys := make([]string, 0, len(st.GetFields()))
	for k := range st.GetFields() {
		keys = append(keys, k)
	}
	sortStrings(keys)
	for _, k := range keys {
		v, err := jsonValueOf(st.GetFields()[k], omit, path+k)
		if err != nil {
			return nil, err
		}
		if omit && v.lit == "null" {
			continue // Envoy drops literal nulls when omitting empty values
		}
		j.fields = append(j.fields, jsonField{key: string(appendJSONString(nil, k)), v: v})
	}
	return j, nil
}

// jsonValueOf compiles one value; path names it in errors.
func jsonValueOf(v *structpb.Value, omit bool, path string) (jsonValue, error) {
	switch x := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		if !strings.Contains(x.StringValue, "%") {
			return jsonValue{lit: string(appendJSONString(nil, x.StringValue))}, nil
		}
		f, err := ParseFormat(x.StringValue)
		if err != nil {
			return jsonValue{}, fmt.Errorf("%s: %w", path, err)
		}
		return jsonValue{f: f}, nil
	case *structpb.Value_StructValue:
		n, err := jsonStruct(x.StructValue, omit, path+".")
		if err != nil {
			return jsonValue{}, err
		}
		return jsonValue{nested: n}, nil
	case *structpb.Value_ListValue:
		list := make([]jsonValue, 0, len(x.ListValue.GetValues()))
		for i, el := range x.ListValue.GetValues() {
			ev, err := jsonValueOf(el, omit, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return jsonValue{}, err
			}
			if omit && ev.lit == "null" {
				continue
			}
			list = append(list, ev)
		}
		return jsonValue{list: &list}, nil
	case *structpb.Value_NumberValue, *structpb.Value_BoolValue:
		b, err := v.MarshalJSON()
		if err != nil {
			return jsonValue{}, fmt.Errorf("%s: %w", path, err)
		}
		return jsonValue{lit: string(b)}, nil
	}
	return jsonValue{lit: "null"}, nil
}

func (j *jsonFormatter) append(dst []byte, e *http.Exchange) []byte {
	start := len(dst)
	var ok bool
	if dst, ok = j.appendObject(dst, e); !ok {
		dst = append(dst[:start], "{}"...) // the line's object is always there
	}
	return append(dst, '\n')
}

// appendObject appends the object; false (and nothing appended) when
// omit_empty_values left it empty.
func (j *jsonFormatter) appendObject(dst []byte, e *http.Exchange) ([]byte, bool) {
	start := len(dst)
	dst = append(dst, '{')
	empty := true
	for i := range j.fields {
		fld := &j.fields[i]
		mark := len(dst)
		if !empty {
			dst = append(dst, ',')
		}
		dst = append(dst, fld.key...)
		dst = append(dst, ':')
		var ok bool
		if dst, ok = fld.v.append(dst, e, j.omit); !ok && j.omit {
			dst = dst[:mark]
			continue
		}
		empty = false
	}
	if empty && j.omit {
		return dst[:start], false
	}
	return append(dst, '}'), true
}

// append appends the value; false when it is empty: a missing single
// command (appended as null) or an object omit_empty_values left empty
// (nothing appended).
func (v *jsonValue) append(dst []byte, e *http.Exchange, omit bool) ([]byte, bool) {
	switch {
	case v.f != nil:
		return appendJSONValue(dst, v.f, e, omit)
	case v.nested != nil:
		return v.nested.appendObject(dst, e)
	case v.list != nil:
		dst = append(dst, '[')
		empty := true
		for i := range *v.list {
			mark := len(dst)
			if !empty {
				dst = append(dst, ',')
			}
			var ok bool
			if dst, ok = (*v.list)[i].append(dst, e, omit); !ok && omit {
				dst = dst[:mark]
				continue
			}
			empty = false
		}
		return append(dst, ']'), true
	}
	return append(dst, v.lit...), true
}

// appendJSONValue renders a string with %COMMAND%s: a single command keeps
// its type (a number for a numeric one, null and false when missing); else a
// string, missing commands in it "-" or, with omit, "".
func appendJSONValue(dst []byte, f *Format, e *http.Exchange, omit bool) ([]byte, bool) {
	if f.single() {
		p := &f.parts[0]
		start := len(dst)
		v, ok := p.value(dst, e)
		if !ok {
			return append(dst[:start], "null"...), false
		}
		if p.maxLen > 0 {
			v = truncate(v, start, p.maxLen)
		}
		if f.typed() {
			return v, true
		}
		return quoteFrom(v, start), true
	}
	empty := "-"
	if omit {
		empty = ""
	}
	start := len(dst)
	return quoteFrom(f.appendEmpty(dst, e, empty), start), true
}

// quoteFrom turns dst[start:] into a JSON string, in dst's own memory (no
// allocation once dst has grown to fit): it appends the quoted copy after the
// raw text, then moves it down over it.
func quoteFrom(dst []byte, start int) []byte {
	mid := len(dst)
	dst = appendJSONString(dst, unsafeString(dst[start:mid]))
	n := copy(dst[start:], dst[mid:])
	return dst[:start+n]
}

// appendJSONString appends s as a JSON string.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20 || c == 0x7f:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// ConfigFor is a helper for tests and examples: an AccessLog of logger m.
func ConfigFor(name string, m proto.Message) (*accesslogv3.AccessLog, error) {
	return newAccessLog(name, m)
}

// lowerNames lower-cases header names given in configuration.
func lowerNames(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.ToLower(n)
	}
	return out
}
