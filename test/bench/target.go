// Package bench measures how fast shiftplane moves a canary weight to a
// fleet of xDS clients, and what a fleet costs it, against a floor: a
// minimal ADS server that pushes a pre-marshalled response of the same size
// to the same number of streams. The clients are real gRPC ADS streams
// (package fleetsim), in this process or in a child process, so the
// server's memory and CPU can be measured on their own (RunTable).
//
// Entry points: RunTable (the full table, cmd/xdsbench and `make bench`),
// the Benchmark* functions and TestHarness in this package (`go test`).
package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
	"github.com/shiftplane/shiftplane/test/bench/floor"
	"github.com/shiftplane/shiftplane/xds"
)

// Plan is the one rollout the weight-step bench moves: two clusters behind
// one weighted route.
func Plan() policy.Plan {
	return policy.Plan{
		Name:     "checkout",
		Listener: policy.Listener{Address: "0.0.0.0:10000"},
		Stable:   policy.Backend{Cluster: "checkout-v1", Endpoints: []string{"127.0.0.1:8081"}},
		Canary:   policy.Backend{Cluster: "checkout-v2", Endpoints: []string{"127.0.0.1:8082"}},
	}
}

// State is Plan at canary weight w.
func State(w int) policy.DesiredState {
	return policy.DesiredState{Services: []policy.ServiceState{policy.ServiceStateFor(Plan(), w)}}
}

// StepWeight is the canary weight of step i: 1..99 and round again, so
// every step differs from the one before (the initial state is 0).
func StepWeight(i int) int { return 1 + i%99 }

// Plans returns n distinct plans. With sharedListener they all sit on one
// listener (one route configuration with n virtual hosts), otherwise each
// has its own listener and route configuration.
func Plans(n int, sharedListener bool) []policy.Plan {
	out := make([]policy.Plan, n)
	for i := range out {
		name := fmt.Sprintf("svc-%04d", i)
		addr := "0.0.0.0:10000"
		if !sharedListener {
			addr = "0.0.0.0:" + strconv.Itoa(20000+i)
		}
		out[i] = policy.Plan{
			Name:     name,
			Listener: policy.Listener{Address: addr, Domains: []string{name + ".example.com"}},
			Stable:   policy.Backend{Cluster: name + "-v1", Endpoints: []string{fmt.Sprintf("10.%d.%d.1:8080", i/250, i%250)}},
			Canary:   policy.Backend{Cluster: name + "-v2", Endpoints: []string{fmt.Sprintf("10.%d.%d.2:8080", i/250, i%250)}},
		}
	}
	return out
}

// StateOf is plans at the given canary weights (weights[i] for plans[i]).
func StateOf(plans []policy.Plan, weights []int) policy.DesiredState {
	ds := policy.DesiredState{Services: make([]policy.ServiceState, len(plans))}
	for i, p := range plans {
		ds.Services[i] = policy.ServiceStateFor(p, weights[i])
	}
	return ds
}

// Counter is an in-memory xds.VersionCounter. Production persists the
// counter in bbolt (policy/boltstore) before returning it; that write is
// not part of what the bench measures.
type Counter struct{ n atomic.Uint64 }

// NextVersion implements xds.VersionCounter.
func (c *Counter) NextVersion() (uint64, error) { return c.n.Add(1), nil }

// Target is an ADS server the steps run against.
type Target interface {
	Name() string
	Addr() string
	// Step publishes canary weight w and returns the RDS version it sent.
	Step(ctx context.Context, w int) (uint64, error)
	// Settle waits until the server itself has seen n streams ACK version v.
	Settle(ctx context.Context, v uint64, n int) error
	Stop()
}

// Shiftplane is shiftplane's real xDS stack on 127.0.0.1:0: cache, fleet
// tracker, publisher, gRPC server with Register.
type Shiftplane struct {
	Pub   *xds.Publisher
	Fleet *xds.Fleet
	Reg   *prometheus.Registry
	// SetDur is how long the last Step's Publisher.Set call took.
	SetDur time.Duration

	addr   string
	gs     *grpc.Server
	cancel context.CancelFunc
}

// Variant names a change to shiftplane's xDS stack that the bench can
// measure without it being made in package xds. The default, Shipped, is
// the stack as it is.
type Variant string

// Variants.
const (
	Shipped Variant = ""
	// OrderedADS serves SotW ADS with go-control-plane's ordered loop
	// (sotw.WithOrderedADS: one select over one channel per stream) instead
	// of the default reflect.Select over a channel per type. It registers
	// serverv3.NewServer directly, without xds's nackGuard cache wrapper,
	// which only acts on NACKs, and the bench never NACKs.
	OrderedADS Variant = "ordered-ads"
)

// ParseVariant accepts "", "shipped" or "ordered-ads".
func ParseVariant(s string) (Variant, error) {
	switch Variant(s) {
	case Shipped, "shipped":
		return Shipped, nil
	case OrderedADS:
		return OrderedADS, nil
	}
	return "", fmt.Errorf("variant %q: want shipped or ordered-ads", s)
}

// StartShiftplane starts the stack as shipped and publishes State(0).
func StartShiftplane() (*Shiftplane, error) { return StartShiftplaneVariant(Shipped) }

// StartShiftplaneVariant starts the stack with variant v and publishes
// State(0).
func StartShiftplaneVariant(v Variant) (*Shiftplane, error) {
	return startShiftplane(v, State(0))
}

