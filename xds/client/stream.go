package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/xds/resource"
)

// resourceWrapperType is the type URL of envoy.service.discovery.v3.Resource,
// which a state-of-the-world response uses to carry a TTL or a heartbeat.
const resourceWrapperType = "type.googleapis.com/envoy.service.discovery.v3.Resource"

// source is one control plane connection: the ADS server, or the server of an
// api_config_source.
type source struct {
	key        string
	api        *corev3.ApiConfigSource
	delta      bool
	aggregated bool
	conn       *grpc.ClientConn
	streams    map[string]*stream // by type URL; "" for the one ADS stream
}

func (s *source) close() {
	if s.conn != nil {
		s.conn.Close()
	}
}

// streamFor returns the stream that carries type url from config source src,
// creating the source connection and the stream as needed.
func (c *Client) streamFor(url string, src *corev3.ConfigSource) (*stream, error) {
	var api *corev3.ApiConfigSource
	var key string
	aggregated := false
	switch {
	case src.GetAds() != nil:
		if c.opts.Sources.ADS == nil {
			return nil, errors.New("ads: the bootstrap has no dynamic_resources.ads_config")
		}
		api, key, aggregated = c.opts.Sources.ADS, "ads", true
	case src.GetApiConfigSource() != nil:
		api = src.GetApiConfigSource()
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(api)
		if err != nil {
			return nil, err
		}
		key = "api:" + string(b)
	case src == nil:
		return nil, errors.New("no config source")
	default:
		return nil, errors.New("only ads and api_config_source config sources are supported by skiff (not path or path_config_source)")
	}
	s := c.sources[key]
	if s == nil {
		var err error
		if s, err = c.newSource(key, api, aggregated); err != nil {
			return nil, err
		}
		c.sources[key] = s
	}
	streamKey := url
	if s.aggregated {
		streamKey = ""
	}
	st := s.streams[streamKey]
	if st == nil {
		method, err := methodFor(url, s.aggregated, s.delta)
		if err != nil {
			return nil, err
		}
		st = &stream{c: c, src: s, method: method, delta: s.delta, pending: map[string]bool{}, wake: make(chan struct{}, 1)}
		s.streams[streamKey] = st
	}
	return st, nil
}

func (c *Client) newSource(key string, api *corev3.ApiConfigSource, aggregated bool) (*source, error) {
	s := &source{key: key, api: api, aggregated: aggregated, streams: map[string]*stream{}}
	switch api.GetApiType() {
	case corev3.ApiConfigSource_GRPC, corev3.ApiConfigSource_AGGREGATED_GRPC:
	case corev3.ApiConfigSource_DELTA_GRPC, corev3.ApiConfigSource_AGGREGATED_DELTA_GRPC:
		s.delta = true
	default:
		return nil, fmt.Errorf("api_type: %s is not supported by skiff (GRPC and DELTA_GRPC are)", api.GetApiType())
	}
	if api.GetTransportApiVersion() != corev3.ApiVersion_AUTO && api.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		return nil, fmt.Errorf("transport_api_version: only V3 is supported")
	}
	if len(api.GetGrpcServices()) == 0 {
		return nil, errors.New("grpc_services: a gRPC config source needs a gRPC service")
	}
	if len(api.GetGrpcServices()) > 1 {
		return nil, errors.New("grpc_services: skiff uses one gRPC service per config source (Envoy too uses only the first)")
	}
	if c.opts.Dial == nil {
		return nil, errors.New("no way to dial a control plane")
	}
	conn, err := c.opts.Dial(api.GetGrpcServices()[0])
	if err != nil {
		return nil, fmt.Errorf("grpc_services[0]: %w", err)
	}
	s.conn = conn
	return s, nil
}

