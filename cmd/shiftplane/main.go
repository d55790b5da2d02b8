// Command shiftplane is the control plane: `serve` runs it, `validate`
// checks plans, `bootstrap` prints an Envoy's bootstrap, `demo` runs a
// complete local rollout, `version` says what it was built from.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shiftplane/shiftplane/cmd/internal/buildinfo"
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
		Use:   "shiftplane",
		Short: "An Envoy xDS control plane for zero-downtime canary releases",
		Example: `  shiftplane serve --plan examples/
  shiftplane validate examples/*.yaml
  shiftplane bootstrap --node-id envoy-1 > envoy.yaml
  shiftplane demo`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	serve := serveCmd()
	// Set here, so serve.go (busy elsewhere) stays as it is.
	serve.Example = `  shiftplane serve --plan examples/
  shiftplane serve --config shiftplane.yaml --plan /etc/shiftplane/plans
  SHIFTPLANE_STORE_PATH=/var/lib/shiftplane.db SHIFTPLANE_API_TOKENFILE=/etc/shiftplane/token shiftplane serve`
	demo := demoCmd()
	demo.Example = `  shiftplane demo
  shiftplane demo --fail-canary   # watch the hold and the rollback`
	root.AddCommand(serve, validateCmd(), bootstrapCmd(), demo, buildinfo.Command("shiftplane"))
	return root
}
