package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestDecide has a case for every transition in machine.go's top comment:
// a state, timers and one input in; the phase, weight, step and effects out.
func TestDecide(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Hour)
	w := func(n int) *int { return &n }
	plan := Plan{
		Name:     "web",
		Listener: Listener{Address: "127.0.0.1:10000"},
		Stable:   Backend{Cluster: "web-v1", Endpoints: []string{"127.0.0.1:8081"}},
		Canary:   Backend{Cluster: "web-v2", Endpoints: []string{"127.0.0.1:8082"}},
		Steps:    []Step{{Weight: w(10), Hold: Duration(time.Minute)}, {Pause: &Pause{}}, {Weight: w(50), Hold: Duration(time.Minute)}, {Weight: w(100)}},
		Hooks:    Hooks{BeforeShift: []Hook{{Exec: []string{"./expand"}}}, AfterPromote: []Hook{{Exec: []string{"./contract"}}}},
	}.WithDefaults()
	steps := plan.Schedule()
	stamped := func(st State) State {
		st.RouteVersion, st.ClusterVersion, st.ListenerVersion = "7", "7", "7"
		return st
	}
	at := func(phase Phase, step, weight int) State {
		return stamped(State{Phase: phase, StepIndex: step, Weight: weight, CanaryPublished: true, StablePublished: true, BeforeShiftDone: true, Created: t0})
	}
	clear := Signal{State: SignalClear, Traffic: []TrafficSample{{Node: "envoy-1", From: now.Add(-time.Second), At: now, Requests: 50}}}
	firing := Signal{State: SignalFiring, Reason: "ejections_active=1"}
	good := Convergence{Converged: true, Nodes: 1}
	serving := Timers{LastTick: now.Add(-time.Second), LastTraffic: now.Add(-time.Second), StepStart: t0}
	tick := func(sig Signal, fleet Convergence) Input {
		return Input{Op: OpTick, Now: now, Signal: sig, Fleet: fleet, DrainQuiet: time.Second}
	}
	withHook := func(in Input, h HookStatus) Input { in.Hook = h; return in }
	withDrain := func(in Input, d Drain) Input { in.Stable = d; return in }

	tests := map[string]struct {
		state  State
		timers Timers
		in     Input
		// want
		phase   Phase
		weight  int
		step    int
		publish bool
		hooks   string // stage to start
		reason  string // substring of the new state's reason
		err     string // substring of the error; the call changes nothing
	}{
		"PENDING starts the beforeShift hooks": {
			state: State{Phase: PhasePending, StablePublished: true, Created: t0}, in: tick(clear, good),
			phase: PhasePending, hooks: "beforeShift", reason: "running 1 beforeShift hook(s)",
		},
		"PENDING: a beforeShift hook fails → FAILED, no traffic": {
			state: State{Phase: PhasePending, StablePublished: true, Created: t0},
			in:    withHook(tick(clear, good), HookStatus{Stage: "beforeShift", Done: true, Err: errors.New("exit 1")}),
			phase: PhaseFailed, reason: "beforeShift hook failed, no traffic moved",
		},
		"PENDING: hooks done → canary cluster published at weight 0": {
			state: State{Phase: PhasePending, StablePublished: true, Created: t0},
			in:    withHook(tick(clear, good), HookStatus{Stage: "beforeShift", Done: true}),
			phase: PhasePending, publish: true,
		},
		"PENDING waits until the fleet has the canary cluster, endpoints and listener": {
			state: stamped(State{Phase: PhasePending, StablePublished: true, CanaryPublished: true, BeforeShiftDone: true, Created: t0}),
			in:    tick(clear, Convergence{Nodes: 1}),
			phase: PhasePending, reason: "waiting for every connected Envoy to ACK",
		},
		"PENDING: a NACK of the listener holds PENDING with the node's error": {
			state: stamped(State{Phase: PhasePending, StablePublished: true, CanaryPublished: true, BeforeShiftDone: true, Created: t0}),
			in:    tick(clear, Convergence{Nodes: 1, Nacks: []string{"node envoy-1 rejected listeners version 7: cannot bind 127.0.0.1:10000"}}),
			phase: PhasePending, reason: "cannot bind",
		},
		"PENDING: converged → PROGRESSING at step 1": {
			state: stamped(State{Phase: PhasePending, StablePublished: true, CanaryPublished: true, BeforeShiftDone: true, Created: t0}),
			in:    tick(clear, good),
			phase: PhaseProgressing, weight: 10, publish: true, reason: "step 1/4: weight 10",
		},
		"PROGRESSING: firing → HOLDING": {
			state: at(PhaseProgressing, 0, 10), timers: serving, in: tick(firing, good),
			phase: PhaseHolding, weight: 10, reason: "signal firing: ejections_active=1",
		},
		"PROGRESSING: stale → HOLDING": {
			state: at(PhaseProgressing, 0, 10), timers: serving, in: tick(Signal{State: SignalStale, Reason: "no Envoy stats"}, good),
			phase: PhaseHolding, weight: 10, reason: "signal stale",
		},
		"PROGRESSING: a NACK → HOLDING naming the node": {
			state: at(PhaseProgressing, 0, 10), timers: serving, in: tick(clear, Convergence{Nodes: 1, Nacks: []string{"node envoy-1 rejected routes version 7: bad"}}),
			phase: PhaseHolding, weight: 10, reason: "node envoy-1 rejected routes",
		},
		"PROGRESSING: no requests reach the canary → HOLDING (no evidence is not clearance)": {
			state: at(PhaseProgressing, 0, 10), timers: Timers{LastTick: now.Add(-time.Second)}, in: tick(Signal{State: SignalClear}, good),
			phase: PhaseHolding, weight: 10, reason: "no requests reached web-v2 in the last 10s",
		},
		"PROGRESSING: hold done but fewer than minRequests → waits, still PROGRESSING": {
			state: func() State {
				s := at(PhaseProgressing, 0, 10)
				s.HoldCounted = time.Minute
				s.StepRequests = 3
				return s
			}(),
			timers: serving, in: tick(Signal{State: SignalClear, Traffic: []TrafficSample{{Node: "envoy-1", From: now.Add(-time.Second), At: now, Requests: 1}}}, good),
			phase: PhaseProgressing, weight: 10, reason: "4 of 20 canary requests seen",
		},
		"PROGRESSING: hold done → next step, a gate → PAUSED": {
			state:  func() State { s := at(PhaseProgressing, 0, 10); s.HoldCounted = time.Minute; return s }(),
			timers: serving, in: tick(clear, good),
			phase: PhasePaused, weight: 10, step: 1, reason: "manual gate at step 2/4",
		},
		"PROGRESSING: hold done → next weight": {
			state:  func() State { s := at(PhaseProgressing, 2, 50); s.HoldCounted = time.Minute; return s }(),
			timers: serving, in: tick(clear, good),
			phase: PhaseProgressing, weight: 100, step: 3, publish: true, reason: "step 4/4: weight 100",
		},
		"PROGRESSING: last step done → PROMOTING": {
			state: at(PhaseProgressing, 3, 100), timers: serving, in: tick(clear, good),
			phase: PhasePromoting, weight: 100, step: 3, reason: "waiting for the stable cluster to drain",
		},
		"HOLDING: clear, converged and serving → PROGRESSING": {
			state: at(PhaseHolding, 0, 10), timers: serving, in: tick(clear, good),
			phase: PhaseProgressing, weight: 10, reason: "hold counting again",
		},
		"HOLDING: firing for rollbackAfter → ROLLING_BACK at weight 0": {
			state: at(PhaseHolding, 0, 10), timers: Timers{LastTick: now.Add(-time.Second), FiringSince: now.Add(-3 * time.Minute), BadSince: now.Add(-3 * time.Minute), Signal: firing},
			in:    tick(firing, good),
			phase: PhaseRollingBack, weight: 0, publish: true, reason: "rollbackAfter 2m0s",
		},
		"HOLDING: a clear spell shorter than stableFor keeps the firing streak": {
			state: at(PhaseHolding, 0, 10), timers: Timers{LastTick: now.Add(-time.Second), FiringSince: now.Add(-3 * time.Minute), ClearSince: now.Add(-2 * time.Second), Signal: Signal{State: SignalClear}},
			in:    tick(firing, good),
			phase: PhaseRollingBack, weight: 0, publish: true, reason: "rollbackAfter",
		},
		"PAUSED: resume at a gate → PROGRESSING": {
			state: at(PhasePaused, 1, 10), in: Input{Op: OpResume, Now: now},
			phase: PhaseProgressing, weight: 10, step: 1, reason: "manual gate at step 2/4 passed",
		},
		"PAUSED by request: resume → back to where it was": {
			state: func() State { s := at(PhasePaused, 0, 10); s.PausedFrom = PhaseHolding; return s }(), in: Input{Op: OpResume, Now: now},
			phase: PhaseProgressing, weight: 10, reason: "resumed on request",
		},
		"PAUSED: promote → PROMOTING": {
			state: at(PhasePaused, 1, 10), in: Input{Op: OpPromote, Now: now},
			phase: PhasePromoting, weight: 100, step: 3, publish: true,
		},
		"PAUSED with traffic: firing for rollbackAfter → ROLLING_BACK": {
			state: at(PhasePaused, 1, 10), timers: Timers{LastTick: now.Add(-time.Second), FiringSince: now.Add(-3 * time.Minute), Signal: firing},
			in:    tick(firing, good),
			phase: PhaseRollingBack, weight: 0, step: 1, publish: true,
		},
		"PROMOTING: stable drained → withdrawn": {
			state: at(PhasePromoting, 3, 100), timers: Timers{PromoteStart: now.Add(-time.Minute), DrainZero: now.Add(-2 * time.Second)},
			in:    withDrain(tick(clear, good), Drain{Known: true}),
			phase: PhasePromoting, weight: 100, step: 3, publish: true, reason: "stable cluster withdrawn: no active requests reported",
		},
		"PROMOTING: requests in flight → waits": {
			state: at(PhasePromoting, 3, 100), timers: Timers{PromoteStart: now.Add(-time.Second)},
			in:    withDrain(tick(clear, good), Drain{Known: true, Active: 3}),
			phase: PhasePromoting, weight: 100, step: 3,
		},
		"PROMOTING: withdrawn and ACKed → afterPromote hooks start": {
			state: func() State { s := at(PhasePromoting, 3, 100); s.StablePublished = false; return s }(), in: tick(clear, good),
			phase: PhasePromoting, weight: 100, step: 3, hooks: "afterPromote",
		},
		"PROMOTING: afterPromote done → SUCCEEDED": {
			state: func() State { s := at(PhasePromoting, 3, 100); s.StablePublished = false; return s }(),
			in:    withHook(tick(clear, good), HookStatus{Stage: "afterPromote", Done: true}),
			phase: PhaseSucceeded, weight: 100, step: 3, reason: "promoted; stable drained and withdrawn",
		},
		"PROMOTING: afterPromote fails → SUCCEEDED with the hook error, traffic stays": {
			state: func() State { s := at(PhasePromoting, 3, 100); s.StablePublished = false; return s }(),
			in:    withHook(tick(clear, good), HookStatus{Stage: "afterPromote", Done: true, Err: errors.New("lock timeout")}),
			phase: PhaseSucceeded, weight: 100, step: 3, reason: "afterPromote hook failed",
		},
		"ROLLING_BACK: ACKed → ROLLED_BACK": {
			state: at(PhaseRollingBack, 0, 0), in: tick(firing, good),
			phase: PhaseRolledBack, reason: "rolled back",
		},
		"ROLLING_BACK after abort: ACKed → ABORTED": {
			state: func() State { s := at(PhaseRollingBack, 0, 0); s.Aborted = true; return s }(), in: tick(firing, good),
			phase: PhaseAborted, reason: "aborted",
		},
		"ROLLING_BACK waits for the ACK": {
			state: func() State { s := at(PhaseRollingBack, 0, 0); s.RouteVersion = ""; return s }(), in: tick(firing, good),
			phase: PhaseRollingBack,
		},
		"pause: PROGRESSING → PAUSED": {
			state: at(PhaseProgressing, 0, 10), in: Input{Op: OpPause, Now: now},
			phase: PhasePaused, weight: 10, reason: "paused on request",
		},
		"abort: PROGRESSING → ROLLING_BACK": {
			state: at(PhaseProgressing, 2, 50), in: Input{Op: OpAbort, Now: now, Reason: "bad build"},
			phase: PhaseRollingBack, weight: 0, step: 2, publish: true, reason: "aborted on request (bad build)",
		},
		"retry: ABORTED → PENDING at step 1": {
			state: at(PhaseAborted, 2, 0), in: Input{Op: OpRetry, Now: now},
			phase: PhasePending, publish: true, reason: "retry on request after ABORTED; restarting from step 1",
		},
		"refused: resume of a PROGRESSING rollout": {
			state: at(PhaseProgressing, 0, 10), in: Input{Op: OpResume, Now: now}, err: "not PAUSED",
		},
		"refused: pause while PROMOTING": {
			state: at(PhasePromoting, 3, 100), in: Input{Op: OpPause, Now: now}, err: "cannot be paused",
		},
		"refused: abort of a finished rollout": {
			state: at(PhaseSucceeded, 3, 100), in: Input{Op: OpAbort, Now: now}, err: "already finished",
		},
		"refused: retry of a SUCCEEDED rollout": {
			state: at(PhaseSucceeded, 3, 100), in: Input{Op: OpRetry, Now: now}, err: "only an ABORTED, ROLLED_BACK or FAILED rollout",
		},
		"refused: the caller saw another step": {
			state: at(PhasePaused, 1, 10), in: Input{Op: OpResume, Now: now, Expect: &Expect{Phase: PhasePaused, StepIndex: w(0)}},
			err: "has moved on: it is PAUSED at step 2/4, you saw PAUSED at step 1/4",
		},
		"refused: a second resume moments after the first, at the gate the first led to": {
			state: func() State {
				s := at(PhasePaused, 1, 10)
				s.LastOp, s.LastOpAt, s.LastOpStep = "resume", now.Add(-500*time.Millisecond), 0
				return s
			}(),
			in:  Input{Op: OpResume, Now: now},
			err: "was resumed 500ms ago at step 1/4 and has moved to step 2/4 since",
		},
		"a terminal rollout does not move on a tick": {
			state: at(PhaseSucceeded, 3, 100), in: tick(firing, Convergence{}),
			phase: PhaseSucceeded, weight: 100, step: 3,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := Decide(plan, steps, tc.state, tc.timers, tc.in)
			if tc.err != "" {
				if !errors.Is(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want FailedPrecondition containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := res.State
			if st.Phase != tc.phase || st.Weight != tc.weight || st.StepIndex != tc.step {
				t.Errorf("got %s weight %d step %d (%s), want %s weight %d step %d", st.Phase, st.Weight, st.StepIndex, st.Reason, tc.phase, tc.weight, tc.step)
			}
			if res.Publish != tc.publish {
				t.Errorf("publish = %v, want %v", res.Publish, tc.publish)
			}
			gotHooks := ""
			if res.StartHooks != nil {
				gotHooks = res.StartHooks.Stage
			}
			if gotHooks != tc.hooks {
				t.Errorf("hooks started = %q, want %q", gotHooks, tc.hooks)
			}
			if !strings.Contains(st.Reason, tc.reason) {
				t.Errorf("reason %q does not contain %q", st.Reason, tc.reason)
			}
			if st.Phase != tc.state.Phase && len(res.Events) == 0 {
				t.Errorf("phase changed %s → %s without an event", tc.state.Phase, st.Phase)
			}
		})
	}
}

