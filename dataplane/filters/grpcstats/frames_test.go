package grpcstats

import (
	"encoding/binary"
	"testing"
)

// frames is the gRPC framing of messages of the given lengths.
func frames(lengths ...int) []byte {
	var b []byte
	for _, n := range lengths {
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		b = append(b, make([]byte, n)...)
	}
	return b
}

func TestFrameCounter(t *testing.T) {
	body := frames(3, 0, 300, 1)
	for _, split := range []int{1, 2, 5, 6, 7, 100, len(body)} {
		var f frameCounter
		var got uint64
		for b := body; len(b) > 0; {
			n := min(split, len(b))
			got += f.count(b[:n])
			b = b[n:]
		}
		if got != 4 {
			t.Errorf("chunks of %d: %d frames, want 4", split, got)
		}
	}
	// A frame counts from its first byte, as Envoy's FrameInspector.
	var f frameCounter
	if n := f.count([]byte{0}); n != 1 {
		t.Errorf("a flag byte alone: %d frames, want 1", n)
	}
}

// FuzzFrameCounter: however a body of whole frames is cut into chunks, the
// counts add up to its number of frames.
func FuzzFrameCounter(f *testing.F) {
	f.Add([]byte{3, 0, 200, 1}, []byte{1, 5, 9})
	f.Fuzz(func(t *testing.T, lens, cuts []byte) {
		if len(lens) > 20 {
			lens = lens[:20]
		}
		var ls []int
		for _, l := range lens {
			ls = append(ls, int(l)*7)
		}
		body := frames(ls...)
		var fc frameCounter
		var got uint64
		for i := 0; len(body) > 0; i++ {
			n := len(body)
			if i < len(cuts) {
				n = min(int(cuts[i])+1, n)
			}
			got += fc.count(body[:n])
			body = body[n:]
		}
		if got != uint64(len(ls)) {
			t.Fatalf("%d frames counted, want %d", got, len(ls))
		}
	})
}
