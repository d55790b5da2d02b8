package boltstore

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/shiftplane/shiftplane/policy"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func rollout(name string, phase policy.Phase, weight int) policy.Rollout {
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
		},
	}
}

func event(to policy.Phase, reason string) policy.Event {
	return policy.Event{Time: t0, From: policy.PhasePending, To: to, Reason: reason, Weight: 10, StepIndex: 2, Output: "out"}
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := open(t, path)
	b, a := rollout("b", policy.PhaseHolding, 30), rollout("a", policy.PhasePaused, 10)
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
	s = open(t, path)
	got, err = s.Load()
	if err != nil || len(got) != 2 || !reflect.DeepEqual(got[1], b) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if err := s.Save(policy.Rollout{}); err == nil {
		t.Errorf("saving a rollout without a name succeeded")
	}
}

func TestEventsOrderAndLimit(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.db"))
	r := rollout("a", policy.PhaseProgressing, 10)
	var want []policy.Event
	for i := range 5 {
		var evs []policy.Event
		for j := range i % 3 { // saves of 0, 1 and 2 events
			evs = append(evs, event(policy.PhaseProgressing, fmt.Sprintf("save %d event %d", i, j)))
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
	if err := s.Save(rollout("b", policy.PhasePending, 0), event(policy.PhasePending, "b")); err != nil {
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
	if err := s.Save(r, event(policy.PhasePending, "again")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Events("a", 0); len(got) != 1 || got[0].Seq != 1 {
		t.Errorf("history after delete and save: %+v", got)
	}
}

func TestNextVersionPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := open(t, path)
	for want := uint64(1); want <= 3; want++ {
		if v, err := s.NextVersion(); err != nil || v != want {
			t.Fatalf("NextVersion = %d, %v; want %d", v, err, want)
		}
	}
	s.Close()
	s = open(t, path)
	if v, err := s.NextVersion(); err != nil || v != 4 {
		t.Fatalf("after reopen NextVersion = %d, %v; want 4", v, err)
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
	if v, _ := s.NextVersion(); v != 85 {
		t.Errorf("after 80 concurrent calls NextVersion = %d, want 85", v)
	}
}

func TestCorruptRecordFailsOpen(t *testing.T) {
	tests := map[string]struct {
		corrupt func(tx *bolt.Tx) error
		want    []string
	}{
		"a rollout that does not decode": {
			corrupt: func(tx *bolt.Tx) error {
				return tx.Bucket(bucketRollouts).Put([]byte("checkout"), []byte(`{"plan": {"name": "checkout"`))
			},
			want: []string{`rollout "checkout"`, "corrupt record"},
		},
		"a rollout of the wrong shape": {
			corrupt: func(tx *bolt.Tx) error {
				return tx.Bucket(bucketRollouts).Put([]byte("payments"), []byte(`{"state": {"stepIndex": "two"}}`))
			},
			want: []string{`rollout "payments"`},
		},
		"another schema": {
			corrupt: func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte("9")) },
			want:    []string{`schema version "9"`},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.db")
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Save(rollout("good", policy.PhaseProgressing, 10)); err != nil {
				t.Fatal(err)
			}
			if err := s.db.Update(tc.corrupt); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s, err = Open(path)
			if err == nil {
				s.Close()
				t.Fatalf("Open of a corrupt store succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			// The failed Open released the file: it can be opened and repaired.
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatalf("file still locked after a failed Open: %v", err)
			}
			db.Close()
		})
	}
}

func TestCorruptEventIsAnError(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := s.Save(rollout("a", policy.PhasePending, 0), event(policy.PhasePending, "one")); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).Bucket([]byte("a")).Put(seqKey(2), []byte("{"))
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Events("a", 0)
	if err == nil || !strings.Contains(err.Error(), `rollout "a": event 2`) {
		t.Errorf("events with a corrupt record: %v", err)
	}
}

func TestSaveOnClosedStore(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "s.db"))
	r := rollout("a", policy.PhasePending, 0)
	if err := s.Save(r, event(policy.PhasePending, "created")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	r.State.Weight = 50
	if err := s.Save(r, event(policy.PhaseProgressing, "lost")); !errors.Is(err, bolt.ErrDatabaseNotOpen) {
		t.Errorf("save on a closed store: %v", err)
	}
}
