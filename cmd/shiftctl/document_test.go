package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// TestPlanFromDocument: apply takes plan documents as they are, and the
// plan out of rollout documents (get -o yaml|json, list -o json).
func TestPlanFromDocument(t *testing.T) {
	r := rollout()
	r.Plan = &shiftplanev1.Plan{Name: "checkout", Steps: []*shiftplanev1.Step{
		{Kind: &shiftplanev1.Step_Weight{Weight: 10}, Hold: durationpb.New(90 * time.Second)},
		{Kind: &shiftplanev1.Step_Pause{Pause: &shiftplanev1.Pause{}}},
	}, Hooks: &shiftplanev1.Hooks{AfterPromote: []*shiftplanev1.Hook{{Action: &shiftplanev1.Hook_Exec{Exec: &shiftplanev1.ExecHook{Argv: []string{"./migrate", "contract"}}}}}}}
	y, err := rolloutYAML(r)
	if err != nil {
		t.Fatal(err)
	}
	j, err := rolloutJSON(r)
	if err != nil {
		t.Fatal(err)
	}
	want := "name: checkout\nsteps:\n  - weight: 10\n    hold: 1m30s\n  - pause: {}\nhooks:\n  afterPromote:\n    - exec:\n        - ./migrate\n        - contract\n"
	tests := map[string]struct {
		in   string
		want []string
	}{
		"plan as is":   {in: "name: a\nsteps: [{weight: 100}]\n", want: []string{"name: a\nsteps: [{weight: 100}]\n"}},
		"get -o yaml":  {in: string(y), want: []string{want}},
		"get -o json":  {in: string(j), want: []string{want}},
		"list -o json": {in: `{"items": [` + string(j) + `,` + string(j) + `]}`, want: []string{want, want}},
		"not YAML":     {in: "{", want: []string{"{"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := planFromDocument(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "\n---\n") != strings.Join(tc.want, "\n---\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n---\n"), strings.Join(tc.want, "\n---\n"))
			}
		})
	}
	if _, err := planFromDocument(`{"items": [{"name": "x"}]}`); err == nil || !strings.Contains(err.Error(), "items[0]: not a rollout document") {
		t.Errorf("an item without a plan: %v", err)
	}
	if !strings.Contains(string(y), "holdRemaining: 12s\n") || strings.Contains(string(y), "PHASE_") {
		t.Errorf("status part:\n%s", y)
	}
}
