package policy_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

var (
	propSeeds  = flag.Int("prop.seeds", 200, "how many seeds TestEngineProperties runs")
	propSeed   = flag.Uint64("prop.seed", 0, "run TestEngineProperties for this seed only")
	propRandom = flag.Bool("prop.random", false, "start TestEngineProperties at a random (logged) seed instead of 1")
)

// propName is the rollout every property run carries out.
const propName = "prop"

// scenario is one random world for a rollout: a plan, a signal timeline,
// fleet ACK behaviour and NACK episodes, and how the clock ticks.
type scenario struct {
	seed          uint64
	plan          policy.Plan
	maxTick       time.Duration // every tick advances the clock by at most this
	ackDelay      time.Duration
	horizon       time.Time // the signal is clear from here on
	timeline      []change
	windows       []nackWindow
	pauseProb     float64 // chance per tick of a pause request
	abortAt       time.Time
	drainKnown    bool
	stableFor     time.Duration
	rollbackAfter time.Duration
}

func newScenario(seed uint64) scenario {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	between := func(lo, hi time.Duration) time.Duration {
		if hi <= lo {
			return lo
		}
		return (lo + time.Duration(rng.Int64N(int64(hi-lo)))).Round(time.Millisecond)
	}
	sc := scenario{seed: seed}
	sc.maxTick = between(500*time.Millisecond, 3*time.Second)
	if rng.Float64() < 0.3 {
		sc.ackDelay = 0
	} else {
		sc.ackDelay = between(0, 3*time.Second)
	}

	// Steps: increasing weights ending at 100, random holds, manual gates
	// anywhere (also first and last), and now and then a repeated weight.
	var steps []policy.Step
	if rng.Float64() < 0.1 {
		steps = append(steps, pstep())
	}
	for w := 0; w < 100; {
		switch {
		case w > 0 && rng.Float64() < 0.1:
			// the same weight again
		case rng.Float64() < 0.2:
			w = 100
		default:
			w = min(100, w+1+rng.IntN(40))
		}
		steps = append(steps, wstep(w, between(0, 90*time.Second).Round(time.Second)))
		if rng.Float64() < 0.15 {
			steps = append(steps, pstep())
		}
	}
	sc.plan = testPlan(propName, steps...)
	sc.stableFor = between(0, 20*time.Second).Round(time.Second)
	if rng.Float64() < 0.2 {
		sc.stableFor = 0
	}
	sc.rollbackAfter = between(30*time.Second, 4*time.Minute).Round(time.Second)
	if rng.Float64() < 0.2 {
		sc.rollbackAfter = 0 // disabled
	}
	sc.plan.Analysis.StableFor = durp(sc.stableFor)
	sc.plan.Analysis.RollbackAfter = durp(sc.rollbackAfter)
	sc.drainKnown = rng.Float64() < 0.7

	// The signal: runs of clear, firing and stale, each longer than a tick
	// so every run is seen by at least one tick.
	t := epoch
	sc.horizon = epoch.Add(between(3*time.Minute, 15*time.Minute))
	for t.Before(sc.horizon) {
		var s policy.SignalState
		var d time.Duration
		switch r := rng.Float64(); {
		case r < 0.55:
			s, d = policy.SignalClear, between(5*time.Second, 2*time.Minute)
		case r < 0.85:
			s, d = policy.SignalFiring, between(sc.maxTick+time.Second, 90*time.Second)
		default:
			s, d = policy.SignalStale, between(sc.maxTick+time.Second, 40*time.Second)
		}
		if n := len(sc.timeline); n == 0 || sc.timeline[n-1].State != s {
			sc.timeline = append(sc.timeline, change{At: t, State: s})
		}
		t = t.Add(d)
	}
	if n := len(sc.timeline); n == 0 || sc.timeline[n-1].State != policy.SignalClear {
		sc.timeline = append(sc.timeline, change{At: t, State: policy.SignalClear})
	}
	sc.horizon = t

	for i := rng.IntN(4); i > 0; i-- {
		from := epoch.Add(between(0, sc.horizon.Sub(epoch)))
		sc.windows = append(sc.windows, nackWindow{From: from, To: from.Add(between(time.Second, 40*time.Second)), Err: fmt.Sprintf("episode %d: invalid route", i)})
	}
	sc.pauseProb = []float64{0, 0.002, 0.01}[rng.IntN(3)]
	if rng.Float64() < 0.1 {
		sc.abortAt = epoch.Add(between(0, sc.horizon.Sub(epoch)))
	}
	return sc
}