// methodFor is the gRPC method that streams type url.
func methodFor(url string, aggregated, delta bool) (string, error) {
	if aggregated {
		if delta {
			return "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources", nil
		}
		return "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources", nil
	}
	services := map[string][2]string{
		resource.ListenerType: {"/envoy.service.listener.v3.ListenerDiscoveryService/", "Listeners"},
		resource.ClusterType:  {"/envoy.service.cluster.v3.ClusterDiscoveryService/", "Clusters"},
		resource.EndpointType: {"/envoy.service.endpoint.v3.EndpointDiscoveryService/", "Endpoints"},
		resource.RouteType:    {"/envoy.service.route.v3.RouteDiscoveryService/", "Routes"},
		resource.RuntimeType:  {"/envoy.service.runtime.v3.RuntimeDiscoveryService/", "Runtime"},
		resource.SecretType:   {"/envoy.service.secret.v3.SecretDiscoveryService/", "Secrets"},
	}
	svc, ok := services[url]
	if !ok {
		return "", fmt.Errorf("no discovery service for %s", url)
	}
	if delta {
		return svc[0] + "Delta" + svc[1], nil
	}
	return svc[0] + "Stream" + svc[1], nil
}

func sameSource(a, b, parent *corev3.ConfigSource) bool {
	if b.GetSelf() != nil {
		b = parent
	}
	if a.GetAds() != nil || b.GetAds() != nil {
		return a.GetAds() != nil && b.GetAds() != nil
	}
	return proto.Equal(a.GetApiConfigSource(), b.GetApiConfigSource())
}

func describeSource(s *corev3.ConfigSource) string {
	if s.GetAds() != nil {
		return "ads"
	}
	return "api_config_source " + s.GetApiConfigSource().GetGrpcServices()[0].String()
}

// stream is one gRPC discovery stream (reopened after failures) and the queue
// of requests to send on it. Its fields are guarded by the Client's mutex.
type stream struct {
	c      *Client
	src    *source
	method string
	delta  bool

	running bool
	pending map[string]bool // type URLs that need a request
	wake    chan struct{}

	// Per gRPC stream: whether the next request is the first, and (delta) the
	// names each type has subscribed on it.
	first bool
	sent  map[string]map[string]bool
	urls  map[string]bool // types this stream carries
}

// setConnectedLocked counts open streams into control_plane.connected_state.
func (c *Client) setConnectedLocked(delta int) {
	c.connectedCount += delta
	if c.haveStats {
		c.connected.Set(int64(min(c.connectedCount, 1)))
	}
}

func (c *Client) startStreamLocked(s *stream) {
	if s.running || c.ctx == nil {
		return
	}
	s.running = true
	c.wg.Add(1)
	go s.run(c.ctx)
}

