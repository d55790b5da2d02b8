package xds

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"

	"github.com/shiftplane/shiftplane/xds/model"
)

// TypeStatus is one node's view of one resource type.
type TypeStatus struct {
	TypeURL   string
	Sent      string // last version sent
	Acked     string // last version the node accepted
	Nacked    string // last version the node rejected, "" if none since
	NackError string
	NackTime  time.Time
	// Missing are resources the node asked for by name that the version it
	// ACKed does not serve (a proxyless client dialling a target no plan
	// names gets an empty LDS answer and ACKs it). Nil for wildcard
	// subscriptions (Envoy's CDS and LDS) and delta streams.
	Missing []string `json:"missing,omitempty"`
}

// NodeStatus is what the fleet knows of one connected xDS stream's node.
type NodeStatus struct {
	ID             string
	Cluster        string
	Protocol       string // "sotw" or "delta"
	StreamID       int64
	ConnectedSince time.Time
	Types          []TypeStatus // sorted by type URL
	// Converged is true when the node has ACKed the latest version of every
	// type it subscribes to.
	Converged bool
	// Ready is true once the stream has ACKed something. A stream that is
	// not ready after the fleet's grace period (SetReadyGrace) does not
	// count towards convergence: a client that never ACKs cannot stall a
	// rollout.
	Ready bool `json:"ready"`
	// Identity is the stream's client certificate identity, "" without mTLS.
	Identity string `json:"identity,omitempty"`
	// UserAgent is the node's user_agent_name and version ("envoy 1.40.0",
	// "gRPC Go 1.85.0"); Kind is what ClientKind makes of it.
	UserAgent string `json:"userAgent,omitempty"`
	Kind      string `json:"kind,omitempty"`
}

// The client kinds of NodeStatus.Kind.
const (
	KindEnvoy     = "envoy"
	KindProxyless = "proxyless-grpc"
	KindUnknown   = "unknown"
)

// ClientKind names the kind of client from its node's user_agent_name:
// Envoy sends "envoy", gRPC libraries "gRPC Go", "gRPC Java", ...
func ClientKind(userAgentName string) string {
	switch {
	case userAgentName == "envoy":
		return KindEnvoy
	case strings.HasPrefix(userAgentName, "gRPC"):
		return KindProxyless
	}
	return KindUnknown
}

// userAgent is the node's user agent name and version, "" if it sent none.
func userAgent(n *corev3.Node) string {
	name := n.GetUserAgentName()
	v := n.GetUserAgentVersion()
	if bv := n.GetUserAgentBuildVersion().GetVersion(); v == "" && bv != nil {
		v = fmt.Sprintf("%d.%d.%d", bv.GetMajorNumber(), bv.GetMinorNumber(), bv.GetPatch())
	}
	return strings.TrimSpace(name + " " + v)
}

// Fleet tracks every xDS stream: who is connected, what each node ACKed and
// NACKed per type, and when a published version has reached every node. It
// implements go-control-plane's server callbacks. Safe for concurrent use.
type Fleet struct {
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	statsNodes func() []string
	grace      time.Duration
	onChange   func()

	mu      sync.Mutex
	streams map[int64]*streamState
	types   byType[typeProgress]
}

type streamState struct {
	id       int64
	node     *corev3.Node
	protocol string
	since    time.Time
	ident    Identity
	types    byType[streamType]
	ready    bool // some type was ACKed (Members)
}

type streamType struct {
	sent      string
	sentN     uint64
	nonces    [2]nonceVersion // the last two responses sent
	acked     string
	ackedN    uint64
	nacked    string
	nackErr   string
	nackTime  time.Time
	nackedLog string // version whose NACK was logged, so each is logged once
	upToDate  bool   // ackedN >= latest of this type
	missing   []string
}

type nonceVersion struct{ nonce, version string }

