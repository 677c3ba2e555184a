// Package client is skiff's xDS client: it subscribes to listeners, clusters and
// what they reference from one or more control planes (ADS or per-type streams,
// state of the world or delta), validates every response before accepting it,
// ACKs or NACKs it, and drives the data plane with the accepted configuration.
//
// The protocol follows Envoy's "xDS REST and gRPC protocol" document. In short:
//
//   - LDS and CDS are wildcard subscriptions; EDS and RDS subscriptions follow
//     the names the accepted clusters and listeners reference.
//   - A response is checked whole (decoding, duplicate names, every typed_config
//     through the data plane's builders, and applying it). If any of it is bad
//     the whole response is NACKed with an error_detail naming the resource and
//     field, and the last good configuration keeps serving.
//   - Warming, make before break: a new or changed cluster is used once its
//     ClusterLoadAssignment arrived (or its initial_fetch_timeout expired); a
//     listener once its route configurations did. Until then the previous
//     version, if any, keeps serving. Listeners are requested only after the
//     first round of clusters is warm (CDS, EDS, then LDS, RDS).
//   - A cluster removed by CDS stays while an active listener still uses it.
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
	runtimev3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/skiffproxy/skiff/dataplane"
	"github.com/skiffproxy/skiff/dataplane/runtime"
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
	// SetNodeOnFirstMessageOnly sends the node only in the first request of each
	// stream (Envoy's option of the same name); by default every request has it.
	SetNodeOnFirstMessageOnly bool
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

	// What the data plane runs now, by name: the last applied versions.
	activeClusters  map[string]*clusterv3.Cluster
	activeListeners map[string]*listenerv3.Listener
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
	received    bool                   // a response arrived (initial round)
	typeTimer   *time.Timer            // wildcard types: initial fetch timeout
	timeout     time.Duration          // initial_fetch_timeout
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
		activeClusters:  map[string]*clusterv3.Cluster{},
		activeListeners: map[string]*listenerv3.Listener{},
	}
	for _, url := range resource.Types() {
		c.types[url] = &typeState{url: url, wildcard: resource.Wildcard(url), names: map[string]bool{}, res: map[string]*Resource{},
			rejected: map[string]rejection{}, fetchTimers: map[string]*time.Timer{}, timedOut: map[string]bool{}}
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
		c.types[resource.RuntimeType].names[r.Name] = true
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
	ts.timeout = DefaultInitialFetchTimeout
	if t := src.GetInitialFetchTimeout(); t != nil {
		ts.timeout = t.AsDuration()
	}
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
	if _, ok := ts.res[name]; ok || ts.timeout <= 0 || ts.fetchTimers[name] != nil || ts.timedOut[name] {
		return
	}
	url := ts.url
	ts.fetchTimers[name] = time.AfterFunc(ts.timeout, func() { c.onFetchTimeout(url, name) })
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
	c.log.Warn("xDS initial fetch timed out; using the resource as empty", "type", resource.ShortName(url), "name", name, "timeout", ts.timeout)
	ts.timedOut[name] = true
	if err := c.applyLocked(); err != nil {
		c.log.Error("applying configuration after a fetch timeout", "error", err)
	}
	c.maybeAdvanceLocked()
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

func (c *Client) clusterWarmLocked(pb *clusterv3.Cluster) bool {
	ref, ok := resource.EndpointsRef(pb)
	if !ok {
		return true
	}
	eds := c.types[resource.EndpointType]
	_, have := eds.res[ref.Name]
	return have || eds.timedOut[ref.Name]
}

func (c *Client) listenerWarmLocked(pb *listenerv3.Listener) bool {
	rds := c.types[resource.RouteType]
	routes, _ := resource.ListenerRefs(pb)
	for _, r := range routes {
		if _, have := rds.res[r.Name]; !have && !rds.timedOut[r.Name] {
			return false
		}
	}
	return true
}

// followRefsLocked makes the EDS and RDS subscriptions follow what the accepted
// clusters and listeners (and the still active ones) reference. It returns an
// error if a reference names a config source skiff cannot use.
func (c *Client) followRefsLocked() error {
	edsNames := map[string]bool{}
	var edsErr error
	addCluster := func(pb *clusterv3.Cluster) {
		ref, ok := resource.EndpointsRef(pb)
		if !ok {
			return
		}
		if err := c.attach(resource.EndpointType, ref.Source, c.types[resource.ClusterType].source); err != nil && edsErr == nil {
			edsErr = fmt.Errorf("%s %q: eds_cluster_config.eds_config: %w", resource.Kind(resource.ClusterType), pb.GetName(), err)
		}
		edsNames[ref.Name] = true
	}
	for _, r := range c.types[resource.ClusterType].res {
		addCluster(r.Msg.(*clusterv3.Cluster))
	}
	for _, pb := range c.activeClusters {
		addCluster(pb)
	}
	rdsNames := map[string]bool{}
	var rdsErr error
	addListener := func(pb *listenerv3.Listener) {
		routes, _ := resource.ListenerRefs(pb)
		for _, r := range routes {
			if err := c.attach(resource.RouteType, r.Source, c.types[resource.ListenerType].source); err != nil && rdsErr == nil {
				rdsErr = fmt.Errorf("%s %q: rds.config_source: %w", resource.Kind(resource.ListenerType), pb.GetName(), err)
			}
			rdsNames[r.Name] = true
		}
	}
	for _, r := range c.types[resource.ListenerType].res {
		addListener(r.Msg.(*listenerv3.Listener))
	}
	for _, pb := range c.activeListeners {
		addListener(pb)
	}
	c.setNamesLocked(c.types[resource.EndpointType], edsNames)
	c.setNamesLocked(c.types[resource.RouteType], rdsNames)
	return cmp.Or(edsErr, rdsErr)
}

// setNamesLocked changes a by-name subscription, dropping the resources of names
// no longer wanted and asking for new ones.
func (c *Client) setNamesLocked(ts *typeState, names map[string]bool) {
	if maps.Equal(ts.names, names) || ts.stream == nil {
		return
	}
	for name := range ts.names {
		if !names[name] {
			delete(ts.res, name)
			delete(ts.timedOut, name)
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
}

// accept applies a validated update: it becomes the type's state, the
// subscriptions follow its references, and the data plane gets the new
// configuration. If applying fails, the previous state is restored and the
// error returned (the response is then NACKed).
func (c *Client) acceptLocked(ts *typeState, u update, version string) error {
	prev := ts.res
	next := make(map[string]*Resource, len(prev)+len(u.set))
	if !u.replace {
		maps.Copy(next, prev)
	}
	for _, name := range u.removed {
		delete(next, name)
	}
	maps.Copy(next, u.set)
	ts.res = next
	err := c.followRefsLocked()
	if err == nil {
		err = c.applyLocked()
	}
	if err != nil {
		ts.res = prev
		if ferr := c.followRefsLocked(); ferr != nil {
			c.log.Error("restoring subscriptions after a rejected update", "error", ferr)
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
	}
	ts.lastReject = nil
	ts.version = version
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
		kind := map[string]string{"listener": "Listener", "cluster": "Cluster", "endpoints": "ClusterLoadAssignment", "route": "RouteConfiguration"}[re.Kind]
		return fmt.Errorf("%s %q: %w", kind, re.Name, re.Err)
	}
	return err
}

func (c *Client) snapshotLocked() (*dataplane.Snapshot, map[string]*clusterv3.Cluster, map[string]*listenerv3.Listener) {
	snap := &dataplane.Snapshot{
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		Routes:    map[string]*routev3.RouteConfiguration{},
	}
	cds, lds := c.types[resource.ClusterType], c.types[resource.ListenerType]
	eds, rds := c.types[resource.EndpointType], c.types[resource.RouteType]

	clusters := map[string]*clusterv3.Cluster{}
	for _, name := range sortedKeys(cds.res) {
		pb := cds.res[name].Msg.(*clusterv3.Cluster)
		switch prev := c.activeClusters[name]; {
		case c.clusterWarmLocked(pb):
			clusters[name] = pb
		case prev != nil:
			clusters[name] = prev // make before break: the old version serves until the new one is warm
		}
	}
	listeners := map[string]*listenerv3.Listener{}
	if c.phase >= phaseListeners {
		snap.Listeners = append(snap.Listeners, c.opts.Static.Listeners...)
		for _, name := range sortedKeys(lds.res) {
			pb := lds.res[name].Msg.(*listenerv3.Listener)
			switch prev := c.activeListeners[name]; {
			case c.listenerWarmLocked(pb):
				listeners[name] = pb
			case prev != nil:
				listeners[name] = prev
			}
		}
	}
	// A cluster CDS removed stays while an active listener still uses it.
	used := map[string]bool{}
	for _, pb := range listeners {
		routes, cs := resource.ListenerRefs(pb)
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
		pb := clusters[name]
		snap.Clusters = append(snap.Clusters, pb)
		if ref, ok := resource.EndpointsRef(pb); ok {
			if r, ok := eds.res[ref.Name]; ok {
				snap.Endpoints[ref.Name] = r.Msg.(*endpointv3.ClusterLoadAssignment)
			}
		}
	}
	for _, name := range sortedKeys(listeners) {
		pb := listeners[name]
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
	m, err := resource.Decode(url, a)
	if err != nil {
		return nil, "", err
	}
	name := resource.Name(m)
	kind := resource.Kind(url)
	if name == "" {
		return nil, "", fmt.Errorf("%s without a name", kind)
	}
	switch r := m.(type) {
	case *listenerv3.Listener:
		for _, s := range c.opts.Static.Listeners {
			if s.GetName() == name {
				return nil, name, fmt.Errorf("%s %q: a static listener of that name exists and cannot be replaced through LDS", kind, name)
			}
		}
		err = c.opts.Dataplane.ValidateListener(r)
	case *clusterv3.Cluster:
		for _, s := range c.opts.Static.Clusters {
			if s.GetName() == name {
				return nil, name, fmt.Errorf("%s %q: a static cluster of that name exists and cannot be replaced through CDS", kind, name)
			}
		}
		err = c.opts.Dataplane.ValidateCluster(r)
	case *endpointv3.ClusterLoadAssignment:
		err = c.opts.Dataplane.ValidateEndpoints(r)
	case *routev3.RouteConfiguration:
		err = c.opts.Dataplane.ValidateRoute(r)
	default:
		err = cfgerr.Validate(m)
	}
	if err != nil {
		return nil, name, fmt.Errorf("%s %q: %w", kind, name, err)
	}
	return m, name, nil
}