// queueLocked asks for a request of type url to be sent (a subscription change,
// an ACK or a NACK). The request is built when it is sent, from the state then.
func (s *stream) queueLocked(url string) {
	if s.urls == nil {
		s.urls = map[string]bool{}
	}
	s.urls[url] = true
	s.pending[url] = true
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *stream) run(ctx context.Context) {
	defer s.c.wg.Done()
	for attempt := 0; ; {
		got, err := s.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if got {
			attempt = 0
		}
		delay := s.c.opts.Backoff.Delay(attempt)
		attempt++
		s.c.log.Warn("xDS stream ended; reconnecting", "method", s.method, "retry_in", delay.Round(time.Millisecond), "error", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// countFailureLocked counts err, the end of a stream or the failure to make
// one, in the update_failure of the stream's types that keep stats, unless
// it is ctx's end (skiff stopping the client).
func (s *stream) countFailureLocked(ctx context.Context, err error) {
	if err == nil || ctx.Err() != nil {
		return
	}
	for url := range s.urls {
		if st := s.c.types[url].stats; st != nil {
			st.failure.Inc()
		}
	}
}

// once runs one gRPC stream until it fails, reporting whether any response
// arrived on it.
func (s *stream) once(ctx context.Context) (got bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gs, err := s.src.conn.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, s.method)
	if err != nil {
		// A stream that could not be made fails its subscriptions too, as
		// in Envoy (update_failure on each failed establishment): with the
		// control plane unreachable, it is what moves.
		s.c.mu.Lock()
		s.countFailureLocked(ctx, err)
		s.c.mu.Unlock()
		return false, err
	}
	s.c.mu.Lock()
	s.c.setConnectedLocked(+1)
	defer func() {
		s.c.mu.Lock()
		s.c.setConnectedLocked(-1)
		s.countFailureLocked(ctx, err)
		s.c.mu.Unlock()
	}()
	s.first = true
	s.sent = map[string]map[string]bool{}
	for url := range s.urls {
		s.c.types[url].nonce = "" // nonces belong to a stream
		s.c.types[url].ackDue = false
		s.queueLocked(url) // resubscribe, with the versions we have
	}
	s.c.mu.Unlock()

	sendDone := make(chan error, 1)
	go func() { sendDone <- s.sendLoop(sctx, gs) }()
	defer func() {
		cancel()
		<-sendDone
	}()
	for {
		if s.delta {
			resp := &discoveryv3.DeltaDiscoveryResponse{}
			if err := gs.RecvMsg(resp); err != nil {
				return got, recvError(err)
			}
			got = true
			s.c.handleDelta(s, resp)
		} else {
			resp := &discoveryv3.DiscoveryResponse{}
			if err := gs.RecvMsg(resp); err != nil {
				return got, recvError(err)
			}
			got = true
			s.c.handleSotW(s, resp)
		}
	}
}

func recvError(err error) error {
	if err == io.EOF {
		return errors.New("the control plane closed the stream")
	}
	return err
}

// sendLoop sends the queued requests until ctx is done or a send fails.
func (s *stream) sendLoop(ctx context.Context, gs grpc.ClientStream) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.wake:
		}
		for {
			s.c.mu.Lock()
			req := s.nextRequestLocked()
			s.c.mu.Unlock()
			if req == nil {
				break
			}
			if err := gs.SendMsg(req); err != nil {
				return err
			}
		}
	}
}

// nextRequestLocked builds the request for one pending type, in the order
// Envoy initialises types, or returns nil.
func (s *stream) nextRequestLocked() proto.Message {
	for _, url := range resource.Types() {
		if !s.pending[url] {
			continue
		}
		delete(s.pending, url)
		ts := s.c.types[url]
		if !ts.wildcard && len(ts.names) == 0 && ts.nonce == "" && s.sent[url] == nil {
			continue // nothing subscribed yet and nothing to acknowledge
		}
		var node *corev3.Node
		if s.first || !s.src.api.GetSetNodeOnFirstMessageOnly() {
			node = s.c.opts.Node
		}
		s.first = false
		var detail *statuspb.Status
		if ts.nack != nil {
			// Envoy NACKs with INTERNAL (GrpcMuxImpl, DeltaSubscriptionState).
			detail = &statuspb.Status{Code: int32(codes.Internal), Message: ts.nack.Error()}
			ts.nack = nil
		}
		if s.delta {
			return s.deltaRequestLocked(ts, node, detail)
		}
		req := &discoveryv3.DiscoveryRequest{
			VersionInfo:   ts.version,
			Node:          node,
			TypeUrl:       url,
			ResponseNonce: ts.nonce,
			ErrorDetail:   detail,
		}
		if !ts.wildcard {
			req.ResourceNames = slices.Sorted(maps.Keys(ts.names))
		}
		return req
	}
	return nil
}

func (s *stream) deltaRequestLocked(ts *typeState, node *corev3.Node, detail *statuspb.Status) *discoveryv3.DeltaDiscoveryRequest {
	req := &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: ts.url, ErrorDetail: detail}
	if ts.ackDue {
		req.ResponseNonce, ts.ackDue = ts.nonce, false
	}
	sent := s.sent[ts.url]
	if sent == nil {
		// The first request for the type on this stream: say what we have, so
		// the server sends only what changed (an empty subscribe list is the
		// wildcard subscription of LDS and CDS).
		sent = map[string]bool{}
		s.sent[ts.url] = sent
		if len(ts.res) > 0 {
			req.InitialResourceVersions = map[string]string{}
			for name, r := range ts.res {
				req.InitialResourceVersions[name] = r.Version
			}
		}
	}
	if !ts.wildcard {
		for _, name := range slices.Sorted(maps.Keys(ts.names)) {
			if !sent[name] {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, name)
				sent[name] = true
			}
		}
		for _, name := range slices.Sorted(maps.Keys(sent)) {
			if !ts.names[name] {
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, name)
				delete(sent, name)
			}
		}
	}
	return req
}