// typeProgress follows the latest version of one type through the fleet.
type typeProgress struct {
	latest    uint64
	hashes    map[string]string // resource name → content hash now served
	published time.Time
	lagging   int  // subscribed streams that have not ACKed latest
	acked     int  // streams that ACKed latest since it was published
	pending   bool // latest not yet seen converged, and some node had to ACK it
}

// NewFleet returns an empty fleet tracker.
func NewFleet(log *slog.Logger, m *Metrics, now func() time.Time) *Fleet {
	return &Fleet{log: log, metrics: m, now: now, grace: DefaultReadyGrace, streams: map[int64]*streamState{}}
}

// DefaultReadyGrace is how long a stream may go without ACKing anything
// before it stops counting towards convergence.
const DefaultReadyGrace = 10 * time.Second

// SetReadyGrace sets how long a stream that has ACKed nothing, and a node
// that reports stats without an xDS stream, still count towards (and hold
// back) convergence. Call before serving.
func (f *Fleet) SetReadyGrace(d time.Duration) { f.grace = d }

// Metrics returns the metrics the fleet was made with (may be nil).
func (f *Fleet) Metrics() *Metrics { return f.metrics }

// ReadyGrace returns the grace period of SetReadyGrace.
func (f *Fleet) ReadyGrace() time.Duration { return f.grace }

var _ serverv3.Callbacks = (*Fleet)(nil)

func (f *Fleet) progress(typeURL string) *typeProgress {
	tp, _ := f.types.getOrNew(typeURL)
	return tp
}

// Published records a newly set snapshot: every subscribed stream is now
// behind on the changed types until it ACKs.
func (f *Fleet) Published(p Published) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for t, h := range p.ResourceVersions {
		f.progress(t).hashes = h
	}
	for _, t := range p.Changed {
		tp := f.progress(t)
		tp.latest = p.Version
		tp.published = p.Time
		tp.lagging, tp.acked = 0, 0
		for _, s := range f.streams {
			if st, ok := s.types.get(t); ok {
				st.upToDate = st.ackedN >= tp.latest
				if !st.upToDate {
					tp.lagging++
				}
			}
		}
		// A publish no node subscribes to converges on nothing: timing it
		// would put a 0 (or, once a node turns up, its connect time) into
		// the convergence histogram.
		tp.pending = tp.lagging > 0
	}
}

// maybeConverged observes the convergence time once no subscribed stream
// lags, if at least one of them ACKed the version (streams that only went
// away converged nothing).
func (f *Fleet) maybeConverged(tp *typeProgress) {
	if tp.pending && tp.lagging == 0 {
		tp.pending = false
		f.changed()
		if tp.acked > 0 && f.metrics != nil {
			f.metrics.convergence.Observe(f.now().Sub(tp.published).Seconds())
		}
	}
}

// Convergence reports the fleet's progress towards version of kind (the
// engine's FleetView). Clusters count as converged only when their
// endpoints are too: a cluster is usable once both arrived. It is
// ConvergenceOf(kind, version, Members(Nodes(), grace, now), latest, stats)
// computed in place, without copying every stream's status: the engine and
// the fleet-wide waits call it often, with the fleet's lock held meanwhile.
func (f *Fleet) Convergence(kind model.ResourceKind, version string) model.Convergence {
	var stats []string
	if f.statsNodes != nil {
		stats = f.statsNodes()
	}
	now := f.now()
	types := kindTypes(kind)
	v := parseVersion(version)
	c := model.Convergence{Converged: true}
	var connected map[string]bool
	if len(stats) > 0 {
		connected = make(map[string]bool, len(stats))
	}
	f.mu.Lock()
	var edsLatest uint64
	if tp, ok := f.types.get(resourcev3.EndpointType); ok {
		edsLatest = tp.latest
	}
	for _, s := range f.streams {
		if !s.ready && now.Sub(s.since) >= f.grace {
			continue // not a member (Members)
		}
		if connected != nil {
			connected[s.node.GetId()] = true
		}
		subscribed := false
		for _, t := range types {
			st, ok := s.types.get(t)
			if !ok {
				continue
			}
			subscribed = true
			acked := st.ackedN
			if st.nacked != "" && parseVersion(st.nacked) >= v && acked < v {
				c.Nacks = append(c.Nacks, fmt.Sprintf("node %s rejected %s version %s: %s", s.node.GetId(), shortType(t), st.nacked, st.nackErr))
			}
			if t == resourcev3.EndpointType {
				if acked < edsLatest && acked < v {
					c.Converged = false
				}
				continue
			}
			if acked < v {
				c.Converged = false
			}
			// As in ConvergenceOf: a node is converged only with the
			// resources it asked for.
			if acked >= v {
				lacks(&c, s.node.GetId(), t, st.missing)
			}
		}
		switch {
		case subscribed:
			c.Nodes++
		case s.types.len() > 0:
			c.Nodes++
			c.Converged = false
		}
	}
	f.mu.Unlock()
	finishConvergence(&c, connected, stats)
	return c
}

