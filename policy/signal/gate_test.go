package signal

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// fakeSource is a StatsSource whose reports a test sets.
type fakeSource struct {
	mu      sync.Mutex
	reports []NodeReport
}

func (f *fakeSource) Reports() []NodeReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]NodeReport(nil), f.reports...)
}

func (f *fakeSource) set(rs ...NodeReport) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = rs
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// node builds a report received ago before t0, with the previous one
// received a second before that (prev nil: no previous report).
func node(name string, ago time.Duration, prev, latest map[string]float64) NodeReport {
	r := NodeReport{Node: name, At: t0.Add(-ago), Latest: latest, Prev: prev}
	if prev != nil {
		r.PrevAt = r.At.Add(-time.Second)
	}
	return r
}

const (
	active   = "cluster.app-v2.outlier_detection.ejections_active"
	detected = "cluster.app-v2.outlier_detection.ejections_detected_consecutive_5xx"
	rqActive = "cluster.app-v2.upstream_rq_active"
	done     = "cluster.app-v2.upstream_rq_completed"
	rq5xx    = "cluster.app-v2.upstream_rq_5xx"
	rq2xx    = "cluster.app-v2.upstream_rq_2xx"
)

func query(a policy.Analysis) policy.SignalQuery {
	if a.StaleAfter == 0 {
		a.StaleAfter = policy.Duration(10 * time.Second)
	}
	return policy.SignalQuery{Rollout: "checkout", CanaryCluster: "app-v2", Analysis: a, Since: t0.Add(-time.Hour)}
}

