package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
	"github.com/shiftplane/shiftplane/xds"
)

// TestHarness checks the harness itself on a small fleet: every client gets
// the full configuration, a weight step reaches every client as RDS alone
// (≤ 1 KiB per stream) with the new weight, the floor converges too, and a
// reconnect storm brings every stream back.
func TestHarness(t *testing.T) {
	const n = 20
	for name, mode := range map[string]fleetsim.Mode{"sotw": fleetsim.SotW, "delta": fleetsim.Delta} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			sp, err := StartShiftplane()
			if err != nil {
				t.Fatal(err)
			}
			defer sp.Stop()
			cl := &LocalClients{Mode: mode, KeepResources: true}
			defer cl.Close()
			if _, err := cl.Connect(ctx, sp.Addr(), n); err != nil {
				t.Fatal(err)
			}
			wantCounts := [fleetsim.NumTypes]int{fleetsim.CDS: 2, fleetsim.EDS: 2, fleetsim.LDS: 1, fleetsim.RDS: 1}
			for _, c := range cl.Fleet().Clients() {
				for typ := range fleetsim.NumTypes {
					if got := len(c.Resources(typ)); got != wantCounts[typ] {
						t.Fatalf("node %s holds %d %s resources, want %d", c.ID(), got, typ, wantCounts[typ])
					}
				}
			}

			st, err := RunSteps(ctx, sp, cl, n, 0, 0, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			for typ := range fleetsim.RDS {
				if st.Received.Responses[typ] != 0 {
					t.Errorf("weight step sent %d %s responses, want RDS only", st.Received.Responses[typ], typ)
				}
			}
			if got := st.Received.Responses[fleetsim.RDS]; got != n {
				t.Errorf("weight step sent %d RDS responses to %d streams, want one each", got, n)
			}
			if b, _ := st.PerStreamStep(fleetsim.RDS); b > 1024 {
				t.Errorf("weight step sent %.0f bytes per stream, want ≤ 1024", b)
			}
			wantWeight := uint32(StepWeight(0))
			for _, c := range cl.Fleet().Clients() {
				if w := canaryWeight(t, c); w != wantWeight {
					t.Errorf("node %s has canary weight %d, want %d", c.ID(), w, wantWeight)
				}
			}
			if got := st.Received.StreamErrors; got != 0 {
				t.Errorf("%d stream errors", got)
			}

			if mode == fleetsim.SotW {
				// Delta: see TestDeltaStorm.
				checkStorm(ctx, t, sp, cl, n)
			}

			if err := cl.Disconnect(ctx); err != nil {
				t.Fatal(err)
			}
			fl, err := StartFloor()
			if err != nil {
				t.Fatal(err)
			}
			defer fl.Stop()
			if _, err := cl.Connect(ctx, fl.Addr(), n); err != nil {
				t.Fatal(err)
			}
			fst, err := RunSteps(ctx, fl, cl, n, 0, 0, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			fb, _ := fst.PerStreamStep(fleetsim.RDS)
			sb, _ := st.PerStreamStep(fleetsim.RDS)
			// Same resource, same version width: the floor's response is the
			// same size but for the nonce.
			if d := fb - sb; d < -4 || d > 4 {
				t.Errorf("floor sends %.0f RDS bytes per stream, shiftplane %.0f: not comparable", fb, sb)
			}
		})
	}
}

// TestDeltaStorm is the reconnect storm over delta xDS. A resumed delta
// stream sends initial_resource_versions and gets no EDS or RDS response
// when nothing changed; xds.Fleet must still count it converged.
func TestDeltaStorm(t *testing.T) {
	const n = 20
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sp, err := StartShiftplane()
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Stop()
	cl := &LocalClients{Mode: fleetsim.Delta}
	defer cl.Close()
	if _, err := cl.Connect(ctx, sp.Addr(), n); err != nil {
		t.Fatal(err)
	}
	checkStorm(ctx, t, sp, cl, n)
}

func checkStorm(ctx context.Context, t *testing.T, sp *Shiftplane, cl Clients, n int) {
	t.Helper()
	storm, err := RunStorm(ctx, sp, cl, n)
	if err != nil {
		t.Fatal(err)
	}
	if storm.Lost != 0 || storm.Extra != 0 {
		t.Errorf("storm lost %d streams, %d extra", storm.Lost, storm.Extra)
	}
}

func canaryWeight(t *testing.T, c *fleetsim.Client) uint32 {
	t.Helper()
	for _, a := range c.Resources(fleetsim.RDS) {
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			t.Fatal(err)
		}
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				for _, cw := range r.GetRoute().GetWeightedClusters().GetClusters() {
					if cw.GetName() == Plan().Canary.Cluster {
						return cw.GetWeight().GetValue()
					}
				}
			}
		}
	}
	t.Fatalf("node %s: no weighted canary route", c.ID())
	return 0
}

