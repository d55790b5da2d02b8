package signal

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// ActiveFreshness is how recent a node's report must be for ActiveRequests
// to believe it.
const ActiveFreshness = policy.DefaultStaleAfter

// maxReasons bounds how many findings a reason lists; the rest are counted.
const maxReasons = 5

// Gate judges rollouts' canaries from Envoy stats and reported signals. It
// implements policy.SignalGate and is safe for concurrent use.
//
// Verdicts, strongest first:
//   - FIRING: an unexpired reported FIRING; or, on a node that reported
//     recently, cluster.<canary>.outlier_detection.ejections_active > 0 or an
//     ejections_detected_* counter that rose over the node's last interval;
//     or, with analysis.maxErrorRate > 0, the canary's 5xx share over the
//     nodes' last intervals above it once analysis.minRequests were seen.
//   - STALE: no node has reported within analysis.staleAfter, or none since
//     the rollout started. With no StatsSource at all, reported signals are
//     the only data: no unexpired report for the rollout is STALE.
//   - CLEAR: otherwise.
type Gate struct {
	sources []StatsSource
	log     *slog.Logger

	onChange func()

	mu       sync.Mutex
	reported map[string]map[string]reportedSignal // rollout → source → latest report
}

// SetOnChange makes the gate call fn after each reported signal it keeps
// (the engine's Notice), with its lock held: fn must not block. Call
// before use.
func (g *Gate) SetOnChange(fn func()) { g.onChange = fn }

var _ policy.SignalGate = (*Gate)(nil)

// NewGate returns a gate reading sources. A nil log discards. The gate
// exports no metrics itself: shiftplane_signal_firing and
// shiftplane_signal_state come from the engine's rollout status (what the
// engine acted on), so a finished or deleted rollout has no signal series.
func NewGate(log *slog.Logger, sources ...StatsSource) *Gate {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Gate{
		sources:  sources,
		log:      log,
		reported: map[string]map[string]reportedSignal{},
	}
	return g
}

// Evaluate implements policy.SignalGate.
func (g *Gate) Evaluate(now time.Time, q policy.SignalQuery) policy.Signal {
	return g.evaluate(now, q)
}

// Forget drops a rollout's reported signals; call it when the rollout is
// deleted.
func (g *Gate) Forget(rollout string) {
	g.mu.Lock()
	delete(g.reported, rollout)
	g.mu.Unlock()
}

