package accesslog

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// timeFormat is a START_TIME format, rendered in UTC as Envoy's: strftime
// (absl::FormatTime, the C locale) with absl's %Ez, %E*z, %E4Y, %E#S, %E*S,
// %E#f and %E*f, and Envoy's %s (seconds since the epoch) and %f, %1f..%9f,
// %*f (fractional seconds).
type timeFormat struct {
	layout []timePart
	utcISO bool // the default
}

type timePart struct {
	lit  string
	verb byte // a strftime conversion, or one of the verb* below; 0 for lit
	n    int  // fractional digits, fracDynamic for "*"
}

// Verbs for the extensions; strftime's are their letters.
const (
	verbFrac        = 1 // %f, %3f, %*f, %E3f, %E*f: the digits
	verbDotFrac     = 2 // what %E3S, %E*S add to %S: "." and the digits
	verbOffsetColon = 3 // %Ez: +hh:mm
	verbOffsetSecs  = 4 // %E*z: +hh:mm:ss
	verbYear4       = 5 // %E4Y: at least 4 digits
)

// fracDynamic is the width of %*f, %E*f, %E*S: the digits up to the last
// non-zero one.
const fracDynamic = -1

// plainVerbs are the strftime conversions skiff renders as glibc and absl
// do in the C locale.
const plainVerbs = "aAbBcCdDeFgGhHIjklmMpPrRsSTuUVwWxXyYzZ"

// compositeVerb spells conversion v, if it is a composite one, as a
// sequence of conversions (letters) and literals, as the C locale's strftime.
func compositeVerb(v byte) string {
	switch v {
	case 'c':
		return "a b e H:M:S Y"
	case 'D', 'x':
		return "m/d/y"
	case 'F':
		return "Y-m-d"
	case 'r':
		return "I:M:S p"
	case 'R':
		return "H:M"
	case 'T', 'X':
		return "H:M:S"
	}
	return ""
}

func parseTimeFormat(s string) (*timeFormat, error) {
	if s == "" {
		return &timeFormat{utcISO: true}, nil
	}
	tf := &timeFormat{}
	var lit strings.Builder
	add := func(ps ...timePart) {
		if lit.Len() > 0 {
			tf.layout = append(tf.layout, timePart{lit: lit.String()})
			lit.Reset()
		}
		tf.layout = append(tf.layout, ps...)
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '%' || i+1 == len(s) {
			lit.WriteByte(s[i])
			continue
		}
		i++
		switch v := s[i]; {
		case v == '%':
			lit.WriteByte('%')
		case v == 'n':
			lit.WriteByte('\n')
		case v == 't':
			lit.WriteByte('\t')
		case strings.IndexByte(plainVerbs, v) >= 0:
			add(timePart{verb: v})
		case v == 'f' || v == '*' || v >= '1' && v <= '9':
			n, next, err := fracWidth(s, i)
			if err != nil {
				return nil, err
			}
			if next == len(s) || s[next] != 'f' {
				return nil, fmt.Errorf("time format %q: unsupported conversion", s[i-1:min(next+1, len(s))])
			}
			add(timePart{verb: verbFrac, n: n})
			i = next
		case v == 'E':
			p, next, err := parseE(s, i+1)
			if err != nil {
				return nil, err
			}
			add(p...)
			i = next
		default:
			return nil, fmt.Errorf("time format verb %%%c is not supported", v)
		}
	}
	add()
	return tf, nil
}

// fracWidth reads the width of a fractional-seconds conversion at s[i]: a
// digit 1-9, "*", or none (9). It returns the width and the index after it.
func fracWidth(s string, i int) (n, next int, err error) {
	switch c := s[i]; {
	case c == '*':
		return fracDynamic, i + 1, nil
	case c >= '1' && c <= '9':
		return int(c - '0'), i + 1, nil
	}
	return 9, i, nil
}

// parseE parses absl's %E conversions, s[i:] following "%E".
func parseE(s string, i int) ([]timePart, int, error) {
	rest := s[i:]
	switch {
	case strings.HasPrefix(rest, "z"):
		return []timePart{{verb: verbOffsetColon}}, i, nil
	case strings.HasPrefix(rest, "*z"):
		return []timePart{{verb: verbOffsetSecs}}, i + 1, nil
	case strings.HasPrefix(rest, "4Y"):
		return []timePart{{verb: verbYear4}}, i + 1, nil
	case len(rest) >= 2 && (rest[0] == '*' || rest[0] >= '1' && rest[0] <= '9'):
		n, next, _ := fracWidth(s, i)
		switch s[next] {
		case 'S':
			return []timePart{{verb: 'S'}, {verb: verbDotFrac, n: n}}, next, nil
		case 'f':
			return []timePart{{verb: verbFrac, n: n}}, next, nil
		}
	}
	return nil, 0, fmt.Errorf("time format %q: unsupported %%E conversion", s[i-2:min(i+2, len(s))])
}

func (tf *timeFormat) append(dst []byte, t time.Time) []byte {
	t = t.UTC()
	if tf.utcISO {
		return t.AppendFormat(dst, "2006-01-02T15:04:05.000Z")
	}
	for i := range tf.layout {
		p := &tf.layout[i]
		if p.verb == 0 {
			dst = append(dst, p.lit...)
			continue
		}
		dst = appendTimeVerb(dst, t, p.verb, p.n)
	}
	return dst
}

