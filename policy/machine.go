package policy

import (
	"fmt"
	"strings"
	"time"
)

// This file is the rollout state machine: every phase transition is here.
//
//	PENDING      beforeShift hooks run, then the canary cluster is published
//	             at weight 0; once the fleet ACKed it → PROGRESSING at step 0.
//	PROGRESSING  the step's weight is published; its hold counts while the
//	             fleet has ACKed it and the signal has been clear for stableFor.
//	             Hold done → next step (PAUSED at a pause step), or PROMOTING
//	             after the last one. Signal firing/stale or a NACK → HOLDING.
//	HOLDING      nothing moves. Clear again (and converged) → PROGRESSING;
//	             firing without a break for rollbackAfter → ROLLING_BACK.
//	PAUSED       a pause step or a pause request; resume/promote leaves it;
//	             firing for rollbackAfter still rolls back.
//	PROMOTING    weight 100; once the stable cluster drained it is withdrawn,
//	             afterPromote hooks run → SUCCEEDED.
//	ROLLING_BACK weight 0; once ACKed → ROLLED_BACK (or ABORTED on request).
//	FAILED       a beforeShift hook failed; no traffic moved.

// runtime is what the engine knows of a rollout beyond its stored state:
// timers that restart with the process.
type runtime struct {
	lastTick     time.Time
	badSince     time.Time // when the signal last went firing or stale; zero if clear
	clearSince   time.Time // when the signal last turned clear after being bad
	firingSince  time.Time // start of the current unbroken firing stretch
	signal       Signal
	promoteStart time.Time
	drainZero    time.Time // since when the stable has shown 0 active requests
	hook         *hookRun
	persistedAt  time.Time
}

type hookRun struct {
	stage  string // "beforeShift" or "afterPromote"
	done   bool
	err    error
	output string
}

// transition moves r to phase to, recording why. It returns the event.
func (e *Engine) transition(r *entry, to Phase, reason string) {
	from := r.State.Phase
	r.State.Phase = to
	r.State.Reason = reason
	r.State.Updated = e.clock.Now()
	e.record(r, Event{Time: e.clock.Now(), From: from, To: to, Reason: reason, Weight: r.State.Weight, StepIndex: r.State.StepIndex})
}

// setWeight publishes a new canary weight for r (on the next publish).
func (e *Engine) setWeight(r *entry, w int) {
	if r.State.Weight != w {
		r.State.Weight = w
		r.State.RouteVersion = "" // set by the publish that carries it
		r.State.HoldCounted = 0
		e.dirty = true
	}
}

// step advances one rollout by one tick. It is called with e.mu held.
func (e *Engine) step(r *entry, now time.Time) {
	st := &r.State
	rt := &r.rt
	prev := rt.lastTick
	rt.lastTick = now
	if st.Phase.Terminal() {
		return
	}
	plan := r.Plan.WithDefaults()
	steps := plan.Schedule()
	e.observeSignal(r, plan, now)

	switch st.Phase {
	case PhasePending:
		if !st.BeforeShiftDone {
			if done, err, out := e.runHooks(r, "beforeShift", plan.Hooks.BeforeShift); !done {
				return
			} else if err != nil {
				e.transition(r, PhaseFailed, fmt.Sprintf("beforeShift hook failed, no traffic moved: %v%s", err, outputNote(out)))
				return
			}
			st.BeforeShiftDone = true
			st.CanaryPublished = true
			st.ClusterVersion = ""
			e.dirty = true
			e.persistSoon(r)
			return
		}
		if !e.converged(r, KindClusters, st.ClusterVersion) {
			return
		}
		st.StepIndex = 0
		e.enterStep(r, steps, "canary cluster ACKed by the fleet")

	case PhaseProgressing, PhaseHolding:
		if st.PromoteRequested {
			e.promote(r, steps)
			return
		}
		if e.maybeRollback(r, plan, now) {
			return
		}
		bad, hold, why := e.blocked(r, plan, now)
		if bad {
			switch {
			case !hold:
				// Waiting for the fleet to ACK is progress, not a hold.
				st.Reason = why
			case st.Phase != PhaseHolding:
				e.transition(r, PhaseHolding, why)
			case st.Reason != why:
				// Still holding, for another reason: no new phase, so no event.
				st.Reason = why
				e.persistSoon(r)
			}
			return
		}
		if st.Phase == PhaseHolding {
			e.transition(r, PhaseProgressing, "signal clear and fleet converged; hold counting again")
		}
		st.HoldCounted += countable(prev, now, rt.clearSince, plan.Analysis.StableForDuration())
		e.persistSoon(r)
		if hold := steps[st.StepIndex].Hold.D(); st.HoldCounted >= hold {
			e.advance(r, steps)
		}

	case PhasePaused:
		if st.PromoteRequested {
			e.promote(r, steps)
			return
		}
		// A paused canary that takes traffic is still watched: pausing
		// stops the schedule, not the safety net.
		if st.Weight > 0 && st.CanaryPublished {
			e.maybeRollback(r, plan, now)
		}

	case PhasePromoting:
		e.promoting(r, plan, now)

	case PhaseRollingBack:
		if !e.converged(r, KindRoutes, st.RouteVersion) {
			return
		}
		if st.Aborted {
			e.transition(r, PhaseAborted, "aborted; the fleet ACKed weight 0")
		} else {
			e.transition(r, PhaseRolledBack, "rolled back; the fleet ACKed weight 0")
		}
	}
}

