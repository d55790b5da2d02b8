package policy

import (
	"testing"
	"time"
)

// TestDecideNext: Result.Next names the deadline a tick would act on with
// no new fact, and nothing when only an event can move the rollout.
func TestDecideNext(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Hour)
	w := func(n int) *int { return &n }
	plan := Plan{
		Name:     "web",
		Listener: Listener{Address: "127.0.0.1:10000"},
		Stable:   Backend{Cluster: "web-v1", Endpoints: []string{"127.0.0.1:8081"}},
		Canary:   Backend{Cluster: "web-v2", Endpoints: []string{"127.0.0.1:8082"}},
		Steps:    []Step{{Weight: w(10), Hold: Duration(time.Minute)}, {Pause: &Pause{}}, {Weight: w(100)}},
		Analysis: Analysis{DrainTimeout: Duration(30 * time.Second), StaleAfter: Duration(2 * time.Minute)},
	}.WithDefaults()
	steps := plan.Schedule()
	a := plan.Analysis
	at := func(phase Phase, step, weight int) State {
		return State{Phase: phase, StepIndex: step, Weight: weight, CanaryPublished: true, StablePublished: true, BeforeShiftDone: true,
			Created: t0, RouteVersion: "7", ClusterVersion: "7", ListenerVersion: "7"}
	}
	clear := Signal{State: SignalClear, Traffic: []TrafficSample{{Node: "envoy-1", From: now.Add(-time.Second), At: now, Requests: 50}}}
	firing := Signal{State: SignalFiring, Reason: "ejections_active=1"}
	good := Convergence{Converged: true, Nodes: 1}
	tick := func(sig Signal, fleet Convergence, d Drain) Input {
		return Input{Op: OpTick, Now: now, Signal: sig, Fleet: fleet, Stable: d, DrainQuiet: time.Second}
	}
	serving := Timers{LastTick: now.Add(-time.Second), LastTraffic: now.Add(-time.Second), StepStart: t0, Signal: Signal{State: SignalClear}}
	held := func(st State, d time.Duration) State { st.HoldCounted = d; return st }

	tests := map[string]struct {
		state  State
		timers Timers
		in     Input
		want   time.Time
	}{
		"a counting hold: its end": {
			state: held(at(PhaseProgressing, 0, 10), 20*time.Second), timers: serving, in: tick(clear, good, Drain{}),
			// 1s of this tick counts: 21s of 60s held.
			want: now.Add(39 * time.Second),
		},
		"waiting for the fleet: no deadline but the traffic window": {
			state: at(PhaseProgressing, 0, 10), timers: serving, in: tick(clear, Convergence{Nodes: 1}, Drain{}),
			want: now.Add(a.StaleAfter.D() + time.Nanosecond),
		},
		"firing: rollbackAfter from the streak's start": {
			state: at(PhaseHolding, 0, 10), timers: Timers{LastTick: now.Add(-time.Second), FiringSince: now.Add(-10 * time.Second), BadSince: now.Add(-10 * time.Second), Signal: firing},
			in:   tick(firing, good, Drain{}),
			want: now.Add(-10 * time.Second).Add(a.RollbackAfterDuration()),
		},
		"clear again: stableFor": {
			state: at(PhaseHolding, 0, 10), timers: Timers{LastTick: now.Add(-time.Second), LastTraffic: now, BadSince: now.Add(-time.Minute), Signal: firing},
			in:   tick(clear, good, Drain{}),
			want: now.Add(a.StableForDuration()),
		},
		"a manual gate: only an operation moves it": {
			state: at(PhasePaused, 1, 10), timers: serving, in: tick(clear, good, Drain{}),
		},
		"promoting, no stats: drainTimeout": {
			state: at(PhasePromoting, 2, 100), timers: Timers{LastTick: now.Add(-time.Second), PromoteStart: now.Add(-5 * time.Second)},
			in:   tick(clear, good, Drain{}),
			want: now.Add(25 * time.Second),
		},
		"promoting, drained: DrainQuiet": {
			state: at(PhasePromoting, 2, 100), timers: Timers{LastTick: now.Add(-time.Second), PromoteStart: now.Add(-5 * time.Second)},
			in:   tick(clear, good, Drain{Known: true}),
			want: now.Add(time.Second),
		},
		"promoting, fleet not there yet: the ACK wakes it": {
			state: at(PhasePromoting, 2, 100), timers: Timers{LastTick: now.Add(-time.Second), PromoteStart: now.Add(-5 * time.Second)},
			in: tick(clear, Convergence{Nodes: 1}, Drain{}),
		},
		"finished: nothing": {
			state: at(PhaseSucceeded, 2, 100), in: tick(clear, good, Drain{}),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := Decide(plan, steps, tc.state, tc.timers, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Next.Equal(tc.want) {
				t.Errorf("Next = %v, want %v (phase %s: %s)", res.Next, tc.want, res.State.Phase, res.State.Reason)
			}
		})
	}
}