// TestDecideIsPure: the input state and timers are not modified.
func TestDecideIsPure(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := 10
	plan := Plan{Name: "web", Canary: Backend{Cluster: "web-v2"}, Steps: []Step{{Weight: &w, Hold: Duration(time.Minute)}}}.WithDefaults()
	st := State{Phase: PhaseProgressing, Weight: 10, RouteVersion: "1", ClusterVersion: "1", ListenerVersion: "1"}
	tm := Timers{Counted: map[string]time.Time{"envoy-1": now.Add(-time.Second)}}
	in := Input{Op: OpTick, Now: now, Fleet: Convergence{Converged: true, Nodes: 1},
		Signal: Signal{State: SignalClear, Traffic: []TrafficSample{{Node: "envoy-1", From: now.Add(-time.Second), At: now, Requests: 5}}}}
	res, err := Decide(plan, plan.Schedule(), st, tm, in)
	if err != nil {
		t.Fatal(err)
	}
	if !tm.Counted["envoy-1"].Equal(now.Add(-time.Second)) {
		t.Errorf("Decide changed the caller's timers: %v", tm.Counted)
	}
	if !res.Timers.Counted["envoy-1"].Equal(now) || res.State.StepRequests != 5 {
		t.Errorf("traffic not counted in the result: %v, %g", res.Timers.Counted, res.State.StepRequests)
	}
	// The same report again is not counted twice.
	res2, _ := Decide(plan, plan.Schedule(), res.State, res.Timers, in)
	if res2.State.StepRequests != 5 {
		t.Errorf("a report counted twice: %g requests", res2.State.StepRequests)
	}
}