// appendTimeVerb appends conversion v of t (n: fractional digits).
func appendTimeVerb(dst []byte, t time.Time, v byte, n int) []byte {
	if seq := compositeVerb(v); seq != "" {
		for i := 0; i < len(seq); i++ {
			if c := seq[i]; c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' {
				dst = appendTimeVerb(dst, t, c, 0)
			} else {
				dst = append(dst, c)
			}
		}
		return dst
	}
	switch v {
	case 'a':
		return append(dst, t.Weekday().String()[:3]...)
	case 'A':
		return append(dst, t.Weekday().String()...)
	case 'b', 'h':
		return append(dst, t.Month().String()[:3]...)
	case 'B':
		return append(dst, t.Month().String()...)
	case 'C':
		return appendPadded(dst, t.Year()/100, 2, '0')
	case 'd':
		return appendPadded(dst, t.Day(), 2, '0')
	case 'e':
		return appendPadded(dst, t.Day(), 2, ' ')
	case 'g':
		y, _ := t.ISOWeek()
		return appendPadded(dst, y%100, 2, '0')
	case 'G':
		y, _ := t.ISOWeek()
		return strconv.AppendInt(dst, int64(y), 10)
	case 'H':
		return appendPadded(dst, t.Hour(), 2, '0')
	case 'k':
		return appendPadded(dst, t.Hour(), 2, ' ')
	case 'I':
		return appendPadded(dst, hour12(t), 2, '0')
	case 'l':
		return appendPadded(dst, hour12(t), 2, ' ')
	case 'j':
		return appendPadded(dst, t.YearDay(), 3, '0')
	case 'm':
		return appendPadded(dst, int(t.Month()), 2, '0')
	case 'M':
		return appendPadded(dst, t.Minute(), 2, '0')
	case 'p':
		if t.Hour() < 12 {
			return append(dst, "AM"...)
		}
		return append(dst, "PM"...)
	case 'P':
		if t.Hour() < 12 {
			return append(dst, "am"...)
		}
		return append(dst, "pm"...)
	case 's':
		return strconv.AppendInt(dst, t.Unix(), 10)
	case 'S':
		return appendPadded(dst, t.Second(), 2, '0')
	case 'u':
		wd := int(t.Weekday())
		if wd == 0 {
			wd = 7
		}
		return strconv.AppendInt(dst, int64(wd), 10)
	case 'w':
		return strconv.AppendInt(dst, int64(t.Weekday()), 10)
	case 'U': // weeks starting on Sunday; days before the first are week 0
		return appendPadded(dst, (t.YearDay()-1+7-int(t.Weekday()))/7, 2, '0')
	case 'W': // weeks starting on Monday
		return appendPadded(dst, (t.YearDay()-1+7-(int(t.Weekday())+6)%7)/7, 2, '0')
	case 'V':
		_, w := t.ISOWeek()
		return appendPadded(dst, w, 2, '0')
	case 'y':
		return appendPadded(dst, t.Year()%100, 2, '0')
	case 'Y':
		return strconv.AppendInt(dst, int64(t.Year()), 10)
	case verbYear4:
		y := t.Year()
		if y < 0 {
			return appendPadded(append(dst, '-'), -y, 3, '0')
		}
		return appendPadded(dst, y, 4, '0')
	case 'z':
		return appendOffset(dst, t, false, false)
	case verbOffsetColon:
		return appendOffset(dst, t, true, false)
	case verbOffsetSecs:
		return appendOffset(dst, t, true, true)
	case 'Z':
		name, _ := t.Zone()
		return append(dst, name...)
	case verbFrac:
		return appendFrac(dst, t, n, false)
	case verbDotFrac:
		return appendFrac(dst, t, n, true)
	}
	return dst
}

func hour12(t time.Time) int {
	if h := t.Hour() % 12; h != 0 {
		return h
	}
	return 12
}

// appendPadded appends n (not negative) in at least width digits, pad-filled.
func appendPadded(dst []byte, n, width int, pad byte) []byte {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	for len(b)-i < width {
		i--
		b[i] = pad
	}
	return append(dst, b[i:]...)
}

// appendOffset appends t's offset from UTC: +hhmm, +hh:mm (colon) or
// +hh:mm:ss (colon and secs).
func appendOffset(dst []byte, t time.Time, colon, secs bool) []byte {
	_, off := t.Zone()
	sign := byte('+')
	if off < 0 {
		sign, off = '-', -off
	}
	dst = appendPadded(append(dst, sign), off/3600, 2, '0')
	if colon {
		dst = append(dst, ':')
	}
	dst = appendPadded(dst, off/60%60, 2, '0')
	if secs {
		dst = appendPadded(append(dst, ':'), off%60, 2, '0')
	}
	return dst
}

// appendFrac appends t's fractional seconds as Envoy's: n digits, or with
// fracDynamic the digits up to the last non-zero one (at least one, or for
// %E*S none, without the dot). dot: %E#S's, with a ".".
func appendFrac(dst []byte, t time.Time, n int, dot bool) []byte {
	ns := t.Nanosecond()
	var digits [9]byte
	for i := 8; i >= 0; i-- {
		digits[i] = byte('0' + ns%10)
		ns /= 10
	}
	if n == fracDynamic {
		n = 9
		for n > 0 && digits[n-1] == '0' {
			n--
		}
		if n == 0 && !dot {
			n = 1
		}
	}
	if dot {
		if n == 0 {
			return dst
		}
		dst = append(dst, '.')
	}
	return append(dst, digits[:n]...)
}
