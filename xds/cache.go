package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"
	"sync/atomic"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Cache is the configuration cache shiftplane's xDS server answers from. It
// implements go-control-plane's cache.Cache (SotW and delta watches, REST
// fetches), so go-control-plane's server keeps the protocol (nonces, ACK
// and NACK, subscriptions); what it does differently from the library's
// SnapshotCache:
//
//   - Marshal once: Prepare marshals every resource once per publish and
//     wraps it in an Any. Every stream's response shares those Any values
//     (a stream only gets its own small DiscoveryResponse, because the server
//     writes its nonce into it), so a weight step to N streams marshals the
//     route configuration once, not N times; a full-state response is even
//     sent from bytes Set marshalled once (wire.go).
//   - No cache-wide lock while streams are answered: watches live in
//     shards, each with its own lock; Set swaps the served snapshot
//     atomically and then answers the shards one by one, and a stream
//     opening or re-arming a watch (every ACK) only takes its shard's lock.
//
// Every node shares one snapshot (the fleet's); node identity plays no part
// in what is served. Like the library's cache in non-ADS mode, a SotW
// request that names resources gets just those (proxyless gRPC names only
// its targets), and a watch is answered when the type's version differs
// from the one the request carries. Safe for concurrent use.
type Cache struct {
	setMu  sync.Mutex // serialises Set; never taken by streams
	cur    atomic.Pointer[served]
	shards [cacheShards]watchShard
	next   atomic.Uint64 // picks a watch's shard

	// prepared is the last Prepare's resources by identity: a resource
	// passed again (the translation reuses unchanged endpoints) is not
	// marshalled and hashed again.
	prepMu   sync.Mutex
	prepared map[types.Resource]preparedResource
}

const cacheShards = 64

// NewCache returns an empty cache. Watches opened before the first Set are
// answered by it.
func NewCache() *Cache { return &Cache{} }

var _ cachev3.Cache = (*Cache)(nil)

// PreparedResources is one publish's resources, marshalled and hashed,
// ready for Set. Immutable once returned by Prepare.
type PreparedResources struct {
	types map[string]*preparedType
}

// preparedType is every resource of one type, sorted by name.
type preparedType struct {
	typeURL string
	names   map[string]int // name → index in res
	res     []preparedResource
	all     []*anypb.Any // every resource, shared by full-state SotW responses
	hashes  map[string]string
	// wire is a full-state SotW response at the version the type is served
	// at, marshalled once (wire.go); set by Cache.Set.
	wire atomic.Pointer[wireBody]
}

type preparedResource struct {
	name  string
	hash  string
	any   *anypb.Any
	delta *discoveryv3.Resource // what delta responses carry, shared
}

// served is the snapshot streams are answered from: prepared resources at
// one version per type.
type served struct {
	types    map[string]*preparedType
	versions map[string]string
	known    [numKnownTypes]servedType // the known types' entries of both maps
}

type servedType struct {
	pt *preparedType
	v  string
}

func newServed(types map[string]*preparedType, versions map[string]string) *served {
	s := &served{types: types, versions: versions}
	for i, t := range knownTypes {
		s.known[i] = servedType{pt: types[t], v: versions[t]}
	}
	return s
}

func (s *served) typ(typeURL string) (*preparedType, string) {
	if s == nil {
		return nil, ""
	}
	if i := knownType(typeURL); i >= 0 {
		return s.known[i].pt, s.known[i].v
	}
	return s.types[typeURL], s.versions[typeURL]
}

