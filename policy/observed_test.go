package policy

import (
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/xds/model"
)

var obsEpoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// obsReport is one node's cumulative completed requests per cluster (a
// negative count leaves the cluster out: Envoy sent no stat for it).
func obsReport(node string, at time.Duration, stable, canary float64) model.NodeReport {
	l := map[string]float64{}
	if stable >= 0 {
		l["cluster.app-v1.upstream_rq_completed"] = stable
	}
	if canary >= 0 {
		l["cluster.app-v2.upstream_rq_completed"] = canary
	}
	return model.NodeReport{Node: node, At: obsEpoch.Add(at), Latest: l}
}

func obsState(phase Phase, step, weight int) State {
	return State{Phase: phase, StepIndex: step, Weight: weight, Created: obsEpoch}
}

type obsCheck struct {
	stable, canary float64
	nodes          int
	share          float64 // -1: no share (no requests counted)
}

func checkStep(t *testing.T, what string, got StepTraffic, want obsCheck) {
	t.Helper()
	if got.Stable != want.stable || got.Canary != want.canary || got.Nodes != want.nodes {
		t.Errorf("%s: stable %g canary %g nodes %d, want %g %g %d", what, got.Stable, got.Canary, got.Nodes, want.stable, want.canary, want.nodes)
	}
	share, ok := got.Share()
	switch {
	case want.share < 0 && ok:
		t.Errorf("%s: share %g, want none (no requests counted)", what, share)
	case want.share >= 0 && (!ok || share != want.share):
		t.Errorf("%s: share %g (known %v), want %g", what, share, ok, want.share)
	}
}

func TestObserverCounting(t *testing.T) {
	type phase struct {
		state   State
		reports [][]model.NodeReport // one consume per entry
	}
	tests := map[string]struct {
		phases []phase
		want   []obsCheck // per step, oldest first
	}{
		"first report is the baseline": {
			phases: []phase{{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{
				{obsReport("a", 1*time.Second, 5000, 300)},
				{obsReport("a", 2*time.Second, 5090, 310)},
			}}},
			want: []obsCheck{{stable: 90, canary: 10, nodes: 1, share: 0.1}},
		},
		"a report is counted once": {
			phases: []phase{{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{
				{obsReport("a", 1*time.Second, 0, 0)},
				{obsReport("a", 2*time.Second, 90, 10)},
				{obsReport("a", 2*time.Second, 90, 10)},
				{obsReport("a", 2*time.Second, 90, 10)},
			}}},
			want: []obsCheck{{stable: 90, canary: 10, nodes: 1, share: 0.1}},
		},
		"steps split at the engine's reading": {
			phases: []phase{
				{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{
					{obsReport("a", 1*time.Second, 100, 0)},
					{obsReport("a", 2*time.Second, 190, 10)},
				}},
				{obsState(PhaseProgressing, 1, 50), [][]model.NodeReport{
					{obsReport("a", 3*time.Second, 240, 60)},
					{obsReport("a", 4*time.Second, 290, 110)},
				}},
			},
			want: []obsCheck{{90, 10, 1, 0.1}, {100, 100, 1, 0.5}},
		},
		"a restarted node is counted from 0": {
			phases: []phase{{obsState(PhaseProgressing, 0, 20), [][]model.NodeReport{
				{obsReport("a", 1*time.Second, 5000, 1000)},
				{obsReport("a", 2*time.Second, 5080, 1020)},
				// Restart: both counters began again at 0.
				{obsReport("a", 3*time.Second, 40, 10)},
				{obsReport("a", 4*time.Second, 80, 20)},
			}}},
			want: []obsCheck{{80 + 40 + 40, 20 + 10 + 10, 1, 0.2}},
		},
		"a restart seen on one counter resets both": {
			phases: []phase{{obsState(PhaseProgressing, 0, 50), [][]model.NodeReport{
				{obsReport("a", 1*time.Second, 400, 5)},
				// The canary counter is higher than before, but the stable
				// one fell: the node restarted and both count from 0.
				{obsReport("a", 2*time.Second, 30, 30)},
			}}},
			want: []obsCheck{{30, 30, 1, 0.5}},
		},
		"a node that joins is counted after its baseline": {
			phases: []phase{{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{
				{obsReport("a", 1*time.Second, 0, 0)},
				{obsReport("a", 2*time.Second, 90, 10), obsReport("b", 2*time.Second, 7000, 700)},
				{obsReport("a", 3*time.Second, 180, 20), obsReport("b", 3*time.Second, 7090, 710)},
			}}},
			want: []obsCheck{{90 + 90 + 90, 10 + 10 + 10, 2, 0.1}},
		},
		"a node that leaves and comes back continues": {
			phases: []phase{{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{
				{obsReport("a", 1*time.Second, 0, 0), obsReport("b", 1*time.Second, 0, 0)},
				{obsReport("a", 2*time.Second, 90, 10)}, // b's stream is gone
				{obsReport("a", 3*time.Second, 180, 20), obsReport("b", 3*time.Second, 45, 5)},
			}}},
			want: []obsCheck{{225, 25, 2, 0.1}},
		},
		"a node missing a cluster counted nothing for it": {
			phases: []phase{
				{obsState(PhaseProgressing, 0, 0), [][]model.NodeReport{
					{obsReport("a", 1*time.Second, 10, -1)},
					{obsReport("a", 2*time.Second, 110, -1)}, // the canary served nothing yet
				}},
				{obsState(PhasePromoting, 1, 100), [][]model.NodeReport{
					{obsReport("a", 3*time.Second, 150, 20)},
					{obsReport("a", 4*time.Second, -1, 120)}, // the stable was withdrawn
				}},
			},
			want: []obsCheck{{100, 0, 1, 0}, {40, 120, 1, 0.75}},
		},
		"no reports is no share": {
			phases: []phase{{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{{}, {}}}},
			want:   []obsCheck{{0, 0, 0, -1}},
		},
		"reports without requests is no share": {
			phases: []phase{{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{
				{obsReport("a", 1*time.Second, 50, 5)},
				{obsReport("a", 2*time.Second, 50, 5)},
				{obsReport("a", 3*time.Second, 50, 5)},
			}}},
			want: []obsCheck{{0, 0, 1, -1}},
		},
		"a finished rollout counts no more": {
			phases: []phase{
				{obsState(PhaseRollingBack, 0, 0), [][]model.NodeReport{
					{obsReport("a", 1*time.Second, 0, 0)},
					{obsReport("a", 2*time.Second, 100, 0)},
				}},
				{obsState(PhaseRolledBack, 0, 0), [][]model.NodeReport{
					{obsReport("a", 3*time.Second, 200, 0)},
				}},
			},
			want: []obsCheck{{100, 0, 1, 0}},
		},
		"a retry starts from fresh baselines": {
			phases: []phase{
				{obsState(PhaseProgressing, 0, 10), [][]model.NodeReport{
					{obsReport("a", 1*time.Second, 0, 0)},
					{obsReport("a", 2*time.Second, 90, 10)},
				}},
				{obsState(PhaseAborted, 0, 0), [][]model.NodeReport{
					{obsReport("a", 3*time.Second, 500, 10)},
				}},
				{State{Phase: PhasePending, Created: obsEpoch.Add(time.Minute)}, [][]model.NodeReport{
					{obsReport("a", 4*time.Second, 900, 10)}, // baseline: what happened while aborted is not counted
					{obsReport("a", 5*time.Second, 1000, 10)},
				}},
			},
			want: []obsCheck{{90, 10, 1, 0.1}, {100, 0, 1, 0}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var o observer
			for _, p := range tc.phases {
				o.follow(p.state, Traffic{}, "app-v1", "app-v2")
				o.settle(obsEpoch)
				for _, rs := range p.reports {
					o.consume(rs, obsEpoch)
				}
			}
			v := o.view()
			if len(v.Steps) != len(tc.want) {
				t.Fatalf("%d steps observed, want %d: %+v", len(v.Steps), len(tc.want), v.Steps)
			}
			var ts, tc2 float64
			for i, w := range tc.want {
				checkStep(t, "step "+string(rune('1'+i)), v.Steps[i], w)
				ts += w.stable
				tc2 += w.canary
			}
			if v.Stable != ts || v.Canary != tc2 {
				t.Errorf("totals stable %g canary %g, want %g %g", v.Stable, v.Canary, ts, tc2)
			}
		})
	}
}

