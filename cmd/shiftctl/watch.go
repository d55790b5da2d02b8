package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// Reconnect backoff of watch: a restarted or failed-over shiftplane is back
// within seconds, and a watch that gives up then fails the CI gate built on
// it for no reason.
const (
	watchBackoffMin = 250 * time.Millisecond
	watchBackoffMax = 5 * time.Second
)

func (a *app) watchCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "watch NAME [--timeout 10m]",
		Short: "Follow a rollout live; exit 0 when it succeeds, 2 when it rolls back, aborts or fails",
		Long: `Follow a rollout live until it ends. On a terminal one progress line is
redrawn in place, sized to the terminal; to a pipe or file, plain lines.

When shiftplane restarts or fails over, watch says so and reconnects with
backoff until --timeout. Exit status: 0 SUCCEEDED; 2 ROLLED_BACK, ABORTED or
FAILED; 3 --timeout passed first; 130 interrupted (Ctrl-C); 1 any other error
(the rollout was deleted, it does not exist, a bad token).`,
		Example: `  shiftctl watch checkout
  shiftctl watch checkout --timeout 30m && echo released`,
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("timeout") && timeout <= 0 {
				return fmt.Errorf("--timeout: must be positive, got %s", timeout)
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			err := a.watch(ctx, args[0])
			// The server may answer DEADLINE_EXCEEDED (the deadline travels
			// with the call) before the local context says so.
			if timeout > 0 && cmd.Context().Err() == nil && (errors.Is(ctx.Err(), context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded) {
				return &exitError{code: exitTimeout, msg: fmt.Sprintf("rollout %q did not finish within --timeout %s", args[0], timeout)}
			}
			return a.callError(err)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long, with exit status 3 (default: wait for the end)")
	return cmd
}

// watch follows name until it ends, reconnecting when the server goes away.
func (a *app) watch(ctx context.Context, name string) error {
	w := newWatcher(a.out, a.tty, a.width)
	defer w.done()
	backoff := watchBackoffMin
	connected := false // a stream has delivered a status
	lost := false
	for {
		r, err := a.watchOnce(ctx, name, w, func() {
			if lost {
				w.note(fmt.Sprintf("reconnected to shiftplane at %s", a.server))
				lost = false
			}
			connected, backoff = true, watchBackoffMin
		})
		if r != nil {
			return finalResult(r)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Only a server going away is retried; NOT_FOUND (never there, or
		// deleted), a bad token or a bad name are answers.
		code := status.Code(err)
		if code != codes.Unavailable && !errors.Is(err, io.EOF) {
			return err
		}
		if !connected && !lost {
			// The first connection: say where we wait, then keep trying.
			w.note(fmt.Sprintf("cannot reach shiftplane at %s (%s); retrying", a.server, oneLine(status.Convert(err).Message())))
		} else if !lost {
			w.note(fmt.Sprintf("connection to shiftplane at %s lost (%s); reconnecting", a.server, oneLine(status.Convert(err).Message())))
		}
		lost = true
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, watchBackoffMax)
	}
}

// watchOnce runs one Watch stream. It returns the rollout when it ended,
// or the error that ended the stream; up is called on the first status.
func (a *app) watchOnce(ctx context.Context, name string, w *watcher, up func()) (*shiftplanev1.Rollout, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := a.rollouts.Watch(ctx, &shiftplanev1.WatchRequest{Name: name})
	if err != nil {
		return nil, err
	}
	first := true
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if ev := resp.GetEvent(); ev != nil {
			w.event(ev)
			continue
		}
		r := resp.GetStatus()
		if r == nil {
			continue
		}
		if first {
			up()
			first = false
		}
		w.status(r)
		if phaseTerminal(r.GetPhase()) {
			return r, nil
		}
	}
}