func (sc scenario) String() string {
	var tl []string
	for _, c := range sc.timeline {
		tl = append(tl, fmt.Sprintf("%s@%s", c.State, c.At.Sub(epoch)))
	}
	var steps []string
	for _, s := range sc.plan.Steps {
		if s.Pause != nil {
			steps = append(steps, "pause")
		} else {
			steps = append(steps, fmt.Sprintf("%d/%s", *s.Weight, s.Hold))
		}
	}
	var ws []string
	for _, w := range sc.windows {
		ws = append(ws, fmt.Sprintf("[%s,%s)", w.From.Sub(epoch), w.To.Sub(epoch)))
	}
	abort := "never"
	if !sc.abortAt.IsZero() {
		abort = sc.abortAt.Sub(epoch).String()
	}
	return fmt.Sprintf("seed %d: steps [%s] stableFor %s rollbackAfter %s maxTick %s ackDelay %s nackWindows %v pauseProb %g abortAt %s drainKnown %v\n  timeline %s",
		sc.seed, strings.Join(steps, " "), sc.stableFor, sc.rollbackAfter, sc.maxTick, sc.ackDelay, ws, sc.pauseProb,
		abort, sc.drainKnown, strings.Join(tl, " "))
}

// propStats is what a run saw, so the whole test can check that the seeds
// exercised every path (a property test that never holds proves nothing).
type propStats struct {
	outcome    policy.Phase
	held       bool
	nacked     bool
	paused     bool
	gates      int
	maxHoldErr time.Duration
	ticks      int
}

// TestEngineProperties runs rollouts through random signal timelines, NACK
// episodes and pause/resume requests on a fake clock ticking in random
// small steps, and checks DESIGN.md's rules after every tick and operation:
//
//   - the published canary weight never increases while the signal is
//     firing or stale, or within stableFor of it clearing;
//   - weights never decrease, except a rollback or abort to 0;
//   - every weight of the schedule is published, in order;
//   - a step's counted hold equals the time it was held with the signal
//     clear, the fleet converged and no pause (computed from the timeline),
//     within one tick per change of those conditions;
//   - a rollback happens exactly when the signal fired rollbackAfter
//     without a break;
//   - every phase transition is an event in the store;
//   - the rollout finishes once the signal stays clear.
//
// Rerun one seed with: go test ./policy -run TestEngineProperties -prop.seed=N
func TestEngineProperties(t *testing.T) {
	var seeds []uint64
	switch {
	case *propSeed != 0:
		seeds = []uint64{*propSeed}
	default:
		base := uint64(1)
		if *propRandom {
			base = rand.Uint64() >> 16
		}
		for i := range *propSeeds {
			seeds = append(seeds, base+uint64(i))
		}
	}
	t.Logf("seeds %d..%d (rerun one with -prop.seed=N)", seeds[0], seeds[len(seeds)-1])

	var (
		mu    sync.Mutex
		stats []propStats
	)
	t.Run("seed", func(t *testing.T) {
		// Workers rather than t.Parallel: the runs mostly wait for bbolt's
		// fsyncs, so more of them than -parallel (GOMAXPROCS) keeps the CPU busy.
		next := make(chan uint64)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for seed := range next {
					t.Run(fmt.Sprint(seed), func(t *testing.T) {
						sc := newScenario(seed)
						st := runScenario(t, sc)
						if t.Failed() {
							t.Logf("rerun with -prop.seed=%d\n%s", seed, sc)
						}
						mu.Lock()
						stats = append(stats, st)
						mu.Unlock()
					})
				}
			})
		}
		for _, seed := range seeds {
			next <- seed
		}
		close(next)
		wg.Wait()
	})
	if len(seeds) < 50 || t.Failed() {
		return
	}
	count := map[string]int{}
	var maxErr time.Duration
	ticks := 0
	for _, s := range stats {
		ticks += s.ticks
		count[string(s.outcome)]++
		for k, v := range map[string]bool{"held": s.held, "nacked": s.nacked, "paused": s.paused, "gate": s.gates > 0} {
			if v {
				count[k]++
			}
		}
		maxErr = max(maxErr, s.maxHoldErr)
	}
	t.Logf("%d runs, %d ticks: %v; largest hold error %s", len(stats), ticks, count, maxErr)
	for _, k := range []string{string(policy.PhaseSucceeded), string(policy.PhaseRolledBack), string(policy.PhaseAborted), "held", "nacked", "paused", "gate"} {
		if count[k] == 0 {
			t.Errorf("no run was %s: the scenarios do not exercise that path", k)
		}
	}
}

