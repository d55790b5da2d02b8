package replica

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/etcdstore"
	"github.com/shiftplane/shiftplane/policy/signal"
	"github.com/shiftplane/shiftplane/test/bench"
	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
	"github.com/shiftplane/shiftplane/test/etcdharness"
	"github.com/shiftplane/shiftplane/xds"
)

var quiet = slog.New(slog.DiscardHandler)

func newClient(t *testing.T, c *etcdharness.Cluster) *clientv3.Client {
	t.Helper()
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type staticStats []signal.NodeReport

func (s staticStats) Reports() []signal.NodeReport { return s }

func TestReplica(t *testing.T) {
	cluster := etcdharness.Start(t, 3)

	// The leader's publishes are served by a follower at the same versions,
	// through the watch; a follower that becomes leader publishes the same
	// state without a new version.
	t.Run("FollowerServesLeaderVersions", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		prefix := "/follow/"
		cl := newClient(t, cluster)
		store, err := etcdstore.New(ctx, cl, prefix, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		sess, err := concurrency.NewSession(cl, concurrency.WithTTL(5))
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		el := concurrency.NewElection(sess, prefix+"leader")
		if err := el.Campaign(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		fenced := store.Fenced(etcdstore.Fence{Key: el.Key(), Rev: el.Rev()})
		leaderPub := xds.NewPublisher(xds.NewCache(), fenced, time.Now, nil)
		leaderPub.SetBeforeSet(StoreHook(func() *etcdstore.Store { return fenced }))

		followerPub := xds.NewPublisher(xds.NewCache(), refuse{}, time.Now, nil)
		ready := make(chan struct{})
		go Follow(ctx, newClient(t, cluster), prefix, followerPub, quiet, func() { close(ready) })
		<-ready
		for _, w := range []int{10, 30, 30, 50} {
			if _, err := leaderPub.Publish(ctx, bench.State(w), "weight "+strconv.Itoa(w)); err != nil {
				t.Fatal(err)
			}
			want := leaderPub.Versions()
			waitFor(t, fmt.Sprintf("follower at the leader's versions %v for weight %d", want, w), func() bool {
				return maps.Equal(followerPub.Versions(), want)
			})
		}
		// The follower takes over: the same state publishes nothing new.
		before := followerPub.Versions()
		res, err := followerPub.Set(ctx, bench.State(50), "restore")
		if err != nil || len(res.Changed) != 0 || !maps.Equal(followerPub.Versions(), before) {
			t.Errorf("new leader's restore of the same state: changed %v, versions %v (were %v), err %v", res.Changed, followerPub.Versions(), before, err)
		}
		// A leader that lost its term cannot publish.
		if _, err := cl.Revoke(ctx, sess.Lease()); err != nil {
			t.Fatal(err)
		}
		if _, err := leaderPub.Publish(ctx, bench.State(70), "late"); err == nil {
			t.Error("a publish after the term was lost succeeded")
		}
		time.Sleep(200 * time.Millisecond)
		if !maps.Equal(followerPub.Versions(), before) {
			t.Errorf("the follower moved to %v after a refused publish", followerPub.Versions())
		}
	})

	// The view is the union of every replica's record; a replica's entries
	// go with its lease; a node on two replicas counts where it connected last.
	t.Run("ViewUnion", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		prefix := "/view/"
		cl := newClient(t, cluster)
		t0 := time.Now()
		routes := func(acked string) []xds.TypeStatus {
			return []xds.TypeStatus{{TypeURL: resourcev3.RouteType, Acked: acked}}
		}
		remote := Local{
			Nodes: func() []xds.NodeStatus {
				return []xds.NodeStatus{
					{ID: "b", ConnectedSince: t0, Types: routes("7")},
					{ID: "moved", ConnectedSince: t0, Types: routes("3")}, // the old stream
				}
			},
			Stats: staticStats{{Node: "b", At: t0, Latest: map[string]float64{}}, {Node: "c", At: t0, Latest: map[string]float64{}}},
		}
		lease, err := cl.Grant(ctx, 30)
		if err != nil {
			t.Fatal(err)
		}
		rep := &Reporter{Client: cl, Prefix: prefix, ID: "r2", Local: remote, Lease: func() clientv3.LeaseID { return lease.ID }, Every: 20 * time.Millisecond, Log: quiet}
		go rep.Run(ctx)
		local := Local{
			Nodes: func() []xds.NodeStatus {
				return []xds.NodeStatus{
					{ID: "a", ConnectedSince: t0, Types: routes("7")},
					{ID: "moved", ConnectedSince: t0.Add(time.Second), Types: routes("7")},
				}
			},
			Stats: staticStats{},
		}
		served := func() map[string]string { return map[string]string{resourcev3.RouteType: "7"} }
		v := NewView(newClient(t, cluster), prefix, "r1", local, served, quiet)
		go v.Run(ctx)
		waitFor(t, "the remote record in the view", func() bool { return len(v.Nodes()) == 3 })
		got := map[string]string{}
		for _, n := range v.Nodes() {
			got[n.ID] = n.Replica
		}
		if want := map[string]string{"a": "r1", "b": "r2", "moved": "r1"}; !maps.Equal(got, want) {
			t.Errorf("nodes on replicas %v, want %v", got, want)
		}
		// c reports stats to r2 but has no xDS stream anywhere.
		c := v.Convergence(policy.KindRoutes, "7")
		if c.Converged || c.Nodes != 3 || len(c.Missing) != 1 || c.Missing[0] != "c" {
			t.Errorf("convergence = %+v, want 3 nodes, c missing, not converged", c)
		}
		if c := v.Convergence(policy.KindRoutes, "8"); c.Converged {
			t.Errorf("converged on a version nobody ACKed: %+v", c)
		}
		// r2 dies: its lease goes, and its nodes and stats with it.
		if _, err := cl.Revoke(ctx, lease.ID); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "r2's entries gone with its lease", func() bool { return len(v.Nodes()) == 2 && len(v.Reports()) == 0 })
		if c := v.Convergence(policy.KindRoutes, "7"); !c.Converged || c.Nodes != 2 {
			t.Errorf("after r2 died: %+v, want 2 nodes converged", c)
		}
	})

	// Write rate with 1,000 real ADS streams on one replica and 1,000 nodes'
	// stats changing every second: the record is written at most once per
	// Every, whatever the fleet does.
	t.Run("WriteRateAt1000Streams", func(t *testing.T) {
		if testing.Short() {
			t.Skip("1,000 streams")
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		fleet := xds.NewFleet(quiet, nil, time.Now)
		cache := xds.NewCache()
		pub := xds.NewPublisher(cache, &bench.Counter{}, time.Now, fleet.Published)
		if _, err := pub.Publish(ctx, bench.State(0), "start"); err != nil {
			t.Fatal(err)
		}
		gs := xds.NewGRPCServer()
		xds.Register(ctx, gs, cache, fleet, quiet)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = gs.Serve(lis) }()
		defer gs.Stop()
		sim, err := fleetsim.Start(ctx, fleetsim.FleetConfig{Addr: lis.Addr().String(), N: 1000, Mode: fleetsim.SotW, NodePrefix: "sim", Cluster: "bench", Parallel: 200})
		if err != nil {
			t.Fatal(err)
		}
		defer sim.Stop()
		stats := &flushingStats{n: 1000}
		cl := newClient(t, cluster)
		lease, err := cl.Grant(ctx, 30)
		if err != nil {
			t.Fatal(err)
		}
		every := 500 * time.Millisecond
		rep := &Reporter{Client: cl, Prefix: "/rate/", ID: "r1", Local: Local{Nodes: fleet.Nodes, Stats: stats}, Lease: func() clientv3.LeaseID { return lease.ID }, Every: every, Log: quiet}
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { rep.Run(rctx); close(done) }()
		window := 5 * time.Second
		start := time.Now()
		for i := 1; time.Since(start) < window; i++ {
			// A weight step every second: 1,000 ACKs to record.
			if _, err := pub.Publish(ctx, bench.State(i%100), "step"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
		}
		rcancel()
		<-done
		n, b := rep.Writes()
		secs := time.Since(start).Seconds()
		t.Logf("1,000 streams, stats every 1s, a weight step every 1s, reportEvery %s: %d writes in %.1fs = %.1f writes/s, %.0f KiB/s, %.0f KiB a record",
			every, n, secs, float64(n)/secs, float64(b)/1024/secs, float64(b)/1024/float64(max(n, 1)))
		if limit := int64(secs/every.Seconds()) + 1; n > limit {
			t.Errorf("%d writes in %.1fs, more than one per %s (%d)", n, secs, every, limit)
		}
		if n == 0 {
			t.Error("nothing written")
		}
	})
}

// refuse is the version counter of a replica that never leads.
type refuse struct{}

func (refuse) NextVersion() (uint64, error) { return 0, etcdstore.ErrFenced }

// flushingStats is n nodes whose counters rise every second, as Envoy's
// MetricsService flushes them.
type flushingStats struct{ n int }

func (f *flushingStats) Reports() []signal.NodeReport {
	sec := time.Now().Truncate(time.Second)
	out := make([]signal.NodeReport, f.n)
	for i := range out {
		out[i] = signal.NodeReport{Node: fmt.Sprintf("sim-%d", i), At: sec, PrevAt: sec.Add(-time.Second),
			Latest: map[string]float64{
				"cluster.app-v1.upstream_rq_completed": float64(sec.Unix()), "cluster.app-v2.upstream_rq_completed": float64(sec.Unix()),
				"cluster.app-v1.upstream_rq_active": 1, "cluster.app-v2.upstream_rq_active": 1,
			},
			Prev: map[string]float64{
				"cluster.app-v1.upstream_rq_completed": float64(sec.Unix() - 1), "cluster.app-v2.upstream_rq_completed": float64(sec.Unix() - 1),
				"cluster.app-v1.upstream_rq_active": 1, "cluster.app-v2.upstream_rq_active": 1,
			}}
	}
	return out
}