// Lagging returns the latest version published of typeURL and how many
// subscribed streams have not ACKed it yet. It is a cheap pre-check for a
// wait on Convergence, which has the last word (it also weighs NACKs,
// grace periods and stats-only nodes).
func (f *Fleet) Lagging(typeURL string) (latest uint64, lagging int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tp, ok := f.types.get(typeURL); ok {
		return tp.latest, tp.lagging
	}
	return 0, 0
}

// SetOnChange makes the fleet call fn when a published version of a type
// has reached every subscribed stream (the ACK or stream close that
// completed it) and when a node NACKs a version: the engine's Wake. fn is
// called with the fleet's lock held and must not block or call back into
// the fleet. Call before serving.
func (f *Fleet) SetOnChange(fn func()) { f.onChange = fn }

func (f *Fleet) changed() {
	if f.onChange != nil {
		f.onChange()
	}
}

// SetStatsNodes tells the fleet which nodes report stats, so a node whose
// stats arrive before its xDS stream (after a restart of shiftplane) counts
// as not converged rather than as absent. Call before serving.
func (f *Fleet) SetStatsNodes(nodes func() []string) { f.statsNodes = nodes }

// Nodes returns the status of every connected stream, sorted by node id.
func (f *Fleet) Nodes() []NodeStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]NodeStatus, 0, len(f.streams))
	for _, s := range f.streams {
		ns := NodeStatus{
			ID:             s.node.GetId(),
			Cluster:        s.node.GetCluster(),
			Protocol:       s.protocol,
			StreamID:       s.id,
			ConnectedSince: s.since,
			Converged:      true,
			Identity:       s.ident.Key(),
			UserAgent:      userAgent(s.node),
			Kind:           ClientKind(s.node.GetUserAgentName()),
		}
		if !s.ident.Authenticated() {
			ns.Identity = ""
		}
		for t, st := range s.types.all() {
			if st.acked != "" {
				ns.Ready = true
			}
			ns.Types = append(ns.Types, TypeStatus{TypeURL: t, Sent: st.sent, Acked: st.acked, Nacked: st.nacked, NackError: st.nackErr, NackTime: st.nackTime, Missing: slices.Clone(st.missing)})
			if st.ackedN < f.progress(t).latest || len(st.missing) > 0 {
				ns.Converged = false
			}
		}
		sort.Slice(ns.Types, func(i, j int) bool { return ns.Types[i].TypeURL < ns.Types[j].TypeURL })
		out = append(out, ns)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].StreamID < out[j].StreamID
	})
	return out
}

func (f *Fleet) open(ctx context.Context, id int64, protocol string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.streams[id] = &streamState{id: id, protocol: protocol, since: f.now(), ident: PeerIdentity(ctx)}
	if f.metrics != nil {
		f.metrics.streams.Inc()
	}
}

