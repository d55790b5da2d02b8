package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/etcdharness"
	"github.com/shiftplane/shiftplane/test/harness"
)

// A shiftplane that restarts with no state (its store moved away, no plan
// files) must not push an empty configuration to an Envoy that still has
// the earlier run's: the listener keeps serving at its weight. With
// --xds-allow-empty-at-start it does push it, and the listener goes (the
// negative control: the guard is what keeps it).
//
// "ha-etcd": the restart is into HA mode on an etcd prefix that holds
// nothing; its leader must not push an empty configuration either.
func TestRestartWithoutStateKeepsEnvoyConfig(t *testing.T) {
	for name, tc := range map[string]struct{ allow, ha bool }{
		"default": {}, "allow-empty-at-start": {allow: true}, "ha-etcd": {ha: true},
	} {
		allow := tc.allow
		t.Run(name, func(t *testing.T) {
			r := startWeightRig(t, harness.EnvoyOptions{NodeID: "envoy-empty-" + name}, 20)
			if err := r.sp.Proc.Kill(); err != nil {
				t.Fatal(err)
			}
			<-r.sp.Proc.Done()
			for _, f := range []string{r.sp.Store, filepath.Join(r.sp.PlanDir, "web.yaml")} {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
			if allow {
				r.sp.AddArgs("--xds-allow-empty-at-start")
			}
			if tc.ha {
				etcd := etcdharness.Start(t, 1)
				r.sp.AddArgs("--store-backend", "etcd", "--store-etcd-endpoints", strings.Join(etcd.Endpoints(), ","),
					"--store-etcd-prefix", "/empty-start/", "--store-etcd-session-ttl", "2s")
			}
			r.sp.Start()
			// Envoy reconnects (its ADS stream broke with the old process).
			deadline := time.Now().Add(30 * time.Second)
			for r.sp.Metric("shiftplane_xds_streams") < 1 {
				if time.Now().After(deadline) {
					t.Fatal("Envoy did not reconnect to the restarted shiftplane")
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(2 * time.Second) // time for a snapshot, if one were sent, to land
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := harness.HTTPLoad(ctx, "http://"+r.listen+"/", harness.LoadOptions{Requests: 200, Concurrency: 4})
			if err != nil {
				t.Fatal(err)
			}
			ws, werr := r.envoy.RouteWeights(ctx)
			t.Logf("after a restart without state (allowEmptyAtStart %v): %d requests, %d failed; route weights %v (%v)", allow, res.Total, res.Failures, ws, werr)
			if !allow && (res.Failures != 0 || ws["web-v2"] != 20) {
				t.Fatalf("the restarted shiftplane took Envoy's configuration away: %d of %d requests failed (first %q), weights %v",
					res.Failures, res.Total, res.FirstError, ws)
			}
			if allow && res.Failures == 0 {
				t.Fatalf("with --xds-allow-empty-at-start the empty configuration did not reach Envoy: %d requests all answered", res.Total)
			}
		})
	}
}
