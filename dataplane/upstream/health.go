package upstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
)

// HealthCheckConfig is a cluster's health_checks entry (active health
// checking), with Envoy's defaults filled in: every host of the cluster is
// probed on its own schedule, and a host that fails is not picked (see
// Host.Healthy) until it passes again.
type HealthCheckConfig struct {
	Timeout  time.Duration
	Interval time.Duration
	// The intervals used instead of Interval: while the host is unhealthy,
	// right after a check that moves a host toward a change of state that
	// the thresholds still hold back, and while the cluster has never made a
	// connection (no_traffic_interval, for a healthy host
	// no_traffic_healthy_interval).
	UnhealthyInterval, UnhealthyEdgeInterval, HealthyEdgeInterval time.Duration
	NoTrafficInterval, NoTrafficHealthyInterval                   time.Duration
	// Jitter added to each interval: up to IntervalJitter, and up to
	// IntervalJitterPercent of the interval; InitialJitter delays the first
	// check.
	IntervalJitter, InitialJitter time.Duration
	IntervalJitterPercent         uint32
	// A healthy host becomes unhealthy after UnhealthyThreshold failures in a
	// row (one, for an HTTP status neither expected nor retriable); an
	// unhealthy one healthy after HealthyThreshold successes in a row, or
	// after its first check's success.
	UnhealthyThreshold, HealthyThreshold uint32
	// ReuseConnection keeps the connection open from one check to the next.
	ReuseConnection bool

	// Exactly one of TCP, HTTP and GRPC is set.
	TCP  *TCPHealthCheck
	HTTP *HTTPHealthCheck
	GRPC *GRPCHealthCheck

	src *corev3.HealthCheck // what it was built from: an equal one changes nothing
}

// TCPHealthCheck is tcp_health_check: after connecting, Send is written and
// each of Receive must then arrive, in order, within what the host sends
// (Envoy's fuzzy match). With neither, a check passes on connecting.
type TCPHealthCheck struct {
	Send    []byte
	Receive [][]byte
}

// HTTPHealthCheck is http_health_check: an HTTP/1.1 request whose response
// status must be in Expected (default 200 alone). A status in Retriable
// counts as a failure toward the unhealthy threshold; any other makes the
// host unhealthy at once.
type HTTPHealthCheck struct {
	Method, Host        string
	Path                *url.URL // path and query
	HTTP2               bool     // codec_client_type HTTP2: prior knowledge, cleartext
	Add                 []HeaderValue
	Remove              []string
	Expected, Retriable []StatusRange
}

// GRPCHealthCheck is grpc_health_check: the grpc.health.v1.Health/Check
// RPC over HTTP/2 for ServiceName, with :authority Authority (default: the
// cluster's name) and Metadata. It passes when the host answers SERVING; a
// connection failure or timeout counts toward the unhealthy threshold, any
// other answer fails the host at once.
type GRPCHealthCheck struct {
	ServiceName, Authority string
	Metadata               []HeaderValue
}

// HeaderValue is one header added to a health check request; Append false
// replaces a header of the same name.
type HeaderValue struct {
	Name, Value string
	Append      bool
}

// StatusRange is a half-open range of HTTP statuses, [Start, End).
type StatusRange struct{ Start, End int }

func inRanges(rs []StatusRange, status int) bool {
	for _, r := range rs {
		if status >= r.Start && status < r.End {
			return true
		}
	}
	return false
}

// newHealthCheckConfig compiles a cluster's health_checks. Envoy runs every
// entry; skiff runs one, and says so for more.
func newHealthCheckConfig(hcs []*corev3.HealthCheck) (*HealthCheckConfig, error) {
	if len(hcs) > 1 {
		return nil, cfgerr.Errorf("health_checks", "%d health checks: skiff runs one per cluster", len(hcs))
	}
	hc, err := compileHealthCheck(hcs[0])
	if err != nil {
		return nil, cfgerr.Index("health_checks", 0, err)
	}
	return hc, nil
}

