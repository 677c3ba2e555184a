package filter

import "context"

type connKey struct{}

// WithConn returns a context carrying c, so that code that only sees a
// request's context (an HTTP filter has its Exchange's) can reach the
// connection the request arrived on: its addresses, its SNI. The HTTP
// connection manager derives its codec's context from it once per
// connection; each stream's context is derived from that one.
func WithConn(ctx context.Context, c *Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// ConnFrom returns the connection WithConn put in ctx, or nil.
func ConnFrom(ctx context.Context) *Conn {
	if ctx == nil {
		return nil
	}
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}
