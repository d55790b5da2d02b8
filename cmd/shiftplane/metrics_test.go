package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shiftplane/shiftplane/policy"
)

// scrape returns the /metrics text at url as series line → value text.
func scrape(t *testing.T, url string) map[string]string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		out[line[:i]] = line[i+1:]
	}
	return out
}

func withPrefix(series map[string]string, prefix string) []string {
	var out []string
	for s := range series {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}

// The real server's /metrics: build info, xDS counters at 0 for every type
// before any Envoy connected, and the signal state of an unfinished rollout,
// gone once it finished.
func TestServeMetrics(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, filepath.Join(dir, "s.db"))
	// The beforeShift hook holds the rollout in PENDING until release, then
	// fails it: a finished (FAILED) rollout without needing an Envoy.
	release := make(chan struct{})
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusForbidden)
	}))
	t.Cleanup(hook.Close)
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	plan := writeFile(t, dir, "web.yaml", goodPlan+"hooks: {beforeShift: [{webhook: {url: \""+hook.URL+"\"}}]}\n")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *policy.Engine, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, []string{plan}, slog.New(slog.DiscardHandler), func(e *policy.Engine) { ready <- e })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	var engine *policy.Engine
	select {
	case engine = <-ready:
	case err := <-done:
		t.Fatalf("serve ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not get ready")
	}
	url := "http://" + cfg.HTTP.Address + "/metrics"

	m := scrape(t, url)
	_, _, goVersion := buildInfo()
	if goVersion != runtime.Version() {
		t.Errorf("build info goversion = %q, want %q", goVersion, runtime.Version())
	}
	if info := withPrefix(m, "shiftplane_build_info{"); len(info) != 1 || m[info[0]] != "1" ||
		!strings.Contains(info[0], fmt.Sprintf(`goversion=%q`, runtime.Version())) || !strings.Contains(info[0], `revision="`) || !strings.Contains(info[0], `version="`) {
		t.Errorf("shiftplane_build_info series %v, want one at 1 with version, revision and goversion=%s", info, runtime.Version())
	}
	for _, name := range []string{"shiftplane_xds_pushes_total", "shiftplane_xds_nacks_total"} {
		for _, typ := range []string{"Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"} {
			if s := fmt.Sprintf("%s{type=%q}", name, typ); m[s] != "0" {
				t.Errorf("%s = %q before any Envoy connected, want 0", s, m[s])
			}
		}
	}
	if n := m["shiftplane_convergence_seconds_count"]; n != "0" {
		t.Errorf("shiftplane_convergence_seconds_count = %q with no Envoy connected, want 0: nothing converged", n)
	}

	// No Envoy, no stats: the rollout's signal is STALE, never CLEAR.
	waitScrape(t, url, `shiftplane_signal_state{rollout="web",state="STALE"}`, "1")
	m = scrape(t, url)
	for s, want := range map[string]string{
		`shiftplane_signal_state{rollout="web",state="CLEAR"}`:  "0",
		`shiftplane_signal_state{rollout="web",state="FIRING"}`: "0",
		`shiftplane_signal_firing{rollout="web"}`:               "0",
	} {
		if m[s] != want {
			t.Errorf("%s = %q, want %s", s, m[s], want)
		}
	}

	if st, err := engine.Get("web"); err != nil || st.State.Phase != policy.PhasePending {
		t.Fatalf("rollout web: %v, %v; want it PENDING on its hook", st.State.Phase, err)
	}
	released = true
	close(release)
	waitScrape(t, url, `shiftplane_rollout_phase{phase="FAILED",rollout="web"}`, "1")
	if left := withPrefix(scrape(t, url), "shiftplane_signal_"); len(left) > 0 {
		t.Errorf("signal series of a finished rollout: %v, want none", left)
	}
}

