// Package h2 is skiff's HTTP/2 codec (RFC 9113), downstream and upstream, on
// x/net/http2's Framer and HPACK coder: a ServerConn implements
// dataplane/http's ServerCodec, a ClientConn its ClientConn, and one stream
// type serves as both ServerStream and ClientStream.
//
// # Connections
//
// Each connection has a reader goroutine (Serve's own on the server) that
// parses frames and acts on them, and a writer goroutine that owns the
// socket's writes: control frames first, then one frame at a time from the
// streams with something to send, round robin, flushing when it runs out of
// work, so frames from many streams share system calls (before it flushes it
// yields once, so that handlers ready to run add their frames to the same
// write). On the server each stream's handler runs on a goroutine of the
// connection's: one that finished a stream waits for the next, up to a few
// per connection, so that a stream starts no goroutine. Streams' users never
// block on the socket: Write copies into the stream's pooled send buffer and
// blocks only while it is full, which the peer's flow-control windows govern.
//
// # Flow control
//
// Both windows are enforced both ways. Received data is buffered until the
// stream's user reads it, and WINDOW_UPDATE gives window back as it is read
// (once half a window is consumed), not as it arrives, so a slow handler slows
// its client instead of growing memory. Data is sent only within the peer's
// stream and connection windows; SETTINGS_INITIAL_WINDOW_SIZE changes apply to
// open streams, negative windows included.
//
// # Shutdown
//
// Drain sends GOAWAY with the largest stream id and a PING; when the PING's
// ACK comes back (or DrainTimeout passes) the final GOAWAY names the last
// stream accepted; the connection closes when those streams are done. A
// protocol violation is answered with GOAWAY and the error code (the reason
// as debug data), after which the connection closes; stream-level violations
// reset just the stream. A malformed request (RFC 9113 section 8.1.1) is a
// connection error too, as in Envoy, unless
// ServerOptions.StreamErrorOnInvalidHTTPMessage makes it a stream error. The idle timeout closes a connection without
// streams the same way. RequestHeadersTimeout resets a stream whose request
// header block is not complete in time and leaves the connection open.
//
// # Memory
//
// Server streams are pooled per Server, client streams per ClientConn (when
// their user calls Close); bodies move through bufpool buffers; header blocks
// are decoded straight into the stream's reused http.Header. A small request
// and its response cost no allocation in steady state, both sides together,
// the handler's goroutine being reused (a stream's Context, when asked for,
// adds a few). HPACK's encoder keeps the strings of the
// fields it indexes, while a Header's strings live only as long as its buffer:
// fields the encoder may index are given as interned copies, bounded in
// number, and large ones as never-indexed literals.
package h2
