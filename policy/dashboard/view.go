package dashboard

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// PageData is everything a page shows; the browser renders it and replaces
// it with each streamed copy.
type PageData struct {
	Now      int64      `json:"now"` // unix ms
	Rollouts []Summary  `json:"rollouts"`
	Rollout  *Detail    `json:"rollout,omitempty"`
	Missing  string     `json:"missing,omitempty"` // a rollout page whose rollout does not exist
	Auth     AuthView   `json:"auth"`
	Nodes    int        `json:"nodes"`
	Fleet    []NodeView `json:"fleet,omitempty"`
	// Snapshots are the recent xDS snapshots, newest first (list page only).
	Snapshots []Snapshot `json:"snapshots,omitempty"`
}

// Summary is one row of the rollout list.
type Summary struct {
	Name         string   `json:"name"`
	Phase        string   `json:"phase"`
	Weight       int      `json:"weight"`
	Step         int      `json:"step"` // counted from 1, as the CLI ("step 2/4")
	StepCount    int      `json:"stepCount"`
	Signal       string   `json:"signal"`
	SignalReason string   `json:"signalReason"`
	SignalSince  int64    `json:"signalSince,omitempty"`
	Reason       string   `json:"reason"`
	Converged    bool     `json:"converged"`
	FleetNodes   int      `json:"fleetNodes"`
	Nacks        []string `json:"nacks,omitempty"`
	Updated      int64    `json:"updated"`
	Stable       string   `json:"stable"`
	Canary       string   `json:"canary"`
	HookError    string   `json:"hookError,omitempty"`
	// Observed is the split the fleet reported in the current step, in
	// words ("9.8% of 1600 requests", "settling", "no traffic yet", "no
	// stats yet"); "" for a finished rollout or without stats.
	Observed string `json:"observed,omitempty"`
}

// Detail is one rollout's page.
type Detail struct {
	Summary
	Steps           []StepView  `json:"steps"`
	HoldCountedMs   int64       `json:"holdCountedMs"`
	HoldRemainingMs int64       `json:"holdRemainingMs"`
	Actions         []string    `json:"actions"` // what the engine would accept now
	Series          []Sample    `json:"series"`
	Events          []EventView `json:"events"`
	Source          string      `json:"source"`
	// ObservedSteps is the split the fleet reported per step, oldest first.
	ObservedSteps []ObservedStepView `json:"observedSteps"`
}

// ObservedStepView is what the fleet served in one step.
type ObservedStepView struct {
	Step       int      `json:"step"` // from 1
	Weight     int      `json:"weight"`
	Phase      string   `json:"phase"`
	Share      *float64 `json:"share"` // percent; nil when no request was counted
	Stable     float64  `json:"stable"`
	Canary     float64  `json:"canary"`
	Transition float64  `json:"transition"`         // before the fleet ACKed the step
	Mirrored   float64  `json:"mirrored,omitempty"` // a mirror step's copies to the canary: not in Canary
	Nodes      int      `json:"nodes"`
	Current    bool     `json:"current,omitempty"`
	Text       string   `json:"text"`
}

// StepView is one step of the schedule.
type StepView struct {
	N      int    `json:"n"` // from 1
	Weight *int   `json:"weight,omitempty"`
	HoldMs int64  `json:"holdMs"`
	Pause  bool   `json:"pause,omitempty"`
	State  string `json:"state"` // done, current, todo
}

// EventView is one event of the history, with its kind for the timeline.
type EventView struct {
	Time   int64  `json:"t"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason"`
	Weight int    `json:"weight"`
	Step   int    `json:"step"`
	Output string `json:"output,omitempty"`
	Kind   string `json:"kind"` // phase, step, hold, nack, rollback, hook, success, info
	// Observed says what the step this event ended served.
	Observed string `json:"observed,omitempty"`
}

// NodeView is one connected Envoy.
type NodeView struct {
	ID        string     `json:"id"`
	Cluster   string     `json:"cluster"`
	Protocol  string     `json:"protocol"`
	Since     int64      `json:"since"`
	LastStats int64      `json:"lastStats,omitempty"`
	Converged bool       `json:"converged"`
	Types     []TypeView `json:"types"`
	// Replica is the shiftplane replica the node is connected to (HA only).
	Replica string `json:"replica,omitempty"`
}

