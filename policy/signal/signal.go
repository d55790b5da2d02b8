// Package signal judges a rollout's canary from what the Envoy fleet
// reports: outlier-detection ejections, an optional 5xx rate, and signals
// reported by outside systems. Its Gate implements policy.SignalGate.
//
// Stats reach it through StatsSource: the xds package's MetricsService sink
// and this package's AdminScraper both implement it. They hand over plain Go
// maps keyed by Envoy's full dotted stat names, so nothing here depends on
// Envoy protos.
package signal

import "github.com/shiftplane/shiftplane/xds/model"

// NodeReport is what one Envoy node reported (package xds/model).
type NodeReport = model.NodeReport

// StatsSource gives the latest stats each Envoy node has reported.
type StatsSource = model.StatsSource

// Wanted reports whether a gate reads the stat; sources keep only these.
func Wanted(name string) bool { return model.Wanted(name) }

// CountersWentDown reports whether a node's counters began again at 0.
func CountersWentDown(prev, latest map[string]float64, isCounter func(name string) bool) bool {
	return model.CountersWentDown(prev, latest, isCounter)
}

// The stats the gate reads, relative to cluster.<name>.
const (
	statEjectionsActive   = "outlier_detection.ejections_active"
	statEjectionsDetected = "outlier_detection.ejections_detected_"
	statRqActive          = "upstream_rq_active"
	statRqCompleted       = "upstream_rq_completed"
	statRq5xx             = "upstream_rq_5xx"
)
