package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

func signalPlan(name, listen string, v1, v2 *harness.Backend, rollbackAfter string) string {
	return fmt.Sprintf(`name: %s
listener: {address: %q}
stable: {cluster: %s-v1, endpoints: [%q]}
canary: {cluster: %s-v2, endpoints: [%q]}
outlierDetection: {consecutive5xx: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}
steps:
  - {weight: 25, hold: 4s}
  - {weight: 50, hold: 3s}
  - {weight: 100}
analysis: {stableFor: 2s, staleAfter: 3s, rollbackAfter: %s, drainTimeout: 3s}
`, name, listen, name, v1.Addr, name, v2.Addr, rollbackAfter)
}

// signalRig is shiftplane, one Envoy, two backends and steady load.
type signalRig struct {
	sp     *Shiftplane
	envoy  *harness.Envoy
	v1, v2 *harness.Backend
	listen string
	load   chan harness.LoadResult
	stop   context.CancelFunc
}

func startSignalRig(t *testing.T, name, rollbackAfter string) *signalRig {
	t.Helper()
	r := &signalRig{sp: StartShiftplane(t), v1: harness.StartBackend(t, "v1"), v2: harness.StartBackend(t, "v2")}
	r.listen = fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	r.sp.WritePlan(name+".yaml", signalPlan(name, r.listen, r.v1, r.v2, rollbackAfter))
	r.envoy = harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-" + name, Cluster: "e2e", XDSAddr: r.sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.envoy.WaitListener(ctx, r.listen); err != nil {
		t.Fatal(err)
	}
	return r
}

// startLoad sends 200 requests/s through Envoy for at most d; stopLoad ends
// it early and returns what it saw.
func (r *signalRig) startLoad(d time.Duration) {
	r.load = make(chan harness.LoadResult, 1)
	var ctx context.Context
	ctx, r.stop = context.WithCancel(context.Background())
	go func() {
		res, _ := harness.HTTPLoad(ctx, "http://"+r.listen+"/", harness.LoadOptions{Duration: d, Rate: 200, Concurrency: 8})
		r.load <- res
	}()
}

func (r *signalRig) stopLoad() harness.LoadResult {
	r.stop()
	return <-r.load
}

// The canary starts failing mid-rollout: Envoy ejects it, the rollout holds
// within a stats flush plus a second, then resumes and completes once the
// canary recovers.
func TestOutlierEjectionHoldsThenResumes(t *testing.T) {
	r := startSignalRig(t, "hold", "60s")
	r.startLoad(40 * time.Second)
	WaitRouteWeights(t, r.envoy, "hold-v2", 25)
	// Past the first stats flush and stableFor: the hold is counting.
	r.sp.WaitSteady("hold", "PROGRESSING", time.Second, 20*time.Second)

	r.v2.SetFailing(503)
	var first503 time.Time
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if r.v2.Failures() > 0 {
			first503 = time.Now()
			break
		}
	}
	if first503.IsZero() {
		t.Fatal("v2 never answered 503 under load")
	}
	held := r.sp.WaitPhase("hold", "HOLDING", 10*time.Second)
	took := held.Sub(first503)
	t.Logf("first 503 → HOLDING: %s (limit: flush interval 1s + 1s)", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Fatalf("HOLDING came %s after the first 503; want ≤ 2s", took)
	}
	// While firing the weight does not move, however long the hold was.
	for i := 0; i < 20; i++ {
		if w := r.sp.Metric(`shiftplane_rollout_canary_weight{rollout="hold"}`); w != 25 {
			t.Fatalf("weight moved to %v while the canary was ejected", w)
		}
		time.Sleep(100 * time.Millisecond)
	}

	r.v2.SetFailing(0)
	r.sp.WaitPhase("hold", "SUCCEEDED", 30*time.Second)
	res := r.stopLoad()
	t.Logf("load: %d requests, %d failed (all from v2 while it answered 503: %d)", res.Total, res.Failures, r.v2.Failures())
	if bad := res.Failures - int(r.v2.Failures()); bad > 0 {
		t.Fatalf("%d failures did not come from the failing canary", bad)
	}
}

// The canary stays bad: the rollout rolls back to 0 after rollbackAfter,
// and requests that reach v1 keep succeeding throughout.
func TestOutlierEjectionRollsBack(t *testing.T) {
	r := startSignalRig(t, "rb", "4s")
	r.startLoad(20 * time.Second)
	WaitRouteWeights(t, r.envoy, "rb-v2", 25)
	r.sp.WaitSteady("rb", "PROGRESSING", time.Second, 20*time.Second)
	r.v2.SetFailing(503)
	r.sp.WaitPhase("rb", "HOLDING", 10*time.Second)
	r.sp.WaitPhase("rb", "ROLLED_BACK", 15*time.Second)
	WaitRouteWeights(t, r.envoy, "rb-v2", 0)
	if w := r.sp.Metric(`shiftplane_rollout_canary_weight{rollout="rb"}`); w != 0 {
		t.Fatalf("weight after rollback = %v, want 0", w)
	}
	time.Sleep(time.Second) // traffic on weight 0
	res := r.stopLoad()
	v1OK := res.ByVersionStatus[harness.VersionStatus{Version: "v1", Status: 200}]
	v1All := res.ByVersion["v1"]
	t.Logf("load: %d requests; v1 answered %d, all 200: %v; failures %d (v2 503s: %d)", res.Total, v1All, v1OK == v1All, res.Failures, r.v2.Failures())
	if v1All == 0 || v1OK != v1All {
		t.Fatalf("v1 answered %d requests, %d of them 200; want all 200", v1All, v1OK)
	}
}

// Envoy dies mid-rollout: the signal goes stale within staleAfter and the
// weight does not advance until a node reports again.
func TestEnvoyGoneMakesSignalStale(t *testing.T) {
	r := startSignalRig(t, "stale", "60s")
	// Load, so the hold counts (no evidence is not clearance); requests
	// sent while Envoy is down fail, and are not what this test measures.
	r.startLoad(60 * time.Second)
	defer r.stopLoad()
	r.sp.WaitSteady("stale", "PROGRESSING", time.Second, 20*time.Second)
	if err := r.envoy.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	held := r.sp.WaitPhase("stale", "HOLDING", 10*time.Second)
	t.Logf("Envoy killed → HOLDING (stale): %s (staleAfter 3s)", held.Sub(killed).Round(time.Millisecond))
	if held.Sub(killed) > 3*time.Second+time.Second {
		t.Fatalf("stale took %s, want within staleAfter (3s) plus a tick", held.Sub(killed))
	}
	// Longer than the step's hold: the weight must stay.
	time.Sleep(5 * time.Second)
	if w := r.sp.Metric(`shiftplane_rollout_canary_weight{rollout="stale"}`); w != 25 {
		t.Fatalf("weight moved to %v with no node reporting", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.envoy.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	r.sp.WaitPhase("stale", "SUCCEEDED", 40*time.Second)
}
