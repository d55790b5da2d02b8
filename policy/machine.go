package policy

import (
	"fmt"
	"strings"
	"time"
)

// This file is the rollout state machine. Decide is a pure function: given
// a rollout (plan and stored state), its timers and one input (a tick with
// the facts the engine gathered, or an operation), it returns the new state
// and timers, the events to record, whether the desired state changed and
// which hooks to start. No locks, clock, store or I/O in here; the Engine
// gathers the facts and carries out the result. Every transition is below:
//
//	PENDING      beforeShift hooks run, then the canary cluster is published
//	             at weight 0; once every resource the rollout needs (clusters,
//	             endpoints, listener, routes) is ACKed by the fleet →
//	             PROGRESSING at step 1 (or PAUSED if step 1 is a gate).
//	             A hook fails → FAILED, no traffic moved.
//	PROGRESSING  the step's weight is published; its hold counts while the
//	             fleet has ACKed everything, the signal is CLEAR (for
//	             stableFor after it was bad) and the canary is seen serving
//	             requests (weighted, matched by canary.match or mirrored; a
//	             weight-0 step without either asks for none). Hold done and
//	             minRequests seen → next step (PAUSED
//	             at a gate), or PROMOTING after the last one. Signal FIRING or
//	             STALE, a NACK, no requests → HOLDING.
//	HOLDING      nothing moves. Clear again, converged and serving →
//	             PROGRESSING; FIRING for rollbackAfter (a clear spell shorter
//	             than stableFor does not break the streak) → ROLLING_BACK.
//	PAUSED       a gate step or a pause request. resume → back where it was,
//	             or past the gate (PROGRESSING); promote → PROMOTING; firing
//	             for rollbackAfter with traffic on the canary → ROLLING_BACK.
//	PROMOTING    weight 100; once the fleet ACKed it and the stable drained,
//	             the stable is withdrawn; once that is ACKed, afterPromote
//	             hooks run → SUCCEEDED (a hook failure is recorded, traffic
//	             stays on the canary).
//	ROLLING_BACK weight 0; once ACKed → ROLLED_BACK, or ABORTED after abort.
//	             (canary.match routes, a mirror and the affinity cookie route
//	             exist only in PROGRESSING, HOLDING and PAUSED: traffic.go;
//	             any change of them republishes, at any weight.)
//	terminal     SUCCEEDED, ROLLED_BACK, ABORTED, FAILED: only retry (from
//	             ROLLED_BACK, ABORTED, FAILED) → PENDING at step 1.
//
// Operations: pause (running phases except PROMOTING and ROLLING_BACK),
// resume (PAUSED), promote (PROGRESSING, HOLDING, PAUSED after PENDING),
// abort (running phases, unless the stable is already withdrawn), retry.

// Timers is what the machine knows of a rollout beyond its stored state;
// they restart with the process.
type Timers struct {
	LastTick time.Time
	// BadSince is when the signal last went firing or stale; zero if clear.
	BadSince time.Time
	// ClearSince is when the signal last turned clear after being bad.
	ClearSince time.Time
	// FiringSince starts a firing streak; a clear spell shorter than
	// stableFor, or a stale one, does not end it.
	FiringSince time.Time
	Signal      Signal
	// StepStart is when the current step was entered; traffic counted for
	// minRequests must come from reports after it.
	StepStart    time.Time
	PromoteStart time.Time
	// DrainZero is since when the stable has shown 0 active requests.
	DrainZero time.Time
	// LastTraffic is the newest report that showed a canary request.
	LastTraffic time.Time
	// Counted maps a node to the newest traffic report already counted.
	Counted map[string]time.Time
}

// Op is what an Input asks of the machine.
type Op int

// The inputs the machine takes.
const (
	OpTick Op = iota
	OpPause
	OpResume
	OpPromote
	OpAbort
	OpRetry
)

var opNames = [...]string{"tick", "pause", "resume", "promote", "abort", "retry"}

func (o Op) String() string { return opNames[o] }

// Expect is the state an operation's caller saw. A zero field means any.
type Expect struct {
	Phase     Phase
	StepIndex *int
}

// HookStatus is the engine's report on the rollout's running hook stage.
type HookStatus struct {
	Stage   string // "" when none has been started
	Done    bool
	Err     error
	Output  string
	Started int // hooks in the stage
}

