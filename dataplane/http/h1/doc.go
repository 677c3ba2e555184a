// Package h1 is skiff's HTTP/1.x codec (RFC 9112), both sides: ServerConn
// serves a downstream connection (an http.ServerCodec) and ClientConn carries
// requests on an upstream one (an http.ClientConn). Messages are presented in
// package http's model: request lines, status lines and Host become
// pseudo-headers, bodies are read and written decoded, and framing
// (Content-Length, chunked, trailers, 100-continue, keep-alive, upgrades)
// is the codec's business.
//
// # Server side: what the connection manager does
//
//	opts := &h1.Options{Buffers: pool, MaxHeaderBytes: ..., RequestHeadersTimeout: ..., IdleTimeout: ...}
//	// per accepted connection:
//	sc := h1.NewServerConn(opts)   // keep it to call sc.Drain() (or Discourage) when draining
//	err := sc.Serve(ctx, conn, handler)
//	var e *h1.Error
//	if errors.As(err, &e) { /* count e.Kind; log e.Status, e.Flags(), e.Details */ }
//
// Serve hands each request to handler.ServeStream on Serve's own goroutine,
// one at a time and in order (pipelined requests wait, buffered, for their
// turn), and closes the connection when it returns. The handler reads the
// body, answers with WriteHeader, Write and End (or EndWithTrailers), or
// gives up with Reset. A handler that returns before End resets the stream:
// the connection is closed. The stream value is reused for every request of
// the connection and must not be used after ServeStream returns; the same
// holds for strings obtained from its Headers (see package http).
//
// Requests the codec refuses never reach ServeStream. A handler that is a
// RefusalHandler answers them (ServeRefused, on a stream without request
// headers, before anything is written), as Envoy's codec hands its protocol
// errors to the connection manager's local reply; otherwise, or if it sends
// nothing, the codec answers itself (400, 403, 408, 431, 501, with
// "connection: close" and no body). Either way the codec then closes the
// connection and returns an *Error. Error.Kind says what happened,
// Error.Flags maps it to Envoy's response flags and Error.Details to Envoy's
// response code details; see Kind for the statuses. After an error response,
// and after any response that leaves part of a request body unread, the codec
// half-closes and reads and discards for up to Options.CloseDelay before it
// closes, so that a client still sending reads the response rather than a
// reset (Envoy's delayed close).
//
// Timeouts: Options.RequestHeadersTimeout runs from the first byte of a
// request to the end of its head (408); Options.IdleTimeout from the end of a
// response (or the start) to the first byte of the next request (the
// connection is closed, Kind KindIdleTimeout). Neither runs while a handler
// works: stream timeouts are the manager's, which can Reset the stream or
// cancel Serve's context.
//
// A client that goes away while its request is being handled is noticed: once
// a request has been read to its end, a helper goroutine (one per connection,
// reused) reads ahead on the connection, and an end of stream or an error
// there cancels the stream's Context (and closes the connection). The bytes
// it reads are the next pipelined request's and stay buffered. Under load
// this costs nothing measurable; on an idle machine it adds a goroutine
// wake-up per request (a few microseconds of latency).
//
// # Tunnels
//
// An upgrade request (an upgrade field and "connection: upgrade", HTTP/1.1)
// answered with 101, and a CONNECT answered with 2xx, turn the stream into a
// raw tunnel, on both sides: Write sends raw bytes and Read returns them
// (first any the peer sent early, buffered), until the peer closes (io.EOF).
// End half-closes the connection (CloseWrite, when the conn has it, as TCP and
// TLS conns do). The server closes the connection when the handler returns;
// a client tunnel ends with Reset or Close.
//
// # Client side: what the router does
//
//	cc := h1.NewClientConn(conn, opts)          // per upstream connection, kept in a pool
//	if cc.Available() { s, err := cc.NewStream(ctx) ... }
//
// then s.WriteHeader(req, end), s.Write and s.End for the request, and
// s.ReadHeader, then s.Read until io.EOF and s.Trailers for the response (see
// ClientConn). Both halves may run concurrently. A stream ends when the
// request was ended and the response body read to io.EOF (read it even when
// there is none: HEAD, 204, 304); the connection is then Available again, or
// closed if it cannot be reused. Reset abandons a stream at any point and
// closes the connection. An upstream that closes an idle connection just as a
// request is sent on it shows as a KindNoResponse error: nothing came back,
// and an idempotent request can be retried on another connection.
//
// # Allocation
//
// In steady state neither side allocates per request: buffers come from
// Options.Buffers (a head grows its read buffer through the pool's classes
// and the buffer shrinks back when empty; the write buffer is held only while
// a message is written), Headers and stream values are reused per
// connection, and the helper goroutines are started once per connection.
// Errors allocate.
package h1
