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
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

func (a *app) applyCmd() *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "apply -f PLAN [-f PLAN ...]",
		Short: "Create or update rollouts from plan files (one plan per YAML document; - reads stdin)",
		Args:  cobra.NoArgs,
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
				docs := splitYAMLDocs(string(data))
				if len(docs) == 0 {
					return fmt.Errorf("%s: holds no plan", f)
				}
				for i, doc := range docs {
					where := f
					if len(docs) > 1 {
						where = fmt.Sprintf("%s (document %d)", f, i+1)
					}
					if err := a.applyOne(cmd, where, doc); err != nil {
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
	return cmd
}

func (a *app) applyOne(cmd *cobra.Command, where, doc string) error {
	ctx, cancel := a.callCtx(cmd)
	defer cancel()
	resp, err := a.rollouts.Apply(ctx, &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_PlanYaml{PlanYaml: doc}})
	if err != nil {
		return fmt.Errorf("apply %s: %w", where, a.callError(err))
	}
	verb := "configured"
	if resp.GetCreated() {
		verb = "created"
	}
	r := resp.GetRollout()
	fmt.Fprintf(a.out, "rollout %q %s (%s)\n", r.GetName(), verb, summary(r))
	return nil
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
		Use:   "get NAME [-o json|yaml|table]",
		Short: "Show one rollout's status",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch output {
			case "json", "yaml", "table":
			default:
				return fmt.Errorf("-o: must be json, yaml or table, got %q", output)
			}
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			var header metadata.MD
			resp, err := a.rollouts.Get(ctx, &shiftplanev1.GetRequest{Name: args[0]}, grpc.Header(&header))
			if err != nil {
				return a.callError(err)
			}
			if err := writeRollout(a.out, resp.GetRollout(), output, time.Now()); err != nil {
				return err
			}
			// Several replicas: say which one leads (json and yaml stay pure).
			if l := header.Get("shiftplane-leader"); len(l) > 0 && output == "table" {
				_, err = fmt.Fprintf(a.out, "Leader:   %s\n", l[0])
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "json, yaml or table")
	return cmd
}

func (a *app) listCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every rollout, then a warning line for each plan file problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			resp, err := a.rollouts.List(ctx, &shiftplanev1.ListRequest{})
			if err != nil {
				return a.callError(err)
			}
			if err := writeRolloutTable(a.out, resp.GetRollouts(), time.Now()); err != nil {
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
}

func (a *app) watchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "watch NAME",
		Short: "Follow a rollout live; exit 0 when it succeeds, 2 when it rolls back, aborts or fails",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			stream, err := a.rollouts.Watch(cmd.Context(), &shiftplanev1.WatchRequest{Name: args[0]})
			if err != nil {
				return a.callError(err)
			}
			w := newWatcher(a.out, a.tty)
			for {
				resp, err := stream.Recv()
				if err != nil {
					w.done()
					if errors.Is(err, io.EOF) {
						return errors.New("the server ended the watch")
					}
					return a.callError(err)
				}
				if ev := resp.GetEvent(); ev != nil {
					w.event(ev)
					continue
				}
				r := resp.GetStatus()
				if r == nil {
					continue
				}
				w.status(r)
				if phaseTerminal(r.GetPhase()) {
					w.done()
					return finalResult(r)
				}
			}
		},
	}
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

// simpleCmd is a verb that takes a NAME and changes the rollout: pause,
// resume, promote.
func (a *app) simpleCmd(verb, short, done string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  nameArg,
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
		Use:   "abort NAME [--reason TEXT]",
		Short: "Move all traffic back to stable and end the rollout",
		Args:  nameArg,
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
		Use:   "delete NAME [--force] [--dry-run]",
		Short: "Forget a rollout, its routes and clusters, and its history",
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
		Use:   "history NAME [--limit N]",
		Short: "Show a rollout's events, oldest first",
		Args:  nameArg,
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
		Use:   "fleet",
		Short: "List the Envoys connected over xDS: what each ACKed, whether it converged, its NACK errors",
		Args:  cobra.NoArgs,
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
		Use:   "report-signal NAME --state firing|clear [--ttl 1m] [--reason TEXT] [--source NAME]",
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
