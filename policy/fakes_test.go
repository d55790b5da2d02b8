package policy_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/boltstore"
	"github.com/shiftplane/shiftplane/test/fakeclock"
)

// The fakes below stand in for the engine's interface boundaries only: the
// clock, the signal gate, the publisher, the fleet and the hook runner. The
// store is always the real bbolt one.

// epoch is where every fake clock starts.
var epoch = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeClock is the tests' one settable clock.
type fakeClock = fakeclock.Clock

func newFakeClock() *fakeClock { return fakeclock.New(epoch) }

// change is one point of a scripted signal timeline: from At on, the
// signal is State (until the next change).
type change struct {
	At    time.Time
	State policy.SignalState
}

// fakeGate is a policy.SignalGate that plays a scripted timeline. Before
// the first change the signal is clear.
type fakeGate struct {
	mu       sync.Mutex
	timeline []change // sorted by At
	active   float64
	known    bool
	// quiet makes the canary serve no requests: no traffic samples.
	quiet bool
}

func (g *fakeGate) Evaluate(now time.Time, q policy.SignalQuery) policy.Signal {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.atLocked(now)
	sig := policy.Signal{State: s, Reason: fmt.Sprintf("scripted %s for %s", s, q.CanaryCluster)}
	if !g.quiet && s != policy.SignalStale {
		// Every evaluation is a fresh report of a canary serving requests.
		sig.Traffic = []policy.TrafficSample{{Node: "envoy-1", From: now, At: now, Requests: 100}}
	}
	return sig
}

func (g *fakeGate) ActiveRequests(now time.Time, cluster string) (float64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.active, g.known
}

// At returns the scripted signal at t.
func (g *fakeGate) At(t time.Time) policy.SignalState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.atLocked(t)
}

func (g *fakeGate) atLocked(t time.Time) policy.SignalState {
	i := sort.Search(len(g.timeline), func(i int) bool { return g.timeline[i].At.After(t) })
	if i == 0 {
		return policy.SignalClear
	}
	return g.timeline[i-1].State
}

// SetFrom makes the signal s from t on, dropping later scripted changes.
func (g *fakeGate) SetFrom(t time.Time, s policy.SignalState) {
	g.mu.Lock()
	defer g.mu.Unlock()
	i := sort.Search(len(g.timeline), func(i int) bool { return !g.timeline[i].At.Before(t) })
	g.timeline = append(g.timeline[:i], change{At: t, State: s})
}

// Script replaces the timeline.
func (g *fakeGate) Script(cs []change) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.timeline = append([]change(nil), cs...)
}

// SetQuiet makes the canary serve no requests (true) or serve again.
func (g *fakeGate) SetQuiet(q bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.quiet = q
}

func (g *fakeGate) SetActive(active float64, known bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.active, g.known = active, known
}

// publishRec is one DesiredState the fake publisher was given.
type publishRec struct {
	Version uint64
	At      time.Time
	Reason  string
	DS      policy.DesiredState
}

// fakePublisher records every DesiredState and returns a new, increasing
// version (one counter for both kinds) on every publish.
type fakePublisher struct {
	mu      sync.Mutex
	clock   policy.Clock
	next    func() (uint64, error)
	onSet   func(version uint64, at time.Time)
	recs    []publishRec
	failErr error
}

func (p *fakePublisher) Publish(ctx context.Context, ds policy.DesiredState, reason string) (policy.PublishResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failErr != nil {
		return policy.PublishResult{}, p.failErr
	}
	v, err := p.next()
	if err != nil {
		return policy.PublishResult{}, err
	}
	at := p.clock.Now()
	p.recs = append(p.recs, publishRec{Version: v, At: at, Reason: reason, DS: copyDS(ds)})
	if p.onSet != nil {
		p.onSet(v, at)
	}
	s := strconv.FormatUint(v, 10)
	return policy.PublishResult{ClusterVersion: s, ListenerVersion: s, RouteVersion: s}, nil
}

func (p *fakePublisher) Records() []publishRec {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]publishRec(nil), p.recs...)
}

func (p *fakePublisher) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.recs)
}

