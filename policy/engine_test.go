package policy_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

func terminal(st policy.Status) bool { return st.State.Phase.Terminal() }

func inPhase(p policy.Phase) func(policy.Status) bool {
	return func(st policy.Status) bool { return st.State.Phase == p }
}

// TestTenStepsStory runs a ten-step plan with one-minute holds on the fake
// clock and reads its history back from the store.
func TestTenStepsStory(t *testing.T) {
	h := newHarness(t)
	var steps []policy.Step
	for w := 10; w <= 100; w += 10 {
		steps = append(steps, wstep(w, time.Minute))
	}
	h.apply(testPlan("checkout", steps...))

	start := time.Now()
	st := h.runUntil("SUCCEEDED", time.Hour, time.Second, terminal, "checkout")
	t.Logf("ten one-minute steps took %s of fake time and %s of real time", h.since(), time.Since(start))
	if st.State.Phase != policy.PhaseSucceeded {
		t.Fatalf("phase %s (%s), want SUCCEEDED", st.State.Phase, st.State.Reason)
	}

	evs := h.events("checkout")
	want := []policy.Phase{policy.PhasePending, policy.PhaseProgressing, policy.PhasePromoting, policy.PhaseSucceeded}
	if got := phases(evs); !reflect.DeepEqual(got, want) {
		t.Errorf("phases = %v, want %v", got, want)
	}
	// The story: each step entered once, in order, at its weight, a minute
	// (of fake time) after the one before.
	var story []string
	var entered []policy.Event
	for _, e := range evs {
		story = append(story, e.String())
		if e.To == policy.PhaseProgressing && (len(entered) == 0 || entered[len(entered)-1].StepIndex != e.StepIndex) {
			entered = append(entered, e)
		}
	}
	if len(entered) != 10 {
		t.Fatalf("%d steps entered, want 10:\n%s", len(entered), strings.Join(story, "\n"))
	}
	for i, e := range entered {
		if e.StepIndex != i || e.Weight != (i+1)*10 {
			t.Errorf("event %d enters step %d at weight %d, want step %d at weight %d", e.Seq, e.StepIndex, e.Weight, i, (i+1)*10)
		}
		if i > 0 && e.Time.Sub(entered[i-1].Time) < time.Minute {
			t.Errorf("step %d entered %s after step %d, before its one-minute hold passed", i, e.Time.Sub(entered[i-1].Time), i-1)
		}
	}
	// Each step was held at least its minute: the rollout took ten minutes
	// of fake time and not much more.
	if h.since() < 10*time.Minute {
		t.Errorf("finished after %s of fake time, before the holds could pass", h.since())
	}
	if got := h.weights("checkout"); !isPrefixOfSchedule(got, []int{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}) {
		t.Errorf("published weights %v", got)
	}
	if s := h.lastService("checkout"); s.StablePublished || s.CanaryWeight != 100 {
		t.Errorf("last publish %+v: want the stable withdrawn and the canary at 100", s)
	}
}

// isPrefixOfSchedule reports whether the published weights, with repeats
// collapsed, are 0 followed by a prefix of the schedule's distinct weights.
func isPrefixOfSchedule(published, schedule []int) bool {
	want := []int{0}
	for _, w := range schedule {
		if want[len(want)-1] != w {
			want = append(want, w)
		}
	}
	var got []int
	for _, w := range published {
		if len(got) == 0 || got[len(got)-1] != w {
			got = append(got, w)
		}
	}
	if len(got) == 0 {
		return true
	}
	if len(got) > len(want) {
		return false
	}
	return reflect.DeepEqual(got, want[:len(got)])
}

var errBoom = errors.New("boom")

