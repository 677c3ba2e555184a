// Package x509name gives the names in an X.509 certificate as Envoy gives
// them: URI SANs as the certificate spells them (URISANs), and a
// distinguished name the way Envoy prints a certificate's subject and issuer
// (%DOWNSTREAM_PEER_SUBJECT%, the x-forwarded-client-cert Subject, RBAC's
// principal_name): BoringSSL's X509_NAME_print_ex with XN_FLAG_RFC2253.
//
// That is RFC 2253 with BoringSSL's choices, which Go's pkix.Name.String
// does not share:
//
//   - the attributes last to first, "," between RDNs and "+" inside a
//     multi-valued one;
//   - OpenSSL's short names (CN, O, OU, C, ST, L, street, DC, UID,
//     emailAddress, serialNumber, SN, GN, ...); an attribute type without
//     one is its dotted OID and its value the "#" and upper-case hex of the
//     value's DER;
//   - values as UTF-8 with every byte above 0x7f and every control
//     character escaped as \XX (upper-case hex), `\ " , + < > ;`, a leading
//     space or '#' and a trailing space escaped with a backslash; a value of
//     a type that is no string is dumped as "#" and its DER in hex.
//
// Append and String work on the name's DER (x509.Certificate's RawSubject
// or RawIssuer); Append allocates nothing.
package x509name

import (
	"errors"
	"strconv"
	"unicode/utf8"
)

// ErrMalformed is returned for DER that is not a Name.
var ErrMalformed = errors.New("x509name: malformed distinguished name")

// String returns the name in raw rendered as Envoy does, or "" if raw is
// malformed.
func String(raw []byte) string {
	b, err := Append(nil, raw)
	if err != nil {
		return ""
	}
	return string(b)
}

// Append appends the name in raw, rendered as Envoy does, to dst.
func Append(dst, raw []byte) ([]byte, error) {
	seq, rest, ok := element(raw, tagSequence)
	if !ok || len(rest) != 0 {
		return dst, ErrMalformed
	}
	// The attributes are printed last to first: the RDNs are collected
	// first (a name has few; 16 cover all but the odd one, whose later RDNs
	// are found again by walking).
	var rdns [16][]byte
	n, ok := elements(seq, tagSet, rdns[:])
	if !ok {
		return dst, ErrMalformed
	}
	start := len(dst)
	for i := n - 1; i >= 0; i-- {
		rdn := nth(seq, tagSet, i)
		if i < len(rdns) {
			rdn = rdns[i]
		}
		var err error
		if dst, err = appendRDN(dst, rdn, len(dst) > start); err != nil {
			return dst[:start], err
		}
	}
	return dst, nil
}

// elements reads the DER elements of tag that p holds, storing the contents
// of the first len(out) in out, and returns how many there are; false if p
// holds anything else.
func elements(p []byte, tag byte, out [][]byte) (int, bool) {
	n := 0
	for ; len(p) > 0; n++ {
		contents, rest, ok := element(p, tag)
		if !ok {
			return 0, false
		}
		if n < len(out) {
			out[n] = contents
		}
		p = rest
	}
	return n, true
}

// nth returns the contents of the i-th element of p, which elements checked.
func nth(p []byte, tag byte, i int) []byte {
	for range i {
		_, p, _ = element(p, tag)
	}
	contents, _, _ := element(p, tag)
	return contents
}