func compileHealthCheck(pb *corev3.HealthCheck) (*HealthCheckConfig, error) {
	if err := cfgerr.OnlyFields(pb, "timeout", "interval", "initial_jitter", "interval_jitter",
		"interval_jitter_percent", "unhealthy_threshold", "healthy_threshold", "reuse_connection",
		"no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval",
		"unhealthy_edge_interval", "healthy_edge_interval", "always_log_health_check_failures",
		"always_log_health_check_success", "tcp_health_check", "http_health_check", "grpc_health_check"); err != nil {
		return nil, err
	}
	pos := func(field string, d *durationpb.Duration) (time.Duration, error) {
		if d == nil {
			return 0, cfgerr.Errorf(field, "is required")
		}
		if v := d.AsDuration(); v > 0 {
			return v, nil
		}
		return 0, cfgerr.Errorf(field, "must be greater than 0")
	}
	opt := func(d *durationpb.Duration, def time.Duration) time.Duration {
		if v := d.AsDuration(); d != nil && v > 0 {
			return v
		}
		return def
	}
	c := &HealthCheckConfig{src: pb, ReuseConnection: true}
	var err error
	if c.Timeout, err = pos("timeout", pb.GetTimeout()); err != nil {
		return nil, err
	}
	if c.Interval, err = pos("interval", pb.GetInterval()); err != nil {
		return nil, err
	}
	if pb.GetUnhealthyThreshold() == nil {
		return nil, cfgerr.Errorf("unhealthy_threshold", "is required")
	}
	if pb.GetHealthyThreshold() == nil {
		return nil, cfgerr.Errorf("healthy_threshold", "is required")
	}
	c.UnhealthyThreshold = max(pb.GetUnhealthyThreshold().GetValue(), 1)
	c.HealthyThreshold = max(pb.GetHealthyThreshold().GetValue(), 1)
	if r := pb.GetReuseConnection(); r != nil {
		c.ReuseConnection = r.GetValue()
	}
	c.UnhealthyInterval = opt(pb.GetUnhealthyInterval(), c.Interval)
	c.UnhealthyEdgeInterval = opt(pb.GetUnhealthyEdgeInterval(), c.UnhealthyInterval)
	c.HealthyEdgeInterval = opt(pb.GetHealthyEdgeInterval(), c.Interval)
	c.NoTrafficInterval = opt(pb.GetNoTrafficInterval(), 60*time.Second)
	c.NoTrafficHealthyInterval = opt(pb.GetNoTrafficHealthyInterval(), c.NoTrafficInterval)
	c.IntervalJitter = pb.GetIntervalJitter().AsDuration()
	c.InitialJitter = pb.GetInitialJitter().AsDuration()
	c.IntervalJitterPercent = pb.GetIntervalJitterPercent()

	switch k := pb.GetHealthChecker().(type) {
	case *corev3.HealthCheck_TcpHealthCheck_:
		tc, err := compileTCPCheck(k.TcpHealthCheck)
		if err != nil {
			return nil, cfgerr.Field("tcp_health_check", err)
		}
		c.TCP = tc
	case *corev3.HealthCheck_HttpHealthCheck_:
		hc, err := compileHTTPCheck(k.HttpHealthCheck)
		if err != nil {
			return nil, cfgerr.Field("http_health_check", err)
		}
		c.HTTP = hc
	case *corev3.HealthCheck_GrpcHealthCheck_:
		gc, err := compileGRPCCheck(k.GrpcHealthCheck)
		if err != nil {
			return nil, cfgerr.Field("grpc_health_check", err)
		}
		c.GRPC = gc
	default:
		return nil, cfgerr.Errorf("health_checker", "one of tcp_health_check, http_health_check and grpc_health_check is required (custom_health_check is not supported)")
	}
	return c, nil
}

