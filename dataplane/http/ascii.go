package http

// ASCII case folding for HTTP's tokens and names, as Envoy's absl helpers do
// it: no Unicode folding.

// LowerASCII returns s with its ASCII upper-case letters lowered: s itself,
// without allocating, when it has none.
func LowerASCII(s string) string {
	i := 0
	for i < len(s) && !('A' <= s[i] && s[i] <= 'Z') {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// EqualFoldLower reports whether s equals lower, ASCII letters of s compared
// case-insensitively; lower must be lower case.
func EqualFoldLower(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
