package http

import (
	"math"
	"testing"
	"time"
)

func TestParseGRPCTimeout(t *testing.T) {
	for v, want := range map[string]time.Duration{"1S": time.Second, "200m": 200 * time.Millisecond, "3M": 3 * time.Minute,
		"5u": 5 * time.Microsecond, "7n": 7, "2H": 2 * time.Hour, "99999999m": 99999999 * time.Millisecond,
		"99999999H": math.MaxInt64} {
		if d, ok := ParseGRPCTimeout(v); !ok || d != want {
			t.Errorf("%s: %v %v", v, d, ok)
		}
	}
	for _, v := range []string{"", "S", "1X", "123456789S", "-1S", "+1S", "1 S", "1s"} {
		if _, ok := ParseGRPCTimeout(v); ok {
			t.Errorf("%q accepted", v)
		}
	}
}

func TestFormatGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0m"},
		{-time.Second, "0m"},
		{1500 * time.Microsecond, "1m"},
		{5 * time.Second, "5000m"},
		{99999999 * time.Millisecond, "99999999m"},
		{100000000 * time.Millisecond, "100000S"},
		{99999999 * time.Second, "99999999S"},
		{100000000 * time.Second, "1666666M"},
		{time.Duration(math.MaxInt64), "2562047H"}, // time.Duration runs out before 8 digits of hours
	} {
		if got := FormatGRPCTimeout(tc.d); got != tc.want {
			t.Errorf("FormatGRPCTimeout(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

// FuzzGRPCTimeout: whatever ParseGRPCTimeout accepts is at most 8 digits and a
// unit, and what FormatGRPCTimeout makes parses back to the duration it was
// given, rounded down to a unit of its own.
func FuzzGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1S", "200m", "99999999H", "5u", "x", "", "00000001n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ParseGRPCTimeout(v)
		if !ok {
			return
		}
		if d < 0 || len(v) > 9 {
			t.Fatalf("%q parsed as %v", v, d)
		}
		s := FormatGRPCTimeout(d)
		back, ok := ParseGRPCTimeout(s)
		if !ok || back > d || (d >= time.Millisecond && back < d/2) {
			t.Fatalf("%q = %v formats as %q, which parses as %v, %v", v, d, s, back, ok)
		}
	})
}
