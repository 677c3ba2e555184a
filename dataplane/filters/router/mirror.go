package router

import (
	"context"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/http/route"
	"github.com/skiffproxy/skiff/internal/bufpool"
)

// shadow is what the copies of one request need once it is complete.
type shadow struct {
	header   *http.Header // the request as the router sends it upstream
	policies []route.MirrorPolicy
	timeout  time.Duration // the route's (0: none)
}

// prepareMirrors picks the route's mirror policies that take this request
// (runtime_fraction) and snapshots its headers for the copies, as Envoy's
// shadow requests: they carry what the router sends upstream, with
// "-shadow" appended to the host. A request without a body is mirrored at
// once; one with a body when the body is in (it is kept, as for a retry, up
// to the router's bodyLimit; a larger one is not mirrored, as Envoy aborts a
// shadow whose buffer overflows).
func (q *rq) prepareMirrors() {
	rnd := q.e.Random(0x9e3779b97f4a7c15)
	var s *shadow
	for _, m := range q.rt.Mirrors {
		if !m.Mirrored(rnd) {
			continue
		}
		if s == nil {
			s = &shadow{header: new(http.Header), timeout: q.timeout}
			q.e.Request.CopyTo(s.header)
		}
		s.policies = append(s.policies, m)
	}
	if s == nil {
		return
	}
	if q.e.Downstream.EndedWithHeader() {
		q.r.mirror(s, nil, nil)
		return
	}
	q.shadow = s
	q.buffering = true
}

// mirrorBody sends the copies of a request whose body just ended: the kept
// body and trailers, unless the body did not fit.
func (q *rq) mirrorBody() {
	s := q.shadow
	q.shadow = nil
	if s == nil || q.bodyTooLarge {
		return
	}
	body := make([]byte, 0, q.bodyLen)
	for i, c := range q.chunks {
		b := c.B
		if i == len(q.chunks)-1 {
			b = b[:q.last]
		}
		body = append(body, b...)
	}
	var tr *http.Header
	if q.trailers.Len() > 0 {
		tr = new(http.Header)
		q.trailers.CopyTo(tr)
	}
	q.r.mirror(s, body, tr)
}

// mirror sends s's copies, each on its own goroutine: fire and forget.
func (r *Router) mirror(s *shadow, body []byte, trailers *http.Header) {
	for i, m := range s.policies {
		h := s.header
		if i < len(s.policies)-1 {
			h = new(http.Header)
			s.header.CopyTo(h)
		}
		if !m.KeepHost {
			h.Set(http.Authority, route.ShadowAuthority(h.Authority()))
		}
		r.shadows.Go(func() { r.sendShadow(m.Cluster, h, body, trailers, s.timeout) })
	}
}

// sendShadow sends one copy to cluster and reads its response to the end,
// within timeout (and until the router closes). Nothing of it reaches the
// client; the cluster's stats count it.
func (r *Router) sendShadow(cluster string, h *http.Header, body []byte, trailers *http.Header, timeout time.Duration) {
	r.stats.rqShadow.Inc()
	fail := r.stats.rqShadowFailed.Inc
	cl := r.clusters.Get(cluster)
	if cl == nil || !cl.Acquire() {
		fail()
		return
	}
	defer cl.Release()
	host := cl.Pick()
	if host == nil {
		fail()
		return
	}
	ctx := r.shadowCtx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	sni, san := upstreamNames(cl, h)
	p := r.pools.Pool(cl, host, sni, san)
	if p == nil {
		fail()
		return
	}
	conn, us, err := p.Acquire(ctx, ctx.Done())
	if err != nil {
		fail()
		return
	}
	defer p.Release(conn)
	defer us.Close()
	// The reset must not come after the stream is closed and its
	// connection released (an HTTP/1.1 stream is reused in place for the
	// connection's next request): a timeout that fired is waited for.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		us.Reset(http.ResetCancel)
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
	}()
	hs := cl.HTTPStats()
	hs.RqTotal.Inc()
	hs.RqActive.Inc()
	defer hs.RqActive.Dec()
	end := len(body) == 0 && trailers == nil
	if err := us.WriteHeader(h, end); err != nil {
		fail()
		return
	}
	if !end {
		if len(body) > 0 {
			if _, err := us.Write(body); err != nil {
				fail()
				return
			}
		}
		if trailers != nil {
			err = us.EndWithTrailers(trailers)
		} else {
			err = us.End()
		}
		if err != nil {
			fail()
			return
		}
	}
	if _, err := us.ReadHeader(); err != nil {
		fail()
		return
	}
	if us.EndedWithHeader() {
		return
	}
	buf := r.buffers.Get(bufpool.Medium)
	defer r.buffers.Put(buf)
	for {
		if _, err := us.Read(buf.B); err != nil {
			return // io.EOF, or the copy's own failure: nobody waits for it
		}
	}
}
