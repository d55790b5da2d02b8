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

// No evidence is not clearance: these tests give shiftplane a real Envoy
// and take away the good news it must not invent.

// rolloutStatus reads one rollout through the policy API.
func rolloutStatus(t *testing.T, rc shiftplanev1.RolloutServiceClient, name string) *shiftplanev1.Rollout {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := rc.Get(ctx, &shiftplanev1.GetRequest{Name: name})
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return resp.GetRollout()
}

// A canary behind a listener that receives no requests never passes its
// first step, and says why; the same rollout proceeds once load arrives.
func TestNoTrafficNeverPassesFirstStep(t *testing.T) {
	r := startSignalRig(t, "quiet", "60s")
	rc, _ := apiClients(t, r.sp)
	WaitRouteWeights(t, r.envoy, "quiet-v2", 25)
	// Three times the first step's hold (4s), with Envoy reporting stats.
	time.Sleep(12 * time.Second)
	st := rolloutStatus(t, rc, "quiet")
	t.Logf("after 12s with no requests: %s weight %d step %d/%d: %s", st.GetPhase(), st.GetCanaryWeight(), st.GetStepIndex()+1, st.GetStepCount(), st.GetMessage())
	// No data is not 0%: the Envoy reports, but no request was counted, so
	// the observed split has no share.
	if o := st.GetObserved(); o == nil || o.GetNodes() == 0 || o.CanaryShare != nil || o.GetStableRequests()+o.GetCanaryRequests() != 0 {
		t.Errorf("observed split with no requests: %v, want a reporting node and no share", o)
	}
	if st.GetStepIndex() != 0 || st.GetCanaryWeight() != 25 || st.GetPhase() != shiftplanev1.Phase_PHASE_HOLDING {
		t.Fatalf("a canary that got no traffic moved on: %s at step %d weight %d", st.GetPhase(), st.GetStepIndex()+1, st.GetCanaryWeight())
	}
	if !strings.Contains(st.GetMessage(), "no requests reached quiet-v2 in the last 3s") {
		t.Errorf("reason %q does not say that no requests reached the canary", st.GetMessage())
	}
	if v2 := r.v2.Requests(); v2 != 0 {
		t.Fatalf("the canary backend saw %d requests; the test needs none", v2)
	}

	r.startLoad(40 * time.Second)
	start := time.Now()
	r.sp.WaitPhase("quiet", "SUCCEEDED", 35*time.Second)
	res := r.stopLoad()
	t.Logf("with load: SUCCEEDED %s after the load started; %d requests, %d failed, v2 served %d", time.Since(start).Round(100*time.Millisecond), res.Total, res.Failures, r.v2.Requests())
	if res.Failures != 0 {
		t.Errorf("%d requests failed", res.Failures)
	}
}