// Prepare marshals (deterministically) and hashes every resource once.
// The hashes are go-control-plane's (cache.HashResource of the marshalled
// bytes), the per-resource versions delta xDS clients hold.
//
// Resources passed to Prepare belong to the cache from then on, as in
// go-control-plane's snapshots: they must not be modified. One passed to the
// next Prepare again, the same pointer, reuses its marshalled bytes.
func (c *Cache) Prepare(byType map[string][]types.Resource) (*PreparedResources, error) {
	c.prepMu.Lock()
	defer c.prepMu.Unlock()
	known := c.prepared
	next := make(map[types.Resource]preparedResource, len(known))
	p := &PreparedResources{types: make(map[string]*preparedType, len(byType))}
	for t, rs := range byType {
		pt := &preparedType{typeURL: t, names: make(map[string]int, len(rs)), res: make([]preparedResource, 0, len(rs)), hashes: make(map[string]string, len(rs))}
		for _, r := range rs {
			name := cachev3.GetResourceName(r)
			if _, dup := pt.names[name]; dup {
				return nil, fmt.Errorf("%s %q: listed twice", shortType(t), name)
			}
			pr, ok := known[r]
			if !ok || pr.any.GetTypeUrl() != t || pr.name != name {
				b, err := cachev3.MarshalResource(r)
				if err != nil {
					return nil, fmt.Errorf("marshal %s %q: %w", shortType(t), name, err)
				}
				h := cachev3.HashResource(b)
				a := &anypb.Any{TypeUrl: t, Value: b}
				pr = preparedResource{name: name, hash: h, any: a, delta: &discoveryv3.Resource{Name: name, Version: h, Resource: a}}
			}
			next[r] = pr
			pt.names[name] = 0
			pt.hashes[name] = pr.hash
			pt.res = append(pt.res, pr)
		}
		sort.Slice(pt.res, func(i, j int) bool { return pt.res[i].name < pt.res[j].name })
		pt.all = make([]*anypb.Any, len(pt.res))
		for i, r := range pt.res {
			pt.names[r.name] = i
			pt.all[i] = r.any
		}
		p.types[t] = pt
	}
	c.prepared = next
	return p, nil
}

// Hashes returns type URL → resource name → content hash. The maps are
// shared: do not modify them.
func (p *PreparedResources) Hashes() map[string]map[string]string {
	out := make(map[string]map[string]string, len(p.types))
	for t, pt := range p.types {
		out[t] = pt.hashes
	}
	return out
}

// Set serves p at versions (type URL → version) and answers every open
// watch that is now behind. It returns once each such watch has its
// response queued on its stream, not once the streams have sent them.
func (c *Cache) Set(ctx context.Context, p *PreparedResources, versions map[string]string) error {
	if p == nil {
		return errors.New("set: no prepared resources")
	}
	c.setMu.Lock()
	defer c.setMu.Unlock()
	old := c.cur.Load()
	types := maps.Clone(p.types)
	var changed []string
	for t, pt := range types {
		was, v := old.typ(t)
		if was != nil && v == versions[t] && maps.Equal(was.hashes, pt.hashes) {
			types[t] = was // unchanged: its watches need no look
			continue
		}
		changed = append(changed, t)
	}
	answerOrder(changed, old, types)
	for _, t := range changed {
		if err := serveWire(types[t], versions[t]); err != nil {
			return fmt.Errorf("set: %s: %w", shortType(t), err)
		}
	}
	next := newServed(types, copyMap(versions))
	// Store before scanning: a watch registered after a shard's scan saw
	// next when it registered (both happen under the shard's lock).
	c.cur.Store(next)
	if old != nil {
		for t, was := range old.types {
			if types[t] != was {
				retireWire(was)
			}
		}
	}
	if len(changed) == 0 {
		return nil
	}
	// Each shard's lock is taken once, to copy its watches out: an answered
	// SotW watch stays listed until its stream cancels it (go-control-plane
	// does on the stream's next request of the type, or when it closes) or
	// a later Set finds it finished. A second lock per shard to remove them
	// made Set wait behind the very streams it had just woken (they re-arm
	// and cancel watches in the same shards), and a goroutine that waits
	// there queues behind thousands of runnable ones.
	var sotw []*sotwWatch
	var delta []*deltaWatch
	var answeredDelta []*deltaWatch
	for _, t := range changed {
		pt, v := next.types[t], next.versions[t]
		for i := range c.shards {
			sh := &c.shards[i]
			sotw, delta = sotw[:0], delta[:0]
			answeredDelta = answeredDelta[:0]
			sh.mu.Lock()
			if l, ok := sh.sotw.get(t); ok {
				for w := l.head; w != nil; {
					nw := w.next
					if w.finished.Load() {
						w.unlink()
					} else {
						sotw = append(sotw, w)
					}
					w = nw
				}
			}
			for w := range sh.delta[t] {
				delta = append(delta, w)
			}
			sh.mu.Unlock()
			for _, w := range sotw {
				w.answer(ctx, pt, v)
			}
			for _, w := range delta {
				if w.answer(ctx, next) {
					answeredDelta = append(answeredDelta, w)
				}
			}
			if len(answeredDelta) > 0 {
				sh.mu.Lock()
				for _, w := range answeredDelta {
					delete(sh.delta[t], w)
				}
				sh.mu.Unlock()
			}
		}
	}
	return nil
}

