// Package sdnotify tells systemd about skiff's state through the socket named
// by $NOTIFY_SOCKET (sd_notify(3)): READY=1 once serving, MAINPID=<pid> when a
// hot restart hands the service over to a successor, STOPPING=1 on shutdown.
// Without $NOTIFY_SOCKET it does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Notify sends state (newline-separated assignments) to systemd. It returns
// nil when skiff does not run under a systemd notify service.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") { // an abstract socket
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// MainPID tells systemd that pid is now the service's main process (with
// NotifyAccess=all in the unit, so that the successor may then notify too).
func MainPID(pid int) error { return Notify(fmt.Sprintf("MAINPID=%d", pid)) }