func TestEvaluateStats(t *testing.T) {
	rate := policy.Analysis{MaxErrorRate: ptr(0.05), MinRequests: ptr(20)}
	tests := map[string]struct {
		nodes    []NodeReport
		analysis policy.Analysis
		since    time.Time // zero: an hour before t0
		want     policy.SignalState
		reason   string // the whole reason, or with a trailing "*" its prefix
	}{
		"no node has ever reported": {
			want:   policy.SignalStale,
			reason: "no Envoy stats received from any node",
		},
		"newest report older than staleAfter": {
			nodes: []NodeReport{
				node("envoy-1", 30*time.Second, nil, map[string]float64{active: 1}),
				node("envoy-2", 11*time.Second, nil, map[string]float64{}),
			},
			want:   policy.SignalStale,
			reason: "no node has reported within staleAfter 10s (newest: node envoy-2, 11s ago)",
		},
		"staleAfter from the plan": {
			nodes:    []NodeReport{node("envoy-1", 30*time.Second, nil, map[string]float64{})},
			analysis: policy.Analysis{StaleAfter: policy.Duration(time.Minute)},
			want:     policy.SignalClear,
			reason:   "no ejections of app-v2 on 1 node(s)",
		},
		"no report since the rollout started": {
			nodes:  []NodeReport{node("envoy-1", 2*time.Second, nil, map[string]float64{})},
			since:  t0.Add(-time.Second),
			want:   policy.SignalStale,
			reason: "no node has reported since the rollout started at 2026-03-01T11:59:59Z (newest: node envoy-1 at 2026-03-01T11:59:58Z)",
		},
		"fresh and quiet": {
			nodes: []NodeReport{
				node("envoy-1", time.Second, map[string]float64{detected: 2}, map[string]float64{detected: 2, active: 0}),
				node("envoy-2", 2*time.Second, nil, map[string]float64{}),
			},
			want:   policy.SignalClear,
			reason: "no ejections of app-v2 on 2 node(s)",
		},
		"ejection active": {
			nodes:  []NodeReport{node("envoy-1", time.Second, nil, map[string]float64{active: 1})},
			want:   policy.SignalFiring,
			reason: "node envoy-1: cluster.app-v2.outlier_detection.ejections_active=1",
		},
		"ejection active on another cluster": {
			nodes: []NodeReport{node("envoy-1", time.Second, nil, map[string]float64{
				"cluster.app-v1.outlier_detection.ejections_active": 1,
			})},
			want:   policy.SignalClear,
			reason: "no ejections of app-v2 on 1 node(s)",
		},
		"ejections detected rose": {
			nodes:  []NodeReport{node("envoy-2", time.Second, map[string]float64{detected: 1}, map[string]float64{detected: 3})},
			want:   policy.SignalFiring,
			reason: "node envoy-2: cluster.app-v2.outlier_detection.ejections_detected_consecutive_5xx rose 1→3",
		},
		"ejections detected first seen counts from 0": {
			nodes:  []NodeReport{node("envoy-2", time.Second, map[string]float64{}, map[string]float64{detected: 1})},
			want:   policy.SignalFiring,
			reason: "node envoy-2: cluster.app-v2.outlier_detection.ejections_detected_consecutive_5xx rose 0→1",
		},
		"first report has no window": {
			nodes:  []NodeReport{node("envoy-1", time.Second, nil, map[string]float64{detected: 7})},
			want:   policy.SignalClear,
			reason: "no ejections of app-v2 on 1 node(s)",
		},
		"counter went down is no rise": {
			nodes:  []NodeReport{node("envoy-1", time.Second, map[string]float64{detected: 7}, map[string]float64{detected: 1})},
			want:   policy.SignalClear,
			reason: "no ejections of app-v2 on 1 node(s)",
		},
		"window that began before the rollout": {
			nodes:  []NodeReport{node("envoy-1", time.Second, map[string]float64{detected: 1}, map[string]float64{detected: 3})},
			since:  t0.Add(-1500 * time.Millisecond),
			want:   policy.SignalClear,
			reason: "no ejections of app-v2 on 1 node(s)",
		},
		"stale node's ejection is not read": {
			nodes: []NodeReport{
				node("envoy-1", time.Minute, nil, map[string]float64{active: 1}),
				node("envoy-2", time.Second, nil, map[string]float64{active: 0}),
			},
			want:   policy.SignalClear,
			reason: "no ejections of app-v2 on 1 node(s)",
		},
		"several nodes name every finding": {
			nodes: []NodeReport{
				node("envoy-1", time.Second, nil, map[string]float64{active: 2}),
				node("envoy-2", time.Second, map[string]float64{detected: 1, active: 1}, map[string]float64{detected: 2, active: 1}),
			},
			want: policy.SignalFiring,
			reason: "node envoy-1: cluster.app-v2.outlier_detection.ejections_active=2; " +
				"node envoy-2: cluster.app-v2.outlier_detection.ejections_active=1; " +
				"node envoy-2: cluster.app-v2.outlier_detection.ejections_detected_consecutive_5xx rose 1→2",
		},
		"long reasons are cut": {
			nodes: []NodeReport{
				node("e1", 0, nil, map[string]float64{active: 1}), node("e2", 0, nil, map[string]float64{active: 1}),
				node("e3", 0, nil, map[string]float64{active: 1}), node("e4", 0, nil, map[string]float64{active: 1}),
				node("e5", 0, nil, map[string]float64{active: 1}), node("e6", 0, nil, map[string]float64{active: 1}),
				node("e7", 0, nil, map[string]float64{active: 1}),
			},
			want:   policy.SignalFiring,
			reason: "node e1: cluster.app-v2.outlier_detection.ejections_active=1; node e2: *",
		},
		"error rate above maxErrorRate": {
			nodes:    []NodeReport{node("envoy-1", time.Second, map[string]float64{done: 100, rq5xx: 5}, map[string]float64{done: 200, rq5xx: 15})},
			analysis: rate,
			want:     policy.SignalFiring,
			reason:   "cluster app-v2: 5xx rate 10.0% (10 of 100 requests on envoy-1) above maxErrorRate 5%",
		},
		"error rate below maxErrorRate": {
			nodes:    []NodeReport{node("envoy-1", time.Second, map[string]float64{done: 100}, map[string]float64{done: 200, rq5xx: 5})},
			analysis: rate,
			want:     policy.SignalClear,
		},
		"error rate needs minRequests": {
			nodes:    []NodeReport{node("envoy-1", time.Second, map[string]float64{}, map[string]float64{done: 19, rq5xx: 19})},
			analysis: rate,
			want:     policy.SignalClear,
		},
		"error rate summed over nodes": {
			nodes: []NodeReport{
				node("envoy-1", time.Second, map[string]float64{done: 10}, map[string]float64{done: 25, rq5xx: 3}),
				node("envoy-2", time.Second, map[string]float64{done: 10}, map[string]float64{done: 25}),
			},
			analysis: rate,
			want:     policy.SignalFiring,
			reason:   "cluster app-v2: 5xx rate 10.0% (3 of 30 requests on envoy-1, envoy-2) above maxErrorRate 5%",
		},
		"error rate from response classes without completed": {
			nodes:    []NodeReport{node("envoy-1", time.Second, map[string]float64{}, map[string]float64{rq2xx: 90, rq5xx: 10})},
			analysis: rate,
			want:     policy.SignalFiring,
			reason:   "cluster app-v2: 5xx rate 10.0% (10 of 100 requests on envoy-1) above maxErrorRate 5%",
		},
		"error rate skips a node whose counters went down": {
			nodes: []NodeReport{
				node("envoy-1", time.Second, map[string]float64{done: 100}, map[string]float64{done: 200, rq5xx: 10}),
				node("envoy-2", time.Second, map[string]float64{done: 0, rq5xx: 500}, map[string]float64{done: 100, rq5xx: 10}),
				node("envoy-3", time.Second, map[string]float64{done: 1000, rq5xx: 0}, map[string]float64{done: 100, rq5xx: 50}),
			},
			analysis: rate,
			want:     policy.SignalFiring,
			reason:   "cluster app-v2: 5xx rate 10.0% (10 of 100 requests on envoy-1) above maxErrorRate 5%",
		},
		"error rate judged by default (5%), ejection or not": {
			nodes:  []NodeReport{node("envoy-1", time.Second, map[string]float64{}, map[string]float64{done: 100, rq5xx: 100})},
			want:   policy.SignalFiring,
			reason: "cluster app-v2: 5xx rate 100.0% (100 of 100 requests on envoy-1) above maxErrorRate 5%",
		},
		"error rate 0 disables it": {
			nodes:    []NodeReport{node("envoy-1", time.Second, map[string]float64{}, map[string]float64{done: 100, rq5xx: 100})},
			analysis: policy.Analysis{MaxErrorRate: ptr(0.0)},
			want:     policy.SignalClear,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			src := &fakeSource{}
			src.set(tc.nodes...)
			g := NewGate(nil, src)
			q := query(tc.analysis)
			if !tc.since.IsZero() {
				q.Since = tc.since
			}
			got := g.Evaluate(t0, q)
			if got.State != tc.want {
				t.Fatalf("state = %s (%s), want %s", got.State, got.Reason, tc.want)
			}
			checkReason(t, got.Reason, tc.reason)
		})
	}
}

