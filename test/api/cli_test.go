package api_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/shiftplane/shiftplane/test/harness"
)

// ctlIn is ctl with stdin.
func (s *server) ctlIn(stdin string, args ...string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.ctlBin, args...)
	cmd.Env = append(ctlEnv(), "SHIFTCTL_SERVER="+s.APIAddr)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := result{Stdout: out.String(), Stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		s.t.Fatalf("shiftctl %v: %v", args, err)
	}
	return r
}

// ctlEnv is the test's environment without SHIFTCTL_*.
func ctlEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHIFTCTL_") {
			env = append(env, kv)
		}
	}
	return env
}

// stalled applies a plan that stays at its first weight, held for an
// hour; an Envoy ACKs, as the engine moves only then.
func stalled(t *testing.T, s *server, name string) {
	t.Helper()
	harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-" + name, XDSAddr: s.XDSAddr})
	s.mustCtl("apply", "-f", writePlan(t, plan(name, harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082",
		"  - weight: 10\n    hold: 1h\n  - pause: {}\n  - weight: 100")))
	s.waitPhase(name, "PROGRESSING", "HOLDING")
}

// TestCLICommands: shiftctl and shiftplane command lines, as a user types
// them, against a running server: exit code and what the output holds.
func TestCLICommands(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	stalled(t, s, "cli")
	spBin := harness.BuildBinary(t, "./cmd/shiftplane")
	type want struct {
		code     int
		has      []string // in stdout
		hasNot   []string // not in stdout
		stderr   string   // in stderr
		matchOut string   // regexp on stdout
	}
	tests := map[string]struct {
		shiftplane bool
		args       []string
		want       want
	}{
		"ctl version":             {args: []string{"version"}, want: want{matchOut: `^shiftctl \S+.* go1\.\d+.* linux/\w+\n$`}},
		"plane version":           {shiftplane: true, args: []string{"version"}, want: want{matchOut: `^shiftplane \S+.* go1\.\d+`}},
		"ctl completion":          {args: []string{"completion", "bash"}, want: want{has: []string{"bash completion V2 for shiftctl"}}},
		"plane completion":        {shiftplane: true, args: []string{"completion", "zsh"}, want: want{has: []string{"#compdef shiftplane"}}},
		"help has examples":       {args: []string{"watch", "--help"}, want: want{has: []string{"Examples:", "shiftctl watch checkout --timeout 30m", "--timeout"}}},
		"retry help":              {args: []string{"retry", "--help"}, want: want{has: []string{"Examples:", "shiftctl retry checkout"}}},
		"validate own flags":      {shiftplane: true, args: []string{"validate", "--help"}, want: want{has: []string{"Examples:", "--hooks-allow-exec", "--config"}, hasNot: []string{"--api-address", "--store-path", "--xds-address", "--engine-tick"}}},
		"bootstrap":               {shiftplane: true, args: []string{"bootstrap", "--node-id", "edge-7", "--cluster", "web", "--xds", "127.0.0.1:18123", "--delta"}, want: want{has: []string{`id: "edge-7"`, `cluster: "web"`, "port_value: 18123", "DELTA_GRPC"}}},
		"bootstrap HA replicas":   {shiftplane: true, args: []string{"bootstrap", "--node-id", "a", "--xds", "127.0.0.1:18123", "--xds", "127.0.0.1:18124"}, want: want{has: []string{"port_value: 18123", "port_value: 18124"}}},
		"bootstrap replica twice": {shiftplane: true, args: []string{"bootstrap", "--node-id", "a", "--xds", "127.0.0.1:1", "--xds", "127.0.0.1:1"}, want: want{code: 1, stderr: `xdsAddresses[1]: "127.0.0.1:1" is listed twice`}},
		"bootstrap no node":       {shiftplane: true, args: []string{"bootstrap"}, want: want{code: 1, stderr: `required flag(s) "node-id" not set`}},
		"bootstrap bad xds":       {shiftplane: true, args: []string{"bootstrap", "--node-id", "a", "--xds", "envoy:1"}, want: want{code: 1, stderr: "xdsAddress: \"envoy:1\": host must be an IP literal"}},
		"list":                    {args: []string{"list"}, want: want{matchOut: `^NAME\s+PHASE\s+WEIGHT\s+OBSERVED\s+STEP\s+SIGNAL\s+AGE\ncli\s+(PROGRESSING|HOLDING)\s+10%\s+(\d+\.\d%|no traffic yet|no stats yet)\s+1/3\s+(CLEAR|STALE)`}},
		"list wide":               {args: []string{"list", "-o", "wide"}, want: want{has: []string{"HOLD LEFT", "MESSAGE", "1 node(s) converged"}}},
		"list name":               {args: []string{"list", "-o", "name"}, want: want{matchOut: `^rollout/cli\n$`}},
		"list json":               {args: []string{"list", "-o", "json"}, want: want{has: []string{`"items": [`, `"phase": "`, `"state": "`}, hasNot: []string{"PHASE_", "SIGNAL_STATE_"}}},
		"list yaml":               {args: []string{"list", "-o", "yaml"}, want: want{has: []string{"name: cli\n", "plan:\n"}, hasNot: []string{"PHASE_"}}},
		"get detail":              {args: []string{"get", "cli"}, want: want{has: []string{"Name:", "Phase:", "Message:", "step 1/3 (hold ", "Signal:", "Fleet:", "1 node(s) converged", "Steps:", "→ 1/3", "weight 10%", "2/3", "pause (manual gate", "3/3", "Events (newest"}}},
		"get yaml":                {args: []string{"get", "cli", "-o", "yaml"}, want: want{has: []string{"holdRemaining: ", "hold: 1h0m0s\n", "pause: {}"}, hasNot: []string{"PHASE_", "SIGNAL_STATE_", "null"}, matchOut: `holdRemaining: (\d+h)?(\d+m)?\d+s\n`}},
		"get json":                {args: []string{"get", "cli", "-o", "json"}, want: want{has: []string{`"stepIndex": 0`, `"stepCount": 3`}, hasNot: []string{"PHASE_"}}},
		"get name":                {args: []string{"get", "cli", "-o", "name"}, want: want{matchOut: `^rollout/cli\n$`}},
		"get bad -o":              {args: []string{"get", "cli", "-o", "xml"}, want: want{code: 1, stderr: `-o: must be json, yaml, wide or name, got "xml"`}},
		"history 1-based":         {args: []string{"history", "cli"}, want: want{has: []string{"step 1/3: weight 10, hold 1h0m0s"}}},
		"watch timeout":           {args: []string{"watch", "cli", "--timeout", "1s"}, want: want{code: 3, stderr: `rollout "cli" did not finish within --timeout 1s`}},
		"retry running":           {args: []string{"retry", "cli"}, want: want{code: 1, stderr: "only an ABORTED, ROLLED_BACK or FAILED rollout can be retried"}},
		"apply dry-run same":      {args: []string{"apply", "--dry-run", "-f", "-"}, want: want{}}, // stdin below
		"watch missing":           {args: []string{"watch", "nope"}, want: want{code: 1, stderr: `rollout "nope" not found`}},
		"unknown verb":            {args: []string{"frobnicate"}, want: want{code: 1, stderr: `unknown command "frobnicate"`}},
		"list -o is supported":    {args: []string{"list", "-o", "bogus"}, want: want{code: 1, stderr: "-o: must be json, yaml, wide or name"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var r result
			if tc.shiftplane {
				r = runBin(t, spBin, tc.args...)
			} else if name == "apply dry-run same" {
				yaml := s.mustCtl("get", "cli", "-o", "yaml")
				r = s.ctlIn(yaml, tc.args...)
				tc.want.has = []string{`rollout "cli" unchanged (dry run)`}
			} else {
				r = s.ctl(nil, tc.args...)
			}
			if r.Code != tc.want.code {
				t.Fatalf("exit %d, want %d: %s", r.Code, tc.want.code, r)
			}
			for _, h := range tc.want.has {
				if !strings.Contains(r.Stdout, h) {
					t.Errorf("stdout lacks %q:\n%s", h, r.Stdout)
				}
			}
			for _, h := range tc.want.hasNot {
				if strings.Contains(r.Stdout, h) {
					t.Errorf("stdout has %q:\n%s", h, r.Stdout)
				}
			}
			if tc.want.stderr != "" && !strings.Contains(r.Stderr, tc.want.stderr) {
				t.Errorf("stderr lacks %q: %s", tc.want.stderr, r)
			}
			if tc.want.matchOut != "" && !regexp.MustCompile(tc.want.matchOut).MatchString(r.Stdout) {
				t.Errorf("stdout does not match %s:\n%s", tc.want.matchOut, r.Stdout)
			}
		})
	}
}