// propRun carries one scenario and what has been observed of it.
type propRun struct {
	t     *testing.T
	sc    scenario
	h     *harness
	steps []policy.Step
	stats propStats

	prev      time.Time // time of the previous tick
	phase     policy.Phase
	stepIndex int
	lastSeq   uint64
	updated   time.Time // State.Updated when the events were last read
	nPub      int
	published []int // canary weights published, repeats collapsed

	badEnds   map[time.Time]bool // ends of the bad runs the engine observed
	firingObs time.Time          // first tick of the current firing streak the engine observed
	clearObs  time.Time          // first tick of the current clear spell the engine observed
	sigObs    policy.SignalState // the signal on the last observed tick

	pausedAt  time.Time // a pause request in effect since then (zero: none)
	pauses    [][2]time.Time
	resumeAt  time.Time // when the current pause (request or gate) is resumed
	hold      holdTrack
	rollbacks int

	canaryVersion string    // the first publish with the canary cluster
	fullAt        time.Time // the first publish at weight 100
	fullVersion   string
	withdrawn     bool
}

// holdTrack integrates, for the current weight step, the time it was held
// with the signal clear and stable, its weight ACKed and no pause request.
type holdTrack struct {
	index   int
	start   time.Time
	version string
	ideal   time.Duration
	flips   int
	lastG   bool
}

func runScenario(t *testing.T, sc scenario) propStats {
	t.Helper()
	h := newHarness(t, withPersistEvery(15*time.Second))
	h.gate.Script(sc.timeline)
	h.gate.SetActive(0, sc.drainKnown)
	h.fleet.SetDelay(sc.ackDelay)
	for _, w := range sc.windows {
		h.fleet.AddWindow(w)
	}
	rng := rand.New(rand.NewPCG(sc.seed, 0x71c4))
	pr := &propRun{t: t, sc: sc, h: h, steps: sc.plan.Schedule(), badEnds: map[time.Time]bool{}, hold: holdTrack{index: -1}}
	pr.prev = h.clock.Now()
	pr.nPub = h.pub.Count() // New's publish, before the rollout existed
	h.apply(sc.plan)
	pr.afterOp("apply")

	var total time.Duration
	for _, s := range pr.steps {
		total += s.Hold.D()
	}
	deadline := sc.horizon.Add(2*total + 10*time.Minute)
	for !pr.phase.Terminal() {
		now := h.clock.Advance(sc.maxTick/4 + time.Duration(rng.Int64N(int64(sc.maxTick*3/4))))
		if now.After(deadline) {
			t.Fatalf("not finished %s after the signal stayed clear: %s at step %d weight %d: %s",
				now.Sub(sc.horizon), pr.phase, pr.stepIndex, h.get(propName).State.Weight, h.get(propName).State.Reason)
		}
		st := pr.operate(rng, now)
		if t.Failed() {
			return pr.stats
		}
		pr.tick(now, st)
		if t.Failed() {
			return pr.stats
		}
	}
	pr.finish()
	pr.stats.outcome = pr.phase
	return pr.stats
}