func checkReason(t *testing.T, got, want string) {
	t.Helper()
	if want == "" {
		return
	}
	if p, ok := strings.CutSuffix(want, "*"); ok {
		if !strings.HasPrefix(got, p) {
			t.Errorf("reason = %q, want prefix %q", got, p)
		}
		if strings.Count(got, "; ") != maxReasons || !strings.HasSuffix(got, "; and 2 more") {
			t.Errorf("reason = %q, want %d findings and a count of the rest", got, maxReasons)
		}
		return
	}
	if got != want {
		t.Errorf("reason = %q\nwant     %q", got, want)
	}
}

func TestActiveRequests(t *testing.T) {
	tests := map[string]struct {
		sources   [][]NodeReport
		want      float64
		wantKnown bool
	}{
		"no node":   {sources: [][]NodeReport{nil}},
		"no source": {},
		"summed over fresh nodes": {
			sources: [][]NodeReport{{
				node("envoy-1", time.Second, nil, map[string]float64{rqActive: 3}),
				node("envoy-2", 5*time.Second, nil, map[string]float64{rqActive: 2}),
			}},
			want: 5, wantKnown: true,
		},
		"a node without the stat counts 0": {
			sources:   [][]NodeReport{{node("envoy-1", time.Second, nil, map[string]float64{done: 10})}},
			want:      0,
			wantKnown: true,
		},
		"stale nodes are not believed": {
			sources: [][]NodeReport{{
				node("envoy-1", 11*time.Second, nil, map[string]float64{rqActive: 4}),
			}},
		},
		"stale node left out of the sum": {
			sources: [][]NodeReport{{
				node("envoy-1", 11*time.Second, nil, map[string]float64{rqActive: 4}),
				node("envoy-2", time.Second, nil, map[string]float64{rqActive: 1}),
			}},
			want: 1, wantKnown: true,
		},
		"same node in two sources counts once, newest": {
			sources: [][]NodeReport{
				{node("envoy-1", 2*time.Second, nil, map[string]float64{rqActive: 4})},
				{node("envoy-1", time.Second, nil, map[string]float64{rqActive: 1}), node("envoy-2", time.Second, nil, map[string]float64{rqActive: 2})},
			},
			want: 3, wantKnown: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var srcs []StatsSource
			for _, rs := range tc.sources {
				s := &fakeSource{}
				s.set(rs...)
				srcs = append(srcs, s)
			}
			got, known := NewGate(nil, srcs...).ActiveRequests(t0, "app-v2")
			if got != tc.want || known != tc.wantKnown {
				t.Errorf("ActiveRequests = %g, %v; want %g, %v", got, known, tc.want, tc.wantKnown)
			}
		})
	}
}

