package h2

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// peer is a hand-driven HTTP/2 endpoint on raw frames, for testing what the
// codec sends and how it reacts to what it gets.
type peer struct {
	t      testing.TB
	nc     net.Conn
	fr     *http2.Framer
	encBuf bytes.Buffer
	enc    *hpack.Encoder
	dec    *hpack.Decoder
	fields []hpack.HeaderField
	// settings the other side sent in its first SETTINGS frame
	settings map[http2.SettingID]uint32
}

func newPeer(t testing.TB, nc net.Conn) *peer {
	p := &peer{t: t, nc: nc, settings: map[http2.SettingID]uint32{}}
	p.fr = http2.NewFramer(nc, nc)
	p.fr.AllowIllegalWrites = true
	p.enc = hpack.NewEncoder(&p.encBuf)
	p.dec = hpack.NewDecoder(4096, func(f hpack.HeaderField) { p.fields = append(p.fields, f) })
	return p
}

// dialPeer connects to a server as a client: preface, SETTINGS, and the
// exchange of the server's SETTINGS and both ACKs.
func dialPeer(t testing.TB, addr string, settings ...http2.Setting) *peer {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	p := newPeer(t, nc)
	if _, err := io.WriteString(nc, ClientPreface); err != nil {
		t.Fatal(err)
	}
	p.handshake(settings...)
	return p
}

// handshake sends SETTINGS and waits for the other side's SETTINGS and its ACK
// of ours (acknowledging its SETTINGS on the way).
func (p *peer) handshake(settings ...http2.Setting) {
	p.t.Helper()
	if err := p.fr.WriteSettings(settings...); err != nil {
		p.t.Fatal(err)
	}
	gotSettings, gotAck := false, false
	for !gotSettings || !gotAck {
		f := p.read()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				gotAck = true
				continue
			}
			gotSettings = true
			_ = f.ForeachSetting(func(s http2.Setting) error { p.settings[s.ID] = s.Val; return nil })
			if err := p.fr.WriteSettingsAck(); err != nil {
				p.t.Fatal(err)
			}
		case *http2.WindowUpdateFrame:
		default:
			p.t.Fatalf("handshake: unexpected %v", f.Header())
		}
	}
}

// read reads the next frame (within 5 s), decoding header blocks into
// p.fields.
func (p *peer) read() http2.Frame {
	p.t.Helper()
	f, err := p.readTimeout(5 * time.Second)
	if err != nil {
		p.t.Fatalf("read frame: %v", err)
	}
	return f
}

func (p *peer) readTimeout(d time.Duration) (http2.Frame, error) {
	_ = p.nc.SetReadDeadline(time.Now().Add(d))
	f, err := p.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	switch f := f.(type) {
	case *http2.HeadersFrame:
		p.fields = p.fields[:0]
		if _, err := p.dec.Write(f.HeaderBlockFragment()); err != nil {
			return nil, err
		}
	case *http2.ContinuationFrame:
		if _, err := p.dec.Write(f.HeaderBlockFragment()); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// quiet asserts that nothing arrives for d.
func (p *peer) quiet(d time.Duration) {
	p.t.Helper()
	f, err := p.readTimeout(d)
	if err == nil {
		p.t.Fatalf("unexpected frame %v", f.Header())
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		p.t.Fatalf("expected silence, got %v", err)
	}
}

// expect reads frames, skipping those skip accepts, until one that want
// accepts; anything else fails the test.
func (p *peer) expect(what string, want func(http2.Frame) bool, skip func(http2.Frame) bool) http2.Frame {
	p.t.Helper()
	for range 1000 {
		f := p.read()
		if want(f) {
			return f
		}
		if skip == nil || !skip(f) {
			p.t.Fatalf("waiting for %s: got %v", what, f.Header())
		}
	}
	p.t.Fatalf("waiting for %s: too many frames", what)
	return nil
}

func skipWindowUpdates(f http2.Frame) bool {
	_, ok := f.(*http2.WindowUpdateFrame)
	return ok
}

// expectRST waits for RST_STREAM on id with code.
func (p *peer) expectRST(id uint32, code http2.ErrCode) {
	p.t.Helper()
	f := p.expect("RST_STREAM", func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }, skipWindowUpdates)
	rst := f.(*http2.RSTStreamFrame)
	if rst.StreamID != id || rst.ErrCode != code {
		p.t.Fatalf("got RST_STREAM stream %d %v, want stream %d %v", rst.StreamID, rst.ErrCode, id, code)
	}
}

// expectGoAway waits for GOAWAY and checks its code.
func (p *peer) expectGoAway(code http2.ErrCode) *http2.GoAwayFrame {
	p.t.Helper()
	f := p.expect("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }, func(f http2.Frame) bool {
		switch f.(type) {
		case *http2.WindowUpdateFrame, *http2.SettingsFrame, *http2.PingFrame:
			return true
		}
		return false
	})
	g := f.(*http2.GoAwayFrame)
	if g.ErrCode != code {
		p.t.Fatalf("GOAWAY code %v (%q), want %v", g.ErrCode, g.DebugData(), code)
	}
	return g
}