// TestEngineOperations is the table of what the engine's operations and
// the state machine do in the situations DESIGN.md names.
func TestEngineOperations(t *testing.T) {
	const name = "checkout"
	tick := time.Second
	tests := map[string]struct {
		plan func() policy.Plan
		run  func(t *testing.T, h *harness)
	}{
		"pause step waits for resume": {
			plan: func() policy.Plan { return testPlan(name, wstep(10, 10*time.Second), pstep(), wstep(100, 0)) },
			run: func(t *testing.T, h *harness) {
				h.runUntil("PAUSED", time.Minute, tick, inPhase(policy.PhasePaused), name)
				h.advance(time.Hour, 10*time.Second)
				st := h.get(name)
				if st.State.Phase != policy.PhasePaused || st.State.StepIndex != 1 || st.State.Weight != 10 {
					t.Fatalf("after an hour at the gate: %s step %d weight %d, want PAUSED step 1 weight 10", st.State.Phase, st.State.StepIndex, st.State.Weight)
				}
				if _, err := h.eng.Resume(name); err != nil {
					t.Fatalf("resume: %v", err)
				}
				h.runUntil("SUCCEEDED", time.Minute, tick, inPhase(policy.PhaseSucceeded), name)
				if got := h.weights(name); !isPrefixOfSchedule(got, []int{10, 100}) {
					t.Errorf("published weights %v", got)
				}
			},
		},
		"pause as the last step, then resume, promotes": {
			plan: func() policy.Plan {
				return testPlan(name, wstep(50, 5*time.Second), wstep(100, 5*time.Second), pstep())
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("PAUSED", time.Minute, tick, inPhase(policy.PhasePaused), name)
				if _, err := h.eng.Resume(name); err != nil {
					t.Fatalf("resume: %v", err)
				}
				h.runUntil("SUCCEEDED", time.Minute, tick, inPhase(policy.PhaseSucceeded), name)
			},
		},
		"resume at a gate while firing moves no weight until clear for stableFor": {
			plan: func() policy.Plan { return testPlan(name, wstep(10, 5*time.Second), pstep(), wstep(100, 0)) },
			run: func(t *testing.T, h *harness) {
				h.runUntil("PAUSED", time.Minute, tick, inPhase(policy.PhasePaused), name)
				h.gate.SetFrom(h.clock.Now(), policy.SignalFiring)
				h.advance(3*time.Second, tick)
				if _, err := h.eng.Resume(name); err != nil {
					t.Fatalf("resume: %v", err)
				}
				h.advance(30*time.Second, tick)
				if w := h.lastService(name).CanaryWeight; w != 10 {
					t.Fatalf("weight %d published while the signal fires, want 10", w)
				}
				cleared := h.clock.Now()
				h.gate.SetFrom(cleared, policy.SignalClear)
				h.advance(9*time.Second, tick)
				if w := h.lastService(name).CanaryWeight; w != 10 {
					t.Fatalf("weight %d published %s after the signal cleared, within stableFor", w, h.clock.Now().Sub(cleared))
				}
				h.runUntil("SUCCEEDED", time.Minute, tick, inPhase(policy.PhaseSucceeded), name)
			},
		},
		"promote at a manual gate drains: active requests known and 0": {
			plan: func() policy.Plan { return testPlan(name, wstep(10, 5*time.Second), pstep(), wstep(100, 0)) },
			run: func(t *testing.T, h *harness) {
				h.runUntil("PAUSED", time.Minute, tick, inPhase(policy.PhasePaused), name)
				h.gate.SetActive(3, true)
				st, err := h.eng.Promote(name)
				if err != nil {
					t.Fatalf("promote: %v", err)
				}
				if st.State.Phase != policy.PhasePromoting || h.lastService(name).CanaryWeight != 100 {
					t.Fatalf("after promote: %s, weight %d; want PROMOTING at 100", st.State.Phase, h.lastService(name).CanaryWeight)
				}
				h.advance(time.Minute, tick)
				if !h.lastService(name).StablePublished {
					t.Fatalf("stable withdrawn while it still reports 3 active requests")
				}
				h.gate.SetActive(0, true)
				h.runUntil("SUCCEEDED", time.Minute, tick, inPhase(policy.PhaseSucceeded), name)
				if h.lastService(name).StablePublished {
					t.Errorf("stable still published after SUCCEEDED")
				}
				assertWithdrawnEvent(t, h, name, "no active requests")
			},
		},
		"promote at a manual gate drains: no stats, after drainTimeout": {
			plan: func() policy.Plan {
				p := testPlan(name, wstep(10, 5*time.Second), pstep(), wstep(100, 0))
				p.Analysis.DrainTimeout = dur(40 * time.Second)
				return p
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("PAUSED", time.Minute, tick, inPhase(policy.PhasePaused), name)
				h.gate.SetActive(0, false)
				if _, err := h.eng.Promote(name); err != nil {
					t.Fatalf("promote: %v", err)
				}
				promoted := h.clock.Now()
				h.advance(39*time.Second, tick)
				if !h.lastService(name).StablePublished {
					t.Fatalf("stable withdrawn %s after promote, before drainTimeout", h.clock.Now().Sub(promoted))
				}
				h.runUntil("SUCCEEDED", time.Minute, tick, inPhase(policy.PhaseSucceeded), name)
				assertWithdrawnEvent(t, h, name, "drainTimeout")
			},
		},
		"rollback after rollbackAfter of firing; a clear spell shorter than stableFor does not break it, a longer one does": {
			plan: func() policy.Plan {
				p := testPlan(name, wstep(10, time.Hour), wstep(100, 0))
				p.Analysis.RollbackAfter = durp(time.Minute)
				return p
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("PROGRESSING", time.Minute, tick, inPhase(policy.PhaseProgressing), name)
				h.gate.SetFrom(h.clock.Now(), policy.SignalFiring)
				h.advance(50*time.Second, tick)
				// A clear spell of stableFor (10s, seen by ticks) ends the streak.
				h.gate.SetFrom(h.clock.Now(), policy.SignalClear)
				h.advance(11*time.Second, tick)
				start := h.clock.Now()
				h.gate.SetFrom(start, policy.SignalFiring)
				h.advance(40*time.Second, tick)
				// An un-eject: 2s of clear, shorter than stableFor, does not.
				h.gate.SetFrom(h.clock.Now(), policy.SignalClear)
				h.advance(2*time.Second, tick)
				h.gate.SetFrom(h.clock.Now(), policy.SignalFiring)
				h.advance(17*time.Second, tick)
				if st := h.get(name); st.State.Phase != policy.PhaseHolding {
					t.Fatalf("after 50s firing, 11s clear, 40s firing, 2s clear and 17s firing: %s (%s), want HOLDING", st.State.Phase, st.State.Reason)
				}
				st := h.runUntil("ROLLING_BACK", 5*time.Second, tick, inPhase(policy.PhaseRollingBack), name)
				if d := h.clock.Now().Sub(start); d < time.Minute || d > time.Minute+tick {
					t.Errorf("rolled back after %s of firing, want 1m", d)
				}
				if !strings.Contains(st.State.Reason, "rollbackAfter") {
					t.Errorf("reason %q does not name rollbackAfter", st.State.Reason)
				}
				h.runUntil("ROLLED_BACK", time.Minute, tick, inPhase(policy.PhaseRolledBack), name)
				if w := h.lastService(name).CanaryWeight; w != 0 {
					t.Errorf("weight %d after rollback", w)
				}
			},
		},
		"a canary firing at a manual gate still rolls back": {
			plan: func() policy.Plan {
				p := testPlan(name, wstep(20, 5*time.Second), pstep(), wstep(100, 0))
				p.Analysis.RollbackAfter = durp(time.Minute)
				return p
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("PAUSED", time.Minute, tick, inPhase(policy.PhasePaused), name)
				start := h.clock.Now()
				h.gate.SetFrom(start, policy.SignalFiring)
				h.advance(59*time.Second, tick)
				if st := h.get(name); st.State.Phase != policy.PhasePaused {
					t.Fatalf("after 59s firing at the gate: %s, want PAUSED", st.State.Phase)
				}
				h.runUntil("ROLLING_BACK", 5*time.Second, tick, inPhase(policy.PhaseRollingBack), name)
				h.runUntil("ROLLED_BACK", time.Minute, tick, inPhase(policy.PhaseRolledBack), name)
				if w := h.lastService(name).CanaryWeight; w != 0 {
					t.Errorf("weight %d after rollback at the gate", w)
				}
			},
		},
		"abort → ROLLING_BACK → ABORTED after ACK": {
			plan: func() policy.Plan { return testPlan(name, wstep(30, time.Hour), wstep(100, 0)) },
			run: func(t *testing.T, h *harness) {
				h.runUntil("PROGRESSING", time.Minute, tick, inPhase(policy.PhaseProgressing), name)
				h.advance(10*time.Second, tick)
				h.fleet.SetDelay(5 * time.Second)
				st, err := h.eng.Abort(name)
				if err != nil {
					t.Fatalf("abort: %v", err)
				}
				if st.State.Phase != policy.PhaseRollingBack || h.lastService(name).CanaryWeight != 0 {
					t.Fatalf("after abort: %s, weight %d; want ROLLING_BACK at 0", st.State.Phase, h.lastService(name).CanaryWeight)
				}
				acked := h.fleet.ConvergedAt(policy.KindRoutes, st.State.RouteVersion)
				h.runUntil("ABORTED", time.Minute, tick, terminal, name)
				if ph := h.get(name).State.Phase; ph != policy.PhaseAborted {
					t.Fatalf("phase %s, want ABORTED", ph)
				}
				if h.clock.Now().Before(acked) {
					t.Errorf("ABORTED at %s, before the fleet ACKed weight 0 at %s", h.since(), acked.Sub(epoch))
				}
				want := []policy.Phase{policy.PhasePending, policy.PhaseProgressing, policy.PhaseRollingBack, policy.PhaseAborted}
				if got := phases(h.events(name)); !reflect.DeepEqual(got, want) {
					t.Errorf("phases %v, want %v", got, want)
				}
			},
		},
		"promote of a rolled-back rollout is a failed precondition": {
			plan: func() policy.Plan {
				p := testPlan(name, wstep(10, time.Hour), wstep(100, 0))
				p.Analysis.RollbackAfter = durp(10 * time.Second)
				return p
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("PROGRESSING", time.Minute, tick, inPhase(policy.PhaseProgressing), name)
				h.gate.SetFrom(h.clock.Now(), policy.SignalFiring)
				h.runUntil("ROLLED_BACK", time.Minute, tick, inPhase(policy.PhaseRolledBack), name)
				n := h.pub.Count()
				_, err := h.eng.Promote(name)
				if !isPrecondition(err) {
					t.Fatalf("promote: %v, want ErrFailedPrecondition", err)
				}
				if h.pub.Count() != n || h.get(name).State.Phase != policy.PhaseRolledBack {
					t.Errorf("a refused promote changed something")
				}
			},
		},
		"promote while paused in PENDING is a failed precondition": {
			plan: func() policy.Plan {
				p := testPlan(name, wstep(10, time.Minute), wstep(100, 0))
				p.Hooks.BeforeShift = []policy.Hook{{Exec: []string{"./migrate", "expand"}}}
				return p
			},
			run: func(t *testing.T, h *harness) {
				h.hooks.release = make(chan struct{})
				h.tick() // starts the hook
				if _, err := h.eng.Pause(name); err != nil {
					t.Fatalf("pause: %v", err)
				}
				_, err := h.eng.Promote(name)
				close(h.hooks.release)
				if !isPrecondition(err) {
					t.Fatalf("promote of a rollout paused before its canary was published: %v, want ErrFailedPrecondition", err)
				}
				for _, w := range h.weights(name) {
					if w != 0 {
						t.Fatalf("weight %d published before the beforeShift hooks finished", w)
					}
				}
			},
		},
		"beforeShift hook failure → FAILED, no traffic moved": {
			plan: func() policy.Plan {
				p := testPlan(name, wstep(10, time.Minute), wstep(100, 0))
				p.Hooks.BeforeShift = []policy.Hook{{Exec: []string{"./migrate", "expand"}}}
				return p
			},
			run: func(t *testing.T, h *harness) {
				h.hooks.results["./migrate expand"] = hookResult{Output: "relation exists", Err: errBoom}
				st := h.runUntil("FAILED", time.Minute, tick, terminal, name)
				if st.State.Phase != policy.PhaseFailed || !strings.Contains(st.State.Reason, "boom") {
					t.Fatalf("phase %s (%s), want FAILED naming the error", st.State.Phase, st.State.Reason)
				}
				h.advance(time.Minute, tick)
				for i, r := range h.pub.Records() {
					s, _ := service(r.DS, name)
					if s.CanaryWeight != 0 || s.CanaryPublished {
						t.Errorf("publish %d: canary weight %d, published %v; want never routed", i, s.CanaryWeight, s.CanaryPublished)
					}
				}
				if got := h.hooks.Calls(); !reflect.DeepEqual(got, []string{"./migrate expand"}) {
					t.Errorf("hook calls %v", got)
				}
				var output bool
				for _, e := range h.events(name) {
					output = output || e.Output == "relation exists"
				}
				if !output {
					t.Errorf("the hook's output is not in the event log")
				}
			},
		},
		"afterPromote failure → SUCCEEDED with HookError": {
			plan: func() policy.Plan {
				p := testPlan(name, wstep(50, 5*time.Second), wstep(100, 5*time.Second))
				p.Hooks.AfterPromote = []policy.Hook{{Webhook: &policy.Webhook{URL: "http://127.0.0.1:9/contract"}}}
				return p
			},
			run: func(t *testing.T, h *harness) {
				h.hooks.results["http://127.0.0.1:9/contract"] = hookResult{Err: errBoom}
				st := h.runUntil("SUCCEEDED", 5*time.Minute, tick, terminal, name)
				if st.State.Phase != policy.PhaseSucceeded || !strings.Contains(st.State.HookError, "boom") {
					t.Fatalf("phase %s hookError %q, want SUCCEEDED with the hook's error", st.State.Phase, st.State.HookError)
				}
				if h.lastService(name).StablePublished {
					t.Errorf("afterPromote ran before the stable was withdrawn")
				}
			},
		},
		"NACK of a route version → HOLDING naming the node and error": {
			plan: func() policy.Plan {
				return testPlan(name, wstep(10, 10*time.Second), wstep(50, 10*time.Second), wstep(100, 0))
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("step 1", time.Minute, tick, func(st policy.Status) bool { return st.State.StepIndex == 1 }, name)
				h.fleet.Reject(policy.KindRoutes, h.get(name).State.RouteVersion, "unknown cluster checkout-v2")
				st := h.runUntil("HOLDING", 5*time.Second, tick, inPhase(policy.PhaseHolding), name)
				if !strings.Contains(st.State.Reason, "envoy-1") || !strings.Contains(st.State.Reason, "unknown cluster checkout-v2") {
					t.Errorf("reason %q does not name the node and its error", st.State.Reason)
				}
				h.advance(time.Minute, tick)
				if st := h.get(name); st.State.Phase != policy.PhaseHolding || st.State.StepIndex != 1 || st.State.HoldCounted != 0 {
					t.Errorf("after a minute of NACKs: %s step %d counted %s; want HOLDING at step 1 with nothing counted", st.State.Phase, st.State.StepIndex, st.State.HoldCounted)
				}
			},
		},
		"Apply with the same canary keeps the position": {
			plan: func() policy.Plan {
				return testPlan(name, wstep(10, time.Minute), wstep(50, time.Minute), wstep(100, 0))
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("step 1", 2*time.Minute, tick, func(st policy.Status) bool { return st.State.StepIndex == 1 }, name)
				h.advance(20*time.Second, tick)
				before := h.get(name)
				p := testPlan(name, wstep(10, time.Minute), wstep(50, 2*time.Minute), wstep(100, 0))
				p.Listener.PathPrefix = "/api"
				st := h.apply(p)
				if st.State.Phase != before.State.Phase || st.State.StepIndex != 1 || st.State.Weight != 50 || st.State.HoldCounted != before.State.HoldCounted {
					t.Fatalf("after apply: %s step %d weight %d counted %s; before: %s step %d weight %d counted %s",
						st.State.Phase, st.State.StepIndex, st.State.Weight, st.State.HoldCounted,
						before.State.Phase, before.State.StepIndex, before.State.Weight, before.State.HoldCounted)
				}
				if st.HoldRemaining != 2*time.Minute-before.State.HoldCounted {
					t.Errorf("hold remaining %s, want the new hold less what was counted", st.HoldRemaining)
				}
				if s := h.lastService(name); s.Listener.PathPrefix != "/api" || s.CanaryWeight != 50 {
					t.Errorf("published %+v, want the new path prefix at weight 50", s)
				}
			},
		},
		"Apply with a new canary restarts at PENDING": {
			plan: func() policy.Plan {
				return testPlan(name, wstep(10, time.Minute), wstep(50, time.Minute), wstep(100, 0))
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("step 1", 2*time.Minute, tick, func(st policy.Status) bool { return st.State.StepIndex == 1 }, name)
				p := testPlan(name, wstep(10, time.Minute), wstep(50, time.Minute), wstep(100, 0))
				p.Canary.Cluster = name + "-v3"
				st := h.apply(p)
				if st.State.Phase != policy.PhasePending || st.State.StepIndex != 0 || st.State.Weight != 0 || st.State.HoldCounted != 0 {
					t.Fatalf("after apply: %s step %d weight %d counted %s, want PENDING at step 0 weight 0", st.State.Phase, st.State.StepIndex, st.State.Weight, st.State.HoldCounted)
				}
				if s := h.lastService(name); s.CanaryWeight != 0 || s.Canary.Cluster != name+"-v3" {
					t.Errorf("published %+v, want the new canary at weight 0", s)
				}
				h.runUntil("SUCCEEDED", 5*time.Minute, tick, terminal, name)
			},
		},
		"Apply with the same canary after SUCCEEDED keeps it promoted": {
			plan: func() policy.Plan { return testPlan(name, wstep(50, 5*time.Second), wstep(100, 0)) },
			run: func(t *testing.T, h *harness) {
				h.runUntil("SUCCEEDED", time.Minute, tick, terminal, name)
				// Only the hold changed: there is nothing left to roll out,
				// and starting over would send traffic back to the stable
				// version that was drained and withdrawn.
				st := h.apply(testPlan(name, wstep(50, time.Minute), wstep(100, 0)))
				if st.State.Phase != policy.PhaseSucceeded || st.State.Weight != 100 {
					t.Fatalf("after apply: %s at weight %d, want SUCCEEDED at 100", st.State.Phase, st.State.Weight)
				}
				h.advance(time.Minute, tick)
				if s := h.lastService(name); s.CanaryWeight != 100 || s.StablePublished {
					t.Errorf("published %+v, want the canary at 100 and the stable withdrawn", s)
				}
			},
		},
		"Apply of the stored plan as a file reads it keeps a ROLLED_BACK rollout": {
			plan: func() policy.Plan {
				plans, ps := policy.ParseYAML([]byte(rolledBackYAML), "checkout.yaml")
				if len(ps) > 0 {
					panic(ps)
				}
				return plans[0]
			},
			run: func(t *testing.T, h *harness) {
				h.runUntil("PROGRESSING", time.Minute, tick, inPhase(policy.PhaseProgressing), name)
				h.gate.SetFrom(h.clock.Now(), policy.SignalFiring)
				h.runUntil("ROLLED_BACK", 5*time.Minute, tick, terminal, name)
				// A restart applies the plan files again (cmd/shiftplane's
				// applyInitial). The same file must not start the failed
				// canary over, even though the stored plan went through JSON.
				h.kill()
				h.start()
				plans, _ := policy.ParseYAML([]byte(rolledBackYAML), "checkout.yaml")
				st, err := h.eng.Apply(plans[0], "file:checkout.yaml")
				if err != nil {
					t.Fatal(err)
				}
				if st.State.Phase != policy.PhaseRolledBack {
					t.Fatalf("re-applying the same file: %s (%s), want ROLLED_BACK", st.State.Phase, st.State.Reason)
				}
				for _, w := range h.weights(name) {
					if w != 0 {
						t.Fatalf("weight %d published after re-applying the same plan", w)
					}
				}
			},
		},
		"Apply of an invalid plan returns Problems and changes nothing": {
			plan: func() policy.Plan { return testPlan(name, wstep(10, time.Minute), wstep(100, 0)) },
			run: func(t *testing.T, h *harness) {
				h.runUntil("PROGRESSING", time.Minute, tick, inPhase(policy.PhaseProgressing), name)
				h.advance(10*time.Second, tick)
				before, nPub, nEv := h.get(name), h.pub.Count(), len(h.events(name))
				bad := testPlan(name, wstep(10, time.Minute), wstep(120, 0))
				_, err := h.eng.Apply(bad, "api")
				var ps policy.Problems
				if !errors.As(err, &ps) || !errors.Is(err, policy.ErrInvalidPlan) {
					t.Fatalf("apply: %v (%T), want policy.Problems wrapping ErrInvalidPlan", err, err)
				}
				if len(ps) == 0 || ps[0].Field != "steps[1].weight" {
					t.Errorf("problems %v, want one naming steps[1].weight", ps)
				}
				after := h.get(name)
				if !reflect.DeepEqual(after.Rollout, before.Rollout) || h.pub.Count() != nPub || len(h.events(name)) != nEv {
					t.Errorf("an invalid apply changed the rollout, published or recorded")
				}
				// A plan that clashes with another rollout is refused too.
				other := testPlan("other", wstep(100, 0))
				other.Stable.Cluster = name + "-v1"
				if _, err := h.eng.Apply(other, "api"); !errors.As(err, &ps) {
					t.Errorf("apply of a plan reusing a cluster: %v, want Problems", err)
				}
				if _, err := h.eng.Get("other"); !errors.Is(err, policy.ErrNotFound) {
					t.Errorf("refused plan was created: %v", err)
				}
			},
		},
		"Delete removes the rollout, its routes and its history": {
			plan: func() policy.Plan { return testPlan(name, wstep(10, time.Minute), wstep(100, 0)) },
			run: func(t *testing.T, h *harness) {
				h.runUntil("PROGRESSING", time.Minute, tick, inPhase(policy.PhaseProgressing), name)
				if _, err := h.eng.Delete(name, policy.DeleteOptions{Force: true}); err != nil {
					t.Fatalf("delete: %v", err)
				}
				if _, err := h.eng.Get(name); !errors.Is(err, policy.ErrNotFound) {
					t.Errorf("get after delete: %v, want ErrNotFound", err)
				}
				recs := h.pub.Records()
				if _, ok := service(recs[len(recs)-1].DS, name); ok {
					t.Errorf("the last publish still carries %q", name)
				}
				stored, err := h.store.Load()
				if err != nil || len(stored) != 0 {
					t.Errorf("store after delete: %v, %v", stored, err)
				}
				if evs := h.events(name); len(evs) != 0 {
					t.Errorf("%d events left after delete", len(evs))
				}
				if _, err := h.eng.Delete(name, policy.DeleteOptions{Force: true}); !errors.Is(err, policy.ErrNotFound) {
					t.Errorf("second delete: %v, want ErrNotFound", err)
				}
				h.advance(time.Minute, tick)
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.apply(tc.plan())
			tc.run(t, h)
		})
	}
}

