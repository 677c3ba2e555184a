package router

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/skiffproxy/skiff/dataplane/http"
	"github.com/skiffproxy/skiff/dataplane/upstream"
	"github.com/skiffproxy/skiff/dataplane/upstream/pool"
	"github.com/skiffproxy/skiff/internal/netio"
)

// terminatesConnect reports whether the request is a CONNECT the route
// terminates (its CONNECT upgrade_configs entry has a connect_config).
func (q *rq) terminatesConnect() bool {
	return q.rt.TerminateConnect && q.e.Request.Method() == "CONNECT"
}

// terminateOn serves a CONNECT request the route terminates, on host, as
// Envoy's router does with a TcpUpstream: a TCP connection to the host (the
// cluster's transport socket, connect_timeout and max_connections apply;
// a failure is a connect failure, retried under connect-failure), then a 200
// downstream, made by skiff and passed through the route's response header
// mutations; from then on the request's body goes to the host and the host's
// bytes are the response's body, each side's end passed on as a half-close.
// The request's headers do not go upstream.
func (q *rq) terminateOn(host *upstream.Host) outcome {
	e, cl := q.e, q.cl
	if !cl.ReserveConnection() {
		return q.fail(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow",
			"upstream_reset_before_response_started{overflow}", http.FlagUpstreamOverflow)
	}
	ctx, cancel := context.WithCancel(e.Context())
	stop := q.stopChan()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := cl.Connect(ctx, host)
	interrupted := ctx.Err() != nil
	cancel()
	if err != nil {
		cl.ReleaseConnection()
		if !interrupted {
			cl.ReportOutcome(host, upstream.ConnectFailed)
		}
		return q.acquireFailed(&pool.ConnectError{Host: host.String(), Err: err})
	}
	cl.ReportOutcome(host, upstream.Connected)
	e.Info.UpstreamLocal = netio.AddrPort(conn.LocalAddr())
	e.Info.UpstreamTLS, e.Info.UpstreamLocalCert = upstream.TLSSession(conn, host.Transport())
	us := &tcpStream{conn: conn}
	if !q.setStream(us) {
		us.Reset(http.ResetCancel)
		cl.Closed(host, upstream.LocalClose)
		return q.interrupted()
	}
	e.Info.UpstreamResponseStart = max(time.Since(e.Info.Start), 1)
	r := &e.Response
	r.Reset()
	r.Set(http.Status, "200")
	q.rt.MutateResponse(r, &e.Info)
	e.Info.ResponseCodeDetails = http.DetailsViaUpstream
	q.respStarted = true
	q.stopTimers()
	if err := e.Downstream.WriteHeader(r, false); err != nil {
		us.Reset(http.ResetCancel)
		e.Info.SetFlags(http.FlagDownstreamConnectionTermination)
	} else {
		q.tunnel(us)
	}
	q.clearStream()
	us.Close()
	how := upstream.LocalClose
	if us.peerGone.Load() { // the host ended it (Envoy's RemoteClose)
		how = upstream.RemoteClose
	}
	cl.Closed(host, how)
	return done
}

// tcpStream is the upstream of a terminated CONNECT: a TCP connection in the
// place of an HTTP client stream, for the router's tunnel. Only the body
// methods are used; Reset closes the connection with a reset.
type tcpStream struct {
	conn     net.Conn
	peerGone atomic.Bool // a read found the host's end of stream or reset (http.PeerGone)
}

var errNoHeaders = errors.New("router: a terminated CONNECT's upstream has no headers")

func (s *tcpStream) WriteHeader(*http.Header, bool) error { return errNoHeaders }
func (s *tcpStream) ReadHeader() (*http.Header, error)    { return nil, errNoHeaders }
func (s *tcpStream) EndedWithHeader() bool                { return false }
func (s *tcpStream) Trailers() *http.Header               { return nil }
func (s *tcpStream) EndWithTrailers(*http.Header) error   { return s.End() }
func (s *tcpStream) Write(p []byte) (int, error)          { return s.conn.Write(p) }

// Read reads the host's bytes; io.EOF once it half-closed.
func (s *tcpStream) Read(p []byte) (int, error) {
	n, err := s.conn.Read(p)
	if http.PeerGone(err) {
		s.peerGone.Store(true)
	}
	return n, err
}

// End half-closes the connection: the host reads the end of the stream.
func (s *tcpStream) End() error {
	if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Reset closes the connection with a TCP reset.
func (s *tcpStream) Reset(http.ResetCode) {
	if l, ok := s.conn.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = s.Close()
}

func (s *tcpStream) Close() error { return s.conn.Close() }