// Drain is what the fleet reports of the stable's requests in flight.
type Drain struct {
	Active float64
	Known  bool
}

// Input is one thing that happened to a rollout.
type Input struct {
	Op     Op
	Now    time.Time
	Reason string  // for abort: the caller's words
	Expect *Expect // for operations: what the caller saw

	// Facts, gathered by the engine for ticks.
	Signal Signal
	// Fleet is the convergence of every resource kind the state's versions
	// name, merged: converged only when all are.
	Fleet      Convergence
	Stable     Drain
	Hook       HookStatus
	DrainQuiet time.Duration
}

// HookStart asks the engine to run a stage's hooks.
type HookStart struct {
	Stage string
	Hooks []Hook
}

// Result is what Decide tells the engine to do.
type Result struct {
	State  State
	Timers Timers
	Events []Event
	// Publish: the desired state changed; publish it (after saving).
	Publish bool
	// StartHooks, when set, starts a stage's hooks.
	StartHooks *HookStart
	// HookDone: the finished stage was read; the engine may forget it.
	HookDone bool
	// Dirty: the state changed without an event (hold counted, a reason);
	// worth saving, but lazily.
	Dirty bool
	// Next is the earliest time at which a tick would decide something new
	// even if no fact changes (a hold ends, stableFor passes, a firing
	// streak reaches rollbackAfter, the canary's traffic goes stale, a drain
	// wait ends); zero when only a new fact (an operation, an ACK, a signal,
	// a hook's end) can move the rollout. The engine sets a timer on it.
	Next time.Time
}

// Decide applies one input to a rollout. plan has its defaults applied and
// steps is its schedule. An operation that the rollout's state does not
// allow returns an error wrapping ErrFailedPrecondition and no change.
func Decide(plan Plan, steps []Step, st State, tm Timers, in Input) (Result, error) {
	m := &machine{plan: plan, steps: steps, in: in, now: in.Now}
	m.res.State = st
	m.res.Timers = tm
	m.res.Timers.Counted = copyCounted(tm.Counted)
	before := TrafficFor(plan, steps, st).key()
	if err := m.run(); err != nil {
		return Result{}, err
	}
	// Match, mirror and affinity routes come and go with the phase and
	// step, not only with the weight (a mirror step and the rollback after
	// it are both weight 0).
	if TrafficFor(plan, steps, m.res.State).key() != before {
		m.republish()
	}
	if in.Op == OpTick {
		m.res.Next = m.next()
	}
	return m.res, nil
}

// next is Result.Next: the deadlines of the rollout's phase that lie ahead.
// A deadline that does not depend on time alone (the gate's staleness, a
// reported signal's expiry, a stream's ready grace) is not here: the
// engine's slow safety tick covers those.
func (m *machine) next() time.Time {
	st, tm, a := m.st(), m.tm(), m.plan.Analysis
	var t time.Time
	at := func(x time.Time) {
		if !x.IsZero() && x.After(m.now) && (t.IsZero() || x.Before(t)) {
			t = x
		}
	}
	switch st.Phase {
	case PhaseProgressing, PhaseHolding, PhasePaused:
		if after := a.RollbackAfterDuration(); after > 0 && tm.Signal.State == SignalFiring && !tm.FiringSince.IsZero() {
			at(tm.FiringSince.Add(after))
		}
		if st.Phase == PhasePaused {
			break
		}
		if !tm.ClearSince.IsZero() {
			at(tm.ClearSince.Add(a.StableForDuration()))
		}
		if st.Weight > 0 && a.MinRequestsValue() > 0 && !tm.LastTraffic.IsZero() {
			// blocked() holds once now-LastTraffic exceeds the window.
			at(tm.LastTraffic.Add(a.StaleAfter.D() + time.Nanosecond))
		}
		if i := st.StepIndex; i < len(m.steps) && !isPause(m.steps, i) {
			if blocked, _, _ := m.blocked(); !blocked {
				if left := m.steps[i].Hold.D() - st.HoldCounted; left > 0 {
					at(m.now.Add(left))
				}
			}
		}
	case PhasePromoting:
		c := m.in.Fleet
		if !st.StablePublished || !st.versionsStamped() || !c.Converged || len(c.Nacks) > 0 {
			break
		}
		timeout := a.DrainTimeout.D()
		switch d := m.in.Stable; {
		case d.Known && d.Active == 0 && !tm.DrainZero.IsZero():
			at(tm.DrainZero.Add(m.in.DrainQuiet))
		case d.Known:
			at(tm.PromoteStart.Add(10 * timeout))
		default:
			at(tm.PromoteStart.Add(timeout))
		}
	}
	return t
}

