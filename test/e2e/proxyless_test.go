package e2e

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/harness"
)

// Proxyless gRPC: real grpc-go xds:/// clients (test/harness GRPCClient)
// and a real Envoy on one `shiftplane serve`. The clients' only signal is
// the Load Reporting Service on xds.address.

const (
	lrsInterval = time.Second
	grpcRate    = 400 // RPCs per second per client
	grpcWorkers = 8
)

// proxylessRig is shiftplane, one Envoy, two backends that speak gRPC and
// HTTP on one port, and the rollout's listener and gRPC target.
type proxylessRig struct {
	sp     *Shiftplane
	rc     shiftplanev1.RolloutServiceClient
	fc     shiftplanev1.FleetServiceClient
	envoy  *harness.Envoy
	v1, v2 *harness.GRPCBackend
	listen string
	target string
}

func startProxylessRig(t *testing.T, name string) *proxylessRig {
	t.Helper()
	r := &proxylessRig{
		sp:     StartShiftplane(t, "--xds-load-reporting-interval", lrsInterval.String()),
		v1:     harness.StartGRPCBackend(t, "v1"),
		v2:     harness.StartGRPCBackend(t, "v2"),
		listen: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
		target: name + ".example:50051",
	}
	r.rc, r.fc = apiClients(t, r.sp)
	r.envoy = harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-" + name, Cluster: "e2e", XDSAddr: r.sp.XDSAddr})
	return r
}

// plan is a rollout serving both Envoy's listener and targets.
func (r *proxylessRig) plan(name string, targets []string, steps, analysis string) string {
	q := make([]string, len(targets))
	for i, tg := range targets {
		q[i] = fmt.Sprintf("%q", tg)
	}
	return fmt.Sprintf(`name: %s
listener: {address: %q, grpcTargets: [%s]}
stable: {cluster: %s-v1, endpoints: [%q]}
canary: {cluster: %s-v2, endpoints: [%q]}
outlierDetection: {consecutive5xx: 5, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}
steps: %s
analysis: %s
`, name, r.listen, strings.Join(q, ", "), name, r.v1.Addr, name, r.v2.Addr, steps, analysis)
}

func (r *proxylessRig) client(t *testing.T, node, target string) *harness.GRPCClient {
	t.Helper()
	c := harness.StartGRPCClient(t, harness.GRPCClientOptions{XDSAddr: r.sp.XDSAddr, NodeID: node, Target: target})
	t.Logf("grpc client %s: xds:///%s, bootstrap %s, %d RPCs/s over %d workers, LRS interval %s", node, target, c.Bootstrap, grpcRate, grpcWorkers, lrsInterval)
	return c
}

// stepSample is the load's counts when the rollout was seen at a weight.
type stepSample struct {
	at        time.Time
	weight    int32
	phase     shiftplanev1.Phase
	converged bool
	counts    harness.GRPCCounts
}

// recorder polls the rollout and the load every 100 ms, so the calls can
// be split by the weight in force.
type recorder struct {
	stop    context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	samples []stepSample
}

