package policy

import "fmt"

// Detach tells the engine that the plan file source that defined rollout
// name no longer does (the file was removed, or no longer holds the plan).
// If the rollout's Source is still source it becomes SourceAPI and an event
// records it; its plan, state and traffic stay exactly as they are. A
// rollout whose Source is something else (another file took it over, or the
// API replaced it) is left alone. Removing a file never takes traffic away:
// `shiftctl delete` does that.
//
// This is a minimal version for the planfiles package; the engine owner
// replaces it.
func (e *Engine) Detach(name, source string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rollouts[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if r.Source != source {
		return nil
	}
	what := source
	if f, ok := SourceFile(source); ok {
		what = "plan file " + f
	}
	r.Source = SourceAPI
	e.record(r, Event{Time: e.clock.Now(), From: r.State.Phase, To: r.State.Phase, Weight: r.State.Weight, StepIndex: r.State.StepIndex,
		Reason: what + " removed; rollout kept as it is"})
	e.persistSoon(r)
	return e.flushLocked("detach " + name)
}