func TestReportedSignals(t *testing.T) {
	src := &fakeSource{}
	src.set(node("envoy-1", 0, nil, map[string]float64{}))
	g := NewGate(nil, src)
	q := query(policy.Analysis{})
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	fresh := func(d time.Duration) { src.set(node("envoy-1", -d, nil, map[string]float64{})) }
	expect := func(d time.Duration, want policy.SignalState, reason string) {
		t.Helper()
		fresh(d)
		got := g.Evaluate(at(d), q)
		if got.State != want {
			t.Fatalf("at +%s: state = %s (%s), want %s", d, got.State, got.Reason, want)
		}
		checkReason(t, got.Reason, reason)
	}

	expect(0, policy.SignalClear, "")
	if err := g.Report("checkout", policy.SignalFiring, "HighLatency", "alertmanager", time.Minute, at(time.Second)); err != nil {
		t.Fatal(err)
	}
	expect(30*time.Second, policy.SignalFiring, "reported by alertmanager: HighLatency")
	// Another source's CLEAR does not cancel it.
	if err := g.Report("checkout", policy.SignalClear, "", "grafana", time.Minute, at(31*time.Second)); err != nil {
		t.Fatal(err)
	}
	expect(32*time.Second, policy.SignalFiring, "reported by alertmanager: HighLatency")
	// Another rollout is not affected.
	if got := g.Evaluate(at(32*time.Second), policy.SignalQuery{Rollout: "other", CanaryCluster: "x", Since: t0}); got.State != policy.SignalClear {
		t.Errorf("other rollout: %s (%s), want CLEAR", got.State, got.Reason)
	}
	// The TTL runs out.
	expect(61*time.Second, policy.SignalClear, "")

	// A reported FIRING beats stale stats.
	if err := g.Report("checkout", policy.SignalFiring, "", "pager", 10*time.Minute, at(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	src.set()
	if got := g.Evaluate(at(3*time.Minute), q); got.State != policy.SignalFiring || got.Reason != "reported by pager" {
		t.Errorf("reported firing with no stats: %s (%s), want FIRING by pager", got.State, got.Reason)
	}
	// The same source clears its own FIRING.
	if err := g.Report("checkout", policy.SignalClear, "resolved", "pager", time.Minute, at(4*time.Minute)); err != nil {
		t.Fatal(err)
	}
	expect(5*time.Minute, policy.SignalClear, "")

	// A report made before the rollout (re)started does not count.
	if err := g.Report("checkout", policy.SignalFiring, "old", "pager", time.Hour, at(6*time.Minute)); err != nil {
		t.Fatal(err)
	}
	restarted := q
	restarted.Since = at(7 * time.Minute)
	fresh(8 * time.Minute)
	if got := g.Evaluate(at(8*time.Minute), restarted); got.State != policy.SignalClear {
		t.Errorf("firing reported before Since: %s (%s), want CLEAR", got.State, got.Reason)
	}

	g.Forget("checkout")
	if got := g.Evaluate(at(8*time.Minute), q); got.State != policy.SignalClear {
		t.Errorf("after Forget: %s (%s), want CLEAR", got.State, got.Reason)
	}
}

func TestReportedOnly(t *testing.T) {
	g := NewGate(nil) // no stats source: reported signals are all there is
	q := query(policy.Analysis{})
	if got := g.Evaluate(t0, q); got.State != policy.SignalStale {
		t.Errorf("nothing reported: %s (%s), want STALE", got.State, got.Reason)
	}
	if err := g.Report("checkout", policy.SignalClear, "", "ci", time.Minute, t0); err != nil {
		t.Fatal(err)
	}
	if got := g.Evaluate(t0.Add(59*time.Second), q); got.State != policy.SignalClear {
		t.Errorf("reported clear: %s (%s), want CLEAR", got.State, got.Reason)
	}
	if got := g.Evaluate(t0.Add(time.Minute), q); got.State != policy.SignalStale {
		t.Errorf("clear expired: %s (%s), want STALE", got.State, got.Reason)
	}
}

func TestReportRejectsBadInput(t *testing.T) {
	tests := map[string]struct {
		rollout, source string
		state           policy.SignalState
		ttl             time.Duration
		field           string
	}{
		"empty rollout": {source: "am", state: policy.SignalFiring, ttl: time.Minute, field: "rollout: must not be empty"},
		"empty source":  {rollout: "checkout", state: policy.SignalFiring, ttl: time.Minute, field: "source: must not be empty"},
		"stale state":   {rollout: "checkout", source: "am", state: policy.SignalStale, ttl: time.Minute, field: `state: must be FIRING or CLEAR, got "STALE"`},
		"unknown state": {rollout: "checkout", source: "am", state: "firing", ttl: time.Minute, field: `state: must be FIRING or CLEAR, got "firing"`},
		"zero ttl":      {rollout: "checkout", source: "am", state: policy.SignalFiring, field: "ttl: must be positive, got 0s"},
		"negative ttl":  {rollout: "checkout", source: "am", state: policy.SignalFiring, ttl: -time.Second, field: "ttl: must be positive, got -1s"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			src := &fakeSource{}
			src.set(node("envoy-1", 0, nil, map[string]float64{}))
			g := NewGate(nil, src)
			err := g.Report(tc.rollout, tc.state, "why", tc.source, tc.ttl, t0)
			if !errors.Is(err, ErrInvalidReport) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Report error = %v, want ErrInvalidReport naming %q", err, tc.field)
			}
			if got := g.Evaluate(t0, query(policy.Analysis{})); got.State != policy.SignalClear {
				t.Errorf("after a rejected report: %s (%s), want CLEAR", got.State, got.Reason)
			}
		})
	}
}

