package x509name

import (
	"crypto/x509"
	"unsafe"
)

// URISANs calls yield with each URI subject alternative name of c, in the
// certificate's order, as the certificate spells it: the IA5String's bytes,
// as Envoy's Utility::getSubjectAltNames gives them (Go's parsed url.URL
// renders some differently: a scheme in upper case comes out in lower). It
// stops when yield returns false. The strings point into c's memory and
// must not outlive it; URISANs allocates nothing.
func URISANs(c *x509.Certificate, yield func(uri string) bool) {
	if len(c.URIs) == 0 {
		return // Go found none (and parsed every one it found)
	}
	for i := range c.Extensions {
		if !isSAN(c.Extensions[i].Id) {
			continue
		}
		names, rest, ok := element(c.Extensions[i].Value, tagSequence)
		if !ok || len(rest) != 0 {
			return
		}
		for len(names) > 0 {
			tag, name, _, next, ok := anyElement(names)
			if !ok {
				return
			}
			names = next
			if tag == tagURIName && !yield(unsafe.String(unsafe.SliceData(name), len(name))) {
				return
			}
		}
		return
	}
}

// tagURIName is GeneralName's uniformResourceIdentifier, [6] IMPLICIT
// IA5String.
const tagURIName = 0x86

// isSAN reports whether id is id-ce-subjectAltName (2.5.29.17).
func isSAN(id []int) bool {
	return len(id) == 4 && id[0] == 2 && id[1] == 5 && id[2] == 29 && id[3] == 17
}
