package boltstore

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/storetest"
)

// stored is everything a store returns, to compare a damaged copy with.
type stored struct {
	Rollouts []policy.Rollout
	Events   map[string][]policy.Event
}

func readAll(s *Store) (stored, error) {
	rs, err := s.Load()
	if err != nil {
		return stored{}, err
	}
	out := stored{Rollouts: rs, Events: map[string][]policy.Event{}}
	for _, r := range rs {
		es, err := s.Events(r.Plan.Name, 0)
		if err != nil {
			return stored{}, err
		}
		out.Events[r.Plan.Name] = es
	}
	return out, nil
}

// realStore writes a store with rollouts in several phases and their
// events, as a server would, and returns its bytes and contents.
func realStore(t *testing.T) ([]byte, stored) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "real.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		r := storetest.Rollout(fmt.Sprintf("svc-%02d", i), policy.PhaseProgressing, 10*(i%10))
		for j := 0; j < 5; j++ {
			if err := s.Save(r, storetest.Event(policy.PhaseProgressing, fmt.Sprintf("step %d of %s", j, strings.Repeat("x", 40*i)))); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.NextVersion(); err != nil {
			t.Fatal(err)
		}
	}
	want, err := readAll(s)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data, want
}

// TestCorruptionNeverLoadsDifferentData truncates and flips bytes of a real
// store: each damaged copy either opens and returns exactly what was stored,
// or fails with an error naming the file; it never crashes the process.
func TestCorruptionNeverLoadsDifferentData(t *testing.T) {
	data, want := realStore(t)
	dir := t.TempDir()
	type damage struct {
		name string
		data []byte
	}
	var cases []damage
	for _, n := range []int{0, 4 << 10, 8 << 10, len(data) / 2, len(data) - 1} {
		cases = append(cases, damage{fmt.Sprintf("truncated to %d", n), data[:n]})
	}
	const flips = 200
	for i := 0; i < flips; i++ {
		off := i*len(data)/flips + (i*7919)%97 // spread over the file, off page boundaries
		if off >= len(data) {
			off = len(data) - 1
		}
		d := append([]byte(nil), data...)
		d[off] ^= byte(1 << (i % 8))
		cases = append(cases, damage{fmt.Sprintf("bit %d of byte %d flipped", i%8, off), d})
	}
	var same, refused int
	start := time.Now()
	for i, c := range cases {
		path := filepath.Join(dir, fmt.Sprintf("c%03d.db", i))
		if err := os.WriteFile(path, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Errorf("%s: error does not name the store: %v", c.name, err)
			}
			refused++
			continue
		}
		got, err := readAll(s)
		s.Close()
		switch {
		case err != nil:
			// Open checks every rollout; events are read later, and a damaged
			// one is an error there (the API reports it), never other data.
			if !strings.Contains(err.Error(), "corrupt") {
				t.Errorf("%s: opened, then: %v", c.name, err)
			}
			refused++
		case !reflect.DeepEqual(got, want):
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(want)
			t.Errorf("%s: opened with different data: %d rollouts, %d events; want %d, %d\n got %.300s\nwant %.300s", c.name,
				len(got.Rollouts), countEvents(got), len(want.Rollouts), countEvents(want), g, w)
		default:
			same++
		}
	}
	t.Logf("store of %d bytes, %d damaged copies: %d opened with exactly the stored data, %d refused, in %s",
		len(data), len(cases), same, refused, time.Since(start).Round(time.Millisecond))
	if refused == 0 {
		t.Error("no damaged copy was refused: the corruption did not reach the records")
	}
}

func TestEmptyOrUnreadableFileRefused(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(empty); err == nil || !strings.Contains(err.Error(), "exists but is empty") || !strings.Contains(err.Error(), empty) {
		t.Errorf("Open of a 0-byte file: %v", err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Open of a directory: %v", err)
	}
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a store ", 2000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(garbage); err == nil || !strings.Contains(err.Error(), "not a bbolt store") {
		t.Errorf("Open of a text file: %v", err)
	}
	// A file that does not exist is a new, empty store.
	s := open(t, filepath.Join(dir, "new.db"))
	if rs, err := s.Load(); err != nil || len(rs) != 0 {
		t.Errorf("new store: %v, %v", rs, err)
	}
}

// TestSchema1Migrated: a store written before checksums (schema 1, plain
// JSON values) opens, is sealed in place, and reads the same.
func TestSchema1Migrated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := storetest.Rollout("checkout", policy.PhaseProgressing, 25)
	e := storetest.Event(policy.PhaseProgressing, "stepped")
	e.Seq, e.Rollout = 1, "checkout"
	err = db.Update(func(tx *bolt.Tx) error {
		rb, _ := tx.CreateBucket(bucketRollouts)
		eb, _ := tx.CreateBucket(bucketEvents)
		mb, _ := tx.CreateBucket(bucketMeta)
		rd, _ := json.Marshal(r)
		ed, _ := json.Marshal(e)
		ceb, _ := eb.CreateBucket([]byte("checkout"))
		for _, err := range []error{rb.Put([]byte("checkout"), rd), ceb.Put(seqKey(1), ed),
			mb.Put(keySchema, []byte("1")), mb.Put(keyVersion, seqKey(41))} {
			if err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	rs, err := s.Load()
	if err != nil || len(rs) != 1 || rs[0].State.Weight != 25 {
		t.Fatalf("migrated rollouts: %+v, %v", rs, err)
	}
	es, err := s.Events("checkout", 0)
	if err != nil || len(es) != 1 || es[0].Reason != "stepped" {
		t.Fatalf("migrated events: %+v, %v", es, err)
	}
	if v, err := s.NextVersion(); err != nil || v != 42 {
		t.Fatalf("version after migration = %d, %v; want 42", v, err)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); string(v) != schemaVersion {
			return fmt.Errorf("schema %q after migration", v)
		}
		_, err := unseal([]byte("checkout"), tx.Bucket(bucketRollouts).Get([]byte("checkout")))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func countEvents(s stored) int {
	n := 0
	for _, es := range s.Events {
		n += len(es)
	}
	return n
}
