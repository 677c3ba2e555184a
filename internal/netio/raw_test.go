package netio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// connPair is tcpPair with c, the dialed end as a raw Conn if raw is true
// and as the *net.TCPConn d otherwise. Cleanup closes both ends.
func connPair(t testing.TB, raw bool) (c net.Conn, d, a *net.TCPConn) {
	t.Helper()
	d, a = tcpPair(t)
	t.Cleanup(func() { d.Close(); a.Close() })
	if !raw {
		return d, d, a
	}
	rc, err := NewConn(d)
	if err != nil {
		t.Fatal(err)
	}
	return rc, d, a
}

// rawPair is connPair's raw Conn and the accepted end.
func rawPair(t testing.TB) (*Conn, *net.TCPConn) {
	t.Helper()
	c, _, a := connPair(t, true)
	return c.(*Conn), a
}

func TestConnRoundTrip(t *testing.T) {
	c, peer := rawPair(t)
	want := randomBytes(1, 8<<20) // far more than the socket buffers: Write meets EAGAIN and waits
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := c.Write(want)
	if n != len(want) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	c.CloseWrite() // promoted from *net.TCPConn
	checkBytes(t, "peer received", <-got, want)

	// The other way, with reads that wait for data, then the end of the stream.
	go func() {
		for i := range 4 {
			time.Sleep(5 * time.Millisecond)
			peer.Write(want[i*1000 : (i+1)*1000])
		}
		peer.CloseWrite()
	}()
	var back bytes.Buffer
	buf := make([]byte, 600)
	for {
		n, err := c.Read(buf)
		back.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil || n == 0 {
			t.Fatalf("Read = %d, %v", n, err)
		}
	}
	checkBytes(t, "received", back.Bytes(), want[:4000])
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("Read after EOF = %d, %v; want 0, EOF", n, err)
	}
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
}

// connKinds are the ways a Conn is made, and the *net.TCPConn it stands in
// for.
var connKinds = []string{"net", "raw", "dialed", "accepted"}