// operate issues the operations due at now (resumes, a random pause
// request, an abort) and returns the rollout's status after them.
func (pr *propRun) operate(rng *rand.Rand, now time.Time) policy.Status {
	h := pr.h
	st := h.get(propName)
	op := ""
	switch {
	case !pr.sc.abortAt.IsZero() && !now.Before(pr.sc.abortAt) && !st.State.Phase.Terminal():
		pr.sc.abortAt = time.Time{}
		_, err := h.eng.Abort(propName)
		if err != nil && !(isPrecondition(err) && st.State.Phase == policy.PhasePromoting) {
			pr.t.Fatalf("abort at %s in %s: %v", now.Sub(epoch), st.State.Phase, err)
		}
		if err == nil {
			pr.pausedAt = time.Time{}
		}
		op = "abort"
	case st.State.Phase == policy.PhasePaused && !pr.resumeAt.IsZero() && !now.Before(pr.resumeAt):
		if _, err := h.eng.Resume(propName); err != nil {
			pr.t.Fatalf("resume at %s: %v", now.Sub(epoch), err)
		}
		if !pr.pausedAt.IsZero() {
			pr.pauses = append(pr.pauses, [2]time.Time{pr.pausedAt, now})
			pr.pausedAt = time.Time{}
		}
		pr.resumeAt = time.Time{}
		op = "resume"
	case rng.Float64() < pr.sc.pauseProb:
		switch st.State.Phase {
		case policy.PhasePending, policy.PhaseProgressing, policy.PhaseHolding:
			if _, err := h.eng.Pause(propName); err != nil {
				pr.t.Fatalf("pause at %s in %s: %v", now.Sub(epoch), st.State.Phase, err)
			}
			pr.pausedAt = now
			pr.resumeAt = now.Add(time.Second + time.Duration(rng.Int64N(int64(time.Minute))))
			pr.stats.paused = true
			op = "pause"
		case policy.PhasePromoting, policy.PhaseRollingBack:
			if _, err := h.eng.Pause(propName); !isPrecondition(err) {
				pr.t.Fatalf("pause in %s: %v, want ErrFailedPrecondition", st.State.Phase, err)
			}
		}
	}
	if op != "" {
		st = pr.afterOp(op)
	}
	if st.State.Phase == policy.PhasePaused && pr.resumeAt.IsZero() {
		// A manual gate: an operator passes it a little later.
		pr.resumeAt = now.Add(time.Duration(rng.Int64N(int64(30 * time.Second))))
		pr.stats.gates++
	}
	return st
}

// tick runs one engine tick at now and checks everything.
func (pr *propRun) tick(now time.Time, before policy.Status) {
	h := pr.h
	pr.stats.ticks++
	// What the engine sees of the signal on this tick: nothing while
	// PENDING (the canary takes no traffic yet).
	sig := h.gate.At(now)
	observed := before.State.Phase != policy.PhasePending && !before.State.Phase.Terminal()
	if observed && sig != policy.SignalClear {
		pr.badEnds[pr.badRunEnd(now)] = true
	}
	// A firing streak survives stale spells and clear spells shorter than
	// stableFor (Envoy un-ejects a failing host between ejections).
	switch {
	case !observed:
		if !before.State.Phase.Terminal() {
			pr.firingObs, pr.clearObs = time.Time{}, time.Time{}
		}
	case sig == policy.SignalFiring:
		pr.clearObs = time.Time{}
		if pr.firingObs.IsZero() {
			pr.firingObs = now
		}
	case sig == policy.SignalStale:
		pr.clearObs = time.Time{}
	default:
		if pr.clearObs.IsZero() {
			pr.clearObs = now
		}
		if now.Sub(pr.clearObs) >= pr.sc.stableFor {
			pr.firingObs = time.Time{}
		}
	}
	pr.sigObs = sig

	h.tick()
	st := h.get(propName)
	pr.checkPublishes(before, st)
	pr.checkEvents(st)
	pr.checkHold(now, before, st)
	pr.checkRollback(now, before, st)
	if st.State.StepIndex < pr.stepIndex || st.State.StepIndex > pr.stepIndex+1 {
		pr.t.Errorf("at %s: step %d → %d in one tick", now.Sub(epoch), pr.stepIndex, st.State.StepIndex)
	}
	if st.State.Phase == policy.PhaseHolding {
		pr.stats.held = true
		if strings.Contains(st.State.Reason, "rejected") {
			pr.stats.nacked = true
		}
	}
	pr.phase, pr.stepIndex, pr.prev = st.State.Phase, st.State.StepIndex, now
}

