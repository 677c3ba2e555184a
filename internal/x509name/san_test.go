package x509name

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net/url"
	"slices"
	"testing"
	"unsafe"
)

// sanCert is a certificate whose subjectAltName extension is ext (Go's URIs
// set, as its parser sets them when the extension has URIs).
func sanCert(ext []byte) *x509.Certificate {
	return &x509.Certificate{
		URIs:       []*url.URL{{Scheme: "x"}},
		Extensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: ext}},
	}
}

// TestURISANsAsSpelt: URIs come as the certificate spells them, in order,
// DNS names skipped; Go's url.URL would print the first "spiffe://...".
func TestURISANsAsSpelt(t *testing.T) {
	ext, err := asn1.Marshal([]asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte("SPIFFE://td/ns/a")},
		{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("a.example")},
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte("spiffe://td/ns/b")},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	URISANs(sanCert(ext), func(u string) bool { got = append(got, u); return true })
	if want := []string{"SPIFFE://td/ns/a", "spiffe://td/ns/b"}; !slices.Equal(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
	got = got[:0]
	URISANs(sanCert(ext), func(u string) bool { got = append(got, u); return false })
	if len(got) != 1 {
		t.Errorf("%d URIs after yield said stop", len(got))
	}
	c := sanCert(ext)
	if n := testing.AllocsPerRun(100, func() { URISANs(c, func(string) bool { return true }) }); n != 0 {
		t.Errorf("%v allocs", n)
	}
}

// FuzzURISANs feeds arbitrary subjectAltName extensions to URISANs: it must
// not panic, and what it yields must lie inside the extension.
func FuzzURISANs(f *testing.F) {
	f.Add([]byte{0x30, 0x0a, 0x86, 0x08, 's', 'p', 'i', 'f', 'f', 'e', ':', 'x'})
	f.Add([]byte{0x30, 0x81, 0x04, 0x82, 0x02, 'a', 'b'})
	f.Add([]byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x30, 0x02, 0x9f, 0x01})
	f.Fuzz(func(t *testing.T, ext []byte) {
		start := uintptr(unsafe.Pointer(unsafe.SliceData(ext)))
		URISANs(sanCert(ext), func(u string) bool {
			if p := uintptr(unsafe.Pointer(unsafe.StringData(u))); len(u) > 0 && (p < start || p+uintptr(len(u)) > start+uintptr(len(ext))) {
				t.Fatalf("%q is not inside the extension", u)
			}
			return true
		})
	})
}