type machine struct {
	plan  Plan
	steps []Step
	in    Input
	now   time.Time
	res   Result
}

func (m *machine) st() *State  { return &m.res.State }
func (m *machine) tm() *Timers { return &m.res.Timers }

func (m *machine) run() error {
	if m.in.Op != OpTick {
		if err := m.expected(); err != nil {
			return err
		}
		if err := m.duplicate(); err != nil {
			return err
		}
		defer m.remember()
	}
	switch m.in.Op {
	case OpPause:
		return m.pause()
	case OpResume:
		return m.resume()
	case OpPromote:
		return m.promoteOp()
	case OpAbort:
		return m.abort()
	case OpRetry:
		return m.retry()
	}
	m.tick()
	return nil
}

// expected refuses an operation on a state its caller did not see.
func (m *machine) expected() error {
	x := m.in.Expect
	if x == nil {
		return nil
	}
	st := m.st()
	if (x.Phase != "" && x.Phase != st.Phase) || (x.StepIndex != nil && *x.StepIndex != st.StepIndex) {
		saw := "a different state"
		if x.Phase != "" && x.StepIndex != nil {
			saw = fmt.Sprintf("%s at %s", x.Phase, StepLabel(*x.StepIndex, len(m.steps)))
		} else if x.Phase != "" {
			saw = string(x.Phase)
		} else if x.StepIndex != nil {
			saw = StepLabel(*x.StepIndex, len(m.steps))
		}
		return fmt.Errorf("%w: rollout %q has moved on: it is %s at %s, you saw %s; look again and retry",
			ErrFailedPrecondition, m.plan.Name, st.Phase, StepLabel(st.StepIndex, len(m.steps)), saw)
	}
	return nil
}

// DuplicateWindow is how soon a repeated operation counts as a repeat of
// the last one rather than a new decision.
const DuplicateWindow = 2 * time.Second

// duplicate refuses an operation that repeats the last one moments after
// it, once the rollout has moved to another step since: a second resume
// sent right after a first must not pass the gate the first led to.
func (m *machine) duplicate() error {
	st := m.st()
	if st.LastOp != m.in.Op.String() || m.now.Sub(st.LastOpAt) >= DuplicateWindow || st.StepIndex == st.LastOpStep {
		return nil
	}
	return fmt.Errorf("%w: rollout %q was %s %s ago at %s and has moved to %s since; %s again if you mean this step",
		ErrFailedPrecondition, m.plan.Name, pastTense(st.LastOp), m.now.Sub(st.LastOpAt).Round(time.Millisecond),
		StepLabel(st.LastOpStep, len(m.steps)), m.label(), st.LastOp)
}

func (m *machine) remember() {
	st := m.st()
	st.LastOp, st.LastOpAt, st.LastOpStep = m.in.Op.String(), m.now, st.StepIndex
}

func pastTense(op string) string {
	if strings.HasSuffix(op, "e") {
		return op + "d"
	}
	return op + "ed"
}

// StepLabel numbers steps from 1 for people: "step 3/5".
func StepLabel(index, count int) string { return fmt.Sprintf("step %d/%d", index+1, count) }

func (m *machine) label() string { return StepLabel(m.st().StepIndex, len(m.steps)) }

// transition moves to phase to, recording why.
func (m *machine) transition(to Phase, reason string) {
	st := m.st()
	from := st.Phase
	st.Phase = to
	st.Reason = reason
	st.Updated = m.now
	m.event(from, to, reason, "")
}

// note records a fact without a phase change.
func (m *machine) note(reason, output string) {
	m.st().Reason = reason
	m.event(m.st().Phase, m.st().Phase, reason, output)
}

func (m *machine) event(from, to Phase, reason, output string) {
	st := m.st()
	m.res.Events = append(m.res.Events, Event{Time: m.now, Rollout: m.plan.Name, From: from, To: to, Reason: reason,
		Weight: st.Weight, StepIndex: st.StepIndex, Output: output})
}

