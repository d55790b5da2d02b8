package api

import (
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// The observed split in the API: a step without requests has no share
// (unset, not 0), the current step is set only while the rollout runs, and
// the event that ended a step carries its split.
func TestObservedToProto(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	done := policy.StepTraffic{StepIndex: 0, Weight: 10, Phase: policy.PhaseProgressing, Stable: 900, Canary: 100, TransitionStable: 20, TransitionCanary: 5,
		Nodes: 1, From: at, To: at.Add(5 * time.Second), SettledAt: at, PerNode: []policy.NodeTraffic{{Node: "envoy-1", Stable: 900, Canary: 100, From: at, To: at.Add(5 * time.Second)}}}
	quiet := policy.StepTraffic{StepIndex: 1, Weight: 40, Phase: policy.PhaseProgressing, Nodes: 1}
	st := policy.Status{Rollout: policy.Rollout{Plan: policy.Plan{Name: "web"}, State: policy.State{Phase: policy.PhaseProgressing, StepIndex: 1, Weight: 40}},
		Observed: policy.Observed{Running: true, Steps: []policy.StepTraffic{done, quiet}, Stable: 920, Canary: 105}}

	r := StatusToProto(st)
	if len(r.GetObservedSteps()) != 2 || r.GetObservedStableRequests() != 920 || r.GetObservedCanaryRequests() != 105 {
		t.Fatalf("observed steps %v, totals %d/%d", r.GetObservedSteps(), r.GetObservedStableRequests(), r.GetObservedCanaryRequests())
	}
	first := r.GetObservedSteps()[0]
	if first.CanaryShare == nil || first.GetCanaryShare() != 10 || first.GetStableRequests() != 900 || first.GetTransitionStableRequests() != 20 ||
		first.GetTransitionCanaryRequests() != 5 || len(first.GetNodeTraffic()) != 1 || !first.GetSettledAt().AsTime().Equal(at) ||
		!first.GetNodeTraffic()[0].GetTo().AsTime().Equal(at.Add(5*time.Second)) {
		t.Errorf("first step: %v", first)
	}
	if cur := r.GetObserved(); cur == nil || cur.GetWeight() != 40 || cur.CanaryShare != nil || cur.GetNodes() != 1 {
		t.Errorf("current step: %v, want weight 40 with no share", cur)
	}

	st.State.Phase, st.Observed.Running = policy.PhaseSucceeded, false
	if cur := StatusToProto(st).GetObserved(); cur != nil {
		t.Errorf("a finished rollout has a current step: %v", cur)
	}

	ev := EventToProto(policy.Event{Rollout: "web", To: policy.PhaseProgressing, Weight: 40, StepIndex: 1, Observed: &done})
	if o := ev.GetObserved(); o == nil || o.GetWeight() != 10 || o.GetCanaryShare() != 10 {
		t.Errorf("event's step: %v", o)
	}
	if o := EventToProto(policy.Event{Rollout: "web"}).GetObserved(); o != nil {
		t.Errorf("an event that ended no step: %v", o)
	}
}

// A mirror step's copies reach the API apart from the canary's requests.
func TestObservedMirrorToProto(t *testing.T) {
	pb := StepTrafficToProto(policy.StepTraffic{Mirror: 50, Stable: 200, Mirrored: 90, TransitionMirrored: 10, Nodes: 1})
	if pb.GetMirror() != 50 || pb.GetMirroredRequests() != 100 || pb.GetCanaryRequests() != 0 || pb.CanaryShare == nil || pb.GetCanaryShare() != 0 {
		t.Errorf("mirror step: %v, want mirror 50, 100 mirrored, 0 canary at share 0", pb)
	}
	pb = StepTrafficToProto(policy.StepTraffic{Mirror: 50, Matched: true, Stable: 200, Mirrored: 100, Nodes: 1})
	if pb.CanaryShare != nil {
		t.Errorf("mirror step with canary.match: share %v, want unset", pb.GetCanaryShare())
	}
}
