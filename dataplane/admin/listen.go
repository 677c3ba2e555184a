package admin

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strconv"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// SocketName is the name of the admin API's unix socket in the runtime directory.
const SocketName = "admin.sock"

// TCPAddress returns the TCP address (host:port) the bootstrap's admin.address
// asks for, or "" when the bootstrap has none. The admin API can drain and
// restart skiff, so an address that is not loopback is refused unless
// allowRemote is set. Errors name the field of the bootstrap.
func TCPAddress(b *bootstrapv3.Bootstrap, allowRemote bool) (string, error) {
	a := b.GetAdmin().GetAddress()
	if a == nil {
		return "", nil
	}
	if a.GetPipe() != nil {
		return "", cfgerr.Errorf("admin.address.pipe", "not supported by skiff: the admin API always listens on <runtime-dir>/%s; use socket_address for a TCP address", SocketName)
	}
	sa := a.GetSocketAddress()
	if sa == nil {
		return "", cfgerr.Errorf("admin.address", "want a socket_address")
	}
	if sa.GetResolverName() != "" || sa.GetNamedPort() != "" {
		return "", cfgerr.Errorf("admin.address.socket_address", "resolver_name and named_port are not supported by skiff")
	}
	if sa.GetProtocol() != 0 { // TCP
		return "", cfgerr.Errorf("admin.address.socket_address.protocol", "the admin API is served over TCP")
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return "", cfgerr.Errorf("admin.address.socket_address.address", "%q is not an IP address", sa.GetAddress())
	}
	hostport := net.JoinHostPort(ip.String(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))
	if !ip.Unmap().IsLoopback() && !allowRemote {
		return "", cfgerr.Errorf("admin.address", "%s is not a loopback address: the admin API shows the configuration and can drain skiff, so serving it beyond this host needs --admin-allow-remote", hostport)
	}
	return hostport, nil
}

// maxSocketPath is the longest path a unix socket can be bound to on Linux
// (sizeof(sun_path) less the terminating NUL).
const maxSocketPath = 107

// ListenUnix binds a unix socket at path with mode 0600, replacing a stale
// socket left there by a process that died. The caller must own the directory
// (the runtime directory's lock), so that no live process serves on path.
func ListenUnix(path string) (*net.UnixListener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("admin socket %s: path is %d bytes long, longer than a unix socket allows (%d); use a shorter --runtime-dir", path, len(path), maxSocketPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket: removing the stale one: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// A hot-restart successor binds the path anew while this process still
	// runs; closing must not remove the successor's socket. (A stale socket
	// left behind is replaced at the next start.)
	ln.SetUnlinkOnClose(false)
	// The runtime directory is 0700, so nobody else could reach the socket
	// between bind(2) and this chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}