// answerOrder sorts the changed types into the order Set answers them, which
// is the order each stream's responses go out in: make before break. A
// publish that adds a cluster or endpoints sends them before the listeners
// and routes that may name them (CDS, EDS, LDS, RDS). One that adds none
// sends the consumers first (LDS, RDS, CDS, EDS): a route stops
// naming a withdrawn cluster before the cluster goes, and the route change,
// which is what moves traffic, is not queued behind cluster removals (a
// promotion landing while the last one's stable is withdrawn waited for
// that stream's whole withdrawal). Other types go last, by name.
func answerOrder(changed []string, old *served, next map[string]*preparedType) {
	adds := false
	for _, t := range knownTypes[:2] { // CDS, EDS
		pt := next[t]
		if pt == nil {
			continue
		}
		was, _ := old.typ(t)
		for name := range pt.hashes {
			if was == nil {
				adds = true
				break
			}
			if _, ok := was.hashes[name]; !ok {
				adds = true
				break
			}
		}
	}
	// knownTypes is CDS, EDS, LDS, RDS.
	rank := func(t string) int {
		i := knownType(t)
		switch {
		case i < 0:
			return numKnownTypes
		case adds:
			return i
		default:
			return (i + 2) % numKnownTypes // LDS, RDS, CDS, EDS
		}
	}
	sort.Slice(changed, func(i, j int) bool {
		ri, rj := rank(changed[i]), rank(changed[j])
		if ri != rj {
			return ri < rj
		}
		return changed[i] < changed[j]
	})
}

// Versions returns the version served per type (nil before the first Set).
func (c *Cache) Versions() map[string]string {
	if s := c.cur.Load(); s != nil {
		return copyMap(s.versions)
	}
	return nil
}

type watchShard struct {
	mu    sync.Mutex
	sotw  byType[watchList]
	delta map[string]map[*deltaWatch]struct{}
}

// watchList is a shard's open SotW watches of one type, linked through the
// watches themselves: every ACK re-arms a watch, and adding or removing one
// is then two pointer writes instead of a map insert and delete. Guarded by
// the shard's mu.
type watchList struct{ head *sotwWatch }

func (l *watchList) add(w *sotwWatch) {
	w.list, w.prev, w.next = l, nil, l.head
	if l.head != nil {
		l.head.prev = w
	}
	l.head = w
}

// unlink removes w from its list, if it is in one.
func (w *sotwWatch) unlink() {
	l := w.list
	if l == nil {
		return
	}
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	}
	w.list, w.prev, w.next = nil, nil, nil
}

func (c *Cache) shard() *watchShard {
	return &c.shards[c.next.Add(1)%cacheShards]
}

// sotwWatch is one open SotW watch. mu orders answer against cancel: once
// cancel returns, nothing reads the subscription or sends on ch.
type sotwWatch struct {
	mu      sync.Mutex
	version string // the request's version_info
	ch      chan cachev3.Response
	shard   *watchShard

	list       *watchList // nil once unlinked; shard's mu
	prev, next *sotwWatch
	// finished: answered or cancelled. Set under mu (which orders answer
	// against cancel); Set's scan reads it without, to skip and unlink.
	finished atomic.Bool

	// resp is the watch's answer (it holds the request and the stream's
	// subscription), allocated with it on the stream's own goroutine, so
	// Set (which answers every stream of the fleet in turn) allocates
	// nothing per watch.
	resp sotwResponse
}

func (w *sotwWatch) answerAt(ctx context.Context, pt *preparedType, v string) *sotwResponse {
	w.resp.ctx, w.resp.pt, w.resp.version = ctx, pt, v
	return &w.resp
}

