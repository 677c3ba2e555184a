// Package restart is skiff's hot restart: a running process (the parent) hands
// its listening sockets, its accepted xDS state, its stats region and its open
// TCP proxy connections to a successor over <runtime-dir>/reconfig.sock, then
// drains and exits. The messages are defined in proto/skiff/restart/v1.
package restart

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
)

// ProtocolVersion is the version of the handover protocol this skiff speaks.
const ProtocolVersion = 1

// maxFDsPerMessage bounds the descriptors of one message: the kernel takes at
// most 253 (SCM_MAX_FD) in one SCM_RIGHTS message.
const maxFDsPerMessage = 200

// maxMessage bounds one message (the xDS state of a large mesh is big, but not
// this big).
const maxMessage = 256 << 20

// Conn is one end of the reconfig socket: length-prefixed Envelopes, with file
// descriptors attached to the message that lists them.
type Conn struct {
	c *net.UnixConn
}

// NewConn wraps a connected unix stream socket.
func NewConn(c *net.UnixConn) *Conn { return &Conn{c: c} }

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// SetDeadline bounds the next reads and writes.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// Send writes env with fds attached. The descriptors stay open in the caller.
func (c *Conn) Send(env *restartv1.Envelope, fds []int) error {
	if len(fds) > maxFDsPerMessage {
		return fmt.Errorf("restart: %d file descriptors in one message (at most %d)", len(fds), maxFDsPerMessage)
	}
	body, err := proto.Marshal(env)
	if err != nil {
		return fmt.Errorf("restart: encoding %T: %w", env.GetMessage(), err)
	}
	if len(body) > maxMessage {
		return fmt.Errorf("restart: message of %d bytes is too large", len(body))
	}
	msg := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(msg, uint32(len(body)))
	copy(msg[4:], body)
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	n, oobn, err := c.c.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return fmt.Errorf("restart: sending: %w", err)
	}
	if oobn != len(oob) {
		return errors.New("restart: sending: file descriptors not sent whole")
	}
	if n < len(msg) {
		// The descriptors went with the first bytes; write the rest plainly.
		if _, err := c.c.Write(msg[n:]); err != nil {
			return fmt.Errorf("restart: sending: %w", err)
		}
	}
	return nil
}

// Recv reads the next Envelope and the descriptors sent with it, as files the
// caller owns. It fails if the descriptors were truncated.
func (c *Conn) Recv() (*restartv1.Envelope, []*os.File, error) {
	var hdr [4]byte
	oob := make([]byte, syscall.CmsgSpace(maxFDsPerMessage*4))
	n, oobn, flags, _, err := c.c.ReadMsgUnix(hdr[:], oob)
	if err != nil {
		return nil, nil, fmt.Errorf("restart: receiving: %w", err)
	}
	files, ferr := parseRights(oob[:oobn])
	if flags&syscall.MSG_CTRUNC != 0 && ferr == nil {
		ferr = errors.New("restart: receiving: file descriptors truncated (MSG_CTRUNC)")
	}
	if ferr != nil {
		closeAll(files)
		return nil, nil, ferr
	}
	if n < len(hdr) {
		if _, err := io.ReadFull(c.c, hdr[n:]); err != nil {
			closeAll(files)
			return nil, nil, fmt.Errorf("restart: receiving: %w", err)
		}
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > maxMessage {
		closeAll(files)
		return nil, nil, fmt.Errorf("restart: receiving: message of %d bytes is too large", size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c.c, body); err != nil {
		closeAll(files)
		return nil, nil, fmt.Errorf("restart: receiving: %w", err)
	}
	env := &restartv1.Envelope{}
	if err := proto.Unmarshal(body, env); err != nil {
		closeAll(files)
		return nil, nil, fmt.Errorf("restart: decoding a message: %w", err)
	}
	return env, files, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("restart: receiving: control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("restart: receiving: %w", err)
		}
		for _, fd := range fds {
			syscall.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "inherited"))
		}
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// fdOf returns f's descriptor without os.File.Fd, which would switch the
// descriptor to blocking mode: a duplicated socket shares its file status
// flags with the original, so Fd on a handed-out copy of a listening socket
// would make the parent's own accept loop block a thread. The descriptor stays
// valid while f is open; callers keep f alive until it has been sent.
func fdOf(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("restart: %s: %w", f.Name(), err)
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, fmt.Errorf("restart: %s: %w", f.Name(), err)
	}
	return fd, nil
}

// fdsOf returns the descriptors of files (see fdOf).
func fdsOf(files ...*os.File) ([]int, error) {
	fds := make([]int, len(files))
	for i, f := range files {
		fd, err := fdOf(f)
		if err != nil {
			return nil, err
		}
		fds[i] = fd
	}
	return fds, nil
}

// expectFDs checks that a message came with exactly n descriptors, closing
// them otherwise.
func expectFDs(files []*os.File, n int, what string) error {
	if len(files) != n {
		closeAll(files)
		return fmt.Errorf("restart: %s came with %d file descriptors, want %d", what, len(files), n)
	}
	return nil
}
