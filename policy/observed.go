package policy

import (
	"sort"
	"time"

	"github.com/shiftplane/shiftplane/xds/model"
)

// This file is the observed split: how many requests each version really
// served during each step, counted from the stats the fleet reports
// (model.StatsSource, the same path the signal gate reads), so the data
// plane proves the shift the engine configured. It is keyed by cluster
// and fed by plain NodeReports: any source that reports cumulative
// cluster.<name>.upstream_rq_completed counters (the MetricsService sink,
// the admin scraper, a load-report source) is counted the same way.
//
// Counting rules, per node:
//   - a node's first report is its baseline: what it counted before is not
//     known to belong to this rollout, so it is not counted;
//   - later reports add the rise of each cluster's completed requests since
//     the report counted before, to the step that is current when the engine
//     reads them (reports are read on every tick and before every operation,
//     so a report is counted in the step whose weight Envoy served it with,
//     give or take one flush that straddles the change);
//   - a counter that went down means the node restarted: its counters began
//     again at 0, so the new values are counted whole;
//   - a cluster missing from a report counted nothing (Envoy sends only
//     used stats; a withdrawn cluster's stats are dropped);
//   - a node that stops reporting adds nothing; when it comes back its
//     counters continue from what was counted last;
//   - a report interval that began before the fleet had ACKed the step's
//     configuration (every connected node, as the engine's convergence
//     says) was served partly at the previous weight: its requests are
//     counted as the step's transition, not in its share.
//
// No data is not a 0% share: a step with no request counted has no share
// (StepTraffic.Share reports false) and is shown as "no traffic yet".

// MaxObservedSteps bounds the steps a rollout keeps observed counts for;
// the oldest go first.
const MaxObservedSteps = 64

// MaxObservedNodes bounds the per-node detail kept for one step; the
// step's totals always cover every node.
const MaxObservedNodes = 32

// nodeForget is how long a node that stopped reporting is remembered, so
// that a stream that comes back continues its counts.
const nodeForget = 10 * time.Minute

// StepTraffic is what the fleet reported one step served.
type StepTraffic struct {
	StepIndex int   `json:"stepIndex"`
	Weight    int   `json:"weight"` // the canary weight configured during the step
	Phase     Phase `json:"phase"`  // the phase the step began in
	// Stable and Canary are the requests each version completed, summed
	// over the nodes, in report intervals that began after the fleet had
	// ACKed the step (SettledAt): the share is theirs.
	Stable float64 `json:"stable"`
	Canary float64 `json:"canary"`
	// TransitionStable and TransitionCanary are the requests of intervals
	// that began before: served partly at the previous weight.
	TransitionStable float64 `json:"transitionStable,omitempty"`
	TransitionCanary float64 `json:"transitionCanary,omitempty"`
	// Mirror is the step's mirror percentage (0: none). During a mirror
	// step every user is answered by the stable; what the canary cluster
	// completes are the mirrored copies Envoy sends it (and the requests
	// canary.match routes send it, which its counters do not tell apart),
	// so they are Mirrored and TransitionMirrored, never Canary. Matched
	// says canary.match routes ran too: then the users the canary answered
	// are not known and the step has no share.
	Mirror             int     `json:"mirror,omitempty"`
	Matched            bool    `json:"matched,omitempty"`
	Mirrored           float64 `json:"mirrored,omitempty"`
	TransitionMirrored float64 `json:"transitionMirrored,omitempty"`
	// SettledAt is when the engine saw the fleet ACK the step's
	// configuration; zero until then.
	SettledAt time.Time `json:"settledAt,omitzero"`
	// Nodes is how many nodes sent a report that was counted in the step.
	Nodes int `json:"nodes"`
	// From and To span the settled reports: From is the earliest baseline a
	// node's settled counts rose from, To the newest report counted.
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
	// PerNode is the split per node, sorted by node (at most
	// MaxObservedNodes); events leave it out.
	PerNode []NodeTraffic `json:"perNode,omitempty"`
}

// NodeTraffic is one node's part of a step: the settled requests it
// counted over the reports (From, To].
type NodeTraffic struct {
	Node   string    `json:"node"`
	Stable float64   `json:"stable"`
	Canary float64   `json:"canary"`
	From   time.Time `json:"from,omitzero"`
	To     time.Time `json:"to,omitzero"`
}

// Total is the settled requests both versions served.
func (s StepTraffic) Total() float64 { return s.Stable + s.Canary }

// Transition is the requests counted before the step settled.
func (s StepTraffic) Transition() float64 { return s.TransitionStable + s.TransitionCanary }

