package model

import (
	"strings"
	"time"
)

// The facts the fleet reports back: Envoy stats, as plain Go maps keyed by
// Envoy's full dotted stat names, so nothing that reads them depends on
// Envoy protos. Package xds's MetricsService sink produces them; package
// policy/signal judges them.

// NodeReport is what one Envoy node reported most recently, and the report
// before it, so that a counter's rise over one flush interval can be read.
// Values are keyed by the full dotted stat name
// (cluster.app-v2.outlier_detection.ejections_active), counters cumulative.
// Envoy sends only stats that have been used: a counter or gauge missing from
// a report is 0 on that node.
//
// The maps are shared, not copied: a receiver must not modify them.
type NodeReport struct {
	Node   string             // node id, or the name a source gives it
	At     time.Time          // when Latest was received
	Latest map[string]float64 // never nil
	// PrevAt and Prev are the report before Latest. Prev is nil when there is
	// nothing to compare with: Latest is the node's first report, or a
	// counter went down (the node restarted), so Latest is a new baseline.
	PrevAt time.Time
	Prev   map[string]float64
}

// StatsSource gives the latest stats each Envoy node has reported.
// Implementations must be safe for concurrent use, and Reports must return
// from memory without blocking on the network: the engine calls it on every
// tick.
type StatsSource interface {
	// Reports returns one report per node, sorted by node. A node that has
	// gone away (its stream ended) is not listed.
	Reports() []NodeReport
}

// Wanted reports whether the signal gate reads the stat: cluster.<name>.upstream_rq_*
// and cluster.<name>.outlier_detection.*. Sources keep only these.
func Wanted(name string) bool {
	_, rest, ok := splitCluster(name)
	return ok && (strings.HasPrefix(rest, "upstream_rq_") || strings.HasPrefix(rest, "outlier_detection."))
}

// splitCluster splits cluster.<name>.<rest>. Cluster names carry no dots
// (Envoy's tag extraction splits on them, and plans reject them).
func splitCluster(stat string) (cluster, rest string, ok bool) {
	s, ok := strings.CutPrefix(stat, "cluster.")
	if !ok {
		return "", "", false
	}
	cluster, rest, ok = strings.Cut(s, ".")
	return cluster, rest, ok && cluster != "" && rest != ""
}

// The stats the gate reads, relative to cluster.<name>.
const (
	statEjectionsActive   = "outlier_detection.ejections_active"
	statEjectionsDetected = "outlier_detection.ejections_detected_"
	statRqActive          = "upstream_rq_active"
	statRqCompleted       = "upstream_rq_completed"
	statRq5xx             = "upstream_rq_5xx"
)

// gaugeSuffixes are the gauges among the wanted stats; everything else under
// them is a counter. Sources that see no metric types (the admin JSON) use
// this to tell a restart (a counter went down) from a gauge moving.
var gaugeSuffixes = []string{
	"." + statEjectionsActive,
	"." + statRqActive,
	".upstream_rq_pending_active",
}

func isGauge(name string) bool {
	for _, s := range gaugeSuffixes {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// CountersWentDown reports whether some counter in both prev and latest is
// lower in latest: the node restarted and its counters began again at 0. A
// counter missing from latest is not a reset: Envoy drops a removed
// cluster's stats (a withdrawn stable), which must not blind the gate.
// isCounter tells counters from gauges; nil uses the names of Envoy's
// cluster gauges.
func CountersWentDown(prev, latest map[string]float64, isCounter func(name string) bool) bool {
	if isCounter == nil {
		isCounter = func(n string) bool { return !isGauge(n) }
	}
	for name, p := range prev {
		if l, ok := latest[name]; ok && isCounter(name) && l < p {
			return true
		}
	}
	return false
}

// CompletedRequests is how many requests a cluster finished on one node, by
// its cumulative counters: upstream_rq_completed, or without it the sum of
// upstream_rq_<N>xx. ok is false when the report has none of them (Envoy
// sends only used stats: the cluster served nothing, or is not there).
func CompletedRequests(stats map[string]float64, cluster string) (n float64, ok bool) {
	prefix := "cluster." + cluster + "."
	if v, ok := stats[prefix+statRqCompleted]; ok {
		return v, true
	}
	for c := 1; c <= 5; c++ {
		if v, found := stats[prefix+"upstream_rq_"+string(rune('0'+c))+"xx"]; found {
			n += v
			ok = true
		}
	}
	return n, ok
}
