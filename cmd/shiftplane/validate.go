package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/shiftplane/shiftplane/policy"
)

// errProblems makes validate exit non-zero after it printed the problems.
var errProblems = errors.New("invalid plans")

func validateCmd() *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "validate FILE_OR_DIR...",
		Short: "Check rollout plans; prints one line per problem and exits non-zero if any",
		Long: `Check rollout plans (files, or folders of *.yaml) as serve would load them:
one line per problem (FILE: steps[2].weight: ...), exit 1 if any. Exec hooks and
webhook hosts are judged by the hooks settings of --config, the environment
(SHIFTPLANE_HOOKS_ALLOWEXEC, SHIFTPLANE_HOOKS_ALLOWHOSTS) or the flags below.`,
		Example: `  shiftplane validate examples/
  shiftplane validate -v plans/checkout.yaml
  shiftplane validate --hooks-allow-exec plans/migrate.yaml`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd.Flags())
			if err != nil {
				return err
			}
			plans, ps := policy.LoadPaths(args, cfg.ValidateOptions())
			for _, p := range ps {
				fmt.Fprintln(cmd.OutOrStdout(), p.String())
			}
			if len(ps) > 0 {
				cmd.SilenceErrors = true
				return errProblems
			}
			if verbose {
				printSchedules(cmd.OutOrStdout(), plans)
			}
			return nil
		},
	}
	addConfigFlags(cmd.Flags(), "hooks.allowExec", "hooks.allowHosts")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print each plan's steps (generated ones too)")
	return cmd
}

func printSchedules(w io.Writer, plans []policy.SourcedPlan) {
	for _, sp := range plans {
		fmt.Fprintf(w, "%s (%s):\n", sp.Plan.Name, sp.File)
		for i, s := range sp.Plan.WithDefaults().Schedule() {
			if s.Pause != nil {
				fmt.Fprintf(w, "  steps[%d]: pause (manual gate)\n", i)
				continue
			}
			extra := ""
			if s.Mirror > 0 {
				extra += fmt.Sprintf(", mirror %d%%", s.Mirror)
			}
			if s.MatchOnly != nil {
				extra += ", matched requests only"
			}
			fmt.Fprintf(w, "  steps[%d]: weight %d%s, hold %s\n", i, *s.Weight, extra, s.Hold)
		}
	}
}
