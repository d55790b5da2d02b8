package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

func (a *app) sourcesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "sources",
		Short: "List the plan files and folders the server watches, and the problems of the files it rejected",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callCtx(cmd)
			defer cancel()
			resp, err := a.sources.ListSourceErrors(ctx, &shiftplanev1.ListSourceErrorsRequest{})
			if err != nil {
				return a.callError(err)
			}
			return writeSources(a.out, resp, time.Now())
		},
	}
}

// sourceWarnings fetches the plan file problems for `list`. A server that
// predates SourceService is not an error; any other failure is a warning
// line, since the rollouts were listed.
func (a *app) sourceWarnings(cmd *cobra.Command) ([]*shiftplanev1.SourceError, error) {
	ctx, cancel := a.callCtx(cmd)
	defer cancel()
	resp, err := a.sources.ListSourceErrors(ctx, &shiftplanev1.ListSourceErrorsRequest{})
	if status.Code(err) == codes.Unimplemented {
		return nil, nil
	}
	if err != nil {
		return nil, a.callError(err)
	}
	return resp.GetErrors(), nil
}

// problemText is a source error as `FILE: FIELD: PROBLEM`, the form of
// `shiftplane validate`.
func problemText(e *shiftplanev1.SourceError) string {
	s := e.GetFile() + ": "
	if e.GetField() != "" {
		s += e.GetField() + ": "
	}
	return s + oneLine(e.GetProblem())
}

// writeSourceWarnings prints, after list's table, one warning line per plan
// file problem and what it means for the rollouts.
func writeSourceWarnings(w io.Writer, errs []*shiftplanev1.SourceError, now time.Time) error {
	if len(errs) == 0 {
		return nil
	}
	for _, e := range errs {
		if _, err := fmt.Fprintf(w, "warning: %s (rejected %s ago)\n", problemText(e), age(e.GetTime(), now)); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "warning: %s rejected; %s rollouts keep running the plans they had until %s fixed (shiftctl sources)\n",
		plural(countFiles(errs), "plan file", "plan files"), pick(countFiles(errs), "its", "their"), pick(countFiles(errs), "it is", "they are"))
	return err
}

// writeSources prints the watched paths, then every standing problem.
func writeSources(w io.Writer, resp *shiftplanev1.ListSourceErrorsResponse, now time.Time) error {
	paths := resp.GetWatchedPaths()
	if len(paths) == 0 {
		if _, err := fmt.Fprintln(w, "no plan files are watched (serve was started without --plan)"); err != nil {
			return err
		}
	} else if _, err := fmt.Fprintf(w, "watching %s\n", strings.Join(paths, ", ")); err != nil {
		return err
	}
	errs := resp.GetErrors()
	if len(errs) == 0 {
		if len(paths) == 0 {
			return nil
		}
		_, err := fmt.Fprintln(w, "every plan file loaded")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tFIELD\tPROBLEM\tSINCE")
	for _, e := range errs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.GetFile(), orDash(e.GetField()), oneLine(e.GetProblem()), age(e.GetTime(), now))
	}
	return tw.Flush()
}

func countFiles(errs []*shiftplanev1.SourceError) int {
	files := map[string]bool{}
	for _, e := range errs {
		files[e.GetFile()] = true
	}
	return len(files)
}

func plural(n int, one, many string) string {
	return fmt.Sprintf("%d %s", n, pick(n, one, many))
}

func pick(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
