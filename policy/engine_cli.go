package policy

import "fmt"

// ApplyOutcome is what an Apply did to a rollout, as `kubectl apply`
// reports it.
type ApplyOutcome string

// Apply outcomes.
const (
	ApplyCreated    ApplyOutcome = "created"    // the rollout did not exist
	ApplyConfigured ApplyOutcome = "configured" // its plan changed
	ApplyUnchanged  ApplyOutcome = "unchanged"  // the plan is the one it has
)

// ApplyReport is Apply that also says whether it created, changed or left
// unchanged the rollout. The comparison is the one Apply makes (samePlan).
func (e *Engine) ApplyReport(plan Plan, source string) (Status, ApplyOutcome, error) {
	e.mu.Lock()
	r, exists := e.rollouts[plan.Name]
	same := exists && samePlan(r.Plan, plan)
	e.mu.Unlock()
	st, err := e.Apply(plan, source)
	if err != nil {
		return Status{}, "", err
	}
	switch {
	case !exists:
		return st, ApplyCreated, nil
	case same:
		return st, ApplyUnchanged, nil
	}
	return st, ApplyConfigured, nil
}

// Retry restarts an ABORTED, ROLLED_BACK or FAILED rollout from its first
// step with the plan it has: PENDING, as a new plan with a new canary is.
// Any other phase is ErrFailedPrecondition; a SUCCEEDED rollout has
// nothing left to roll out (apply a plan with a new canary instead).
func (e *Engine) Retry(name string) (Status, error) {
	return e.op(name, "retry", func(r *entry) error {
		from := r.State.Phase
		switch from {
		case PhaseAborted, PhaseRolledBack, PhaseFailed:
		case PhaseSucceeded:
			return fmt.Errorf("%w: rollout %q SUCCEEDED: nothing to retry; apply a plan with a new canary for the next release", ErrFailedPrecondition, r.Plan.Name)
		default:
			return fmt.Errorf("%w: rollout %q is %s; only an ABORTED, ROLLED_BACK or FAILED rollout can be retried", ErrFailedPrecondition, r.Plan.Name, from)
		}
		now := e.clock.Now()
		r.AppliedAt = now
		r.State = State{Phase: PhasePending, StablePublished: true, Created: now, Updated: now}
		r.rt = runtime{}
		e.dirty = true
		e.record(r, Event{Time: now, From: from, To: PhasePending, Reason: fmt.Sprintf("retry on request after %s; restarting from step 1", from)})
		return nil
	})
}
