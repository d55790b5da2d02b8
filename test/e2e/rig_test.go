// Package e2e runs shiftplane against real Envoys: the binaries as users run
// them, real backends, real traffic on loopback.
package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

// Shiftplane is the shared `shiftplane serve` rig (test/harness).
type Shiftplane = harness.Shiftplane

// StartShiftplane starts `shiftplane serve` on free loopback ports.
func StartShiftplane(t *testing.T, extraArgs ...string) *Shiftplane {
	t.Helper()
	return harness.StartShiftplane(t, extraArgs...)
}

// WaitRouteWeights waits until e's route weights for cluster equal want.
func WaitRouteWeights(t *testing.T, e *harness.Envoy, cluster string, want uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harness.DefaultWait)
	defer cancel()
	var last map[string]uint32
	for ctx.Err() == nil {
		w, err := e.RouteWeights(ctx)
		if err == nil {
			last = w
			if got, ok := w[cluster]; ok && got == want {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("route weight of %s never reached %d; last seen %v", cluster, want, last)
}

// Share returns the fraction of OK responses that came from version.
func Share(r harness.LoadResult, version string) float64 {
	if r.OK == 0 {
		return 0
	}
	return float64(r.ByVersion[version]) / float64(r.OK)
}