// CreateWatch implements cache.ConfigWatcher: it answers at once when the
// request is behind what is served (or names a resource it was not sent
// yet), and otherwise holds the watch until a Set moves the type on.
func (c *Cache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	t := req.GetTypeUrl()
	sh := c.shard()
	sh.mu.Lock()
	cur := c.cur.Load()
	if cur != nil {
		if pt, v := cur.typ(t); sotwBehind(pt, v, req.GetVersionInfo(), sub) {
			sh.mu.Unlock()
			ch <- newSotwResponse(context.Background(), req, sub, pt, v)
			return func() {}, nil
		}
	}
	w := &sotwWatch{version: req.GetVersionInfo(), ch: ch, shard: sh}
	w.resp.req, w.resp.sub = req, sub
	l, _ := sh.sotw.getOrNew(t)
	l.add(w)
	sh.mu.Unlock()
	return w.cancel, nil
}

func (w *sotwWatch) cancel() {
	w.mu.Lock()
	w.finished.Store(true)
	w.mu.Unlock()
	w.shard.mu.Lock()
	w.unlink()
	w.shard.mu.Unlock()
}

// answer queues the response at (pt, v) if the watch is behind it and
// still open.
func (w *sotwWatch) answer(ctx context.Context, pt *preparedType, v string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished.Load() || !sotwBehind(pt, v, w.version, w.resp.sub) {
		return
	}
	w.finished.Store(true)
	// go-control-plane's server buffers a response per open watch (ordered
	// ADS: one per type on a shared channel; otherwise a channel of one
	// per watch), and a watch is answered once, so this never blocks.
	select {
	case w.ch <- w.answerAt(ctx, pt, v):
	default:
	}
}

// sotwBehind reports whether a SotW watch at version has to be answered
// with the type's resources pt at v: the version moved, or the request
// subscribes to a served resource it was not sent.
func sotwBehind(pt *preparedType, v, version string, sub cachev3.Subscription) bool {
	if version != v {
		return true
	}
	if pt == nil {
		return false
	}
	known := sub.ReturnedResources()
	if sub.IsWildcard() {
		for _, r := range pt.res {
			if _, ok := known[r.name]; !ok {
				return true
			}
		}
		return false
	}
	for name := range sub.SubscribedResources() {
		if _, ok := known[name]; !ok {
			if _, served := pt.names[name]; served {
				return true
			}
		}
	}
	return false
}

// sotwResponse is a SotW answer over shared, already marshalled resources.
// Its DiscoveryResponse is the stream's own (the server sets its nonce);
// the Any values in it are shared by every stream.
type sotwResponse struct {
	ctx      context.Context
	req      *cachev3.Request
	sub      cachev3.Subscription // the stream's, nil for a REST fetch
	pt       *preparedType
	version  string
	out      *discoveryv3.DiscoveryResponse // &resp once built
	returned map[string]string
	// resp is allocated with the response (one allocation, not two, per
	// stream and answer); the server writes its nonce into it.
	resp discoveryv3.DiscoveryResponse
}

var _ cachev3.Response = (*sotwResponse)(nil)

func newSotwResponse(ctx context.Context, req *cachev3.Request, sub cachev3.Subscription, pt *preparedType, version string) *sotwResponse {
	return &sotwResponse{ctx: ctx, req: req, sub: sub, pt: pt, version: version}
}

// build picks the resources the request names (all of them when it names
// none, or "*"), and what the stream was then sent.
func (r *sotwResponse) build() {
	if r.out != nil {
		return
	}
	r.out = &r.resp
	r.out.VersionInfo, r.out.TypeUrl = r.version, r.req.GetTypeUrl()
	if r.pt == nil {
		r.returned = map[string]string{}
		return
	}
	names := r.req.GetResourceNames()
	all := len(names) == 0
	for _, n := range names {
		if n == "*" {
			all = true
			break
		}
	}
	if !all {
		var buf [8]int
		idx := buf[:0]
		for _, n := range names {
			if i, ok := r.pt.names[n]; ok {
				idx = append(idx, i)
			}
		}
		sort.Ints(idx)
		idx = compactInts(idx)
		if len(idx) < len(r.pt.res) {
			r.out.Resources = make([]*anypb.Any, len(idx))
			for j, i := range idx {
				r.out.Resources[j] = r.pt.res[i].any
			}
			r.record(idx)
			return
		}
	}
	r.out.Resources = r.pt.all
	r.record(nil)
}

