package e2e

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// observedTolerance is how far the canary share shiftplane reports for a
// step may be from the share the backends' answers give over the same
// report intervals.
const observedTolerance = 1.0 // percentage points

// observedRate is the load through each Envoy, in requests per second.
const observedRate = 300

// TestObservedSplit: an Envoy under load carries a rollout through 10, 40
// and 70 % to promotion. Per step, the split shiftplane reports through
// the policy API (requests per version, from the stats the Envoy streams)
// matches what the backends answered over the same report intervals
// within ±1 pp; and the requests it counted per version match the
// backends' answers and the Prometheus counters.
//
// One Envoy, because the rig's Envoys share the listener port
// (SO_REUSEPORT): the kernel, not the test, picks the Envoy that serves a
// connection, so a request cannot be matched to a node's report intervals.
// (Measured: a drained second Envoy takes connections again once its
// listener is updated.) Several nodes (joining, leaving, restarting) are
// covered by the unit tests of policy/observed.go.
func TestObservedSplit(t *testing.T) {
	steps := []planStep{{10, 5 * time.Second}, {40, 5 * time.Second}, {70, 5 * time.Second}, {100, 0}}
	runObserved(t, steps, nil)
}

// TestObservedSplitEnvoyRestart: the Envoy restarts inside the step at
// 40 %; its counters begin again at 0, and what it served before and
// after is still counted exactly once.
func TestObservedSplitEnvoyRestart(t *testing.T) {
	steps := []planStep{{10, 3 * time.Second}, {40, 9 * time.Second}, {70, 3 * time.Second}, {100, 0}}
	runObserved(t, steps, func(f *fleet, load *fleetLoad) {
		waitEngine(t, f.sp, time.Minute, "PROGRESSING", 40)
		f.waitFleetWeight(t, 10*time.Second, 40)
		time.Sleep(1500 * time.Millisecond) // some settled traffic at 40 first
		load.stopOne(0)
		// Envoy flushes stats every second; wait for a flush of its last
		// requests before stopping it.
		time.Sleep(1500 * time.Millisecond)
		before, _ := statValue(t.Context(), f.envoys[0], "cluster.web-v1.upstream_rq_completed")
		if err := f.envoys[0].Restart(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := f.envoys[0].WaitListener(t.Context(), f.listen); err != nil {
			t.Fatal(err)
		}
		load.start(t, 0, "http://"+f.listen+"/")
		time.Sleep(1500 * time.Millisecond)
		after, _ := statValue(t.Context(), f.envoys[0], "cluster.web-v1.upstream_rq_completed")
		t.Logf("the Envoy restarted in the 40%% step: its web-v1 upstream_rq_completed was %g before, %g after", before, after)
		if after >= before {
			t.Errorf("the restart did not reset the counter (%g before, %g after): the test does not test a reset", before, after)
		}
	})
}

// runObserved runs steps on two Envoys under load, calls during (if not
// nil) while the rollout runs, and compares shiftplane's observed split
// with the backends' answers.
func runObserved(t *testing.T, steps []planStep, during func(*fleet, *fleetLoad)) {
	f := startFleet(t, 1)
	rc, _ := apiClients(t, f.sp)
	f.sp.WritePlan("web.yaml", f.plan(planSpec{Steps: steps}))
	f.waitListeners(t)
	load := f.startLoad(t, observedRate)

	// While the rollout runs, the API shows the current step's split.
	var (
		mu   sync.Mutex
		live []string
	)
	pollCtx, stopPoll := context.WithCancel(t.Context())
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for pollCtx.Err() == nil {
			ro, err := getRollout(pollCtx, rc)
			if o := ro.GetObserved(); err == nil && o != nil && o.CanaryShare != nil {
				s := fmt.Sprintf("%d%%→%.1f%%", o.GetWeight(), o.GetCanaryShare())
				mu.Lock()
				if len(live) == 0 || live[len(live)-1] != s {
					live = append(live, s)
				}
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	if during != nil {
		during(f, load)
	}

	waitEngine(t, f.sp, 50*time.Second, "SUCCEEDED", 100)
	stopPoll()
	<-polled
	recs := load.Stop()
	requireNoFailures(t, "observed split", recs)
	ro, err := getRollout(t.Context(), rc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("live shares seen through the API (weight→observed): %s", strings.Join(live, " "))
	if len(live) == 0 {
		t.Errorf("the API never showed an observed share while the rollout ran")
	}
	if ro.GetObserved() != nil {
		t.Errorf("a finished rollout still shows a current step: %v", ro.GetObserved())
	}

	envoyOf := map[string]int{}
	for i := range f.envoys {
		envoyOf[nodeID(t, i)] = i
	}
	// The backends' answers per step: for each node, the requests through
	// that node's Envoy that ended inside the node's counted report
	// intervals (from, to].
	type row struct {
		weight                 int32
		spV1, spV2, bkV1, bkV2 int
		transition             uint64
		nodes                  int
		spShare, bkShare       float64
	}
	var rows []row
	for _, s := range ro.GetObservedSteps() {
		r := row{weight: s.GetWeight(), spV1: int(s.GetStableRequests()), spV2: int(s.GetCanaryRequests()),
			transition: s.GetTransitionStableRequests() + s.GetTransitionCanaryRequests(), nodes: len(s.GetNodeTraffic())}
		for _, n := range s.GetNodeTraffic() {
			i, ok := envoyOf[n.GetNode()]
			if !ok {
				t.Errorf("step %d: node %q is none of the fleet's Envoys", s.GetStepIndex()+1, n.GetNode())
				continue
			}
			if n.GetFrom() == nil || n.GetTo() == nil {
				continue // the node counted only transition intervals
			}
			from, to := n.GetFrom().AsTime(), n.GetTo().AsTime()
			for _, rec := range recs {
				if rec.Envoy != i || !rec.End().After(from) || rec.End().After(to) {
					continue
				}
				switch rec.Version {
				case "v1":
					r.bkV1++
				case "v2":
					r.bkV2++
				}
			}
		}
		r.spShare, r.bkShare = math.NaN(), math.NaN()
		if s.CanaryShare != nil {
			r.spShare = s.GetCanaryShare()
		}
		if n := r.bkV1 + r.bkV2; n > 0 {
			r.bkShare = 100 * float64(r.bkV2) / float64(n)
		}
		rows = append(rows, r)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "observed split per step (%d Envoy(s), %d req/s each, %d requests):\n", len(f.envoys), observedRate, len(recs))
	fmt.Fprintf(&b, "    %-7s %-17s %-16s %-8s %-15s %-15s %-10s %s\n", "weight", "shiftplane share", "backends share", "delta", "shiftplane v1/v2", "backends v1/v2", "transition", "nodes")
	for _, r := range rows {
		fmt.Fprintf(&b, "    %-7s %-17s %-16s %-8s %-15s %-15s %-10d %d\n", fmt.Sprintf("%d%%", r.weight),
			pct(r.spShare), pct(r.bkShare), ppDelta(r.spShare, r.bkShare),
			fmt.Sprintf("%d/%d", r.spV1, r.spV2), fmt.Sprintf("%d/%d", r.bkV1, r.bkV2), r.transition, r.nodes)
	}
	t.Log(strings.TrimRight(b.String(), "\n"))

	seen := map[int32]bool{}
	for _, r := range rows {
		if r.weight == 0 {
			continue // PENDING: the load may start after it
		}
		seen[r.weight] = true
		if r.spV1+r.spV2 < 200 {
			t.Errorf("weight %d%%: shiftplane counted only %d settled requests", r.weight, r.spV1+r.spV2)
			continue
		}
		if math.IsNaN(r.spShare) || math.IsNaN(r.bkShare) || math.Abs(r.spShare-r.bkShare) > observedTolerance {
			t.Errorf("weight %d%%: shiftplane reports a %.2f%% canary share, the backends answered %.2f%% (±%.0f pp)",
				r.weight, r.spShare, r.bkShare, observedTolerance)
		}
		// The counts themselves, not only the share. The intervals are
		// bounded by when shiftplane received a report, a moment after
		// Envoy's flush (a few ms; tens on a loaded machine, ~3 requests
		// per 10 ms here), so a few requests at each end may fall on the
		// other side.
		for _, c := range [][2]int{{r.spV1, r.bkV1}, {r.spV2, r.bkV2}} {
			if d := math.Abs(float64(c[0] - c[1])); d > math.Max(10, 0.02*float64(c[1])) {
				t.Errorf("weight %d%%: shiftplane counted %d requests of a version, the backends answered %d", r.weight, c[0], c[1])
			}
		}
		if r.nodes != len(f.envoys) {
			t.Errorf("weight %d%%: %d nodes counted, want %d", r.weight, r.nodes, len(f.envoys))
		}
	}
	for _, s := range steps {
		if !seen[int32(s.Weight)] {
			t.Errorf("no observed step at weight %d%%", s.Weight)
		}
	}

	// The backends' own counters agree with the answers recorded, so the
	// answers are what the backends counted.
	sum := summarize(recs)
	if got, want := f.v1.Requests()+f.v2.Requests(), int64(sum.ByVersion["v1"]+sum.ByVersion["v2"]); got != want {
		t.Errorf("backends counted %d requests (v1 %d, v2 %d), the load recorded %d answers", got, f.v1.Requests(), f.v2.Requests(), want)
	}
	// The Prometheus counters are the API's totals, and cover every step.
	for _, v := range []struct {
		version string
		api     uint64
		steps   uint64
	}{{"stable", ro.GetObservedStableRequests(), stepSum(ro, true)}, {"canary", ro.GetObservedCanaryRequests(), stepSum(ro, false)}} {
		m := f.sp.Metric(fmt.Sprintf(`shiftplane_rollout_requests_total{rollout=%q,version=%q}`, fleetRollout, v.version))
		if m != float64(v.api) || v.api != v.steps || v.api == 0 {
			t.Errorf("%s: metric %g, API total %d, sum of the steps %d", v.version, m, v.api, v.steps)
		}
	}
	// Every step the rollout left is in its history with what it served.
	hist, err := rc.History(t.Context(), &shiftplanev1.HistoryRequest{Name: fleetRollout})
	if err != nil {
		t.Fatal(err)
	}
	onEvents := 0
	for _, e := range hist.GetEvents() {
		if e.GetObserved() != nil {
			onEvents++
		}
	}
	if onEvents != len(ro.GetObservedSteps()) {
		t.Errorf("%d history events carry a step's split, the status has %d steps", onEvents, len(ro.GetObservedSteps()))
	}
}

// stepSum is every request the rollout's observed steps counted, settled
// and transition, of the stable (or the canary).
func stepSum(ro *shiftplanev1.Rollout, stable bool) uint64 {
	var n uint64
	for _, s := range ro.GetObservedSteps() {
		if stable {
			n += s.GetStableRequests() + s.GetTransitionStableRequests()
		} else {
			n += s.GetCanaryRequests() + s.GetTransitionCanaryRequests()
		}
	}
	return n
}

func pct(v float64) string {
	if math.IsNaN(v) {
		return "no data"
	}
	return fmt.Sprintf("%.2f%%", v)
}

func ppDelta(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) {
		return "-"
	}
	return fmt.Sprintf("%+.2fpp", a-b)
}
