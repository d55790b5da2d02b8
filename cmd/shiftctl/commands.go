package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/api"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

func (a *app) applyCmd() *cobra.Command {
	var files []string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "apply -f PLAN [-f PLAN ...] [--dry-run]",
		Short: "Create or update rollouts from plan files (one plan per YAML document; - reads stdin)",
		Long: `Create or update rollouts from plan files, one plan per YAML document.

Each plan is reported as created, configured (its plan changed) or unchanged.
The output of 'get -o yaml|json' and 'list -o yaml|json' is accepted too: its
plan is applied and its status ignored, as kubectl ignores status.
--dry-run changes nothing and prints the difference the apply would make.`,
		Example: `  shiftctl apply -f examples/checkout.yaml
  shiftctl apply -f plans.yaml --dry-run
  shiftctl get checkout -o yaml | shiftctl apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return errors.New("apply needs -f PLAN (a YAML file, or - for stdin)")
			}
			var failed []string
			for _, f := range files {
				data, err := readPlanFile(f, cmd.InOrStdin())
				if err != nil {
					return err
				}
				var docs []string
				for _, d := range splitYAMLDocs(string(data)) {
					plans, err := planFromDocument(d)
					if err != nil {
						return fmt.Errorf("%s: %w", f, err)
					}
					docs = append(docs, plans...)
				}
				if len(docs) == 0 {
					return fmt.Errorf("%s: holds no plan", f)
				}
				for i, doc := range docs {
					where := f
					if len(docs) > 1 {
						where = fmt.Sprintf("%s (document %d)", f, i+1)
					}
					apply := a.applyOne
					if dryRun {
						apply = a.applyDry
					}
					if err := apply(cmd, where, doc); err != nil {
						// Go on with the other plans; report each failure.
						fmt.Fprintln(cmd.ErrOrStderr(), "shiftctl: "+oneLine(err.Error()))
						failed = append(failed, where)
					}
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("apply failed for %s", strings.Join(failed, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "plan file (repeatable); - reads stdin")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "change nothing; print what the apply would change")
	return cmd
}

func (a *app) applyOne(cmd *cobra.Command, where, doc string) error {
	ctx, cancel := a.callCtx(cmd)
	defer cancel()
	resp, err := a.rollouts.Apply(ctx, &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_PlanYaml{PlanYaml: doc}})
	if err != nil {
		return fmt.Errorf("apply %s: %w", where, a.callError(err))
	}
	r := resp.GetRollout()
	verb := "configured"
	switch {
	case resp.GetResult() == shiftplanev1.ApplyResult_APPLY_RESULT_UNCHANGED:
		verb = "unchanged"
	case resp.GetCreated():
		verb = "created"
	}
	fmt.Fprintf(a.out, "rollout %q %s (%s)\n", r.GetName(), verb, summary(r))
	if verb == "unchanged" && retryable(r.GetPhase()) {
		fmt.Fprintf(a.out, "rollout %q ended %s; run 'shiftctl retry %s' to start it again from step 1\n", r.GetName(), phaseName(r.GetPhase()), r.GetName())
	}
	return nil
}

// applyDry prints what applying doc would change, from the plan parsed
// here and the rollout the server has; the server's own checks (exec
// hooks, webhook hosts, conflicts with other plans) run on the real apply.
func (a *app) applyDry(cmd *cobra.Command, where, doc string) error {
	plans, ps := policy.ParseAndValidate([]byte(doc), where, policy.ValidateOptions{AllowExec: true, AllowHosts: []string{"*"}})
	if len(ps) > 0 {
		return fmt.Errorf("apply %s: %w", where, ps)
	}
	if len(plans) != 1 {
		return fmt.Errorf("apply %s: holds %d plans", where, len(plans))
	}
	next := api.PlanToProto(plans[0])
	ctx, cancel := a.callCtx(cmd)
	defer cancel()
	resp, err := a.rollouts.Get(ctx, &shiftplanev1.GetRequest{Name: next.GetName()})
	if status.Code(err) == codes.NotFound {
		fmt.Fprintf(a.out, "rollout %q created (dry run)\n", next.GetName())
		return nil
	}
	if err != nil {
		return fmt.Errorf("apply %s: %w", where, a.callError(err))
	}
	cur := resp.GetRollout().GetPlan()
	curText, err := planText(cur)
	if err != nil {
		return err
	}
	nextText, err := planText(next)
	if err != nil {
		return err
	}
	if curText == nextText {
		fmt.Fprintf(a.out, "rollout %q unchanged (dry run)\n", next.GetName())
		return nil
	}
	fmt.Fprintf(a.out, "rollout %q configured (dry run):\n%s", next.GetName(), planDiff(curText, nextText))
	r := resp.GetRollout()
	switch {
	case cur.GetCanary().GetCluster() != next.GetCanary().GetCluster() || strings.Join(cur.GetCanary().GetEndpoints(), ",") != strings.Join(next.GetCanary().GetEndpoints(), ",") || cur.GetStable().GetCluster() != next.GetStable().GetCluster():
		fmt.Fprintf(a.out, "a new canary: the rollout would restart from step 1 (it is %s)\n", summary(r))
	case phaseTerminal(r.GetPhase()):
		fmt.Fprintf(a.out, "same canary: the plan would be replaced; the rollout stays %s\n", phaseName(r.GetPhase()))
	default:
		fmt.Fprintf(a.out, "same canary: the rollout would keep its position (%s)\n", summary(r))
	}
	return nil
}

// planText is a plan as the plan document get -o yaml prints.
func planText(p *shiftplanev1.Plan) (string, error) {
	n, err := planNode(p)
	if err != nil {
		return "", err
	}
	b, err := encodeYAML(n)
	return string(b), err
}

// retryable: the phases `retry` restarts.
func retryable(p shiftplanev1.Phase) bool {
	switch p {
	case shiftplanev1.Phase_PHASE_ABORTED, shiftplanev1.Phase_PHASE_ROLLED_BACK, shiftplanev1.Phase_PHASE_FAILED:
		return true
	}
	return false
}

func readPlanFile(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err // *PathError names the file
	}
	return b, nil
}

// splitYAMLDocs splits a YAML stream at its `---` document separators and
// drops documents holding only blanks and comments, so each plan can be
// applied (and its errors reported) on its own.
func splitYAMLDocs(s string) []string {
	var docs []string
	var cur strings.Builder
	flush := func() {
		if hasContent(cur.String()) {
			docs = append(docs, cur.String())
		}
		cur.Reset()
	}
	for _, line := range strings.SplitAfter(s, "\n") {
		bare := strings.TrimRight(line, " \t\r\n")
		switch {
		case bare == "---" || bare == "...":
			flush()
		case strings.HasPrefix(line, "--- "):
			flush()
			cur.WriteString(line[len("--- "):])
		default:
			cur.WriteString(line)
		}
	}
	flush()
	return docs
}

func hasContent(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			return true
		}
	}
	return false
}

func (a *app) getCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "get NAME [-o json|yaml|wide|name]",
		Short: "Show one rollout: its phase, steps, signal, fleet and last events",
		Long: `Show one rollout. Without -o: a detailed view (phase and message, the steps
with the current one marked and its hold, the signal and why, the fleet, the
newest events). -o json|yaml prints the rollout document, which apply -f takes
back; -o wide a one-line table; -o name rollout/NAME.`,
		Example: `  shiftctl get checkout
  shiftctl get checkout -o yaml > checkout.yaml
  shiftctl get checkout -o json | jq -r .phase`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			var header metadata.MD
			resp, err := a.rollouts.Get(ctx, &shiftplanev1.GetRequest{Name: args[0]}, grpc.Header(&header))
			if err != nil {
				return a.callError(err)
			}
			if output != "" {
				return writeRollouts(a.out, []*shiftplanev1.Rollout{resp.GetRollout()}, output, false, time.Now())
			}
			h, err := a.rollouts.History(ctx, &shiftplanev1.HistoryRequest{Name: args[0], Limit: detailEvents})
			if err != nil {
				return a.callError(err)
			}
			if err := writeDetail(a.out, resp.GetRollout(), h.GetEvents(), time.Now()); err != nil {
				return err
			}
			// Several replicas: say which one leads (json and yaml stay pure).
			if l := header.Get("shiftplane-leader"); len(l) > 0 {
				_, err = fmt.Fprintf(a.out, "Leader:   %s\n", l[0])
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json, yaml, wide or name (default: the detailed view)")
	return cmd
}

func (a *app) listCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list [-o json|yaml|wide|name]",
		Short: "List every rollout, then a warning line for each plan file problem",
		Example: `  shiftctl list
  shiftctl list -o wide
  shiftctl list -o yaml > all-plans.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			resp, err := a.rollouts.List(ctx, &shiftplanev1.ListRequest{})
			if err != nil {
				return a.callError(err)
			}
			if err := writeRollouts(a.out, resp.GetRollouts(), output, true, time.Now()); err != nil || output != "" {
				return err
			}
			errs, err := a.sourceWarnings(cmd)
			if err != nil {
				fmt.Fprintf(a.out, "warning: plan file problems unknown: %s\n", oneLine(err.Error()))
				return nil
			}
			return writeSourceWarnings(a.out, errs, time.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json, yaml, wide or name (default: a table)")
	return cmd
}

// finalResult is watch's verdict on a finished rollout.
func finalResult(r *shiftplanev1.Rollout) error {
	if r.GetPhase() == shiftplanev1.Phase_PHASE_SUCCEEDED {
		return nil
	}
	msg := fmt.Sprintf("rollout %q ended %s", r.GetName(), phaseName(r.GetPhase()))
	if r.GetReason() != "" {
		msg += ": " + r.GetReason()
	}
	return &exitError{code: exitRolloutFailure, msg: msg}
}

var simpleExamples = map[string]string{
	"pause":   "  shiftctl pause checkout",
	"resume":  "  shiftctl resume checkout   # also passes a manual gate step",
	"promote": "  shiftctl promote checkout",
	"retry":   "  shiftctl retry checkout && shiftctl watch checkout",
}

// simpleCmd is a verb that takes a NAME and changes the rollout: pause,
// resume, promote.
func (a *app) simpleCmd(verb, short, done string) *cobra.Command {
	return &cobra.Command{
		Use:     verb + " NAME",
		Short:   short,
		Example: simpleExamples[verb],
		Args:    nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			var r *shiftplanev1.Rollout
			var err error
			switch verb {
			case "pause":
				var resp *shiftplanev1.PauseResponse
				resp, err = a.rollouts.Pause(ctx, &shiftplanev1.PauseRequest{Name: args[0]})
				r = resp.GetRollout()
			case "resume":
				var resp *shiftplanev1.ResumeResponse
				resp, err = a.rollouts.Resume(ctx, &shiftplanev1.ResumeRequest{Name: args[0]})
				r = resp.GetRollout()
			case "promote":
				var resp *shiftplanev1.PromoteResponse
				resp, err = a.rollouts.Promote(ctx, &shiftplanev1.PromoteRequest{Name: args[0]})
				r = resp.GetRollout()
			case "retry":
				var resp *shiftplanev1.RetryResponse
				resp, err = a.rollouts.Retry(ctx, &shiftplanev1.RetryRequest{Name: args[0]})
				r = resp.GetRollout()
			}
			if err != nil {
				return a.callError(err)
			}
			fmt.Fprintf(a.out, "rollout %q %s (%s)\n", r.GetName(), done, summary(r))
			return nil
		},
	}
}