// rolledBackYAML carries empty lists, which JSON (the store) reads back
// as nil.
const rolledBackYAML = `name: checkout
listener: {address: "0.0.0.0:10000", domains: [checkout.example]}
stable: {cluster: checkout-v1, endpoints: ["127.0.0.1:8081"]}
canary: {cluster: checkout-v2, endpoints: ["127.0.0.1:8082"]}
steps: [{weight: 10, hold: 1h}, {weight: 100}]
analysis: {rollbackAfter: 30s}
hooks: {beforeShift: []}
`

func assertWithdrawnEvent(t *testing.T, h *harness, name, why string) {
	t.Helper()
	for _, e := range h.events(name) {
		if e.To == policy.PhasePromoting && strings.Contains(e.Reason, "stable cluster withdrawn") {
			if !strings.Contains(e.Reason, why) {
				t.Errorf("withdrawn for %q, want %q", e.Reason, why)
			}
			return
		}
	}
	t.Errorf("no event records the stable's withdrawal")
}

// TestOperationPreconditions checks which phases refuse which operations.
func TestOperationPreconditions(t *testing.T) {
	h := newHarness(t)
	h.apply(testPlan("a", wstep(10, time.Minute), wstep(100, 0)))
	for verb, op := range map[string]func(string, ...policy.OpOption) (policy.Status, error){
		"pause": h.eng.Pause, "resume": h.eng.Resume, "promote": h.eng.Promote, "abort": h.eng.Abort,
	} {
		if _, err := op("missing"); !errors.Is(err, policy.ErrNotFound) {
			t.Errorf("%s of a missing rollout: %v, want ErrNotFound", verb, err)
		}
	}
	if _, err := h.eng.Resume("a"); !isPrecondition(err) {
		t.Errorf("resume of a PENDING rollout: %v, want ErrFailedPrecondition", err)
	}
	if _, err := h.eng.Promote("a"); !isPrecondition(err) {
		t.Errorf("promote of a PENDING rollout: %v, want ErrFailedPrecondition", err)
	}
	h.runUntil("PROGRESSING", time.Minute, time.Second, inPhase(policy.PhaseProgressing), "a")
	if _, err := h.eng.Promote("a"); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if _, err := h.eng.Pause("a"); !isPrecondition(err) {
		t.Errorf("pause while PROMOTING: %v, want ErrFailedPrecondition", err)
	}
	h.runUntil("SUCCEEDED", time.Minute, time.Second, terminal, "a")
	for verb, op := range map[string]func(string, ...policy.OpOption) (policy.Status, error){
		"pause": h.eng.Pause, "resume": h.eng.Resume, "promote": h.eng.Promote, "abort": h.eng.Abort,
	} {
		if _, err := op("a"); !isPrecondition(err) {
			t.Errorf("%s of a SUCCEEDED rollout: %v, want ErrFailedPrecondition", verb, err)
		}
	}
}