func TestObserverNodeWindows(t *testing.T) {
	var o observer
	o.follow(obsState(PhaseProgressing, 0, 10), Traffic{}, "app-v1", "app-v2")
	o.settle(obsEpoch)
	o.consume([]model.NodeReport{obsReport("a", 1*time.Second, 0, 0), obsReport("b", 1500*time.Millisecond, 0, 0)}, obsEpoch)
	o.consume([]model.NodeReport{obsReport("a", 2*time.Second, 9, 1), obsReport("b", 2500*time.Millisecond, 18, 2)}, obsEpoch)
	o.follow(obsState(PhaseProgressing, 1, 50), Traffic{}, "app-v1", "app-v2")
	o.settle(obsEpoch.Add(2 * time.Second))
	o.consume([]model.NodeReport{obsReport("a", 3*time.Second, 14, 6), obsReport("b", 3500*time.Millisecond, 18, 2)}, obsEpoch)
	v := o.view()
	if len(v.Steps) != 2 {
		t.Fatalf("steps %+v", v.Steps)
	}
	first := v.Steps[0]
	if !first.From.Equal(obsEpoch.Add(time.Second)) || !first.To.Equal(obsEpoch.Add(2500*time.Millisecond)) {
		t.Errorf("step 1 spans %s..%s", first.From, first.To)
	}
	if len(first.PerNode) != 2 || first.PerNode[1].Node != "b" || first.PerNode[1].Stable != 18 ||
		!first.PerNode[1].From.Equal(obsEpoch.Add(1500*time.Millisecond)) || !first.PerNode[1].To.Equal(obsEpoch.Add(2500*time.Millisecond)) {
		t.Errorf("step 1 per node: %+v", first.PerNode)
	}
	// b reported but served nothing in step 2, and its interval began
	// before the step settled: a node of the step with no settled
	// requests. a's window starts where step 1 ended.
	second := v.Steps[1]
	checkStep(t, "step 2", second, obsCheck{5, 5, 2, 0.5})
	if a := second.PerNode[0]; !a.From.Equal(obsEpoch.Add(2*time.Second)) || !a.To.Equal(obsEpoch.Add(3*time.Second)) {
		t.Errorf("step 2 node a spans %s..%s", a.From, a.To)
	}
	if p, ok := o.pending(obsState(PhaseProgressing, 1, 50), Traffic{}); ok {
		t.Errorf("pending for the step being counted: %+v", p)
	}
	if p, ok := o.pending(obsState(PhaseProgressing, 2, 80), Traffic{}); !ok || p.Stable != 5 || p.PerNode != nil {
		t.Errorf("pending for the next step: %+v %v", p, ok)
	}
}