func compilePayload(field string, p *corev3.HealthCheck_Payload) ([]byte, error) {
	switch v := p.GetPayload().(type) {
	case *corev3.HealthCheck_Payload_Text:
		b, err := hex.DecodeString(v.Text)
		if err != nil {
			return nil, cfgerr.Errorf(field+".text", "is not hex: %v", err)
		}
		return b, nil
	case *corev3.HealthCheck_Payload_Binary:
		return v.Binary, nil
	}
	return nil, cfgerr.Errorf(field, "has no text or binary")
}

func compileTCPCheck(pb *corev3.HealthCheck_TcpHealthCheck) (*TCPHealthCheck, error) {
	if err := cfgerr.OnlyFields(pb, "send", "receive"); err != nil {
		return nil, err
	}
	tc := &TCPHealthCheck{}
	if pb.GetSend() != nil {
		b, err := compilePayload("send", pb.GetSend())
		if err != nil {
			return nil, err
		}
		tc.Send = b
	}
	for i, r := range pb.GetReceive() {
		b, err := compilePayload("receive["+strconv.Itoa(i)+"]", r)
		if err != nil {
			return nil, err
		}
		tc.Receive = append(tc.Receive, b)
	}
	return tc, nil
}

// headerValue is a HeaderValue's value, or its raw_value when value is
// empty, as Envoy takes them.
func headerValue(hv *corev3.HeaderValue) string {
	if v := hv.GetValue(); v != "" || len(hv.GetRawValue()) == 0 {
		return v
	}
	return string(hv.GetRawValue())
}

func compileGRPCCheck(pb *corev3.HealthCheck_GrpcHealthCheck) (*GRPCHealthCheck, error) {
	if err := cfgerr.OnlyFields(pb, "service_name", "authority", "initial_metadata"); err != nil {
		return nil, err
	}
	gc := &GRPCHealthCheck{ServiceName: pb.GetServiceName(), Authority: pb.GetAuthority()}
	for i, h := range pb.GetInitialMetadata() {
		hv := h.GetHeader()
		name := strings.ToLower(hv.GetKey())
		if name == "" || strings.HasPrefix(name, ":") || strings.HasPrefix(name, "grpc-") {
			return nil, cfgerr.Errorf("initial_metadata["+strconv.Itoa(i)+"].header.key", "%q is not metadata skiff can send", hv.GetKey())
		}
		v := headerValue(hv)
		gc.Metadata = append(gc.Metadata, HeaderValue{Name: name, Value: v, Append: true})
	}
	return gc, nil
}

func compileHTTPCheck(pb *corev3.HealthCheck_HttpHealthCheck) (*HTTPHealthCheck, error) {
	if err := cfgerr.OnlyFields(pb, "host", "path", "request_headers_to_add", "request_headers_to_remove",
		"expected_statuses", "retriable_statuses", "codec_client_type", "method"); err != nil {
		return nil, err
	}
	var http2 bool
	switch pb.GetCodecClientType() {
	case typev3.CodecClientType_HTTP1:
	case typev3.CodecClientType_HTTP2:
		http2 = true
	default:
		return nil, cfgerr.Errorf("codec_client_type", "%v is not supported: skiff checks over HTTP/1.1 or HTTP/2", pb.GetCodecClientType())
	}
	path, err := url.ParseRequestURI(pb.GetPath())
	if err != nil || !strings.HasPrefix(pb.GetPath(), "/") {
		return nil, cfgerr.Errorf("path", "%q is not an absolute path", pb.GetPath())
	}
	hc := &HTTPHealthCheck{Method: "GET", Host: pb.GetHost(), Path: path, HTTP2: http2}
	switch m := pb.GetMethod(); m {
	case corev3.RequestMethod_METHOD_UNSPECIFIED, corev3.RequestMethod_GET:
	case corev3.RequestMethod_CONNECT:
		return nil, cfgerr.Errorf("method", "CONNECT is not allowed")
	default:
		hc.Method = m.String()
	}
	for i, h := range pb.GetRequestHeadersToAdd() {
		hv := h.GetHeader()
		if hv.GetKey() == "" || strings.HasPrefix(hv.GetKey(), ":") {
			return nil, cfgerr.Errorf("request_headers_to_add["+strconv.Itoa(i)+"].header.key", "%q is not a header name skiff can add", hv.GetKey())
		}
		v := headerValue(hv)
		add := h.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		//lint:ignore SA1019 append is deprecated but still Envoy's API, with this meaning
		if a := h.GetAppend(); a != nil {
			add = a.GetValue()
		}
		hc.Add = append(hc.Add, HeaderValue{Name: http.CanonicalHeaderKey(hv.GetKey()), Value: v, Append: add})
	}
	for _, n := range pb.GetRequestHeadersToRemove() {
		hc.Remove = append(hc.Remove, http.CanonicalHeaderKey(n))
	}
	ranges := func(field string, rs []*typev3.Int64Range) ([]StatusRange, error) {
		var out []StatusRange
		for i, r := range rs {
			if r.GetStart() < 100 || r.GetEnd() > 600 || r.GetStart() >= r.GetEnd() {
				return nil, cfgerr.Errorf(field+"["+strconv.Itoa(i)+"]", "[%d, %d) is not a range of HTTP statuses", r.GetStart(), r.GetEnd())
			}
			out = append(out, StatusRange{int(r.GetStart()), int(r.GetEnd())})
		}
		return out, nil
	}
	if hc.Expected, err = ranges("expected_statuses", pb.GetExpectedStatuses()); err != nil {
		return nil, err
	}
	if len(hc.Expected) == 0 {
		hc.Expected = []StatusRange{{200, 201}}
	}
	if hc.Retriable, err = ranges("retriable_statuses", pb.GetRetriableStatuses()); err != nil {
		return nil, err
	}
	return hc, nil
}

