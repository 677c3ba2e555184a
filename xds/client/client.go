// Package client is skiff's xDS client: it subscribes to listeners, clusters and
// what they reference from one or more control planes (ADS or per-type streams,
// state of the world or delta), validates every response before accepting it,
// ACKs or NACKs it, and drives the data plane with the accepted configuration.
//
// The protocol follows Envoy's "xDS REST and gRPC protocol" document. In short:
//
//   - LDS and CDS are wildcard subscriptions; EDS and RDS subscriptions follow
//     the names the accepted clusters and listeners reference.
//   - A response is checked before it is used (decoding, duplicate names, every
//     typed_config through the data plane's builders, and applying it). For LDS
//     and CDS, as in Envoy, a bad listener or cluster is rejected alone: the
//     others and the removals are applied, the bad one keeps its last good
//     version, and the response is NACKed (with the last fully accepted
//     version) naming each bad resource and field. For EDS, RDS and RTDS, or
//     an error not tied to one resource, the whole response is NACKed and the
//     last good configuration keeps serving. NACKs carry code INTERNAL.
//   - Warming, make before break: a new or changed cluster is used once its
//     ClusterLoadAssignment arrived (or its initial_fetch_timeout expired, or
//     an EDS update was rejected: it then has no endpoints); a listener once
//     its route configurations did (likewise: without them it answers 404).
//     Until then the previous version, if any, keeps serving. Listeners are
//     requested only after the first round of clusters is warm (CDS, EDS, then
//     LDS, RDS); a rejected first CDS or LDS response counts as that round.
//     Each EDS and RDS subscription has the initial_fetch_timeout of the
//     config source that references it.
//   - A cluster removed by CDS stays while an active listener still uses it.
//     Delta removals of route configurations and ClusterLoadAssignments are
//     ignored (the last one received stays in use), as Envoy does.
//   - Streams reconnect with exponential backoff and jitter, resending the
//     accepted versions (delta: initial_resource_versions).
package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	runtimev3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/runtime"
	"github.com/skiffproxy/skiff/dataplane/tlscontext"
	"github.com/skiffproxy/skiff/internal/backoff"
	"github.com/skiffproxy/skiff/internal/cfgerr"
	"github.com/skiffproxy/skiff/internal/stats"
	restartv1 "github.com/skiffproxy/skiff/proto/skiff/restart/v1"
	"github.com/skiffproxy/skiff/xds/resource"
)

// DefaultInitialFetchTimeout is Envoy's default ConfigSource.initial_fetch_timeout.
const DefaultInitialFetchTimeout = 15 * time.Second

// Dataplane is what the client drives. *dataplane.Server implements it.
type Dataplane interface {
	ValidateListener(*listenerv3.Listener) error
	ValidateCluster(*clusterv3.Cluster) error
	ValidateEndpoints(*endpointv3.ClusterLoadAssignment) error
	// ValidateRoute checks a route configuration whole, NACKing what the
	// router cannot serve, not just the proto rules.
	ValidateRoute(*routev3.RouteConfiguration) error
	Apply(*dataplane.Snapshot) error
}

// Options configure a Client. Sources come from the bootstrap's
// dynamic_resources; see FromBootstrap.
type Options struct {
	Node      *corev3.Node
	Logger    *slog.Logger
	Dataplane Dataplane
	// Static are the bootstrap's static listeners and clusters; every snapshot
	// the client applies includes them, and xDS may not replace them.
	Static dataplane.Snapshot
	// Runtime receives RTDS layers; nil if the bootstrap has no layered runtime.
	Runtime *runtime.Loader
	// Sources says where each type comes from.
	Sources Sources
	// Dial opens the gRPC connection of a config source.
	Dial Dialer
	// Backoff paces reconnects; the zero value means backoff.Default().
	Backoff backoff.Policy
	// OnInitialized is called once, when the first round of configuration
	// (clusters, their endpoints, listeners, their routes) is in place or timed out.
	OnInitialized func()
	// Stats receives control_plane.connected_state and the CDS/LDS update
	// stats (cluster_manager.cds.*, listener_manager.lds.*); nil: none.
	Stats *stats.Store
	// Initial is the accepted state a hot-restart parent handed over: the
	// client starts serving from it at once, then resyncs with the control
	// plane (sending its versions). New fails if any of it does not validate.
	Initial *restartv1.XdsState
}

// subStats are Envoy's subscription stats for one type.
type subStats struct {
	attempt, success, rejected, failure stats.Counter
	version                             stats.Gauge
}