// TestObserverTransition: the report intervals that began before the fleet
// ACKed the step were served partly at the old weight; they are counted
// as the step's transition, outside its share.
func TestObserverTransition(t *testing.T) {
	var o observer
	o.follow(obsState(PhaseProgressing, 0, 10), Traffic{}, "app-v1", "app-v2")
	o.consume([]model.NodeReport{obsReport("a", 1*time.Second, 0, 0)}, obsEpoch)
	o.consume([]model.NodeReport{obsReport("a", 2*time.Second, 100, 0)}, obsEpoch) // (1s, 2s]: not settled
	o.settle(obsEpoch.Add(2500 * time.Millisecond))
	o.consume([]model.NodeReport{obsReport("a", 3*time.Second, 160, 40)}, obsEpoch) // (2s, 3s]: the ACK is in it
	if cur, _ := o.view().Current(); cur.Total() != 0 {
		t.Fatalf("settled requests before an interval began after the ACK: %+v", cur)
	} else if _, ok := cur.Share(); ok {
		t.Errorf("a share from transition requests: %+v", cur)
	}
	o.consume([]model.NodeReport{obsReport("a", 4*time.Second, 250, 50)}, obsEpoch) // (3s, 4s]: settled
	cur, ok := o.view().Current()
	if !ok {
		t.Fatal("no current step")
	}
	checkStep(t, "step 1", cur, obsCheck{90, 10, 1, 0.1})
	if cur.TransitionStable != 160 || cur.TransitionCanary != 40 || !cur.SettledAt.Equal(obsEpoch.Add(2500*time.Millisecond)) {
		t.Errorf("transition %g/%g settled at %s", cur.TransitionStable, cur.TransitionCanary, cur.SettledAt)
	}
	if !cur.From.Equal(obsEpoch.Add(3*time.Second)) || !cur.To.Equal(obsEpoch.Add(4*time.Second)) {
		t.Errorf("settled span %s..%s, want 3s..4s", cur.From.Sub(obsEpoch), cur.To.Sub(obsEpoch))
	}
	if v := o.view(); v.Stable != 250 || v.Canary != 50 {
		t.Errorf("totals %g/%g, want every counted request: 250/50", v.Stable, v.Canary)
	}
}

// TestObserverMirrorStep: a mirror step's canary counts are mirrored
// copies, kept apart from the users' split; with canary.match routes too
// they cannot be told from matched users, so the step claims no share.
func TestObserverMirrorStep(t *testing.T) {
	for name, tc := range map[string]struct {
		tr    Traffic
		share float64
	}{
		"mirror only":       {Traffic{Mirror: 50}, 0},
		"mirror with match": {Traffic{Mirror: 50, Match: []model.Match{{Kind: model.MatchHeader, Name: "x-canary", Op: model.OpPresent}}}, -1},
	} {
		t.Run(name, func(t *testing.T) {
			var o observer
			o.follow(obsState(PhaseProgressing, 0, 0), Traffic{}, "app-v1", "app-v2")
			o.settle(obsEpoch)
			o.consume([]model.NodeReport{obsReport("a", 1*time.Second, 100, -1)}, obsEpoch)
			o.follow(obsState(PhaseProgressing, 0, 0), tc.tr, "app-v1", "app-v2")
			o.settle(obsEpoch.Add(time.Second))
			o.consume([]model.NodeReport{obsReport("a", 2*time.Second, 300, 100)}, obsEpoch)
			v := o.view()
			if len(v.Steps) != 2 {
				t.Fatalf("%d steps, want the mirror step apart from the one before: %+v", len(v.Steps), v.Steps)
			}
			s := v.Steps[1]
			checkStep(t, "mirror step", s, obsCheck{stable: 200, canary: 0, nodes: 1, share: tc.share})
			if s.Mirror != 50 || s.Mirrored != 100 {
				t.Errorf("mirror %d mirrored %g, want 50 100", s.Mirror, s.Mirrored)
			}
			if v.Canary != 0 {
				t.Errorf("canary total %g, want 0: copies are not canary traffic", v.Canary)
			}
		})
	}
}
