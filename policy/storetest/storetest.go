// Package storetest is the contract every policy.Store implementation must
// pass: round trips, event order and limits, deletes, and a version counter
// that persists and never repeats. Each backend's tests call RunContract.
package storetest

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// Backend makes a fresh, empty storage location (a file, an etcd prefix)
// and returns a func that opens a store on it. Opening twice on the same
// location must see what the first store wrote. Open registers the store's
// Close with t.Cleanup; Close must be safe to call more than once.
type Backend func(t *testing.T) (open func(t *testing.T) policy.Store)

// RunContract runs the store contract against backend.
func RunContract(t *testing.T, backend Backend) {
	t.Helper()
	tests := map[string]func(*testing.T, Backend){
		"RoundTrip":           testRoundTrip,
		"EventsOrderAndLimit": testEventsOrderAndLimit,
		"NextVersionPersists": testNextVersionPersists,
		"SaveOnClosedStore":   testSaveOnClosedStore,
		"DeleteIsolated":      testDeleteIsolated,
	}
	for name, f := range tests {
		t.Run(name, func(t *testing.T) { f(t, backend) })
	}
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// Rollout returns a rollout with every field set, so a round trip that
// drops one is seen.
func Rollout(name string, phase policy.Phase, weight int) policy.Rollout {
	w := 100
	stable := policy.Duration(10 * time.Second)
	return policy.Rollout{
		Plan: policy.Plan{
			Name:     name,
			Listener: policy.Listener{Address: "0.0.0.0:10000", Domains: []string{name}},
			Stable:   policy.Backend{Cluster: name + "-v1", Endpoints: []string{"127.0.0.1:1"}},
			Canary:   policy.Backend{Cluster: name + "-v2", Endpoints: []string{"127.0.0.1:2"}},
			Steps:    []policy.Step{{Weight: &w, Hold: policy.Duration(time.Minute)}, {Pause: &policy.Pause{}}},
			Analysis: policy.Analysis{StableFor: &stable},
			Hooks:    policy.Hooks{AfterPromote: []policy.Hook{{Webhook: &policy.Webhook{URL: "http://127.0.0.1/x"}}}},
		},
		Source:    "file:/etc/plans/" + name + ".yaml",
		AppliedAt: t0,
		State: policy.State{
			Phase: phase, StepIndex: 1, Weight: weight, CanaryPublished: true, StablePublished: true,
			Reason: "step 1", HoldCounted: 1234567 * time.Microsecond, RouteVersion: "7", ClusterVersion: "5",
			Created: t0, Updated: t0.Add(time.Minute), PausedFrom: policy.PhaseHolding, HookError: "x",
			BeforeShiftDone: true, Aborted: true, LastOp: "pause", LastOpAt: t0, LastOpStep: 1, StepRequests: 42, ListenerVersion: "6",
		},
	}
}

// Event returns an event with every field the caller sets filled in.
func Event(to policy.Phase, reason string) policy.Event {
	return policy.Event{Time: t0, From: policy.PhasePending, To: to, Reason: reason, Weight: 10, StepIndex: 2, Output: "out"}
}

func testRoundTrip(t *testing.T, backend Backend) {
	open := backend(t)
	s := open(t)
	b, a := Rollout("b", policy.PhaseHolding, 30), Rollout("a", policy.PhasePaused, 10)
	for _, r := range []policy.Rollout{b, a} {
		if err := s.Save(r); err != nil {
			t.Fatalf("save: %v", err)
		}
	}
	got, err := s.Load()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if want := []policy.Rollout{a, b}; !reflect.DeepEqual(got, want) {
		t.Fatalf("load = %+v\nwant (sorted by name) %+v", got, want)
	}
	// A save replaces the rollout.
	b.State.Weight = 50
	if err := s.Save(b); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t)
	got, err = s.Load()
	if err != nil || len(got) != 2 || !reflect.DeepEqual(got[1], b) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if err := s.Save(policy.Rollout{}); err == nil {
		t.Errorf("saving a rollout without a name succeeded")
	}
	if got, err := s.Load(); err != nil || len(got) != 2 {
		t.Errorf("a failed save changed the store: %+v, %v", got, err)
	}
}