// healthStats are a cluster's health_check.* counters, named as in Envoy.
type healthStats struct {
	attempt, success, failure, networkFailure, passiveFailure stats.Counter
	degraded                                                  stats.Counter
	healthy                                                   stats.Gauge
}

func newHealthStats(sc *stats.Scope) *healthStats {
	return &healthStats{
		attempt:        sc.Counter("health_check.attempt"),
		success:        sc.Counter("health_check.success"),
		failure:        sc.Counter("health_check.failure"),
		networkFailure: sc.Counter("health_check.network_failure"),
		passiveFailure: sc.Counter("health_check.passive_failure"),
		degraded:       sc.Counter("health_check.degraded"),
		healthy:        sc.GaugeMode("health_check.healthy", stats.NeverImport),
	}
}

// checker runs a cluster's active health checks: one goroutine per host.
type checker struct {
	c     *Cluster
	cfg   *HealthCheckConfig
	stats *healthStats

	mu       sync.Mutex
	sessions map[*Host]context.CancelFunc // under mu
	wg       sync.WaitGroup
	stopped  bool
	synced   bool           // the hosts it started with have their sessions; under mu
	initial  sync.WaitGroup // those sessions until their first check is recorded
}

// healthChecker returns the cluster's running health checker, or nil.
func (c *Cluster) healthChecker() *checker {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checker
}

// setHealthCheckLocked starts, replaces or stops the cluster's health
// checker (c.mu held). A configuration equal to the running one keeps it,
// and the hosts' state, as they are.
func (c *Cluster) setHealthCheckLocked(cfg *HealthCheckConfig) {
	old := c.checker
	if old != nil && cfg != nil && proto.Equal(old.cfg.src, cfg.src) {
		return // the same checks: they go on, and the hosts keep their state
	}
	if old != nil {
		old.stop()
		c.checker = nil
	}
	if cfg == nil {
		changed := false
		for _, h := range c.hosts {
			h.hcExcluded.Store(false)
			changed = h.hcDegraded.Swap(false) || changed
			changed = h.hcFailed.Swap(false) || changed
		}
		if changed {
			c.rebuildLocked()
		}
		return
	}
	if c.healthStats == nil {
		c.healthStats = newHealthStats(c.scope)
	}
	k := &checker{c: c, cfg: cfg, stats: c.healthStats, sessions: map[*Host]context.CancelFunc{}}
	c.checker = k
	if !c.live {
		// A new cluster's hosts are checked before they are trusted: each
		// waits for its first check's success (and Manager.Set for the
		// first round), as in Envoy's cluster warming. A cluster already
		// serving keeps its hosts' state while the new checks begin, as
		// Envoy's old cluster serves while the new one warms.
		for _, h := range c.hosts {
			h.hcFailed.Store(true)
		}
		c.rebuildLocked()
	}
	if c.dns != nil && !c.dns.applied {
		// A DNS cluster's hosts are not known yet: its first resolution
		// makes them, and they are the first round Manager.Set waits for.
		return
	}
	k.syncLocked(c.hosts)
}

