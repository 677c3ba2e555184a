package admin

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

func adminAt(address string, port uint32) *bootstrapv3.Bootstrap {
	return &bootstrapv3.Bootstrap{Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: address, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}},
	}}}}
}

func TestTCPAddress(t *testing.T) {
	for _, tt := range []struct {
		b           *bootstrapv3.Bootstrap
		allowRemote bool
		want        string // "" with wantErr ""
		wantErr     string
	}{
		{b: &bootstrapv3.Bootstrap{}},
		{b: adminAt("127.0.0.1", 9901), want: "127.0.0.1:9901"},
		{b: adminAt("127.0.0.2", 0), want: "127.0.0.2:0"},
		{b: adminAt("::1", 9901), want: "[::1]:9901"},
		{b: adminAt("0.0.0.0", 9901), wantErr: "admin.address: 0.0.0.0:9901 is not a loopback address"},
		{b: adminAt("::", 9901), wantErr: "--admin-allow-remote"},
		{b: adminAt("192.0.2.1", 9901), allowRemote: true, want: "192.0.2.1:9901"},
		{b: adminAt("localhost", 9901), wantErr: `admin.address.socket_address.address: "localhost" is not an IP address`},
		{b: &bootstrapv3.Bootstrap{Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/x"}}}}},
			wantErr: "admin.address.pipe: not supported"},
	} {
		got, err := TCPAddress(tt.b, tt.allowRemote)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("TCPAddress(%v, %t) = %q, %v; want an error containing %q", tt.b.GetAdmin(), tt.allowRemote, got, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("TCPAddress(%v, %t) = %q, %v; want %q", tt.b.GetAdmin(), tt.allowRemote, got, err, tt.want)
		}
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SocketName)
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %v, want a socket with mode 0600", fi.Mode())
	}
	// A socket left behind (here: one whose listener forgets to unlink it) is
	// replaced.
	ln.SetUnlinkOnClose(false)
	ln.Close()
	ln, err = ListenUnix(path)
	if err != nil {
		t.Fatalf("ListenUnix over a stale socket: %v", err)
	}
	ln.Close()

	other := filepath.Join(dir, "file")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(other); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("ListenUnix over a regular file: %v, want a refusal", err)
	}
	if _, err := ListenUnix("/" + strings.Repeat("x", 120)); err == nil || !strings.Contains(err.Error(), "--runtime-dir") {
		t.Errorf("ListenUnix with a long path: %v, want an error suggesting a shorter --runtime-dir", err)
	}
}

func TestLogLevels(t *testing.T) {
	for _, name := range []string{"trace", "debug", "info", "warning", "error", "critical", "off"} {
		l, err := ParseLogLevel(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := LogLevelName(l); got != name {
			t.Errorf("LogLevelName(ParseLogLevel(%q)) = %q", name, got)
		}
	}
	if l, err := ParseLogLevel("WARN"); err != nil || l != slog.LevelWarn {
		t.Errorf("ParseLogLevel(WARN) = %v, %v", l, err)
	}
	if _, err := ParseLogLevel("loud"); err == nil {
		t.Error("ParseLogLevel(loud) succeeded")
	}
	if got := LogLevelName(slog.LevelInfo + 1); got != "info" {
		t.Errorf("LogLevelName(INFO+1) = %q, want info", got)
	}
}
