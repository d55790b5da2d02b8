package policy_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/xds/model"
)

// fakeEnvoy is a model.StatsSource standing for one Envoy node: serve
// splits requests by the weight last published and sends a report with
// cumulative counters, as the MetricsService sink would.
type fakeEnvoy struct {
	mu             sync.Mutex
	stable, canary string
	counts         map[string]float64
	report         *model.NodeReport
}

func (f *fakeEnvoy) Reports() []model.NodeReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.report == nil {
		return nil
	}
	return []model.NodeReport{*f.report}
}

// serve adds n requests at canary weight w (percent) and reports at at.
func (f *fakeEnvoy) serve(n, w int, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counts == nil {
		f.counts = map[string]float64{}
	}
	c := float64(n * w / 100)
	f.counts["cluster."+f.canary+".upstream_rq_completed"] += c
	f.counts["cluster."+f.stable+".upstream_rq_completed"] += float64(n) - c
	latest := map[string]float64{}
	for k, v := range f.counts {
		latest[k] = v
	}
	f.report = &model.NodeReport{Node: "envoy-1", At: at, Latest: latest}
}

// TestEngineObservedSplit runs a rollout whose fake Envoy serves exactly
// the published weight, and checks that the engine attributes every
// request to the step it was served in: in the status, on the event that
// ends each step, and in the totals.
func TestEngineObservedSplit(t *testing.T) {
	env := &fakeEnvoy{stable: "web-v1", canary: "web-v2"}
	h := newHarness(t, func(h *harness) { h.opts.Stats = env })
	p := testPlan("web", wstep(10, 2*time.Second), wstep(40, 2*time.Second), wstep(100, 0))
	p.Analysis.StableFor = durp(0)
	h.apply(p)

	served := map[int]float64{} // canary weight → requests served at it
	var canary float64
	for i := 0; i < 400; i++ {
		st := h.get("web")
		if st.State.Phase.Terminal() {
			break
		}
		w := 0
		if len(h.pub.Records()) > 0 {
			w = h.lastService("web").CanaryWeight
		}
		env.serve(100, w, h.clock.Now())
		served[w] += 100
		canary += float64(100 * w / 100)
		h.clock.Advance(250 * time.Millisecond)
		h.tick()
	}
	st := h.get("web")
	if st.State.Phase != policy.PhaseSucceeded {
		t.Fatalf("rollout ended %s: %s", st.State.Phase, st.State.Reason)
	}
	obs := st.Observed
	if obs.Running {
		t.Errorf("a finished rollout is still counted")
	}
	// The first report is the baseline: 100 stable requests at weight 0
	// are not counted.
	got := map[int]float64{}
	for _, s := range obs.Steps {
		got[s.Weight] += s.Total() + s.Transition()
		share, ok := s.Share()
		if !ok && s.Phase == policy.PhasePending {
			continue // settled at once, its one interval began before
		}
		if !ok {
			t.Errorf("step %d at %d%%: no share: %+v", s.StepIndex+1, s.Weight, s)
			continue
		}
		if want := float64(s.Weight) / 100; share != want {
			t.Errorf("step %d at %d%%: observed share %g, want %g", s.StepIndex+1, s.Weight, share, want)
		}
	}
	for w, n := range served {
		want := n
		if w == 0 {
			want -= 100
		}
		if got[w] != want {
			t.Errorf("weight %d%%: %g requests observed, %g served", w, got[w], want)
		}
	}
	if obs.Canary != canary {
		t.Errorf("canary total %g, served %g", obs.Canary, canary)
	}
	// Every step the rollout left is on the event that ended it.
	var onEvents []policy.StepTraffic
	for _, ev := range h.events("web") {
		if ev.Observed != nil {
			onEvents = append(onEvents, *ev.Observed)
		}
	}
	if len(onEvents) != len(obs.Steps) {
		t.Fatalf("%d events carry an observed step, status has %d steps: %+v", len(onEvents), len(obs.Steps), onEvents)
	}
	for i, s := range onEvents {
		if s.Weight != obs.Steps[i].Weight || s.Stable != obs.Steps[i].Stable || s.Canary != obs.Steps[i].Canary {
			t.Errorf("event %d: %+v, status: %+v", i, s, obs.Steps[i])
		}
	}
	weights := []int{}
	for _, s := range obs.Steps {
		weights = append(weights, s.Weight)
	}
	t.Logf("observed steps by weight: %v", weights)
	if len(weights) < 4 || weights[0] != 0 || weights[1] != 10 || weights[2] != 40 || weights[len(weights)-1] != 100 {
		t.Errorf("observed step weights %v, want 0, 10, 40, ..., 100", weights)
	}
}

// TestEngineObservedNoStats: without a stats source nothing is observed,
// and nothing pretends a share.
func TestEngineObservedNoStats(t *testing.T) {
	h := newHarness(t)
	h.apply(testPlan("web", wstep(10, time.Second), wstep(100, 0)))
	h.advance(3*time.Second, 250*time.Millisecond)
	if obs := h.get("web").Observed; len(obs.Steps) != 0 || obs.Stable != 0 || obs.Canary != 0 {
		t.Errorf("observed without a stats source: %+v", obs)
	}
}