func (p *fakePublisher) SetFail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failErr = err
}

func copyDS(ds policy.DesiredState) policy.DesiredState {
	return policy.DesiredState{Services: append([]policy.ServiceState(nil), ds.Services...)}
}

// service returns the named service of ds.
func service(ds policy.DesiredState, name string) (policy.ServiceState, bool) {
	for _, s := range ds.Services {
		if s.Name == name {
			return s, true
		}
	}
	return policy.ServiceState{}, false
}

// nackWindow makes the fleet reject every version whose ACK would arrive
// within [From, To); such a version is ACKed at To instead.
type nackWindow struct {
	From, To time.Time
	Err      string
}

// fakeFleet is a policy.FleetView of one node that ACKs each published
// version Delay after it was published, except for NACK windows and
// versions rejected for good.
type fakeFleet struct {
	mu        sync.Mutex
	clock     policy.Clock
	node      string
	delay     time.Duration
	published map[uint64]time.Time
	windows   []nackWindow
	rejected  map[string]string // kind/version → error, never ACKed
}

func newFakeFleet(clock policy.Clock) *fakeFleet {
	return &fakeFleet{clock: clock, node: "envoy-1", published: map[uint64]time.Time{}, rejected: map[string]string{}}
}

func (f *fakeFleet) Published(v uint64, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published[v] = at
}

func (f *fakeFleet) SetDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay = d
}

func (f *fakeFleet) AddWindow(w nackWindow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.windows = append(f.windows, w)
}

// Reject makes the node NACK version v of kind, for good.
func (f *fakeFleet) Reject(kind policy.ResourceKind, v string, err string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rejected[string(kind)+"/"+v] = err
}

// ackTimes returns when version w of kind is first rejected (nackAt, zero if
// never) and when it is ACKed (ackAt, zero if never).
func (f *fakeFleet) ackTimesLocked(kind policy.ResourceKind, w uint64) (nackAt, ackAt time.Time, nackErr string) {
	at := f.published[w].Add(f.delay)
	if e, ok := f.rejected[string(kind)+"/"+strconv.FormatUint(w, 10)]; ok {
		return at, time.Time{}, e
	}
	for _, win := range f.windows {
		if !at.Before(win.From) && at.Before(win.To) {
			return at, win.To, win.Err
		}
	}
	return time.Time{}, at, ""
}

// ConvergedAt is when the fleet first ACKed version v of kind or a later
// one; zero if it has not been published or will never be.
func (f *fakeFleet) ConvergedAt(kind policy.ResourceKind, version string) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.convergedAtLocked(kind, version)
}

func (f *fakeFleet) convergedAtLocked(kind policy.ResourceKind, version string) time.Time {
	v, err := strconv.ParseUint(version, 10, 64)
	if err != nil {
		return time.Time{}
	}
	var best time.Time
	for w := range f.published {
		if w < v {
			continue
		}
		if _, ack, _ := f.ackTimesLocked(kind, w); !ack.IsZero() && (best.IsZero() || ack.Before(best)) {
			best = ack
		}
	}
	return best
}

func (f *fakeFleet) Convergence(kind policy.ResourceKind, version string) policy.Convergence {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock.Now()
	c := policy.Convergence{Nodes: 1}
	if at := f.convergedAtLocked(kind, version); !at.IsZero() && !now.Before(at) {
		c.Converged = true
		return c
	}
	v, err := strconv.ParseUint(version, 10, 64)
	if err != nil {
		return c
	}
	var ws []uint64
	for w := range f.published {
		ws = append(ws, w)
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i] < ws[j] })
	for _, w := range ws {
		if w < v {
			continue
		}
		nack, ack, e := f.ackTimesLocked(kind, w)
		if !nack.IsZero() && !now.Before(nack) && (ack.IsZero() || now.Before(ack)) {
			c.Nacks = append(c.Nacks, fmt.Sprintf("node %s rejected %s version %d: %s", f.node, kind, w, e))
		}
	}
	return c
}

// hookResult is what the fake hook runner returns for one hook.
type hookResult struct {
	Output string
	Err    error
}