// handleSotW processes a state-of-the-world response and queues its ACK or NACK.
func (c *Client) handleSotW(s *stream, resp *discoveryv3.DiscoveryResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.types[resp.GetTypeUrl()]
	if ts == nil || ts.stream != s {
		c.log.Warn("xDS response for a type skiff did not ask for on this stream; ignored", "type", resp.GetTypeUrl())
		return
	}
	ts.nonce = resp.GetNonce()
	u := update{set: map[string]*Resource{}, replace: ts.wildcard}
	now := time.Now()
	var err error
	var bad string
	for _, a := range resp.GetResources() {
		var name, version string
		var ttl *time.Duration
		if a.GetTypeUrl() == resourceWrapperType {
			var w discoveryv3.Resource
			if err = a.UnmarshalTo(&w); err != nil {
				break
			}
			if w.GetTtl() != nil {
				d := w.GetTtl().AsDuration()
				ttl = &d
			}
			name, version = w.GetName(), w.GetVersion()
			if w.GetResource() == nil { // a heartbeat: the resource is unchanged and still alive
				if old, ok := ts.res[name]; ok {
					u.set[name] = c.refreshLocked(ts, old, ttl)
				}
				continue
			}
			a = w.GetResource()
		}
		var m proto.Message
		var skip bool
		if m, name, skip, err = c.admitLocked(ts, &u, a, ""); err != nil {
			bad = name
			break
		}
		if skip {
			continue
		}
		if version == "" {
			version = resp.GetVersionInfo()
		}
		u.set[name] = c.newResourceLocked(ts, name, version, a, m, now, ttl)
	}
	if err == nil {
		err = c.acceptLocked(ts, &u, resp.GetVersionInfo())
	}
	c.finishLocked(s, ts, resp.GetVersionInfo(), len(resp.GetResources()), bad, err, u.rejected)
}

// admitLocked validates resource a of update u (sentName is the name the
// response gave it, "" if none): m and name for a resource to take; skip for
// one to leave out, refused on its own (see refuse) or not asked for (as the
// protocol says); err, with name, when it rejects the whole response.
func (c *Client) admitLocked(ts *typeState, u *update, a *anypb.Any, sentName string) (m proto.Message, name string, skip bool, err error) {
	m, name, err = decode(ts.url, a)
	if err == nil && !ts.wildcard && !ts.names[name] {
		// Not asked for (a response crossing an unsubscription): left out
		// unchecked, as Envoy does, so that a bad one cannot reject the
		// resources that were.
		return nil, name, true, nil
	}
	if err == nil {
		err = c.checkLocked(ts.url, m, name)
	}
	if err == nil && sentName != "" && sentName != name {
		err = &resourceError{url: ts.url, name: name, err: fmt.Errorf("is sent under the name %q", sentName)}
	}
	if err == nil {
		err = checkDuplicate(ts, u, name)
	}
	if err != nil {
		if refuse(ts, u, err) {
			return nil, name, true, nil
		}
		return nil, name, false, err
	}
	return m, name, false, nil
}

// checkDuplicate returns an error if an update already has a resource of
// that name. (LDS and CDS then apply the first, as Envoy does.)
func checkDuplicate(ts *typeState, u *update, name string) error {
	if _, dup := u.set[name]; dup {
		return &resourceError{url: ts.url, name: name, err: errors.New("appears twice in the response")}
	}
	return nil
}

// refuse handles a resource of a response that failed validation. For LDS and
// CDS, as in Envoy (CdsApiHelper, LdsApiImpl), a resource the error names is
// rejected alone: the response goes on without it, its previous version (if
// any) staying, and is NACKed in the end with the errors of such resources.
// It returns false if the error rejects the whole response instead.
func refuse(ts *typeState, u *update, err error) bool {
	var re *resourceError
	if !ts.wildcard || !errors.As(err, &re) || re.name == "" {
		return false
	}
	u.rejected = append(u.rejected, re)
	if _, ok := u.set[re.name]; !ok {
		u.keep = append(u.keep, re.name)
	}
	return true
}