// kindPair returns a connection of the kind and its peer, a *net.TCPConn.
// Cleanup closes both.
func kindPair(t testing.TB, kind string) (net.Conn, *net.TCPConn) {
	t.Helper()
	switch kind {
	case "net", "raw":
		c, _, a := connPair(t, kind == "raw")
		return c, a
	case "dialed":
		ln := listenLoopback(t, "127.0.0.1")
		c, err := Dial(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort(), &DialOptions{Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, acceptTCP(t, ln)
	case "accepted":
		ln := listenLoopback(t, "127.0.0.1")
		d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return accept(t, acceptorOf(t, ln)), d
	}
	panic(kind)
}

// TestConnErrorsAsNet checks that a Conn, wrapping a *net.TCPConn or made by
// Dial or an Acceptor, fails as a *net.TCPConn does in the same situation:
// the same message, the same wrapped errors.
func TestConnErrorsAsNet(t *testing.T) {
	cases := []struct {
		name string
		is   []error // the error wraps one of these
		do   func(c net.Conn, peer *net.TCPConn) error
	}{
		{"read deadline", []error{os.ErrDeadlineExceeded}, func(c net.Conn, _ *net.TCPConn) error {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"write deadline passed", []error{os.ErrDeadlineExceeded}, func(c net.Conn, _ *net.TCPConn) error {
			c.SetWriteDeadline(time.Now().Add(-time.Second))
			_, err := c.Write([]byte("x"))
			return err
		}},
		{"read after close", []error{net.ErrClosed}, func(c net.Conn, _ *net.TCPConn) error {
			c.Close()
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"close during read", []error{net.ErrClosed}, func(c net.Conn, _ *net.TCPConn) error {
			time.AfterFunc(20*time.Millisecond, func() { c.Close() })
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"deadline after close", []error{net.ErrClosed}, func(c net.Conn, _ *net.TCPConn) error {
			c.Close()
			return c.SetReadDeadline(time.Now())
		}},
		{"close twice", []error{net.ErrClosed}, func(c net.Conn, _ *net.TCPConn) error {
			c.Close()
			return c.Close()
		}},
		{"peer reset", []error{syscall.ECONNRESET}, func(c net.Conn, peer *net.TCPConn) error {
			peer.SetLinger(0)
			peer.Close()
			time.Sleep(20 * time.Millisecond)
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"write after peer reset", []error{syscall.EPIPE, syscall.ECONNRESET}, func(c net.Conn, peer *net.TCPConn) error {
			peer.SetLinger(0)
			peer.Close()
			time.Sleep(20 * time.Millisecond)
			var err error
			for i := 0; i < 3 && err == nil; i++ { // the first write may meet the RST, or a later one
				_, err = c.Write([]byte("x"))
			}
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			errOf := func(kind string) error {
				c, peer := kindPair(t, kind)
				err := tc.do(c, peer)
				if err == nil {
					t.Fatalf("%s: no error", kind)
				}
				return err
			}
			isOne := func(err error) bool {
				for _, target := range tc.is {
					if errors.Is(err, target) {
						return true
					}
				}
				return false
			}
			want := errOf("net")
			if !isOne(want) {
				t.Fatalf("net.TCPConn's error %v is none of %v: the case tests the wrong thing", want, tc.is)
			}
			for _, kind := range connKinds[1:] {
				got := errOf(kind)
				if !isOne(got) {
					t.Errorf("%s Conn's error %v is none of %v", kind, got, tc.is)
				}
				var wo, go_ *net.OpError
				if !errors.As(want, &wo) || !errors.As(got, &go_) {
					t.Fatalf("errors %T and %T: want both *net.OpError", want, got)
				}
				if go_.Op != wo.Op || go_.Timeout() != wo.Timeout() {
					t.Errorf("%s Conn's error: Op %q, Timeout %v; net's: Op %q, Timeout %v", kind, go_.Op, go_.Timeout(), wo.Op, wo.Timeout())
				}
				if errors.Is(want, syscall.EPIPE) != errors.Is(got, syscall.EPIPE) {
					continue // the write met the reset in one run and not in the other: the messages differ rightly
				}
				wantMsg := want.Error()
				if kind == "dialed" && errors.Is(got, net.ErrClosed) {
					// A dialed Conn learns its local address when first asked
					// (LocalAddr); closed before that, it no longer can: the
					// message lacks it (Source, or Addr for "set").
					noLocal := *wo
					if noLocal.Source = nil; wo.Op == "set" {
						noLocal.Addr = nil
					}
					wantMsg = noLocal.Error()
				}
				if !sameShape(got.Error(), wantMsg) {
					t.Errorf("%s Conn's error %q, net's %q", kind, got, wantMsg)
				}
			}
		})
	}
}

// sameShape compares two error messages of different connections: equal but
// for the port numbers in them.
func sameShape(a, b string) bool {
	strip := func(s string) string {
		var out []byte
		for i := 0; i < len(s); i++ {
			if s[i] == ':' {
				j := i + 1
				for j < len(s) && s[j] >= '0' && s[j] <= '9' {
					j++
				}
				if j > i+1 {
					out = append(out, ":N"...)
					i = j - 1
					continue
				}
			}
			out = append(out, s[i])
		}
		return string(out)
	}
	return strip(a) == strip(b)
}

func TestConnNoAllocs(t *testing.T) {
	c, peer := rawPair(t)
	msg := []byte("ping")
	buf := make([]byte, 16)
	pbuf := make([]byte, 16)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		n, _ := peer.Read(pbuf)
		peer.Write(pbuf[:n])
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a write and a read: %v allocs, want 0", allocs)
	}
}

// BenchmarkConnPingPong is a 64-byte request and answer over loopback TCP
// through a raw Conn and, for comparison, a *net.TCPConn.
func BenchmarkConnPingPong(b *testing.B) {
	for _, raw := range []bool{false, true} {
		name := "net"
		if raw {
			name = "raw"
		}
		b.Run(name, func(b *testing.B) {
			c, d, peer := connPair(b, raw)
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(peer, buf); err != nil {
						return
					}
					if _, err := peer.Write(buf); err != nil {
						return
					}
				}
			}()
			msg, buf := make([]byte, 64), make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			d.Close()
			<-done
		})
	}
}

// TestNonblockingReads: with SetNonblockingReads on, a Read of an empty
// socket returns ErrWouldBlock at once (a temporary timeout, as crypto/tls
// needs), and reads what is there otherwise; off again, Read waits.
func TestNonblockingReads(t *testing.T) {
	c, peer := rawPair(t)
	c.SetNonblockingReads(true)
	buf := make([]byte, 8)
	n, err := c.Read(buf)
	var ne net.Error
	//lint:ignore SA1019 Temporary is what crypto/tls asks of a read error it may retry
	if n != 0 || err != ErrWouldBlock || !errors.As(err, &ne) || !ne.Timeout() || !ne.Temporary() {
		t.Fatalf("empty socket: %d, %v; want ErrWouldBlock, a temporary timeout", n, err)
	}
	peer.Write([]byte("hi"))
	deadline := time.Now().Add(5 * time.Second)
	for n == 0 && time.Now().Before(deadline) {
		n, err = c.Read(buf)
	}
	if string(buf[:n]) != "hi" || err != nil {
		t.Fatalf("after a write: %q, %v", buf[:n], err)
	}
	c.SetNonblockingReads(false)
	go func() {
		time.Sleep(20 * time.Millisecond)
		peer.Write([]byte("later"))
	}()
	if n, err := c.Read(buf); string(buf[:n]) != "later" || err != nil {
		t.Fatalf("blocking again: %q, %v", buf[:n], err)
	}
}
