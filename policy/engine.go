package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"time"
)

// Sentinel errors of the engine's operations; the API maps them to status codes.
var (
	ErrNotFound           = errors.New("rollout not found")
	ErrFailedPrecondition = errors.New("failed precondition")
)

// Options configure an Engine.
type Options struct {
	Store     Store
	Publisher Publisher
	Fleet     FleetView
	Gate      SignalGate
	Hooks     HookRunner
	Clock     Clock
	Log       *slog.Logger
	Validate  ValidateOptions
	// PersistEvery bounds how often a counting hold is written to the store;
	// after a crash the remaining hold is at most this much longer, never
	// shorter. 0 writes on every tick.
	PersistEvery time.Duration
	// DrainQuiet is how long the stable must report zero active requests
	// before it is withdrawn (default 2s).
	DrainQuiet time.Duration
}

// Update is what watchers receive: a rollout's new status, and the event
// that caused it when there is one.
type Update struct {
	Status Status
	Event  *Event
}

// Status is a rollout's state as the API shows it.
type Status struct {
	Rollout
	Signal        Signal
	HoldRemaining time.Duration
	StepCount     int
	Fleet         Convergence
}

// Engine carries rollouts through their plans. All methods are safe for
// concurrent use; Tick does the work and is driven by Run (or by tests with
// a fake clock).
type Engine struct {
	store        Store
	pub          Publisher
	fleet        FleetView
	gate         SignalGate
	hooks        HookRunner
	clock        Clock
	log          *slog.Logger
	validate     ValidateOptions
	persistEvery time.Duration
	drainQuiet   time.Duration

	mu       sync.Mutex
	rollouts map[string]*entry
	dirty    bool // desired state changed since the last publish
	pending  []pendingSave
	watchers map[int]chan Update
	nextW    int
	hookWG   sync.WaitGroup
	ctx      context.Context
}

type entry struct {
	Rollout
	rt runtime
}

type pendingSave struct {
	name   string
	events []Event
	write  bool
}

// New loads every rollout from the store and publishes the weights they had,
// before anything else: a restart never moves traffic. A store that cannot be
// read is an error and nothing is published.
func New(ctx context.Context, o Options) (*Engine, error) {
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.DrainQuiet == 0 {
		o.DrainQuiet = 2 * time.Second
	}
	e := &Engine{
		store: o.Store, pub: o.Publisher, fleet: o.Fleet, gate: o.Gate, hooks: o.Hooks,
		clock: o.Clock, log: o.Log, validate: o.Validate, persistEvery: o.PersistEvery, drainQuiet: o.DrainQuiet,
		rollouts: map[string]*entry{}, watchers: map[int]chan Update{}, ctx: ctx,
	}
	stored, err := o.Store.Load()
	if err != nil {
		return nil, fmt.Errorf("load store: %w", err)
	}
	for _, r := range stored {
		e.rollouts[r.Plan.Name] = &entry{Rollout: r}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.publishStamp("restore from store", true); err != nil {
		return nil, err
	}
	for _, r := range e.rollouts {
		e.log.Info("rollout restored", "rollout", r.Plan.Name, "phase", r.State.Phase, "step", r.State.StepIndex, "weight", r.State.Weight, "holdCounted", r.State.HoldCounted)
	}
	return e, nil
}

// Run ticks the engine every interval until ctx ends.
func (e *Engine) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := e.Tick(); err != nil {
				e.log.Error("engine tick", "error", err)
			}
		}
	}
}

// Tick advances every rollout by what the clock, the signal and the fleet
// allow, publishes if the desired state changed, and persists.
func (e *Engine) Tick() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.clock.Now()
	for _, name := range e.namesLocked() {
		e.step(e.rollouts[name], now)
	}
	return e.flushLocked("tick")
}

