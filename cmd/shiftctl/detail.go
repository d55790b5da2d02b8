package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/api"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// detailEvents is how many of the newest events `get NAME` shows.
const detailEvents = 5

// writeDetail is `get NAME`: the rollout as `kubectl argo rollouts get
// rollout` shows one: phase and message, the steps with the current one
// marked and its hold, the signal and why, the fleet, the last events.
func writeDetail(w io.Writer, r *shiftplanev1.Rollout, events []*shiftplanev1.Event, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	field := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, args...)...)
	}
	field("Name", "%s", r.GetName())
	field("Phase", "%s", phaseName(r.GetPhase()))
	if m := r.GetMessage(); m != "" {
		field("Message", "%s", oneLine(m))
	}
	if e := r.GetHookError(); e != "" {
		field("Hook error", "%s", oneLine(e))
	}
	field("Weight", "%s %d%%, %s %d%%", orDash(r.GetStableCluster()), 100-r.GetCanaryWeight(), orDash(r.GetCanaryCluster()), r.GetCanaryWeight())
	if r.GetWeightPending() && r.GetTargetWeight() != r.GetCanaryWeight() {
		field("Sent", "%s %d%%, not yet ACKed by the fleet", orDash(r.GetCanaryCluster()), r.GetTargetWeight())
	}
	step := "step " + stepText(r)
	if !phaseTerminal(r.GetPhase()) && r.GetStepCount() > 0 {
		step += fmt.Sprintf(" (hold %s counted, %s left)", roundDuration(r.GetHoldCounted().AsDuration()), roundDuration(r.GetHoldRemaining().AsDuration()))
	}
	if o := r.GetObserved(); o != nil && !phaseTerminal(r.GetPhase()) {
		txt := stepSplitText(o)
		if o.CanaryShare != nil {
			txt += " in this step"
		}
		if t := o.GetTransitionStableRequests() + o.GetTransitionCanaryRequests(); t > 0 {
			txt += fmt.Sprintf("; %d request(s) while the fleet took the weight (not in the share)", t)
		}
		field("Observed", "%s, from %d node(s)", txt, o.GetNodes())
	}
	field("Step", "%s", step)
	sig := r.GetSignal()
	sigText := signalName(sig.GetState())
	if sig.GetSince() != nil {
		sigText += " for " + age(sig.GetSince(), now)
	}
	if sig.GetReason() != "" {
		sigText += ": " + oneLine(sig.GetReason())
	}
	field("Signal", "%s", sigText)
	fl := r.GetFleet()
	fleet := fleetText(fl)
	if v := fl.GetRouteVersion(); v != "" {
		fleet += ", route version " + v
	}
	field("Fleet", "%s", fleet)
	field("Source", "%s", orDash(r.GetSource()))
	field("Created", "%s ago", age(r.GetCreatedAt(), now))
	field("Updated", "%s ago", age(r.GetUpdatedAt(), now))
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nSteps:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, s := range schedule(r.GetPlan()) {
		mark := " "
		if int32(i) == r.GetStepIndex() && !phaseTerminal(r.GetPhase()) {
			mark = "→"
		} else if int32(i) < r.GetStepIndex() || r.GetPhase() == shiftplanev1.Phase_PHASE_SUCCEEDED {
			mark = "✓"
		}
		what := "pause (manual gate: resume or promote)"
		if s.Weight != nil {
			what = fmt.Sprintf("weight %d%%", *s.Weight)
			if s.Mirror > 0 {
				what += fmt.Sprintf(", mirror %d%%", s.Mirror)
			}
			if s.MatchOnly != nil {
				what += ", matched requests only"
			}
			if s.Hold > 0 {
				what += fmt.Sprintf("\thold %s", s.Hold)
			}
		}
		fmt.Fprintf(tw, "  %s %d/%d\t%s\n", mark, i+1, r.GetStepCount(), what)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if steps := r.GetObservedSteps(); len(steps) > 0 {
		// What Envoy's stats say each step served, next to its weight.
		fmt.Fprintln(w, "\nObserved split per step (from the fleet's stats):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  STEP\tPHASE\tWEIGHT\tOBSERVED\tV1\tV2\tSETTLING\tNODES")
		for _, o := range steps {
			fmt.Fprintf(tw, "  %d\t%s\t%d%%\t%s\t%d\t%d\t%d\t%d\n", o.GetStepIndex()+1, phaseName(o.GetPhase()), o.GetWeight(), shareText(o),
				o.GetStableRequests(), o.GetCanaryRequests(), o.GetTransitionStableRequests()+o.GetTransitionCanaryRequests(), o.GetNodes())
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if len(events) > 0 {
		fmt.Fprintf(w, "\nEvents (newest %d):\n", len(events))
		if err := writeHistory(w, events); err != nil {
			return err
		}
	}
	return nil
}

// schedule is the plan's steps, linear and exponential ones expanded, as
// the server carries them out.
func schedule(p *shiftplanev1.Plan) []policy.Step {
	if p == nil {
		return nil
	}
	plan, _ := api.PlanFromProto(p, policy.ValidateOptions{AllowExec: true})
	return plan.WithDefaults().Schedule()
}

// planDiff is apply --dry-run's account of what a plan would change: the
// lines of the current plan document that go (-) and come (+).
func planDiff(current, next string) string {
	a, b := strings.Split(strings.TrimRight(current, "\n"), "\n"), strings.Split(strings.TrimRight(next, "\n"), "\n")
	// Longest common subsequence; plans are short.
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			out.WriteString("  " + a[i] + "\n")
			i++
			j++
		case j < len(b) && (i == len(a) || lcs[i][j+1] >= lcs[i+1][j]):
			out.WriteString("+ " + b[j] + "\n")
			j++
		default:
			out.WriteString("- " + a[i] + "\n")
			i++
		}
	}
	return out.String()
}
