package xds

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shiftplane/shiftplane/xds/model"
)

// VersionCounter hands out snapshot versions that stay unique across
// restarts. Implementations persist the counter before returning.
type VersionCounter interface {
	NextVersion() (uint64, error)
}

// Published describes one publish: its version per type and why it happened.
type Published struct {
	Version  uint64
	Time     time.Time
	Reason   string
	Changed  []string          // type URLs whose content changed
	Versions map[string]string // type URL → version now served
	// ResourceVersions is type URL → resource name → content hash of what
	// is served; a delta client that resumes with these hashes is current.
	ResourceVersions map[string]map[string]string `json:"-"`
}

// Publisher translates desired state and sets it in the cache. Each resource
// type carries its own version, moved only when that type's content
// changes, so a weight step sends RDS alone. Safe for concurrent use.
type Publisher struct {
	cache   *Cache
	counter VersionCounter
	now     func() time.Time
	onSet   func(Published)
	// beforeSet, if set, runs after a version is assigned and before the
	// snapshot is set; an error sets nothing (see replicated.go).
	beforeSet func(ctx context.Context, rec Published, ds model.State) error
	// assignments keeps the endpoints of the last translation (translate).
	assignments assignmentMemo

	mu       sync.Mutex
	last     map[string][]types.Resource
	hashes   map[string]map[string]string
	versions map[string]string
	history  []Published
	keep     int
}

// NewPublisher returns a publisher over cache. onSet, if not nil, is called
// with each snapshot once its version is assigned, just before the cache
// serves it (the fleet tracker counts every stream behind from there and
// times convergence).
func NewPublisher(cache *Cache, counter VersionCounter, now func() time.Time, onSet func(Published)) *Publisher {
	return &Publisher{
		cache:    cache,
		counter:  counter,
		now:      now,
		onSet:    onSet,
		last:     map[string][]types.Resource{},
		versions: map[string]string{},
		keep:     32,
	}
}

var publishedTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// Publish implements policy.Publisher.
func (p *Publisher) Publish(ctx context.Context, ds model.State, reason string) (model.PublishResult, error) {
	rec, err := p.Set(ctx, ds, reason)
	if err != nil {
		return model.PublishResult{}, err
	}
	return model.PublishResult{ClusterVersion: rec.Versions[resourcev3.ClusterType], ListenerVersion: rec.Versions[resourcev3.ListenerType], RouteVersion: rec.Versions[resourcev3.RouteType]}, nil
}

// Set translates ds and sets it as the fleet's snapshot. It returns the
// publish record; when nothing changed it sets nothing and reports no
// changed types. An error leaves the fleet on the last good snapshot.
func (p *Publisher) Set(ctx context.Context, ds model.State, reason string) (Published, error) {
	res, err := translate(ds, &p.assignments)
	if err != nil {
		return Published{}, fmt.Errorf("translate: %w", err)
	}
	byType := map[string][]types.Resource{
		resourcev3.ClusterType:  res.Clusters,
		resourcev3.EndpointType: res.Endpoints,
		resourcev3.ListenerType: res.Listeners,
		resourcev3.RouteType:    res.Routes,
	}

	// The build is marshalled and hashed once per resource; a type changed
	// when its name → hash map did, and every stream is sent those bytes.
	prep, err := p.cache.Prepare(byType)
	if err != nil {
		return Published{}, err
	}
	hashes := prep.Hashes()
	snap := &cachev3.Snapshot{}
	for _, t := range publishedTypes {
		snap.Resources[cachev3.GetResponseType(t)] = cachev3.NewResources("", byType[t])
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.now()
	var changed []string
	for _, t := range publishedTypes {
		if _, seen := p.versions[t]; !seen || !maps.Equal(p.hashes[t], hashes[t]) {
			changed = append(changed, t)
		}
	}
	if len(changed) == 0 {
		return Published{Versions: copyMap(p.versions), Time: start, Reason: reason}, nil
	}
	n, err := p.counter.NextVersion()
	if err != nil {
		return Published{}, fmt.Errorf("next snapshot version: %w", err)
	}
	v := strconv.FormatUint(n, 10)
	versions := copyMap(p.versions)
	for _, t := range changed {
		versions[t] = v
	}
	if err := snap.Consistent(); err != nil {
		return Published{}, fmt.Errorf("snapshot %s is inconsistent: %w", v, err)
	}
	if p.beforeSet != nil {
		if err := p.beforeSet(ctx, Published{Version: n, Time: start, Reason: reason, Changed: changed, Versions: copyMap(versions)}, ds); err != nil {
			return Published{}, fmt.Errorf("snapshot %s: %w", v, err)
		}
	}
	// Time is when the publish began, so convergence timing includes
	// Set's own work of answering every open watch.
	rec := Published{Version: n, Time: start, Reason: reason, Changed: changed, Versions: copyMap(versions), ResourceVersions: hashes}
	// The fleet learns of the version before any stream is answered: its
	// walk over every stream then runs while they are idle, not under the
	// ACKs of the answers (where it held every stream's callback up and
	// itself waited behind thousands of woken streams), and no ACK can
	// arrive before the fleet counts its stream as behind.
	if p.onSet != nil {
		p.onSet(rec)
	}
	if err := p.cache.Set(ctx, prep, versions); err != nil {
		return Published{}, fmt.Errorf("set snapshot %s: %w", v, err)
	}
	p.versions = versions
	p.hashes = hashes
	for t, rs := range byType {
		p.last[t] = rs
	}
	p.history = append(p.history, rec)
	if len(p.history) > p.keep {
		p.history = p.history[len(p.history)-p.keep:]
	}
	return rec, nil
}

// History returns the last published snapshots, oldest first.
func (p *Publisher) History() []Published {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Published(nil), p.history...)
}

// Versions returns the version now served for each type.
func (p *Publisher) Versions() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return copyMap(p.versions)
}

// Resources returns the resources now served for a type URL.
func (p *Publisher) Resources(typeURL string) []types.Resource {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]types.Resource(nil), p.last[typeURL]...)
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
