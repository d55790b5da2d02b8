package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/harness"
)

// One plan Envoy rejects (its listener's port is taken: Envoy NACKs the
// listener update, which validation cannot foresee) must not freeze the
// rollout beside it: the rejected rollout is left out of the fleet's config
// and holds with Envoy's error, the other keeps stepping, and its abort
// reaches Envoy's config at once.
func TestRejectedPlanDoesNotHoldOthers(t *testing.T) {
	sp := StartShiftplane(t)
	rc, _ := apiClients(t, sp)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	good := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-blast", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	sp.WritePlan("good.yaml", fmt.Sprintf(`name: good
listener: {address: %q}
stable: {cluster: good-v1, endpoints: [%q]}
canary: {cluster: good-v2, endpoints: [%q]}
linear: {step: 5, every: 700ms}
analysis: {minRequests: 0}
`, good, v1.Addr, v2.Addr))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, good); err != nil {
		t.Fatalf("listener never came up: %v", err)
	}
	canary := func() uint32 {
		t.Helper()
		ws, err := envoy.RouteWeights(ctx)
		if err != nil {
			t.Fatalf("Envoy's route weights: %v", err)
		}
		return ws["good-v2"]
	}
	WaitRouteWeights(t, envoy, "good-v2", 10)

	sp.WritePlan("bad.yaml", fmt.Sprintf(`name: bad
listener: {address: %q}
stable: {cluster: bad-v1, endpoints: [%q]}
canary: {cluster: bad-v2, endpoints: [%q]}
steps: [{weight: 50, hold: 1s}, {weight: 100}]
analysis: {minRequests: 0}
`, taken.Addr().String(), v1.Addr, v2.Addr))
	var bad *shiftplanev1.Rollout
	waitFor(t, 20*time.Second, "the bad rollout to report Envoy's NACK", func() (bool, string) {
		gctx, c := context.WithTimeout(ctx, 5*time.Second)
		defer c()
		resp, err := rc.Get(gctx, &shiftplanev1.GetRequest{Name: "bad"})
		if err != nil {
			return false, err.Error()
		}
		bad = resp.GetRollout()
		return strings.Contains(bad.GetMessage(), "Address already in use"), bad.GetMessage()
	})
	rejectedAt := canary()
	// The rollout beside it goes on stepping: at least three steps (of
	// 700 ms holds; without the quarantine it never passes the next one).
	// 20 s allows for a stats gap on a loaded machine, which holds it as
	// stale for a moment.
	waitFor(t, 20*time.Second, "the good rollout to step on past the rejected plan", func() (bool, string) {
		w := canary()
		return w >= rejectedAt+15, fmt.Sprintf("good-v2 at %d (was %d when bad was rejected)", w, rejectedAt)
	})
	stepped := canary()
	if st := rolloutStatus(t, rc, "bad"); st.GetPhase() != shiftplanev1.Phase_PHASE_PENDING || st.GetFleet().GetConverged() || st.GetCanaryWeight() != 0 {
		t.Fatalf("the rejected rollout: %s weight %d converged %v, want PENDING at 0, not converged", st.GetPhase(), st.GetCanaryWeight(), st.GetFleet().GetConverged())
	}
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	start := time.Now()
	_, err = rc.Abort(actx, &shiftplanev1.AbortRequest{Name: "good", Reason: "blast radius test"})
	acancel()
	if err != nil {
		t.Fatalf("abort good: %v", err)
	}
	reached := waitFor(t, 5*time.Second, "good's abort to reach Envoy", func() (bool, string) {
		w := canary()
		return w == 0, fmt.Sprintf("good-v2 at %d", w)
	})
	took := reached.Sub(start)
	if took > 3*time.Second {
		t.Fatalf("good's abort took %s to reach Envoy's config", took)
	}
	waitFor(t, 10*time.Second, "good ABORTED", func() (bool, string) {
		st := rolloutStatus(t, rc, "good")
		return st.GetPhase() == shiftplanev1.Phase_PHASE_ABORTED && st.GetCanaryWeight() == 0, st.GetPhase().String()
	})
	t.Logf("bad plan rejected (%s); good stepped %d → %d beside it; good's abort reached Envoy's config_dump in %s",
		bad.GetMessage(), rejectedAt, stepped, took.Round(time.Millisecond))
}