// record sets what the response sends, name → version, for the stream's
// subscription (go-control-plane's SetReturnedResources). The
// subscription still holds the map its previous answer of this type
// recorded; when that names the same resources, it is updated in place
// instead of a new map being made for every stream on every answer (at
// N=10000 that map was the largest cost shiftplane itself added per step).
// Nothing else reads or writes that map meanwhile: go-control-plane's
// server (v0.14, SotW, ADS or not) builds a response on the stream's own
// goroutine when it sends it, after the watch that produced it finished
// (answer and cancel, under the watch's mu) and before the stream's next
// watch of the type is made; the map belongs to this stream and type alone.
//
// idx are the indices in r.pt.res of the resources sent; nil: all of them.
func (r *sotwResponse) record(idx []int) {
	n := len(r.pt.res)
	if idx != nil {
		n = len(idx)
	}
	name := func(i int) string {
		if idx != nil {
			i = idx[i]
		}
		return r.pt.res[i].name
	}
	if r.sub != nil {
		if m := r.sub.ReturnedResources(); m != nil && len(m) == n {
			same := true
			for i := range n {
				if _, ok := m[name(i)]; !ok {
					same = false
					break
				}
			}
			if same {
				for i := range n {
					m[name(i)] = r.version
				}
				r.returned = m
				return
			}
		}
	}
	r.returned = make(map[string]string, n)
	for i := range n {
		r.returned[name(i)] = r.version
	}
}

func compactInts(s []int) []int {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// GetDiscoveryResponse implements cache.Response.
func (r *sotwResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	r.build()
	return r.out, nil
}

// GetRequest implements cache.Response.
func (r *sotwResponse) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }

// GetVersion implements cache.Response.
func (r *sotwResponse) GetVersion() (string, error) { return r.version, nil }

// GetResponseVersion implements cache.Response.
func (r *sotwResponse) GetResponseVersion() string { return r.version }

// GetReturnedResources implements cache.Response.
func (r *sotwResponse) GetReturnedResources() map[string]string {
	r.build()
	return r.returned
}

// GetContext implements cache.Response.
func (r *sotwResponse) GetContext() context.Context { return r.ctx }

// Fetch implements cache.ConfigFetcher (REST xDS).
func (c *Cache) Fetch(ctx context.Context, req *cachev3.Request) (cachev3.Response, error) {
	cur := c.cur.Load()
	if cur == nil {
		return nil, errors.New("fetch: nothing published yet")
	}
	pt, v := cur.typ(req.GetTypeUrl())
	if req.GetVersionInfo() == v {
		return nil, &types.SkipFetchError{}
	}
	return newSotwResponse(ctx, req, nil, pt, v), nil
}

// deltaWatch is one open delta watch; mu as in sotwWatch.
type deltaWatch struct {
	mu      sync.Mutex
	done    bool
	typeURL string
	req     *cachev3.DeltaRequest
	sub     cachev3.Subscription
	ch      chan cachev3.DeltaResponse
	shard   *watchShard
}

// CreateDeltaWatch implements cache.ConfigWatcher: it answers at once with
// the resources whose content hash differs from what the client holds and
// those withdrawn (a first wildcard request is always answered), and
// otherwise holds the watch until a Set changes something it subscribes to.
func (c *Cache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	t := req.GetTypeUrl()
	sh := c.shard()
	sh.mu.Lock()
	if cur := c.cur.Load(); cur != nil {
		if resp := deltaDiff(context.Background(), cur, req, sub); resp != nil {
			sh.mu.Unlock()
			ch <- resp
			return nil, nil
		}
	}
	w := &deltaWatch{typeURL: t, req: req, sub: sub, ch: ch, shard: sh}
	if sh.delta == nil {
		sh.delta = map[string]map[*deltaWatch]struct{}{}
	}
	m := sh.delta[t]
	if m == nil {
		m = map[*deltaWatch]struct{}{}
		sh.delta[t] = m
	}
	m[w] = struct{}{}
	sh.mu.Unlock()
	return w.cancel, nil
}