// TypeView is a node's state of one resource type.
type TypeView struct {
	Type      string `json:"type"` // short: Cluster, Listener, …
	Acked     string `json:"acked"`
	Nacked    string `json:"nacked,omitempty"`
	NackError string `json:"nackError,omitempty"`
	NackTime  int64  `json:"nackTime,omitempty"`
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func summarize(s policy.Status) Summary {
	sum := Summary{
		Name: s.Plan.Name, Phase: string(s.State.Phase), Weight: s.State.Weight,
		Step: s.State.StepIndex + 1, StepCount: s.StepCount,
		Signal: string(s.Signal.State), SignalReason: s.Signal.Reason, SignalSince: ms(s.Signal.Since),
		Reason: s.State.Reason, Converged: s.Fleet.Converged, FleetNodes: s.Fleet.Nodes, Nacks: s.Fleet.Nacks,
		Updated: ms(s.State.Updated), Stable: s.Plan.Stable.Cluster, Canary: s.Plan.Canary.Cluster, HookError: s.State.HookError,
	}
	if s.StepCount == 0 {
		sum.Step = 0
	}
	if cur, ok := s.Observed.Current(); ok {
		sum.Observed = observedText(cur)
	}
	return sum
}

// observedText says what a step served: no data is never 0%.
func observedText(st policy.StepTraffic) string {
	mirrored := ""
	if st.Mirror > 0 {
		mirrored = fmt.Sprintf("; %.0f mirrored copies to the canary (not user traffic)", st.Mirrored+st.TransitionMirrored)
	}
	if share, ok := st.Share(); ok {
		return fmt.Sprintf("%.1f%% of %.0f requests", 100*share, st.Total()) + mirrored
	}
	switch {
	case st.Mirror > 0 && st.Matched && st.Stable+st.Mirrored > 0:
		return fmt.Sprintf("mirror step, no share: v1 %.0f; v2 %.0f mirrored copies and canary.match requests (Envoy counts them as one)", st.Stable, st.Mirrored+st.TransitionMirrored)
	}
	switch {
	case st.Nodes == 0:
		return "no stats yet"
	case st.Transition() > 0:
		return "settling"
	}
	return "no traffic yet"
}

// actions are the operations the engine would accept in phase p (mirrors
// the checks of policy.Engine's Pause, Resume, Promote and Abort).
func actions(s policy.Status) []string {
	out := []string{}
	switch p := s.State.Phase; {
	case p == policy.PhasePaused:
		out = append(out, "resume")
		if s.State.PausedFrom != policy.PhasePending {
			out = append(out, "promote")
		}
		out = append(out, "abort")
	case p == policy.PhaseProgressing || p == policy.PhaseHolding:
		out = append(out, "pause", "promote", "abort")
	case p == policy.PhasePending:
		out = append(out, "pause", "abort")
	case p == policy.PhasePromoting && s.State.StablePublished:
		out = append(out, "abort")
	}
	return out
}

func (d *Dashboard) pageData(name string, who identity) (*PageData, error) {
	pd := &PageData{Now: time.Now().UnixMilli(), Auth: d.authView(who)}
	for _, s := range d.o.Engine.List() {
		pd.Rollouts = append(pd.Rollouts, summarize(s))
	}
	if pd.Rollouts == nil {
		pd.Rollouts = []Summary{}
	}
	pd.Fleet = d.fleet()
	pd.Nodes = len(pd.Fleet)
	if name == "" {
		pd.Fleet = nil // the list shows the count only
		if d.o.Snapshots != nil {
			snaps := d.o.Snapshots()
			for i := len(snaps) - 1; i >= 0 && len(pd.Snapshots) < 10; i-- {
				sn := snaps[i]
				ch := make([]string, len(sn.Changed))
				for j, c := range sn.Changed {
					ch[j] = shortType(c)
				}
				sn.Changed = ch
				pd.Snapshots = append(pd.Snapshots, sn)
			}
		}
		return pd, nil
	}
	s, err := d.o.Engine.Get(name)
	if err != nil {
		pd.Missing = name
		return pd, err
	}
	det := &Detail{Summary: summarize(s), Source: s.Source, Actions: actions(s),
		HoldCountedMs: s.State.HoldCounted.Milliseconds(), HoldRemainingMs: s.HoldRemaining.Milliseconds()}
	steps := s.Plan.WithDefaults().Schedule()
	for i, st := range steps {
		v := StepView{N: i + 1, Weight: st.Weight, HoldMs: st.Hold.D().Milliseconds(), Pause: st.Pause != nil}
		switch {
		case s.State.Phase == policy.PhaseSucceeded || i < s.State.StepIndex:
			v.State = "done"
		case i == s.State.StepIndex && s.State.Phase != policy.PhasePending && !s.State.Phase.Terminal():
			v.State = "current"
		default:
			v.State = "todo"
		}
		det.Steps = append(det.Steps, v)
	}
	det.Series = d.series.get(name)
	evs, err := d.o.Engine.History(name, d.o.HistoryLimit)
	if err != nil {
		return pd, err
	}
	det.Events = make([]EventView, 0, len(evs))
	for _, ev := range evs {
		det.Events = append(det.Events, EventView{Time: ms(ev.Time), From: string(ev.From), To: string(ev.To), Reason: ev.Reason,
			Weight: ev.Weight, Step: ev.StepIndex + 1, Output: ev.Output, Kind: eventKind(ev), Observed: eventObserved(ev)})
	}
	det.ObservedSteps = []ObservedStepView{}
	for i, st := range s.Observed.Steps {
		v := ObservedStepView{Step: st.StepIndex + 1, Weight: st.Weight, Phase: string(st.Phase), Stable: st.Stable, Canary: st.Canary,
			Transition: st.Transition(), Mirrored: st.Mirrored + st.TransitionMirrored, Nodes: st.Nodes, Current: s.Observed.Running && i == len(s.Observed.Steps)-1, Text: observedText(st)}
		if share, ok := st.Share(); ok {
			pct := 100 * share
			v.Share = &pct
		}
		det.ObservedSteps = append(det.ObservedSteps, v)
	}
	pd.Rollout = det
	return pd, nil
}

// eventObserved is "step 2 at 20% served 19.6% of 2441 requests (v1 1962,
// v2 479)" for an event that ended a step.
func eventObserved(ev policy.Event) string {
	o := ev.Observed
	if o == nil {
		return ""
	}
	txt := fmt.Sprintf("step %d at %d%% served %s", o.StepIndex+1, o.Weight, observedText(*o))
	if _, ok := o.Share(); ok {
		txt += fmt.Sprintf(" (v1 %.0f, v2 %.0f)", o.Stable, o.Canary)
	}
	return txt
}

// eventKind picks the one marker an event gets on the timeline.
func eventKind(ev policy.Event) string {
	switch {
	case strings.Contains(ev.Reason, "hook failed"):
		return "hook"
	case strings.Contains(ev.Reason, "fleet rejected"):
		return "nack"
	case ev.From != ev.To && (ev.To == policy.PhaseRollingBack || ev.To == policy.PhaseRolledBack || ev.To == policy.PhaseAborted || ev.To == policy.PhaseFailed):
		return "rollback"
	case ev.From != ev.To && ev.To == policy.PhaseSucceeded:
		return "success"
	case ev.From != ev.To && ev.To == policy.PhaseHolding:
		return "hold"
	case strings.Contains(ev.Reason, "hook"):
		return "hook"
	case strings.HasPrefix(ev.Reason, "step "):
		return "step"
	case ev.From != ev.To:
		return "phase"
	}
	return "info"
}

func (d *Dashboard) fleet() []NodeView {
	if d.o.Fleet == nil {
		return []NodeView{}
	}
	out := []NodeView{}
	for _, n := range d.o.Fleet.Nodes() {
		v := NodeView{ID: n.ID, Cluster: n.Cluster, Protocol: n.Protocol, Since: ms(n.ConnectedSince), LastStats: ms(n.LastStatsReport), Converged: n.Converged, Replica: n.Replica}
		for _, t := range n.Types {
			v.Types = append(v.Types, TypeView{Type: shortType(t.TypeURL), Acked: t.Acked, Nacked: t.Nacked, NackError: t.NackError, NackTime: ms(t.NackTime)})
		}
		sort.Slice(v.Types, func(i, j int) bool { return typeOrder(v.Types[i].Type) < typeOrder(v.Types[j].Type) })
		out = append(out, v)
	}
	return out
}

// shortType names a type URL by its xDS service: CDS, EDS, LDS, RDS.
func shortType(u string) string {
	if i := strings.LastIndex(u, "."); i >= 0 {
		u = u[i+1:]
	}
	switch u {
	case "Cluster":
		return "CDS"
	case "ClusterLoadAssignment":
		return "EDS"
	case "Listener":
		return "LDS"
	case "RouteConfiguration":
		return "RDS"
	}
	return u
}

func typeOrder(t string) int {
	for i, x := range []string{"LDS", "RDS", "CDS", "EDS"} {
		if x == t {
			return i
		}
	}
	return 9
}
