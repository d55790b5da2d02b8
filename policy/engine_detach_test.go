package policy_test

import (
	"errors"
	"os"
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

// A rollout from a plan file that still exists is not deleted through the
// API, even with force: it would come back from the file. Once the file is
// gone (and the rollout detached) it can be.
func TestDeleteOfFileSourcedRollout(t *testing.T) {
	h := newHarness(t)
	file := t.TempDir() + "/web.yaml"
	if err := os.WriteFile(file, []byte("name: web\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.eng.Apply(testPlan("web", wstep(20, time.Minute), wstep(100, 0)), policy.FileSource(file)); err != nil {
		t.Fatal(err)
	}
	_, err := h.eng.Delete("web", policy.DeleteOptions{Force: true})
	if !errors.Is(err, policy.ErrFailedPrecondition) || !strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("delete of a file-sourced rollout: %v, want FailedPrecondition asking to remove the file", err)
	}
	if _, err := h.eng.Get("web"); err != nil {
		t.Fatalf("refused delete removed the rollout: %v", err)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := h.eng.Detach("web", policy.FileSource(file)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.eng.Delete("web", policy.DeleteOptions{}); !errors.Is(err, policy.ErrFailedPrecondition) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("delete without force of a live rollout: %v, want FailedPrecondition naming --force", err)
	}
	effect, err := h.eng.Delete("web", policy.DeleteOptions{Force: true})
	if err != nil || !strings.Contains(effect, `removes virtual host "web"`) {
		t.Fatalf("forced delete: %q, %v", effect, err)
	}
	h.kill()
	h.start()
	if _, err := h.eng.Get("web"); !errors.Is(err, policy.ErrNotFound) {
		t.Errorf("a deleted rollout came back after a restart: %v", err)
	}
}
