package http

import "testing"

func TestJoinInline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		resp   bool
		fields [][2]string
		want   string
	}{
		{"request: inline headers joined in the first one's place", false, [][2]string{
			{"user-agent", "a"}, {"accept", "x"}, {"x-forwarded-proto", "http"},
			{"user-agent", "b"}, {"accept", "y"}, {"x-forwarded-proto", "https"}, {"user-agent", "c"},
		}, "user-agent: a,b,c\naccept: x\nx-forwarded-proto: http,https\naccept: y\n"},
		{"empty values skipped", false, [][2]string{
			{"via", ""}, {"via", "1.1 a"}, {"via", ""}, {"via", "1.1 b"},
		}, "via: 1.1 a,1.1 b\n"},
		{"request-only names stay repeated in a response", true, [][2]string{
			{"user-agent", "a"}, {"user-agent", "b"}, {"server", "s1"}, {"server", "s2"},
		}, "user-agent: a\nuser-agent: b\nserver: s1,s2\n"},
		{"response-only names stay repeated in a request", false, [][2]string{
			{"server", "s1"}, {"server", "s2"}, {"set-cookie", "a=1"}, {"set-cookie", "b=2"},
		}, "server: s1\nserver: s2\nset-cookie: a=1\nset-cookie: b=2\n"},
		{"no repeats", false, [][2]string{{"user-agent", "a"}, {"via", "v"}}, "user-agent: a\nvia: v\n"},
		{"content-length left to the codecs", true, [][2]string{
			{"content-length", "5"}, {"content-length", "5"},
		}, "content-length: 5\ncontent-length: 5\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Header
			for _, f := range tc.fields {
				h.Add(f[0], f[1])
			}
			h.JoinInline(tc.resp)
			if got := h.String(); got != tc.want {
				t.Errorf("got\n%swant\n%s", got, tc.want)
			}
			n := 0
			h.Range(func(string, string) bool { n++; return true })
			if h.Len() != n {
				t.Errorf("Len %d, %d fields", h.Len(), n)
			}
		})
	}
}

func TestJoinInlineNoRepeatsAllocatesNothing(t *testing.T) {
	var h Header
	for _, n := range []string{"user-agent", "accept", "x-forwarded-proto", "content-type", "x-b3-traceid", "accept-encoding"} {
		h.Add(n, "value")
	}
	if a := testing.AllocsPerRun(100, func() { h.JoinInline(false) }); a != 0 {
		t.Errorf("%v allocs", a)
	}
}

func BenchmarkJoinInlineNoRepeats(b *testing.B) {
	var h Header
	for _, n := range []string{":method", ":path", ":authority", ":scheme", "user-agent", "accept", "x-forwarded-proto", "content-type"} {
		h.Add(n, "value")
	}
	for b.Loop() {
		h.JoinInline(false)
	}
}

// FuzzJoinInline checks JoinInline against a plain model on headers made
// from the input: every inline name ends as one field, at its first place,
// holding its non-empty values joined with ","; every other field stays.
func FuzzJoinInline(f *testing.F) {
	f.Add([]byte("\x01a\x02b\x01c\x00d"), false)
	f.Add([]byte("\x03s\x03\x00\x05x\x03t"), true)
	names := []string{"user-agent", "via", "accept", "server", "x-forwarded-for", "set-cookie", "content-type", ":path", "date", "x", "content-length"}
	f.Fuzz(func(t *testing.T, in []byte, resp bool) {
		var h Header
		var fields [][2]string
		for i := 0; i+1 < len(in) && len(fields) < 40; i += 2 {
			name := names[int(in[i])%len(names)]
			value := string(rune('a' + in[i+1]%26))
			if in[i+1]%7 == 0 {
				value = ""
			}
			h.Add(name, value)
			fields = append(fields, [2]string{name, value})
		}
		// The model.
		var want [][2]string
		first := map[string]int{}
		for _, fl := range fields {
			name, value := fl[0], fl[1]
			if name[0] != ':' && name != "content-length" && IsInline(name, resp) {
				if i, ok := first[name]; ok {
					if value != "" {
						if want[i][1] != "" {
							want[i][1] += ","
						}
						want[i][1] += value
					}
					continue
				}
				first[name] = len(want)
			}
			want = append(want, fl)
		}
		h.JoinInline(resp)
		var got [][2]string
		h.Range(func(name, value string) bool {
			got = append(got, [2]string{name, value})
			return true
		})
		if len(got) != len(want) || h.Len() != len(want) {
			t.Fatalf("got %q (Len %d), want %q", got, h.Len(), want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("got %q, want %q", got, want)
			}
		}
	})
}
