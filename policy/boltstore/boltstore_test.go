package boltstore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/storetest"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	storetest.RunContract(t, func(t *testing.T) func(t *testing.T) policy.Store {
		path := filepath.Join(t.TempDir(), "s.db")
		return func(t *testing.T) policy.Store { return open(t, path) }
	})
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
			if err := s.Save(storetest.Rollout("good", policy.PhaseProgressing, 10)); err != nil {
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
	if err := s.Save(storetest.Rollout("a", policy.PhasePending, 0), storetest.Event(policy.PhasePending, "one")); err != nil {
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
	r := storetest.Rollout("a", policy.PhasePending, 0)
	if err := s.Save(r, storetest.Event(policy.PhasePending, "created")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	r.State.Weight = 50
	if err := s.Save(r, storetest.Event(policy.PhaseProgressing, "lost")); !errors.Is(err, berrors.ErrDatabaseNotOpen) {
		t.Errorf("save on a closed store: %v", err)
	}
}

// Versions come from a reserved block: within it a publish needs no write,
// so one that follows a store turning unwritable still goes out; past it the
// counter write fails; a reopen goes on above every version handed out.
func TestVersionsNeedNoWriteWithinALease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shiftplane.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.NextVersion(); err != nil || v != 1 {
		t.Fatalf("first NextVersion = %d, %v; want 1", v, err)
	}
	if err := s.Close(); err != nil { // every write fails from here
		t.Fatal(err)
	}
	for want := uint64(2); want <= 16; want++ {
		if v, err := s.NextVersion(); err != nil || v != want {
			t.Fatalf("NextVersion with the store unwritable = %d, %v; want %d from the reserved block", v, err, want)
		}
	}
	if v, err := s.NextVersion(); err == nil {
		t.Fatalf("NextVersion past the reserved block = %d with the store closed, want an error", v)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.NextVersion(); err != nil || v != 17 {
		t.Fatalf("after reopen NextVersion = %d, %v; want 17", v, err)
	}
}
