package shiftplanev1_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// TestRolloutJSONContract pins the protojson names DESIGN.md promises for
// `shiftctl get NAME -o json`: a renamed field breaks scripts outside the repo.
func TestRolloutJSONContract(t *testing.T) {
	r := &shiftplanev1.Rollout{
		Name:   "checkout",
		Phase:  shiftplanev1.Phase_PHASE_HOLDING,
		Signal: &shiftplanev1.Signal{State: shiftplanev1.SignalState_SIGNAL_STATE_FIRING, Reason: "2 of 2 canary hosts ejected"},
		Fleet:  &shiftplanev1.FleetStatus{},
	}
	out, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	sub := func(key string) map[string]any {
		t.Helper()
		v, ok := m[key].(map[string]any)
		if !ok {
			t.Fatalf("%s: missing or not an object in %s", key, out)
		}
		return v
	}
	for name, tc := range map[string]struct {
		obj  map[string]any
		key  string
		want any
	}{
		"name":            {m, "name", "checkout"},
		"phase":           {m, "phase", "PHASE_HOLDING"},
		"canaryWeight":    {m, "canaryWeight", float64(0)},
		"stepIndex":       {m, "stepIndex", float64(0)},
		"signal.state":    {sub("signal"), "state", "SIGNAL_STATE_FIRING"},
		"signal.reason":   {sub("signal"), "reason", "2 of 2 canary hosts ejected"},
		"fleet.nodes":     {sub("fleet"), "nodes", float64(0)},
		"fleet.converged": {sub("fleet"), "converged", false},
	} {
		t.Run(name, func(t *testing.T) {
			got, ok := tc.obj[tc.key]
			if !ok {
				t.Fatalf("%s missing from %s", name, out)
			}
			if got != tc.want {
				t.Errorf("%s = %v (%T), want %v (%T)", name, got, got, tc.want, tc.want)
			}
		})
	}
}

// TestPlanJSONNames checks that a plan's protojson names are the YAML keys of
// DESIGN.md, so a plan document converted to JSON reads as a Plan message
// (with durations in protojson form, "60s" rather than "1m").
func TestPlanJSONNames(t *testing.T) {
	const doc = `{
	  "name": "checkout",
	  "listener": {"address": "0.0.0.0:10000", "domains": ["*"], "pathPrefix": "/"},
	  "stable": {"cluster": "checkout-v1", "endpoints": ["127.0.0.1:8081"]},
	  "canary": {"cluster": "checkout-v2", "endpoints": ["127.0.0.1:8082"]},
	  "outlierDetection": {"consecutive5xx": 3, "interval": "1s", "baseEjectionTime": "10s", "maxEjectionPercent": 100},
	  "steps": [{"weight": 10, "hold": "30s"}, {"weight": 0}, {"pause": {}}, {"weight": 100}],
	  "analysis": {"stableFor": "10s", "staleAfter": "10s", "rollbackAfter": "0s", "maxErrorRate": 0.05, "minRequests": 20, "drainTimeout": "30s"},
	  "hooks": {"beforeShift": [{"exec": {"argv": ["./migrate", "expand"]}, "timeout": "120s"}],
	            "afterPromote": [{"webhook": {"url": "http://127.0.0.1:9000/done", "timeout": "5s"}}]}
	}`
	var p shiftplanev1.Plan
	if err := protojson.Unmarshal([]byte(doc), &p); err != nil {
		t.Fatal(err)
	}
	if got := p.GetOutlierDetection().GetConsecutive_5Xx(); got != 3 {
		t.Errorf("outlierDetection.consecutive5xx = %d, want 3", got)
	}
	if got := p.GetListener().GetPathPrefix(); got != "/" {
		t.Errorf("listener.pathPrefix = %q, want \"/\"", got)
	}
	steps := p.GetSteps()
	if len(steps) != 4 {
		t.Fatalf("got %d steps, want 4", len(steps))
	}
	if w, ok := steps[0].GetKind().(*shiftplanev1.Step_Weight); !ok || w.Weight != 10 || steps[0].GetHold().AsDuration() != 30*time.Second {
		t.Errorf("steps[0] = %v, want weight 10 hold 30s", steps[0])
	}
	// A weight of 0 is still a weight step: the oneof keeps its presence.
	if _, ok := steps[1].GetKind().(*shiftplanev1.Step_Weight); !ok {
		t.Errorf("steps[1] = %v, want a weight step of 0", steps[1])
	}
	if steps[2].GetPause() == nil {
		t.Errorf("steps[2] = %v, want a pause step", steps[2])
	}
	// An explicit 0s is set, unlike an absent duration: rollbackAfter: 0s disables.
	if ra := p.GetAnalysis().GetRollbackAfter(); ra == nil || ra.AsDuration() != 0 {
		t.Errorf("analysis.rollbackAfter = %v, want a set 0s", ra)
	}
	if argv := p.GetHooks().GetBeforeShift()[0].GetExec().GetArgv(); strings.Join(argv, " ") != "./migrate expand" {
		t.Errorf("hooks.beforeShift[0].exec.argv = %q", argv)
	}
	if u := p.GetHooks().GetAfterPromote()[0].GetWebhook().GetUrl(); u != "http://127.0.0.1:9000/done" {
		t.Errorf("hooks.afterPromote[0].webhook.url = %q", u)
	}
}