// Share is the canary's fraction (0..1) of the step's settled requests,
// and false when none was counted: no data is not 0%.
func (s StepTraffic) Share() (float64, bool) {
	if s.Mirror > 0 && s.Matched {
		return 0, false // matched users and mirrored copies are one count
	}
	if t := s.Total(); t > 0 {
		return s.Canary / t, true
	}
	return 0, false
}

// Observed is a rollout's observed split since this process started.
type Observed struct {
	// Steps are oldest first; while the rollout runs, the last is the
	// current step.
	Steps []StepTraffic
	// Running says the last of Steps is still being counted.
	Running bool
	// Stable and Canary are the requests counted over all of Steps,
	// including those dropped by MaxObservedSteps.
	Stable, Canary float64
}

// Current returns the step being counted now, if any.
func (o Observed) Current() (StepTraffic, bool) {
	if !o.Running || len(o.Steps) == 0 {
		return StepTraffic{}, false
	}
	return o.Steps[len(o.Steps)-1], true
}

// trafficKey says which step a count belongs to: a new one starts when the
// rollout starts over, moves to another step, its weight changes (a
// rollback, a promotion) or its traffic policy does (a mirror or matchOnly
// step at weight 0 begins where PENDING, also at weight 0, ends).
type trafficKey struct {
	created time.Time
	step    int
	weight  int
	traffic string
}

func keyOf(st State, tr Traffic) trafficKey {
	return trafficKey{created: st.Created, step: st.StepIndex, weight: st.Weight, traffic: tr.key()}
}

// nodeSeen is the report of a node counted last.
type nodeSeen struct {
	at     time.Time
	latest map[string]float64 // the source's map; never modified
}

// observer counts one rollout's observed split. It is not safe for
// concurrent use: the engine calls it under its lock.
type observer struct {
	stable, canary string // cluster names
	mirror         int    // the current step's mirror percentage
	running        bool
	key            trafficKey
	steps          []StepTraffic
	settled        time.Time               // the current step's SettledAt
	perNode        map[string]*NodeTraffic // the current step's
	nodes          map[string]nodeSeen
	total          struct{ stable, canary float64 }
}

// follow starts a new step when st (running traffic policy tr) has moved
// to one, and stops counting once st is terminal.
func (o *observer) follow(st State, tr Traffic, stable, canary string) {
	o.stable, o.canary = stable, canary
	if st.Phase.Terminal() {
		o.closeStep()
		o.running = false
		o.nodes = nil // counting resumes (after a retry) from fresh baselines
		return
	}
	if o.running && o.key == keyOf(st, tr) {
		return
	}
	o.closeStep()
	o.running = true
	o.key = keyOf(st, tr)
	o.mirror = tr.Mirror
	o.settled = time.Time{}
	o.perNode = map[string]*NodeTraffic{}
	o.steps = append(o.steps, StepTraffic{StepIndex: st.StepIndex, Weight: st.Weight, Phase: st.Phase, Mirror: tr.Mirror, Matched: len(tr.Match) > 0})
	if len(o.steps) > MaxObservedSteps {
		o.steps = append([]StepTraffic(nil), o.steps[len(o.steps)-MaxObservedSteps:]...)
	}
}

// closeStep keeps the current step's per-node detail in it.
func (o *observer) closeStep() {
	if !o.running || len(o.steps) == 0 {
		return
	}
	o.steps[len(o.steps)-1].PerNode = o.perNodeList()
}