// BenchmarkWeightStep is the short form of the table (N=100, in-process
// clients): one op is one weight step, publish → every stream ACKed.
// Extra metrics: p50-ms, p99-ms, rds-B/stream (bytes per stream per step)
// and, for shiftplane, the ratio to the floor's p99 in the same run.
func BenchmarkWeightStep(b *testing.B) {
	const n = 100
	for _, mode := range []fleetsim.Mode{fleetsim.SotW, fleetsim.Delta} {
		var floorP99 time.Duration
		for _, server := range []string{"floor", "shiftplane"} {
			b.Run(fmt.Sprintf("%s/%s/N=%d", mode, server, n), func(b *testing.B) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				var tg Target
				var err error
				if server == "floor" {
					tg, err = StartFloor()
				} else {
					tg, err = StartShiftplane()
				}
				if err != nil {
					b.Fatal(err)
				}
				defer tg.Stop()
				cl := &LocalClients{Mode: mode}
				defer cl.Close()
				if _, err := cl.Connect(ctx, tg.Addr(), n); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				st, err := RunSteps(ctx, tg, cl, n, 0, 1, b.N, 0)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				p99 := Percentile(st.Latency, 99)
				b.ReportMetric(float64(Percentile(st.Latency, 50).Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
				rds, _ := st.PerStreamStep(fleetsim.RDS)
				b.ReportMetric(rds, "rds-B/stream")
				var other float64
				for typ := range fleetsim.RDS {
					bb, _ := st.PerStreamStep(typ)
					other += bb
				}
				b.ReportMetric(other, "cds+eds+lds-B/stream")
				if server == "floor" {
					floorP99 = p99
				} else if floorP99 > 0 {
					b.ReportMetric(float64(p99)/float64(floorP99), "p99/floor")
				}
			})
		}
	}
}

// BenchmarkTranslate is 1,000 plans → Envoy resources → a consistent
// snapshot with a version per type, as Publisher.Set builds it.
func BenchmarkTranslate(b *testing.B) {
	for _, shared := range []bool{true, false} {
		name := "listener-per-plan"
		if shared {
			name = "shared-listener"
		}
		b.Run(fmt.Sprintf("plans=1000/%s", name), func(b *testing.B) {
			plans := Plans(1000, shared)
			weights := make([]int, len(plans))
			ds := StateOf(plans, weights)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				res, err := xds.Translate(ds)
				if err != nil {
					b.Fatal(err)
				}
				snap := &cachev3.Snapshot{}
				for typ, rs := range map[string][]types.Resource{
					resourcev3.ClusterType:  res.Clusters,
					resourcev3.EndpointType: res.Endpoints,
					resourcev3.ListenerType: res.Listeners,
					resourcev3.RouteType:    res.Routes,
				} {
					snap.Resources[cachev3.GetResponseType(typ)] = cachev3.NewResources("1", rs)
				}
				if err := snap.Consistent(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPublish is one weight step of one plan among 1,000 (one endpoint
// per backend), and among 100 with policy.MaxEndpoints per backend, through
// Publisher.Set on a real cache with no streams: translate, compare with the
// last snapshot per type, build, check and set.
func BenchmarkPublish(b *testing.B) {
	type shape struct {
		plans, endpoints int
		shared           bool
	}
	for _, sh := range []shape{{1000, 1, true}, {1000, 1, false}, {100, policy.MaxEndpoints, true}} {
		name := "listener-per-plan"
		if sh.shared {
			name = "shared-listener"
		}
		b.Run(fmt.Sprintf("plans=%d/endpoints=%d/%s", sh.plans, sh.endpoints, name), func(b *testing.B) {
			plans := Plans(sh.plans, sh.shared)
			for i := range plans {
				for e := 1; e < sh.endpoints; e++ {
					plans[i].Stable.Endpoints = append(plans[i].Stable.Endpoints, fmt.Sprintf("10.%d.%d.%d:%d", i/250, i%250, e%250, 8000+e/250))
					plans[i].Canary.Endpoints = append(plans[i].Canary.Endpoints, fmt.Sprintf("10.%d.%d.%d:%d", i/250, i%250, e%250, 9000+e/250))
				}
			}
			weights := make([]int, len(plans))
			pub := xds.NewPublisher(xds.NewCache(), &Counter{}, time.Now, nil)
			ctx := context.Background()
			if _, err := pub.Set(ctx, StateOf(plans, weights), "initial"); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				weights[len(plans)/2] = StepWeight(i)
				i++
				rec, err := pub.Set(ctx, StateOf(plans, weights), "step")
				if err != nil {
					b.Fatal(err)
				}
				if len(rec.Changed) != 1 {
					b.Fatalf("changed %v, want routes only", rec.Changed)
				}
			}
		})
	}
}