// syncLocked starts a session for each host that has none and ends those of
// hosts that left (c.mu held). A new host starts failed until its first
// check passes.
func (k *checker) syncLocked(hosts map[hostKey]*Host) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	for h, cancel := range k.sessions {
		if hosts[h.key()] != h {
			cancel()
			delete(k.sessions, h)
		}
	}
	initial := !k.synced
	k.synced = true
	for _, h := range hosts {
		if _, ok := k.sessions[h]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		k.sessions[h] = cancel
		if initial {
			k.initial.Add(1)
		}
		k.wg.Go(func() { k.run(ctx, h, initial) })
	}
	k.stats.healthy.Set(int64(k.healthyLocked()))
}

func (k *checker) healthyLocked() int {
	n := 0
	for h := range k.sessions {
		if !h.hcFailed.Load() {
			n++
		}
	}
	return n
}

// stop ends every session. It does not wait for their goroutines, which may
// be waiting for the cluster's lock that the caller holds: wait does.
func (k *checker) stop() {
	k.mu.Lock()
	k.stopped = true
	for h, cancel := range k.sessions {
		cancel()
		delete(k.sessions, h)
	}
	k.mu.Unlock()
}

// wait waits for the goroutines of a stopped checker to end.
func (k *checker) wait() { k.wg.Wait() }

