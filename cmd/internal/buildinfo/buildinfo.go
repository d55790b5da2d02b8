// Package buildinfo is the `version` command of shiftplane's binaries,
// read from the build information the Go toolchain stamps into them.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// Version is one line: "shiftctl v0.3.0 (commit 1a2b3c4d5e6f, 2026-01-02T03:04:05Z) go1.26.8 linux/amd64".
// A build from a work tree says "(devel)" and marks uncommitted changes
// "+dirty"; a binary without build information says so.
func Version(binary string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return binary + " (no build information) " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	}
	var rev, at string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var vcs []string
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if dirty {
			rev += "+dirty"
		}
		vcs = append(vcs, "commit "+rev)
	}
	if at != "" {
		vcs = append(vcs, at)
	}
	out := binary + " " + v
	if len(vcs) > 0 {
		out += " (" + strings.Join(vcs, ", ") + ")"
	}
	return out + " " + bi.GoVersion + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// Command is `BINARY version`.
func Command(binary string) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version, commit and Go toolchain this binary was built from",
		Example: "  " + binary + " version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), Version(binary))
			return err
		},
	}
}
