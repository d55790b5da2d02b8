package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shiftplane/shiftplane/xds/model"
)

// Sentinel errors of the engine's operations; the API maps them to status codes.
var (
	ErrNotFound           = errors.New("rollout not found")
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrStore wraps a failed store write: the operation changed nothing.
	ErrStore = errors.New("store unavailable")
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
	// Stats, when set, is read for the observed split per step
	// (observed.go); usually the signal gate, which merges every source.
	Stats model.StatsSource
	// SignalGap is the least time between two ticks that stats reports
	// (Notice) ask for (default 100ms): the first report after a quiet spell
	// is acted on at once, a stream of them at most every SignalGap.
	SignalGap time.Duration
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
	// Signal is the live signal; its State is "" for a finished rollout.
	Signal        Signal
	HoldRemaining time.Duration
	StepCount     int
	Fleet         Convergence
	// StoreError is set while the store refuses writes: nothing moves.
	StoreError string
	// Observed is the split the fleet reported per step (observed.go).
	Observed Observed
	// FleetWeight is the canary weight every connected node has ACKed: what
	// the fleet holds. State.Weight is the target; while WeightPending the
	// fleet has not ACKed it yet (an abort shows 0 only once it has).
	FleetWeight   int
	WeightPending bool
}

// Engine carries rollouts through their plans: a shell around Decide (in
// machine.go) that gathers the facts, saves before it publishes, publishes
// outside its lock, starts hooks and notifies watchers. All methods are safe
// for concurrent use; Tick does the work and is driven by Run (or by tests
// with a fake clock). Run is event-driven: operations, hook ends and
// publishes wake it at once, as do Wake (an ACK completed convergence, a
// NACK) and Notice (a stats report, a reported signal); a timer fires at the
// earliest Result.Next of the rollouts; a slow safety tick covers what no
// event announces.
type Engine struct {
	o Options

	// pubMu serialises publishes; it is taken before mu, never after.
	pubMu sync.Mutex

	mu       sync.Mutex
	rollouts map[string]*entry
	dirty    bool   // desired state changed since the last publish
	gen      uint64 // desired-state generation; a publish of gen G stamps rollouts changed at or before G
	pubSeq   uint64 // publishes that stamped a rollout, counted
	// probe is the publish that followed a quarantine; until the fleet has
	// answered it, the NACKs of older publishes are not new causes.
	probe        *[3]string
	probePending bool
	watchers     map[int]chan Update
	nextW        int
	hookWG       sync.WaitGroup
	ctx          context.Context

	statsAt    time.Time // when statsCache was read (observed.go)
	statsCache []model.NodeReport
	wake       chan struct{} // buffered 1: tick every rollout now
	soon       chan struct{} // buffered 1: tick every rollout, at most every SignalGap

	// statusConv keeps the fleet's answers for statuses (what watchers and
	// the API are shown) for statusConvFor: every commit notifies watchers,
	// and asking a 1,000-stream fleet each time cost a quarter of the
	// server's CPU during promotions. Decisions never read it.
	statusConv   map[convKey]Convergence
	statusConvAt time.Time
	// tickConv is the running tick's memo (nil outside a tick): what the
	// tick's decisions saw of the fleet, reused by commitLocked.
	tickConv map[convKey]Convergence
}

// statusConvFor is how long a status may show a fleet answer.
const statusConvFor = 100 * time.Millisecond

type entry struct {
	Rollout
	plan        Plan   // Rollout.Plan with defaults applied
	steps       []Step // plan's schedule
	tm          Timers
	hook        HookStatus
	wantGen     uint64 // generation of this rollout's last desired-state change
	persistedAt time.Time
	storeErr    error
	obs         observer
	// fleetWeight is the canary weight the whole fleet last ACKed; sent are
	// the route versions published since, with the weight each carries,
	// oldest first. After a restart fleetWeight is the stored weight and the
	// restore publish is pending.
	fleetWeight int
	sent        []sentWeight
	// pending are the publishes that changed this rollout and are not yet
	// ACKed for every resource kind, oldest first; accepted is its service
	// state in the newest one that is (nil: the fleet never had it).
	pending  []sentState
	accepted *ServiceState
	// quarantine is the fleet's rejection of this rollout's plan: until
	// retryAt the fleet is sent accepted instead, so the rollouts beside it
	// move on, and the rollout holds with the rejection.
	quarantine string
	retryAt    time.Time
	// next is when this rollout needs a tick even if no fact changes
	// (Result.Next, or the next lazy save); zero: only on an event.
	next time.Time
}

