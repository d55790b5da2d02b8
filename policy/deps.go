package policy

import (
	"context"
	"time"

	"github.com/shiftplane/shiftplane/xds/model"
)

// Clock is the engine's only source of time, so tests can run a ten-minute
// rollout in milliseconds.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// PublishResult is the version of each kind of resource the fleet is
// served after a publish (package xds/model).
type PublishResult = model.PublishResult

// Publisher sends desired state to the fleet. Package xds implements it.
// Publish must be safe to call from one goroutine at a time; an error means
// the fleet keeps the last good configuration.
type Publisher interface {
	Publish(ctx context.Context, ds DesiredState, reason string) (PublishResult, error)
}

// ResourceKind names the resources whose convergence the engine waits for.
type ResourceKind = model.ResourceKind

// The kinds the engine waits on.
const (
	KindClusters  = model.KindClusters
	KindListeners = model.KindListeners
	KindRoutes    = model.KindRoutes
)

// Convergence is the fleet's progress towards one version.
type Convergence = model.Convergence

// FleetView reports what the fleet has ACKed. Package xds implements it; it
// must be safe for concurrent use.
type FleetView interface {
	Convergence(kind ResourceKind, version string) Convergence
}

// HookRunner runs one hook with the rollout's status JSON as input and
// returns its output (bounded by the runner). It is called from its own
// goroutine and must honour ctx's deadline.
type HookRunner interface {
	Run(ctx context.Context, h Hook, status []byte) (output string, err error)
}