// TestPauseRequestKeepsPosition pauses mid-hold and checks that paused time
// does not count and resume continues where it was.
func TestPauseRequestKeepsPosition(t *testing.T) {
	h := newHarness(t)
	h.apply(testPlan("a", wstep(10, time.Minute), wstep(100, 0)))
	h.runUntil("PROGRESSING", time.Minute, time.Second, inPhase(policy.PhaseProgressing), "a")
	h.advance(30*time.Second, time.Second)
	st, err := h.eng.Pause("a")
	if err != nil {
		t.Fatalf("pause: %v", err)
	}
	counted := st.State.HoldCounted
	h.advance(10*time.Minute, time.Second)
	st = h.get("a")
	if st.State.Phase != policy.PhasePaused || st.State.HoldCounted != counted || st.State.Weight != 10 {
		t.Fatalf("paused: %s counted %s weight %d, want PAUSED counted %s weight 10", st.State.Phase, st.State.HoldCounted, st.State.Weight, counted)
	}
	if _, err := h.eng.Resume("a"); err != nil {
		t.Fatalf("resume: %v", err)
	}
	h.advance(time.Second, time.Second)
	if st := h.get("a"); st.State.Phase != policy.PhaseProgressing || st.State.HoldCounted > counted+time.Second {
		t.Errorf("after resume: %s counted %s, want PROGRESSING from %s", st.State.Phase, st.State.HoldCounted, counted)
	}
	h.runUntil("SUCCEEDED", 2*time.Minute, time.Second, terminal, "a")
}