func TestWanted(t *testing.T) {
	tests := map[string]bool{
		"cluster.app-v2.outlier_detection.ejections_active":  true,
		"cluster.app-v2.upstream_rq_5xx":                     true,
		"cluster.app-v2.upstream_rq_active":                  true,
		"cluster.app-v2.upstream_cx_active":                  false,
		"cluster.app-v2.zone.a.b.upstream_rq_2xx":            false,
		"cluster.outlier_detection.ejections_active":         false, // tag-extracted: no cluster
		"vhost.v.vcluster.c.upstream_rq_5xx":                 false,
		"http.ingress.downstream_rq_5xx":                     false,
		"cluster..upstream_rq_5xx":                           false,
		"cluster_manager.outlier_detection.ejections_active": false,
	}
	for name, want := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Wanted(name); got != want {
				t.Errorf("Wanted(%q) = %v, want %v", name, got, want)
			}
		})
	}
}

func TestCountersWentDown(t *testing.T) {
	tests := map[string]struct {
		prev, latest map[string]float64
		want         bool
	}{
		"rose":               {prev: map[string]float64{done: 1}, latest: map[string]float64{done: 2}},
		"new stat":           {prev: map[string]float64{}, latest: map[string]float64{done: 2}},
		"counter down":       {prev: map[string]float64{done: 5}, latest: map[string]float64{done: 2}, want: true},
		"counter gone":       {prev: map[string]float64{done: 5}, latest: map[string]float64{}}, // a withdrawn cluster
		"gauge down is fine": {prev: map[string]float64{rqActive: 5, active: 1}, latest: map[string]float64{rqActive: 0}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := CountersWentDown(tc.prev, tc.latest, nil); got != tc.want {
				t.Errorf("CountersWentDown = %v, want %v", got, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