// sentState is one publish that changed a rollout.
type sentState struct {
	seq      uint64
	versions [3]string // clusters, listeners, routes
	svc      ServiceState
}

// QuarantineRetry is how long a rollout whose plan the fleet rejected is
// kept out of the fleet's config before it is offered again.
const QuarantineRetry = 10 * time.Second

// sentWeight is one published route version and the canary weight it carries.
type sentWeight struct {
	routeVersion string
	weight       int
}

// maxSent bounds the published versions a rollout remembers while the
// fleet has not ACKed them; the oldest are forgotten first.
const maxSent = 32

func newEntry(r Rollout) *entry {
	e := &entry{Rollout: r}
	e.setPlan(r.Plan)
	return e
}

func (r *entry) setPlan(p Plan) {
	r.Plan = p
	r.plan = p.WithDefaults()
	r.steps = r.plan.Schedule()
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
	if o.SignalGap <= 0 {
		o.SignalGap = 100 * time.Millisecond
	}
	e := &Engine{o: o, rollouts: map[string]*entry{}, watchers: map[int]chan Update{}, ctx: ctx,
		wake: make(chan struct{}, 1), soon: make(chan struct{}, 1)}
	stored, err := o.Store.Load()
	if err != nil {
		return nil, fmt.Errorf("load store: %w", err)
	}
	for _, r := range stored {
		en := newEntry(r)
		en.fleetWeight = en.servedWeight()
		svc := en.serviceState()
		en.accepted = &svc // what the fleet holds from the last run, as far as we know
		e.rollouts[r.Plan.Name] = en
	}
	// The versions stored by the previous process mean nothing to this
	// one's fleet: every rollout is stamped by the restore publish.
	for _, r := range e.rollouts {
		r.State.clearVersions()
	}
	e.dirty = true
	if err := e.publish("restore from store"); err != nil {
		return nil, err
	}
	for _, r := range e.rollouts {
		o.Log.Info("rollout restored", "rollout", r.Plan.Name, "phase", r.State.Phase, "step", r.State.StepIndex+1, "weight", r.State.Weight, "holdCounted", r.State.HoldCounted)
	}
	return e, nil
}

// AlarmClock is a Clock that can also wake its reader at a time of its
// own. Run sets its deadline timer through it when the engine's clock has
// one: SystemClock uses a time.Timer, and test/fakeclock fires when it is
// moved past the deadline, so a fake-clock test wakes the engine by
// advancing the clock. Any other Clock gets a real timer.
type AlarmClock interface {
	Clock
	// After returns a channel that receives once the clock has moved d on,
	// and a func that stops it.
	After(d time.Duration) (<-chan time.Time, func() bool)
}

// After implements AlarmClock.
func (SystemClock) After(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

func (e *Engine) after(d time.Duration) (<-chan time.Time, func() bool) {
	if ac, ok := e.o.Clock.(AlarmClock); ok {
		return ac.After(d)
	}
	return SystemClock{}.After(d)
}

// Wake makes Run tick every rollout now: a fact the engine reads changed
// in a way that may let a rollout move (an ACK completed a version's
// convergence, a NACK arrived). Safe from any goroutine, even under the
// caller's own lock: it never blocks.
func (e *Engine) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Notice is Wake for frequent facts (a stats report, a reported signal):
// the first after a quiet spell is acted on at once, a stream of them at
// most every Options.SignalGap. Never blocks.
func (e *Engine) Notice() {
	select {
	case e.soon <- struct{}{}:
	default:
	}
}

// Run drives the engine until ctx ends. It ticks every rollout when woken
// (Wake, Notice, an operation, a hook's end, a publish), ticks the rollouts
// whose deadline (Result.Next) has come on a timer at the earliest of them,
// and ticks everything every safety interval as a backstop for what no event
// announces: the gate's staleness, a reported signal's expiry, a stream's
// ready grace, a publish to retry. An idle engine does nothing between
// safety ticks. safety <= 0 disables the backstop (tests).
func (e *Engine) Run(ctx context.Context, safety time.Duration) {
	var backstop <-chan time.Time
	if safety > 0 {
		t := time.NewTicker(safety)
		defer t.Stop()
		backstop = t.C
	}
	gap := time.NewTimer(time.Hour)
	gap.Stop()
	defer gap.Stop()
	var lastFull time.Time // wall time of the last tick of every rollout
	gapArmed := false
	var stop func() bool
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	tick := func(all bool) {
		if all {
			lastFull = time.Now()
		}
		if err := e.tick(all); err != nil {
			e.o.Log.Error("engine tick", "error", err)
		}
	}
	for {
		if stop != nil {
			stop()
			stop = nil
		}
		var alarm <-chan time.Time
		if next := e.nextDeadline(); !next.IsZero() {
			alarm, stop = e.after(next.Sub(e.o.Clock.Now()))
		}
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
			tick(true)
		case <-backstop:
			tick(true)
		case <-alarm:
			tick(false)
		case <-e.soon:
			if wait := e.o.SignalGap - time.Since(lastFull); wait > 0 {
				if !gapArmed {
					gap.Reset(wait)
					gapArmed = true
				}
				continue
			}
			tick(true)
		case <-gap.C:
			gapArmed = false
			tick(true)
		}
	}
}

