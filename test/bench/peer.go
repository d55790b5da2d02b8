package bench

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/xds"
)

// Peer is a control plane written the way go-control-plane's example
// server is: on every change it builds all resources, puts them in one
// cache.NewSnapshot with one version for every type, and sets it (one
// snapshot for the whole fleet, keyed on a constant node hash). It carries
// promotions like shiftplane does, without a store, a policy engine or
// fleet tracking: weight 100, then drainTimeout later the stable is
// withdrawn. The resources are xds.Translate's, so both servers send the
// same configuration; what differs is how it is versioned and served.
type Peer struct {
	cache  cachev3.SnapshotCache
	gs     *grpc.Server
	addr   string
	cancel context.CancelFunc
	drain  time.Duration

	mu       sync.Mutex
	version  uint64
	plans    []policy.Plan
	weight   []int
	stable   []bool
	pendingW sync.WaitGroup
}

type fleetHash struct{}

func (fleetHash) ID(*corev3.Node) string { return "fleet" }

// StartPeer serves the peer on 127.0.0.1:0 with an empty configuration.
func StartPeer(drain time.Duration) (*Peer, error) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Peer{cache: cachev3.NewSnapshotCache(false, fleetHash{}, nil), gs: grpc.NewServer(), cancel: cancel, drain: drain}
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(p.gs, serverv3.NewServer(ctx, p.cache, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, err
	}
	p.addr = lis.Addr().String()
	go func() { _ = p.gs.Serve(lis) }()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.setLocked(); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// Addr is the peer's ADS address.
func (p *Peer) Addr() string { return p.addr }

// Stop stops serving.
func (p *Peer) Stop() {
	p.pendingW.Wait()
	p.cancel()
	p.gs.Stop()
}

// setLocked builds every resource and sets a snapshot at the next version.
func (p *Peer) setLocked() (uint64, error) {
	var ds policy.DesiredState
	for i, pl := range p.plans {
		ss := policy.ServiceStateFor(pl, p.weight[i])
		ss.StablePublished = p.stable[i]
		ds.Services = append(ds.Services, ss)
	}
	res, err := xds.Translate(ds)
	if err != nil {
		return 0, err
	}
	p.version++
	snap, err := cachev3.NewSnapshot(strconv.FormatUint(p.version, 10), map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  res.Clusters,
		resourcev3.EndpointType: res.Endpoints,
		resourcev3.ListenerType: res.Listeners,
		resourcev3.RouteType:    res.Routes,
	})
	if err != nil {
		return 0, err
	}
	if err := snap.Consistent(); err != nil {
		return 0, fmt.Errorf("peer snapshot: %w", err)
	}
	return p.version, p.cache.SetSnapshot(context.Background(), "fleet", snap)
}

// Reset replaces the rollouts with names (stable and canary clusters given)
// at weight 0, and returns the version that carries them.
func (p *Peer) Reset(names, stables, canaries []string) (uint64, error) {
	p.pendingW.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.plans, p.weight, p.stable = nil, nil, nil
	for k, n := range names {
		p.plans = append(p.plans, policy.Plan{
			Name:     n,
			Listener: policy.Listener{Address: "127.0.0.1:10000", Domains: []string{n + ".example.com"}},
			Stable:   policy.Backend{Cluster: stables[k], Endpoints: []string{"127.0.0.1:8081"}},
			Canary:   policy.Backend{Cluster: canaries[k], Endpoints: []string{"127.0.0.1:8082"}},
		})
		p.weight = append(p.weight, 0)
		p.stable = append(p.stable, true)
	}
	return p.setLocked()
}

// Promote sends rollout k's traffic to its canary and withdraws the stable
// drain later.
func (p *Peer) Promote(k int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.weight[k] = 100
	if _, err := p.setLocked(); err != nil {
		return err
	}
	p.pendingW.Add(1)
	time.AfterFunc(p.drain, func() {
		defer p.pendingW.Done()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.stable[k] = false
		_, _ = p.setLocked()
	})
	return nil
}

// WaitWithdrawn waits until every promotion's stable is withdrawn.
func (p *Peer) WaitWithdrawn(ctx context.Context) error {
	done := make(chan struct{})
	go func() { p.pendingW.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