func (f *Fleet) closed(id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.streams[id]
	if !ok {
		return
	}
	delete(f.streams, id)
	for t, st := range s.types.all() {
		tp := f.progress(t)
		if !st.upToDate {
			tp.lagging--
		}
		f.maybeConverged(tp)
	}
	if f.metrics != nil {
		f.metrics.streams.Dec()
	}
}

// request records an ACK or NACK. version is what the node ACKed (SotW's
// version_info); for delta it is "" and the nonce's version is used. It
// refuses (and so ends) a stream whose node id its client certificate does
// not name, before anything is served on it.
//
// names are the resources a SotW request asks for (nil: all of the type, or
// a delta stream); after an ACK of the latest version, those it does not
// serve are the node's missing resources.
func (f *Fleet) request(id int64, node *corev3.Node, typeURL, nonce, version string, errDetail string, isNack bool, names []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.streams[id]
	if !ok {
		return nil
	}
	// go-control-plane hands every request after the first the node it
	// kept from it: the same pointer, so the id needs no comparing.
	if node != nil && node != s.node && (s.node == nil || node.GetId() != s.node.GetId()) {
		if !s.ident.Allows(node.GetId()) {
			f.log.Warn("xds stream refused: node id not allowed by its certificate", "node", node.GetId(), "identity", s.ident.String())
			if f.metrics != nil {
				f.metrics.refused.WithLabelValues("identity").Inc()
			}
			return errNodeNotAllowed(s.ident, node.GetId())
		}
		s.node = node
	}
	if s.node == nil && s.ident.Authenticated() {
		return errNodeNotAllowed(s.ident, "")
	}
	tp := f.progress(typeURL)
	st, added := s.types.getOrNew(typeURL)
	if added {
		st.upToDate = tp.latest == 0
		if !st.upToDate {
			tp.lagging++
		}
	}
	sentVersion := ""
	for _, nv := range st.nonces {
		if nonce != "" && nv.nonce == nonce {
			sentVersion = nv.version
		}
	}
	if isNack {
		st.nacked, st.nackErr, st.nackTime = sentVersion, errDetail, f.now()
		if f.metrics != nil {
			f.metrics.nacks.WithLabelValues(shortType(typeURL)).Inc()
		}
		if st.nackedLog != sentVersion {
			st.nackedLog = sentVersion
			f.log.Warn("xds NACK", "node", s.node.GetId(), "type", shortType(typeURL), "version", sentVersion, "error", errDetail)
			f.changed()
		}
		return nil
	}
	// SotW carries the accepted version on every request, including the
	// first one after a reconnect; delta names it only through the nonce.
	if version == "" {
		version = sentVersion
	}
	if version == "" {
		return nil
	}
	var n uint64
	if version == st.sent && st.sentN != 0 {
		n = st.sentN // the ACK of the last response: its number is known
	} else {
		var err error
		if n, err = strconv.ParseUint(version, 10, 64); err != nil {
			return nil
		}
	}
	st.acked, st.ackedN = version, n
	s.ready = true
	if st.nacked != "" && n >= parseVersion(st.nacked) {
		st.nacked, st.nackErr = "", ""
	}
	if n >= tp.latest {
		st.missing = missingNames(names, tp.hashes)
	}
	if !st.upToDate && n >= tp.latest {
		st.upToDate = true
		tp.lagging--
		tp.acked++
		f.maybeConverged(tp)
	}
	return nil
}

func (f *Fleet) response(id int64, typeURL, nonce, version string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.streams[id]
	if !ok {
		return
	}
	st, _ := s.types.getOrNew(typeURL)
	st.sent, st.sentN = version, parseVersion(version)
	st.nonces[0], st.nonces[1] = st.nonces[1], nonceVersion{nonce: nonce, version: version}
	if f.metrics != nil {
		f.metrics.pushed(typeURL)
	}
}

func parseVersion(v string) uint64 {
	n, _ := strconv.ParseUint(v, 10, 64)
	return n
}