func (g *Gate) evaluate(now time.Time, q policy.SignalQuery) policy.Signal {
	staleAfter := q.Analysis.StaleAfter.D()
	if staleAfter <= 0 {
		staleAfter = policy.DefaultStaleAfter
	}
	reported, anyReported := g.reportedFiring(now, q)
	if len(reported) > 0 {
		return policy.Signal{State: policy.SignalFiring, Reason: joinReasons(reported)}
	}
	if len(g.sources) == 0 {
		if anyReported {
			return policy.Signal{State: policy.SignalClear, Reason: "reported clear"}
		}
		return policy.Signal{State: policy.SignalStale, Reason: "no stats source and no unexpired reported signal"}
	}

	nodes := g.reports()
	var fresh []NodeReport
	for _, r := range nodes {
		if !r.At.Before(q.Since) && now.Sub(r.At) <= staleAfter {
			fresh = append(fresh, r)
		}
	}
	if len(fresh) == 0 {
		return policy.Signal{State: policy.SignalStale, Reason: staleReason(now, q.Since, staleAfter, nodes)}
	}

	var findings []string
	prefix := "cluster." + q.CanaryCluster + "."
	active := prefix + statEjectionsActive
	detected := prefix + statEjectionsDetected
	for _, r := range fresh {
		if v := r.Latest[active]; v > 0 {
			findings = append(findings, fmt.Sprintf("node %s: %s=%g", r.Node, active, v))
		}
		if !windowUsable(r, q.Since) {
			continue
		}
		var names []string
		for name := range r.Latest {
			if strings.HasPrefix(name, detected) {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			if p, l := r.Prev[name], r.Latest[name]; l > p {
				findings = append(findings, fmt.Sprintf("node %s: %s rose %g→%g", r.Node, name, p, l))
			}
		}
	}
	if f, ok := errorRate(fresh, q); ok {
		findings = append(findings, f)
	}
	traffic := trafficSamples(fresh, q)
	if len(findings) > 0 {
		return policy.Signal{State: policy.SignalFiring, Reason: joinReasons(findings), Traffic: traffic}
	}
	return policy.Signal{State: policy.SignalClear, Reason: fmt.Sprintf("no ejections of %s on %d node(s)", q.CanaryCluster, len(fresh)), Traffic: traffic}
}

// trafficSamples is the evidence that the canary serves: per fresh node, the
// canary's completed requests over its last report interval. A node whose
// interval cannot be read gives no sample; a node that sent no counter for
// the canary (Envoy sends only used stats) gives a sample of 0.
func trafficSamples(fresh []NodeReport, q policy.SignalQuery) []policy.TrafficSample {
	var out []policy.TrafficSample
	for _, r := range fresh {
		if !windowUsable(r, q.Since) {
			continue
		}
		n := completed(r.Latest, q.CanaryCluster) - completed(r.Prev, q.CanaryCluster)
		if n < 0 {
			continue
		}
		out = append(out, policy.TrafficSample{Node: r.Node, From: r.PrevAt, At: r.At, Requests: n})
	}
	return out
}

// completed is a cluster's finished requests in one report:
// upstream_rq_completed, or the sum of upstream_rq_<N>xx without it.
func completed(stats map[string]float64, cluster string) float64 {
	prefix := "cluster." + cluster + "."
	if v, ok := stats[prefix+statRqCompleted]; ok {
		return v
	}
	var t float64
	for c := 1; c <= 5; c++ {
		t += stats[fmt.Sprintf("%supstream_rq_%dxx", prefix, c)]
	}
	return t
}

// windowUsable reports whether r's last interval can be read for rises: it
// has a previous report, taken after the rollout started.
func windowUsable(r NodeReport, since time.Time) bool {
	return r.Prev != nil && !r.PrevAt.Before(since)
}

// errorRate sums the canary's 5xx and completed requests over every fresh
// node's last interval and returns a finding when the share is too high.
func errorRate(fresh []NodeReport, q policy.SignalQuery) (string, bool) {
	maxRate := q.Analysis.MaxErrorRateValue()
	if maxRate <= 0 {
		return "", false
	}
	minReq := float64(max(q.Analysis.MinRequestsValue(), 1))
	prefix := "cluster." + q.CanaryCluster + "."
	var errs, total float64
	var nodes []string
	for _, r := range fresh {
		if !windowUsable(r, q.Since) {
			continue
		}
		e := r.Latest[prefix+statRq5xx] - r.Prev[prefix+statRq5xx]
		t := completed(r.Latest, q.CanaryCluster) - completed(r.Prev, q.CanaryCluster)
		if e < 0 || t < 0 {
			continue // a counter went down: not a window to read
		}
		errs += e
		total += t
		if t > 0 {
			nodes = append(nodes, r.Node)
		}
	}
	if total < minReq || total == 0 {
		return "", false
	}
	rate := errs / total
	if rate <= maxRate {
		return "", false
	}
	return fmt.Sprintf("cluster %s: 5xx rate %.1f%% (%g of %g requests on %s) above maxErrorRate %g%%",
		q.CanaryCluster, 100*rate, errs, total, strings.Join(nodes, ", "), 100*maxRate), true
}

func staleReason(now, since time.Time, staleAfter time.Duration, nodes []NodeReport) string {
	if len(nodes) == 0 {
		return "no Envoy stats received from any node"
	}
	newest := nodes[0]
	for _, r := range nodes[1:] {
		if r.At.After(newest.At) {
			newest = r
		}
	}
	if age := now.Sub(newest.At); age > staleAfter {
		return fmt.Sprintf("no node has reported within staleAfter %s (newest: node %s, %s ago)",
			staleAfter, newest.Node, age.Round(time.Millisecond))
	}
	return fmt.Sprintf("no node has reported since the rollout started at %s (newest: node %s at %s)",
		since.Format(time.RFC3339), newest.Node, newest.At.Format(time.RFC3339))
}

func joinReasons(rs []string) string {
	if len(rs) > maxReasons {
		return strings.Join(rs[:maxReasons], "; ") + fmt.Sprintf("; and %d more", len(rs)-maxReasons)
	}
	return strings.Join(rs, "; ")
}

// ActiveRequests implements policy.SignalGate: the sum of
// cluster.<cluster>.upstream_rq_active over nodes that reported within
// ActiveFreshness. A node that reported but sent no such stat counts as 0
// (Envoy sends only used stats); with no recent report at all the answer is
// unknown.
func (g *Gate) ActiveRequests(now time.Time, cluster string) (float64, bool) {
	name := "cluster." + cluster + "." + statRqActive
	var sum float64
	known := false
	for _, r := range g.reports() {
		if now.Sub(r.At) > ActiveFreshness {
			continue
		}
		known = true
		sum += r.Latest[name]
	}
	return sum, known
}

// Reports implements model.StatsSource: every source's reports merged,
// one per node. The engine counts the observed split per step from it, so
// a source added to the gate feeds that too.
func (g *Gate) Reports() []NodeReport { return g.reports() }

// reports merges the sources' reports. A node listed by two sources (a
// sink stream and a named admin target) is counted once, by its newest
// report.
func (g *Gate) reports() []NodeReport {
	byNode := map[string]NodeReport{}
	for _, s := range g.sources {
		for _, r := range s.Reports() {
			if old, ok := byNode[r.Node]; !ok || r.At.After(old.At) {
				byNode[r.Node] = r
			}
		}
	}
	out := make([]NodeReport, 0, len(byNode))
	for _, r := range byNode {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