// TestPublishFailureKeepsWaiting: a failed publish is an error of the tick,
// and the step's hold does not count until a publish carries its weight.
func TestPublishFailureKeepsWaiting(t *testing.T) {
	h := newHarness(t)
	h.apply(testPlan("a", wstep(10, 10*time.Second), wstep(50, 10*time.Second), wstep(100, 0)))
	h.runUntil("step 0 counting", time.Minute, time.Second, func(st policy.Status) bool { return st.State.HoldCounted > 0 }, "a")
	h.pub.SetFail(errBoom)
	for i := 0; i < 30; i++ {
		h.clock.Advance(time.Second)
		if err := h.eng.Tick(); err != nil && !errors.Is(err, errBoom) {
			t.Fatalf("tick: %v", err)
		}
	}
	st := h.get("a")
	if st.State.StepIndex != 1 || st.State.HoldCounted != 0 || st.State.RouteVersion != "" {
		t.Fatalf("while publishing fails: step %d counted %s route version %q; want step 1, nothing counted, no version", st.State.StepIndex, st.State.HoldCounted, st.State.RouteVersion)
	}
	h.pub.SetFail(nil)
	h.runUntil("SUCCEEDED", time.Minute, time.Second, terminal, "a")
}

// TestSubscribeSeesEvents checks watchers get the events the store gets.
func TestSubscribeSeesEvents(t *testing.T) {
	h := newHarness(t)
	ch, cancel := h.eng.Subscribe()
	defer cancel()
	h.apply(testPlan("a", wstep(100, 0)))
	h.runUntil("SUCCEEDED", time.Minute, time.Second, terminal, "a")
	var got []string
	for len(ch) > 0 {
		if u := <-ch; u.Event != nil {
			got = append(got, fmt.Sprintf("%s→%s", u.Event.From, u.Event.To))
		}
	}
	var want []string
	for _, e := range h.events("a") {
		want = append(want, fmt.Sprintf("%s→%s", e.From, e.To))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("watcher saw %v, store has %v", got, want)
	}
}

