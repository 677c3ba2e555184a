package h2

import (
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// TestEncodeBlockRepeats: a response head that repeats the last one is sent
// as the last one's bytes, and a decoder that followed every block (as the
// peer's does) reads each as encoded, through repeats, new values, blocks
// that add to the table in between, trailers, a field too large to index
// and a table size change.
func TestEncodeBlockRepeats(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newConn(a, false, settings{})
	var got []hfield
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got = append(got, hfield{f.Name, f.Value}) })

	resp := func(kv ...string) *http.Header {
		h := new(http.Header)
		for i := 0; i+1 < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	ok := func(date string, more ...string) *http.Header {
		return resp(append([]string{":status", "200", "content-type", "text/plain", "content-length", "2", "date", date, "connection", "keep-alive"}, more...)...)
	}
	steps := []struct {
		h        *http.Header
		trailers bool
		reused   bool // the block is the last one's bytes
	}{
		{h: ok("Sat, 28 Nov 2026 03:00:00 GMT")},                                               // new fields: added to the table
		{h: ok("Sat, 28 Nov 2026 03:00:00 GMT")},                                               // all indexed now, not yet reusable
		{h: ok("Sat, 28 Nov 2026 03:00:00 GMT"), reused: true},                                 // a repeat
		{h: ok("Sat, 28 Nov 2026 03:00:00 GMT"), reused: true},                                 // and again
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT")},                                               // a new date
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT")},                                               // indexed
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT"), reused: true},                                 // a repeat
		{h: resp("grpc-status", "0"), trailers: true},                                          // trailers add to the table
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT")},                                               // indices moved: encoded again
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT"), reused: true},                                 // a repeat
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT", "x-extra", "1")},                               // one field more
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT"), reused: false},                                // one field fewer: the last block was the longer one
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT"), reused: true},                                 // a repeat
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT", "x-big", strings.Repeat("v", internMaxField))}, // never indexed
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT", "x-big", strings.Repeat("v", internMaxField))}, // not reused: its strings are not kept
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT")},
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT"), reused: true},
		{h: nil}, // the peer shrinks the table: a size update comes first
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT")},
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT")},
		{h: ok("Sat, 28 Nov 2026 03:00:01 GMT"), reused: true},
	}
	for i, st := range steps {
		if st.h == nil {
			if err := c.writeCtrl(&ctrlFrame{kind: ctrlTableSize, id: 256}); err != nil {
				t.Fatal(err)
			}
			dec.SetAllowedMaxDynamicTableSize(256)
			continue
		}
		var prev []byte
		if c.lastOK {
			prev = c.lastBlock
		}
		block := c.encodeBlock(st.h, st.trailers)
		reused := prev != nil && len(block) > 0 && &block[0] == &prev[0]
		if reused != st.reused {
			t.Errorf("step %d: block reused %v, want %v", i, reused, st.reused)
		}
		got = got[:0]
		if _, err := dec.Write(block); err != nil {
			t.Fatalf("step %d: decoding: %v", i, err)
		}
		if err := dec.Close(); err != nil {
			t.Fatalf("step %d: decoding: %v", i, err)
		}
		var want []hfield
		st.h.Range(func(name, value string) bool {
			if name != "connection" {
				want = append(want, hfield{name, value})
			}
			return true
		})
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: decoded %v, want %v", i, got, want)
		}
	}
}

// TestEncodeFieldEmptyValueKeepsNoAlias: a field with an empty value is
// interned as a copy too. Go's name + "" is name itself, so the interned
// field (and the HPACK table's entry) aliased the header's buffer, which a
// later response reuses: the table's maps then held keys whose bytes had
// changed, and a later search panicked in the encoder ("id (7) <=
// evictCount (49)", seen in the e2e suite under load).
func TestEncodeFieldEmptyValueKeepsNoAlias(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newConn(a, false, settings{})
	h := new(http.Header)
	h.Add(":status", "200")
	h.Add("x-empty-value", "")
	c.encodeBlock(h, false)
	for _, f := range c.fields {
		if f.name == "x-empty-value" {
			h.Reset() // the buffer the name was in is overwritten
			h.Add(":status", "204")
			h.Add("y-other-value", "")
			if f.name != "x-empty-value" {
				t.Fatalf("the interned field changed with the header's buffer: %q", f.name)
			}
			return
		}
	}
	t.Fatal("x-empty-value not among the encoded fields")
}
