package harness

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The one `shiftplane serve` test rig: the e2e and CLI tests run the binary
// as users do, through this.

// Shiftplane is a running `shiftplane serve` process and its addresses.
type Shiftplane struct {
	t        *testing.T
	bin      string
	XDSAddr  string
	APIAddr  string
	HTTPAddr string
	Store    string
	PlanDir  string
	Proc     *Process
	extra    []string
}

// StartShiftplane builds and starts `shiftplane serve` on free loopback
// ports with a store and plan folder in t.TempDir().
func StartShiftplane(t *testing.T, extraArgs ...string) *Shiftplane {
	t.Helper()
	dir := t.TempDir()
	s := &Shiftplane{
		t:        t,
		bin:      BuildBinary(t, "./cmd/shiftplane"),
		XDSAddr:  fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		APIAddr:  fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		Store:    filepath.Join(dir, "shiftplane.db"),
		PlanDir:  filepath.Join(dir, "plans"),
		extra:    extraArgs,
	}
	if err := os.MkdirAll(s.PlanDir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.Start()
	return s
}

// AddArgs adds serve flags for the next Start.
func (s *Shiftplane) AddArgs(args ...string) { s.extra = append(s.extra, args...) }

// Start (re)starts the process on the same ports and store.
func (s *Shiftplane) Start() {
	s.t.Helper()
	args := append([]string{"serve",
		"--xds-address", s.XDSAddr, "--api-address", s.APIAddr, "--http-address", s.HTTPAddr,
		"--store-path", s.Store, "--plan", s.PlanDir, "--log-level", "debug"}, s.extra...)
	s.Proc = StartProcess(s.t, s.bin, args, nil)
	s.WaitReady()
}

// WaitReady waits until /readyz answers 200.
func (s *Shiftplane) WaitReady() {
	s.t.Helper()
	deadline := time.Now().Add(DefaultWait)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + s.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.Proc.Done():
			s.t.Fatalf("shiftplane exited before it was ready:\n%s", s.Proc.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.t.Fatalf("shiftplane not ready after %s:\n%s", DefaultWait, s.Proc.Output())
}

// WritePlan writes a plan file into the watched plan folder.
func (s *Shiftplane) WritePlan(name, yaml string) {
	s.t.Helper()
	path := filepath.Join(s.PlanDir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		s.t.Fatal(err)
	}
	// Rename, so the watcher never reads half a file.
	if err := os.Rename(tmp, path); err != nil {
		s.t.Fatal(err)
	}
}

// Metric returns the value of a Prometheus sample line starting with prefix
// (e.g. `shiftplane_rollout_canary_weight{rollout="x"}`), or -1 if absent.
func (s *Shiftplane) Metric(prefix string) float64 {
	s.t.Helper()
	resp, err := http.Get("http://" + s.HTTPAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var body strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		body.WriteString(string(buf[:n]))
		if err != nil {
			break
		}
	}
	for _, line := range strings.Split(body.String(), "\n") {
		if strings.HasPrefix(line, prefix+" ") {
			var v float64
			fmt.Sscanf(strings.TrimPrefix(line, prefix+" "), "%g", &v)
			return v
		}
	}
	return -1
}

// Phase returns the rollout's phase from /metrics, or "" if unknown.
func (s *Shiftplane) Phase(rollout string) string {
	s.t.Helper()
	for _, p := range []string{"PENDING", "PROGRESSING", "HOLDING", "PAUSED", "PROMOTING", "SUCCEEDED", "ROLLING_BACK", "ROLLED_BACK", "ABORTED", "FAILED"} {
		if s.Metric(fmt.Sprintf(`shiftplane_rollout_phase{phase=%q,rollout=%q}`, p, rollout)) == 1 {
			return p
		}
	}
	return ""
}

// WaitPhase polls until the rollout is in phase, and returns when it saw it.
func (s *Shiftplane) WaitPhase(rollout, phase string, within time.Duration) time.Time {
	s.t.Helper()
	return s.WaitPhaseAny(rollout, within, phase)
}

// WaitPhaseAny polls until the rollout is in one of phases and returns
// when it saw it. A phase the engine passes through at once (ROLLING_BACK
// when the fleet ACKs weight 0 within milliseconds) can be missed by a
// poll: wait for it or the phase after it.
func (s *Shiftplane) WaitPhaseAny(rollout string, within time.Duration, phases ...string) time.Time {
	s.t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		if last = s.Phase(rollout); slices.Contains(phases, last) {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("rollout %s never reached %s within %s (last %q)", rollout, strings.Join(phases, " or "), within, last)
	return time.Time{}
}

// WaitSteady polls until the rollout has been in phase for at least d
// without a break (e.g. PROGRESSING after the first stats arrived).
func (s *Shiftplane) WaitSteady(rollout, phase string, d, within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	var since time.Time
	last := ""
	for time.Now().Before(deadline) {
		last = s.Phase(rollout)
		switch {
		case last != phase:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= d:
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("rollout %s was never steadily %s for %s within %s (last %q)", rollout, phase, d, within, last)
}
