package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

var countsRE = regexp.MustCompile(`answers seen by the load generator: v1 (\d+), v2 (\d+); requests counted by the backends: v1 (\d+), v2 (\d+)`)

// `shiftplane demo` runs to the end, and its table agrees with what the
// backends counted.
func TestDemo(t *testing.T) {
	tests := map[string]struct {
		args      []string
		finish    string
		wantSteps []string
	}{
		"rollout":     {finish: "rollout finished: SUCCEEDED", wantSteps: []string{" 10 ", " 25 ", " 50 ", " 75 ", " 100 "}},
		"fail-canary": {args: []string{"--fail-canary"}, finish: "rollout finished: ROLLED_BACK", wantSteps: []string{" 10 ", " 25 ", " 50 ", "ROLLING_BACK"}},
	}
	bin := harness.BuildBinary(t, "./cmd/shiftplane")
	envoy := harness.FindEnvoy(t)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"demo", "--envoy", envoy}, tc.args...)...)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			text := string(out)
			if err != nil {
				t.Fatalf("demo failed after %s: %v\n%s", time.Since(start).Round(time.Second), err, text)
			}
			t.Logf("demo %s took %s; its table:\n%s", name, time.Since(start).Round(time.Second), text[strings.Index(text, "observed split per step"):])
			if !strings.Contains(text, tc.finish) {
				t.Fatalf("demo output lacks %q:\n%s", tc.finish, text)
			}
			table := text[strings.Index(text, "observed split per step"):]
			for _, s := range tc.wantSteps {
				if !strings.Contains(table, s) {
					t.Errorf("the table lacks a row with %q", s)
				}
			}
			m := countsRE.FindStringSubmatch(text)
			if m == nil {
				t.Fatalf("no counts line in the demo output:\n%s", text)
			}
			if m[1] != m[3] || m[2] != m[4] {
				t.Fatalf("the load generator saw v1 %s, v2 %s; the backends counted v1 %s, v2 %s", m[1], m[2], m[3], m[4])
			}
		})
	}
}