// reason updates the explanation without an event.
func (m *machine) reason(why string) {
	if m.st().Reason != why {
		m.st().Reason = why
		m.res.Dirty = true
	}
}

// setWeight changes the canary weight to publish; the versions that carry
// it are stamped by the publish.
func (m *machine) setWeight(w int) {
	st := m.st()
	if st.Weight != w {
		st.Weight = w
		st.clearVersions()
		st.HoldCounted = 0
		m.res.Publish = true
	}
}

// republish marks the desired state changed for a reason other than weight.
func (m *machine) republish() {
	m.st().clearVersions()
	m.res.Publish = true
}

func (m *machine) tick() {
	st := m.st()
	tm := m.tm()
	prev := tm.LastTick
	tm.LastTick = m.now
	if st.Phase.Terminal() {
		return
	}
	m.observe()

	switch st.Phase {
	case PhasePending:
		m.pending()
	case PhaseProgressing, PhaseHolding:
		if m.maybeRollback() {
			return
		}
		m.countTraffic()
		m.progress(prev)
	case PhasePaused:
		// Pausing stops the schedule, not the safety net.
		if m.canaryServes() && st.CanaryPublished {
			m.countTraffic()
			m.maybeRollback()
		}
	case PhasePromoting:
		m.promoting()
	case PhaseRollingBack:
		if m.converged() {
			if st.Aborted {
				m.transition(PhaseAborted, "aborted; the fleet ACKed weight 0")
			} else {
				m.transition(PhaseRolledBack, "rolled back; the fleet ACKed weight 0")
			}
		}
	}
}

func (m *machine) pending() {
	st := m.st()
	if !st.BeforeShiftDone {
		done, out, err := m.hooks("beforeShift", m.plan.Hooks.BeforeShift)
		if !done {
			return
		}
		if err != nil {
			m.transition(PhaseFailed, fmt.Sprintf("beforeShift hook failed, no traffic moved: %v%s", err, outputNote(out)))
			return
		}
		st.BeforeShiftDone = true
		st.CanaryPublished = true
		m.republish()
		m.res.Dirty = true
		return
	}
	// Make before break: the canary cluster, its endpoints and the listener
	// must be in every node before any route sends them traffic.
	if !m.converged() {
		return
	}
	st.StepIndex = 0
	m.enterStep("canary cluster, endpoints and listener ACKed by the fleet")
}

// progress counts the current step's hold, or says why it cannot.
func (m *machine) progress(prev time.Time) {
	st := m.st()
	blocked, hold, why := m.blocked()
	if blocked {
		switch {
		case !hold:
			// Waiting for the fleet to ACK is progress, not a hold.
			m.reason(why)
		case st.Phase != PhaseHolding:
			m.transition(PhaseHolding, why)
		default:
			m.reason(why)
		}
		return
	}
	if st.Phase == PhaseHolding {
		m.transition(PhaseProgressing, "signal clear, fleet converged and the canary serving; hold counting again")
	}
	st.HoldCounted += countable(prev, m.now, m.tm().ClearSince, m.plan.Analysis.StableForDuration())
	m.res.Dirty = true
	step := m.steps[st.StepIndex]
	if st.HoldCounted < step.Hold.D() {
		return
	}
	if need := m.plan.Analysis.MinRequestsValue(); m.canaryServes() && st.StepRequests < float64(need) {
		// Requests are arriving (blocked() holds the rollout when none
		// do): this is waiting for the count, not a hold.
		m.reason(fmt.Sprintf("hold done; %g of %d canary requests seen in this step (analysis.minRequests)", st.StepRequests, need))
		return
	}
	m.advance()
}

