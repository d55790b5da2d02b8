package dashboard

import (
	"sync"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// Sample is one point of a rollout's timeline.
type Sample struct {
	T      int64    `json:"t"` // unix ms
	Weight int      `json:"w"` // configured canary weight (what the fleet was sent)
	Share  *float64 `json:"s"` // observed canary share of requests, percent; nil when unknown
	Errors *float64 `json:"e"` // canary 5xx rate, percent; nil when no canary requests
	Signal string   `json:"sig"`
	Phase  string   `json:"p"`
}

// seriesStore keeps a bounded timeline per rollout; the engine keeps none.
type seriesStore struct {
	keep int
	mu   sync.Mutex
	m    map[string][]Sample
}

func newSeriesStore(keep int) *seriesStore { return &seriesStore{keep: keep, m: map[string][]Sample{}} }

// minSampleGap merges samples closer than this (a burst of updates).
const minSampleGap = 100 * time.Millisecond

func (s *seriesStore) add(st policy.Status, o observed, now time.Time) {
	smp := Sample{T: now.UnixMilli(), Weight: st.State.Weight, Share: o.share, Errors: o.errors, Signal: string(st.Signal.State), Phase: string(st.State.Phase)}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := st.Plan.Name
	ss := s.m[name]
	if n := len(ss); n > 0 && smp.T-ss[n-1].T < minSampleGap.Milliseconds() && ss[n-1].Weight == smp.Weight && ss[n-1].Signal == smp.Signal {
		ss[n-1] = smp
		return
	}
	ss = append(ss, smp)
	if len(ss) > s.keep {
		ss = append(ss[:0:0], ss[len(ss)-s.keep:]...)
	}
	s.m[name] = ss
}

func (s *seriesStore) get(name string) []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Sample{}, s.m[name]...)
}

// keepOnly forgets the timelines of deleted rollouts.
func (s *seriesStore) keepOnly(names []string) {
	keep := map[string]bool{}
	for _, n := range names {
		keep[n] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := range s.m {
		if !keep[n] {
			delete(s.m, n)
		}
	}
}

type observed struct {
	share, errors *float64
}

// statsFresh is how old the newest stats report may be to be drawn.
const statsFresh = 5 * time.Second

// observe reads the canary's share of completed requests and its 5xx rate
// over each node's last stats interval, summed over the fleet.
func (d *Dashboard) observe(st policy.Status, now time.Time) observed {
	if len(d.o.Stats) == 0 {
		return observed{}
	}
	canary := "cluster." + st.Plan.Canary.Cluster + "."
	stable := "cluster." + st.Plan.Stable.Cluster + "."
	var c, s, e float64
	seen := false
	for _, src := range d.o.Stats {
		for _, r := range src.Reports() {
			if r.Prev == nil || now.Sub(r.At) > statsFresh || r.At.Before(st.State.Created) {
				continue
			}
			dc, dce := completed(r.Latest, r.Prev, canary)
			ds, _ := completed(r.Latest, r.Prev, stable)
			if dc < 0 || ds < 0 || dce < 0 {
				continue // a counter went down: a restarted node
			}
			seen = true
			c, s, e = c+dc, s+ds, e+dce
		}
	}
	var o observed
	if !seen || c+s == 0 {
		return o
	}
	// A mirror step answers every user from the stable: what the canary
	// completed are Envoy's shadow copies (its 5xx rate still counts). With
	// canary.match routes as well, matched users and copies are one count.
	plan := st.Plan.WithDefaults()
	users := c
	if tr := policy.TrafficFor(plan, plan.Schedule(), st.State); tr.Mirror > 0 {
		if len(tr.Match) > 0 {
			users = -1
		} else {
			users = 0
		}
	}
	if users >= 0 && users+s > 0 {
		share := 100 * users / (users + s)
		o.share = &share
	}
	if c > 0 {
		rate := 100 * e / c
		o.errors = &rate
	}
	return o
}

// completed returns the rise of a cluster's completed requests and of its
// 5xx over one interval.
func completed(latest, prev map[string]float64, prefix string) (total, errs float64) {
	if _, ok := latest[prefix+"upstream_rq_completed"]; ok {
		total = latest[prefix+"upstream_rq_completed"] - prev[prefix+"upstream_rq_completed"]
	} else {
		for _, c := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
			total += latest[prefix+"upstream_rq_"+c] - prev[prefix+"upstream_rq_"+c]
		}
	}
	errs = latest[prefix+"upstream_rq_5xx"] - prev[prefix+"upstream_rq_5xx"]
	return total, errs
}