// runBin runs bin with args, bounded by 30s.
func runBin(t *testing.T, bin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := result{Stdout: out.String(), Stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return r
}

// TestApplyRoundTripAndRetry: `get -o yaml | apply -f -` is unchanged; a
// changed plan is configured and --dry-run shows the change first; an
// aborted rollout re-applied is unchanged and says how to retry; retry
// restarts it from step 1.
func TestApplyRoundTripAndRetry(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	stalled(t, s, "again")

	yaml := s.mustCtl("get", "again", "-o", "yaml")
	if r := s.ctlIn(yaml, "apply", "-f", "-"); r.Code != 0 || !strings.Contains(r.Stdout, `rollout "again" unchanged (`) {
		t.Fatalf("get -o yaml | apply -f -: %s\ninput:\n%s", r, yaml)
	}
	js := s.mustCtl("get", "again", "-o", "json")
	if r := s.ctlIn(js, "apply", "-f", "-"); r.Code != 0 || !strings.Contains(r.Stdout, `rollout "again" unchanged (`) {
		t.Fatalf("get -o json | apply -f -: %s", r)
	}
	changed := strings.Replace(yaml, "hold: 1h0m0s", "hold: 2h0m0s", 1)
	r := s.ctlIn(changed, "apply", "--dry-run", "-f", "-")
	if r.Code != 0 || !strings.Contains(r.Stdout, `rollout "again" configured (dry run)`) || !strings.Contains(r.Stdout, "-     hold: 1h0m0s") ||
		!strings.Contains(r.Stdout, "+     hold: 2h0m0s") || !strings.Contains(r.Stdout, "same canary: the rollout would keep its position") {
		t.Fatalf("apply --dry-run of a changed plan: %s", r)
	}
	if st := s.get("again"); st["plan"].(map[string]any)["steps"].([]any)[0].(map[string]any)["hold"] != "1h0m0s" {
		t.Fatalf("--dry-run changed the plan: %v", st["plan"])
	}
	if r := s.ctlIn(changed, "apply", "-f", "-"); r.Code != 0 || !strings.Contains(r.Stdout, `rollout "again" configured (`) {
		t.Fatalf("apply of a changed plan: %s", r)
	}

	s.mustCtl("abort", "again")
	s.waitPhase("again", "ABORTED")
	again := s.mustCtl("get", "again", "-o", "yaml")
	r = s.ctlIn(again, "apply", "-f", "-")
	if r.Code != 0 || !strings.Contains(r.Stdout, `rollout "again" unchanged (ABORTED`) || !strings.Contains(r.Stdout, "run 'shiftctl retry again'") {
		t.Fatalf("re-apply after abort: %s", r)
	}
	r = s.ctl(nil, "retry", "again")
	if r.Code != 0 || !strings.Contains(r.Stdout, `rollout "again" restarted from step 1 (PENDING, weight 0%, step 1/3)`) {
		t.Fatalf("retry: %s", r)
	}
	st := s.waitPhase("again", "PROGRESSING", "HOLDING")
	if st["canaryWeight"] != float64(10) || st["stepIndex"] != float64(0) {
		t.Errorf("after retry: %v", st)
	}
	if h := s.mustCtl("history", "again"); !strings.Contains(h, "retry on request after ABORTED; restarting from step 1") {
		t.Errorf("history lacks the retry:\n%s", h)
	}
}

// launch starts `shiftplane serve` on s's addresses with store; it returns
// once /readyz answers 200.
func launch(t *testing.T, s *server, store string) *harness.Process {
	t.Helper()
	bin := harness.BuildBinary(t, "./cmd/shiftplane")
	p := harness.StartProcess(t, bin, []string{"serve", "--xds-address", s.XDSAddr, "--api-address", s.APIAddr,
		"--http-address", s.HTTPAddr, "--store-path", store, "--engine-tick", "50ms"}, nil)
	deadline := time.Now().Add(harness.DefaultWait)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + s.HTTPAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.Done():
			t.Fatalf("shiftplane exited before it was ready:\n%s", p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("shiftplane not ready:\n%s", p.Output())
	return nil
}

// TestWatchAcrossRestart: watch outlives a restart of shiftplane; it says
// it lost the connection, reconnects and still reports how the rollout
// ended. A second server on the same store says the store is locked.
func TestWatchAcrossRestart(t *testing.T) {
	t.Parallel()
	store := filepath.Join(t.TempDir(), "shiftplane.db")
	s := &server{t: t, Shiftplane: &harness.Shiftplane{XDSAddr: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)), APIAddr: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))}, ctlBin: harness.BuildBinary(t, "./cmd/shiftctl")}
	first := launch(t, s, store)
	stalled(t, s, "survive")

	// A second server on the same store is told who holds it.
	bin := harness.BuildBinary(t, "./cmd/shiftplane")
	start := time.Now()
	r := runBin(t, bin, "serve", "--xds-address", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)), "--api-address", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
		"--http-address", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)), "--store-path", store)
	if r.Code == 0 || !strings.Contains(r.Stderr, "store "+store+" is locked by another process (another shiftplane serve?)") {
		t.Errorf("second server on the store: %s", r)
	}
	t.Logf("the second server gave up after %s", time.Since(start).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.ctlBin, "watch", "survive", "--timeout", "50s")
	cmd.Env = append(ctlEnv(), "SHIFTCTL_SERVER="+s.APIAddr)
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitFor(t, &out, "status ")
	if err := first.Stop(); err != nil {
		t.Logf("stop: %v", err)
	}
	waitFor(t, &out, "connection to shiftplane at "+s.APIAddr+" lost")
	time.Sleep(time.Second) // watch backs off meanwhile
	launch(t, s, store)
	waitFor(t, &out, "reconnected to shiftplane at "+s.APIAddr)
	s.mustCtl("abort", "survive", "--reason", "after the restart")
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(errOut.String(), `rollout "survive" ended ABORTED`) {
		t.Fatalf("watch: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func waitFor(t *testing.T, b *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(b.String(), want) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("output never had %q:\n%s", want, b.String())
}

// liveLineRE matches watch's progress line: the weight, what the fleet
// served in the step, the phase and step.
var liveLineRE = regexp.MustCompile(`%( \(observed [^)]*\))?  PROGRESSING  step 1/3`)

// TestWatchTerminal80: watch in an 80-column pseudo-terminal keeps one
// progress line that never wraps, while events scroll above it; Ctrl-C
// ends it with 130.
func TestWatchTerminal80(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	stalled(t, s, "tty")
	cmd := exec.Command(s.ctlBin, "watch", "tty")
	cmd.Env = append(ctlEnv(), "SHIFTCTL_SERVER="+s.APIAddr, "TERM=xterm")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 80, Rows: 24})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = ptmx.Close() })
	var out syncBuffer
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&out, ptmx); close(copied) }()

	// Ten seconds of redraws: the hold ticks, and pause/resume add events.
	for i := range 3 {
		time.Sleep(2 * time.Second)
		s.mustCtl("pause", "tty")
		time.Sleep(time.Second)
		s.mustCtl("resume", "tty")
		_ = i
	}
	time.Sleep(time.Second)
	screen := emulate(out.String(), 80)
	if screen.wraps > 0 {
		t.Errorf("%d line(s) wrapped at 80 columns:\n%s", screen.wraps, screen)
	}
	live := 0
	for _, l := range screen.lines {
		if liveLineRE.MatchString(l) && !strings.Contains(l, " event ") {
			live++
		}
	}
	if live != 1 {
		t.Errorf("%d progress lines on the screen, want 1:\n%s", live, screen)
	}
	if !strings.Contains(screen.String(), "event  PAUSED → PROGRESSING") && !strings.Contains(screen.String(), "event  PAUSED → HOLDING") {
		t.Errorf("no resume event on the screen:\n%s", screen)
	}

	if _, err := ptmx.Write([]byte{3}); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Errorf("after Ctrl-C: %v, want exit 130", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not stop on Ctrl-C")
	}
}

