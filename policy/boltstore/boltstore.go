// Package boltstore is the bbolt implementation of policy.Store: one file
// holding rollouts, their events and the snapshot version counter.
package boltstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/shiftplane/shiftplane/policy"
)

var (
	bucketRollouts = []byte("rollouts")
	bucketEvents   = []byte("events")
	bucketMeta     = []byte("meta")
	keyVersion     = []byte("snapshot-version")
	keySchema      = []byte("schema")
)

const schemaVersion = "1"

// Store is a policy.Store in a bbolt file.
type Store struct {
	db *bolt.DB
}

var _ policy.Store = (*Store)(nil)

// lockWait bounds the wait for the file lock another process holds: long
// enough for a restart's old process to let go, short enough to tell a user
// at once that another server has the store.
const lockWait = 500 * time.Millisecond

// Open opens (or creates) the store at path and checks that it is readable:
// every stored rollout must decode, so a corrupt store stops the start
// instead of publishing an empty configuration.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockWait})
	if errors.Is(err, berrors.ErrTimeout) {
		// bbolt holds an exclusive flock on the file while it is open.
		return nil, fmt.Errorf("store %s is locked by another process (another shiftplane serve?): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRollouts, bucketEvents, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("schema version %q, this shiftplane reads %q", v, schemaVersion)
		}
		return nil
	})
	if err == nil {
		_, err = s.Load()
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return s, nil
}

// Load implements policy.Store.
func (s *Store) Load() ([]policy.Rollout, error) {
	var out []policy.Rollout
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRollouts).ForEach(func(k, v []byte) error {
			var r policy.Rollout
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("rollout %q: corrupt record: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Plan.Name < out[j].Plan.Name })
	return out, err
}

// Save implements policy.Store.
func (s *Store) Save(r policy.Rollout, events ...policy.Event) error {
	name := r.Plan.Name
	if name == "" {
		return errors.New("save: rollout has no name")
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("rollout %q: encode: %w", name, err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketRollouts).Put([]byte(name), data); err != nil {
			return err
		}
		if len(events) == 0 {
			return nil
		}
		eb, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		for _, e := range events {
			seq, err := eb.NextSequence()
			if err != nil {
				return err
			}
			e.Seq = seq
			e.Rollout = name
			ed, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := eb.Put(seqKey(seq), ed); err != nil {
				return err
			}
		}
		return nil
	})
}

// Delete implements policy.Store.
func (s *Store) Delete(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketRollouts).Delete([]byte(name)); err != nil {
			return err
		}
		err := tx.Bucket(bucketEvents).DeleteBucket([]byte(name))
		if errors.Is(err, berrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
}

// Events implements policy.Store.
func (s *Store) Events(name string, limit int) ([]policy.Event, error) {
	var out []policy.Event
	err := s.db.View(func(tx *bolt.Tx) error {
		eb := tx.Bucket(bucketEvents).Bucket([]byte(name))
		if eb == nil {
			return nil
		}
		c := eb.Cursor()
		// Walk back from the newest so a limit reads only what it returns.
		for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			var e policy.Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("rollout %q: event %d: %w", name, binary.BigEndian.Uint64(k), err)
			}
			out = append(out, e)
		}
		return nil
	})
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, err
}

// NextVersion implements policy.Store and xds.VersionCounter.
func (s *Store) NextVersion() (uint64, error) {
	var n uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyVersion); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		n++
		return meta.Put(keyVersion, seqKey(n))
	})
	return n, err
}

// Close implements policy.Store.
func (s *Store) Close() error { return s.db.Close() }

func seqKey(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}