// blocked says whether the current step's hold must not count now, whether
// that makes the rollout HOLDING (a NACK or a bad signal) rather than just
// waiting for the fleet, and why.
func (e *Engine) blocked(r *entry, plan Plan, now time.Time) (blocked, hold bool, why string) {
	st := &r.State
	if st.RouteVersion == "" {
		return true, false, fmt.Sprintf("publishing weight %d", st.Weight)
	}
	c := e.fleet.Convergence(KindRoutes, st.RouteVersion)
	if len(c.Nacks) > 0 {
		return true, true, "fleet rejected route version " + st.RouteVersion + ": " + strings.Join(c.Nacks, "; ")
	}
	rt := &r.rt
	switch rt.signal.State {
	case SignalFiring:
		return true, true, "signal firing: " + rt.signal.Reason
	case SignalStale:
		return true, true, "signal stale: " + rt.signal.Reason
	}
	if !rt.clearSince.IsZero() {
		if stable := plan.Analysis.StableForDuration(); now.Sub(rt.clearSince) < stable {
			return true, true, fmt.Sprintf("signal clear again; waiting stableFor (%s) before the hold counts", stable)
		}
	}
	if !c.Converged {
		return true, st.Phase == PhaseHolding, fmt.Sprintf("%s weight %d (route version %s)", c.Waiting(), st.Weight, st.RouteVersion)
	}
	return false, false, ""
}

// observeSignal updates the signal and its timers for r.
func (e *Engine) observeSignal(r *entry, plan Plan, now time.Time) {
	rt := &r.rt
	sig := e.gate.Evaluate(now, SignalQuery{Rollout: plan.Name, CanaryCluster: plan.Canary.Cluster, Analysis: plan.Analysis, Since: r.State.Created})
	// Until the canary takes traffic there is nothing to judge.
	if r.State.Weight == 0 && r.State.Phase == PhasePending {
		sig = Signal{State: SignalClear, Reason: "canary takes no traffic yet"}
	}
	switch sig.State {
	case SignalClear:
		if !rt.badSince.IsZero() {
			rt.badSince = time.Time{}
			rt.clearSince = now
		}
		rt.firingSince = time.Time{}
	default:
		if rt.badSince.IsZero() {
			rt.badSince = now
		}
		rt.clearSince = time.Time{}
		if sig.State == SignalFiring {
			if rt.firingSince.IsZero() {
				rt.firingSince = now
			}
		} else {
			rt.firingSince = time.Time{}
		}
	}
	sig.Since = rt.signal.Since
	if sig.State != rt.signal.State || sig.Since.IsZero() {
		sig.Since = now
	}
	rt.signal = sig
}

// maybeRollback starts a rollback if the signal fired without a break for
// analysis.rollbackAfter.
func (e *Engine) maybeRollback(r *entry, plan Plan, now time.Time) bool {
	after := plan.Analysis.RollbackAfterDuration()
	if after <= 0 || r.rt.firingSince.IsZero() || now.Sub(r.rt.firingSince) < after {
		return false
	}
	e.setWeight(r, 0)
	e.transition(r, PhaseRollingBack, fmt.Sprintf("signal fired for %s without a break (rollbackAfter): %s", now.Sub(r.rt.firingSince).Round(time.Millisecond), r.rt.signal.Reason))
	return true
}

// enterStep applies step st.StepIndex: a pause gate or a weight.
func (e *Engine) enterStep(r *entry, steps []Step, why string) {
	st := &r.State
	if isPause(steps, st.StepIndex) {
		st.HoldCounted = 0
		e.transition(r, PhasePaused, fmt.Sprintf("manual gate at step %d/%d: waiting for resume or promote", st.StepIndex+1, len(steps)))
		return
	}
	e.setWeight(r, *steps[st.StepIndex].Weight)
	st.HoldCounted = 0
	e.transition(r, PhaseProgressing, fmt.Sprintf("step %d/%d: weight %d, hold %s (%s)", st.StepIndex+1, len(steps), st.Weight, steps[st.StepIndex].Hold, why))
}