func waitScrape(t *testing.T, url, series, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := scrape(t, url)[series]
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q, want %s", series, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSignalMetrics(t *testing.T) {
	status := func(name string, phase policy.Phase, sig policy.SignalState) policy.Status {
		var s policy.Status
		s.Plan.Name, s.State.Phase, s.Signal.State = name, phase, sig
		return s
	}
	list := []policy.Status{
		status("firing", policy.PhaseHolding, policy.SignalFiring),
		status("stale", policy.PhaseProgressing, policy.SignalStale),
		status("clear", policy.PhasePaused, policy.SignalClear),
		status("done", policy.PhaseSucceeded, policy.SignalClear),
		status("rolled", policy.PhaseRolledBack, policy.SignalFiring),
	}
	reg := prometheus.NewRegistry()
	registerSignalMetrics(reg, func() []policy.Status { return list })
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	got := scrape(t, srv.URL)
	want := map[string]string{
		`shiftplane_signal_firing{rollout="clear"}`:                "0",
		`shiftplane_signal_firing{rollout="firing"}`:               "1",
		`shiftplane_signal_firing{rollout="stale"}`:                "0",
		`shiftplane_signal_state{rollout="clear",state="CLEAR"}`:   "1",
		`shiftplane_signal_state{rollout="clear",state="FIRING"}`:  "0",
		`shiftplane_signal_state{rollout="clear",state="STALE"}`:   "0",
		`shiftplane_signal_state{rollout="firing",state="CLEAR"}`:  "0",
		`shiftplane_signal_state{rollout="firing",state="FIRING"}`: "1",
		`shiftplane_signal_state{rollout="firing",state="STALE"}`:  "0",
		`shiftplane_signal_state{rollout="stale",state="CLEAR"}`:   "0",
		`shiftplane_signal_state{rollout="stale",state="FIRING"}`:  "0",
		`shiftplane_signal_state{rollout="stale",state="STALE"}`:   "1",
	}
	for s, v := range want {
		if got[s] != v {
			t.Errorf("%s = %q, want %s", s, got[s], v)
		}
	}
	// Finished rollouts (SUCCEEDED, ROLLED_BACK) have no series at all.
	if n := len(withPrefix(got, "shiftplane_signal_")); n != len(want) {
		t.Errorf("%d signal series, want %d: %v", n, len(want), withPrefix(got, "shiftplane_signal_"))
	}
}

// The observed split's metrics: the counters per version, and the share
// only while the current step has counted requests (no data is not 0%).
func TestObservedMetrics(t *testing.T) {
	running := policy.Status{Rollout: policy.Rollout{Plan: policy.Plan{Name: "web"}, State: policy.State{Phase: policy.PhaseProgressing}},
		Observed: policy.Observed{Running: true, Stable: 900, Canary: 100, Steps: []policy.StepTraffic{{Weight: 10, Stable: 540, Canary: 60, Nodes: 2}}}}
	quiet := policy.Status{Rollout: policy.Rollout{Plan: policy.Plan{Name: "quiet"}, State: policy.State{Phase: policy.PhaseProgressing}},
		Observed: policy.Observed{Running: true, Steps: []policy.StepTraffic{{Weight: 10, Nodes: 2}}}}
	reg := prometheus.NewRegistry()
	registerObservedMetrics(reg, func() []policy.Status { return []policy.Status{running, quiet} })
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	got := scrape(t, srv.URL)
	for series, want := range map[string]string{
		`shiftplane_rollout_requests_total{rollout="web",version="stable"}`:   "900",
		`shiftplane_rollout_requests_total{rollout="web",version="canary"}`:   "100",
		`shiftplane_rollout_requests_total{rollout="quiet",version="canary"}`: "0",
		`shiftplane_rollout_observed_canary_share{rollout="web"}`:             "10",
	} {
		if got[series] != want {
			t.Errorf("%s = %q, want %s", series, got[series], want)
		}
	}
	if v, ok := got[`shiftplane_rollout_observed_canary_share{rollout="quiet"}`]; ok {
		t.Errorf("a step without requests exports a share of %s", v)
	}
}