// TestRestartResumesExactly runs rollouts through random worlds and kills
// the engine at random points (no shutdown: the engine is dropped, the
// bbolt handle closed, and policy.New starts over on the same file). The
// new engine must report the same position and remaining hold, and publish
// exactly what the old one last published before anything else.
func TestRestartResumesExactly(t *testing.T) {
	seeds := 20
	if *propSeed != 0 {
		seeds = 1
	}
	total := 0
	var mu sync.Mutex
	t.Run("seed", func(t *testing.T) {
		next := make(chan uint64)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for seed := range next {
					t.Run(fmt.Sprint(seed), func(t *testing.T) {
						n := runRestarts(t, seed)
						mu.Lock()
						total += n
						mu.Unlock()
					})
				}
			})
		}
		for i := range seeds {
			seed := uint64(i + 1)
			if *propSeed != 0 {
				seed = *propSeed
			}
			next <- seed
		}
		close(next)
		wg.Wait()
	})
	t.Logf("%d seeds, %d restarts", seeds, total)
}

func runRestarts(t *testing.T, seed uint64) (restarts int) {
	t.Helper()
	sc := newScenario(seed)
	defer func() {
		if t.Failed() {
			t.Logf("rerun with -prop.seed=%d\n%s", seed, sc)
		}
	}()
	h := newHarness(t) // PersistEvery 0: every tick is written
	h.gate.Script(sc.timeline)
	h.gate.SetActive(0, sc.drainKnown)
	h.fleet.SetDelay(sc.ackDelay)
	for _, w := range sc.windows {
		h.fleet.AddWindow(w)
	}
	rng := rand.New(rand.NewPCG(seed, 0xdead))
	h.apply(sc.plan)

	var published []int // every weight any engine published, in order
	collect := func() {
		for _, r := range h.pub.Records() {
			if s, ok := service(r.DS, propName); ok {
				published = append(published, s.CanaryWeight)
			}
		}
	}
	restart := func(where string) {
		t.Helper()
		restarts++
		collect()
		h.restartChecked(where, propName, time.Duration(rng.Int64N(int64(20*time.Second))))
	}

	aborted := false
	var resumeAt time.Time
	deadline := sc.horizon.Add(time.Hour)
	for {
		st := h.get(propName)
		if st.State.Phase.Terminal() {
			break
		}
		now := h.clock.Advance(sc.maxTick/4 + time.Duration(rng.Int64N(int64(sc.maxTick*3/4))))
		if now.After(deadline) {
			t.Fatalf("not finished at %s: %s (%s)", now.Sub(epoch), st.State.Phase, st.State.Reason)
		}
		switch {
		case !sc.abortAt.IsZero() && !now.Before(sc.abortAt):
			sc.abortAt = time.Time{}
			_, err := h.eng.Abort(propName)
			aborted = err == nil
		case st.State.Phase == policy.PhasePaused && resumeAt.IsZero():
			resumeAt = now.Add(time.Duration(rng.Int64N(int64(30 * time.Second))))
		case st.State.Phase == policy.PhasePaused && !now.Before(resumeAt):
			if _, err := h.eng.Resume(propName); err != nil {
				t.Fatalf("resume: %v", err)
			}
			resumeAt = time.Time{}
		case rng.Float64() < sc.pauseProb && (st.State.Phase == policy.PhaseProgressing || st.State.Phase == policy.PhaseHolding):
			if _, err := h.eng.Pause(propName); err != nil {
				t.Fatalf("pause: %v", err)
			}
		}
		if rng.Float64() < 0.03 {
			restart("after an operation")
		}
		h.tick()
		if rng.Float64() < 0.03 {
			restart(fmt.Sprintf("at %s", h.since()))
		}
	}
	collect()
	final := h.get(propName).State.Phase
	if aborted && final != policy.PhaseAborted {
		t.Errorf("aborted, but finished as %s (%s)", final, h.get(propName).State.Reason)
	}
	for i := 1; i < len(published); i++ {
		if published[i] < published[i-1] && published[i] != 0 {
			t.Errorf("weight %d published after %d across restarts: %v", published[i], published[i-1], published)
			break
		}
	}
	return restarts
}

