package x509name

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"testing"
)

// cases are DER names and how OpenSSL 3.0 prints them with
// `openssl x509 -noout -subject -nameopt RFC2253` (XN_FLAG_RFC2253, which
// BoringSSL shares), recorded when the package was written.
var cases = []struct{ raw, want string }{
	{"3033310b300906035504061302555331133011060355040a0c0a41636d652c20496e632e310f300d06035504030c06636c69656e74", `CN=client,O=Acme\, Inc.,C=US`},
	{"30173115301306035504030c0c206c65616423747261696c20", `CN=\ lead#trail\ `},
	{"3010310e300c06035504030c052368617368", `CN=\#hash`},
	{"301a3118301606035504030c0f612b623d633c643e653b6622675c68", `CN=a\+b=c\<d\>e\;f\"g\\h`},
	{"30143112301006035504030c09636166c3a920e4b896", `CN=caf\C3\A9 \E4\B8\96`},                              // UTF8String
	{"300f310d300b06035504031404743631e9", `CN=t61\C3\A9`},                                                  // T61String, Latin-1
	{"30153113301106035504031e0a0062006d007000e94e16", `CN=bmp\C3\A9\E4\B8\96`},                             // BMPString
	{"3010310e300c06035504030c0563746c017f", `CN=ctl\01\7F`},                                                // control characters
	{"30223114301206092a864886f70d01090116056140622e63310a30080603550403130178", `CN=x,emailAddress=a@b.c`}, // Go: 1.2.840.113549.1.9.1=#16...
	{"304431133011060a0992268993f22c6401191603636f6d31173015060a0992268993f22c64011916076578616d706c6531143012060a0992268993f22c6401010c046a646f65", `UID=jdoe,DC=example,DC=com`},
	{"3028311a300c06035504030c056d756c7469300a060355040b0c036f7531310a3008060355040a13014f", `O=O,OU=ou1+CN=multi`}, // a multi-valued RDN
	{"30243116301406092b06010401868d1f010c07756e6b6e6f776e310a30080603550403130179", `CN=y,1.3.6.1.4.1.99999.1=#0C07756E6B6E6F776E`},
	{"304b310d300b0603550405130431323334310e300c060355042a0c05476976656e3110300e06035504090c074d61696e205374310b300906035504080c024341310b300906035504070c025346", `L=SF,ST=CA,street=Main St,GN=Given,serialNumber=1234`},
	{"302931133011060b2b0601040182373c020103130255533112301006035504610c0956415444452d313233", `organizationIdentifier=VATDE-123,jurisdictionC=US`},
	{"300b3109300706035504030c00", `CN=`},
	{"3000", ``},
}

func TestAsBoringSSLPrintsRFC2253(t *testing.T) {
	for _, tc := range cases {
		raw, err := hex.DecodeString(tc.raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := String(raw); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.raw, got, tc.want)
		}
	}
}

// TestGoDiffers: the reason for the package; Go's rendering of the same
// name differs (no short name for emailAddress, values not escaped alike).
func TestGoDiffers(t *testing.T) {
	raw, _ := hex.DecodeString(cases[8].raw)
	var seq pkix.RDNSequence
	if _, err := asn1.Unmarshal(raw, &seq); err != nil {
		t.Fatal(err)
	}
	var n pkix.Name
	n.FillFromRDNSequence(&seq)
	if n.String() == String(raw) {
		t.Fatalf("Go renders %q as BoringSSL does; the package may be unneeded", n.String())
	}
}

func TestMalformed(t *testing.T) {
	for _, h := range []string{"", "30", "3003310130", "310130", "30023100", "3005310330010603", "30083106300406000c00", "3007310530030603550403"} {
		raw, _ := hex.DecodeString(h)
		if got, err := Append([]byte("x"), raw); err == nil || string(got) != "x" {
			t.Errorf("%s: %q, %v; want an error and dst unchanged", h, got, err)
		}
	}
}

func TestAppendAllocatesNothing(t *testing.T) {
	raw, _ := hex.DecodeString(cases[0].raw)
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { _, _ = Append(buf[:0], raw) }); n != 0 {
		t.Errorf("%v allocs per Append", n)
	}
}

func FuzzAppend(f *testing.F) {
	for _, tc := range cases {
		raw, _ := hex.DecodeString(tc.raw)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := Append([]byte("p"), raw)
		if err != nil && string(got) != "p" {
			t.Fatalf("error %v with output %q", err, got)
		}
		if err == nil && string(got[:1]) != "p" {
			t.Fatalf("prefix lost: %q", got)
		}
	})
}

// TestManyRDNs: a name with more RDNs than Append collects at once (16) is
// printed whole, last first.
func TestManyRDNs(t *testing.T) {
	var seq pkix.RDNSequence
	want := ""
	for i := range 20 {
		v := fmt.Sprintf("n%d", i)
		seq = append(seq, pkix.RelativeDistinguishedNameSET{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: v}})
		if want != "" {
			want = "," + want
		}
		want = "CN=" + v + want
	}
	raw, err := asn1.Marshal(seq)
	if err != nil {
		t.Fatal(err)
	}
	if got := String(raw); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