// firstRound waits until every host the checker started with has had its
// first check, or for as long as a first check can take (initial_jitter
// plus timeout, and a second to spare).
func (k *checker) firstRound() {
	done := make(chan struct{})
	go func() {
		k.initial.Wait()
		close(done)
	}()
	t := time.NewTimer(k.cfg.InitialJitter + k.cfg.Timeout + time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// outcome is what one check found.
type outcome uint8

const (
	checkPassed  outcome = iota
	checkNetwork         // a connect failure, timeout or reset, or a retriable status: counts toward the threshold
	checkActive          // a status neither expected nor retriable: unhealthy at once
)

// session is one host's checking state, kept by its goroutine.
type session struct {
	grpc         *grpc.ClientConn // for grpc_health_check, instead of conn
	conn         net.Conn
	h2           *http.ClientConn // for an HTTP/2 http_health_check, instead of conn
	br           *bufio.Reader
	healthy, bad uint32 // successes and failures in a row
	first        bool   // the first check is still to come
}

// run checks h until ctx is done. initial says the host is one the checker
// started with, whose first check firstRound waits for.
func (k *checker) run(ctx context.Context, h *Host, initial bool) {
	s := &session{first: true}
	firstDone := func() {
		if initial {
			initial = false
			k.initial.Done()
		}
	}
	defer firstDone()
	defer func() {
		if s.conn != nil {
			s.conn.Close()
		}
		if s.grpc != nil {
			s.grpc.Close()
		}
		if s.h2 != nil {
			s.h2.Close()
		}
	}()
	wait := time.Duration(0)
	if j := k.cfg.InitialJitter; j > 0 {
		wait = rand.N(j)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		res := k.check(ctx, h, s)
		if ctx.Err() != nil {
			return
		}
		pending := k.record(h, s, res)
		firstDone()
		t.Reset(k.interval(res == checkPassed, pending))
	}
}

// dial connects to h for a check, within the cluster's connect_timeout or
// the check's timeout, whichever is shorter, with the host's transport
// socket (a TLS host is checked over TLS, as in Envoy).
func (k *checker) dial(ctx context.Context, h *Host) (net.Conn, error) {
	var alpn []string
	switch {
	case k.cfg.GRPC != nil, k.cfg.HTTP != nil && k.cfg.HTTP.HTTP2:
		alpn = []string{"h2"}
	case k.cfg.HTTP != nil:
		alpn = []string{"http/1.1"}
	}
	return k.c.dial(ctx, h, min(k.c.cfg.Load().ConnectTimeout, k.cfg.Timeout), ConnectOptions{ALPN: alpn})
}

// check runs one check within the timeout.
func (k *checker) check(ctx context.Context, h *Host, s *session) outcome {
	k.stats.attempt.Inc()
	ctx, cancel := context.WithTimeout(ctx, k.cfg.Timeout)
	defer cancel()
	if k.cfg.GRPC != nil {
		return k.checkGRPC(ctx, h, s)
	}
	if k.cfg.HTTP != nil && k.cfg.HTTP.HTTP2 {
		return k.checkHTTP2(ctx, h, s)
	}
	if s.conn == nil {
		conn, err := k.dial(ctx, h)
		if err != nil {
			return checkNetwork
		}
		s.conn, s.br = conn, bufio.NewReader(conn)
	}
	if dl, ok := ctx.Deadline(); ok {
		s.conn.SetDeadline(dl)
	}
	conn := s.conn // the func may run after s.conn is cleared below
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var res outcome
	keep := k.cfg.ReuseConnection
	if k.cfg.TCP != nil {
		res = k.checkTCP(s)
	} else {
		var close bool
		res, close = k.checkHTTP(h, s)
		keep = keep && !close
	}
	if res != checkPassed || !keep {
		s.conn.Close()
		s.conn, s.br = nil, nil
	} else {
		s.conn.SetDeadline(time.Time{})
	}
	return res
}

func (k *checker) checkTCP(s *session) outcome {
	tc := k.cfg.TCP
	s.br.Discard(s.br.Buffered()) // an answer to an earlier check
	if len(tc.Send) > 0 {
		if _, err := s.conn.Write(tc.Send); err != nil {
			return checkNetwork
		}
	}
	if len(tc.Receive) == 0 {
		return checkPassed
	}
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := s.br.Read(buf)
		got = append(got, buf[:n]...)
		if fuzzyMatch(got, tc.Receive) {
			return checkPassed
		}
		if err != nil || len(got) > 1<<20 {
			return checkNetwork
		}
	}
}

// fuzzyMatch reports whether each of want is in got, in order, as Envoy's
// TCP health check matches what a host sends.
func fuzzyMatch(got []byte, want [][]byte) bool {
	for _, w := range want {
		i := bytes.Index(got, w)
		if i < 0 {
			return false
		}
		got = got[i+len(w):]
	}
	return true
}

// checkGRPC makes the Check RPC on the session's gRPC connection, making
// one if needed; the connection is closed after a failure, or after every
// check without reuse_connection.
func (k *checker) checkGRPC(ctx context.Context, h *Host, s *session) outcome {
	gc := k.cfg.GRPC
	if s.grpc == nil {
		authority := gc.Authority
		if authority == "" {
			authority = k.c.name
		}
		cc, err := grpc.NewClient("passthrough:///"+h.String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority(authority),
			grpc.WithUserAgent("Envoy/HC"),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return k.dial(ctx, h) }))
		if err != nil {
			return checkNetwork
		}
		s.grpc = cc
	}
	for _, m := range gc.Metadata {
		ctx = metadata.AppendToOutgoingContext(ctx, m.Name, m.Value)
	}
	resp, err := healthpb.NewHealthClient(s.grpc).Check(ctx, &healthpb.HealthCheckRequest{Service: gc.ServiceName})
	res := checkPassed
	switch {
	case err != nil:
		res = checkActive
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			res = checkNetwork
		}
	case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		res = checkActive
	}
	if res != checkPassed || !k.cfg.ReuseConnection {
		s.grpc.Close()
		s.grpc = nil
	}
	return res
}