func newSubStats(st *stats.Store, prefix string) *subStats {
	return &subStats{
		attempt:  st.Counter(prefix + "update_attempt"),
		success:  st.Counter(prefix + "update_success"),
		rejected: st.Counter(prefix + "update_rejected"),
		failure:  st.Counter(prefix + "update_failure"),
		version:  st.GaugeMode(prefix+"version", stats.NeverImport),
	}
}

// versionHash is what Envoy's <subscription>.version gauge holds: a hash of the
// version_info string.
func versionHash(v string) int64 {
	h := fnv.New64a()
	h.Write([]byte(v))
	return int64(h.Sum64() >> 1)
}

// Sources are the bootstrap's config sources.
type Sources struct {
	ADS      *corev3.ApiConfigSource // dynamic_resources.ads_config; nil if none
	Listener *corev3.ConfigSource    // lds_config; nil: no LDS
	Cluster  *corev3.ConfigSource    // cds_config; nil: no CDS
	Runtime  []runtime.RTDS          // layered_runtime's RTDS layers
	// StaticSecrets: static listeners or clusters name secrets by SDS, which
	// a client must fetch even without dynamic_resources.
	StaticSecrets bool
}

// Client is an xDS client. Create it with New and start it with Run.
type Client struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	types   map[string]*typeState
	sources map[string]*source // by source key
	phase   phase
	ctx     context.Context // Run's context, for streams started later; nil before Run
	wg      sync.WaitGroup

	connected      stats.Gauge // control_plane.connected_state
	connectedCount int
	haveStats      bool

	// What the data plane runs now, by name: the last applied versions (a
	// newer accepted one may be warming; see DynamicConfigDump).
	activeClusters  map[string]*Resource
	activeListeners map[string]*Resource
	applied         bool
}

type phase int

const (
	phaseClusters  phase = iota // waiting for the first clusters to warm
	phaseListeners              // listeners requested; waiting for them to warm
	phaseLive                   // initialized
)

// Resource is an accepted resource.
type Resource struct {
	Name        string
	Version     string // the resource's own version (delta), else the response's
	Any         *anypb.Any
	Msg         proto.Message
	LastUpdated time.Time
	ttl         *time.Timer
}

// typeState is the client's state for one resource type.
type typeState struct {
	url      string
	wildcard bool
	stream   *stream
	source   *corev3.ConfigSource

	names map[string]bool // subscribed names (not for wildcard types)
	res   map[string]*Resource

	version string // last accepted version_info (SotW) or system_version_info (delta)
	nonce   string // nonce of the last response on the current stream
	nack    error  // to send with the next request, then cleared
	// ackDue: a delta response awaits its ACK or NACK, the next request for
	// the type. Only that one carries the response's nonce: a delta request
	// that only changes the subscription must not (DeltaDiscoveryRequest's
	// response_nonce: "unlike in DiscoveryRequest"), or a server such as
	// istiod drops it as answering an expired nonce and the subscription is
	// lost.
	ackDue bool
	// The same update rejected again (a control plane that answers every
	// NACK with the same response): how many times in a row, and the timer
	// that paces the next NACK.
	nackRepeats int
	nackTimer   *time.Timer

	// For CSDS: the last rejected update per resource, and what was rejected
	// when the error could not be tied to one resource.
	rejected    map[string]rejection
	lastReject  *rejection
	stats       *subStats              // nil for types without Envoy subscription stats
	fetchTimers map[string]*time.Timer // names waiting for their first update
	timedOut    map[string]bool        // names whose initial fetch timed out
	// Names whose initial fetch ended without a resource other than by the
	// timeout: a rejected update of the type, or (delta EDS) a removal. As
	// in Envoy, what references them warms without them.
	absent    map[string]bool
	received  bool        // a response arrived, or was rejected (initial round)
	typeTimer *time.Timer // wildcard types: initial fetch timeout
	// initial_fetch_timeout: of the type's config source (wildcard types),
	// and by name, of the config source that references the name (EDS, RDS,
	// RTDS), as each Envoy subscription has its own.
	timeout  time.Duration
	timeouts map[string]time.Duration
}

// fetched reports whether the initial fetch of name is over: its resource
// arrived, or it timed out, or it ended without it (see absent).
func (ts *typeState) fetched(name string) bool {
	_, have := ts.res[name]
	return have || ts.timedOut[name] || ts.absent[name]
}

// timeoutFor is the initial_fetch_timeout of a by-name subscription.
func (ts *typeState) timeoutFor(name string) time.Duration {
	if d, ok := ts.timeouts[name]; ok {
		return d
	}
	return ts.timeout
}

// fetchTimeout is a config source's initial_fetch_timeout: 0 waits forever.
func fetchTimeout(src *corev3.ConfigSource) time.Duration {
	if t := src.GetInitialFetchTimeout(); t != nil {
		return t.AsDuration()
	}
	return DefaultInitialFetchTimeout
}