// blocked says whether the current step's hold must not count now, whether
// that makes the rollout HOLDING (a NACK, a bad signal, no traffic) rather
// than just waiting for the fleet, and why.
func (m *machine) blocked() (blocked, hold bool, why string) {
	st := m.st()
	if !st.versionsStamped() {
		return true, false, fmt.Sprintf("publishing weight %d", st.Weight)
	}
	c := m.in.Fleet
	if len(c.Nacks) > 0 {
		return true, true, "fleet rejected the rollout's config: " + strings.Join(c.Nacks, "; ")
	}
	tm := m.tm()
	switch tm.Signal.State {
	case SignalFiring:
		return true, true, "signal firing: " + tm.Signal.Reason
	case SignalStale:
		return true, true, "signal stale: " + tm.Signal.Reason
	}
	a := m.plan.Analysis
	if !tm.ClearSince.IsZero() {
		if stable := a.StableForDuration(); m.now.Sub(tm.ClearSince) < stable {
			return true, true, fmt.Sprintf("signal clear again; waiting stableFor (%s) before the hold counts", stable)
		}
	}
	if !c.Converged {
		return true, st.Phase == PhaseHolding, fmt.Sprintf("%s weight %d (route version %s)", c.Waiting(), st.Weight, st.RouteVersion)
	}
	// No evidence is not clearance: a hold counts only while requests are
	// seen reaching the canary.
	if m.canaryServes() && a.MinRequestsValue() > 0 {
		window := a.StaleAfter.D()
		if tm.LastTraffic.IsZero() || m.now.Sub(tm.LastTraffic) > window {
			return true, true, fmt.Sprintf("no requests reached %s in the last %s", m.plan.Canary.Cluster, window)
		}
	}
	return false, false, ""
}

// observe updates the signal and its timers.
func (m *machine) observe() {
	tm := m.tm()
	sig := m.in.Signal
	if m.st().Phase != PhasePending {
		stableFor := m.plan.Analysis.StableForDuration()
		switch sig.State {
		case SignalClear:
			if !tm.BadSince.IsZero() {
				tm.BadSince = time.Time{}
				tm.ClearSince = m.now
			}
			// Envoy un-ejects a host between ejections: a clear spell shorter
			// than stableFor does not end a firing streak.
			if !tm.FiringSince.IsZero() && (tm.ClearSince.IsZero() || m.now.Sub(tm.ClearSince) >= stableFor) {
				tm.FiringSince = time.Time{}
			}
		default:
			if tm.BadSince.IsZero() {
				tm.BadSince = m.now
			}
			tm.ClearSince = time.Time{}
			if sig.State == SignalFiring && tm.FiringSince.IsZero() {
				tm.FiringSince = m.now
			}
		}
	}
	sig.Since = tm.Signal.Since
	if sig.State != tm.Signal.State || sig.Since.IsZero() {
		sig.Since = m.now
	}
	tm.Signal = sig
}

// countTraffic adds the canary requests of reports not counted before.
func (m *machine) countTraffic() {
	tm := m.tm()
	st := m.st()
	for _, s := range m.in.Signal.Traffic {
		if !s.At.After(tm.Counted[s.Node]) {
			continue
		}
		if tm.Counted == nil {
			tm.Counted = map[string]time.Time{}
		}
		tm.Counted[s.Node] = s.At
		if s.Requests <= 0 {
			continue
		}
		if s.At.After(tm.LastTraffic) {
			tm.LastTraffic = s.At
		}
		if !s.From.Before(tm.StepStart) && m.canaryServes() {
			st.StepRequests += s.Requests
			m.res.Dirty = true
		}
	}
}

// maybeRollback starts a rollback once the signal has been firing, in one
// streak, for analysis.rollbackAfter.
func (m *machine) maybeRollback() bool {
	tm := m.tm()
	after := m.plan.Analysis.RollbackAfterDuration()
	if after <= 0 || tm.Signal.State != SignalFiring || tm.FiringSince.IsZero() || m.now.Sub(tm.FiringSince) < after {
		return false
	}
	m.setWeight(0)
	m.transition(PhaseRollingBack, fmt.Sprintf("signal firing for %s (rollbackAfter %s): %s",
		m.now.Sub(tm.FiringSince).Round(time.Millisecond), after, tm.Signal.Reason))
	return true
}

// canaryServes reports whether the canary is sent requests now: a weight
// above 0, or matched or mirrored requests (traffic.go). Only then is
// evidence of traffic asked for and counted.
func (m *machine) canaryServes() bool {
	return m.st().Weight > 0 || TrafficFor(m.plan, m.steps, *m.st()).canaryServes()
}

