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

// A plan at weight 20 splits real traffic 80/20 through Envoy; editing the
// file to 50 moves it without an Envoy restart and without a failed request.
func TestPlanWeightThroughEnvoy(t *testing.T) {
	sp := StartShiftplane(t)
	v1 := harness.StartBackend(t, "v1")
	v2 := harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("web.yaml", weightPlan(listen, v1, v2, 20))

	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-e2e", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatalf("listener never came up: %v", err)
	}
	WaitRouteWeights(t, envoy, "web-v2", 20)

	res, err := harness.HTTPLoad(ctx, "http://"+listen+"/", harness.LoadOptions{Requests: 2000, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	share := Share(res, "v2")
	t.Logf("weight 20: %d requests, %d failed, v2 share %.1f%%", res.Total, res.Failures, 100*share)
	if res.Failures != 0 || res.Total != 2000 {
		t.Fatalf("weight 20: %d of %d requests failed (first error %q)", res.Failures, res.Total, res.FirstError)
	}
	if math.Abs(share-0.20) > 0.03 {
		t.Fatalf("weight 20: v2 share %.3f, want 0.20 ± 0.03", share)
	}

	// Load runs across the change: no request may fail while Envoy moves.
	during := make(chan harness.LoadResult, 1)
	go func() {
		r, _ := harness.HTTPLoad(ctx, "http://"+listen+"/", harness.LoadOptions{Duration: 3 * time.Second, Concurrency: 4})
		during <- r
	}()
	time.Sleep(500 * time.Millisecond)
	pid := envoy.PID()
	sp.WritePlan("web.yaml", weightPlan(listen, v1, v2, 50))
	WaitRouteWeights(t, envoy, "web-v2", 50)
	d := <-during
	t.Logf("during the change: %d requests, %d failed", d.Total, d.Failures)
	if d.Failures != 0 || d.Total == 0 {
		t.Fatalf("during the change: %d of %d requests failed (first error %q)", d.Failures, d.Total, d.FirstError)
	}
	if envoy.PID() != pid {
		t.Fatal("Envoy was restarted; the change must arrive over xDS")
	}

	res, err = harness.HTTPLoad(ctx, "http://"+listen+"/", harness.LoadOptions{Requests: 2000, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	share = Share(res, "v2")
	t.Logf("weight 50: %d requests, %d failed, v2 share %.1f%%", res.Total, res.Failures, 100*share)
	if res.Failures != 0 || math.Abs(share-0.50) > 0.03 {
		t.Fatalf("weight 50: %d failed, v2 share %.3f, want 0 failed and 0.50 ± 0.03", res.Failures, share)
	}
	if w := sp.Metric(`shiftplane_rollout_canary_weight{rollout="web"}`); w != 50 {
		t.Fatalf("shiftplane_rollout_canary_weight = %v, want 50", w)
	}
}

// An invalid edit of a running plan is rejected and the fleet keeps its weights.
func TestInvalidPlanEditChangesNothing(t *testing.T) {
	sp := StartShiftplane(t)
	v1 := harness.StartBackend(t, "v1")
	v2 := harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("web.yaml", weightPlan(listen, v1, v2, 30))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-bad", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	WaitRouteWeights(t, envoy, "web-v2", 30)

	sp.WritePlan("web.yaml", weightPlan(listen, v1, v2, 120))
	time.Sleep(1500 * time.Millisecond) // the watcher debounces for 200 ms
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := envoy.RouteWeights(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w["web-v2"] != 30 {
		t.Fatalf("after an invalid edit the route weight is %d, want 30 kept", w["web-v2"])
	}
	if out := sp.Proc.Output(); !containsAll(out, "steps[0].weight", "must be within 0..100, got 120") {
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
	sp := StartShiftplane(t)
	v1 := harness.StartBackend(t, "v1")
	v2 := harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("web.yaml", weightPlan(listen, v1, v2, 40))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-delta", Cluster: "e2e", XDSAddr: sp.XDSAddr, Delta: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatalf("listener never came up: %v", err)
	}
	WaitRouteWeights(t, envoy, "web-v2", 40)
	res, err := harness.HTTPLoad(ctx, "http://"+listen+"/", harness.LoadOptions{Requests: 2000, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	share := Share(res, "v2")
	t.Logf("delta, weight 40: %d requests, %d failed, v2 share %.1f%%", res.Total, res.Failures, 100*share)
	if res.Failures != 0 || math.Abs(share-0.40) > 0.03 {
		t.Fatalf("delta: %d failed, v2 share %.3f, want 0 failed and 0.40 ± 0.03", res.Failures, share)
	}
	sp.WritePlan("web.yaml", weightPlan(listen, v1, v2, 60))
	WaitRouteWeights(t, envoy, "web-v2", 60)
}
