package main

import (
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shiftplane/shiftplane/policy"
)

// signalStates are the values of shiftplane_signal_state's state label.
var signalStates = []policy.SignalState{policy.SignalClear, policy.SignalFiring, policy.SignalStale}

// registerSignalMetrics exports each unfinished rollout's signal as the
// engine last judged it: shiftplane_signal_firing{rollout} (1 while FIRING)
// and shiftplane_signal_state{rollout,state} (1 for the current state, 0 for
// the others), so a STALE signal is visible, not just "not firing". A
// finished (terminal) or deleted rollout has no signal series.
func registerSignalMetrics(reg prometheus.Registerer, list func() []policy.Status) {
	firing := prometheus.NewDesc("shiftplane_signal_firing", "1 while the rollout's signal is firing, else 0 (stale included); unfinished rollouts only.", []string{"rollout"}, nil)
	state := prometheus.NewDesc("shiftplane_signal_state", "1 for the rollout's current signal state (CLEAR, FIRING, STALE), 0 for the others; unfinished rollouts only.", []string{"rollout", "state"}, nil)
	reg.MustRegister(collectorFunc{descs: []*prometheus.Desc{firing, state}, collect: func(ch chan<- prometheus.Metric) {
		for _, s := range list() {
			if s.State.Phase.Terminal() {
				continue
			}
			ch <- prometheus.MustNewConstMetric(firing, prometheus.GaugeValue, is(s.Signal.State == policy.SignalFiring), s.Plan.Name)
			for _, st := range signalStates {
				ch <- prometheus.MustNewConstMetric(state, prometheus.GaugeValue, is(s.Signal.State == st), s.Plan.Name, string(st))
			}
		}
	}})
}

func is(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registerBuildInfo exports shiftplane_build_info{version,revision,goversion} = 1.
func registerBuildInfo(reg prometheus.Registerer) {
	version, revision, goVersion := buildInfo()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "shiftplane_build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	}, func() float64 { return 1 }))
}

// buildInfo reads the module version, VCS revision ("-dirty" when built from
// a modified tree) and Go version the binary was built with; "unknown" for
// what the build did not record.
func buildInfo() (version, revision, goVersion string) {
	version, revision, goVersion = "unknown", "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	goVersion = bi.GoVersion
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && revision != "unknown" {
		revision += "-dirty"
	}
	return
}

// registerObservedMetrics exports the observed split the engine counted
// from the fleet's stats: shiftplane_rollout_requests_total{rollout,version}
// (version "stable" or "canary": the requests each completed since this
// process started counting the rollout) and
// shiftplane_rollout_observed_canary_share{rollout}, the canary's percentage
// of the current step's requests. The share is absent while no request was
// counted in the step (no data is not 0%) and once the rollout is finished.
func registerObservedMetrics(reg prometheus.Registerer, list func() []policy.Status) {
	requests := prometheus.NewDesc("shiftplane_rollout_requests_total", "Requests each version (stable, canary) completed, as the fleet's stats reported them.", []string{"rollout", "version"}, nil)
	share := prometheus.NewDesc("shiftplane_rollout_observed_canary_share", "The canary's percentage of the requests the fleet reported in the current step; absent while none was counted.", []string{"rollout"}, nil)
	reg.MustRegister(collectorFunc{descs: []*prometheus.Desc{requests, share}, collect: func(ch chan<- prometheus.Metric) {
		for _, s := range list() {
			ch <- prometheus.MustNewConstMetric(requests, prometheus.CounterValue, s.Observed.Stable, s.Plan.Name, "stable")
			ch <- prometheus.MustNewConstMetric(requests, prometheus.CounterValue, s.Observed.Canary, s.Plan.Name, "canary")
			if cur, ok := s.Observed.Current(); ok {
				if v, ok := cur.Share(); ok {
					ch <- prometheus.MustNewConstMetric(share, prometheus.GaugeValue, 100*v, s.Plan.Name)
				}
			}
		}
	}})
}
