package dashboard

import (
	"strings"
	"testing"

	"github.com/shiftplane/shiftplane/policy"
)

// TestObservedTextMirrorStep: a mirror step's copies are named as such,
// never as the canary's share of users.
func TestObservedTextMirrorStep(t *testing.T) {
	only := observedText(policy.StepTraffic{Mirror: 50, Stable: 200, Mirrored: 100, Nodes: 1})
	if !strings.HasPrefix(only, "0.0% of 200 requests") || !strings.Contains(only, "100 mirrored copies") {
		t.Errorf("mirror step: %q, want 0.0%% of the 200 user requests and the 100 mirrored copies apart", only)
	}
	matched := observedText(policy.StepTraffic{Mirror: 50, Matched: true, Stable: 200, Mirrored: 100, Nodes: 1})
	if strings.Contains(matched, "%") || !strings.Contains(matched, "no share") {
		t.Errorf("mirror step with canary.match: %q, want no share", matched)
	}
}