// handleDelta processes a delta response and queues its ACK or NACK.
func (c *Client) handleDelta(s *stream, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.types[resp.GetTypeUrl()]
	if ts == nil || ts.stream != s {
		c.log.Warn("xDS response for a type skiff did not ask for on this stream; ignored", "type", resp.GetTypeUrl())
		return
	}
	ts.nonce, ts.ackDue = resp.GetNonce(), true
	u := update{set: map[string]*Resource{}, removed: c.deltaRemovalsLocked(ts, resp.GetRemovedResources())}
	now := time.Now()
	var err error
	var bad string
	for _, r := range resp.GetResources() {
		var ttl *time.Duration
		if r.GetTtl() != nil {
			d := r.GetTtl().AsDuration()
			ttl = &d
		}
		if r.GetResource() == nil { // heartbeat
			if old, ok := ts.res[r.GetName()]; ok {
				u.set[r.GetName()] = c.refreshLocked(ts, old, ttl)
			}
			continue
		}
		var m proto.Message
		var name string
		var skip bool
		if m, name, skip, err = c.admitLocked(ts, &u, r.GetResource(), r.GetName()); err != nil {
			bad = name
			break
		}
		if skip {
			continue
		}
		u.set[name] = c.newResourceLocked(ts, name, r.GetVersion(), r.GetResource(), m, now, ttl)
	}
	if err == nil {
		err = c.acceptLocked(ts, &u, resp.GetSystemVersionInfo())
	}
	c.finishLocked(s, ts, resp.GetSystemVersionInfo(), len(resp.GetResources())+len(resp.GetRemovedResources()), bad, err, u.rejected)
}

// deltaRemovalsLocked returns the removals of a delta response that apply.
// Like Envoy, skiff ignores the removal of a route configuration
// (RdsRouteConfigSubscription: "attempting to remove a resource ...
// Ignoring.") and of a ClusterLoadAssignment (EdsClusterImpl takes it as an
// update without resources): the last one received stays in use. A removed
// ClusterLoadAssignment not received yet ends the initial fetch, so its
// cluster warms without endpoints.
func (c *Client) deltaRemovalsLocked(ts *typeState, removed []string) []string {
	if len(removed) == 0 || (ts.url != resource.RouteType && ts.url != resource.EndpointType && ts.url != resource.SecretType) {
		return removed
	}
	c.log.Warn("xDS delta removal ignored; the last version received stays in use", "type", resource.ShortName(ts.url), "names", removed)
	if ts.url == resource.EndpointType {
		for _, name := range removed {
			if ts.names[name] && !ts.fetched(name) {
				c.endFetchLocked(ts, name)
			}
		}
	}
	return nil
}