// A listener whose port is taken is NACKed by Envoy: the rollout holds at
// PENDING naming the node and Envoy's error, never moves traffic, and
// proceeds once the plan is fixed.
func TestListenerNACKHoldsRollout(t *testing.T) {
	sp := StartShiftplane(t)
	rc, fc := apiClients(t, sp)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	bad := taken.Addr().String()
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-nack", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	plan := func(listen string) string {
		return fmt.Sprintf(`name: nack
listener: {address: %q}
stable: {cluster: nack-v1, endpoints: [%q]}
canary: {cluster: nack-v2, endpoints: [%q]}
steps: [{weight: 50, hold: 2s}, {weight: 100}]
analysis: {stableFor: 1s, staleAfter: 3s, drainTimeout: 2s, minRequests: 0}
`, listen, v1.Addr, v2.Addr)
	}
	sp.WritePlan("nack.yaml", plan(bad))

	var st *shiftplanev1.Rollout
	waitFor(t, 20*time.Second, "the rollout to report Envoy's listener NACK", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := rc.Get(ctx, &shiftplanev1.GetRequest{Name: "nack"})
		if err != nil {
			return false, err.Error() // the watcher may not have applied the file yet
		}
		st = resp.GetRollout()
		return strings.Contains(st.GetMessage(), "rejected Listener") && strings.Contains(st.GetMessage(), "Address already in use") && strings.Contains(st.GetMessage(), "envoy-nack"), st.GetMessage()
	})
	t.Logf("listener on a taken port: %s: %s", st.GetPhase(), st.GetMessage())
	// Longer than the whole schedule: nothing moves, nothing converges.
	time.Sleep(5 * time.Second)
	st = rolloutStatus(t, rc, "nack")
	if st.GetPhase() != shiftplanev1.Phase_PHASE_PENDING || st.GetCanaryWeight() != 0 || st.GetFleet().GetConverged() {
		t.Fatalf("after a listener NACK: %s weight %d converged %v, want PENDING at 0, not converged", st.GetPhase(), st.GetCanaryWeight(), st.GetFleet().GetConverged())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := fc.ListNodes(ctx, &shiftplanev1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.GetNodes() {
		if n.GetId() == "envoy-nack" && n.GetConverged() {
			t.Errorf("fleet shows envoy-nack converged while it rejects the listener")
		}
	}

	good := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("nack.yaml", plan(good))
	waitCtx, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if err := envoy.WaitListener(waitCtx, good); err != nil {
		t.Fatal(err)
	}
	sp.WaitPhase("nack", "SUCCEEDED", 30*time.Second)
	t.Logf("plan fixed to %s: SUCCEEDED", good)
}

// With Envoy's default outlier settings (30s base ejection: the host comes
// back between ejections) a canary answering 503 to every request rolls
// back within rollbackAfter plus 2s.
func TestFailingCanaryRollsBackWithDefaults(t *testing.T) {
	sp := StartShiftplane(t)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	v2.SetFailing(503)
	const rollbackAfter = 35 * time.Second
	sp.WritePlan("bad.yaml", fmt.Sprintf(`name: bad
listener: {address: %q}
stable: {cluster: bad-v1, endpoints: [%q]}
canary: {cluster: bad-v2, endpoints: [%q]}
steps: [{weight: 20, hold: 5m}, {weight: 100}]
analysis: {rollbackAfter: %s}
`, listen, v1.Addr, v2.Addr, rollbackAfter))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-bad", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatal(err)
	}
	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	done := make(chan harness.LoadResult, 1)
	go func() {
		res, _ := harness.HTTPLoad(loadCtx, "http://"+listen+"/", harness.LoadOptions{Duration: 90 * time.Second, Rate: 200, Concurrency: 8})
		done <- res
	}()
	WaitRouteWeights(t, envoy, "bad-v2", 20)
	var first time.Time
	waitFor(t, 10*time.Second, "the first 503 from v2", func() (bool, string) {
		if v2.Failures() > 0 {
			first = time.Now()
			return true, ""
		}
		return false, "none yet"
	})
	rolled := sp.WaitPhaseAny("bad", rollbackAfter+30*time.Second, "ROLLING_BACK", "ROLLED_BACK")
	took := rolled.Sub(first)
	WaitRouteWeights(t, envoy, "bad-v2", 0)
	stopLoad()
	res := <-done
	t.Logf("first 503 → ROLLING_BACK: %s (rollbackAfter %s); v2 answered %d requests with 503; load %d requests, %d failed",
		took.Round(100*time.Millisecond), rollbackAfter, v2.Failures(), res.Total, res.Failures)
	// The streak starts at the first report that shows the failure (one
	// 1s stats flush after the first 503).
	if took > rollbackAfter+2*time.Second {
		t.Fatalf("rolled back %s after the first 503, want within rollbackAfter (%s) + 2s", took, rollbackAfter)
	}
	if took < rollbackAfter {
		t.Fatalf("rolled back %s after the first 503, before rollbackAfter (%s)", took, rollbackAfter)
	}
}
