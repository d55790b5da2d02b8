package policy

import (
	"fmt"
	"strconv"

	"github.com/shiftplane/shiftplane/xds/model"
)

// The canary's traffic policy: canary.match, canary.sessionAffinity and
// mirror steps. They are on only while the rollout runs a step (PROGRESSING,
// HOLDING, PAUSED after its first step); PENDING, PROMOTING, ROLLING_BACK
// and the terminal phases have none, so matched routes and the cookie route
// disappear on rollback, abort and promotion, and the mirror stops.

// Traffic is the traffic policy a rollout's state asks the fleet to run.
type Traffic struct {
	Match    []model.Match
	Mirror   int
	Affinity *model.Affinity
}

func (t Traffic) key() string { return fmt.Sprintf("%v|%d|%v", t.Match, t.Mirror, t.Affinity) }

// canaryServes reports whether the policy sends the canary requests at
// weight 0 (matched or mirrored).
func (t Traffic) canaryServes() bool { return len(t.Match) > 0 || t.Mirror > 0 }

// TrafficFor is the traffic policy of a rollout in state st; plan has its
// defaults applied and steps is its schedule.
func TrafficFor(plan Plan, steps []Step, st State) Traffic {
	running := st.CanaryPublished && st.StablePublished
	switch st.Phase {
	case PhaseProgressing, PhaseHolding:
	case PhasePaused:
		running = running && st.PausedFrom != PhasePending
	default:
		running = false
	}
	if !running {
		return Traffic{}
	}
	var t Traffic
	for _, m := range plan.Canary.Match {
		t.Match = append(t.Match, modelMatch(m))
	}
	if st.StepIndex >= 0 && st.StepIndex < len(steps) && st.Weight == 0 {
		t.Mirror = steps[st.StepIndex].Mirror
	}
	if a := plan.Canary.SessionAffinity; a != nil {
		t.Affinity = &model.Affinity{Cookie: a.CookieName, Value: AffinityValue(plan, st), MaxAge: a.MaxAge.D()}
	}
	return t
}

// AffinityValue is the affinity cookie's value for one attempt of a
// rollout: the canary cluster and when the attempt started, so a cookie
// from a rolled-back attempt does not count in a retry.
func AffinityValue(plan Plan, st State) string {
	return plan.Canary.Cluster + "-" + strconv.FormatInt(st.Created.Unix(), 36)
}

// Apply sets the policy on a service's desired state.
func (t Traffic) Apply(s *ServiceState) {
	s.Match = append([]model.Match(nil), t.Match...)
	s.Mirror = t.Mirror
	if t.Affinity != nil {
		a := *t.Affinity
		s.Affinity = &a
	} else {
		s.Affinity = nil
	}
}

func modelMatch(m Match) model.Match {
	out := model.Match{Kind: model.MatchHeader, Name: m.Header}
	switch {
	case m.Cookie != "":
		out.Kind, out.Name = model.MatchCookie, m.Cookie
	case m.Query != "":
		out.Kind, out.Name = model.MatchQuery, m.Query
	}
	switch {
	case m.Exact != "":
		out.Op, out.Value = model.OpExact, m.Exact
	case m.Prefix != "":
		out.Op, out.Value = model.OpPrefix, m.Prefix
	case m.Regex != "":
		out.Op, out.Value = model.OpRegex, m.Regex
	case m.Absent:
		out.Op = model.OpAbsent
	default:
		out.Op = model.OpPresent
	}
	return out
}