// expectClosed waits for the other side to close the connection.
func (p *peer) expectClosed() {
	p.t.Helper()
	for range 1000 {
		_, err := p.readTimeout(5 * time.Second)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				p.t.Fatal("connection not closed")
			}
			p.nc.Close() // as a client does on EOF
			return
		}
	}
	p.t.Fatal("connection not closed")
}

// encode HPACK-encodes name, value pairs.
func (p *peer) encode(kv ...string) []byte {
	p.encBuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = p.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(p.encBuf.Bytes())
}

// request sends a HEADERS frame with a GET request to path plus extra fields.
func (p *peer) request(id uint32, end bool, path string, extra ...string) {
	p.t.Helper()
	kv := append([]string{":method", "GET", ":scheme", "http", ":authority", "test", ":path", path}, extra...)
	p.headers(id, end, kv...)
}

func (p *peer) headers(id uint32, end bool, kv ...string) {
	p.t.Helper()
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.encode(kv...), EndStream: end, EndHeaders: true}); err != nil {
		p.t.Fatal(err)
	}
}

func (p *peer) data(id uint32, end bool, b []byte) {
	p.t.Helper()
	if err := p.fr.WriteData(id, end, b); err != nil {
		p.t.Fatal(err)
	}
}

// field returns the value of name in the last header block read.
func (p *peer) field(name string) string {
	for _, f := range p.fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// readResponse reads one stream's response: header fields, body, trailers.
func (p *peer) readResponse(id uint32) (hdr []hpack.HeaderField, body []byte, trailers []hpack.HeaderField) {
	p.t.Helper()
	for range 10000 {
		f := p.read()
		if f.Header().StreamID != id {
			if f.Header().StreamID == 0 {
				continue
			}
			p.t.Fatalf("frame for stream %d while reading %d", f.Header().StreamID, id)
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if hdr == nil {
				hdr = append([]hpack.HeaderField(nil), p.fields...)
			} else {
				trailers = append([]hpack.HeaderField(nil), p.fields...)
			}
			if f.StreamEnded() {
				return
			}
		case *http2.DataFrame:
			body = append(body, f.Data()...)
			if f.StreamEnded() {
				return
			}
		case *http2.RSTStreamFrame:
			p.t.Fatalf("stream %d reset: %v", id, f.ErrCode)
		}
	}
	p.t.Fatal("response too long")
	return
}

// dialRawConn connects to addr; the test's cleanup closes the connection.
func dialRawConn(t testing.TB, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// readResponses reads the responses of several streams, in any order.
func (p *peer) readResponses(ids ...uint32) map[uint32]string {
	p.t.Helper()
	want := map[uint32]bool{}
	for _, id := range ids {
		want[id] = true
	}
	bodies := map[uint32]string{}
	for len(want) > 0 {
		f := p.read()
		id := f.Header().StreamID
		if id == 0 {
			continue
		}
		if !want[id] {
			p.t.Fatalf("frame %v for an unexpected stream", f.Header())
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if f.StreamEnded() {
				delete(want, id)
			}
		case *http2.DataFrame:
			bodies[id] += string(f.Data())
			if f.StreamEnded() {
				delete(want, id)
			}
		case *http2.RSTStreamFrame:
			p.t.Fatalf("stream %d reset: %v", id, f.ErrCode)
		}
	}
	return bodies
}
