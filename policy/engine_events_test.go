package policy_test

import (
	"context"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// runEngine drives h's engine with Run and no safety tick: only events
// and deadline timers (on the fake clock) move it.
func runEngine(t *testing.T, h *harness) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.eng.Run(ctx, 0) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitStatus polls (real time, generous for a loaded machine) until cond
// holds for rollout name.
func waitStatus(t *testing.T, h *harness, what, name string, cond func(policy.Status) bool) policy.Status {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := h.get(name)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s at weight %d (step %d): %s", what, st.State.Phase, st.State.Weight, st.State.StepIndex+1, st.State.Reason)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stays checks (for a little real time) that the rollout does not move.
func stays(t *testing.T, h *harness, what, name string, want policy.State) {
	t.Helper()
	time.Sleep(150 * time.Millisecond)
	if st := h.get(name).State; st.Phase != want.Phase || st.Weight != want.Weight || st.StepIndex != want.StepIndex {
		t.Fatalf("%s: moved to %s at weight %d (step %d) with no event: %s", what, st.Phase, st.Weight, st.StepIndex+1, st.Reason)
	}
}

// TestRunIsEventDriven: with no safety tick, Run carries a rollout through
// its plan on events alone: an apply, publishes, the fake clock reaching a
// hold's end, a stats notice, a firing streak's rollbackAfter, a Wake for
// an ACK; and it does nothing without them.
func TestRunIsEventDriven(t *testing.T) {
	h := newHarness(t)
	runEngine(t, h)
	p := testPlan("web", wstep(10, 30*time.Second), wstep(50, 30*time.Second), wstep(100, 0))
	p.Analysis.RollbackAfter = durp(time.Minute)
	h.apply(p)

	// apply → canary published → ACKed (no delay) → step 1, with no tick.
	st := waitStatus(t, h, "after apply", "web", func(s policy.Status) bool {
		return s.State.Phase == policy.PhaseProgressing && s.State.Weight == 10 && s.Fleet.Converged
	})
	stays(t, h, "hold not over", "web", st.State)

	// The hold's end is a deadline: moving the clock past it is the only event.
	h.clock.Advance(30 * time.Second)
	st = waitStatus(t, h, "hold of step 1 passed", "web", func(s policy.Status) bool { return s.State.Weight == 50 })
	if st.State.StepIndex != 1 {
		t.Fatalf("step %d after the first hold, want 2", st.State.StepIndex+1)
	}

	// A signal change is acted on when the gate's sources notice it.
	h.clock.Advance(5 * time.Second)
	h.gate.SetFrom(h.clock.Now(), policy.SignalFiring)
	firingAt := h.clock.Now()
	h.eng.Notice()
	waitStatus(t, h, "signal firing", "web", func(s policy.Status) bool { return s.State.Phase == policy.PhaseHolding })
	// The engine last looked when step 2 began: it cannot tell when in the
	// 5s since then the signal went bad, so none of it counts (the hold gets
	// longer, never shorter; the safety tick bounds the loss).
	if got := h.get("web").State.HoldCounted; got != 0 {
		t.Fatalf("hold counted %s across a spell that ended firing, want 0", got)
	}

	// rollbackAfter of firing is a deadline too.
	h.clock.Set(firingAt.Add(time.Minute))
	waitStatus(t, h, "firing for rollbackAfter", "web", func(s policy.Status) bool {
		return s.State.Phase == policy.PhaseRolledBack
	})
}

// TestRunWakesOnConvergence: a rollout waiting for the fleet moves on the
// fleet's Wake (an ACK completed the version), not before; a promotion's
// drain wait ends on its deadline.
func TestRunWakesOnConvergence(t *testing.T) {
	h := newHarness(t)
	h.fleet.SetDelay(5 * time.Second) // the fake fleet ACKs 5s (fake) after a publish
	h.gate.SetActive(0, true)
	runEngine(t, h)
	h.apply(testPlan("api", pstep(), wstep(100, 0)))
	stamped := func(s policy.Status) bool { return s.State.RouteVersion != "" }
	waitStatus(t, h, "canary published", "api", func(s policy.Status) bool { return s.State.CanaryPublished && stamped(s) })
	h.clock.Advance(5 * time.Second) // the ACK time passes, but nobody says so
	stays(t, h, "no ACK notice", "api", policy.State{Phase: policy.PhasePending})
	h.eng.Wake()
	waitStatus(t, h, "ACK noticed", "api", func(s policy.Status) bool { return s.State.Phase == policy.PhasePaused })

	if _, err := h.eng.Promote("api"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, h, "weight 100 published", "api", stamped)
	h.clock.Advance(5 * time.Second)
	h.eng.Wake() // weight 100 ACKed
	// Drained: 0 active requests must hold for DrainQuiet (2s) from when the
	// engine first saw it; the end of that wait is a timer.
	waitStatus(t, h, "drain wait started", "api", func(s policy.Status) bool { return s.Fleet.Converged })
	time.Sleep(50 * time.Millisecond)
	h.clock.Advance(2 * time.Second)
	waitStatus(t, h, "stable withdrawn", "api", func(s policy.Status) bool { return !s.State.StablePublished && stamped(s) })
	h.clock.Advance(5 * time.Second)
	h.eng.Wake()
	waitStatus(t, h, "promotion done", "api", func(s policy.Status) bool { return s.State.Phase == policy.PhaseSucceeded })
}