// shorterTimeout is the initial_fetch_timeout of a name several config
// sources reference: the shortest, 0 (none) being the longest.
func shorterTimeout(a, b time.Duration) time.Duration {
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}

type rejection struct {
	version string
	err     error
	at      time.Time
}

// New returns a Client. It does not connect until Run.
func New(opts Options) (*Client, error) {
	if opts.Backoff == (backoff.Policy{}) {
		opts.Backoff = backoff.Default()
	}
	c := &Client{
		opts:            opts,
		log:             opts.Logger,
		types:           map[string]*typeState{},
		sources:         map[string]*source{},
		activeClusters:  map[string]*Resource{},
		activeListeners: map[string]*Resource{},
	}
	for _, url := range resource.Types() {
		c.types[url] = &typeState{url: url, wildcard: resource.Wildcard(url), names: map[string]bool{}, res: map[string]*Resource{},
			rejected: map[string]rejection{}, fetchTimers: map[string]*time.Timer{}, timedOut: map[string]bool{},
			absent: map[string]bool{}, timeouts: map[string]time.Duration{}}
	}
	if st := opts.Stats; st != nil {
		c.haveStats = true
		c.connected = st.GaugeMode("control_plane.connected_state", stats.NeverImport)
		c.types[resource.ClusterType].stats = newSubStats(st, "cluster_manager.cds.")
		c.types[resource.ListenerType].stats = newSubStats(st, "listener_manager.lds.")
	}
	var err error
	if s := opts.Sources.Cluster; s != nil {
		if err = c.attach(resource.ClusterType, s, nil); err != nil {
			return nil, cfgerr.Field("dynamic_resources.cds_config", err)
		}
	}
	if s := opts.Sources.Listener; s != nil {
		if err = c.attach(resource.ListenerType, s, nil); err != nil {
			return nil, cfgerr.Field("dynamic_resources.lds_config", err)
		}
	}
	for i, r := range opts.Sources.Runtime {
		if err = c.attach(resource.RuntimeType, r.Source, nil); err != nil {
			return nil, cfgerr.Field(fmt.Sprintf("layered_runtime.layers[%d].rtds_layer.rtds_config", i), err)
		}
		rtds := c.types[resource.RuntimeType]
		rtds.names[r.Name] = true
		rtds.timeouts[r.Name] = fetchTimeout(r.Source)
	}
	if c.types[resource.ClusterType].stream == nil {
		c.phase = phaseListeners
	}
	if err := c.loadInitial(opts.Initial); err != nil {
		return nil, fmt.Errorf("the inherited xDS state: %w", err)
	}
	return c, nil
}

// loadInitial takes a parent's accepted state as if it had just been received
// and accepted: validated, with its versions, subscriptions following it.
func (c *Client) loadInitial(st *restartv1.XdsState) error {
	if st == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	byURL := map[string]*restartv1.TypeState{}
	for _, t := range st.GetTypes() {
		byURL[t.GetTypeUrl()] = t
	}
	// In initialisation order, following references as they appear: the EDS
	// and RDS subscriptions exist only once the clusters and listeners that
	// name them are loaded.
	for _, url := range resource.Types() {
		if err := c.followRefsLocked(); err != nil {
			return err
		}
		t, ts := byURL[url], c.types[url]
		if t == nil || ts.stream == nil {
			continue // not subscribed in this configuration
		}
		for _, r := range t.GetResources() {
			m, name, err := c.validateLocked(ts.url, r.GetResource())
			if err != nil {
				return err
			}
			ts.res[name] = &Resource{Name: name, Version: r.GetVersion(), Any: r.GetResource(), Msg: m, LastUpdated: now}
		}
		ts.version = t.GetVersion()
		ts.received = true
	}
	return c.followRefsLocked()
}

// State returns the accepted state, for a hot-restart successor.
func (c *Client) State() *restartv1.XdsState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &restartv1.XdsState{}
	for _, url := range resource.Types() {
		ts := c.types[url]
		if ts.stream == nil {
			continue
		}
		t := &restartv1.TypeState{TypeUrl: url, Version: ts.version}
		for _, name := range sortedKeys(ts.res) {
			r := ts.res[name]
			t.Resources = append(t.Resources, &restartv1.Resource{Name: name, Version: r.Version, Resource: r.Any})
		}
		st.Types = append(st.Types, t)
	}
	return st
}