func record(r *proxylessRig, name string, load *harness.GRPCLoad) *recorder {
	ctx, cancel := context.WithCancel(context.Background())
	rec := &recorder{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(rec.done)
		for ctx.Err() == nil {
			st, err := getRolloutNamed(ctx, r.rc, name)
			if err == nil {
				s := stepSample{at: time.Now(), weight: st.GetCanaryWeight(), phase: st.GetPhase(), converged: st.GetFleet().GetConverged(), counts: load.Snapshot()}
				rec.mu.Lock()
				rec.samples = append(rec.samples, s)
				rec.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return rec
}

func (rec *recorder) finish() []stepSample {
	rec.stop()
	<-rec.done
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.samples
}

// splitByWeight pools the calls between samples by weight, leaving out
// the settle time after each change of weight (the client's RDS update).
func splitByWeight(samples []stepSample, settle time.Duration) map[int32]harness.GRPCCounts {
	out := map[int32]harness.GRPCCounts{}
	var changed time.Time
	for i := 1; i < len(samples); i++ {
		a, b := samples[i-1], samples[i]
		if i == 1 || a.weight != samples[i-2].weight {
			changed = a.at
		}
		if a.weight != b.weight || a.at.Sub(changed) < settle {
			continue
		}
		d := b.counts.Sub(a.counts)
		acc := out[a.weight]
		if acc.ByVersion == nil {
			acc.ByVersion = map[string]int{}
			acc.ByCode = map[codes.Code]int{}
		}
		acc.Total += d.Total
		acc.OK += d.OK
		acc.Failed += d.Failed
		for k, v := range d.ByVersion {
			acc.ByVersion[k] += v
		}
		for k, v := range d.ByCode {
			acc.ByCode[k] += v
		}
		out[a.weight] = acc
	}
	return out
}

func getRolloutNamed(ctx context.Context, rc shiftplanev1.RolloutServiceClient, name string) (*shiftplanev1.Rollout, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := rc.Get(ctx, &shiftplanev1.GetRequest{Name: name})
	return resp.GetRollout(), err
}

// A grpc-go client through a whole rollout under constant load, with an
// Envoy on the same shiftplane: the split follows every step within ±3 pp,
// no call fails, and none fails after the stable is withdrawn.
func TestProxylessFullRollout(t *testing.T) {
	r := startProxylessRig(t, "pxfull")
	c := r.client(t, "grpc-pxfull", r.target)
	r.sp.WritePlan("pxfull.yaml", r.plan("pxfull", []string{r.target},
		"[{weight: 20, hold: 6s}, {weight: 60, hold: 8s}, {weight: 100}]",
		"{stableFor: 1s, staleAfter: 3s, drainTimeout: 5s}"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	load := c.Load(grpcRate, grpcWorkers)
	rec := record(r, "pxfull", load)
	start := time.Now()
	r.sp.WaitPhase("pxfull", "SUCCEEDED", 50*time.Second)
	took := time.Since(start)
	before := load.Snapshot()
	// After the stable is withdrawn: two more seconds of calls.
	time.Sleep(2 * time.Second)
	after := load.Stop()
	samples := rec.finish()
	total := after
	tail := after.Sub(before)
	t.Logf("SUCCEEDED %s after the load started; all calls: %s", took.Round(100*time.Millisecond), total)
	t.Logf("after SUCCEEDED (stable withdrawn): %s", tail)
	split := splitByWeight(samples, 700*time.Millisecond)
	var weights []int
	for w := range split {
		weights = append(weights, int(w))
	}
	sort.Ints(weights)
	for _, w := range weights {
		s := split[int32(w)]
		t.Logf("weight %3d: %5d calls, %d failed, canary share %.2f %% (%v)", w, s.Total, s.Failed, 100*s.Share("v2"), s.ByVersion)
	}
	if total.Failed != 0 {
		t.Errorf("%d of %d calls failed (first: %s)", total.Failed, total.Total, total.FirstError)
	}
	if tail.Failed != 0 || tail.OK == 0 || tail.Share("v2") != 1 {
		t.Errorf("after the stable was withdrawn: %s, want every call OK on v2", tail)
	}
	for _, w := range []int32{20, 60, 100} {
		s, ok := split[w]
		if !ok || s.OK < 500 {
			t.Errorf("weight %d: %d calls measured, want at least 500", w, s.OK)
			continue
		}
		if got := 100 * s.Share("v2"); math.Abs(got-float64(w)) > 3 {
			t.Errorf("weight %d: canary share %.2f %%, want %d ± 3", w, got, w)
		}
	}
	if rate := float64(total.Total) / (took + 2*time.Second).Seconds(); rate < 200 {
		t.Errorf("load ran at %.0f calls/s, want at least 200", rate)
	}
}

// A canary that fails only gRPC calls (Envoy's HTTP requests to it
// succeed) holds the rollout within two LRS intervals, and rolls it back
// after rollbackAfter. The clients' load reports are the only signal.
func TestProxylessErrorsHoldThenRollBack(t *testing.T) {
	const rollbackAfter = 8 * time.Second
	r := startProxylessRig(t, "pxerr")
	c := r.client(t, "grpc-pxerr", r.target)
	r.sp.WritePlan("pxerr.yaml", r.plan("pxerr", []string{r.target},
		"[{weight: 30, hold: 2m}, {weight: 100}]",
		fmt.Sprintf("{stableFor: 10s, staleAfter: 3s, rollbackAfter: %s}", rollbackAfter)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.envoy.WaitListener(ctx, r.listen); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	load := c.Load(grpcRate, grpcWorkers)
	defer load.Stop()
	httpCtx, stopHTTP := context.WithCancel(context.Background())
	httpDone := make(chan harness.LoadResult, 1)
	go func() {
		res, _ := harness.HTTPLoad(httpCtx, "http://"+r.listen+"/", harness.LoadOptions{Duration: 50 * time.Second, Rate: 100, Concurrency: 4})
		httpDone <- res
	}()
	defer stopHTTP()

	WaitRouteWeights(t, r.envoy, "pxerr-v2", 30)
	r.sp.WaitSteady("pxerr", "PROGRESSING", 2*time.Second, 20*time.Second)
	httpBefore := r.v2.HTTPRequests()
	r.v2.SetFailingGRPC(codes.Internal)
	failedAt := time.Now()
	heldAt := r.sp.WaitPhase("pxerr", "HOLDING", 10*time.Second)
	held := heldAt.Sub(failedAt)
	st := rolloutStatus(t, r.rc, "pxerr")
	t.Logf("canary fails gRPC calls: HOLDING after %s (LRS interval %s): %s", held.Round(10*time.Millisecond), lrsInterval, st.GetSignal().GetReason())
	if held > 2*lrsInterval {
		t.Errorf("held %s after the canary started failing, want within 2 × the LRS interval (%s)", held.Round(10*time.Millisecond), 2*lrsInterval)
	}
	if !strings.Contains(st.GetSignal().GetReason(), "pxerr-v2") {
		t.Errorf("signal reason %q does not name the canary", st.GetSignal().GetReason())
	}
	rolledAt := r.sp.WaitPhase("pxerr", "ROLLED_BACK", rollbackAfter+20*time.Second)
	st = rolloutStatus(t, r.rc, "pxerr")
	sinceHold := rolledAt.Sub(heldAt)
	t.Logf("ROLLED_BACK %s after HOLDING (rollbackAfter %s); weight %d", sinceHold.Round(10*time.Millisecond), rollbackAfter, st.GetCanaryWeight())
	if sinceHold < rollbackAfter-time.Second || sinceHold > rollbackAfter+4*time.Second {
		t.Errorf("rolled back %s after holding, want about rollbackAfter %s", sinceHold.Round(10*time.Millisecond), rollbackAfter)
	}
	if st.GetCanaryWeight() != 0 {
		t.Errorf("weight %d after the rollback", st.GetCanaryWeight())
	}
	// Rolled back: every call goes to v1 again and succeeds.
	time.Sleep(500 * time.Millisecond)
	before := load.Snapshot()
	time.Sleep(2 * time.Second)
	after := load.Snapshot().Sub(before)
	stopHTTP()
	httpRes := <-httpDone
	t.Logf("gRPC calls after the rollback: %s; Envoy HTTP load (whole test): %s; Envoy HTTP requests v2 served after it started failing gRPC: %d", after, httpRes, r.v2.HTTPRequests()-httpBefore)
	if after.Failed != 0 || after.OK == 0 || after.Share("v1") != 1 {
		t.Errorf("after the rollback: %s, want every call OK on v1", after)
	}
	if httpRes.Failures != 0 {
		t.Errorf("Envoy's HTTP requests failed: %s", httpRes)
	}
}

// A mixed fleet converges only when both kinds of client hold what the
// rollout needs: a proxyless client asking for a listener that is not
// served holds the rollout although Envoy (and another gRPC client) ACKed
// everything; once it is gone, every step is served by both kinds.
func TestProxylessMixedFleetConvergence(t *testing.T) {
	r := startProxylessRig(t, "pxmix")
	wrong := r.client(t, "grpc-pxmix-wrong", "nowhere.example:50051")
	good := r.client(t, "grpc-pxmix", r.target)
	r.sp.WritePlan("pxmix.yaml", r.plan("pxmix", []string{r.target},
		"[{weight: 30, hold: 5s}, {weight: 100}]",
		"{stableFor: 1s, staleAfter: 3s, drainTimeout: 5s}"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.envoy.WaitListener(ctx, r.listen); err != nil {
		t.Fatal(err)
	}
	if err := good.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// Held: the wrong client ACKed an LDS answer without its listener.
	var st *shiftplanev1.Rollout
	waitFor(t, 20*time.Second, "the rollout to name the client lacking its listener", func() (bool, string) {
		s, err := getRolloutNamed(context.Background(), r.rc, "pxmix")
		if err != nil {
			return false, err.Error()
		}
		st = s
		return strings.Contains(s.GetMessage(), `node grpc-pxmix-wrong lacks listener "nowhere.example:50051"`), s.GetMessage()
	})
	time.Sleep(3 * time.Second)
	st = rolloutStatus(t, r.rc, "pxmix")
	nodes, err := r.fc.ListNodes(ctx, &shiftplanev1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, n := range nodes.GetNodes() {
		kinds[n.GetId()] = fmt.Sprintf("%s (%s) converged=%v missing=%v", n.GetClientKind(), n.GetUserAgent(), n.GetConverged(), missingOf(n))
	}
	t.Logf("held: %s weight %d converged %v: %s; nodes: %v", st.GetPhase(), st.GetCanaryWeight(), st.GetFleet().GetConverged(), st.GetMessage(), kinds)
	if st.GetPhase() != shiftplanev1.Phase_PHASE_PENDING || st.GetCanaryWeight() != 0 || st.GetFleet().GetConverged() {
		t.Fatalf("with a client lacking its listener: %s weight %d converged %v, want PENDING at 0, not converged", st.GetPhase(), st.GetCanaryWeight(), st.GetFleet().GetConverged())
	}
	for _, n := range nodes.GetNodes() {
		want := map[string]string{"envoy-pxmix": "envoy", "grpc-pxmix": "proxyless-grpc", "grpc-pxmix-wrong": "proxyless-grpc"}[n.GetId()]
		if n.GetClientKind() != want {
			t.Errorf("node %s: kind %q, want %q", n.GetId(), n.GetClientKind(), want)
		}
		if conv := n.GetId() != "grpc-pxmix-wrong"; n.GetConverged() != conv {
			t.Errorf("node %s: converged %v, want %v", n.GetId(), n.GetConverged(), conv)
		}
	}

	// The wrong client goes away: the rollout runs, with both kinds loaded.
	load := good.Load(grpcRate, grpcWorkers)
	defer load.Stop()
	httpCtx, stopHTTP := context.WithCancel(context.Background())
	defer stopHTTP()
	httpDone := make(chan harness.LoadResult, 1)
	go func() {
		res, _ := harness.HTTPLoad(httpCtx, "http://"+r.listen+"/", harness.LoadOptions{Duration: 50 * time.Second, Rate: 100, Concurrency: 4})
		httpDone <- res
	}()
	wrong.Close()
	rec := record(r, "pxmix", load)
	WaitRouteWeights(t, r.envoy, "pxmix-v2", 30)
	// Both kinds hold weight 30 while the fleet is converged on it.
	r.sp.WaitSteady("pxmix", "PROGRESSING", 2*time.Second, 20*time.Second)
	st = rolloutStatus(t, r.rc, "pxmix")
	envoyW, err := r.envoy.RouteWeights(ctx)
	if err != nil {
		t.Fatal(err)
	}
	httpV1, httpV2 := r.v1.HTTPRequests(), r.v2.HTTPRequests()
	g0 := load.Snapshot()
	time.Sleep(2 * time.Second)
	g := load.Snapshot().Sub(g0)
	hv1, hv2 := r.v1.HTTPRequests()-httpV1, r.v2.HTTPRequests()-httpV2
	envoyShare := 100 * float64(hv2) / float64(max(hv1+hv2, 1))
	t.Logf("weight %d, fleet converged %v: Envoy route weights %v, Envoy canary share %.1f %% of %d; gRPC canary share %.2f %% of %d", st.GetCanaryWeight(), st.GetFleet().GetConverged(), envoyW, envoyShare, hv1+hv2, 100*g.Share("v2"), g.OK)
	if st.GetCanaryWeight() != 30 || !st.GetFleet().GetConverged() {
		t.Errorf("PROGRESSING steadily but weight %d, converged %v; want 30, converged", st.GetCanaryWeight(), st.GetFleet().GetConverged())
	} else {
		if envoyW["pxmix-v2"] != 30 {
			t.Errorf("fleet converged at 30 but Envoy routes %v", envoyW)
		}
		if s := 100 * g.Share("v2"); math.Abs(s-30) > 6 {
			t.Errorf("fleet converged at 30 but the gRPC client sends %.2f %% to the canary", s)
		}
		if math.Abs(envoyShare-30) > 12 {
			t.Errorf("fleet converged at 30 but Envoy sends %.1f %% to the canary", envoyShare)
		}
	}
	r.sp.WaitPhase("pxmix", "SUCCEEDED", 40*time.Second)
	rec.finish()
	total := load.Stop()
	stopHTTP()
	httpRes := <-httpDone
	t.Logf("SUCCEEDED: gRPC calls %s; Envoy HTTP %s", total, httpRes)
	if total.Failed != 0 || httpRes.Failures != 0 {
		t.Errorf("failures: gRPC %d (first %s), HTTP %d", total.Failed, total.FirstError, httpRes.Failures)
	}
}

func missingOf(n *shiftplanev1.Node) []string {
	var out []string
	for _, t := range n.GetTypes() {
		out = append(out, t.GetMissing()...)
	}
	return out
}

// No evidence is not clearance for proxyless clients either: a client
// that reports load but issues no calls to the canary keeps the rollout
// HOLDING at its first step; the same rollout moves once calls flow.
func TestProxylessNoCallsIsNotClear(t *testing.T) {
	r := startProxylessRig(t, "pxquiet")
	c := r.client(t, "grpc-pxquiet", r.target)
	r.sp.WritePlan("pxquiet.yaml", r.plan("pxquiet", []string{r.target},
		"[{weight: 25, hold: 3s}, {weight: 100}]",
		"{stableFor: 1s, staleAfter: 3s, drainTimeout: 5s}"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// One call before the first step: the client resolves and its LRS
	// stream opens; after that it is quiet.
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	WaitRouteWeights(t, r.envoy, "pxquiet-v2", 25)
	time.Sleep(3 * (3 * time.Second)) // three holds
	st := rolloutStatus(t, r.rc, "pxquiet")
	t.Logf("no calls for 9s: %s weight %d step %d: signal %s (%s): %s", st.GetPhase(), st.GetCanaryWeight(), st.GetStepIndex()+1, st.GetSignal().GetState(), st.GetSignal().GetReason(), st.GetMessage())
	if st.GetPhase() != shiftplanev1.Phase_PHASE_HOLDING || st.GetStepIndex() != 0 || st.GetCanaryWeight() != 25 {
		t.Fatalf("a canary no client called moved on: %s at step %d weight %d", st.GetPhase(), st.GetStepIndex()+1, st.GetCanaryWeight())
	}
	if !strings.Contains(st.GetMessage(), "no requests reached pxquiet-v2") {
		t.Errorf("reason %q does not say that no requests reached the canary", st.GetMessage())
	}
	load := c.Load(grpcRate, grpcWorkers)
	start := time.Now()
	r.sp.WaitPhase("pxquiet", "SUCCEEDED", 30*time.Second)
	res := load.Stop()
	t.Logf("with calls: SUCCEEDED %s after they started; %s", time.Since(start).Round(100*time.Millisecond), res)
	if res.Failed != 0 {
		t.Errorf("%d calls failed (first: %s)", res.Failed, res.FirstError)
	}
}
