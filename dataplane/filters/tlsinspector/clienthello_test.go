package tlsinspector

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// captureHello returns the first flight a crypto/tls client sends with cfg: a
// real ClientHello, in one TLS record.
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(c, cfg).Handshake() // fails when s is closed
		c.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, 5+(int(hdr[3])<<8|int(hdr[4])))
	copy(rec, hdr)
	if _, err := io.ReadFull(s, rec[5:]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	<-done
	return rec
}

// refragment splits the handshake bytes of the single record hello into
// records of at most size bytes.
func refragment(hello []byte, size int) []byte {
	hs := hello[5:]
	var out []byte
	for len(hs) > 0 {
		n := min(size, len(hs))
		out = append(out, 22, hello[1], hello[2], byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

func TestParseClientHello(t *testing.T) {
	full := captureHello(t, &tls.Config{ServerName: "a.example", NextProtos: []string{"h2", "http/1.1"}})
	bare := captureHello(t, &tls.Config{InsecureSkipVerify: true})
	tls12 := captureHello(t, &tls.Config{ServerName: "B.Example", MaxVersion: tls.VersionTLS12, NextProtos: []string{"x"}})
	corrupt := slices.Clone(full)
	corrupt[len(corrupt)-1] ^= 0xff // inside the last extension: still parses or not, but never panics
	badLen := slices.Clone(full)
	badLen[5+4+2+32]++ // session_id length
	twoType := append(refragment(full, 20)[:25], 21, 3, 3, 0, 2, 2, 40)
	tests := []struct {
		name string
		in   []byte
		sni  string
		alpn []string
		err  error
	}{
		{"sni and alpn", full, "a.example", []string{"h2", "http/1.1"}, nil},
		{"neither", bare, "", nil, nil},
		{"tls 1.2, sni as sent", tls12, "B.Example", []string{"x"}, nil},
		{"records of 7 bytes", refragment(full, 7), "a.example", []string{"h2", "http/1.1"}, nil},
		{"records of 1 byte", refragment(full, 1), "a.example", []string{"h2", "http/1.1"}, nil},
		{"trailing bytes", append(slices.Clone(full), 20, 3, 3, 0, 1, 1), "a.example", []string{"h2", "http/1.1"}, nil},
		{"empty", nil, "", nil, ErrNeedMore},
		{"one byte", full[:1], "", nil, ErrNeedMore},
		{"header only", full[:5], "", nil, ErrNeedMore},
		{"truncated", full[:len(full)-1], "", nil, ErrNeedMore},
		{"truncated fragments", refragment(full, 10)[:100], "", nil, ErrNeedMore},
		{"http", []byte("GET / HTTP/1.1\r\nhost: a\r\n\r\n"), "", nil, ErrNotTLS},
		{"ssh", []byte("SSH-2.0-OpenSSH_9.6\r\n"), "", nil, ErrNotTLS},
		{"record version 2", []byte{22, 2, 0, 0, 4}, "", nil, ErrNotTLS},
		{"server hello", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, "", nil, ErrNotTLS},
		{"empty record", []byte{22, 3, 1, 0, 0}, "", nil, ErrMalformed},
		{"record too long", []byte{22, 3, 1, 0x40, 1}, "", nil, ErrMalformed},
		{"bad session id length", badLen, "", nil, ErrMalformed},
		{"alert between fragments", twoType, "", nil, ErrMalformed},
		{"empty hello", []byte{22, 3, 1, 0, 4, 1, 0, 0, 0}, "", nil, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseClientHello(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if h.ServerName != tt.sni || !slices.Equal(h.ALPN, tt.alpn) {
				t.Errorf("got %q %q, want %q %q", h.ServerName, h.ALPN, tt.sni, tt.alpn)
			}
		})
	}
	ParseClientHello(corrupt) // must not panic
}

// FuzzClientHello checks that the parser never panics and is consistent as
// bytes arrive: a prefix of an input is either incomplete or parses like the
// whole input, and once a prefix parses, every longer one does the same.
func FuzzClientHello(f *testing.F) {
	full := captureHello(f, &tls.Config{ServerName: "a.example", NextProtos: []string{"h2", "http/1.1"}})
	f.Add(full)
	f.Add(refragment(full, 9))
	f.Add(captureHello(f, &tls.Config{InsecureSkipVerify: true}))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		want, wantErr := ParseClientHello(b)
		if len(b) > 4096 {
			return
		}
		var found *ClientHello
		for k := 0; k < len(b); k++ {
			h, err := ParseClientHello(b[:k])
			switch {
			case found != nil:
				if err != nil || h.ServerName != found.ServerName || !slices.Equal(h.ALPN, found.ALPN) {
					t.Fatalf("prefix %d: %+v %v after %+v", k, h, err, found)
				}
			case err == nil:
				found = h
				if wantErr != nil || h.ServerName != want.ServerName || !slices.Equal(h.ALPN, want.ALPN) {
					t.Fatalf("prefix %d: %+v, whole input: %+v %v", k, h, want, wantErr)
				}
			case errors.Is(err, ErrNeedMore):
			case !errors.Is(err, wantErr):
				t.Fatalf("prefix %d: %v, whole input: %v", k, err, wantErr)
			}
		}
		if wantErr == nil && bytes.IndexByte([]byte(want.ServerName), 0) >= 0 {
			t.Fatalf("server name with NUL: %q", want.ServerName)
		}
	})
}
