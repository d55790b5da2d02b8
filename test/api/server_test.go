// Package api_test runs the real `shiftplane serve` binary and drives its
// policy API with the real `shiftctl` binary, as a user would.
package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

// server is the shared `shiftplane serve` rig (test/harness) with the
// shiftctl binary and the flags every shiftctl call gets.
type server struct {
	*harness.Shiftplane
	t      *testing.T
	ctlBin string
	// ctlArgs go before every shiftctl command (credentials, TLS).
	ctlArgs []string
}

// startServer starts `shiftplane serve` on free loopback ports with a store
// in t.TempDir(); extra are more serve flags.
func startServer(t *testing.T, extra ...string) *server {
	t.Helper()
	sp := harness.StartShiftplane(t, append([]string{"--engine-tick", "50ms"}, extra...)...)
	return &server{Shiftplane: sp, t: t, ctlBin: harness.BuildBinary(t, "./cmd/shiftctl")}
}

// result is one shiftctl run.
type result struct {
	Stdout, Stderr string
	Code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// ctl runs shiftctl against s with SHIFTCTL_SERVER set (and no
// SHIFTCTL_TOKEN from the test's environment), bounded by 60s.
func (s *server) ctl(env []string, args ...string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.ctlBin, append(slices.Clone(s.ctlArgs), args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHIFTCTL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "SHIFTCTL_SERVER="+s.APIAddr)
	cmd.Env = append(cmd.Env, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := result{Stdout: out.String(), Stderr: errOut.String()}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			s.t.Fatalf("shiftctl %v: %v", args, err)
		}
		r.Code = ee.ExitCode()
	}
	if ctx.Err() != nil {
		s.t.Fatalf("shiftctl %v did not finish within 60s:\n%s", args, r)
	}
	return r
}

// mustCtl runs shiftctl and fails the test unless it exits 0.
func (s *server) mustCtl(args ...string) string {
	s.t.Helper()
	r := s.ctl(nil, args...)
	if r.Code != 0 {
		s.t.Fatalf("shiftctl %s: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// get returns `shiftctl get NAME -o json`, decoded.
func (s *server) get(name string) map[string]any {
	s.t.Helper()
	out := s.mustCtl("get", name, "-o", "json")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		s.t.Fatalf("get -o json is not JSON: %v\n%s", err, out)
	}
	return m
}

// waitPhase polls until the rollout's phase is one of phases (short names,
// e.g. "PAUSED") and returns its status.
func (s *server) waitPhase(name string, phases ...string) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		last = s.get(name)
		if slices.Contains(phases, strings.TrimPrefix(last["phase"].(string), "PHASE_")) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("rollout %q is %v (%v), want one of %v", name, last["phase"], last["reason"], phases)
	return nil
}

// writePlan writes a plan file into a temp folder and returns its path.
func writePlan(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// plan is a plan YAML with short holds. listenerPort keeps plans of one
// server apart; steps is the YAML of the steps list. These tests drive the
// CLI and send no traffic, so their plans opt out of the evidence rule
// (minRequests: 0); test/e2e checks that rule against a real Envoy.
func plan(name string, listenerPort int, stable, canary, steps string) string {
	return fmt.Sprintf(`name: %s
listener:
  address: 127.0.0.1:%d
stable:
  cluster: %s-v1
  endpoints: [%q]
canary:
  cluster: %s-v2
  endpoints: [%q]
steps:
%s
analysis:
  stableFor: 0s
  staleAfter: 5s
  rollbackAfter: 0s
  drainTimeout: 1s
  minRequests: 0
`, name, listenerPort, name, stable, name, canary, steps)
}
