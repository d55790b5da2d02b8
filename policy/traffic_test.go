package policy

import (
	"strings"
	"testing"
	"time"
)

func trafficPlan() Plan {
	w := func(n int) *int { return &n }
	return Plan{
		Name:     "web",
		Listener: Listener{Address: "127.0.0.1:10000"},
		Stable:   Backend{Cluster: "web-v1", Endpoints: []string{"127.0.0.1:8081"}},
		Canary: Backend{Cluster: "web-v2", Endpoints: []string{"127.0.0.1:8082"},
			Match:           []Match{{Header: "x-canary", Exact: "true"}},
			SessionAffinity: &SessionAffinity{CookieName: "sticky", MaxAge: Duration(time.Hour)}},
		Steps: []Step{{MatchOnly: &MatchOnly{}, Hold: Duration(time.Minute)}, {Mirror: 40, Hold: Duration(time.Minute)},
			{Pause: &Pause{}}, {Weight: w(50), Hold: Duration(time.Minute)}, {Weight: w(100)}},
	}.WithDefaults()
}

// TestTrafficFor: the traffic policy is on only while a step runs.
func TestTrafficFor(t *testing.T) {
	p := trafficPlan()
	steps := p.Schedule()
	t0 := time.Unix(1700000000, 0)
	at := func(phase Phase, step, weight int) State {
		return State{Phase: phase, StepIndex: step, Weight: weight, CanaryPublished: true, StablePublished: true, Created: t0}
	}
	tests := map[string]struct {
		st                    State
		match, mirror, sticky bool
	}{
		"PENDING: none":                    {st: at(PhasePending, 0, 0)},
		"matchOnly step":                   {st: at(PhaseProgressing, 0, 0), match: true, sticky: true},
		"mirror step":                      {st: at(PhaseHolding, 1, 0), match: true, mirror: true, sticky: true},
		"gate after the mirror: no mirror": {st: at(PhasePaused, 2, 0), match: true, sticky: true},
		"weighted step":                    {st: at(PhaseProgressing, 3, 50), match: true, sticky: true},
		"PROMOTING: none":                  {st: at(PhasePromoting, 4, 100)},
		"ROLLING_BACK: none":               {st: at(PhaseRollingBack, 1, 0)},
		"ROLLED_BACK: none":                {st: at(PhaseRolledBack, 1, 0)},
		"ABORTED: none":                    {st: at(PhaseAborted, 3, 0)},
		"paused before the first step":     {st: func() State { s := at(PhasePaused, 0, 0); s.PausedFrom = PhasePending; return s }()},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tr := TrafficFor(p, steps, tc.st)
			if got := len(tr.Match) > 0; got != tc.match {
				t.Errorf("match on = %v, want %v", got, tc.match)
			}
			if got := tr.Mirror > 0; got != tc.mirror {
				t.Errorf("mirror = %d, want on %v", tr.Mirror, tc.mirror)
			}
			if got := tr.Affinity != nil; got != tc.sticky {
				t.Errorf("affinity on = %v, want %v", got, tc.sticky)
			}
		})
	}
	// The cookie names the attempt: a retry (a new Created) gets another.
	v1, v2 := AffinityValue(p, at(PhaseProgressing, 3, 50)), AffinityValue(p, State{Created: t0.Add(time.Second)})
	if !strings.HasPrefix(v1, "web-v2-") || v1 == v2 {
		t.Errorf("affinity values %q and %q, want web-v2-<attempt>, different per attempt", v1, v2)
	}
}