// restartChecked kills the engine, lets downtime pass, starts a new one on
// the same store and checks that it resumes exactly where the old one was.
func (h *harness) restartChecked(where, name string, downtime time.Duration) {
	t := h.t
	t.Helper()
	old := h.get(name)
	recs := h.pub.Records()
	last := recs[len(recs)-1].DS
	h.kill()
	h.clock.Advance(downtime)
	h.start()
	recs = h.pub.Records()
	if len(recs) != 1 {
		t.Fatalf("restart %s: New published %d times, want once", where, len(recs))
	}
	if !equalDS(recs[0].DS, last) {
		t.Fatalf("restart %s: New published\n%+v\nthe old engine last published\n%+v", where, recs[0].DS, last)
	}
	got := h.get(name)
	if got.State.Phase != old.State.Phase || got.State.StepIndex != old.State.StepIndex ||
		got.State.Weight != old.State.Weight || got.HoldRemaining != old.HoldRemaining {
		t.Fatalf("restart %s: %s step %d weight %d hold remaining %s; before the kill %s step %d weight %d hold remaining %s",
			where, got.State.Phase, got.State.StepIndex, got.State.Weight, got.HoldRemaining,
			old.State.Phase, old.State.StepIndex, old.State.Weight, old.HoldRemaining)
	}
	if g, o := stateCore(got.State), stateCore(old.State); !reflect.DeepEqual(g, o) {
		t.Fatalf("restart %s: state\n%+v\nbefore the kill\n%+v", where, g, o)
	}
	if !reflect.DeepEqual(got.Plan, old.Plan) || got.Source != old.Source || !got.AppliedAt.Equal(old.AppliedAt) {
		t.Fatalf("restart %s: the plan or its source changed", where)
	}
}

// TestRestartAtEveryTick kills the engine after each tick in turn of a
// scripted rollout that passes through every phase (hooks, a NACK, a
// firing spell, a manual gate, promotion and drain, or an abort), and
// checks it resumes exactly and finishes the same way.
func TestRestartAtEveryTick(t *testing.T) {
	const name = "checkout"
	plan := testPlan(name, wstep(10, 5*time.Second), pstep(), wstep(50, 5*time.Second), wstep(100, 0))
	plan.Analysis.StableFor = durp(2 * time.Second)
	plan.Hooks.BeforeShift = []policy.Hook{{Exec: []string{"./expand"}}}
	plan.Hooks.AfterPromote = []policy.Hook{{Exec: []string{"./contract"}}}
	tests := map[string]struct {
		abortAt int // tick of the abort; -1 for none
		want    policy.Phase
	}{
		"to SUCCEEDED":      {abortAt: -1, want: policy.PhaseSucceeded},
		"abort, to ABORTED": {abortAt: 9, want: policy.PhaseAborted},
	}
	// drive runs the rollout, killing the engine after tick killAt, and
	// returns how it ended and after how many ticks.
	drive := func(t *testing.T, abortAt, killAt int) (policy.Phase, int) {
		h := newHarness(t)
		h.fleet.SetDelay(1500 * time.Millisecond)
		h.fleet.AddWindow(nackWindow{From: epoch.Add(8 * time.Second), To: epoch.Add(14 * time.Second), Err: "bad route"})
		h.gate.Script([]change{{At: epoch.Add(15 * time.Second), State: policy.SignalFiring}, {At: epoch.Add(19 * time.Second), State: policy.SignalClear}})
		h.gate.SetActive(0, true)
		h.apply(plan)
		gate := 0
		for i := 0; ; i++ {
			st := h.get(name)
			if st.State.Phase.Terminal() {
				return st.State.Phase, i
			}
			if i > 200 {
				t.Fatalf("not finished after %d ticks: %s (%s)", i, st.State.Phase, st.State.Reason)
			}
			if i == abortAt {
				if _, err := h.eng.Abort(name); err != nil {
					t.Fatalf("abort: %v", err)
				}
			}
			if st.State.Phase == policy.PhasePaused {
				if gate++; gate == 3 {
					if _, err := h.eng.Resume(name); err != nil {
						t.Fatalf("resume: %v", err)
					}
				}
			}
			h.clock.Advance(time.Second)
			h.eng.WaitHooks()
			h.tick()
			if i == killAt {
				h.eng.WaitHooks()
				h.restartChecked(fmt.Sprintf("after tick %d", i), name, 0)
			}
		}
	}
	for tname, tc := range tests {
		t.Run(tname, func(t *testing.T) {
			t.Parallel()
			end, n := drive(t, tc.abortAt, -1)
			if end != tc.want {
				t.Fatalf("without a restart the rollout ends %s, want %s", end, tc.want)
			}
			for k := 0; k < n; k++ {
				t.Run(fmt.Sprintf("kill after tick %d", k), func(t *testing.T) {
					t.Parallel()
					if end, _ := drive(t, tc.abortAt, k); end != tc.want {
						t.Errorf("ended %s, want %s", end, tc.want)
					}
				})
			}
		})
	}
}

