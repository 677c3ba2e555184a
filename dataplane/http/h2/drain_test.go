package h2

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/net/http2"

	"github.com/skiffproxy/skiff/dataplane/http"
)

// TestServerDrain: Drain sends GOAWAY(2^31-1) and a PING; streams the client
// opened before it saw them are served; on the PING's ACK the final GOAWAY
// names the last stream; later streams are ignored; the connection closes
// once the last stream is done.
func TestServerDrain(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	ts := startServer(t, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
		started <- struct{}{}
		<-release
		respond(s, "done "+s.Header().Path())
	}))
	p := dialPeer(t, ts.addr)
	p.request(1, true, "/one")
	<-started
	ts.drainAll()

	g := p.expectGoAway(http2.ErrCodeNo)
	if g.LastStreamID != 1<<31-1 {
		t.Fatalf("first GOAWAY last stream id %d", g.LastStreamID)
	}
	f := p.read()
	ping, ok := f.(*http2.PingFrame)
	if !ok || ping.IsAck() {
		t.Fatalf("got %v, want a PING", f.Header())
	}
	// A request already on its way when the first GOAWAY went out.
	p.request(3, true, "/three")
	<-started
	_ = p.fr.WritePing(true, ping.Data)
	g = p.expectGoAway(http2.ErrCodeNo)
	if g.LastStreamID != 3 {
		t.Fatalf("final GOAWAY last stream id %d, want 3", g.LastStreamID)
	}
	p.request(5, true, "/five") // after the final GOAWAY: ignored
	close(release)
	bodies := p.readResponses(1, 3)
	if bodies[1] != "done /one" || bodies[3] != "done /three" {
		t.Errorf("responses %v", bodies)
	}
	p.expectClosed()
	ts.stop()
	if len(ts.errs) != 1 || ts.errs[0] != nil {
		t.Errorf("Serve returned %v", ts.errs)
	}
}

// pipeServer serves h on one end of a net.Pipe (for synctest bubbles) and
// returns the other end; the returned channel yields Serve's result.
func pipeServer(t *testing.T, ctx context.Context, opts ServerOptions, h http.Handler) (net.Conn, *ServerConn, <-chan error) {
	t.Helper()
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	cli, nc := net.Pipe()
	sc := srv.NewConn()
	done := make(chan error, 1)
	go func() { done <- sc.Serve(ctx, nc, h) }()
	t.Cleanup(func() { cli.Close() })
	return cli, sc, done
}

func TestServerIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		cli, _, done := pipeServer(t, context.Background(), ServerOptions{IdleTimeout: time.Minute}, handlerFunc(func(s http.ServerStream) {
			if s.Header().Path() == "/slow" {
				<-release
			}
			respond(s, "ok")
		}))
		cc, err := NewClientConn(cli, ClientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		start := time.Now()
		get(t, cc, "/")
		// A stream open longer than the idle timeout keeps the connection.
		go func() {
			time.Sleep(3 * time.Minute)
			close(release)
		}()
		get(t, cc, "/slow")
		if d := time.Since(start); d != 3*time.Minute {
			t.Fatalf("slow stream took %v", d)
		}
		synctest.Wait()
		if !cc.Available() {
			t.Fatal("connection closed while a stream was open")
		}
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if !cc.Available() {
			t.Fatal("connection closed before the idle timeout")
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		<-cc.Done()
		if _, err := cc.NewStream(context.Background()); !errors.Is(err, ErrConnClosed) {
			t.Errorf("NewStream after the server's GOAWAY: %v", err)
		}
	})
}

// TestServerDrainWithoutPingAck: a client that does not answer the PING gets
// the final GOAWAY after DrainTimeout.
func TestServerDrainWithoutPingAck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cli, sc, done := pipeServer(t, context.Background(), ServerOptions{DrainTimeout: 10 * time.Second}, handlerFunc(func(s http.ServerStream) {}))
		_, _ = io.WriteString(cli, ClientPreface)
		p := newPeer(t, cli)
		frames := make(chan http2.Frame, 100)
		go func() {
			defer close(frames)
			for {
				f, err := p.fr.ReadFrame()
				if err != nil {
					return
				}
				switch f := f.(type) {
				case *http2.GoAwayFrame:
					frames <- &http2.GoAwayFrame{LastStreamID: f.LastStreamID, ErrCode: f.ErrCode}
				case *http2.PingFrame:
					frames <- &http2.PingFrame{Data: f.Data, FrameHeader: f.FrameHeader}
				}
			}
		}()
		_ = p.fr.WriteSettings()
		start := time.Now()
		sc.Drain()
		first := (<-frames).(*http2.GoAwayFrame)
		if first.LastStreamID != 1<<31-1 {
			t.Fatalf("first GOAWAY %d", first.LastStreamID)
		}
		if _, ok := (<-frames).(*http2.PingFrame); !ok {
			t.Fatal("no PING after the first GOAWAY")
		}
		final := (<-frames).(*http2.GoAwayFrame)
		if final.LastStreamID != 0 || time.Since(start) != 10*time.Second {
			t.Fatalf("final GOAWAY %d after %v", final.LastStreamID, time.Since(start))
		}
		cli.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// TestServerDrainBeforeServe: Drain before Serve drains at once.
func TestServerDrainBeforeServe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, _ := NewServer(ServerOptions{})
		sc := srv.NewConn()
		sc.Drain()
		cli, nc := net.Pipe()
		defer cli.Close()
		done := make(chan error, 1)
		go func() { done <- sc.Serve(context.Background(), nc, handlerFunc(func(s http.ServerStream) {})) }()
		cc, _ := NewClientConn(cli, ClientOptions{})
		defer cc.Close()
		<-cc.Done() // first GOAWAY, PING answered by the client, final GOAWAY, close
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// TestServeContextCancel: canceling Serve's context closes the connection and
// cancels the streams.
func TestServeContextCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{})
		cli, _, done := pipeServer(t, ctx, ServerOptions{}, handlerFunc(func(s http.ServerStream) {
			close(started)
			<-s.Context().Done()
		}))
		cc, _ := NewClientConn(cli, ClientOptions{})
		defer cc.Close()
		cs, _ := cc.NewStream(context.Background())
		var h http.Header
		h.Add(http.Method, "GET")
		h.Add(http.Scheme, "http")
		h.Add(http.Path, "/")
		_ = cs.WriteHeader(&h, true)
		<-started
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := cs.ReadHeader(); !errors.Is(err, ErrConnClosed) {
			t.Errorf("client stream: %v", err)
		}
	})
}

// get does a GET on cc and checks for a 200 with a body.
func get(t *testing.T, cc *ClientConn, path string) string {
	t.Helper()
	cs, err := cc.NewStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var h http.Header
	h.Add(http.Method, "GET")
	h.Add(http.Scheme, "http")
	h.Add(http.Authority, "test")
	h.Add(http.Path, path)
	if err := cs.WriteHeader(&h, true); err != nil {
		t.Fatal(err)
	}
	rh, err := cs.ReadHeader()
	if err != nil {
		t.Fatal(err)
	}
	if rh.Value(http.Status) != "200" {
		t.Fatalf("status %q", rh.Value(http.Status))
	}
	b, err := io.ReadAll(cs)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