// TestDecideTrafficSteps: a weight-0 step that sends the canary matched or
// mirrored requests asks for evidence, and leaving it (rollback, the next
// step at the same weight) republishes without its routes.
func TestDecideTrafficSteps(t *testing.T) {
	p := trafficPlan()
	p.Canary.SessionAffinity = nil // affinity and mirror do not mix in a valid plan
	steps := p.Schedule()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Hour)
	at := func(phase Phase, step int) State {
		return State{Phase: phase, StepIndex: step, CanaryPublished: true, StablePublished: true, BeforeShiftDone: true, Created: t0,
			RouteVersion: "7", ClusterVersion: "7", ListenerVersion: "7", HoldCounted: 2 * time.Minute}
	}
	good := Convergence{Converged: true, Nodes: 1}
	quiet := Signal{State: SignalClear}
	serving := Signal{State: SignalClear, Traffic: []TrafficSample{{Node: "e", From: now.Add(-time.Second), At: now, Requests: 30}}}
	firing := Signal{State: SignalFiring, Reason: "cluster web-v2: 5xx rate 100%"}

	t.Run("mirror step without shadow requests holds", func(t *testing.T) {
		res, err := Decide(p, steps, at(PhaseProgressing, 1), Timers{LastTick: now.Add(-time.Second), StepStart: t0}, Input{Op: OpTick, Now: now, Signal: quiet, Fleet: good})
		if err != nil {
			t.Fatal(err)
		}
		if res.State.Phase != PhaseHolding || !strings.Contains(res.State.Reason, "no requests reached web-v2") {
			t.Fatalf("got %s: %s, want HOLDING for no requests", res.State.Phase, res.State.Reason)
		}
	})
	t.Run("mirror step counts shadow requests and moves on", func(t *testing.T) {
		res, err := Decide(p, steps, at(PhaseProgressing, 1), Timers{LastTick: now.Add(-time.Second), StepStart: t0}, Input{Op: OpTick, Now: now, Signal: serving, Fleet: good})
		if err != nil {
			t.Fatal(err)
		}
		if res.State.StepIndex != 2 || res.State.Phase != PhasePaused || !res.Publish {
			t.Fatalf("got %s at step %d publish %v (%s), want PAUSED at the gate and a publish (the mirror stops)", res.State.Phase, res.State.StepIndex+1, res.Publish, res.State.Reason)
		}
		if tr := TrafficFor(p, steps, res.State); tr.Mirror != 0 || len(tr.Match) == 0 {
			t.Fatalf("at the gate: %+v, want the match routes and no mirror", tr)
		}
	})
	t.Run("matchOnly step to mirror step republishes at the same weight", func(t *testing.T) {
		res, err := Decide(p, steps, at(PhaseProgressing, 0), Timers{LastTick: now.Add(-time.Second), StepStart: t0}, Input{Op: OpTick, Now: now, Signal: serving, Fleet: good})
		if err != nil {
			t.Fatal(err)
		}
		if res.State.StepIndex != 1 || res.State.Weight != 0 || !res.Publish || res.State.RouteVersion != "" {
			t.Fatalf("got step %d weight %d publish %v, want step 2 at weight 0 republished", res.State.StepIndex+1, res.State.Weight, res.Publish)
		}
	})
	t.Run("a failing mirrored canary rolls back and the mirror goes", func(t *testing.T) {
		st := at(PhaseHolding, 1)
		tm := Timers{LastTick: now.Add(-time.Second), StepStart: t0, BadSince: now.Add(-3 * time.Minute), FiringSince: now.Add(-3 * time.Minute), Signal: firing}
		res, err := Decide(p, steps, st, tm, Input{Op: OpTick, Now: now, Signal: firing, Fleet: good})
		if err != nil {
			t.Fatal(err)
		}
		if res.State.Phase != PhaseRollingBack || !res.Publish || res.State.Weight != 0 {
			t.Fatalf("got %s weight %d publish %v, want ROLLING_BACK at 0 with a publish", res.State.Phase, res.State.Weight, res.Publish)
		}
		if tr := TrafficFor(p, steps, res.State); tr.Mirror != 0 || len(tr.Match) != 0 {
			t.Fatalf("rolling back still has %+v", tr)
		}
	})
	t.Run("abort at a matchOnly step removes the matched routes", func(t *testing.T) {
		res, err := Decide(p, steps, at(PhaseProgressing, 0), Timers{}, Input{Op: OpAbort, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Publish || len(TrafficFor(p, steps, res.State).Match) != 0 {
			t.Fatalf("abort: publish %v, traffic %+v", res.Publish, TrafficFor(p, steps, res.State))
		}
	})
}