// enterStep applies the current step: a gate or a weight.
func (m *machine) enterStep(why string) {
	st := m.st()
	st.HoldCounted = 0
	st.StepRequests = 0
	m.tm().StepStart = m.now
	if isPause(m.steps, st.StepIndex) {
		st.PausedFrom = ""
		m.transition(PhasePaused, fmt.Sprintf("manual gate at %s: waiting for resume or promote", m.label()))
		return
	}
	m.setWeight(*m.steps[st.StepIndex].Weight)
	m.transition(PhaseProgressing, fmt.Sprintf("%s: weight %d, hold %s (%s)", m.label(), st.Weight, m.steps[st.StepIndex].Hold, why))
}

// advance moves past a finished step: to the next one, or to promotion.
func (m *machine) advance() {
	st := m.st()
	if st.StepIndex+1 >= len(m.steps) {
		m.promote()
		return
	}
	st.StepIndex++
	m.enterStep("previous hold passed with the signal clear and the canary serving")
}

// promote sends all traffic to the canary and waits for the stable to drain.
func (m *machine) promote() {
	st := m.st()
	st.PausedFrom = ""
	st.StepIndex = len(m.steps) - 1
	m.setWeight(100)
	m.tm().PromoteStart = m.now
	m.tm().DrainZero = time.Time{}
	m.transition(PhasePromoting, "weight 100; waiting for the stable cluster to drain")
}

func (m *machine) promoting() {
	st := m.st()
	tm := m.tm()
	if st.StablePublished {
		if !m.converged() {
			return
		}
		if tm.PromoteStart.IsZero() {
			tm.PromoteStart = m.now // resumed after a restart: the drain wait starts again
		}
		drained, why := m.drained()
		if !drained {
			return
		}
		st.StablePublished = false
		m.republish()
		m.note("stable cluster withdrawn: "+why, "")
		return
	}
	if !m.converged() {
		return
	}
	done, out, err := m.hooks("afterPromote", m.plan.Hooks.AfterPromote)
	if !done {
		return
	}
	if err != nil {
		st.HookError = fmt.Sprintf("afterPromote hook failed: %v", err)
		m.transition(PhaseSucceeded, st.HookError+"; traffic stays on the canary"+outputNote(out))
		return
	}
	m.transition(PhaseSucceeded, "promoted; stable drained and withdrawn"+outputNote(out))
}

// drained says whether the stable cluster has no requests in flight.
func (m *machine) drained() (bool, string) {
	tm := m.tm()
	d := m.in.Stable
	timeout := m.plan.Analysis.DrainTimeout.D()
	waited := m.now.Sub(tm.PromoteStart)
	switch {
	case d.Known && d.Active == 0:
		if tm.DrainZero.IsZero() {
			tm.DrainZero = m.now
		}
		// One report of zero could predate the last request; wait a little.
		if m.now.Sub(tm.DrainZero) >= m.in.DrainQuiet {
			return true, "no active requests reported"
		}
	case d.Known:
		tm.DrainZero = time.Time{}
		if waited >= 10*timeout {
			return true, fmt.Sprintf("still %.0f active requests after %s; withdrawn anyway", d.Active, waited.Round(time.Second))
		}
	default:
		if waited >= timeout {
			return true, fmt.Sprintf("no stats arrived for %s (drainTimeout)", timeout)
		}
	}
	return false, ""
}

// converged says whether the fleet has every resource the state names; a
// NACK is recorded once as an event.
func (m *machine) converged() bool {
	st := m.st()
	if !st.versionsStamped() {
		return false
	}
	c := m.in.Fleet
	if len(c.Nacks) > 0 {
		why := "fleet rejected the rollout's config: " + strings.Join(c.Nacks, "; ")
		if st.Reason != why {
			m.note(why, "")
		}
		return false
	}
	if !c.Converged {
		m.reason(fmt.Sprintf("%s (route version %s)", c.Waiting(), st.RouteVersion))
	}
	return c.Converged
}

// hooks drives a stage's hooks: it asks the engine to start them, waits,
// then reads the outcome. done is false while they run.
func (m *machine) hooks(stage string, hooks []Hook) (done bool, output string, err error) {
	if len(hooks) == 0 {
		return true, "", nil
	}
	h := m.in.Hook
	if h.Stage != stage {
		m.res.StartHooks = &HookStart{Stage: stage, Hooks: hooks}
		m.note(fmt.Sprintf("running %d %s hook(s)", len(hooks), stage), "")
		return false, "", nil
	}
	if !h.Done {
		return false, "", nil
	}
	m.res.HookDone = true
	if h.Output != "" || h.Err != nil {
		reason := stage + " hooks finished"
		if h.Err != nil {
			reason = stage + " hook failed: " + h.Err.Error()
		}
		m.note(reason, h.Output)
	}
	return true, h.Output, h.Err
}