func (a *app) abortCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "abort NAME [--reason TEXT]",
		Example: `  shiftctl abort checkout --reason "p99 latency up"`,
		Short:   "Move all traffic back to stable and end the rollout",
		Args:    nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			resp, err := a.rollouts.Abort(ctx, &shiftplanev1.AbortRequest{Name: args[0], Reason: reason})
			if err != nil {
				return a.callError(err)
			}
			fmt.Fprintf(a.out, "rollout %q aborting (%s)\n", resp.GetRollout().GetName(), summary(resp.GetRollout()))
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why; recorded in the rollout's history")
	return cmd
}

func (a *app) deleteCmd() *cobra.Command {
	var force, dryRun bool
	cmd := &cobra.Command{
		Use:     "delete NAME [--force] [--dry-run]",
		Example: "  shiftctl delete checkout --dry-run\n  shiftctl delete checkout --force",
		Short:   "Forget a rollout, its routes and clusters, and its history",
		Long: `Delete removes the rollout's virtual host and clusters from every Envoy (and
its listener when no other rollout uses it), so the service's traffic stops.
It says what it will do first; a rollout whose routes carry traffic is
deleted only with --force. A rollout from a plan file is refused while the
file exists: remove the file (the rollout is then kept, owned by the API).`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			plan, err := a.rollouts.Delete(ctx, &shiftplanev1.DeleteRequest{Name: args[0], DryRun: true})
			if err != nil {
				return a.callError(err)
			}
			fmt.Fprintf(a.out, "delete %q: %s\n", args[0], plan.GetEffect())
			if dryRun {
				return nil
			}
			if _, err := a.rollouts.Delete(ctx, &shiftplanev1.DeleteRequest{Name: args[0], Force: force}); err != nil {
				return a.callError(err)
			}
			fmt.Fprintf(a.out, "rollout %q deleted\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even though the rollout's routes carry traffic")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what the delete would do, change nothing")
	return cmd
}

func (a *app) historyCmd() *cobra.Command {
	var limit int32
	cmd := &cobra.Command{
		Use:     "history NAME [--limit N]",
		Example: `  shiftctl history checkout --limit 20`,
		Short:   "Show a rollout's events, oldest first",
		Args:    nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			resp, err := a.rollouts.History(ctx, &shiftplanev1.HistoryRequest{Name: args[0], Limit: limit})
			if err != nil {
				return a.callError(err)
			}
			return writeHistory(a.out, resp.GetEvents())
		},
	}
	cmd.Flags().Int32Var(&limit, "limit", 0, "show only the newest N events (0: all)")
	return cmd
}