// nextDeadline is the earliest rollout deadline, zero if none.
func (e *Engine) nextDeadline() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	var t time.Time
	for _, r := range e.rollouts {
		if !r.next.IsZero() && (t.IsZero() || r.next.Before(t)) {
			t = r.next
		}
	}
	return t
}

// Tick advances every rollout by what the clock, the signal and the fleet
// allow, saves what changed, then publishes.
func (e *Engine) Tick() error { return e.tick(true) }

// tick is Tick over every rollout (all) or only those whose deadline has
// come.
func (e *Engine) tick(all bool) error {
	e.mu.Lock()
	now := e.o.Clock.Now()
	var errs []error
	// Every rollout names the same few versions: ask the fleet once per
	// tick, not once per rollout.
	memo := map[convKey]Convergence{}
	// Statuses notified during this tick show what it decided on.
	e.statusConv, e.statusConvAt = memo, time.Now()
	e.tickConv = memo
	for _, name := range e.namesLocked() {
		r := e.rollouts[name]
		if !all && (r.next.IsZero() || now.Before(r.next)) {
			continue
		}
		res, err := Decide(r.plan, r.steps, r.State, r.tm, e.factsLocked(r, now, memo))
		if err == nil {
			err = e.commitLocked(r, res, now)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	e.tickConv = nil
	e.mu.Unlock()
	if err := e.publish("tick"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

type convKey struct {
	kind    ResourceKind
	version string
}

// factsLocked gathers what a tick of r needs from the gate and the fleet.
func (e *Engine) factsLocked(r *entry, now time.Time, memo map[convKey]Convergence) Input {
	in := Input{Op: OpTick, Now: now, Hook: r.hook, DrainQuiet: e.o.DrainQuiet}
	if r.State.Phase.Terminal() {
		return in
	}
	in.Signal = e.o.Gate.Evaluate(now, SignalQuery{Rollout: r.Plan.Name, CanaryCluster: r.plan.Canary.Cluster, Analysis: r.plan.Analysis, Since: r.State.Created})
	in.Fleet = e.fleetOf(r, memo)
	if r.State.Phase == PhasePromoting && r.State.StablePublished {
		in.Stable.Active, in.Stable.Known = e.o.Gate.ActiveRequests(now, r.plan.Stable.Cluster)
	}
	return in
}

// convergence merges the fleet's progress on every version st names; memo
// (may be nil) keeps the fleet's answers within one tick.
func (e *Engine) convergence(st State, memo map[convKey]Convergence) Convergence {
	if !st.versionsStamped() {
		return Convergence{}
	}
	out := Convergence{Converged: true}
	seen := map[string]bool{}
	for _, kv := range []struct {
		kind    ResourceKind
		version string
	}{{KindClusters, st.ClusterVersion}, {KindListeners, st.ListenerVersion}, {KindRoutes, st.RouteVersion}} {
		c := e.fleetConv(kv.kind, kv.version, memo)
		out.Converged = out.Converged && c.Converged
		out.Nodes = max(out.Nodes, c.Nodes)
		out.Nacks = append(out.Nacks, c.Nacks...)
		out.Lacking = append(out.Lacking, c.Lacking...)
		for _, m := range c.Missing {
			if !seen[m] {
				seen[m] = true
				out.Missing = append(out.Missing, m)
			}
		}
	}
	return out
}

// fleetConv is the fleet's convergence on version of kind, kept in memo
// (may be nil): each call walks every connected stream under the fleet's
// lock, which the fleet's ACKs wait on.
func (e *Engine) fleetConv(kind ResourceKind, version string, memo map[convKey]Convergence) Convergence {
	k := convKey{kind, version}
	c, ok := memo[k]
	if !ok {
		c = e.o.Fleet.Convergence(kind, version)
		if memo != nil {
			memo[k] = c
		}
	}
	return c
}

// commitLocked carries out a decision. A decision that records events or
// changes the desired state is saved first: if the store refuses, nothing
// of it is applied, so a restart never republishes less than the fleet was
// sent and no decision is reported that was not kept.
func (e *Engine) commitLocked(r *entry, res Result, now time.Time) error {
	e.observeLocked(r, &res, now)
	decisive := len(res.Events) > 0 || res.Publish
	write := decisive || (res.Dirty && (e.o.PersistEvery <= 0 || now.Sub(r.persistedAt) >= e.o.PersistEvery))
	if write {
		next := r.Rollout
		next.State = res.State
		if err := e.o.Store.Save(next, res.Events...); err != nil {
			if r.storeErr == nil {
				e.o.Log.Error("store write failed; the rollout holds until it is writable", "rollout", r.Plan.Name, "error", err)
			}
			r.storeErr = err
			if decisive {
				return fmt.Errorf("rollout %q: %w: %w", r.Plan.Name, ErrStore, err)
			}
			// A lost hold count only makes the hold longer after a crash.
		} else {
			if r.storeErr != nil {
				e.o.Log.Info("store writable again", "rollout", r.Plan.Name)
			}
			r.storeErr = nil
			r.persistedAt = now
		}
	}
	r.State = res.State
	r.tm = res.Timers
	e.observedLocked(r)
	r.next = res.Next
	if res.Dirty && !write && e.o.PersistEvery > 0 {
		// A counting hold is saved lazily: come back when it is due.
		due := r.persistedAt.Add(e.o.PersistEvery)
		if !due.After(now) { // the save just failed: try again a period on, not at once
			due = now.Add(e.o.PersistEvery)
		}
		if r.next.IsZero() || due.Before(r.next) {
			r.next = due
		}
	}
	if res.HookDone {
		r.hook = HookStatus{}
	}
	if res.Publish {
		e.gen++
		r.wantGen = e.gen
		e.dirty = true
	}
	if res.StartHooks != nil {
		e.startHooksLocked(r, *res.StartHooks)
	}
	for i := range res.Events {
		e.o.Log.Info("rollout event", "rollout", r.Plan.Name, "from", res.Events[i].From, "to", res.Events[i].To,
			"weight", res.Events[i].Weight, "step", res.Events[i].StepIndex+1, "reason", res.Events[i].Reason)
		e.notifyLocked(r, &res.Events[i])
	}
	if len(res.Events) == 0 && (res.Dirty || res.Publish) {
		e.notifyLocked(r, nil)
	}
	return nil
}

// publish sends the latest desired state, outside the engine lock, and
// stamps the served versions on the rollouts it carries.
func (e *Engine) publish(reason string) error {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	e.mu.Lock()
	if e.isolateRejectedLocked() {
		e.dirty = true
	}
	if !e.dirty {
		e.mu.Unlock()
		return nil
	}
	ds, gen := e.desiredLocked(), e.gen
	e.dirty = false
	e.mu.Unlock()

	res, err := e.o.Publisher.Publish(e.ctx, ds, reason)

	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		e.dirty = true // the next tick tries again; the fleet keeps the last good config
		return fmt.Errorf("publish: %w", err)
	}
	e.pubSeq++
	if e.probePending {
		e.probe, e.probePending = &[3]string{res.ClusterVersion, res.ListenerVersion, res.RouteVersion}, false
	}
	stamped := false
	for _, r := range e.rollouts {
		if r.wantGen <= gen && !r.State.versionsStamped() {
			r.State.RouteVersion, r.State.ClusterVersion, r.State.ListenerVersion = res.RouteVersion, res.ClusterVersion, res.ListenerVersion
			if r.quarantine == "" {
				r.pending = append(r.pending, sentState{seq: e.pubSeq, versions: [3]string{res.ClusterVersion, res.ListenerVersion, res.RouteVersion}, svc: r.serviceState()})
				if len(r.pending) > maxSent {
					r.pending = r.pending[len(r.pending)-maxSent:]
				}
			}
			r.sent = append(r.sent, sentWeight{routeVersion: res.RouteVersion, weight: r.servedWeight()})
			if len(r.sent) > maxSent {
				r.sent = r.sent[len(r.sent)-maxSent:]
			}
			e.notifyLocked(r, nil)
			stamped = true
		}
	}
	if stamped {
		// The fleet may hold these versions already (or have no node):
		// the next tick finds out at once rather than at the next ACK.
		e.Wake()
	}
	return nil
}

// servedWeight is the canary weight the desired state gives r's routes: 0
// until the canary cluster is published.
func (r *entry) servedWeight() int {
	if !r.State.CanaryPublished {
		return 0
	}
	return r.State.Weight
}

// fleetWeightLocked moves r.fleetWeight to the newest published route
// version every connected node has ACKed, and reports whether a newer one
// is still on its way.
func (e *Engine) fleetWeightLocked(r *entry) (weight int, pending bool) {
	if r.quarantine != "" { // the fleet is sent the accepted state
		if r.accepted == nil {
			return 0, true
		}
		return r.accepted.CanaryWeight, true
	}
	// A node that ACKed a version holds every older one too: the converged
	// entries are a prefix of sent, found by bisection.
	n := sort.Search(len(r.sent), func(i int) bool {
		return !e.o.Fleet.Convergence(KindRoutes, r.sent[i].routeVersion).Converged
	})
	if n > 0 {
		r.fleetWeight = r.sent[n-1].weight
		r.sent = append(r.sent[:0], r.sent[n:]...)
	}
	return r.fleetWeight, len(r.sent) > 0 || r.fleetWeight != r.servedWeight()
}

func (e *Engine) desiredLocked() DesiredState {
	var ds DesiredState
	for _, name := range e.namesLocked() {
		r := e.rollouts[name]
		if r.quarantine != "" {
			if r.accepted != nil {
				ds.Services = append(ds.Services, *r.accepted)
			}
			continue
		}
		ds.Services = append(ds.Services, r.serviceState())
	}
	return ds
}

// serviceState is what r's state asks of the fleet.
func (r *entry) serviceState() ServiceState {
	ss := ServiceStateFor(r.Plan, r.State.Weight)
	ss.CanaryPublished = r.State.CanaryPublished
	ss.StablePublished = r.State.StablePublished
	if !ss.CanaryPublished {
		ss.CanaryWeight = 0
	}
	TrafficFor(r.plan, r.steps, r.State).Apply(&ss) // traffic.go
	return ss
}

// fleetOf is r's convergence, and the rejection that holds it while it is
// quarantined: a later version's ACK does not cover a change the fleet
// was not sent again.
func (e *Engine) fleetOf(r *entry, memo map[convKey]Convergence) Convergence {
	c := e.convergence(r.State, memo)
	if r.quarantine != "" {
		c.Converged = false
		c.Nacks = append([]string{r.quarantine}, c.Nacks...)
	}
	return c
}

// planChange reports whether svc differs from what the fleet accepted in
// more than the weights and which clusters are published: a new rollout
// or a changed plan, not a step.
func planChange(svc ServiceState, accepted *ServiceState) bool {
	if accepted == nil {
		return true
	}
	a := *accepted
	a.CanaryWeight, a.CanaryPublished, a.StablePublished = svc.CanaryWeight, svc.CanaryPublished, svc.StablePublished
	return !reflect.DeepEqual(a, svc)
}

// isolateRejectedLocked keeps one bad plan from holding every rollout
// beside it. It moves each rollout's accepted state to its newest publish
// the fleet ACKed for every kind, and quarantines the rollouts whose plan
// change came in the first publish the fleet rejected (later publishes
// carried it too, so their rollouts see the NACK as well): the fleet is
// sent their last accepted state (a new rollout: nothing) until
// QuarantineRetry has passed. A rejected weight step is not quarantined:
// it holds the rollout as before, and weights only move forward. It
// reports whether the desired state changed.
func (e *Engine) isolateRejectedLocked() bool {
	now := e.o.Clock.Now()
	changed := false
	waiting := e.probePending
	// Rollouts stamped by one publish name the same versions: ask the
	// fleet once per version in this pass.
	memo := map[convKey]Convergence{}
	if e.probe != nil {
		switch {
		case e.convergedAll(*e.probe, memo), e.firstNack(*e.probe, memo) != "":
			e.probe = nil
		default:
			waiting = true
		}
	}
	var first uint64
	var culprits []*entry
	nacks := map[*entry]string{}
	for _, r := range e.rollouts {
		n := 0
		for ; n < len(r.pending); n++ {
			if !e.convergedAll(r.pending[n].versions, memo) {
				break
			}
		}
		if n > 0 {
			svc := r.pending[n-1].svc
			r.accepted = &svc
			r.pending = append(r.pending[:0], r.pending[n:]...)
		}
		if r.quarantine != "" {
			if !now.Before(r.retryAt) { // offer the plan to the fleet again
				e.o.Log.Info("offering a rejected rollout to the fleet again", "rollout", r.Plan.Name)
				r.quarantine = ""
				r.State.clearVersions()
				e.gen++
				r.wantGen = e.gen
				changed = true
			}
			continue
		}
		if waiting || len(r.pending) == 0 || !planChange(r.pending[0].svc, r.accepted) {
			continue
		}
		p := r.pending[0]
		nack := e.firstNack(p.versions, memo)
		if nack == "" {
			continue
		}
		nacks[r] = nack
		switch {
		case first == 0 || p.seq < first:
			first, culprits = p.seq, []*entry{r}
		case p.seq == first:
			culprits = append(culprits, r)
		}
	}
	for _, r := range culprits {
		r.quarantine, r.retryAt, r.pending = nacks[r], now.Add(QuarantineRetry), nil
		e.o.Log.Warn("the fleet rejected this rollout's plan; sending its last accepted state so the others move on", "rollout", r.Plan.Name, "nack", r.quarantine, "retryIn", QuarantineRetry)
		e.notifyLocked(r, nil)
	}
	if len(culprits) > 0 {
		e.probePending = true
	}
	return changed || len(culprits) > 0
}

func (e *Engine) convergedAll(v [3]string, memo map[convKey]Convergence) bool {
	for i, kind := range []ResourceKind{KindClusters, KindListeners, KindRoutes} {
		if !e.fleetConv(kind, v[i], memo).Converged {
			return false
		}
	}
	return true
}

func (e *Engine) firstNack(v [3]string, memo map[convKey]Convergence) string {
	for i, kind := range []ResourceKind{KindClusters, KindListeners, KindRoutes} {
		if c := e.fleetConv(kind, v[i], memo); len(c.Nacks) > 0 {
			return c.Nacks[0]
		}
	}
	return ""
}

func (e *Engine) namesLocked() []string {
	names := make([]string, 0, len(e.rollouts))
	for n := range e.rollouts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// startHooksLocked runs a stage's hooks in the background; the next ticks
// see their outcome through entry.hook.
func (e *Engine) startHooksLocked(r *entry, hs HookStart) {
	if e.o.Hooks == nil {
		r.hook = HookStatus{Stage: hs.Stage, Done: true, Err: errors.New("no hook runner configured")}
		return
	}
	r.hook = HookStatus{Stage: hs.Stage, Started: len(hs.Hooks)}
	status, _ := json.Marshal(e.statusLocked(r))
	runner := e.o.Hooks
	e.hookWG.Add(1)
	go func() {
		defer e.hookWG.Done()
		var out string
		var err error
		for i, hk := range hs.Hooks {
			timeout := hk.Timeout.D()
			if timeout == 0 {
				timeout = DefaultHookTimeout
			}
			ctx, cancel := context.WithTimeout(e.ctx, timeout)
			o, herr := runner.Run(ctx, hk, status)
			cancel()
			out += o
			if herr != nil {
				err = fmt.Errorf("%s[%d]: %w", hs.Stage, i, herr)
				break
			}
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if r.hook.Stage == hs.Stage && !r.hook.Done {
			r.hook.Done, r.hook.Err, r.hook.Output = true, err, boundOutput(out)
			e.Wake()
		}
	}()
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
// from its first step. An invalid plan, or one the store could not keep,
// changes nothing.
func (e *Engine) Apply(plan Plan, source string) (Status, error) {
	st, _, err := e.ApplyOutcome(plan, source)
	return st, err
}

// ApplyOutcome is Apply that also says whether it created, changed or left
// the rollout unchanged.
func (e *Engine) ApplyOutcome(plan Plan, source string) (Status, ApplyOutcome, error) {
	if ps := plan.Validate(e.o.Validate); len(ps) > 0 {
		return Status{}, "", ps
	}
	e.mu.Lock()
	// The new plan goes last, so a conflict is reported on its fields and
	// names the running plan it collides with.
	var others []Plan
	for _, n := range e.namesLocked() {
		if n != plan.Name {
			others = append(others, e.rollouts[n].Plan)
		}
	}
	if ps := ValidateSet(append(others, plan), nil); len(ps) > 0 {
		e.mu.Unlock()
		return Status{}, "", ps
	}
	now := e.o.Clock.Now()
	var cur *Rollout
	r, exists := e.rollouts[plan.Name]
	if exists {
		cur = &r.Rollout
	}
	next, events, publish, outcome := decideApply(cur, plan, source, now)
	if outcome == ApplyUnchanged && exists && next.Source == r.Source {
		st := e.statusLocked(r)
		e.mu.Unlock()
		return st, outcome, nil
	}
	if err := e.o.Store.Save(next, events...); err != nil {
		e.mu.Unlock()
		return Status{}, "", fmt.Errorf("rollout %q: %w: %w", plan.Name, ErrStore, err)
	}
	if !exists || !next.State.Created.Equal(r.State.Created) { // new, or started over
		old := r
		r = newEntry(next)
		if old != nil { // the fleet still holds what the old one was sent
			r.fleetWeight, r.sent, r.accepted = old.fleetWeight, old.sent, old.accepted
		}
		e.rollouts[plan.Name] = r
	} else {
		r.Rollout = next
		r.setPlan(next.Plan)
	}
	if r.quarantine != "" { // a new plan: let the fleet judge it
		r.quarantine = ""
		r.State.clearVersions()
		publish = true
	}
	r.persistedAt = now
	if publish {
		e.gen++
		r.wantGen = e.gen
		e.dirty = true
	}
	for i := range events {
		e.notifyLocked(r, &events[i])
	}
	e.mu.Unlock()
	e.publishLogged("apply " + plan.Name)
	e.Wake()
	st, err := e.Get(plan.Name)
	return st, outcome, err
}

// publishLogged publishes after an operation that is already stored: a
// publish failure is retried by the next tick, so it is only logged.
func (e *Engine) publishLogged(reason string) {
	if err := e.publish(reason); err != nil {
		e.o.Log.Error("publish failed; retrying on the next tick", "reason", reason, "error", err)
	}
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

// OpOption qualifies an operation.
type OpOption func(*Input)

// Expecting makes an operation act only on the state its caller saw.
func Expecting(x Expect) OpOption { return func(in *Input) { in.Expect = &x } }

// Because records the caller's reason (abort).
func Because(reason string) OpOption { return func(in *Input) { in.Reason = reason } }

// Pause stops a running rollout where it is.
func (e *Engine) Pause(name string, opts ...OpOption) (Status, error) {
	return e.op(name, OpPause, opts)
}

// Resume continues a paused rollout, or passes a manual gate.
func (e *Engine) Resume(name string, opts ...OpOption) (Status, error) {
	return e.op(name, OpResume, opts)
}

// Promote skips the remaining steps: weight 100, then drain and withdraw the stable.
func (e *Engine) Promote(name string, opts ...OpOption) (Status, error) {
	return e.op(name, OpPromote, opts)
}

// Abort sends all traffic back to the stable version.
func (e *Engine) Abort(name string, opts ...OpOption) (Status, error) {
	return e.op(name, OpAbort, opts)
}

// AbortBecause is Abort with the caller's reason recorded in the history.
func (e *Engine) AbortBecause(name, reason string) (Status, error) {
	return e.op(name, OpAbort, []OpOption{Because(reason)})
}

// Retry starts an aborted, rolled-back or failed rollout again from its
// first step.
func (e *Engine) Retry(name string, opts ...OpOption) (Status, error) {
	return e.op(name, OpRetry, opts)
}

// op applies an operation: it is decided, saved, then published; when it
// cannot be saved it changes nothing and returns the error.
func (e *Engine) op(name string, op Op, opts []OpOption) (Status, error) {
	e.mu.Lock()
	r, ok := e.rollouts[name]
	if !ok {
		e.mu.Unlock()
		return Status{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	now := e.o.Clock.Now()
	in := Input{Op: op, Now: now}
	for _, o := range opts {
		o(&in)
	}
	res, err := Decide(r.plan, r.steps, r.State, r.tm, in)
	if err == nil {
		err = e.commitLocked(r, res, now)
	}
	if err != nil {
		e.mu.Unlock()
		return Status{}, err
	}
	e.mu.Unlock()
	e.publishLogged(op.String() + " " + name)
	e.Wake()
	return e.Get(name)
}

// DeleteOptions qualify Delete.
type DeleteOptions struct {
	// Force deletes a rollout whose routes carry traffic.
	Force bool
	// DryRun says what would happen and changes nothing.
	DryRun bool
}

// Delete removes a rollout, its routes and clusters, and its history. It
// returns what that does to the fleet's config. A rollout whose routes
// carry traffic needs Force; one whose plan file still exists is refused:
// it would come back from the file.
func (e *Engine) Delete(name string, o DeleteOptions) (string, error) {
	e.mu.Lock()
	r, ok := e.rollouts[name]
	if !ok {
		e.mu.Unlock()
		return "", fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	shared := false
	for n, other := range e.rollouts {
		if n != name && ListenerKey(other.plan.Listener.Address) == ListenerKey(r.plan.Listener.Address) {
			shared = true
		}
	}
	effect, needsForce := deleteEffect(r.Rollout, shared)
	if file, ok := strings.CutPrefix(r.Source, sourceFilePrefix); ok {
		if _, err := os.Stat(file); err == nil {
			e.mu.Unlock()
			return effect, fmt.Errorf("%w: rollout %q comes from plan file %s and would come back from it; remove the file (the rollout is then kept, owned by the API) and delete again", ErrFailedPrecondition, name, file)
		}
	}
	if o.DryRun {
		e.mu.Unlock()
		return effect, nil
	}
	if needsForce && !o.Force {
		e.mu.Unlock()
		return effect, fmt.Errorf("%w: deleting rollout %q %s; use --force to delete it anyway", ErrFailedPrecondition, name, effect)
	}
	if err := e.o.Store.Delete(name); err != nil {
		e.mu.Unlock()
		return effect, fmt.Errorf("rollout %q: %w: %w", name, ErrStore, err)
	}
	delete(e.rollouts, name)
	e.dirty = true
	e.mu.Unlock()
	e.Wake()
	err := e.publish("delete " + name)
	e.o.Log.Info("rollout deleted", "rollout", name, "effect", effect)
	return effect, err
}

// Detach records that the plan file a rollout came from is gone: the
// rollout keeps running as it is, now owned by the API. Removing a file
// never takes traffic away.
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
	next := r.Rollout
	next.Source = SourceAPI
	ev := Event{Time: e.o.Clock.Now(), Rollout: name, From: r.State.Phase, To: r.State.Phase, Weight: r.State.Weight, StepIndex: r.State.StepIndex,
		Reason: fmt.Sprintf("plan file %s removed; rollout kept as it is (delete it with shiftctl delete)", strings.TrimPrefix(source, sourceFilePrefix))}
	if err := e.o.Store.Save(next, ev); err != nil {
		return fmt.Errorf("rollout %q: %w: %w", name, ErrStore, err)
	}
	r.Source = SourceAPI
	e.notifyLocked(r, &ev)
	return nil
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
	return e.o.Store.Events(name, limit)
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
	if e.statusConv == nil || time.Since(e.statusConvAt) >= statusConvFor {
		e.statusConv, e.statusConvAt = map[convKey]Convergence{}, time.Now()
	}
	return e.statusMemoLocked(r, e.statusConv)
}

func (e *Engine) statusMemoLocked(r *entry, memo map[convKey]Convergence) Status {
	s := Status{Rollout: r.Rollout, StepCount: len(r.steps)}
	if !r.State.Phase.Terminal() {
		s.Signal = r.tm.Signal
		if s.Signal.State == "" {
			s.Signal = Signal{State: SignalStale, Reason: "not evaluated yet"}
		}
		if i := r.State.StepIndex; i < len(r.steps) {
			if left := r.steps[i].Hold.D() - r.State.HoldCounted; left > 0 {
				s.HoldRemaining = left
			}
		}
	}
	s.Signal.Traffic = nil
	if r.State.RouteVersion != "" {
		s.Fleet = e.fleetOf(r, memo)
	}
	if r.storeErr != nil {
		s.StoreError = r.storeErr.Error()
		// Nothing moves until the store takes the decision: say so.
		if s.State.Phase == PhaseProgressing {
			s.State.Phase = PhaseHolding
		}
		s.State.Reason = "store unavailable: " + s.StoreError
	}
	s.Observed = r.obs.view()
	s.FleetWeight, s.WeightPending = e.fleetWeightLocked(r)
	return s
}
