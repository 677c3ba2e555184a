package accesslog

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/runtime"
)

// Filter is a compiled AccessLogFilter: whether an exchange passes. Besides
// access logs, the connection manager's local_reply_config chooses the
// replies it rewrites with them.
type Filter func(e *http.Exchange) bool

// NewFilter compiles f, refusing what access logs refuse; rt (nil: none)
// overrides its comparisons' values by their runtime_key.
func NewFilter(f *accesslogv3.AccessLogFilter, rt *runtime.Loader) (Filter, error) {
	fn, err := buildFilter(f, rt)
	return Filter(fn), err
}

// BodyFormat is a SubstitutionFormatString that renders a response body (the
// body_format of local_reply_config) rather than a log line.
type BodyFormat struct {
	f formatter
	// ContentType is the body's: content_type if set, else text/plain for
	// a text format and application/json for a JSON one, as in Envoy.
	ContentType string
}

// NewBodyFormat compiles sf; errors name the field inside it.
func NewBodyFormat(sf *corev3.SubstitutionFormatString) (*BodyFormat, error) {
	fm, err := substitutionFormat(sf)
	if err != nil {
		return nil, err
	}
	b := &BodyFormat{f: fm, ContentType: "text/plain"}
	if _, ok := fm.(*jsonFormatter); ok {
		b.ContentType = "application/json"
	}
	if ct := sf.GetContentType(); ct != "" {
		b.ContentType = ct
	}
	return b, nil
}

// Append renders the body for e onto dst.
func (b *BodyFormat) Append(dst []byte, e *http.Exchange) []byte { return b.f.append(dst, e) }