// afterOp checks what an operation published and recorded.
func (pr *propRun) afterOp(op string) policy.Status {
	st := pr.h.get(propName)
	pr.checkPublishes(st, st)
	pr.checkEvents(st)
	if st.State.StepIndex != pr.stepIndex && op != "apply" {
		pr.t.Errorf("%s moved the step from %d to %d", op, pr.stepIndex, st.State.StepIndex)
	}
	pr.phase, pr.stepIndex = st.State.Phase, st.State.StepIndex
	return st
}

// badRunEnd is when the bad (firing or stale) run containing t turns clear.
func (pr *propRun) badRunEnd(t time.Time) time.Time {
	for _, c := range pr.sc.timeline {
		if c.At.After(t) && c.State == policy.SignalClear {
			return c.At
		}
	}
	return pr.sc.horizon
}

// stable says whether s is clear and not within stableFor of the end of a
// bad run the engine saw.
func (pr *propRun) stable(s time.Time) bool {
	if pr.h.gate.At(s) != policy.SignalClear {
		return false
	}
	for end := range pr.badEnds {
		if !end.After(s) && s.Sub(end) < pr.sc.stableFor {
			return false
		}
	}
	return true
}

func (pr *propRun) pausedAtTime(s time.Time) bool {
	for _, p := range pr.pauses {
		if s.After(p[0]) && !s.After(p[1]) {
			return true
		}
	}
	return !pr.pausedAt.IsZero() && s.After(pr.pausedAt)
}

// checkPublishes checks every DesiredState published since the last check.
func (pr *propRun) checkPublishes(before, st policy.Status) {
	recs := pr.h.pub.Records()
	if len(recs) == pr.nPub {
		return
	}
	for i, r := range recs[pr.nPub:] {
		s, ok := service(r.DS, propName)
		if !ok {
			// A rollout the fleet rejected before it ever accepted it is
			// left out (the others move on); one the fleet had, never.
			for _, prev := range recs[:pr.nPub+i] {
				if _, had := service(prev.DS, propName); had {
					if at := pr.h.fleet.ConvergedAt(policy.KindListeners, strconv.FormatUint(prev.Version, 10)); !at.IsZero() && !at.After(r.At) {
						pr.t.Errorf("publish %d at %s lacks the rollout, which the fleet accepted in publish %d", r.Version, r.At.Sub(epoch), prev.Version)
						break
					}
				}
			}
			continue
		}
		w := s.CanaryWeight
		last := 0
		if n := len(pr.published); n > 0 {
			last = pr.published[n-1]
		}
		pr.checkMakeBeforeBreak(r, s, last)
		switch {
		case len(pr.published) == 0:
			// The rollout's first publish, at weight 0.
		case w == last:
			continue
		case w == 0:
			pr.rollbacks++ // checked against the phase below
		case w < last:
			pr.t.Errorf("publish %d at %s: weight %d after %d", r.Version, r.At.Sub(epoch), w, last)
		case last == 0 && before.State.Phase == policy.PhasePending:
			// The first step: the engine does not judge a canary that takes no traffic.
		case pr.h.gate.At(r.At) != policy.SignalClear:
			pr.t.Errorf("publish %d at %s: weight %d → %d while the signal is %s", r.Version, r.At.Sub(epoch), last, w, pr.h.gate.At(r.At))
		case !pr.stable(r.At):
			pr.t.Errorf("publish %d at %s: weight %d → %d within stableFor (%s) of the signal clearing", r.Version, r.At.Sub(epoch), last, w, pr.sc.stableFor)
		}
		pr.published = append(pr.published, w)
	}
	pr.nPub = len(recs)
	if pr.rollbacks > 0 {
		switch st.State.Phase {
		case policy.PhaseRollingBack, policy.PhaseRolledBack, policy.PhaseAborted:
		default:
			pr.t.Errorf("weight back to 0 in phase %s", st.State.Phase)
		}
	}
	// Every weight published so far is the schedule's, in order.
	if !isPrefixOfSchedule(trimRollback(pr.published, pr.rollbacks), scheduleWeights(pr.steps)) {
		pr.t.Errorf("published weights %v skip or reorder the schedule %v", pr.published, scheduleWeights(pr.steps))
	}
}

