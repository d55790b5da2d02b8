// Command shiftplane is the control plane: `serve` runs it, `validate`
// checks plans, `demo` runs a complete local rollout.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		if errors.Is(err, errProblems) {
			os.Exit(1) // the problems are printed already
		}
		fmt.Fprintln(os.Stderr, "shiftplane:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "shiftplane",
		Short:         "An Envoy xDS control plane for zero-downtime canary releases",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), validateCmd(), demoCmd())
	return root
}
