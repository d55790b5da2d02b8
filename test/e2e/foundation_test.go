package e2e

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

func weightPlan(listen string, v1, v2 *harness.Backend, first int) string {
	return fmt.Sprintf(`name: web
listener: {address: %q}
stable: {cluster: web-v1, endpoints: [%q]}
canary: {cluster: web-v2, endpoints: [%q]}
steps:
  - {weight: %d, hold: 1h}
  - {weight: 100}
`, listen, v1.Addr, v2.Addr, first)
}

// weightRig is shiftplane with the web plan at a first weight, two
// backends and one Envoy whose listener is up and routes carry that weight.
type weightRig struct {
	sp     *Shiftplane
	envoy  *harness.Envoy
	v1, v2 *harness.Backend
	listen string
}

func startWeightRig(t *testing.T, opts harness.EnvoyOptions, first int) *weightRig {
	t.Helper()
	r := &weightRig{sp: StartShiftplane(t), v1: harness.StartBackend(t, "v1"), v2: harness.StartBackend(t, "v2")}
	r.listen = fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	r.sp.WritePlan("web.yaml", weightPlan(r.listen, r.v1, r.v2, first))
	opts.Cluster, opts.XDSAddr = "e2e", r.sp.XDSAddr
	r.envoy = harness.StartEnvoy(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.envoy.WaitListener(ctx, r.listen); err != nil {
		t.Fatalf("listener never came up: %v", err)
	}
	WaitRouteWeights(t, r.envoy, "web-v2", uint32(first))
	return r
}

// setWeight rewrites the plan's first step and waits for Envoy to have it.
func (r *weightRig) setWeight(t *testing.T, w int) {
	t.Helper()
	r.sp.WritePlan("web.yaml", weightPlan(r.listen, r.v1, r.v2, w))
	WaitRouteWeights(t, r.envoy, "web-v2", uint32(w))
}

// split sends 2,000 requests through Envoy and fails the test unless none
// failed and the v2 share is within 3 points of weight.
func (r *weightRig) split(ctx context.Context, t *testing.T, label string, weight int) harness.LoadResult {
	t.Helper()
	res, err := harness.HTTPLoad(ctx, "http://"+r.listen+"/", harness.LoadOptions{Requests: 2000, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	share := Share(res, "v2")
	t.Logf("%s, weight %d: %d requests, %d failed, v2 share %.1f%%", label, weight, res.Total, res.Failures, 100*share)
	// Envoy picks a weighted cluster at random per request: allow 4σ of
	// the binomial spread (±0.045 at 50 % of 2,000; ±0.03 was 2.7σ and
	// failed about one run in a hundred).
	p := float64(weight) / 100
	tol := 4 * math.Sqrt(p*(1-p)/float64(max(res.Total, 1)))
	if res.Failures != 0 || math.Abs(share-p) > tol {
		t.Fatalf("%s, weight %d: %d failed (first error %q), v2 share %.3f, want 0 failed and %.2f ± %.3f",
			label, weight, res.Failures, res.FirstError, share, p, tol)
	}
	return res
}

// A plan at weight 20 splits real traffic 80/20 through Envoy; editing the
// file to 50 moves it without an Envoy restart and without a failed request.
func TestPlanWeightThroughEnvoy(t *testing.T) {
	r := startWeightRig(t, harness.EnvoyOptions{NodeID: "envoy-e2e"}, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if res := r.split(ctx, t, "sotw", 20); res.Total != 2000 {
		t.Fatalf("weight 20: %d of 2000 requests answered", res.Total)
	}

	// Load runs across the change: no request may fail while Envoy moves.
	during := make(chan harness.LoadResult, 1)
	go func() {
		res, _ := harness.HTTPLoad(ctx, "http://"+r.listen+"/", harness.LoadOptions{Duration: 3 * time.Second, Concurrency: 4})
		during <- res
	}()
	time.Sleep(500 * time.Millisecond)
	pid := r.envoy.PID()
	r.setWeight(t, 50)
	d := <-during
	t.Logf("during the change: %d requests, %d failed", d.Total, d.Failures)
	if d.Failures != 0 || d.Total == 0 {
		t.Fatalf("during the change: %d of %d requests failed (first error %q)", d.Failures, d.Total, d.FirstError)
	}
	if r.envoy.PID() != pid {
		t.Fatal("Envoy was restarted; the change must arrive over xDS")
	}

	r.split(ctx, t, "sotw", 50)
	if w := r.sp.Metric(`shiftplane_rollout_canary_weight{rollout="web"}`); w != 50 {
		t.Fatalf("shiftplane_rollout_canary_weight = %v, want 50", w)
	}
}

// An invalid edit of a running plan is rejected and the fleet keeps its weights.
func TestInvalidPlanEditChangesNothing(t *testing.T) {
	r := startWeightRig(t, harness.EnvoyOptions{NodeID: "envoy-bad"}, 30)
	r.sp.WritePlan("web.yaml", weightPlan(r.listen, r.v1, r.v2, 120))
	time.Sleep(1500 * time.Millisecond) // the watcher debounces for 200 ms
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := r.envoy.RouteWeights(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w["web-v2"] != 30 {
		t.Fatalf("after an invalid edit the route weight is %d, want 30 kept", w["web-v2"])
	}
	if out := r.sp.Proc.Output(); !containsAll(out, "steps[0].weight", "must be within 0..100, got 120") {
		t.Fatalf("the log does not name the bad field:\n%s", out)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// The same split over delta ADS: Envoy subscribes with DELTA_GRPC.
func TestPlanWeightThroughEnvoyDelta(t *testing.T) {
	r := startWeightRig(t, harness.EnvoyOptions{NodeID: "envoy-delta", Delta: true}, 40)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r.split(ctx, t, "delta", 40)
	r.setWeight(t, 60)
}
