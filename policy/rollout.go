package policy

import (
	"fmt"
	"time"
)

// Phase is where a rollout is in its life.
type Phase string

// The phases of DESIGN.md.
const (
	PhasePending     Phase = "PENDING"
	PhaseProgressing Phase = "PROGRESSING"
	PhaseHolding     Phase = "HOLDING"
	PhasePaused      Phase = "PAUSED"
	PhasePromoting   Phase = "PROMOTING"
	PhaseSucceeded   Phase = "SUCCEEDED"
	PhaseRollingBack Phase = "ROLLING_BACK"
	PhaseRolledBack  Phase = "ROLLED_BACK"
	PhaseAborted     Phase = "ABORTED"
	PhaseFailed      Phase = "FAILED"
)

// Phases lists every phase, in life order.
var Phases = []Phase{PhasePending, PhaseProgressing, PhaseHolding, PhasePaused, PhasePromoting,
	PhaseSucceeded, PhaseRollingBack, PhaseRolledBack, PhaseAborted, PhaseFailed}

// Terminal reports whether a rollout in phase p is finished.
func (p Phase) Terminal() bool {
	switch p {
	case PhaseSucceeded, PhaseRolledBack, PhaseAborted, PhaseFailed:
		return true
	}
	return false
}

// Rollout is one plan being carried out: what the store keeps and a restart
// resumes from.
type Rollout struct {
	Plan   Plan   `json:"plan"`
	Source string `json:"source"` // "file:<path>" or "api"
	// AppliedAt is when the plan was last applied, from a file or the API.
	AppliedAt time.Time `json:"appliedAt"`
	State     State     `json:"state"`
}

// State is a rollout's position. Durations are counted, not wall-clock
// deadlines, so a restart resumes the remaining hold exactly.
type State struct {
	Phase     Phase `json:"phase"`
	StepIndex int   `json:"stepIndex"`
	// Weight is the canary weight last published to the fleet.
	Weight          int    `json:"weight"`
	CanaryPublished bool   `json:"canaryPublished"`
	StablePublished bool   `json:"stablePublished"`
	Reason          string `json:"reason"`
	// HoldCounted is how much of the current step's hold has passed with the
	// signal clear.
	HoldCounted time.Duration `json:"holdCounted"`
	// RouteVersion is the route version that carries Weight; the step's hold
	// starts once the fleet has ACKed it.
	// ClusterVersion and ListenerVersion are the versions of the other
	// resources the state needs; the process that publishes stamps them, so
	// a restart stamps them anew.
	RouteVersion    string    `json:"routeVersion,omitempty"`
	ClusterVersion  string    `json:"clusterVersion,omitempty"`
	ListenerVersion string    `json:"listenerVersion,omitempty"`
	Created         time.Time `json:"created"`
	Updated         time.Time `json:"updated"`
	// StepRequests is how many canary requests the fleet reported during
	// the current step (evidence of traffic, against analysis.minRequests).
	StepRequests float64 `json:"stepRequests,omitempty"`
	// PausedFrom is the phase a pause request interrupted; empty at a pause step.
	PausedFrom Phase `json:"pausedFrom,omitempty"`
	// LastOp is the last operation applied, when, and at which step: a
	// repeat moments later does not act on a step it never saw.
	LastOp     string    `json:"lastOp,omitempty"`
	LastOpAt   time.Time `json:"lastOpAt,omitempty"`
	LastOpStep int       `json:"lastOpStep,omitempty"`
	// BeforeShiftDone records that the beforeShift hooks succeeded.
	BeforeShiftDone bool `json:"beforeShiftDone,omitempty"`
	// Aborted marks a rollback an operator asked for: it ends ABORTED.
	Aborted bool `json:"aborted,omitempty"`
	// HookError is the last hook failure, surfaced in the status.
	HookError string `json:"hookError,omitempty"`
}

func (s *State) clearVersions() { s.RouteVersion, s.ClusterVersion, s.ListenerVersion = "", "", "" }

func (s *State) versionsStamped() bool {
	return s.RouteVersion != "" && s.ClusterVersion != "" && s.ListenerVersion != ""
}

// Event is one recorded transition or notable fact of a rollout.
type Event struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Rollout   string    `json:"rollout"`
	From      Phase     `json:"from"`
	To        Phase     `json:"to"`
	Reason    string    `json:"reason"`
	Weight    int       `json:"weight"`
	StepIndex int       `json:"stepIndex"`
	Output    string    `json:"output,omitempty"`
	// Observed is what the fleet reported the step this event ends served
	// (observed.go); nil when the event ends no step, or the engine has no
	// stats source.
	Observed *StepTraffic `json:"observed,omitempty"`
}

func (e Event) String() string {
	s := fmt.Sprintf("%s %s → %s at weight %d (step %d): %s", e.Time.Format(time.RFC3339), e.From, e.To, e.Weight, e.StepIndex+1, e.Reason)
	if e.Output != "" {
		s += "\n" + e.Output
	}
	return s
}

// Store keeps rollouts, their events and the snapshot version counter, so a
// restart resumes where it was. Implementations must be safe for concurrent
// use and make each Save atomic (state and events together, or nothing).
// bbolt is the default (package policy/boltstore); a distributed store can
// replace it for several replicas.
type Store interface {
	// Load returns every stored rollout, sorted by name.
	Load() ([]Rollout, error)
	// Save stores r's plan and state and appends events, atomically. Events
	// get their Seq assigned by the store.
	Save(r Rollout, events ...Event) error
	// Delete removes a rollout and its events.
	Delete(name string) error
	// Events returns a rollout's events, oldest first; limit > 0 keeps the newest limit.
	Events(name string, limit int) ([]Event, error)
	// NextVersion returns the next snapshot version, persisted before it returns.
	NextVersion() (uint64, error)
	Close() error
}