// TestEngineObservedStoreDown: a decision the store refused is not
// applied, and the observed split stays on the step the rollout is still
// in: it keeps counting there, and a refused abort opens no step.
func TestEngineObservedStoreDown(t *testing.T) {
	env := &fakeEnvoy{stable: "a-v1", canary: "a-v2"}
	h := newHarness(t, func(h *harness) { h.opts.Stats = env })
	h.apply(testPlan("a", wstep(10, 2*time.Second), wstep(50, 2*time.Second), wstep(100, 0)))
	serve := func(n int) {
		for range n {
			env.serve(100, h.lastService("a").CanaryWeight, h.clock.Now())
			h.clock.Advance(250 * time.Millisecond)
			_ = h.eng.Tick()
		}
	}
	for i := 0; i < 100 && h.get("a").State.Weight != 10; i++ {
		serve(1)
	}
	serve(2)
	if err := h.store.Close(); err != nil { // every write now fails
		t.Fatal(err)
	}
	serve(40) // 10 s: the 2 s hold is long done, but the step cannot end
	if _, err := h.eng.Abort("a"); !errors.Is(err, policy.ErrStore) {
		t.Fatalf("abort with the store down: %v", err)
	}
	serve(4)
	obs := h.get("a").Observed
	cur, ok := obs.Current()
	if !ok || cur.Weight != 10 || cur.StepIndex != 0 {
		t.Fatalf("current observed step %+v (running %v), want step 1 at 10%%: %+v", cur, ok, obs.Steps)
	}
	if share, ok := cur.Share(); !ok || share != 0.1 || cur.Total() < 4000 {
		t.Errorf("step 1 at 10%%: share %g (%v) over %g requests, want 10%% over the 11 s it lasted", share, ok, cur.Total())
	}
	h.kill()
	h.start()
}

// TestEngineObservedMirrorIsNotUserTraffic: during a mirror step Envoy
// serves every user from the stable and sends the canary a copy of some
// of them; the canary cluster's completed counter counts those copies.
// They are shown apart (Mirrored), not as canary traffic users were served.
func TestEngineObservedMirrorIsNotUserTraffic(t *testing.T) {
	env := &fakeEnvoy{stable: "web-v1", canary: "web-v2"}
	h := newHarness(t, func(h *harness) { h.opts.Stats = env })
	p := testPlan("web", policy.Step{Mirror: 50, Hold: dur(2 * time.Second)}, wstep(100, 0))
	p.Analysis.StableFor = durp(0)
	h.apply(p)

	var copies float64
	for i := 0; i < 400; i++ {
		st := h.get("web")
		if st.State.Phase.Terminal() {
			break
		}
		w, m := 0, 0
		if len(h.pub.Records()) > 0 {
			svc := h.lastService("web")
			w, m = svc.CanaryWeight, svc.Mirror
		}
		env.serve(100, w, h.clock.Now())
		if m > 0 {
			env.mirror(100*m/100, h.clock.Now())
			copies += float64(100 * m / 100)
		}
		h.clock.Advance(250 * time.Millisecond)
		h.tick()
	}
	st := h.get("web")
	if st.State.Phase != policy.PhaseSucceeded {
		t.Fatalf("rollout ended %s: %s", st.State.Phase, st.State.Reason)
	}
	if copies == 0 {
		t.Fatal("the mirror step was never published")
	}
	var mirrored float64
	seen := false
	for _, s := range st.Observed.Steps {
		mirrored += s.Mirrored + s.TransitionMirrored
		if s.Mirror == 0 {
			continue
		}
		seen = true
		if s.Canary != 0 || s.TransitionCanary != 0 {
			t.Errorf("mirror step %d: %g (+%g settling) canary requests counted as user traffic, want 0 (all were mirrored copies): %+v", s.StepIndex+1, s.Canary, s.TransitionCanary, s)
		}
		if share, ok := s.Share(); ok && share != 0 {
			t.Errorf("mirror step %d: canary share %g, want 0: users were all served by the stable", s.StepIndex+1, share)
		}
	}
	if !seen {
		t.Fatalf("no observed step says it mirrored: %+v", st.Observed.Steps)
	}
	if mirrored != copies {
		t.Errorf("%g mirrored copies observed, %g sent", mirrored, copies)
	}
}

// mirror adds n shadow copies the canary completed (Envoy counts them on
// the canary cluster like any request) and reports at at.
func (f *fakeEnvoy) mirror(n int, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts["cluster."+f.canary+".upstream_rq_completed"] += float64(n)
	latest := map[string]float64{}
	for k, v := range f.counts {
		latest[k] = v
	}
	f.report = &model.NodeReport{Node: "envoy-1", At: at, Latest: latest}
}