// flushLocked publishes a changed desired state and writes pending saves.
func (e *Engine) flushLocked(reason string) error {
	var errs []error
	if e.dirty {
		if err := e.publishLocked(reason); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ps := range e.pending {
		r, ok := e.rollouts[ps.name]
		if !ok {
			continue
		}
		if err := e.store.Save(r.Rollout, ps.events...); err != nil {
			errs = append(errs, fmt.Errorf("rollout %q: save: %w", ps.name, err))
			continue
		}
		r.rt.persistedAt = e.clock.Now()
		for i := range ps.events {
			ev := ps.events[i]
			e.notifyLocked(r, &ev)
		}
		if len(ps.events) == 0 {
			e.notifyLocked(r, nil)
		}
	}
	e.pending = nil
	return errors.Join(errs...)
}

// publishLocked sends the desired state of every rollout and stamps the
// versions on the rollouts waiting for them.
func (e *Engine) publishLocked(reason string) error { return e.publishStamp(reason, false) }

// publishStamp publishes and stamps the served versions on the rollouts
// waiting for them; restore stamps every rollout, since the versions stored
// by the previous process mean nothing to this one's fleet.
func (e *Engine) publishStamp(reason string, restore bool) error {
	res, err := e.pub.Publish(e.ctx, e.desiredLocked(), reason)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	e.dirty = false
	for _, r := range e.rollouts {
		changed := false
		if r.State.RouteVersion == "" || restore {
			r.State.RouteVersion = res.RouteVersion
			changed = true
		}
		if r.State.ClusterVersion == "" || restore {
			r.State.ClusterVersion = res.ClusterVersion
			changed = true
		}
		if changed && !restore {
			e.persistSoon(r)
		}
	}
	return nil
}

func (e *Engine) desiredLocked() DesiredState {
	var ds DesiredState
	for _, name := range e.namesLocked() {
		r := e.rollouts[name]
		ss := ServiceStateFor(r.Plan, r.State.Weight)
		ss.CanaryPublished = r.State.CanaryPublished
		ss.StablePublished = r.State.StablePublished
		if !ss.CanaryPublished {
			ss.CanaryWeight = 0
		}
		ds.Services = append(ds.Services, ss)
	}
	return ds
}

func (e *Engine) namesLocked() []string {
	names := make([]string, 0, len(e.rollouts))
	for n := range e.rollouts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// record queues an event (and the state with it) for the store and watchers.
func (e *Engine) record(r *entry, ev Event) {
	ev.Rollout = r.Plan.Name
	e.log.Info("rollout event", "rollout", r.Plan.Name, "from", ev.From, "to", ev.To, "weight", ev.Weight, "step", ev.StepIndex, "reason", ev.Reason)
	for i := range e.pending {
		if e.pending[i].name == r.Plan.Name {
			e.pending[i].events = append(e.pending[i].events, ev)
			return
		}
	}
	e.pending = append(e.pending, pendingSave{name: r.Plan.Name, events: []Event{ev}, write: true})
}

// persistSoon queues a state write, at most every PersistEvery for hold
// counting (events are always written at once).
func (e *Engine) persistSoon(r *entry) {
	for _, p := range e.pending {
		if p.name == r.Plan.Name {
			return
		}
	}
	if e.persistEvery > 0 && e.clock.Now().Sub(r.rt.persistedAt) < e.persistEvery {
		return
	}
	e.pending = append(e.pending, pendingSave{name: r.Plan.Name, write: true})
}

// runHooks runs a stage's hooks in the background and reports when they are
// done. It returns done=false while they run.
func (e *Engine) runHooks(r *entry, stage string, hooks []Hook) (done bool, err error, output string) {
	if len(hooks) == 0 {
		return true, nil, ""
	}
	if h := r.rt.hook; h != nil && h.stage == stage {
		if !h.done {
			return false, nil, ""
		}
		r.rt.hook = nil
		if h.output != "" || h.err != nil {
			reason := stage + " hooks finished"
			if h.err != nil {
				reason = stage + " hook failed: " + h.err.Error()
			}
			e.record(r, Event{Time: e.clock.Now(), From: r.State.Phase, To: r.State.Phase, Reason: reason, Weight: r.State.Weight, StepIndex: r.State.StepIndex, Output: h.output})
		}
		return true, h.err, h.output
	}
	if e.hooks == nil {
		return true, errors.New("no hook runner configured"), ""
	}
	h := &hookRun{stage: stage}
	r.rt.hook = h
	status, _ := json.Marshal(e.statusLocked(r))
	e.record(r, Event{Time: e.clock.Now(), From: r.State.Phase, To: r.State.Phase, Reason: fmt.Sprintf("running %d %s hook(s)", len(hooks), stage), Weight: r.State.Weight, StepIndex: r.State.StepIndex})
	e.hookWG.Add(1)
	go func() {
		defer e.hookWG.Done()
		var out string
		var err error
		for i, hk := range hooks {
			timeout := hk.Timeout.D()
			if timeout == 0 {
				timeout = DefaultHookTimeout
			}
			ctx, cancel := context.WithTimeout(e.ctx, timeout)
			o, herr := e.hooks.Run(ctx, hk, status)
			cancel()
			out += o
			if herr != nil {
				err = fmt.Errorf("%s[%d]: %w", stage, i, herr)
				break
			}
		}
		e.mu.Lock()
		h.done, h.err, h.output = true, err, boundOutput(out)
		e.mu.Unlock()
	}()
	return false, nil, ""
}

// WaitHooks blocks until every running hook has finished (tests use it).
func (e *Engine) WaitHooks() { e.hookWG.Wait() }

const maxHookOutput = 8 << 10

func boundOutput(s string) string {
	if len(s) <= maxHookOutput {
		return s
	}
	return s[:maxHookOutput/2] + "\n…[truncated]…\n" + s[len(s)-maxHookOutput/2:]
}

// Apply creates or replaces a rollout from plan. Replacing a running
// rollout with the same canary keeps its position; a new canary restarts it
// from its first step. An invalid plan changes nothing.
func (e *Engine) Apply(plan Plan, source string) (Status, error) {
	if ps := plan.Validate(e.validate); len(ps) > 0 {
		return Status{}, ps
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	// The new plan goes last, so a conflict is reported on its fields and
	// names the running plan it collides with.
	var others []Plan
	for _, n := range e.namesLocked() {
		if n != plan.Name {
			others = append(others, e.rollouts[n].Plan)
		}
	}
	others = append(others, plan)
	if ps := ValidateSet(others, nil); len(ps) > 0 {
		return Status{}, ps
	}
	now := e.clock.Now()
	r, exists := e.rollouts[plan.Name]
	switch {
	case !exists:
		r = &entry{Rollout: Rollout{Plan: plan, Source: source, AppliedAt: now, State: State{Phase: PhasePending, StablePublished: true, Created: now, Updated: now}}}
		e.rollouts[plan.Name] = r
		e.dirty = true
		e.record(r, Event{Time: now, To: PhasePending, Reason: "created from " + source})
	case samePlan(r.Plan, plan):
		if r.Source != source {
			r.Source = source
			e.persistSoon(r)
		}
		return e.statusLocked(r), e.flushLocked("apply " + plan.Name)
	case sameCanary(r.Plan, plan) && !r.State.Phase.Terminal():
		r.Plan, r.Source, r.AppliedAt = plan, source, now
		steps := plan.WithDefaults().Schedule()
		if r.State.StepIndex >= len(steps) {
			r.State.StepIndex = len(steps) - 1
		}
		reason := "plan replaced from " + source + "; same canary, position kept"
		if (r.State.Phase == PhaseProgressing || r.State.Phase == PhaseHolding) && !isPause(steps, r.State.StepIndex) {
			if w := *steps[r.State.StepIndex].Weight; w != r.State.Weight {
				counted := r.State.HoldCounted
				e.setWeight(r, w)
				r.State.HoldCounted = counted
				reason += fmt.Sprintf("; step %d/%d now weight %d", r.State.StepIndex+1, len(steps), w)
			}
		}
		e.dirty = true
		e.record(r, Event{Time: now, From: r.State.Phase, To: r.State.Phase, Reason: reason, Weight: r.State.Weight, StepIndex: r.State.StepIndex})
	case sameCanary(r.Plan, plan) && r.State.Phase == PhaseSucceeded:
		// Nothing is left to roll out; starting over would send traffic back
		// to the stable version that was drained and withdrawn.
		r.Plan, r.Source, r.AppliedAt = plan, source, now
		e.dirty = true
		e.record(r, Event{Time: now, From: r.State.Phase, To: r.State.Phase, Reason: "plan replaced from " + source + "; same canary, already promoted: nothing to roll out", Weight: r.State.Weight, StepIndex: r.State.StepIndex})
	default:
		from := r.State.Phase
		r.Plan, r.Source, r.AppliedAt = plan, source, now
		r.State = State{Phase: PhasePending, StablePublished: true, Created: now, Updated: now}
		r.rt = runtime{}
		e.dirty = true
		e.record(r, Event{Time: now, From: from, To: PhasePending, Reason: "plan replaced from " + source + " with a new canary (or after it finished); restarting from the first step"})
	}
	return e.statusLocked(r), e.flushLocked("apply " + plan.Name)
}

// samePlan compares plans as the store keeps them: JSON does not tell an
// empty list from a missing one, which a plan file read again at start
// would otherwise turn into a change (and restart a finished rollout).
func samePlan(a, b Plan) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}

func sameCanary(a, b Plan) bool {
	return a.Canary.Cluster == b.Canary.Cluster && reflect.DeepEqual(a.Canary.Endpoints, b.Canary.Endpoints) &&
		a.Stable.Cluster == b.Stable.Cluster
}

// Pause stops a running rollout where it is.
func (e *Engine) Pause(name string) (Status, error) {
	return e.op(name, "pause", func(r *entry) error {
		if r.State.Phase.Terminal() || r.State.Phase == PhasePromoting || r.State.Phase == PhaseRollingBack {
			return fmt.Errorf("%w: rollout %q is %s and cannot be paused", ErrFailedPrecondition, r.Plan.Name, r.State.Phase)
		}
		if r.State.Phase == PhasePaused {
			return nil
		}
		r.State.Paused = true
		r.State.PausedFrom = r.State.Phase
		e.transition(r, PhasePaused, "paused on request")
		return nil
	})
}

// Resume continues a paused rollout, or passes a manual gate.
func (e *Engine) Resume(name string) (Status, error) {
	return e.op(name, "resume", func(r *entry) error {
		if r.State.Phase != PhasePaused {
			return fmt.Errorf("%w: rollout %q is %s, not PAUSED", ErrFailedPrecondition, r.Plan.Name, r.State.Phase)
		}
		r.State.Paused = false
		steps := r.Plan.WithDefaults().Schedule()
		if isPause(steps, r.State.StepIndex) && r.State.PausedFrom == "" {
			// The gate is passed, but the next weight moves only on a tick
			// that finds the signal clear and the fleet converged: a gate has
			// no hold, so the machine advances from it (or promotes after a
			// last gate).
			r.State.HoldCounted = 0
			e.transition(r, PhaseProgressing, fmt.Sprintf("manual gate at step %d/%d passed on request; the next step starts once the signal allows", r.State.StepIndex+1, len(steps)))
			return nil
		}
		back := r.State.PausedFrom
		if back == "" || back == PhaseHolding {
			back = PhaseProgressing
		}
		r.State.PausedFrom = ""
		e.transition(r, back, "resumed on request")
		return nil
	})
}

// Promote skips the remaining steps: weight 100, then drain and withdraw the stable.
func (e *Engine) Promote(name string) (Status, error) {
	return e.op(name, "promote", func(r *entry) error {
		switch r.State.Phase {
		case PhaseProgressing, PhaseHolding:
		case PhasePaused:
			if r.State.PausedFrom == PhasePending {
				// Promoting now would skip the beforeShift hooks and route
				// traffic to a canary cluster the fleet may not have.
				return fmt.Errorf("%w: rollout %q was paused before its canary was published; resume it first", ErrFailedPrecondition, r.Plan.Name)
			}
		default:
			return fmt.Errorf("%w: rollout %q is %s; only a progressing, holding or paused rollout can be promoted", ErrFailedPrecondition, r.Plan.Name, r.State.Phase)
		}
		e.promote(r, r.Plan.WithDefaults().Schedule())
		return nil
	})
}

// Abort sends all traffic back to the stable version.
func (e *Engine) Abort(name string) (Status, error) { return e.AbortBecause(name, "") }

// AbortBecause is Abort with the caller's reason recorded in the history.
func (e *Engine) AbortBecause(name, reason string) (Status, error) {
	why := "aborted on request; weight 0"
	if reason != "" {
		why = "aborted on request (" + reason + "); weight 0"
	}
	return e.op(name, "abort", func(r *entry) error {
		if r.State.Phase.Terminal() {
			return fmt.Errorf("%w: rollout %q already finished (%s)", ErrFailedPrecondition, r.Plan.Name, r.State.Phase)
		}
		if r.State.Phase == PhasePromoting && !r.State.StablePublished {
			return fmt.Errorf("%w: rollout %q has withdrawn its stable cluster; apply a new plan instead", ErrFailedPrecondition, r.Plan.Name)
		}
		r.State.Aborted = true
		e.setWeight(r, 0)
		e.transition(r, PhaseRollingBack, why)
		return nil
	})
}

// Delete removes a rollout, its routes and clusters, and its history.
func (e *Engine) Delete(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.rollouts[name]; !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	delete(e.rollouts, name)
	if err := e.publishLocked("delete " + name); err != nil {
		return err
	}
	e.log.Info("rollout deleted", "rollout", name)
	return e.store.Delete(name)
}

func (e *Engine) op(name, verb string, f func(*entry) error) (Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rollouts[name]
	if !ok {
		return Status{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err := f(r); err != nil {
		return Status{}, err
	}
	return e.statusLocked(r), e.flushLocked(verb + " " + name)
}

// Get returns one rollout's status.
func (e *Engine) Get(name string) (Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rollouts[name]
	if !ok {
		return Status{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return e.statusLocked(r), nil
}

// List returns every rollout's status, sorted by name.
func (e *Engine) List() []Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Status
	for _, n := range e.namesLocked() {
		out = append(out, e.statusLocked(e.rollouts[n]))
	}
	return out
}

// History returns a rollout's events, oldest first.
func (e *Engine) History(name string, limit int) ([]Event, error) {
	e.mu.Lock()
	_, ok := e.rollouts[name]
	e.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return e.store.Events(name, limit)
}

// Subscribe returns a channel of updates for every rollout and a cancel
// func. A slow watcher misses updates rather than blocking the engine.
func (e *Engine) Subscribe() (<-chan Update, func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.nextW
	e.nextW++
	ch := make(chan Update, 256)
	e.watchers[id] = ch
	return ch, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if c, ok := e.watchers[id]; ok {
			delete(e.watchers, id)
			close(c)
		}
	}
}

func (e *Engine) notifyLocked(r *entry, ev *Event) {
	if len(e.watchers) == 0 {
		return
	}
	u := Update{Status: e.statusLocked(r), Event: ev}
	for _, ch := range e.watchers {
		select {
		case ch <- u:
		default:
		}
	}
}

func (e *Engine) statusLocked(r *entry) Status {
	steps := r.Plan.WithDefaults().Schedule()
	s := Status{Rollout: r.Rollout, Signal: r.rt.signal, StepCount: len(steps)}
	if s.Signal.State == "" {
		s.Signal = Signal{State: SignalStale, Reason: "not evaluated yet"}
	}
	if i := r.State.StepIndex; i < len(steps) && !r.State.Phase.Terminal() {
		if left := steps[i].Hold.D() - r.State.HoldCounted; left > 0 {
			s.HoldRemaining = left
		}
	}
	if r.State.RouteVersion != "" {
		s.Fleet = e.fleet.Convergence(KindRoutes, r.State.RouteVersion)
	}
	return s
}
