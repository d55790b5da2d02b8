package model

import "strings"

// PublishResult is the version of each kind of resource the fleet is served
// after a publish.
type PublishResult struct {
	ClusterVersion  string // clusters and their endpoints
	ListenerVersion string
	RouteVersion    string
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
	// Lacking: "node X lacks listener Y" for resources a node asked for
	// by name that the version it ACKed does not serve.
	Lacking []string
}

// Waiting says in words what an unconverged fleet is waiting for.
func (c Convergence) Waiting() string {
	switch {
	case len(c.Missing) > 0:
		return "waiting for " + strings.Join(c.Missing, ", ") + " (reporting stats) to connect over xDS"
	case len(c.Lacking) > 0:
		return "waiting for resources nodes asked for and are not served: " + strings.Join(c.Lacking, ", ")
	case c.Nodes == 0:
		return "waiting for an Envoy to connect over xDS"
	}
	return "waiting for every connected Envoy to ACK"
}