// checkMakeBeforeBreak checks DESIGN.md's make before break: the canary
// cluster is ACKed before a route sends it traffic, and the stable is
// withdrawn only after it drained.
func (pr *propRun) checkMakeBeforeBreak(r publishRec, s policy.ServiceState, last int) {
	fleet := pr.h.fleet
	at := r.At.Sub(epoch)
	if s.CanaryPublished && pr.canaryVersion == "" {
		pr.canaryVersion = fmt.Sprint(r.Version)
	}
	if s.CanaryWeight > 0 && last == 0 && len(pr.published) > 0 && pr.rollbacks == 0 {
		ack := fleet.ConvergedAt(policy.KindClusters, pr.canaryVersion)
		if pr.canaryVersion == "" || ack.IsZero() || ack.After(r.At) {
			pr.t.Errorf("publish %d at %s: weight %d before the fleet ACKed the canary cluster (version %q)", r.Version, at, s.CanaryWeight, pr.canaryVersion)
		}
	}
	if s.CanaryWeight == 100 && pr.fullAt.IsZero() {
		pr.fullAt, pr.fullVersion = r.At, fmt.Sprint(r.Version)
	}
	if !s.StablePublished && !pr.withdrawn {
		pr.withdrawn = true
		switch {
		case pr.fullAt.IsZero():
			pr.t.Errorf("publish %d at %s: stable withdrawn before the canary took all traffic", r.Version, at)
		case pr.sc.drainKnown:
			// Zero active requests are reported throughout: withdrawn no
			// sooner than DrainQuiet after the fleet ACKed weight 100.
			if c := fleet.ConvergedAt(policy.KindRoutes, pr.fullVersion); c.IsZero() || r.At.Sub(c) < 2*time.Second {
				pr.t.Errorf("publish %d at %s: stable withdrawn %s after the fleet ACKed weight 100, before DrainQuiet", r.Version, at, r.At.Sub(c))
			}
		default:
			// No stats: withdrawn only after drainTimeout.
			if d := r.At.Sub(pr.fullAt); d < policy.DefaultDrainTimeout {
				pr.t.Errorf("publish %d at %s: stable withdrawn %s after weight 100 without stats, before drainTimeout", r.Version, at, d)
			}
		}
	}
}

func trimRollback(ws []int, rollbacks int) []int {
	if rollbacks > 0 && len(ws) > 0 && ws[len(ws)-1] == 0 {
		return ws[:len(ws)-1]
	}
	return ws
}

func scheduleWeights(steps []policy.Step) []int {
	var ws []int
	for _, s := range steps {
		if s.Weight != nil {
			ws = append(ws, *s.Weight)
		}
	}
	return ws
}

// checkEvents reads the events stored since the last check and checks they
// chain from the phase last seen to the phase the engine reports.
func (pr *propRun) checkEvents(st policy.Status) {
	// Every transition sets State.Updated to the fake time, which moves on
	// every tick: when neither it nor the phase changed there is nothing new
	// to read (the other events, e.g. a hook's output, are not transitions).
	if st.State.Updated.Equal(pr.updated) && st.State.Phase == pr.phase {
		return
	}
	pr.updated = st.State.Updated
	// The newest event says how many to read.
	evs, err := pr.h.store.Events(propName, 1)
	if err == nil && len(evs) > 0 && evs[0].Seq > pr.lastSeq+1 {
		evs, err = pr.h.store.Events(propName, int(evs[0].Seq-pr.lastSeq))
	}
	if err != nil {
		pr.t.Fatalf("events: %v", err)
	}
	cur := pr.phase
	for _, e := range evs {
		if e.Seq <= pr.lastSeq {
			continue
		}
		if e.Seq != pr.lastSeq+1 {
			pr.t.Errorf("event seq %d after %d", e.Seq, pr.lastSeq)
		}
		pr.lastSeq = e.Seq
		if e.From != cur {
			pr.t.Errorf("event %d (%s) starts from %q, but the rollout was %q", e.Seq, e, e.From, cur)
		}
		cur = e.To
	}
	if cur != st.State.Phase {
		pr.t.Errorf("the rollout went %s → %s without an event in the store", cur, st.State.Phase)
	}
}

