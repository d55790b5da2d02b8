package policy_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// Detach changes only the source of a rollout still owned by that source,
// records it, keeps its state and traffic, and survives a restart.
func TestDetach(t *testing.T) {
	h := newHarness(t)
	src := policy.FileSource("plans/web.yaml")
	if _, err := h.eng.Apply(testPlan("web", wstep(20, time.Minute), wstep(100, 0)), src); err != nil {
		t.Fatal(err)
	}
	h.runUntil("weight 20", time.Minute, time.Second, func(s policy.Status) bool { return s.State.Weight == 20 }, "web")
	before := h.get("web")

	if err := h.eng.Detach("web", policy.FileSource("plans/other.yaml")); err != nil {
		t.Fatal(err)
	}
	if got := h.get("web").Source; got != src {
		t.Fatalf("Detach by another source changed the source to %q", got)
	}
	if err := h.eng.Detach("web", src); err != nil {
		t.Fatal(err)
	}
	after := h.get("web")
	if after.Source != policy.SourceAPI || after.State.Weight != before.State.Weight || after.State.Phase != before.State.Phase ||
		after.State.StepIndex != before.State.StepIndex {
		t.Errorf("after Detach: source %q phase %s step %d weight %d; want source %q and the rest as before (%s step %d weight %d)",
			after.Source, after.State.Phase, after.State.StepIndex, after.State.Weight, policy.SourceAPI,
			before.State.Phase, before.State.StepIndex, before.State.Weight)
	}
	evs := h.events("web")
	if last := evs[len(evs)-1]; !strings.Contains(last.Reason, "plan file plans/web.yaml removed; rollout kept as it is") {
		t.Errorf("last event %q does not record the detach", last.Reason)
	}
	if err := h.eng.Detach("nope", src); !errors.Is(err, policy.ErrNotFound) {
		t.Errorf("Detach of an unknown rollout = %v, want ErrNotFound", err)
	}

	h.kill()
	h.start()
	if got := h.get("web").Source; got != policy.SourceAPI {
		t.Errorf("after a restart the source is %q, want %q", got, policy.SourceAPI)
	}
}