// OnStreamOpen implements serverv3.Callbacks.
func (f *Fleet) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	f.open(ctx, id, "sotw")
	return nil
}

// OnStreamClosed implements serverv3.Callbacks.
func (f *Fleet) OnStreamClosed(id int64, _ *corev3.Node) { f.closed(id) }

// OnStreamRequest implements serverv3.Callbacks.
func (f *Fleet) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	return f.request(id, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil, req.GetResourceNames())
}

// missingNames returns the names in want that served lacks, sorted; nil for
// a wildcard request (no names, or "*") or when nothing was published.
func missingNames(want []string, served map[string]string) []string {
	if len(want) == 0 || slices.Contains(want, "*") || served == nil {
		return nil
	}
	var out []string
	for _, n := range want {
		if _, ok := served[n]; !ok {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// OnStreamResponse implements serverv3.Callbacks.
func (f *Fleet) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	f.response(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

// OnDeltaStreamOpen implements serverv3.Callbacks.
func (f *Fleet) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	f.open(ctx, id, "delta")
	return nil
}

// OnDeltaStreamClosed implements serverv3.Callbacks.
func (f *Fleet) OnDeltaStreamClosed(id int64, _ *corev3.Node) { f.closed(id) }

// OnStreamDeltaRequest implements serverv3.Callbacks.
func (f *Fleet) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	version := ""
	if req.GetResponseNonce() == "" && len(req.GetInitialResourceVersions()) > 0 {
		// A reconnecting delta client names what it holds; if that is what
		// we serve, the cache sends nothing and the node is current as is.
		version = f.resumedVersion(req.GetTypeUrl(), req.GetResourceNamesSubscribe(), req.GetInitialResourceVersions())
	}
	return f.request(id, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), version, req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil, nil)
}

// resumedVersion returns the latest version of typeURL when held (name →
// hash) matches what is served for the names the client wants, else "".
func (f *Fleet) resumedVersion(typeURL string, subscribe []string, held map[string]string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	tp, ok := f.types.get(typeURL)
	if !ok || tp.hashes == nil || tp.latest == 0 {
		return ""
	}
	wildcard := len(subscribe) == 0
	for _, n := range subscribe {
		if n == "*" {
			wildcard = true
		}
	}
	for name, h := range held {
		if tp.hashes[name] != h {
			return "" // changed or withdrawn since: the cache will answer
		}
	}
	want := subscribe
	if wildcard {
		want = want[:0:0]
		for name := range tp.hashes {
			want = append(want, name)
		}
	}
	for _, name := range want {
		if name == "*" {
			continue
		}
		if _, served := tp.hashes[name]; served {
			if _, ok := held[name]; !ok {
				return "" // a resource the client lacks will be sent
			}
		}
	}
	return strconv.FormatUint(tp.latest, 10)
}

// OnStreamDeltaResponse implements serverv3.Callbacks.
func (f *Fleet) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	f.response(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// OnFetchRequest implements serverv3.Callbacks; REST fetches are not
// tracked, but one whose node its certificate does not name is refused.
func (f *Fleet) OnFetchRequest(ctx context.Context, req *discoveryv3.DiscoveryRequest) error {
	if id := PeerIdentity(ctx); !id.Allows(req.GetNode().GetId()) {
		return errNodeNotAllowed(id, req.GetNode().GetId())
	}
	return nil
}

// Members returns the nodes that count towards convergence at now: every
// stream that has ACKed something, and those that have not yet, for grace
// after they connected. A stream that never ACKs is dropped after grace.
func Members(nodes []NodeStatus, grace time.Duration, now time.Time) []NodeStatus {
	out := make([]NodeStatus, 0, len(nodes))
	for _, n := range nodes {
		if n.Ready || now.Sub(n.ConnectedSince) < grace {
			out = append(out, n)
		}
	}
	return out
}

// OnFetchResponse implements serverv3.Callbacks.
func (f *Fleet) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}