// advance moves past a finished step: to the next one, or to promotion.
func (e *Engine) advance(r *entry, steps []Step) {
	st := &r.State
	if st.StepIndex+1 >= len(steps) {
		e.promote(r, steps)
		return
	}
	st.StepIndex++
	e.enterStep(r, steps, "previous hold passed with the signal clear")
}

// promote sends all traffic to the canary and waits for the stable to drain.
func (e *Engine) promote(r *entry, steps []Step) {
	st := &r.State
	st.PromoteRequested = false
	st.Paused = false
	st.StepIndex = len(steps) - 1
	e.setWeight(r, 100)
	r.rt.promoteStart = e.clock.Now()
	r.rt.drainZero = time.Time{}
	e.transition(r, PhasePromoting, "weight 100; waiting for the stable cluster to drain")
}

func (e *Engine) promoting(r *entry, plan Plan, now time.Time) {
	st := &r.State
	rt := &r.rt
	if st.StablePublished {
		if !e.converged(r, KindRoutes, st.RouteVersion) {
			return
		}
		if rt.promoteStart.IsZero() {
			rt.promoteStart = now // resumed after a restart: the drain wait starts again
		}
		drained, why := e.drained(r, plan, now)
		if !drained {
			return
		}
		st.StablePublished = false
		st.RouteVersion = ""
		st.ClusterVersion = ""
		e.dirty = true
		e.record(r, Event{Time: now, From: st.Phase, To: st.Phase, Reason: "stable cluster withdrawn: " + why, Weight: st.Weight, StepIndex: st.StepIndex})
		e.persistSoon(r)
		return
	}
	if !e.converged(r, KindRoutes, st.RouteVersion) || !e.converged(r, KindClusters, st.ClusterVersion) {
		return
	}
	done, err, out := e.runHooks(r, "afterPromote", plan.Hooks.AfterPromote)
	if !done {
		return
	}
	if err != nil {
		st.HookError = fmt.Sprintf("afterPromote hook failed: %v", err)
		e.transition(r, PhaseSucceeded, st.HookError+"; traffic stays on the canary"+outputNote(out))
		return
	}
	e.transition(r, PhaseSucceeded, "promoted; stable drained and withdrawn"+outputNote(out))
}

// drained says whether the stable cluster has no requests in flight.
func (e *Engine) drained(r *entry, plan Plan, now time.Time) (bool, string) {
	rt := &r.rt
	active, known := e.gate.ActiveRequests(now, plan.Stable.Cluster)
	timeout := plan.Analysis.DrainTimeout.D()
	waited := now.Sub(rt.promoteStart)
	switch {
	case known && active == 0:
		if rt.drainZero.IsZero() {
			rt.drainZero = now
		}
		// One report of zero could predate the last request; wait a little.
		if now.Sub(rt.drainZero) >= e.drainQuiet {
			return true, "no active requests reported"
		}
	case known:
		rt.drainZero = time.Time{}
		if waited >= 10*timeout {
			return true, fmt.Sprintf("still %.0f active requests after %s; withdrawn anyway", active, waited.Round(time.Second))
		}
	default:
		if waited >= timeout {
			return true, fmt.Sprintf("no stats arrived for %s (drainTimeout)", timeout)
		}
	}
	return false, ""
}

// converged says whether the fleet has ACKed version of kind; "" means the
// publish carrying it has not happened yet.
func (e *Engine) converged(r *entry, kind ResourceKind, version string) bool {
	if version == "" {
		return false
	}
	c := e.fleet.Convergence(kind, version)
	if len(c.Nacks) > 0 {
		why := fmt.Sprintf("fleet rejected %s version %s: %s", kind, version, strings.Join(c.Nacks, "; "))
		if r.State.Reason != why {
			r.State.Reason = why
			e.record(r, Event{Time: e.clock.Now(), From: r.State.Phase, To: r.State.Phase, Reason: why, Weight: r.State.Weight, StepIndex: r.State.StepIndex})
		}
		return false
	}
	if !c.Converged {
		why := fmt.Sprintf("%s %s version %s", c.Waiting(), kind, version)
		if r.State.Reason != why {
			r.State.Reason = why
			e.persistSoon(r)
		}
	}
	return c.Converged
}

// countable is how much of (prev, now] counts towards a hold: none before
// the first tick, and none within stableFor of the signal clearing.
func countable(prev, now, clearSince time.Time, stableFor time.Duration) time.Duration {
	if prev.IsZero() {
		return 0
	}
	start := prev
	if !clearSince.IsZero() {
		if s := clearSince.Add(stableFor); s.After(start) {
			start = s
		}
	}
	if !now.After(start) {
		return 0
	}
	return now.Sub(start)
}

func isPause(steps []Step, i int) bool { return i >= 0 && i < len(steps) && steps[i].Pause != nil }

func outputNote(out string) string {
	if out == "" {
		return ""
	}
	return " (output recorded in the event log)"
}