func (m *machine) pause() error {
	st := m.st()
	if st.Phase.Terminal() || st.Phase == PhasePromoting || st.Phase == PhaseRollingBack {
		return fmt.Errorf("%w: rollout %q is %s and cannot be paused", ErrFailedPrecondition, m.plan.Name, st.Phase)
	}
	if st.Phase == PhasePaused {
		return nil
	}
	st.PausedFrom = st.Phase
	m.transition(PhasePaused, "paused on request")
	return nil
}

func (m *machine) resume() error {
	st := m.st()
	if st.Phase != PhasePaused {
		return fmt.Errorf("%w: rollout %q is %s, not PAUSED", ErrFailedPrecondition, m.plan.Name, st.Phase)
	}
	if isPause(m.steps, st.StepIndex) && st.PausedFrom == "" {
		// The gate is passed; a gate has no hold, so the next tick that
		// finds the signal clear and the fleet converged advances from it
		// (or promotes after a last gate).
		st.HoldCounted = 0
		m.transition(PhaseProgressing, fmt.Sprintf("manual gate at %s passed on request; the next step starts once the signal allows", m.label()))
		return nil
	}
	back := st.PausedFrom
	if back == "" || back == PhaseHolding {
		back = PhaseProgressing
	}
	st.PausedFrom = ""
	m.transition(back, "resumed on request")
	return nil
}

func (m *machine) promoteOp() error {
	st := m.st()
	switch st.Phase {
	case PhaseProgressing, PhaseHolding:
	case PhasePaused:
		if st.PausedFrom == PhasePending {
			// Promoting now would skip the beforeShift hooks and route
			// traffic to a canary cluster the fleet may not have.
			return fmt.Errorf("%w: rollout %q was paused before its canary was published; resume it first", ErrFailedPrecondition, m.plan.Name)
		}
	default:
		return fmt.Errorf("%w: rollout %q is %s; only a progressing, holding or paused rollout can be promoted", ErrFailedPrecondition, m.plan.Name, st.Phase)
	}
	m.promote()
	return nil
}

func (m *machine) abort() error {
	st := m.st()
	if st.Phase.Terminal() {
		return fmt.Errorf("%w: rollout %q already finished (%s)", ErrFailedPrecondition, m.plan.Name, st.Phase)
	}
	if st.Phase == PhasePromoting && !st.StablePublished {
		return fmt.Errorf("%w: rollout %q has withdrawn its stable cluster; apply a new plan instead", ErrFailedPrecondition, m.plan.Name)
	}
	why := "aborted on request; weight 0"
	if m.in.Reason != "" {
		why = "aborted on request (" + m.in.Reason + "); weight 0"
	}
	st.Aborted = true
	st.PausedFrom = ""
	m.setWeight(0)
	m.transition(PhaseRollingBack, why)
	return nil
}

func (m *machine) retry() error {
	st := m.st()
	switch st.Phase {
	case PhaseAborted, PhaseRolledBack, PhaseFailed:
	default:
		return fmt.Errorf("%w: rollout %q is %s; only an ABORTED, ROLLED_BACK or FAILED rollout can be retried", ErrFailedPrecondition, m.plan.Name, st.Phase)
	}
	from := st.Phase
	*st = freshState(m.now)
	m.res.Timers = Timers{}
	m.res.Publish = true
	st.Reason = fmt.Sprintf("retry on request after %s; restarting from step 1", from)
	m.event(from, PhasePending, st.Reason, "")
	return nil
}

// freshState is a rollout's state before its first step.
func freshState(now time.Time) State {
	return State{Phase: PhasePending, StablePublished: true, Created: now, Updated: now}
}

// ApplyOutcome says what an apply did.
type ApplyOutcome string

// The outcomes of an apply.
const (
	ApplyCreated    ApplyOutcome = "created"
	ApplyConfigured ApplyOutcome = "configured"
	ApplyUnchanged  ApplyOutcome = "unchanged"
)