// The status carries when the signal entered its state.
func TestSignalSince(t *testing.T) {
	h := newHarness(t)
	h.apply(testPlan("since", wstep(10, time.Hour), wstep(100, 0)))
	h.runUntil("PROGRESSING", time.Minute, 100*time.Millisecond, inPhase(policy.PhaseProgressing), "since")
	clearSince := h.get("since").Signal.Since
	h.advance(5*time.Second, 100*time.Millisecond)
	if got := h.get("since").Signal.Since; !got.Equal(clearSince) {
		t.Fatalf("since moved from %s to %s while the signal stayed clear", clearSince, got)
	}
	fired := h.clock.Now()
	h.gate.SetFrom(fired, policy.SignalFiring)
	h.advance(2*time.Second, 100*time.Millisecond)
	st := h.get("since")
	if st.Signal.State != policy.SignalFiring || st.Signal.Since.Before(fired) || st.Signal.Since.After(fired.Add(100*time.Millisecond)) {
		t.Fatalf("signal %s since %s; want FIRING since about %s", st.Signal.State, st.Signal.Since, fired)
	}
}

// TestDoubleResumeDoesNotPassTheNextGate: pause and resume a moment before a
// manual gate; a second resume sent right after the first finds the
// rollout at the gate and must not pass it. A resume a while later does.
func TestDoubleResumeDoesNotPassTheNextGate(t *testing.T) {
	h := newHarness(t)
	h.apply(testPlan("a", wstep(10, 10*time.Second), pstep(), wstep(100, 0)))
	h.runUntil("PROGRESSING", time.Minute, 100*time.Millisecond, inPhase(policy.PhaseProgressing), "a")
	h.runUntil("hold nearly done", time.Minute, 100*time.Millisecond, func(s policy.Status) bool { return s.HoldRemaining <= 300*time.Millisecond }, "a")
	if _, err := h.eng.Pause("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.eng.Resume("a"); err != nil {
		t.Fatal(err)
	}
	st := h.runUntil("the gate", 5*time.Second, 100*time.Millisecond, inPhase(policy.PhasePaused), "a")
	if st.State.StepIndex != 1 {
		t.Fatalf("paused at step %d, want the gate (index 1)", st.State.StepIndex)
	}
	_, err := h.eng.Resume("a")
	if !isPrecondition(err) || !strings.Contains(err.Error(), "was resumed") {
		t.Fatalf("second resume moments later: %v, want FailedPrecondition (a repeat of the first)", err)
	}
	if st := h.get("a"); st.State.Phase != policy.PhasePaused || st.State.StepIndex != 1 {
		t.Fatalf("after the refused resume: %s at step %d", st.State.Phase, st.State.StepIndex)
	}
	// A caller that saw another step is refused too.
	seen := 0
	if _, err := h.eng.Resume("a", policy.Expecting(policy.Expect{StepIndex: &seen})); !isPrecondition(err) {
		t.Fatalf("resume by a caller who saw step 1: %v, want FailedPrecondition", err)
	}
	h.advance(policy.DuplicateWindow, 100*time.Millisecond)
	gate := 1
	if _, err := h.eng.Resume("a", policy.Expecting(policy.Expect{Phase: policy.PhasePaused, StepIndex: &gate})); err != nil {
		t.Fatalf("a deliberate resume at the gate: %v", err)
	}
	h.runUntil("SUCCEEDED", time.Minute, 100*time.Millisecond, terminal, "a")
}

// TestStoreFailureStopsTheRollout: while the store refuses writes nothing
// moves (no publish carries an unsaved decision) and an operation changes
// nothing; once writable the rollout goes on.
func TestStoreFailureStopsTheRollout(t *testing.T) {
	h := newHarness(t)
	h.apply(testPlan("a", wstep(10, 5*time.Second), wstep(50, 5*time.Second), wstep(100, 0)))
	h.runUntil("PROGRESSING", time.Minute, time.Second, inPhase(policy.PhaseProgressing), "a")
	nPub := h.pub.Count()
	if err := h.store.Close(); err != nil { // every write now fails
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		h.clock.Advance(time.Second)
		_ = h.eng.Tick() // reports the store error
	}
	st := h.get("a")
	if st.State.Weight != 10 || st.State.StepIndex != 0 || st.StoreError == "" {
		t.Fatalf("with the store down: weight %d step %d store error %q; want weight 10, step 0, the error shown", st.State.Weight, st.State.StepIndex, st.StoreError)
	}
	if h.pub.Count() != nPub {
		t.Fatalf("published %d times with the store down", h.pub.Count()-nPub)
	}
	if _, err := h.eng.Abort("a"); !errors.Is(err, policy.ErrStore) {
		t.Fatalf("abort with the store down: %v, want ErrStore", err)
	}
	if st := h.get("a"); st.State.Phase == policy.PhaseRollingBack || st.State.Weight != 10 {
		t.Fatalf("a refused abort changed the rollout: %s weight %d", st.State.Phase, st.State.Weight)
	}
	h.kill()
	h.start() // the store is writable again
	h.runUntil("SUCCEEDED", 2*time.Minute, time.Second, terminal, "a")
}