func (o *observer) perNodeList() []NodeTraffic {
	if len(o.perNode) == 0 {
		return nil
	}
	out := make([]NodeTraffic, 0, len(o.perNode))
	for _, n := range o.perNode {
		out = append(out, *n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	if len(out) > MaxObservedNodes {
		out = out[:MaxObservedNodes]
	}
	return out
}

// settle records that the fleet ACKed the current step's configuration
// at now; reports whose interval begins after it count in the share.
func (o *observer) settle(now time.Time) {
	if o.running && o.settled.IsZero() {
		o.settled = now
		o.steps[len(o.steps)-1].SettledAt = now
	}
}

// consume counts the reports not counted before into the current step.
func (o *observer) consume(reports []model.NodeReport, now time.Time) {
	if !o.running {
		return
	}
	if o.nodes == nil {
		o.nodes = map[string]nodeSeen{}
	}
	cur := &o.steps[len(o.steps)-1]
	listed := map[string]bool{}
	for _, r := range reports {
		listed[r.Node] = true
		last, known := o.nodes[r.Node]
		if known && !r.At.After(last.at) {
			continue // counted already
		}
		o.nodes[r.Node] = nodeSeen{at: r.At, latest: r.Latest}
		if !known {
			continue // the baseline
		}
		restarted := model.CountersWentDown(last.latest, r.Latest, nil)
		ds := rise(last.latest, r.Latest, o.stable, restarted)
		dc := rise(last.latest, r.Latest, o.canary, restarted)
		if ds < 0 || dc < 0 {
			// A counter went down that CountersWentDown does not see (a
			// source that sends only these): a restart all the same.
			ds, dc = rise(nil, r.Latest, o.stable, true), rise(nil, r.Latest, o.canary, true)
		}
		var dm float64 // mirrored copies: not user traffic
		if o.mirror > 0 {
			dm, dc = dc, 0
		}
		o.total.stable += ds
		o.total.canary += dc
		n := o.perNode[r.Node]
		if n == nil {
			n = &NodeTraffic{Node: r.Node}
			o.perNode[r.Node] = n
			cur.Nodes++
		}
		if o.settled.IsZero() || last.at.Before(o.settled) {
			cur.TransitionStable += ds
			cur.TransitionCanary += dc
			cur.TransitionMirrored += dm
			continue
		}
		if n.From.IsZero() {
			n.From = last.at
			if cur.From.IsZero() || last.at.Before(cur.From) {
				cur.From = last.at
			}
		}
		n.Stable += ds
		n.Canary += dc
		n.To = r.At
		if r.At.After(cur.To) {
			cur.To = r.At
		}
		cur.Stable += ds
		cur.Canary += dc
		cur.Mirrored += dm
	}
	for node, seen := range o.nodes {
		if !listed[node] && now.Sub(seen.at) > nodeForget {
			delete(o.nodes, node)
		}
	}
}

// rise is how many requests cluster completed between two reports of one
// node: the whole count after a restart, nothing when the cluster is
// missing from latest.
func rise(prev, latest map[string]float64, cluster string, restarted bool) float64 {
	l, ok := model.CompletedRequests(latest, cluster)
	if !ok {
		return 0
	}
	if restarted {
		return l
	}
	p, _ := model.CompletedRequests(prev, cluster)
	return l - p
}

// pending reports whether st is a different step than the one counted,
// with that step's counts so far: the engine records them on the event
// that ends the step.
func (o *observer) pending(st State, tr Traffic) (StepTraffic, bool) {
	if !o.running || len(o.steps) == 0 || (!st.Phase.Terminal() && o.key == keyOf(st, tr)) {
		return StepTraffic{}, false
	}
	s := o.steps[len(o.steps)-1]
	s.PerNode = nil
	return s, true
}

// view is the rollout's observed split for its status.
func (o *observer) view() Observed {
	out := Observed{Running: o.running, Stable: o.total.stable, Canary: o.total.canary}
	if len(o.steps) == 0 {
		return out
	}
	out.Steps = append([]StepTraffic(nil), o.steps...)
	if o.running {
		out.Steps[len(out.Steps)-1].PerNode = o.perNodeList()
	}
	return out
}

// observeLocked is the engine's hook: before a decision is applied it
// counts the reports that arrived since the last one into the step they
// were served in, and records that step's counts on the event that ends it.
func (e *Engine) observeLocked(r *entry, res *Result, now time.Time) {
	if e.o.Stats == nil {
		return
	}
	r.obs.follow(r.State, TrafficFor(r.plan, r.steps, r.State), r.plan.Stable.Cluster, r.plan.Canary.Cluster)
	if r.obs.running && r.obs.settled.IsZero() && e.convergence(r.State, e.tickConv).Converged {
		r.obs.settle(now)
	}
	r.obs.consume(e.statsLocked(now), now)
	if s, ok := r.obs.pending(res.State, TrafficFor(r.plan, r.steps, res.State)); ok && len(res.Events) > 0 {
		res.Events[len(res.Events)-1].Observed = &s
	}
}

// observedLocked moves the counting to the step r is in after a decision.
func (e *Engine) observedLocked(r *entry) {
	if e.o.Stats != nil {
		r.obs.follow(r.State, TrafficFor(r.plan, r.steps, r.State), r.plan.Stable.Cluster, r.plan.Canary.Cluster)
	}
}

// statsLocked reads the stats source once per engine clock reading: a tick
// over many rollouts reads it once.
func (e *Engine) statsLocked(now time.Time) []model.NodeReport {
	if !e.statsAt.Equal(now) || e.statsCache == nil {
		e.statsCache = e.o.Stats.Reports()
		if e.statsCache == nil {
			e.statsCache = []model.NodeReport{}
		}
		e.statsAt = now
	}
	return e.statsCache
}
