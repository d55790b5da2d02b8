package signal

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// Reports under ever new source names stop at MaxReportSources per
// rollout; a known source may still report, and an expired one frees room.
func TestReportSourcesBounded(t *testing.T) {
	g := NewGate(nil)
	now := time.Unix(1_700_000_000, 0)
	for i := 0; i < MaxReportSources; i++ {
		if err := g.Report("r", policy.SignalClear, "ok", fmt.Sprintf("src-%d", i), time.Minute, now); err != nil {
			t.Fatalf("source %d: %v", i, err)
		}
	}
	err := g.Report("r", policy.SignalFiring, "x", "one-too-many", time.Minute, now)
	if !errors.Is(err, ErrInvalidReport) {
		t.Fatalf("source %d: err = %v, want ErrInvalidReport", MaxReportSources+1, err)
	}
	if err := g.Report("r", policy.SignalFiring, "still me", "src-0", time.Minute, now); err != nil {
		t.Fatalf("a known source reporting again: %v", err)
	}
	if err := g.Report("other", policy.SignalClear, "ok", "one-too-many", time.Minute, now); err != nil {
		t.Fatalf("the limit is per rollout: %v", err)
	}
	if err := g.Report("r", policy.SignalClear, "ok", "one-too-many", time.Minute, now.Add(2*time.Minute)); err != nil {
		t.Fatalf("after the others expired: %v", err)
	}
}