// finishLocked records the outcome of a response and queues the ACK or NACK:
// err rejected it whole (bad is the resource it is about, if any); or
// (LDS, CDS) the resources in partial were rejected and the rest applied.
func (c *Client) finishLocked(s *stream, ts *typeState, version string, n int, bad string, err error, partial []*resourceError) {
	partly := err == nil && len(partial) > 0
	if partly {
		// In name order, so that the same response rejected again (a control
		// plane may order its resources differently each time) is seen as a
		// repeat below.
		slices.SortFunc(partial, func(a, b *resourceError) int { return strings.Compare(a.name, b.name) })
		msgs := make([]string, len(partial))
		for i, re := range partial {
			msgs[i] = re.Error()
		}
		err = errors.New(strings.Join(msgs, "; "))
	}
	if st := ts.stats; st != nil {
		st.attempt.Inc()
		if err != nil {
			st.rejected.Inc()
		} else {
			st.success.Inc()
			st.version.Set(versionHash(version))
		}
	}
	if ts.wildcard {
		// As Envoy's listener manager does, each update of the type replaces
		// the error state: what a later update no longer has is not NACKED.
		clear(ts.rejected)
	}
	if err == nil {
		// A NACK held back (see below) must not ride on this ACK.
		ts.nack, ts.nackRepeats = nil, 0
		if ts.nackTimer != nil {
			ts.nackTimer.Stop()
			ts.nackTimer = nil
		}
		c.log.Info("xDS update accepted (ACK)", "type", resource.ShortName(ts.url), "version", version, "resources", n, "total", len(ts.res))
		s.queueLocked(ts.url)
		return
	}
	if prev := ts.lastReject; prev != nil && prev.version == version && prev.err.Error() == err.Error() {
		ts.nackRepeats++
	} else {
		ts.nackRepeats = 0
	}
	ts.nack = err
	rej := rejection{version: version, err: err, at: time.Now()}
	ts.lastReject = &rej
	if bad != "" {
		ts.rejected[bad] = rej
	}
	for _, re := range partial {
		ts.rejected[re.name] = rejection{version: version, err: re, at: rej.at}
	}
	c.initialFetchRejectedLocked(ts)
	if ts.nackRepeats == 0 && partly {
		c.log.Warn("xDS update partly rejected (NACK); its other resources are applied, the rejected ones keep their last good version",
			"type", resource.ShortName(ts.url), "version", version, "error", err)
		s.queueLocked(ts.url)
		return
	}
	if ts.nackRepeats == 0 {
		c.log.Warn("xDS update rejected (NACK); the last good configuration keeps serving",
			"type", resource.ShortName(ts.url), "version", version, "error", err)
		s.queueLocked(ts.url)
		return
	}
	// A control plane that answers each NACK with the same response (as
	// go-control-plane's snapshot cache does until the snapshot changes)
	// would otherwise spin with us: the repeated NACK waits, longer each time.
	delay := nackPacing(ts.nackRepeats)
	c.log.Debug("xDS update rejected again; pacing the NACK", "type", resource.ShortName(ts.url), "version", version,
		"repeats", ts.nackRepeats, "delay", delay)
	if ts.nackTimer != nil {
		ts.nackTimer.Stop()
	}
	ts.nackTimer = time.AfterFunc(delay, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if ts.nack != nil && c.ctx.Err() == nil {
			s.queueLocked(ts.url)
		}
	})
}

// nackPacing is how long the n-th repeated NACK of one update waits: 100 ms,
// doubling, up to 1 s, so that a fixed update (which such a control plane
// sends in answer to the next NACK) waits at most a second.
func nackPacing(n int) time.Duration {
	return min(100*time.Millisecond<<min(n-1, 4), time.Second)
}

func (c *Client) newResourceLocked(ts *typeState, name, version string, a *anypb.Any, m proto.Message, now time.Time, ttl *time.Duration) *Resource {
	r := &Resource{Name: name, Version: version, Any: a, Msg: m, LastUpdated: now}
	c.armTTLLocked(ts, r, ttl)
	return r
}

// refreshLocked answers a heartbeat: the same resource, its TTL restarted.
func (c *Client) refreshLocked(ts *typeState, old *Resource, ttl *time.Duration) *Resource {
	r := *old
	r.ttl = nil
	c.armTTLLocked(ts, &r, ttl)
	return &r
}

// armTTLLocked starts the resource's TTL: if no update or heartbeat comes in
// time, the resource is removed, as if the server had deleted it.
func (c *Client) armTTLLocked(ts *typeState, r *Resource, ttl *time.Duration) {
	if ttl == nil || *ttl <= 0 {
		return
	}
	url := ts.url
	r.ttl = time.AfterFunc(*ttl, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		ts := c.types[url]
		if ts.res[r.Name] != r {
			return // replaced or refreshed since
		}
		c.log.Warn("xDS resource TTL expired; removing it", "type", resource.ShortName(url), "name", r.Name)
		if err := c.acceptLocked(ts, &update{removed: []string{r.Name}}, ts.version); err != nil {
			c.log.Error("removing an expired resource", "type", resource.ShortName(url), "name", r.Name, "error", err)
		}
	})
}
