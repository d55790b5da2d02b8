package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

// TestKillLoopNeverGoesBack SIGKILLs `shiftplane serve` 10 times while a
// fast rollout moves (linear 5% every 200ms, minRequests 0) and reads the
// weight through the server's /metrics before each kill and after each
// restart: it never goes backwards, and the rollout still completes.
func TestKillLoopNeverGoesBack(t *testing.T) {
	sp := StartShiftplane(t)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("web.yaml", fmt.Sprintf(`name: web
listener: {address: %q}
stable: {cluster: web-v1, endpoints: [%q]}
canary: {cluster: web-v2, endpoints: [%q]}
linear: {step: 5, every: 200ms}
analysis: {minRequests: 0}
`, listen, v1.Addr, v2.Addr))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-kill", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatalf("listener never came up: %v", err)
	}
	const kills = 10
	var seen []float64
	last := 0.0
	for i := 0; i < kills; i++ {
		time.Sleep(time.Duration(1500+97*i%500) * time.Millisecond) // long enough for steps to pass between kills
		before := sp.Metric(`shiftplane_rollout_canary_weight{rollout="web"}`)
		if err := sp.Proc.Kill(); err != nil {
			t.Fatal(err)
		}
		<-sp.Proc.Done()
		sp.Start()
		after := sp.Metric(`shiftplane_rollout_canary_weight{rollout="web"}`)
		seen = append(seen, before, after)
		if before < last || after < before {
			t.Fatalf("kill %d: weight went backwards: %v (before kill %v, after restart %v)", i+1, seen, before, after)
		}
		last = after
	}
	t.Logf("%d SIGKILLs; weight before each kill / after each restart: %v", kills, seen)
	sp.WaitPhase("web", "SUCCEEDED", time.Minute)
}