// httpRequest is the check's request, as Envoy's HTTP health checker
// makes it.
func (k *checker) httpRequest() *http.Request {
	hc := k.cfg.HTTP
	host := hc.Host
	if host == "" {
		host = k.c.name // Envoy's default: the cluster's name
	}
	u := *hc.Path
	u.Scheme, u.Host = "http", host
	req := &http.Request{
		Method: hc.Method, URL: &u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Host: host, Header: http.Header{"User-Agent": {"Envoy/HC"}},
	}
	for _, a := range hc.Add {
		if a.Append {
			req.Header.Add(a.Name, a.Value)
		} else {
			req.Header.Set(a.Name, a.Value)
		}
	}
	for _, n := range hc.Remove {
		req.Header.Del(n)
	}
	return req
}

// judge reads a check's response from h to its end and applies the status
// rules. close reports that the connection cannot carry another check. A
// response that fails the host at once and carries
// x-envoy-immediate-health-check-fail also marks it
// excluded_via_immediate_hc_fail until it passes again, as Envoy's HTTP
// health checker does. (Envoy sets the flag for a retriable status too,
// which takes the host out of its balancer before the unhealthy threshold;
// skiff leaves such a host to the threshold.)
func (k *checker) judge(h *Host, resp *http.Response) (res outcome, close bool) {
	hc := k.cfg.HTTP
	_, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	close = err != nil || resp.Close
	switch {
	case inRanges(hc.Expected, resp.StatusCode):
		k.setDegraded(h, len(resp.Header.Values("X-Envoy-Degraded")) > 0)
		return checkPassed, close
	case inRanges(hc.Retriable, resp.StatusCode):
		return checkNetwork, close
	}
	if len(resp.Header.Values("X-Envoy-Immediate-Health-Check-Fail")) > 0 {
		h.hcExcluded.Store(true)
	}
	return checkActive, close
}

// setDegraded records whether a passing check's response said
// x-envoy-degraded, as Envoy's handleSuccess: a change takes effect at once
// (no threshold), becoming degraded counts in health_check.degraded, and the
// host stays degraded until a passing response without the header.
func (k *checker) setDegraded(h *Host, degraded bool) {
	if h.hcDegraded.Load() == degraded {
		return
	}
	c := k.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checker != k || h.Gone() {
		return
	}
	h.hcDegraded.Store(degraded)
	if degraded {
		k.stats.degraded.Inc()
	}
	c.rebuildLocked()
}

// checkHTTP sends the request over HTTP/1.1 on the session's connection.
func (k *checker) checkHTTP(h *Host, s *session) (res outcome, close bool) {
	req := k.httpRequest()
	if err := req.Write(s.conn); err != nil {
		return checkNetwork, true
	}
	resp, err := http.ReadResponse(s.br, req)
	if err != nil {
		return checkNetwork, true
	}
	return k.judge(h, resp)
}

// checkHTTP2 sends the request over cleartext HTTP/2 (prior knowledge) on
// the session's HTTP/2 connection, making one if needed; it is closed after
// a failure, without reuse_connection, or when it takes no more requests.
func (k *checker) checkHTTP2(ctx context.Context, h *Host, s *session) outcome {
	if s.h2 == nil {
		tr := &http.Transport{
			Protocols:   new(http.Protocols),
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return k.dial(ctx, h) },
		}
		tr.Protocols.SetUnencryptedHTTP2(true)
		cc, err := tr.NewClientConn(ctx, "http", h.String())
		if err != nil {
			return checkNetwork
		}
		s.h2 = cc
	}
	res := checkNetwork
	close := true
	if resp, err := s.h2.RoundTrip(k.httpRequest().WithContext(ctx)); err == nil {
		res, close = k.judge(h, resp)
	}
	if res != checkPassed || close || !k.cfg.ReuseConnection || s.h2.Available() == 0 {
		s.h2.Close()
		s.h2 = nil
	}
	return res
}

