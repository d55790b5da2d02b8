package policy_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/boltstore"
)

// TestNoEmptyPublishAtStart: an engine that starts with no stored rollouts
// publishes nothing (an Envoy of an earlier run keeps its configuration)
// until a plan arrives; deleting every rollout afterwards does publish the
// empty state. With allowEmpty the empty start is published.
func TestNoEmptyPublishAtStart(t *testing.T) {
	for name, allow := range map[string]bool{"guarded": false, "allowEmptyAtStart": true} {
		t.Run(name, func(t *testing.T) {
			clock := newFakeClock()
			fleet := newFakeFleet(clock)
			st, err := boltstore.Open(filepath.Join(t.TempDir(), "s.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			var version uint64
			pub := &fakePublisher{clock: clock, onSet: fleet.Published, next: func() (uint64, error) { version++; return version, nil }}
			eng, err := policy.New(context.Background(), policy.Options{Clock: clock, Gate: &fakeGate{known: true}, Fleet: fleet,
				Hooks: &fakeHooks{results: map[string]hookResult{}}, Store: st, Publisher: policy.HoldEmptyAtStart(pub, allow, nil)})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				clock.Advance(time.Second)
				if err := eng.Tick(); err != nil {
					t.Fatal(err)
				}
			}
			if n := pub.Count(); allow != (n > 0) {
				t.Fatalf("publishes with no rollouts: %d (allowEmptyAtStart %v)", n, allow)
			}
			before := pub.Count()
			if _, err := eng.Apply(testPlan("checkout", wstep(10, time.Minute), wstep(100, 0)), "test"); err != nil {
				t.Fatal(err)
			}
			clock.Advance(time.Second)
			if err := eng.Tick(); err != nil {
				t.Fatal(err)
			}
			recs := pub.Records()
			if len(recs) == before || len(recs[len(recs)-1].DS.Services) != 1 {
				t.Fatalf("after apply: %d publishes, want the plan's service published", len(recs)-before)
			}
			if _, err := eng.Delete("checkout", policy.DeleteOptions{Force: true}); err != nil {
				t.Fatal(err)
			}
			clock.Advance(time.Second)
			if err := eng.Tick(); err != nil {
				t.Fatal(err)
			}
			recs = pub.Records()
			if last := recs[len(recs)-1]; len(last.DS.Services) != 0 {
				t.Fatalf("after deleting every rollout the last publish still has %d services", len(last.DS.Services))
			}
		})
	}
}