// attach makes src the config source of type url. parent is the source of the
// resource that refers to url (for "self").
func (c *Client) attach(url string, src, parent *corev3.ConfigSource) error {
	ts := c.types[url]
	if ts.stream != nil {
		if !sameSource(ts.source, src, parent) {
			return fmt.Errorf("%s resources from more than one config source are not supported by skiff (the first was %v)", resource.ShortName(url), describeSource(ts.source))
		}
		return nil
	}
	if src.GetSelf() != nil {
		if parent == nil {
			return errors.New("self: no parent config source to use")
		}
		src = parent
	}
	st, err := c.streamFor(url, src)
	if err != nil {
		return err
	}
	ts.stream, ts.source = st, src
	ts.timeout = fetchTimeout(src)
	return nil
}

// Run connects and keeps the client's streams running until ctx is done.
func (c *Client) Run(ctx context.Context) {
	c.mu.Lock()
	c.ctx = ctx
	// The static clusters (and, without CDS, the static listeners) serve at once.
	if err := c.applyLocked(); err != nil {
		c.log.Error("applying the static configuration", "error", err)
	}
	if c.phase == phaseListeners {
		c.requestListenersLocked()
	}
	c.startTypeLocked(resource.RuntimeType)
	c.startTypeLocked(resource.ClusterType)
	// Static clusters and listeners, and the state a hot-restart parent
	// handed over, may already name endpoints and routes.
	c.startTypeLocked(resource.EndpointType)
	c.startTypeLocked(resource.RouteType)
	c.startTypeLocked(resource.SecretType)
	c.maybeAdvanceLocked()
	c.mu.Unlock()
	<-ctx.Done()
	c.mu.Lock()
	for _, ts := range c.types {
		for _, t := range ts.fetchTimers {
			t.Stop()
		}
		if ts.typeTimer != nil {
			ts.typeTimer.Stop()
		}
		if ts.nackTimer != nil {
			ts.nackTimer.Stop()
		}
		for _, r := range ts.res {
			if r.ttl != nil {
				r.ttl.Stop()
			}
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	for _, s := range c.sources {
		s.close()
	}
}

// startTypeLocked subscribes to a type if it has a source and something to ask
// for, and arms its initial fetch timeout.
func (c *Client) startTypeLocked(url string) {
	ts := c.types[url]
	if ts.stream == nil || (!ts.wildcard && len(ts.names) == 0) {
		return
	}
	if ts.wildcard && ts.typeTimer == nil && ts.timeout > 0 {
		ts.typeTimer = time.AfterFunc(ts.timeout, func() { c.onTypeTimeout(url) })
	}
	for name := range ts.names {
		c.armFetchTimerLocked(ts, name)
	}
	c.startStreamLocked(ts.stream)
	ts.stream.queueLocked(url)
}

func (c *Client) requestListenersLocked() {
	c.phase = phaseListeners
	c.startTypeLocked(resource.ListenerType)
}

func (c *Client) onTypeTimeout(url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.types[url]
	if ts.received {
		return
	}
	c.log.Warn("xDS initial fetch timed out; going on without it", "type", resource.ShortName(url), "timeout", ts.timeout)
	ts.received = true
	c.maybeAdvanceLocked()
}

func (c *Client) armFetchTimerLocked(ts *typeState, name string) {
	timeout := ts.timeoutFor(name)
	if ts.fetched(name) || timeout <= 0 || ts.fetchTimers[name] != nil {
		return
	}
	url := ts.url
	ts.fetchTimers[name] = time.AfterFunc(timeout, func() { c.onFetchTimeout(url, name) })
}

func (c *Client) onFetchTimeout(url, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.types[url]
	if _, ok := ts.fetchTimers[name]; !ok {
		return
	}
	delete(ts.fetchTimers, name)
	if _, ok := ts.res[name]; ok || !ts.names[name] {
		return
	}
	c.log.Warn("xDS initial fetch timed out; using the resource as empty", "type", resource.ShortName(url), "name", name, "timeout", ts.timeoutFor(name))
	ts.timedOut[name] = true
	if err := c.applyLocked(); err != nil {
		c.log.Error("applying configuration after a fetch timeout", "error", err)
	}
	c.maybeAdvanceLocked()
}

// initialFetchRejectedLocked ends the initial fetch of every subscription of
// ts still waiting for one, after a rejected update of the type: like Envoy's
// onConfigUpdateFailed (CDS, LDS, EDS clusters, RDS subscriptions), a NACK
// lets initialization and warming go on ("even if we have a bad config"). A
// cluster then warms without endpoints, a listener without its route
// configuration (answering 404), and the first clusters and listeners are
// done without what was rejected.
func (c *Client) initialFetchRejectedLocked(ts *typeState) {
	if ts.wildcard {
		if ts.received {
			return
		}
		ts.received = true
		if ts.typeTimer != nil {
			ts.typeTimer.Stop()
		}
		c.maybeAdvanceLocked()
		return
	}
	var ended []string
	for name := range ts.names {
		if !ts.fetched(name) {
			ended = append(ended, name)
		}
	}
	if len(ended) == 0 {
		return
	}
	for _, name := range ended {
		c.endFetchLocked(ts, name)
	}
	c.log.Warn("xDS initial fetch ended by a rejected update; going on without the resources", "type", resource.ShortName(ts.url), "names", ended)
	if err := c.applyLocked(); err != nil {
		c.log.Error("applying configuration after a rejected update", "error", err)
	}
	c.maybeAdvanceLocked()
}

// endFetchLocked marks name's initial fetch over without its resource.
func (c *Client) endFetchLocked(ts *typeState, name string) {
	ts.absent[name] = true
	if t := ts.fetchTimers[name]; t != nil {
		t.Stop()
		delete(ts.fetchTimers, name)
	}
}

// maybeAdvanceLocked moves through the initialization phases.
func (c *Client) maybeAdvanceLocked() {
	if c.phase == phaseClusters {
		cds := c.types[resource.ClusterType]
		if !cds.received || !c.allClustersWarmLocked() {
			return
		}
		c.log.Info("xDS clusters initialized", "clusters", len(cds.res))
		c.requestListenersLocked()
		if err := c.applyLocked(); err != nil {
			c.log.Error("applying configuration", "error", err)
		}
	}
	if c.phase == phaseListeners {
		lds := c.types[resource.ListenerType]
		if lds.stream != nil && (!lds.received || !c.allListenersWarmLocked()) {
			return
		}
		c.phase = phaseLive
		c.log.Info("xDS initialized", "listeners", len(lds.res), "clusters", len(c.types[resource.ClusterType].res))
		if !c.applied {
			if err := c.applyLocked(); err != nil {
				c.log.Error("applying configuration", "error", err)
			}
		}
		if f := c.opts.OnInitialized; f != nil {
			go f()
		}
	}
}

func (c *Client) allClustersWarmLocked() bool {
	for _, r := range c.types[resource.ClusterType].res {
		if !c.clusterWarmLocked(r.Msg.(*clusterv3.Cluster)) {
			return false
		}
	}
	return true
}

func (c *Client) allListenersWarmLocked() bool {
	for _, r := range c.types[resource.ListenerType].res {
		if !c.listenerWarmLocked(r.Msg.(*listenerv3.Listener)) {
			return false
		}
	}
	return true
}

// clusterWarmLocked reports whether a cluster has what it waits for: its
// endpoints (EDS) and its SDS secrets.
func (c *Client) clusterWarmLocked(pb *clusterv3.Cluster) bool {
	if ref, ok := resource.EndpointsRef(pb); ok && !c.types[resource.EndpointType].fetched(ref.Name) {
		return false
	}
	return c.secretsFetchedLocked(pb)
}

// listenerWarmLocked reports whether a listener has what it waits for: its
// route configurations (RDS) and its SDS secrets.
func (c *Client) listenerWarmLocked(pb *listenerv3.Listener) bool {
	rds := c.types[resource.RouteType]
	routes, _ := resource.ListenerRefs(pb)
	for _, r := range routes {
		if !rds.fetched(r.Name) {
			return false
		}
	}
	return c.secretsFetchedLocked(pb)
}

// secretsFetchedLocked reports whether the SDS secrets of a listener or a
// cluster came (or their initial fetch timed out), as Envoy's init manager
// makes both wait for them.
func (c *Client) secretsFetchedLocked(m proto.Message) bool {
	sds := c.types[resource.SecretType]
	for _, r := range resource.SecretRefs(m) {
		if !sds.fetched(r.Name) {
			return false
		}
	}
	return true
}

// followRefsLocked makes the EDS, RDS and SDS subscriptions follow what the
// accepted clusters and listeners (and the still active ones, and the
// static ones for SDS) reference. It returns an error if a reference names a
// config source skiff cannot use.
func (c *Client) followRefsLocked() error {
	sdsNames, sdsTimeouts := map[string]bool{}, map[string]time.Duration{}
	var sdsErr error
	addSecrets := func(url, name string, m proto.Message) {
		for _, ref := range resource.SecretRefs(m) {
			if err := c.attach(resource.SecretType, ref.Source, c.types[url].source); err != nil && sdsErr == nil {
				sdsErr = &resourceError{url: url, name: name, err: fmt.Errorf("transport_socket: secret %q: sds_config: %w", ref.Name, err)}
			}
			addRef(sdsNames, sdsTimeouts, ref.Name, ref.Source)
		}
	}
	edsNames, edsTimeouts := map[string]bool{}, map[string]time.Duration{}
	var edsErr error
	addCluster := func(pb *clusterv3.Cluster) {
		addSecrets(resource.ClusterType, pb.GetName(), pb)
		ref, ok := resource.EndpointsRef(pb)
		if !ok {
			return
		}
		if err := c.attach(resource.EndpointType, ref.Source, c.types[resource.ClusterType].source); err != nil && edsErr == nil {
			edsErr = &resourceError{url: resource.ClusterType, name: pb.GetName(), err: fmt.Errorf("eds_cluster_config.eds_config: %w", err)}
		}
		addRef(edsNames, edsTimeouts, ref.Name, ref.Source)
	}
	for _, r := range c.types[resource.ClusterType].res {
		addCluster(r.Msg.(*clusterv3.Cluster))
	}
	for _, r := range c.activeClusters {
		addCluster(r.Msg.(*clusterv3.Cluster))
	}
	for _, pb := range c.opts.Static.Clusters {
		addSecrets(resource.ClusterType, pb.GetName(), pb)
	}
	rdsNames, rdsTimeouts := map[string]bool{}, map[string]time.Duration{}
	var rdsErr error
	addListener := func(pb *listenerv3.Listener) {
		addSecrets(resource.ListenerType, pb.GetName(), pb)
		routes, _ := resource.ListenerRefs(pb)
		for _, r := range routes {
			if err := c.attach(resource.RouteType, r.Source, c.types[resource.ListenerType].source); err != nil && rdsErr == nil {
				rdsErr = &resourceError{url: resource.ListenerType, name: pb.GetName(), err: fmt.Errorf("rds.config_source: %w", err)}
			}
			addRef(rdsNames, rdsTimeouts, r.Name, r.Source)
		}
	}
	for _, r := range c.types[resource.ListenerType].res {
		addListener(r.Msg.(*listenerv3.Listener))
	}
	for _, r := range c.activeListeners {
		addListener(r.Msg.(*listenerv3.Listener))
	}
	for _, pb := range c.opts.Static.Listeners {
		addSecrets(resource.ListenerType, pb.GetName(), pb)
	}
	c.setNamesLocked(c.types[resource.EndpointType], edsNames, edsTimeouts)
	c.setNamesLocked(c.types[resource.RouteType], rdsNames, rdsTimeouts)
	c.setNamesLocked(c.types[resource.SecretType], sdsNames, sdsTimeouts)
	return cmp.Or(edsErr, rdsErr, sdsErr)
}

// addRef adds a reference to name through config source src: the name is
// subscribed, with src's initial_fetch_timeout (the shortest, if several
// sources reference it).
func addRef(names map[string]bool, timeouts map[string]time.Duration, name string, src *corev3.ConfigSource) {
	d := fetchTimeout(src)
	if names[name] {
		d = shorterTimeout(timeouts[name], d)
	}
	names[name], timeouts[name] = true, d
}

// setNamesLocked changes a by-name subscription, dropping the resources of names
// no longer wanted and asking for new ones, each with its initial_fetch_timeout.
func (c *Client) setNamesLocked(ts *typeState, names map[string]bool, timeouts map[string]time.Duration) {
	if ts.stream == nil {
		return
	}
	ts.timeouts = timeouts
	if maps.Equal(ts.names, names) {
		return
	}
	for name := range ts.names {
		if !names[name] {
			delete(ts.res, name)
			delete(ts.timedOut, name)
			delete(ts.absent, name)
			delete(ts.rejected, name)
			if t := ts.fetchTimers[name]; t != nil {
				t.Stop()
				delete(ts.fetchTimers, name)
			}
		}
	}
	ts.names = names
	if c.ctx != nil {
		for name := range names {
			c.armFetchTimerLocked(ts, name)
		}
		c.startStreamLocked(ts.stream)
		ts.stream.queueLocked(ts.url)
	}
}

// update is a decoded, validated response for one type: the resources it sets
// and the names it removes.
type update struct {
	set     map[string]*Resource
	removed []string
	replace bool // state of the world for a wildcard type: absent names are removed
	// LDS and CDS: the resources of the response rejected one by one, which
	// are neither applied nor removed (their previous version, if any,
	// stays), and their names.
	rejected []*resourceError
	keep     []string
}

// resourceError is an error about one resource.
type resourceError struct {
	url, name string
	err       error
}

func (e *resourceError) Error() string {
	return fmt.Sprintf("%s %q: %v", resource.Kind(e.url), e.name, e.err)
}

func (e *resourceError) Unwrap() error { return e.err }

// reject takes a resource out of the update, as rejected with err.
func (u *update) reject(url, name string, err error) {
	if r := u.set[name]; r != nil && r.ttl != nil {
		r.ttl.Stop()
	}
	delete(u.set, name)
	u.keep = append(u.keep, name)
	var re *resourceError
	if !errors.As(err, &re) || re.name != name {
		re = &resourceError{url: url, name: name, err: err}
	}
	u.rejected = append(u.rejected, re)
}

// merge returns the state the update makes of prev.
func (u *update) merge(prev map[string]*Resource) map[string]*Resource {
	next := make(map[string]*Resource, len(prev)+len(u.set))
	if !u.replace {
		maps.Copy(next, prev)
	}
	for _, name := range u.removed {
		delete(next, name)
	}
	for _, name := range u.keep {
		if r, ok := prev[name]; ok {
			next[name] = r
		}
	}
	maps.Copy(next, u.set)
	return next
}

// acceptLocked applies a validated update: it becomes the type's state, the
// subscriptions follow its references, and the data plane gets the new
// configuration. If applying fails, the previous state is restored and the
// error returned (the response is then NACKed). For LDS and CDS, as in Envoy,
// a resource that cannot be applied is rejected alone (into u.rejected) and
// the rest applied; the type's version then stays the last fully accepted one.
func (c *Client) acceptLocked(ts *typeState, u *update, version string) error {
	prev := ts.res
	var next map[string]*Resource
	for {
		next = u.merge(prev)
		ts.res = next
		err := c.followRefsLocked()
		if err == nil {
			err = c.applyLocked()
		}
		if err == nil {
			break
		}
		ts.res = prev
		if ferr := c.followRefsLocked(); ferr != nil {
			c.log.Error("restoring subscriptions after a rejected update", "error", ferr)
		}
		var re *resourceError
		if ts.wildcard && errors.As(err, &re) && re.url == ts.url && u.set[re.name] != nil {
			u.reject(ts.url, re.name, err)
			continue
		}
		for _, r := range u.set {
			if r.ttl != nil {
				r.ttl.Stop()
			}
		}
		return err
	}
	for name, old := range prev {
		if old.ttl != nil && next[name] != old {
			old.ttl.Stop() // replaced, refreshed or removed
		}
	}
	for name := range u.set {
		delete(ts.rejected, name)
		if t := ts.fetchTimers[name]; t != nil {
			t.Stop()
			delete(ts.fetchTimers, name)
		}
		delete(ts.timedOut, name)
		delete(ts.absent, name)
	}
	if len(u.rejected) == 0 {
		ts.lastReject = nil
		ts.version = version
	}
	ts.received = true
	if ts.url == resource.RuntimeType && c.opts.Runtime != nil {
		for name, r := range next {
			c.opts.Runtime.SetRTDS(name, r.Msg.(*runtimev3.Runtime).GetLayer())
		}
		for name := range prev {
			if _, ok := next[name]; !ok {
				c.opts.Runtime.SetRTDS(name, nil)
			}
		}
	}
	c.maybeAdvanceLocked()
	return nil
}

// applyLocked builds the data-plane snapshot from the accepted state (warming
// rules applied) and applies it.
func (c *Client) applyLocked() error {
	snap, clusters, listeners := c.snapshotLocked()
	if err := c.opts.Dataplane.Apply(snap); err != nil {
		return c.describeApplyError(err)
	}
	c.activeClusters, c.activeListeners = clusters, listeners
	c.applied = true
	// What only the previous active versions referenced can go now.
	if err := c.followRefsLocked(); err != nil {
		c.log.Warn("following references after an update", "error", err)
	}
	return nil
}

// describeApplyError names the resource a data-plane error is about.
func (c *Client) describeApplyError(err error) error {
	var re *dataplane.ResourceError
	if errors.As(err, &re) {
		url, ok := map[string]string{"listener": resource.ListenerType, "cluster": resource.ClusterType,
			"endpoints": resource.EndpointType, "route": resource.RouteType, "secret": resource.SecretType}[re.Kind]
		if ok {
			return &resourceError{url: url, name: re.Name, err: re.Err}
		}
	}
	return err
}

func (c *Client) snapshotLocked() (*dataplane.Snapshot, map[string]*Resource, map[string]*Resource) {
	snap := &dataplane.Snapshot{
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		Routes:    map[string]*routev3.RouteConfiguration{},
		Secrets:   map[string]*tlsv3.Secret{},
	}
	for name, r := range c.types[resource.SecretType].res {
		snap.Secrets[name] = r.Msg.(*tlsv3.Secret)
	}
	cds, lds := c.types[resource.ClusterType], c.types[resource.ListenerType]
	eds, rds := c.types[resource.EndpointType], c.types[resource.RouteType]

	clusters := map[string]*Resource{}
	for _, name := range sortedKeys(cds.res) {
		r := cds.res[name]
		switch prev := c.activeClusters[name]; {
		case c.clusterWarmLocked(r.Msg.(*clusterv3.Cluster)):
			clusters[name] = r
		case prev != nil:
			clusters[name] = prev // make before break: the old version serves until the new one is warm
		}
	}
	listeners := map[string]*Resource{}
	if c.phase >= phaseListeners {
		snap.Listeners = append(snap.Listeners, c.opts.Static.Listeners...)
		for _, name := range sortedKeys(lds.res) {
			r := lds.res[name]
			switch prev := c.activeListeners[name]; {
			case c.listenerWarmLocked(r.Msg.(*listenerv3.Listener)):
				listeners[name] = r
			case prev != nil:
				listeners[name] = prev
			}
		}
	}
	// A cluster CDS removed stays while an active listener still uses it.
	used := map[string]bool{}
	for _, r := range listeners {
		routes, cs := resource.ListenerRefs(r.Msg.(*listenerv3.Listener))
		for _, cl := range cs {
			used[cl] = true
		}
		for _, r := range routes {
			if rc, ok := rds.res[r.Name]; ok {
				for _, cl := range resource.RouteClusters(rc.Msg.(*routev3.RouteConfiguration)) {
					used[cl] = true
				}
			}
		}
	}
	for name, prev := range c.activeClusters {
		if _, ok := clusters[name]; !ok && used[name] {
			if _, stillThere := cds.res[name]; !stillThere {
				clusters[name] = prev
			}
		}
	}

	snap.Clusters = append(snap.Clusters, c.opts.Static.Clusters...)
	for _, name := range sortedKeys(clusters) {
		pb := clusters[name].Msg.(*clusterv3.Cluster)
		snap.Clusters = append(snap.Clusters, pb)
		if ref, ok := resource.EndpointsRef(pb); ok {
			if r, ok := eds.res[ref.Name]; ok {
				snap.Endpoints[ref.Name] = r.Msg.(*endpointv3.ClusterLoadAssignment)
			}
		}
	}
	for _, name := range sortedKeys(listeners) {
		pb := listeners[name].Msg.(*listenerv3.Listener)
		snap.Listeners = append(snap.Listeners, pb)
		routes, _ := resource.ListenerRefs(pb)
		for _, r := range routes {
			if rc, ok := rds.res[r.Name]; ok {
				snap.Routes[r.Name] = rc.Msg.(*routev3.RouteConfiguration)
			}
		}
	}
	return snap, clusters, listeners
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// validateLocked decodes and checks one resource of a response. The error
// names the resource and, through cfgerr, the field.
func (c *Client) validateLocked(url string, a *anypb.Any) (proto.Message, string, error) {
	m, name, err := decode(url, a)
	if err != nil {
		return nil, "", err
	}
	if err := c.checkLocked(url, m, name); err != nil {
		return nil, name, err
	}
	return m, name, nil
}

// decode decodes one resource of a response and gives its name.
func decode(url string, a *anypb.Any) (proto.Message, string, error) {
	m, err := resource.Decode(url, a)
	if err != nil {
		return nil, "", err
	}
	name := resource.Name(m)
	if name == "" {
		return nil, "", fmt.Errorf("%s without a name", resource.Kind(url))
	}
	return m, name, nil
}

// checkLocked checks m, a decoded resource called name, as the data plane
// would take it.
func (c *Client) checkLocked(url string, m proto.Message, name string) error {
	var err error
	switch r := m.(type) {
	case *listenerv3.Listener:
		for _, s := range c.opts.Static.Listeners {
			if s.GetName() == name {
				return &resourceError{url: url, name: name, err: errors.New("a static listener of that name exists and cannot be replaced through LDS")}
			}
		}
		err = c.opts.Dataplane.ValidateListener(r)
	case *clusterv3.Cluster:
		for _, s := range c.opts.Static.Clusters {
			if s.GetName() == name {
				return &resourceError{url: url, name: name, err: errors.New("a static cluster of that name exists and cannot be replaced through CDS")}
			}
		}
		err = c.opts.Dataplane.ValidateCluster(r)
	case *endpointv3.ClusterLoadAssignment:
		err = c.opts.Dataplane.ValidateEndpoints(r)
	case *routev3.RouteConfiguration:
		err = c.opts.Dataplane.ValidateRoute(r)
	case *tlsv3.Secret:
		err = tlscontext.CheckSecret(r)
	default:
		err = cfgerr.Validate(m)
	}
	if err != nil {
		return &resourceError{url: url, name: name, err: err}
	}
	return nil
}