// ImmediateHealthCheckFail acts on an upstream response from h that carried
// x-envoy-immediate-health-check-fail (an upstream Envoy's health check
// filter failing), as Envoy's router tells the host's health checker: when
// the cluster has active health checking, the host fails it at once
// (health_check.failure and .passive_failure; its health_flags show
// failed_active_hc and excluded_via_immediate_hc_fail) and leaves the
// balancer until it passes healthy_threshold checks again. Without active
// health checking the header means nothing, as in Envoy.
func (c *Cluster) ImmediateHealthCheckFail(h *Host) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.checker
	if k == nil || h.Gone() || c.hosts[h.key()] != h {
		return
	}
	h.hcExcluded.Store(true)
	h.hcPassive.Store(true)
	k.stats.failure.Inc()
	k.stats.passiveFailure.Inc()
	if !h.hcFailed.Swap(true) {
		k.healthChangedLocked()
	}
}

// healthChangedLocked rebuilds the cluster's balancer after a host passed
// or failed its checks and sets health_check.healthy; c.mu is held.
func (k *checker) healthChangedLocked() {
	k.c.rebuildLocked()
	k.mu.Lock()
	k.stats.healthy.Set(int64(k.healthyLocked()))
	k.mu.Unlock()
}

// record applies a check's outcome to the host, as Envoy's
// handleSuccess and handleFailure do. It reports whether the host is on its
// way to a change of state that a threshold still holds back.
func (k *checker) record(h *Host, s *session, res outcome) (pending bool) {
	if h.hcPassive.Swap(false) {
		// An immediate failure since the last check: the passes to come
		// count from none, and a first check no longer brings the host in
		// at once (Envoy's setUnhealthy).
		s.healthy, s.bad, s.first = 0, 0, false
	}
	first := s.first
	s.first = false
	failed := h.hcFailed.Load()
	change := false
	if res == checkPassed {
		k.stats.success.Inc()
		s.bad = 0
		if failed {
			s.healthy++
			change = first || s.healthy >= k.cfg.HealthyThreshold
		}
	} else {
		k.stats.failure.Inc()
		if res == checkNetwork {
			k.stats.networkFailure.Inc()
		}
		s.healthy = 0
		if !failed {
			s.bad++
			change = res == checkActive || s.bad >= k.cfg.UnhealthyThreshold
		}
	}
	if !change {
		// A success for a failed host, or a failure for a healthy one, is
		// a step toward a change of state.
		return (res == checkPassed) == failed
	}
	s.bad, s.healthy = 0, 0
	c := k.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checker != k || h.Gone() {
		return false // this checker was replaced or stopped, or the host left
	}
	if h.hcPassive.Load() {
		return true // failed by a response meanwhile: the next check starts again
	}
	h.hcFailed.Store(!failed)
	if failed {
		h.hcExcluded.Store(false)
	}
	k.healthChangedLocked()
	return false
}

// interval is the wait before a host's next check, as Envoy's
// HealthCheckerImplBase::interval: the no-traffic intervals while the
// cluster has never made a connection, the edge intervals while a threshold
// holds back a change (passed says which way), the unhealthy interval after
// a failure, and the interval after a success; plus jitter.
func (k *checker) interval(passed, pending bool) time.Duration {
	cfg := k.cfg
	var base time.Duration
	switch {
	case k.c.stats.cxTotal.Value() == 0:
		base = cfg.NoTrafficInterval
		if passed && !pending {
			base = cfg.NoTrafficHealthyInterval
		}
	case passed && pending:
		base = cfg.HealthyEdgeInterval
	case passed:
		base = cfg.Interval
	case pending:
		base = cfg.UnhealthyEdgeInterval
	default:
		base = cfg.UnhealthyInterval
	}
	if p := cfg.IntervalJitterPercent; p > 0 {
		if j := base * time.Duration(p) / 100; j > 0 {
			base += rand.N(j)
		}
	}
	if j := cfg.IntervalJitter; j > 0 {
		base += rand.N(j)
	}
	return max(base, time.Millisecond)
}
