package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// memConn is a net.Conn that reads a fixed input, then EOF, and records what
// is written.
type memConn struct {
	r      *bytes.Reader
	mu     sync.Mutex
	out    bytes.Buffer
	closed bool
}

func (m *memConn) Read(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, net.ErrClosed
	}
	return m.r.Read(p)
}

func (m *memConn) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, net.ErrClosed
	}
	return m.out.Write(p)
}

func (m *memConn) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

func (m *memConn) output() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.out.Bytes())
}

func (*memConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (*memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (*memConn) SetDeadline(time.Time) error      { return nil }
func (*memConn) SetReadDeadline(time.Time) error  { return nil }
func (*memConn) SetWriteDeadline(time.Time) error { return nil }
func (*memConn) CloseWrite() error                { return nil }

// fuzzSeeds are frame sequences (after the preface) worth mutating.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	build := func(f func(fr *http2.Framer, enc func(kv ...string) []byte)) {
		var b, hb bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		fr.AllowIllegalWrites = true
		e := hpack.NewEncoder(&hb)
		enc := func(kv ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(kv); i += 2 {
				_ = e.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			return bytes.Clone(hb.Bytes())
		}
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
		f(fr, enc)
		seeds = append(seeds, bytes.Clone(b.Bytes()))
	}
	req := []string{":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/p", "content-length", "4"}
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(req...), EndHeaders: true})
		_ = fr.WriteData(1, true, []byte("body"))
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		blk := enc(append(req[:8:8], "x-long", string(bytes.Repeat([]byte("v"), 200)))...)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:10]})
		_ = fr.WriteContinuation(1, true, blk[10:])
		_ = fr.WriteData(1, false, []byte("ab"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc("x-t", "1"), EndHeaders: true, EndStream: true})
		_ = fr.WriteWindowUpdate(0, 1000)
		_ = fr.WriteWindowUpdate(1, 1000)
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		_ = fr.WritePing(false, [8]byte{1})
		_ = fr.WritePriority(3, http2.PriorityParam{StreamDep: 1, Weight: 5})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(req[:8]...), EndHeaders: true, EndStream: true})
		_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: enc(req[:8]...), EndHeaders: true, EndStream: true, PadLength: 3})
		_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 20000})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(req[:8]...), EndHeaders: true})
		_ = fr.WriteDataPadded(1, false, []byte("xy"), []byte{0, 0})
		_ = fr.WriteRawFrame(0x42, 0, 1, []byte("unknown"))
		_ = fr.WriteData(1, true, nil)
	})
	return seeds
}

// FuzzServerFrames feeds arbitrary bytes after the preface to a server. It
// must not panic or hang, everything it writes must be well-formed HTTP/2, and
// a connection error must come out as a GOAWAY with the code Serve reports.
func FuzzServerFrames(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add([]byte("\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage"))
	srv, err := NewServer(ServerOptions{MaxConcurrentStreams: 10, MaxHeaderListSize: 4096, InitialStreamWindowSize: MinWindowSize})
	if err != nil {
		f.Fatal(err)
	}
	h := handlerFunc(func(s http.ServerStream) {
		b, err := io.ReadAll(io.LimitReader(s, 1<<16))
		if err != nil {
			return
		}
		var rh http.Header
		rh.Add(http.Status, "200")
		if s.WriteHeader(&rh, false) != nil {
			return
		}
		_, _ = s.Write(b)
		var tr http.Header
		tr.Add("x-len", "1")
		_ = s.EndWithTrailers(&tr)
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		nc := &memConn{r: bytes.NewReader(append([]byte(ClientPreface), in...))}
		done := make(chan error, 1)
		go func() { done <- srv.NewConn().Serve(context.Background(), nc, h) }()
		var serr error
		select {
		case serr = <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("Serve did not return")
		}
		out := nc.output()
		fr := http2.NewFramer(nil, bytes.NewReader(out))
		fr.MaxHeaderListSize = 1 << 20
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		var lastGoAway *http2.GoAwayFrame
		for {
			fm, err := fr.ReadFrame()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("server wrote a malformed frame: %v (after %d bytes)", err, len(out))
			}
			if g, ok := fm.(*http2.GoAwayFrame); ok {
				lastGoAway = &http2.GoAwayFrame{LastStreamID: g.LastStreamID, ErrCode: g.ErrCode}
			}
		}
		var ce *ConnError
		if errors.As(serr, &ce) {
			if lastGoAway == nil || http.ResetCode(lastGoAway.ErrCode) != ce.Code {
				t.Fatalf("Serve returned %v; last GOAWAY %+v", serr, lastGoAway)
			}
		} else if serr != nil {
			t.Fatalf("Serve returned %v", serr)
		}
	})
}