func testEventsOrderAndLimit(t *testing.T, backend Backend) {
	s := backend(t)(t)
	r := Rollout("a", policy.PhaseProgressing, 10)
	var want []policy.Event
	for i := range 5 {
		var evs []policy.Event
		for j := range i % 3 { // saves of 0, 1 and 2 events
			evs = append(evs, Event(policy.PhaseProgressing, fmt.Sprintf("save %d event %d", i, j)))
		}
		if err := s.Save(r, evs...); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			e.Seq = uint64(len(want) + 1)
			e.Rollout = "a"
			want = append(want, e)
		}
	}
	// Another rollout's events are counted on their own.
	if err := s.Save(Rollout("b", policy.PhasePending, 0), Event(policy.PhasePending, "b")); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		limit int
		want  []policy.Event
	}{
		"all":             {limit: 0, want: want},
		"negative is all": {limit: -1, want: want},
		"newest two":      {limit: 2, want: want[len(want)-2:]},
		"more than there": {limit: 100, want: want},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := s.Events("a", tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("events(%d) =\n%+v\nwant\n%+v", tc.limit, got, tc.want)
			}
		})
	}
	if got, _ := s.Events("b", 0); len(got) != 1 || got[0].Seq != 1 || got[0].Rollout != "b" {
		t.Errorf("b's events: %+v", got)
	}
	if got, err := s.Events("missing", 0); err != nil || len(got) != 0 {
		t.Errorf("events of a missing rollout: %v, %v", got, err)
	}

	// Delete removes the rollout and its events; a new rollout of the same
	// name starts a new history.
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("never-saved"); err != nil {
		t.Errorf("delete of an unknown rollout: %v", err)
	}
	loaded, _ := s.Load()
	if len(loaded) != 1 || loaded[0].Plan.Name != "b" {
		t.Errorf("after delete: %+v", loaded)
	}
	if err := s.Save(r, Event(policy.PhasePending, "again")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Events("a", 0); len(got) != 1 || got[0].Seq != 1 {
		t.Errorf("history after delete and save: %+v", got)
	}
}

func testNextVersionPersists(t *testing.T, backend Backend) {
	open := backend(t)
	s := open(t)
	for want := uint64(1); want <= 3; want++ {
		if v, err := s.NextVersion(); err != nil || v != want {
			t.Fatalf("NextVersion = %d, %v; want %d", v, err, want)
		}
	}
	s.Close()
	// A store may reserve versions ahead (boltstore does, in blocks): after
	// a reopen they only have to be above every version handed out.
	s = open(t)
	first, err := s.NextVersion()
	if err != nil || first < 4 {
		t.Fatalf("after reopen NextVersion = %d, %v; want 4 or more", first, err)
	}
	// Concurrent callers never get the same version.
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				v, err := s.NextVersion()
				mu.Lock()
				if err != nil || seen[v] {
					t.Errorf("NextVersion = %d, %v (seen: %v)", v, err, seen[v])
				}
				seen[v] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if v, _ := s.NextVersion(); v != first+81 {
		t.Errorf("after 80 concurrent calls NextVersion = %d, want %d", v, first+81)
	}
}

func testSaveOnClosedStore(t *testing.T, backend Backend) {
	open := backend(t)
	s := open(t)
	r := Rollout("a", policy.PhasePending, 0)
	if err := s.Save(r, Event(policy.PhasePending, "created")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	r.State.Weight = 50
	if err := s.Save(r, Event(policy.PhaseProgressing, "lost")); err == nil {
		t.Errorf("save on a closed store succeeded")
	}
	s = open(t)
	got, err := s.Load()
	if err != nil || len(got) != 1 || got[0].State.Weight != 0 {
		t.Errorf("after a save on the closed store: %+v, %v", got, err)
	}
	if evs, _ := s.Events("a", 0); len(evs) != 1 {
		t.Errorf("events after a save on the closed store: %+v", evs)
	}
}

func testDeleteIsolated(t *testing.T, backend Backend) {
	s := backend(t)(t)
	// A name that is a prefix of another must not take the other with it.
	for _, n := range []string{"app", "app-2"} {
		if err := s.Save(Rollout(n, policy.PhasePending, 0), Event(policy.PhasePending, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete("app"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || len(got) != 1 || got[0].Plan.Name != "app-2" {
		t.Fatalf("after deleting app: %+v, %v", got, err)
	}
	if evs, _ := s.Events("app-2", 0); len(evs) != 1 || evs[0].Reason != "app-2" {
		t.Errorf("app-2's events after deleting app: %+v", evs)
	}
}
