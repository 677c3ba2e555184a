package restart

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// connPair returns both ends of a loopback TCP connection.
func connPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func fileOf(t *testing.T, c interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func nonblocking(t *testing.T, c syscall.Conn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	rc.Control(func(fd uintptr) { flags, err = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if err != nil {
		t.Fatal(err)
	}
	return flags&unix.O_NONBLOCK != 0
}

// TestHandover runs the protocol between a Parent and a successor over a real
// reconfig socket: the listening socket, the lock and the state arrive; the
// parent's own socket stays non-blocking; a TCP proxy pair and an idle
// HTTP/1.1 connection arrive with the right descriptors; Finished is called.
func TestHandover(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SocketName)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	lock, err := os.Create(filepath.Join(dir, "skiff.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()

	// The moved connections: each is the proxy's side of a loopback pair whose
	// other side the test keeps, to see that bytes go through the successor's
	// descriptor.
	downPeer, down := connPair(t)
	upPeer, up := connPair(t)
	httpPeer, httpDown := connPair(t)

	finished := make(chan struct{})
	p := &Parent{
		Log: slog.New(slog.DiscardHandler),
		State: func() (*State, error) {
			return &State{
				Handover: &restartv1.Handover{Generation: 7, Bootstrap: []byte("bootstrap")},
				Sockets:  []ListenSocket{{Key: "tcp/l", Address: lis.Addr().String(), File: fileOf(t, lis.(*net.TCPListener))}},
				Lock:     lock,
			}, nil
		},
		Handover: func(context.Context) ([]Moved, func(), error) {
			pair := Moved{Info: &restartv1.MovedConnection{Listener: "l", Cluster: "c", PendingToUpstream: []byte("up"), PendingToDownstream: []byte("down"),
				Kind: restartv1.ConnectionKind_CONNECTION_KIND_TCP_PROXY}, Down: fileOf(t, down), Up: fileOf(t, up)}
			idle := Moved{Info: &restartv1.MovedConnection{Listener: "l", PendingToUpstream: []byte("GET / HT"),
				Kind: restartv1.ConnectionKind_CONNECTION_KIND_HTTP1_IDLE}, Down: fileOf(t, httpDown)}
			moved := []Moved{pair, idle}
			return moved, func() {
				for _, m := range moved {
					for _, f := range m.files() {
						f.Close()
					}
				}
			}, nil
		},
		Finished:  func() { close(finished) },
		Abandoned: func(err error) { t.Errorf("abandoned: %v", err) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); p.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()

	in, err := Connect(ctx, path, "test")
	if err != nil {
		t.Fatal(err)
	}
	if g := in.Handover.GetGeneration(); g != 7 || string(in.Handover.GetBootstrap()) != "bootstrap" {
		t.Errorf("handover: generation %d, bootstrap %q", g, in.Handover.GetBootstrap())
	}
	if in.Lock == nil || len(in.Sockets) != 1 || in.Sockets[0].Key != "tcp/l" {
		t.Fatalf("inherited lock %v, sockets %+v", in.Lock, in.Sockets)
	}
	in.Lock.Close()
	// The parent's listener must still be non-blocking: the handover must not
	// have switched the shared socket to blocking mode.
	if !nonblocking(t, lis.(*net.TCPListener)) {
		t.Error("the parent's listening socket became blocking when it was handed over")
	}
	inheritedLn, err := net.FileListener(in.Sockets[0].File)
	in.Sockets[0].File.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer inheritedLn.Close()
	if inheritedLn.Addr().String() != lis.Addr().String() {
		t.Errorf("inherited socket on %s, want %s", inheritedLn.Addr(), lis.Addr())
	}

	var got []Moved
	if err := in.Ready(func(m Moved) { got = append(got, m) }); err != nil {
		t.Fatal(err)
	}
	<-finished
	if len(got) != 2 {
		t.Fatalf("received %d connections, want 2", len(got))
	}
	pair, idle := got[0], got[1]
	if pair.Up == nil || string(pair.Info.GetPendingToUpstream()) != "up" || string(pair.Info.GetPendingToDownstream()) != "down" {
		t.Errorf("TCP proxy pair: %+v", pair)
	}
	if idle.Up != nil || string(idle.Info.GetPendingToUpstream()) != "GET / HT" {
		t.Errorf("idle HTTP/1.1 connection: %+v", idle)
	}
	for _, c := range []struct {
		f    *os.File
		peer net.Conn
	}{{pair.Down, downPeer}, {pair.Up, upPeer}, {idle.Down, httpPeer}} {
		nc, err := net.FileConn(c.f)
		c.f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		nc.Close()
		c.peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 2)
		_, err = io.ReadFull(c.peer, b)
		if err != nil || string(b) != "hi" {
			t.Errorf("read through the moved descriptor: %q, %v", b, err)
		}
	}
}

// A second successor while one is being served is refused, and its error
// says why.
func TestBusyRefusalSaysWhy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SocketName)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	abandoned := make(chan error, 1)
	p := &Parent{
		Log: slog.New(slog.DiscardHandler),
		State: func() (*State, error) {
			<-release // hold the first successor
			return nil, errors.New("not this time")
		},
		Abandoned: func(err error) { abandoned <- err },
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); p.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()

	first := make(chan error, 1)
	go func() {
		_, err := Connect(ctx, path, "first")
		first <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !p.Busy() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for range 5 {
		_, err := Connect(ctx, path, "second")
		if err == nil || !strings.Contains(err.Error(), ErrBusy.Error()) {
			t.Errorf("a second successor: %v, want %q", err, ErrBusy)
		}
	}
	close(release)
	if err := <-first; err == nil || !strings.Contains(err.Error(), "not this time") {
		t.Errorf("the first successor: %v, want the parent's reason", err)
	}
	if err := <-abandoned; err == nil {
		t.Error("Abandoned without a reason")
	}
}

// Admit refuses a successor other than the expected one without abandoning
// the restart under way.
func TestAdmitRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SocketName)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	p := &Parent{
		Log:   slog.New(slog.DiscardHandler),
		Admit: func(int64) error { return ErrBusy },
		State: func() (*State, error) {
			t.Error("State called for a successor not admitted")
			return nil, errors.New("no")
		},
		Abandoned: func(err error) { t.Errorf("abandoned: %v", err) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); p.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()
	if _, err := Connect(ctx, path, "other"); err == nil || !strings.Contains(err.Error(), "not admitted") {
		t.Errorf("Connect: %v, want a refusal saying it was not admitted", err)
	}
}
