package hcm

import (
	"fmt"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/skiffproxy/skiff/dataplane/accesslog"
	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// localReplies is a connection manager's local_reply_config: it rewrites
// the replies skiff makes itself (no route, no healthy upstream, a filter's
// denial, a timeout; and, as in Envoy, redirects and direct responses). The
// first mapper whose filter matches may change the status, replace the
// body, add headers and choose the body's format; then the body is rendered
// by that format, or by body_format, or sent as it is (text/plain).
type localReplies struct {
	mappers []responseMapper
	format  *accesslog.BodyFormat // nil: the body as it is
}

type responseMapper struct {
	filter  accesslog.Filter
	status  int     // 0: unchanged
	body    *string // nil: unchanged
	headers route.HeadersToAdd
	format  *accesslog.BodyFormat // nil: the config's body_format
}

func newLocalReplies(pb *hcmv3.LocalReplyConfig, rt *runtime.Loader) (*localReplies, error) {
	if err := cfgerr.OnlyFields(pb, "mappers", "body_format"); err != nil {
		return nil, err
	}
	lr := &localReplies{}
	var err error
	if bf := pb.GetBodyFormat(); bf != nil {
		if lr.format, err = accesslog.NewBodyFormat(bf); err != nil {
			return nil, cfgerr.Field("body_format", err)
		}
	}
	for i, m := range pb.GetMappers() {
		rm, err := newResponseMapper(m, rt)
		if err != nil {
			return nil, cfgerr.Index("mappers", i, err)
		}
		lr.mappers = append(lr.mappers, rm)
	}
	return lr, nil
}

func newResponseMapper(pb *hcmv3.ResponseMapper, rt *runtime.Loader) (responseMapper, error) {
	if err := cfgerr.OnlyFields(pb, "filter", "status_code", "body", "body_format_override", "headers_to_add"); err != nil {
		return responseMapper{}, err
	}
	var rm responseMapper
	var err error
	if rm.filter, err = accesslog.NewFilter(pb.GetFilter(), rt); err != nil {
		return rm, cfgerr.Field("filter", err)
	}
	if sc := pb.GetStatusCode(); sc != nil {
		rm.status = int(sc.GetValue()) // validated: 200 to 599
	}
	if b := pb.GetBody(); b != nil {
		if err := cfgerr.OnlyFields(b, "inline_string", "inline_bytes"); err != nil {
			return rm, cfgerr.Field("body", fmt.Errorf("%w (the body is inline_string or inline_bytes)", err))
		}
		s := b.GetInlineString()
		if bs := b.GetInlineBytes(); bs != nil {
			s = string(bs)
		}
		rm.body = &s
	}
	if rm.headers, err = route.CompileHeadersToAdd(true, "headers_to_add", pb.GetHeadersToAdd()); err != nil {
		return rm, err
	}
	if bf := pb.GetBodyFormatOverride(); bf != nil {
		if rm.format, err = accesslog.NewBodyFormat(bf); err != nil {
			return rm, cfgerr.Field("body_format_override", err)
		}
	}
	return rm, nil
}

// MapLocalReply implements http.LocalReplyMapper, as Envoy's
// LocalReplyImpl::rewrite.
func (lr *localReplies) MapLocalReply(e *http.Exchange, body string) (string, string) {
	format := lr.format
	for i := range lr.mappers {
		m := &lr.mappers[i]
		if !m.filter(e) {
			continue
		}
		if m.body != nil {
			body = *m.body
		}
		m.headers.Apply(&e.Response, &e.Info)
		if m.status != 0 {
			e.Info.ResponseCode = m.status
			e.Response.SetUint(http.Status, uint64(m.status))
		}
		if m.format != nil {
			format = m.format
		}
		break
	}
	e.Info.LocalReplyBody = body
	if format == nil {
		return body, "text/plain"
	}
	return string(format.Append(nil, e)), format.ContentType
}
