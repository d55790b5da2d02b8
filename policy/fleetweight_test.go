package policy_test

import (
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// An abort reports weight 0 only once the fleet ACKed it: until then the
// status shows the weight the fleet holds, with 0 pending.
func TestFleetWeightFollowsTheACK(t *testing.T) {
	const name, step = "web", 100 * time.Millisecond
	for what, act := range map[string]func(h *harness){
		"abort": func(h *harness) {
			if _, err := h.eng.Abort(name); err != nil {
				t.Fatalf("abort: %v", err)
			}
		},
		"promote": func(h *harness) {
			if _, err := h.eng.Promote(name); err != nil {
				t.Fatalf("promote: %v", err)
			}
		},
	} {
		t.Run(what, func(t *testing.T) {
			h := newHarness(t)
			h.apply(testPlan(name, wstep(30, time.Hour), wstep(100, 0)))
			st := h.runUntil("PROGRESSING at 30 ACKed", time.Minute, step, func(s policy.Status) bool {
				return s.State.Phase == policy.PhaseProgressing && !s.WeightPending
			}, name)
			if st.FleetWeight != 30 || st.State.Weight != 30 {
				t.Fatalf("before %s: fleet weight %d, target %d; want 30 and 30", what, st.FleetWeight, st.State.Weight)
			}
			h.fleet.SetDelay(5 * time.Second)
			act(h)
			target := h.get(name).State.Weight
			if target == 30 {
				t.Fatalf("%s did not change the target weight", what)
			}
			acked := h.fleet.ConvergedAt(policy.KindRoutes, h.get(name).State.RouteVersion)
			for h.clock.Now().Before(acked) {
				st := h.get(name)
				if st.FleetWeight != 30 || !st.WeightPending {
					t.Fatalf("at %s, before the fleet ACKed weight %d at %s: fleet weight %d, pending %v; want 30 pending",
						h.since(), target, acked.Sub(epoch), st.FleetWeight, st.WeightPending)
				}
				h.clock.Advance(step)
				h.tick()
			}
			st = h.get(name)
			if st.FleetWeight != target || st.WeightPending {
				t.Fatalf("after the ACK: fleet weight %d, pending %v; want %d, not pending", st.FleetWeight, st.WeightPending, target)
			}
		})
	}
}

// After a restart the stored weight is what the fleet is said to hold, as
// pending until the restore publish is ACKed.
func TestFleetWeightAfterRestart(t *testing.T) {
	const name, step = "web", 100 * time.Millisecond
	h := newHarness(t)
	h.apply(testPlan(name, wstep(40, time.Hour), wstep(100, 0)))
	h.runUntil("PROGRESSING at 40 ACKed", time.Minute, step, func(s policy.Status) bool {
		return s.State.Phase == policy.PhaseProgressing && !s.WeightPending
	}, name)
	h.kill()
	h.fleet.SetDelay(3 * time.Second)
	h.start()
	st := h.get(name)
	if st.FleetWeight != 40 || !st.WeightPending {
		t.Fatalf("right after the restart: fleet weight %d, pending %v; want 40 pending", st.FleetWeight, st.WeightPending)
	}
	h.advance(4*time.Second, step)
	if st := h.get(name); st.FleetWeight != 40 || st.WeightPending {
		t.Fatalf("after the restore publish was ACKed: fleet weight %d, pending %v; want 40, not pending", st.FleetWeight, st.WeightPending)
	}
}