func (a *app) fleetCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "fleet",
		Example: `  shiftctl fleet`,
		Short:   "List the Envoys connected over xDS: what each ACKed, whether it converged, its NACK errors",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			resp, err := a.fleet.ListNodes(ctx, &shiftplanev1.ListNodesRequest{})
			if err != nil {
				return a.callError(err)
			}
			return writeFleet(a.out, resp.GetNodes(), time.Now())
		},
	}
}

func (a *app) reportSignalCmd() *cobra.Command {
	var state, reason, source string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use: "report-signal NAME --state firing|clear [--ttl 1m] [--reason TEXT] [--source NAME]",
		Example: `  shiftctl report-signal checkout --state firing --reason "CI smoke test failed" --source ci
  shiftctl report-signal checkout --state clear --source ci`,
		Short: "Report an outside verdict on a rollout's canary (firing stops it; clear withdraws your firing)",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &shiftplanev1.ReportSignalRequest{Rollout: args[0], Reason: reason, Source: source}
			switch strings.ToLower(state) {
			case "firing":
				req.State = shiftplanev1.SignalState_SIGNAL_STATE_FIRING
			case "clear":
				req.State = shiftplanev1.SignalState_SIGNAL_STATE_CLEAR
			default:
				return fmt.Errorf("--state: must be firing or clear, got %q", state)
			}
			if cmd.Flags().Changed("ttl") {
				if ttl <= 0 {
					return fmt.Errorf("--ttl: must be positive, got %s", ttl)
				}
				req.Ttl = durationpb.New(ttl)
			}
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			resp, err := a.rollouts.ReportSignal(ctx, req)
			if err != nil {
				return a.callError(err)
			}
			sig := resp.GetSignal()
			fmt.Fprintf(a.out, "signal of rollout %q is now %s", args[0], signalName(sig.GetState()))
			if sig.GetReason() != "" {
				fmt.Fprintf(a.out, " (%s)", sig.GetReason())
			}
			fmt.Fprintln(a.out)
			return nil
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "firing or clear (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the report stands (default: the rollout's analysis.staleAfter)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the rollout's status")
	cmd.Flags().StringVar(&source, "source", "shiftctl", "reporter name; a later report from the same source replaces this one")
	return cmd
}