func (w *deltaWatch) cancel() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
	w.shard.mu.Lock()
	delete(w.shard.delta[w.typeURL], w)
	w.shard.mu.Unlock()
}

func (w *deltaWatch) answer(ctx context.Context, s *served) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return true
	}
	resp := deltaDiff(ctx, s, w.req, w.sub)
	if resp == nil {
		return false
	}
	w.done = true
	select { // buffered by the server, as for SotW
	case w.ch <- resp:
	default:
	}
	return true
}

// deltaDiff returns what a delta client lacks of s, or nil if nothing.
func deltaDiff(ctx context.Context, s *served, req *cachev3.DeltaRequest, sub cachev3.Subscription) *deltaResponse {
	pt, v := s.typ(req.GetTypeUrl())
	known := sub.ReturnedResources()
	resp := &deltaResponse{ctx: ctx, req: req, version: v}
	if sub.IsWildcard() {
		n := 0
		if pt != nil {
			n = len(pt.res)
		}
		resp.next = make(map[string]string, n)
		if pt != nil {
			for i := range pt.res {
				r := &pt.res[i]
				resp.next[r.name] = r.hash
				if prev, ok := known[r.name]; !ok || prev != r.hash {
					resp.resources = append(resp.resources, r.delta)
				}
			}
		}
		for name := range known {
			if pt == nil {
				resp.removed = append(resp.removed, name)
			} else if _, ok := pt.names[name]; !ok {
				resp.removed = append(resp.removed, name)
			}
		}
	} else {
		subscribed := sub.SubscribedResources()
		resp.next = make(map[string]string, len(subscribed))
		for name := range subscribed {
			prev, found := known[name]
			i, ok := 0, false
			if pt != nil {
				i, ok = pt.names[name]
			}
			switch {
			case ok:
				r := &pt.res[i]
				if prev != r.hash {
					resp.resources = append(resp.resources, r.delta)
				}
				resp.next[name] = r.hash
			case found:
				resp.removed = append(resp.removed, name)
			}
		}
		sort.Slice(resp.resources, func(i, j int) bool { return resp.resources[i].GetName() < resp.resources[j].GetName() })
	}
	sort.Strings(resp.removed)
	if len(resp.resources) > 0 || len(resp.removed) > 0 || (sub.IsWildcard() && req.GetResponseNonce() == "") {
		return resp
	}
	return nil
}

// deltaResponse is a delta answer over shared resources (as sotwResponse).
type deltaResponse struct {
	ctx       context.Context
	req       *cachev3.DeltaRequest
	version   string
	resources []*discoveryv3.Resource
	removed   []string
	next      map[string]string
}

var _ cachev3.DeltaResponse = (*deltaResponse)(nil)

// GetDeltaDiscoveryResponse implements cache.DeltaResponse; each call
// returns a new message (the server writes its nonce into it).
func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discoveryv3.DeltaDiscoveryResponse, error) {
	return &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: r.version,
		TypeUrl:           r.req.GetTypeUrl(),
		Resources:         r.resources,
		RemovedResources:  r.removed,
	}, nil
}

// GetDeltaRequest implements cache.DeltaResponse.
func (r *deltaResponse) GetDeltaRequest() *discoveryv3.DeltaDiscoveryRequest { return r.req }

// GetSystemVersion implements cache.DeltaResponse.
func (r *deltaResponse) GetSystemVersion() (string, error) { return r.version, nil }

// GetResponseVersion implements cache.DeltaResponse.
func (r *deltaResponse) GetResponseVersion() string { return r.version }

// GetNextVersionMap implements cache.DeltaResponse.
func (r *deltaResponse) GetNextVersionMap() map[string]string { return r.next }

// GetReturnedResources implements cache.DeltaResponse.
func (r *deltaResponse) GetReturnedResources() map[string]string { return r.next }

// GetContext implements cache.DeltaResponse.
func (r *deltaResponse) GetContext() context.Context { return r.ctx }