// checkHold integrates the current weight step's ideal hold over the last
// tick and compares it with what the engine counted.
func (pr *propRun) checkHold(now time.Time, before, st policy.Status) {
	hs := &pr.hold
	tol := func() time.Duration { return pr.sc.maxTick * time.Duration(hs.flips+1) }
	integrate := func() {
		if hs.index < 0 {
			return
		}
		ackAt := pr.h.fleet.ConvergedAt(policy.KindRoutes, hs.version)
		g := func(s time.Time) bool {
			return !ackAt.IsZero() && !s.Before(ackAt) && pr.stable(s) && !pr.pausedAtTime(s)
		}
		from := pr.prev
		if hs.start.After(from) {
			from = hs.start
		}
		if !now.After(from) {
			return
		}
		cuts := []time.Time{from, now}
		add := func(c time.Time) {
			if c.After(from) && c.Before(now) {
				cuts = append(cuts, c)
			}
		}
		add(ackAt)
		for _, c := range pr.sc.timeline {
			add(c.At)
		}
		for end := range pr.badEnds {
			add(end)
			add(end.Add(pr.sc.stableFor))
		}
		for _, p := range pr.pauses {
			add(p[0])
			add(p[1])
		}
		add(pr.pausedAt)
		sort.Slice(cuts, func(i, j int) bool { return cuts[i].Before(cuts[j]) })
		for i := 0; i+1 < len(cuts); i++ {
			a, b := cuts[i], cuts[i+1]
			if !b.After(a) {
				continue
			}
			on := g(a.Add(b.Sub(a) / 2))
			if on != hs.lastG {
				hs.flips++
				hs.lastG = on
			}
			if on {
				hs.ideal += b.Sub(a)
			}
		}
	}
	integrate()

	holdOf := func(i int) time.Duration { return pr.steps[i].Hold.D() }
	moved := st.State.StepIndex != before.State.StepIndex || st.State.Phase != before.State.Phase &&
		(st.State.Phase == policy.PhasePromoting || before.State.Phase == policy.PhasePending)
	if hs.index >= 0 && moved && st.State.Phase != policy.PhaseRollingBack {
		// The step just finished: it must have been held long enough.
		if hs.ideal+tol() < holdOf(hs.index) {
			pr.t.Errorf("at %s: step %d (hold %s) left after %s of clear, converged, unpaused time (tolerance %s)",
				now.Sub(epoch), hs.index, holdOf(hs.index), hs.ideal, tol())
		}
		hs.index = -1
	}
	if st.State.Phase.Terminal() || st.State.Phase == policy.PhasePromoting || st.State.Phase == policy.PhaseRollingBack {
		hs.index = -1
		return
	}
	i := st.State.StepIndex
	switch {
	case st.State.Phase == policy.PhasePending:
		return
	case hs.index != i && pr.steps[i].Weight != nil && (st.State.Phase == policy.PhaseProgressing || st.State.Phase == policy.PhaseHolding):
		// A new weight step begins on this tick.
		*hs = holdTrack{index: i, start: now, version: st.State.RouteVersion}
		if st.State.HoldCounted != 0 {
			pr.t.Errorf("at %s: step %d starts with %s counted", now.Sub(epoch), i, st.State.HoldCounted)
		}
		return
	case hs.index != i:
		return
	}
	if st.State.RouteVersion != hs.version {
		pr.t.Errorf("at %s: step %d's route version moved from %s to %s without a new weight", now.Sub(epoch), i, hs.version, st.State.RouteVersion)
	}
	diff := st.State.HoldCounted - hs.ideal
	if diff < 0 {
		diff = -diff
	}
	pr.stats.maxHoldErr = max(pr.stats.maxHoldErr, diff)
	if diff > tol() {
		pr.t.Errorf("at %s: step %d counted %s of its hold, the timeline says %s (tolerance %s over %d changes)",
			now.Sub(epoch), i, st.State.HoldCounted, hs.ideal, tol(), hs.flips)
	}
}

