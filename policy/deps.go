package policy

import (
	"context"
	"strings"
	"time"
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

// PublishResult is the version of each kind of resource the fleet is served
// after a publish.
type PublishResult struct {
	ClusterVersion  string // clusters and their endpoints
	ListenerVersion string
	RouteVersion    string
}

// Publisher sends desired state to the fleet. Package xds implements it.
// Publish must be safe to call from one goroutine at a time; an error means
// the fleet keeps the last good configuration.
type Publisher interface {
	Publish(ctx context.Context, ds DesiredState, reason string) (PublishResult, error)
}

// ResourceKind names the resources whose convergence the engine waits for.
type ResourceKind string

// The kinds the engine waits on.
const (
	KindClusters  ResourceKind = "clusters" // clusters and their endpoints
	KindListeners ResourceKind = "listeners"
	KindRoutes    ResourceKind = "routes"
)

// Convergence is the fleet's progress towards one version.
type Convergence struct {
	// Converged: at least one node is connected, every connected node ACKed
	// the version or a later one, and no node known from its stats lacks an
	// xDS stream. No node at all is not converged: after a restart the
	// stats streams come back before Envoy's ADS backoff ends, and a weight
	// nobody has ACKed must not start a hold.
	Converged bool
	Nodes     int      // connected nodes subscribed to the kind
	Nacks     []string // "node: error" for nodes that rejected it
	Missing   []string // nodes that report stats but have no xDS stream
}

// Waiting says in words what an unconverged fleet is waiting for.
func (c Convergence) Waiting() string {
	switch {
	case len(c.Missing) > 0:
		return "waiting for " + strings.Join(c.Missing, ", ") + " (reporting stats) to connect over xDS"
	case c.Nodes == 0:
		return "waiting for an Envoy to connect over xDS"
	}
	return "waiting for every connected Envoy to ACK"
}

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
