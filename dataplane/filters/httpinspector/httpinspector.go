// Package httpinspector is the listener filter
// envoy.filters.listener.http_inspector: it peeks at the first bytes of a
// plaintext connection and, when they start an HTTP request, sets the
// connection's application protocol ("http/1.0", "http/1.1", or "h2c" for the
// HTTP/2 prior-knowledge preface), so that filter chains can match on
// application_protocols. Nothing is consumed.
package httpinspector

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	"google.golang.org/protobuf/proto"

	"github.com/skiffproxy/skiff/dataplane/filter"
	"github.com/skiffproxy/skiff/dataplane/filters/internal/peek"
	"github.com/skiffproxy/skiff/dataplane/http/h2"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// Name is the filter's canonical name.
const Name = "envoy.filters.listener.http_inspector"

// MaxInspectSize is how many bytes the inspector looks at, at most (Envoy's
// MAX_INSPECT_SIZE): a request line not ended by then is not HTTP.
const MaxInspectSize = 8192

// Factory builds http_inspector filters.
type Factory struct{}

// Name implements filter.Factory.
func (Factory) Name() string { return Name }

// ConfigType implements filter.Factory.
func (Factory) ConfigType() proto.Message { return &httpv3.HttpInspector{} }

// Create implements filter.ListenerFactory.
func (Factory) Create(m proto.Message, fc *filter.Context) (filter.ListenerFilter, error) {
	if err := cfgerr.OnlyFields(m); err != nil {
		return nil, err
	}
	st := fc.Stats
	if st == nil {
		st = stats.NewStore()
	}
	// Envoy roots the filter's stats at http_inspector. in the listener
	// factory's (global) scope.
	const p = "http_inspector."
	return &Filter{
		http10:   st.Counter(p + "http10_found"),
		http11:   st.Counter(p + "http11_found"),
		http2:    st.Counter(p + "http2_found"),
		notFound: st.Counter(p + "http_not_found"),
	}, nil
}

// Filter is a built http_inspector.
type Filter struct {
	http10, http11, http2, notFound stats.Counter
}

// Result is what Detect makes of the bytes it is given.
type Result int

const (
	// More means the bytes could start an HTTP request: more are needed.
	More Result = iota
	// Found means they start one; the protocol is returned with it.
	Found
	// NotFound means they do not start one.
	NotFound
)

// Detect looks at the first bytes of a connection: the HTTP/2 preface is
// "h2c", an HTTP/1.0 or HTTP/1.1 request line "http/1.0" or "http/1.1".
func Detect(b []byte) (string, Result) {
	if n := min(len(b), len(h2.ClientPreface)); string(b[:n]) == h2.ClientPreface[:n] {
		if n < len(h2.ClientPreface) {
			return "", More
		}
		return "h2c", Found
	}
	line, ended := b, false
	if end := bytes.IndexAny(b, "\r\n"); end >= 0 {
		line, ended = b[:end], true
	}
	// method SP request-target SP HTTP-version (RFC 9112 3)
	i := 0
	for i < len(line) && isTchar(line[i]) {
		i++
	}
	if i == len(line) && !ended {
		return "", More
	}
	if i == 0 || i == len(line) || line[i] != ' ' {
		return "", NotFound
	}
	i++
	j := i
	for j < len(line) && line[j] > ' ' && line[j] != 0x7f {
		j++
	}
	if j == len(line) && !ended {
		return "", More
	}
	if j == i || j == len(line) || line[j] != ' ' {
		return "", NotFound
	}
	v := string(line[j+1:])
	if !ended {
		const p10, p11 = "HTTP/1.0", "HTTP/1.1"
		if len(v) <= len(p10) && (v == p10[:len(v)] || v == p11[:len(v)]) {
			return "", More
		}
		return "", NotFound
	}
	switch v {
	case "HTTP/1.1":
		return "http/1.1", Found
	case "HTTP/1.0":
		return "http/1.0", Found
	}
	return "", NotFound
}

// isTchar reports whether c may appear in a token (RFC 9110 5.6.2).
func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// OnAccept implements filter.ListenerFilter. Like Envoy's, it leaves alone a
// connection another listener filter found not to be plaintext (tls), and one
// that is not a plain TCP socket.
func (f *Filter) OnAccept(ctx context.Context, c *filter.Conn) error {
	if c.TransportProtocol != "" && c.TransportProtocol != "raw_buffer" {
		return nil
	}
	tc, ok := peek.Socket(c.Conn)
	if !ok {
		return nil
	}
	var proto string
	res := NotFound
	err := peek.Peek(tc, 1024, MaxInspectSize, func(b []byte) peek.Decision {
		proto, res = Detect(b)
		if res == More {
			return peek.More
		}
		return peek.Done
	})
	if err != nil && !errors.Is(err, peek.ErrFull) {
		return fmt.Errorf("http_inspector: %w", err)
	}
	if res != Found {
		f.notFound.Inc() // and on as it is, as in Envoy
		return nil
	}
	switch proto {
	case "http/1.0":
		f.http10.Inc()
	case "http/1.1":
		f.http11.Inc()
	case "h2c":
		f.http2.Inc()
	}
	c.ApplicationProtocols = []string{proto}
	return nil
}
