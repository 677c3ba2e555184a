// Package netio moves bytes between connections on skiff's data path.
//
// Pair is the byte mover of a TCP proxy (Envoy's tcp_proxy): it copies both ways
// between a downstream and an upstream conn with splice(2) when both are plain
// sockets and through pooled buffers otherwise, forwards half-closes and resets,
// enforces an idle timeout, and can be paused at a safe point and resumed on the
// same conns (the hot-restart handover). PipePool holds the kernel pipes splice
// needs. Conn is a TCP connection whose reads and writes are raw system calls
// that wait in the runtime's poller (see raw.go for why), with WriteRead for a
// request and its answer in one wait; the HTTP codecs run on it.
//
// Nothing here allocates per chunk: buffers and pipes come from pools and are
// held only while bytes are in flight, so an idle connection costs its sockets
// and under a kilobyte of Pair.
package netio