// screen is what a terminal of some width shows after some output.
type screen struct {
	lines []string
	wraps int
}

func (s screen) String() string { return strings.Join(s.lines, "\n") }

// emulate plays out on a cols-wide terminal with auto-wrap: \r, \n, ESC[K
// (erase to the end of the line); other escape sequences are dropped.
func emulate(out string, cols int) screen {
	var sc screen
	rows := [][]rune{nil}
	row, col := 0, 0
	rs := []rune(out)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case c == '\r':
			col = 0
		case c == '\n':
			row++
			if row == len(rows) {
				rows = append(rows, nil)
			}
		case c == 0x1b && i+1 < len(rs) && rs[i+1] == '[':
			j := i + 2
			for j < len(rs) && (rs[j] < 0x40 || rs[j] > 0x7e) {
				j++
			}
			if j < len(rs) && rs[j] == 'K' && col < len(rows[row]) {
				rows[row] = rows[row][:col]
			}
			i = j
		case c < 0x20:
		default:
			if col >= cols {
				sc.wraps++
				row, col = row+1, 0
				if row == len(rows) {
					rows = append(rows, nil)
				}
			}
			for len(rows[row]) <= col {
				rows[row] = append(rows[row], ' ')
			}
			rows[row][col] = c
			col++
		}
	}
	for _, r := range rows {
		if l := strings.TrimRight(string(r), " "); l != "" {
			sc.lines = append(sc.lines, l)
		}
	}
	return sc
}
