package tlsinspector

import (
	"bytes"
	"errors"
)

// ClientHello is what the inspector takes from a TLS ClientHello.
type ClientHello struct {
	// ServerName is the server_name extension's host_name, as sent; "" when
	// there is none.
	ServerName string
	// ALPN is the application_layer_protocol_negotiation extension's protocol
	// list; nil when there is none.
	ALPN []string
}

var (
	// ErrNeedMore means the bytes are a TLS ClientHello so far, but an
	// incomplete one.
	ErrNeedMore = errors.New("tls_inspector: incomplete ClientHello")
	// ErrNotTLS means the bytes do not start with a TLS handshake record
	// holding a ClientHello.
	ErrNotTLS = errors.New("tls_inspector: not a TLS ClientHello")
	// ErrMalformed means the bytes start like a TLS ClientHello but the
	// message is not a valid one.
	ErrMalformed = errors.New("tls_inspector: malformed TLS ClientHello")
)

const (
	recordHeaderLen    = 5
	maxPlaintextRecord = 16384 // TLSPlaintext.length's limit (RFC 8446 5.1)
	recordHandshake    = 22
	handshakeHello     = 1
	extServerName      = 0
	extALPN            = 16
)

// ParseClientHello parses the TLS ClientHello at the start of b, which may span
// several TLS records; bytes after it are ignored. It returns ErrNeedMore when b
// is the start of one, ErrNotTLS when b does not start with a handshake record
// carrying a ClientHello, and ErrMalformed when the message is not a valid
// ClientHello (what BoringSSL, and so Envoy, refuse).
func ParseClientHello(b []byte) (*ClientHello, error) {
	var hs []byte // the handshake bytes of the complete records
	for first := true; ; first = false {
		if len(b) == 0 {
			return nil, ErrNeedMore
		}
		if b[0] != recordHandshake {
			if first {
				return nil, ErrNotTLS
			}
			return nil, ErrMalformed
		}
		if len(b) >= 2 && b[1] != 3 { // TLS's (and SSL 3's) major version
			if first {
				return nil, ErrNotTLS
			}
			return nil, ErrMalformed
		}
		if len(b) < recordHeaderLen {
			return nil, ErrNeedMore
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > maxPlaintextRecord {
			return nil, ErrMalformed
		}
		frag := b[recordHeaderLen:]
		complete := len(frag) >= n
		if complete {
			frag = frag[:n]
		}
		msg := append(hs, frag...)
		if len(msg) >= 1 && msg[0] != handshakeHello {
			if first {
				return nil, ErrNotTLS
			}
			return nil, ErrMalformed
		}
		if !complete {
			return nil, ErrNeedMore
		}
		hs = msg
		b = b[recordHeaderLen+n:]
		if len(hs) < 4 {
			continue
		}
		size := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
		if len(hs) < 4+size {
			continue
		}
		if len(hs) > 4+size {
			// The record holds more than the ClientHello: BoringSSL refuses
			// what follows it in the same flight.
			return nil, ErrMalformed
		}
		return parseBody(hs[4:])
	}
}

// reader reads the big-endian, length-prefixed fields of a TLS message.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) uint(n int) (int, bool) {
	if len(*r) < n {
		return 0, false
	}
	v := 0
	for _, c := range (*r)[:n] {
		v = v<<8 | int(c)
	}
	*r = (*r)[n:]
	return v, true
}

// vector reads a field with an n-byte length prefix.
func (r *reader) vector(n int) (reader, bool) {
	l, ok := r.uint(n)
	if !ok || len(*r) < l {
		return nil, false
	}
	v := (*r)[:l]
	*r = (*r)[l:]
	return v, true
}

func parseBody(body []byte) (*ClientHello, error) {
	r := reader(body)
	if !r.skip(2 + 32) { // legacy_version, random
		return nil, ErrMalformed
	}
	sid, ok := r.vector(1)
	if !ok || len(sid) > 32 {
		return nil, ErrMalformed
	}
	suites, ok := r.vector(2)
	if !ok || len(suites) < 2 || len(suites)%2 != 0 {
		return nil, ErrMalformed
	}
	comp, ok := r.vector(1)
	if !ok || len(comp) < 1 {
		return nil, ErrMalformed
	}
	h := &ClientHello{}
	if len(r) == 0 {
		return h, nil // no extensions
	}
	exts, ok := r.vector(2)
	if !ok || len(r) != 0 {
		return nil, ErrMalformed
	}
	seen := map[int]bool{}
	for len(exts) > 0 {
		typ, ok := exts.uint(2)
		if !ok {
			return nil, ErrMalformed
		}
		data, ok := exts.vector(2)
		if !ok || seen[typ] {
			return nil, ErrMalformed
		}
		seen[typ] = true
		switch typ {
		case extServerName:
			if h.ServerName, ok = parseSNI(data); !ok {
				return nil, ErrMalformed
			}
		case extALPN:
			if h.ALPN, ok = parseALPN(data); !ok {
				return nil, ErrMalformed
			}
		}
	}
	return h, nil
}

// parseSNI reads a server_name extension (RFC 6066 3) as BoringSSL does: a
// list of exactly one non-empty host_name without NUL bytes.
func parseSNI(data reader) (string, bool) {
	list, ok := data.vector(2)
	if !ok || len(data) != 0 {
		return "", false
	}
	typ, ok := list.uint(1)
	if !ok || typ != 0 {
		return "", false
	}
	name, ok := list.vector(2)
	if !ok || len(list) != 0 || len(name) == 0 || bytes.IndexByte(name, 0) >= 0 {
		return "", false
	}
	return string(name), true
}

// parseALPN reads an application_layer_protocol_negotiation extension (RFC
// 7301 3.1): a non-empty list of non-empty protocol names.
func parseALPN(data reader) ([]string, bool) {
	list, ok := data.vector(2)
	if !ok || len(data) != 0 || len(list) == 0 {
		return nil, false
	}
	var protos []string
	for len(list) > 0 {
		p, ok := list.vector(1)
		if !ok || len(p) == 0 {
			return nil, false
		}
		protos = append(protos, string(p))
	}
	return protos, true
}
