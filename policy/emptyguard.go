package policy

import (
	"context"
	"log/slog"
	"sync"
)

// HoldEmptyAtStart wraps a Publisher so that it never sends an empty
// configuration before it has sent a non-empty one. A server that starts
// with no stored rollouts (a new or moved store file) would otherwise
// publish an empty snapshot at restore, and an Envoy still holding the
// listeners and routes of an earlier run would drop them: traffic lost on a
// restart, against DESIGN.md. Until a rollout exists nothing is published,
// so Envoy keeps what it has and its xDS requests wait.
//
// Once a non-empty state went out, an empty one passes: that is every
// rollout deleted, which the user asked for. allowEmpty (serve's
// xds.allowEmptyAtStart) turns the guard off.
//
// It is safe for the one goroutine at a time the Publisher contract allows.
func HoldEmptyAtStart(p Publisher, allowEmpty bool, log *slog.Logger) Publisher {
	if allowEmpty {
		return p
	}
	return &emptyGuard{next: p, log: log}
}

type emptyGuard struct {
	next Publisher
	log  *slog.Logger

	mu   sync.Mutex
	sent bool // a non-empty state was published
	said bool // the hold was logged
}

func (g *emptyGuard) Publish(ctx context.Context, ds DesiredState, reason string) (PublishResult, error) {
	g.mu.Lock()
	if len(ds.Services) == 0 && !g.sent {
		if !g.said && g.log != nil {
			g.log.Info("no rollouts: not publishing an empty configuration, so Envoys keep what they have until a plan arrives (xds.allowEmptyAtStart publishes it)", "reason", reason)
		}
		g.said = true
		g.mu.Unlock()
		return PublishResult{}, nil
	}
	g.mu.Unlock()
	res, err := g.next.Publish(ctx, ds, reason)
	if err == nil && len(ds.Services) > 0 {
		g.mu.Lock()
		g.sent = true
		g.mu.Unlock()
	}
	return res, err
}