// startShiftplane starts the stack with variant v and publishes initial.
func startShiftplane(v Variant, initial policy.DesiredState) (*Shiftplane, error) {
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	fleet := xds.NewFleet(log, xds.NewMetrics(reg), time.Now)
	cache := xds.NewCache()
	pub := xds.NewPublisher(cache, &Counter{}, time.Now, fleet.Published)
	gs := xds.NewGRPCServer()
	ctx, cancel := context.WithCancel(context.Background())
	switch v {
	case OrderedADS:
		srv := serverv3.NewServer(ctx, cache, fleet, sotwv3.WithOrderedADS())
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	default:
		xds.Register(ctx, gs, cache, fleet, log)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, err
	}
	go func() { _ = gs.Serve(lis) }()
	s := &Shiftplane{Pub: pub, Fleet: fleet, Reg: reg, addr: lis.Addr().String(), gs: gs, cancel: cancel}
	if _, err := pub.Set(ctx, initial, "bench: initial"); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Name implements Target.
func (s *Shiftplane) Name() string { return "shiftplane" }

// Addr implements Target.
func (s *Shiftplane) Addr() string { return s.addr }

// Step implements Target. It fails unless the publish changed routes only.
func (s *Shiftplane) Step(ctx context.Context, w int) (uint64, error) {
	t0 := time.Now()
	rec, err := s.Pub.Set(ctx, State(w), "bench: weight step")
	s.SetDur = time.Since(t0)
	if err != nil {
		return 0, err
	}
	if !slices.Equal(rec.Changed, []string{resourcev3.RouteType}) {
		return 0, fmt.Errorf("weight %d changed %v, want routes only", w, rec.Changed)
	}
	return rec.Version, nil
}

// Settle implements Target with the fleet tracker's view.
func (s *Shiftplane) Settle(ctx context.Context, v uint64, n int) error {
	want := strconv.FormatUint(v, 10)
	for {
		// Lagging is a counter read; Convergence walks every stream, so
		// it is asked only once the counter says the fleet caught up.
		ok, got := false, 0
		if latest, lagging := s.Fleet.Lagging(resourcev3.RouteType); latest >= v && lagging == 0 {
			c := s.Fleet.Convergence(policy.KindRoutes, want)
			ok, got = c.Converged, c.Nodes
		}
		if ok && got == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fleet tracker: RDS %s on %d streams, converged %v, want %d: %w", want, got, ok, n, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// ConvergenceHistogram returns shiftplane_convergence_seconds' count and sum.
func (s *Shiftplane) ConvergenceHistogram() (uint64, float64) {
	mfs, err := s.Reg.Gather()
	if err != nil {
		return 0, 0
	}
	for _, mf := range mfs {
		if mf.GetName() == "shiftplane_convergence_seconds" && mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, m := range mf.GetMetric() {
				return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			}
		}
	}
	return 0, 0
}

// Stop implements Target.
func (s *Shiftplane) Stop() {
	s.cancel()
	s.gs.Stop()
}

// Floor is the floor server serving the same resources as Shiftplane.
type Floor struct {
	srv     *floor.Server
	version uint64
}

// StartFloor starts a floor server holding State(0)'s resources at version 1.
func StartFloor() (*Floor, error) {
	res, err := xds.Translate(State(0))
	if err != nil {
		return nil, err
	}
	var initial [fleetsim.NumTypes][]floor.Resource
	for t, rs := range [][]types.Resource{res.Clusters, res.Endpoints, res.Listeners, res.Routes} {
		if initial[t], err = packAll(rs); err != nil {
			return nil, err
		}
	}
	srv, err := floor.New("1", initial)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv.Serve(lis)
	return &Floor{srv: srv, version: 1}, nil
}

func packAll(rs []types.Resource) ([]floor.Resource, error) {
	out := make([]floor.Resource, 0, len(rs))
	for _, r := range rs {
		a, err := anypb.New(r)
		if err != nil {
			return nil, err
		}
		out = append(out, floor.Resource{Name: cachev3.GetResourceName(r), Resource: a})
	}
	return out, nil
}

// Name implements Target.
func (f *Floor) Name() string { return "floor" }

// Addr implements Target.
func (f *Floor) Addr() string { return f.srv.Addr() }

// Step implements Target: it translates the routes (as shiftplane would
// have to) and pushes them. Translation is a few microseconds here; the
// push is what the floor is about.
func (f *Floor) Step(_ context.Context, w int) (uint64, error) {
	res, err := xds.Translate(State(w))
	if err != nil {
		return 0, err
	}
	routes, err := packAll(res.Routes)
	if err != nil {
		return 0, err
	}
	f.version++
	if err := f.srv.PushRoutes(strconv.FormatUint(f.version, 10), routes); err != nil {
		return 0, err
	}
	return f.version, nil
}

// Settle implements Target: the server counted n ACKs of version v.
func (f *Floor) Settle(ctx context.Context, v uint64, n int) error {
	want := strconv.FormatUint(v, 10)
	for {
		cur, acks := f.srv.AcksOfLatest()
		if cur == want && acks >= int64(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("floor: version %s has %d of %d ACKs (latest %s): %w", want, acks, n, cur, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// Stop implements Target.
func (f *Floor) Stop() { f.srv.Stop() }