// fakeHooks is a policy.HookRunner that returns scripted results, keyed
// by the hook's first exec word or its webhook URL, and records its calls.
type fakeHooks struct {
	mu      sync.Mutex
	results map[string]hookResult
	calls   []string
	release chan struct{} // when set, Run waits for it (or ctx)
}

func hookKey(h policy.Hook) string {
	if h.Webhook != nil {
		return h.Webhook.URL
	}
	return strings.Join(h.Exec, " ")
}

func (f *fakeHooks) Run(ctx context.Context, h policy.Hook, status []byte) (string, error) {
	f.mu.Lock()
	k := hookKey(h)
	f.calls = append(f.calls, k)
	res := f.results[k]
	rel := f.release
	f.mu.Unlock()
	if rel != nil {
		select {
		case <-rel:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return res.Output, res.Err
}

func (f *fakeHooks) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// harness is an engine wired to the fakes and a real bbolt store in a
// temporary directory.
type harness struct {
	t     testing.TB
	clock *fakeClock
	gate  *fakeGate
	fleet *fakeFleet
	hooks *fakeHooks
	pub   *fakePublisher
	path  string
	store *boltstore.Store
	eng   *policy.Engine
	opts  policy.Options
	// version is the snapshot counter shared by every publisher of this
	// harness, as the store's counter is across restarts in production.
	version uint64
}

type harnessOption func(*harness)

// withPersistEvery sets Options.PersistEvery.
func withPersistEvery(d time.Duration) harnessOption {
	return func(h *harness) { h.opts.PersistEvery = d }
}

func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	clock := newFakeClock()
	h := &harness{
		t:     t,
		clock: clock,
		gate:  &fakeGate{known: true},
		fleet: newFakeFleet(clock),
		hooks: &fakeHooks{results: map[string]hookResult{}},
		path:  filepath.Join(t.TempDir(), "shiftplane.db"),
	}
	h.opts = policy.Options{Clock: clock, Gate: h.gate, Fleet: h.fleet, Hooks: h.hooks, DrainQuiet: 2 * time.Second,
		Validate: policy.ValidateOptions{AllowExec: true}}
	for _, o := range opts {
		o(h)
	}
	h.start()
	t.Cleanup(func() {
		if h.eng != nil {
			h.eng.WaitHooks()
		}
		if h.store != nil {
			h.store.Close()
		}
	})
	return h
}

// start opens the store and makes a new engine with a new publisher.
func (h *harness) start() {
	h.t.Helper()
	st, err := boltstore.Open(h.path)
	if err != nil {
		h.t.Fatalf("open store: %v", err)
	}
	h.store = st
	h.pub = &fakePublisher{clock: h.clock, onSet: h.fleet.Published, next: func() (uint64, error) {
		h.version++
		return h.version, nil
	}}
	o := h.opts
	o.Store, o.Publisher = st, h.pub
	eng, err := policy.New(context.Background(), o)
	if err != nil {
		h.t.Fatalf("policy.New: %v", err)
	}
	h.eng = eng
}

// kill drops the engine without any shutdown, as a crash would, and
// closes the store handle (bbolt locks the file).
func (h *harness) kill() {
	h.t.Helper()
	h.eng = nil
	if err := h.store.Close(); err != nil {
		h.t.Fatalf("close store: %v", err)
	}
	h.store = nil
}

func (h *harness) tick() {
	h.t.Helper()
	if err := h.eng.Tick(); err != nil {
		h.t.Fatalf("tick at %s: %v", h.since(), err)
	}
}

// since is the fake time elapsed since the epoch, for messages.
func (h *harness) since() time.Duration { return h.clock.Now().Sub(epoch) }

// advance moves the clock by d in ticks of at most step, ticking after each.
func (h *harness) advance(d, step time.Duration) {
	h.t.Helper()
	end := h.clock.Now().Add(d)
	for h.clock.Now().Before(end) {
		s := step
		if left := end.Sub(h.clock.Now()); left < s {
			s = left
		}
		h.clock.Advance(s)
		h.tick()
	}
}

// runUntil ticks every step until cond holds, failing after max.
func (h *harness) runUntil(what string, max, step time.Duration, cond func(policy.Status) bool, name string) policy.Status {
	h.t.Helper()
	end := h.clock.Now().Add(max)
	for {
		st := h.get(name)
		if cond(st) {
			return st
		}
		if !h.clock.Now().Before(end) {
			h.t.Fatalf("%s: not reached within %s; rollout is %s at step %d weight %d: %s", what, max, st.State.Phase, st.State.StepIndex, st.State.Weight, st.State.Reason)
		}
		h.clock.Advance(step)
		h.eng.WaitHooks()
		h.tick()
	}
}

func (h *harness) get(name string) policy.Status {
	h.t.Helper()
	st, err := h.eng.Get(name)
	if err != nil {
		h.t.Fatalf("get %q: %v", name, err)
	}
	return st
}

func (h *harness) apply(p policy.Plan) policy.Status {
	h.t.Helper()
	st, err := h.eng.Apply(p, "api")
	if err != nil {
		h.t.Fatalf("apply %q: %v", p.Name, err)
	}
	return st
}

// events reads a rollout's whole history from the store.
func (h *harness) events(name string) []policy.Event {
	h.t.Helper()
	evs, err := h.store.Events(name, 0)
	if err != nil {
		h.t.Fatalf("events %q: %v", name, err)
	}
	return evs
}

// weights returns the canary weight of every DesiredState published for
// name, in order (services absent from a publish are skipped).
func (h *harness) weights(name string) []int {
	var ws []int
	for _, r := range h.pub.Records() {
		if s, ok := service(r.DS, name); ok {
			ws = append(ws, s.CanaryWeight)
		}
	}
	return ws
}

// lastService is name's service in the last publish.
func (h *harness) lastService(name string) policy.ServiceState {
	h.t.Helper()
	recs := h.pub.Records()
	if len(recs) == 0 {
		h.t.Fatalf("nothing published")
	}
	s, ok := service(recs[len(recs)-1].DS, name)
	if !ok {
		h.t.Fatalf("%q is not in the last publish", name)
	}
	return s
}

// phases is the sequence of phases a history enters (repeats collapsed).
func phases(evs []policy.Event) []policy.Phase {
	var ps []policy.Phase
	for _, e := range evs {
		if len(ps) == 0 || ps[len(ps)-1] != e.To {
			ps = append(ps, e.To)
		}
	}
	return ps
}

func intp(i int) *int { return &i }

func dur(d time.Duration) policy.Duration { return policy.Duration(d) }

func durp(d time.Duration) *policy.Duration { x := policy.Duration(d); return &x }

func wstep(w int, hold time.Duration) policy.Step {
	return policy.Step{Weight: intp(w), Hold: dur(hold)}
}

func pstep() policy.Step { return policy.Step{Pause: &policy.Pause{}} }

// testPlan is a valid plan named name with steps.
func testPlan(name string, steps ...policy.Step) policy.Plan {
	return policy.Plan{
		Name:     name,
		Listener: policy.Listener{Address: "0.0.0.0:10000", Domains: []string{name + ".example"}},
		Stable:   policy.Backend{Cluster: name + "-v1", Endpoints: []string{"127.0.0.1:8081"}},
		Canary:   policy.Backend{Cluster: name + "-v2", Endpoints: []string{"127.0.0.1:8082"}},
		Steps:    steps,
		Analysis: policy.Analysis{StableFor: durp(10 * time.Second), RollbackAfter: durp(2 * time.Minute)},
	}
}

// isPrecondition reports whether err is the engine's ErrFailedPrecondition.
func isPrecondition(err error) bool { return errors.Is(err, policy.ErrFailedPrecondition) }

// stateCore is the part of a State a restart must reproduce exactly: all
// but the reason, the timestamps and the versions the new publish stamps.
func stateCore(s policy.State) policy.State {
	s.Reason, s.Updated, s.RouteVersion, s.ClusterVersion, s.ListenerVersion = "", time.Time{}, "", "", ""
	return s
}

func equalDS(a, b policy.DesiredState) bool { return reflect.DeepEqual(a, b) }