// decideApply is the transition of an apply: a new rollout, the same plan
// (nothing), a changed plan with the same canary (position kept), or a new
// canary (start over). cur is nil for a new name.
func decideApply(cur *Rollout, plan Plan, source string, now time.Time) (Rollout, []Event, bool, ApplyOutcome) {
	ev := func(r Rollout, from, to Phase, reason string) []Event {
		return []Event{{Time: now, Rollout: plan.Name, From: from, To: to, Reason: reason, Weight: r.State.Weight, StepIndex: r.State.StepIndex}}
	}
	if cur == nil {
		r := Rollout{Plan: plan, Source: source, AppliedAt: now, State: freshState(now)}
		r.State.Reason = "created from " + source
		return r, ev(r, "", PhasePending, r.State.Reason), true, ApplyCreated
	}
	r := *cur
	switch {
	case samePlan(r.Plan, plan):
		if r.Source == source {
			return r, nil, false, ApplyUnchanged
		}
		r.Source = source
		return r, nil, false, ApplyUnchanged
	case sameCanary(r.Plan, plan) && !r.State.Phase.Terminal():
		r.Plan, r.Source, r.AppliedAt = plan, source, now
		steps := plan.WithDefaults().Schedule()
		if r.State.StepIndex >= len(steps) {
			r.State.StepIndex = len(steps) - 1
		}
		reason := "plan replaced from " + source + "; same canary, position kept"
		if (r.State.Phase == PhaseProgressing || r.State.Phase == PhaseHolding) && !isPause(steps, r.State.StepIndex) {
			if w := *steps[r.State.StepIndex].Weight; w != r.State.Weight {
				r.State.Weight = w
				reason += fmt.Sprintf("; %s now weight %d", StepLabel(r.State.StepIndex, len(steps)), w)
			}
		}
		r.State.clearVersions()
		return r, ev(r, r.State.Phase, r.State.Phase, reason), true, ApplyConfigured
	case sameCanary(r.Plan, plan) && r.State.Phase == PhaseSucceeded:
		// Nothing is left to roll out; starting over would send traffic back
		// to the stable version that was drained and withdrawn.
		r.Plan, r.Source, r.AppliedAt = plan, source, now
		r.State.clearVersions()
		return r, ev(r, r.State.Phase, r.State.Phase, "plan replaced from "+source+"; same canary, already promoted: nothing to roll out"), true, ApplyConfigured
	}
	from := r.State.Phase
	r.Plan, r.Source, r.AppliedAt = plan, source, now
	r.State = freshState(now)
	r.State.Reason = "plan replaced from " + source + " with a new canary (or after it finished); restarting from step 1"
	return r, ev(r, from, PhasePending, r.State.Reason), true, ApplyConfigured
}

// deleteEffect says what deleting r does to the fleet's config, and
// whether that takes traffic away (so it needs force). shared tells
// whether another rollout keeps r's listener.
func deleteEffect(r Rollout, shared bool) (effect string, needsForce bool) {
	p := r.Plan.WithDefaults()
	var clusters []string
	if r.State.StablePublished {
		clusters = append(clusters, p.Stable.Cluster)
	}
	if r.State.CanaryPublished {
		clusters = append(clusters, p.Canary.Cluster)
	}
	effect = fmt.Sprintf("removes virtual host %q (domains %s, prefix %s) and clusters %s from every Envoy",
		p.Name, strings.Join(p.Listener.Domains, ","), p.Listener.PathPrefix, strings.Join(clusters, ", "))
	if shared {
		effect += fmt.Sprintf("; listener %s stays for the other rollouts on it; requests for these domains get 404", p.Listener.Address)
	} else {
		effect += fmt.Sprintf("; listener %s is removed: connections to it are refused", p.Listener.Address)
	}
	// Every rollout routes its service's traffic until it is deleted, a
	// finished one through the version it ended on.
	if !r.State.Phase.Terminal() {
		return effect + fmt.Sprintf("; the rollout is %s and stops mid-release", r.State.Phase), true
	}
	return effect + fmt.Sprintf("; the rollout is %s and its routes carry the service's traffic", r.State.Phase), true
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

func copyCounted(m map[string]time.Time) map[string]time.Time {
	if m == nil {
		return nil
	}
	out := make(map[string]time.Time, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