// checkRollback checks that a rollback happens when, and only when, the
// signal fired rollbackAfter without a break.
func (pr *propRun) checkRollback(now time.Time, before, st policy.Status) {
	after := pr.sc.rollbackAfter
	if st.State.Phase == policy.PhaseRollingBack && before.State.Phase != policy.PhaseRollingBack {
		if after == 0 {
			pr.t.Errorf("at %s: rolled back with rollbackAfter disabled", now.Sub(epoch))
			return
		}
		// Firing now, in a streak that began at least rollbackAfter ago,
		// with no clear spell of stableFor in it?
		if pr.sigObs != policy.SignalFiring {
			pr.t.Errorf("at %s: rolled back while the signal is %s", now.Sub(epoch), pr.sigObs)
		}
		if pr.firingObs.IsZero() || now.Sub(pr.firingObs) < after {
			pr.t.Errorf("at %s: rolled back, but the firing streak began at %v, less than rollbackAfter (%s) ago", now.Sub(epoch), pr.firingObs.Sub(epoch), after)
		}
		if end, ok := pr.clearSpell(pr.firingObs, now); ok {
			pr.t.Errorf("at %s: rolled back, but the signal was clear for stableFor %s until %s, within the streak", now.Sub(epoch), pr.sc.stableFor, end.Sub(epoch))
		}
		return
	}
	if after > 0 && pr.sigObs == policy.SignalFiring && !pr.firingObs.IsZero() && now.Sub(pr.firingObs) >= after &&
		(st.State.Phase == policy.PhaseProgressing || st.State.Phase == policy.PhaseHolding) {
		pr.t.Errorf("at %s: %s after the signal fired %s without a break (rollbackAfter %s)", now.Sub(epoch), st.State.Phase, now.Sub(pr.firingObs), after)
	}
}

// clearSpell reports whether the scripted timeline holds a clear spell of
// at least stableFor that ends within (from, to], and when it ends.
func (pr *propRun) clearSpell(from, to time.Time) (time.Time, bool) {
	tl := pr.sc.timeline
	for i, c := range tl {
		if c.State != policy.SignalClear {
			continue
		}
		end := pr.sc.horizon.Add(time.Hour)
		if i+1 < len(tl) {
			end = tl[i+1].At
		}
		// Ticks sample the timeline: allow one tick of slack at each end.
		slack := 2 * pr.sc.maxTick
		if end.After(from) && !end.After(to) && end.Sub(c.At) >= pr.sc.stableFor+slack && c.At.After(from) {
			return end, true
		}
	}
	return time.Time{}, false
}

// finish checks the end of a run.
func (pr *propRun) finish() {
	st := pr.h.get(propName)
	last := pr.h.lastService(propName)
	switch st.State.Phase {
	case policy.PhaseSucceeded:
		if !isPrefixOfSchedule(pr.published, scheduleWeights(pr.steps)) || last.CanaryWeight != 100 || last.StablePublished {
			pr.t.Errorf("SUCCEEDED with weights %v of %v, last publish %+v", pr.published, scheduleWeights(pr.steps), last)
		}
		want := []int{0}
		for _, w := range scheduleWeights(pr.steps) {
			if want[len(want)-1] != w {
				want = append(want, w)
			}
		}
		if len(pr.published) != len(want) {
			pr.t.Errorf("SUCCEEDED having published %v, want every weight of %v", pr.published, want)
		}
	case policy.PhaseRolledBack, policy.PhaseAborted:
		if last.CanaryWeight != 0 {
			pr.t.Errorf("%s at weight %d", st.State.Phase, last.CanaryWeight)
		}
	default:
		pr.t.Errorf("finished as %s (%s)", st.State.Phase, st.State.Reason)
	}
}