// appendRDN appends the attributes of one RDN, last to first, joined by
// "+"; a "," goes first unless it is the name's first RDN.
func appendRDN(dst, set []byte, sep bool) ([]byte, error) {
	var atvs [8][]byte
	n, ok := elements(set, tagSequence, atvs[:])
	if !ok || n == 0 || n > len(atvs) {
		return dst, ErrMalformed // an empty RDN, or more values than any real name has
	}
	for i := n - 1; i >= 0; i-- {
		switch {
		case i < n-1:
			dst = append(dst, '+')
		case sep:
			dst = append(dst, ',')
		}
		var err error
		if dst, err = appendATV(dst, atvs[i]); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// appendATV appends "type=value".
func appendATV(dst, atv []byte) ([]byte, error) {
	oid, rest, ok := element(atv, tagOID)
	if !ok || len(oid) == 0 {
		return dst, ErrMalformed
	}
	tag, val, full, rest, ok := anyElement(rest)
	if !ok || len(rest) != 0 {
		return dst, ErrMalformed
	}
	name := shortName(oid)
	if name == "" {
		var err error
		if dst, err = appendOID(dst, oid); err != nil {
			return dst, err
		}
		dst = append(dst, '=')
		return appendDump(dst, full), nil
	}
	dst = append(dst, name...)
	dst = append(dst, '=')
	switch tag {
	case tagUTF8String:
		// Taken a byte at a time, as BoringSSL does with UTF8_CONVERT.
		for i, c := range val {
			dst = appendEscaped(dst, c, i == 0, i == len(val)-1)
		}
	case tagNumericString, tagPrintableString, tagT61String, tagIA5String, tagUTCTime, tagGeneralizedTime, tagVisibleString:
		// Latin-1, converted to UTF-8.
		for i, c := range val {
			dst = appendRune(dst, rune(c), i == 0, i == len(val)-1)
		}
	case tagBMPString:
		if len(val)%2 != 0 {
			return dst, ErrMalformed
		}
		for i := 0; i < len(val); i += 2 {
			dst = appendRune(dst, rune(val[i])<<8|rune(val[i+1]), i == 0, i == len(val)-2)
		}
	case tagUniversalString:
		if len(val)%4 != 0 {
			return dst, ErrMalformed
		}
		for i := 0; i < len(val); i += 4 {
			r := rune(val[i])<<24 | rune(val[i+1])<<16 | rune(val[i+2])<<8 | rune(val[i+3])
			dst = appendRune(dst, r, i == 0, i == len(val)-4)
		}
	default:
		dst = appendDump(dst, full)
	}
	return dst, nil
}

// appendRune appends r as UTF-8, each byte escaped.
func appendRune(dst []byte, r rune, first, last bool) []byte {
	var b [utf8.UTFMax]byte
	n := utf8.EncodeRune(b[:], r)
	for i := range n {
		dst = appendEscaped(dst, b[i], first && i == 0, last && i == n-1)
	}
	return dst
}

const hexDigits = "0123456789ABCDEF"

// appendEscaped appends one byte of a value as BoringSSL's do_esc_char does
// with ESC_2253, ESC_CTRL and ESC_MSB.
func appendEscaped(dst []byte, c byte, first, last bool) []byte {
	switch {
	case c > 0x7f, c < 0x20, c == 0x7f:
		return append(dst, '\\', hexDigits[c>>4], hexDigits[c&0xf])
	case c == '\\', c == '"', c == ',', c == '+', c == '<', c == '>', c == ';',
		first && (c == ' ' || c == '#'), last && c == ' ':
		return append(dst, '\\', c)
	}
	return append(dst, c)
}

// appendDump appends "#" and the upper-case hex of der.
func appendDump(dst, der []byte) []byte {
	dst = append(dst, '#')
	for _, c := range der {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return dst
}

// appendOID appends the dotted form of an OBJECT IDENTIFIER's contents.
func appendOID(dst, oid []byte) ([]byte, error) {
	first := true
	var v uint64
	for i, c := range oid {
		if v > 1<<56 {
			return dst, ErrMalformed
		}
		v = v<<7 | uint64(c&0x7f)
		if c&0x80 != 0 {
			if i == len(oid)-1 {
				return dst, ErrMalformed
			}
			continue
		}
		if first {
			switch {
			case v < 40:
				dst = append(dst, '0', '.')
			case v < 80:
				dst = append(dst, '1', '.')
				v -= 40
			default:
				dst = append(dst, '2', '.')
				v -= 80
			}
			first = false
		} else {
			dst = append(dst, '.')
		}
		dst = strconv.AppendUint(dst, v, 10)
		v = 0
	}
	return dst, nil
}

// shortName is OpenSSL's short name for a DN attribute type given its OID's
// encoded contents, or "" for one it has none for (then the OID is
// printed).
func shortName(oid []byte) string {
	// id-at (2.5.4.x): 55 04 x.
	if len(oid) == 3 && oid[0] == 0x55 && oid[1] == 0x04 {
		switch oid[2] {
		case 3:
			return "CN"
		case 4:
			return "SN"
		case 5:
			return "serialNumber"
		case 6:
			return "C"
		case 7:
			return "L"
		case 8:
			return "ST"
		case 9:
			return "street"
		case 10:
			return "O"
		case 11:
			return "OU"
		case 12:
			return "title"
		case 13:
			return "description"
		case 14:
			return "searchGuide"
		case 15:
			return "businessCategory"
		case 16:
			return "postalAddress"
		case 17:
			return "postalCode"
		case 18:
			return "postOfficeBox"
		case 20:
			return "telephoneNumber"
		case 41:
			return "name"
		case 42:
			return "GN"
		case 43:
			return "initials"
		case 44:
			return "generationQualifier"
		case 45:
			return "x500UniqueIdentifier"
		case 46:
			return "dnQualifier"
		case 51:
			return "houseIdentifier"
		case 65:
			return "pseudonym"
		case 72:
			return "role"
		case 97:
			return "organizationIdentifier"
		}
		return ""
	}
	switch string(oid) {
	case "\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x19": // 0.9.2342.19200300.100.1.25
		return "DC"
	case "\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x01": // 0.9.2342.19200300.100.1.1
		return "UID"
	case "\x2a\x86\x48\x86\xf7\x0d\x01\x09\x01": // 1.2.840.113549.1.9.1
		return "emailAddress"
	case "\x2b\x06\x01\x04\x01\x82\x37\x3c\x02\x01\x01": // 1.3.6.1.4.1.311.60.2.1.1
		return "jurisdictionL"
	case "\x2b\x06\x01\x04\x01\x82\x37\x3c\x02\x01\x02": // 1.3.6.1.4.1.311.60.2.1.2
		return "jurisdictionST"
	case "\x2b\x06\x01\x04\x01\x82\x37\x3c\x02\x01\x03": // 1.3.6.1.4.1.311.60.2.1.3
		return "jurisdictionC"
	}
	return ""
}

// DER tags of the elements a Name holds.
const (
	tagOID             = 0x06
	tagUTF8String      = 0x0c
	tagNumericString   = 0x12
	tagPrintableString = 0x13
	tagT61String       = 0x14
	tagIA5String       = 0x16
	tagUTCTime         = 0x17
	tagGeneralizedTime = 0x18
	tagVisibleString   = 0x1a
	tagUniversalString = 0x1c
	tagBMPString       = 0x1e
	tagSequence        = 0x30
	tagSet             = 0x31
)

// element reads one DER element of tag from p and returns its contents and
// what follows it.
func element(p []byte, tag byte) (contents, rest []byte, ok bool) {
	t, contents, _, rest, ok := anyElement(p)
	if !ok || t != tag {
		return nil, nil, false
	}
	return contents, rest, true
}

// anyElement reads one DER element with a one-byte tag (all a Name's are):
// its tag, contents, whole encoding, and what follows.
func anyElement(p []byte) (tag byte, contents, full, rest []byte, ok bool) {
	if len(p) < 2 || p[0]&0x1f == 0x1f {
		return 0, nil, nil, nil, false
	}
	tag = p[0]
	n, hdr := int(p[1]), 2
	if n&0x80 != 0 {
		k := n & 0x7f
		if k == 0 || k > 3 || len(p) < 2+k {
			return 0, nil, nil, nil, false
		}
		n = 0
		for _, c := range p[2 : 2+k] {
			n = n<<8 | int(c)
		}
		hdr += k
	}
	if len(p)-hdr < n {
		return 0, nil, nil, nil, false
	}
	return tag, p[hdr : hdr+n], p[:hdr+n], p[hdr+n:], true
}
