// Package boltstore is the bbolt implementation of policy.Store: one file
// holding rollouts, their events and the snapshot version counter.
package boltstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
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

// schemaVersion 2 seals every value in a checksum envelope (integrity.go);
// a store of schema 1 is migrated by Open.
const (
	schemaVersion  = "2"
	schemaUnsealed = "1"
)

// Store is a policy.Store in a bbolt file.
type Store struct {
	db *bolt.DB

	// Snapshot versions are reserved in blocks: the file holds the highest
	// reserved one, so most publishes need no write (a store that turned
	// read-only still publishes what was saved before) and a restart goes
	// on above every version handed out.
	verMu            sync.Mutex
	verNext, verLast uint64 // verNext..verLast are reserved and unused; verNext > verLast when none
}

// versionLease is how many snapshot versions one counter write reserves.
const versionLease = 16

var _ policy.Store = (*Store)(nil)

// lockWait bounds the wait for the file lock another process holds: long
// enough for a restart's old process to let go, short enough to tell a user
// at once that another server has the store.
const lockWait = 500 * time.Millisecond

// Open opens (or creates) the store at path and checks that it is readable:
// every stored rollout must decode, so a corrupt store stops the start
// instead of publishing an empty configuration.
func Open(path string) (*Store, error) {
	if _, err := checkFile(path); err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	var (
		db  *bolt.DB
		err error
	)
	if gerr := guard(func() error {
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockWait})
		return nil
	}); gerr != nil {
		return nil, fmt.Errorf("store %s: %w", path, gerr)
	}
	if errors.Is(err, berrors.ErrTimeout) {
		// bbolt holds an exclusive flock on the file while it is open.
		return nil, fmt.Errorf("store %s is locked by another process (another shiftplane serve?): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db}
	err = guard(func() error {
		// Not tx.Check: it walks pages on a goroutine of its own, where a
		// fault on a damaged page could not be recovered. verify reads every
		// record here instead, under guard.
		if err := db.Update(prepare); err != nil {
			return err
		}
		return s.verify()
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return s, nil
}

// verify reads every record once, so a damaged one stops the start: every
// rollout, every event and the version counter.
func (s *Store) verify() error {
	rs, err := s.Load()
	if err != nil {
		return err
	}
	for _, r := range rs {
		if _, err := s.Events(r.Plan.Name, 0); err != nil {
			return err
		}
	}
	return s.db.View(func(tx *bolt.Tx) error {
		if err := checkManifest(tx); err != nil {
			return err
		}
		// Events of a rollout that is gone are never read; their bucket
		// must at least not be damaged.
		return tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			if v != nil {
				return fmt.Errorf("events: corrupt store: %q is a value, not a rollout's events", k)
			}
			return nil
		})
	})
}

// prepare creates the buckets of a new store and migrates one of schema 1
// (values without checksums) by sealing every value.
func prepare(tx *bolt.Tx) error {
	for _, b := range [][]byte{bucketRollouts, bucketEvents, bucketMeta} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	switch v := meta.Get(keySchema); {
	case v == nil:
		if tx.Bucket(bucketRollouts).Stats().KeyN > 0 {
			return errors.New("corrupt store: rollouts stored but no schema version")
		}
	case string(v) == schemaVersion:
		return nil
	case string(v) == schemaUnsealed:
		if err := migrateUnsealed(tx); err != nil {
			return fmt.Errorf("migrate schema %s to %s: %w", schemaUnsealed, schemaVersion, err)
		}
	default:
		return fmt.Errorf("schema version %q, this shiftplane reads %q (and migrates %q)", v, schemaVersion, schemaUnsealed)
	}
	return meta.Put(keySchema, []byte(schemaVersion))
}

// migrateUnsealed seals the values of a schema 1 store. Each must decode
// first: a record that was already damaged is not sealed as if good.
func migrateUnsealed(tx *bolt.Tx) error {
	rb := tx.Bucket(bucketRollouts)
	if err := rewrite(rb, func(k, v []byte) error {
		var r policy.Rollout
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("rollout %q: corrupt record: %w", k, err)
		}
		return nil
	}); err != nil {
		return err
	}
	eb := tx.Bucket(bucketEvents)
	var names [][]byte
	if err := eb.ForEach(func(k, v []byte) error {
		if v == nil {
			names = append(names, append([]byte(nil), k...))
		}
		return nil
	}); err != nil {
		return err
	}
	for _, n := range names {
		if err := rewrite(eb.Bucket(n), func(k, v []byte) error {
			var e policy.Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("rollout %q: event %d: %w", n, binary.BigEndian.Uint64(k), err)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	m := manifest{}
	if err := rb.ForEach(func(k, v []byte) error {
		e := manifestEntry{CRC: recordCRC(v)}
		if b := eb.Bucket(k); b != nil {
			e.Events = uint64(b.Stats().KeyN)
		}
		m[string(k)] = e
		return nil
	}); err != nil {
		return err
	}
	if err := writeManifest(tx, m); err != nil {
		return err
	}
	meta := tx.Bucket(bucketMeta)
	if v := meta.Get(keyVersion); v != nil {
		if len(v) != 8 {
			return fmt.Errorf("snapshot version: corrupt record (%d bytes)", len(v))
		}
		return meta.Put(keyVersion, seal(keyVersion, v))
	}
	return nil
}

func rewrite(b *bolt.Bucket, check func(k, v []byte) error) error {
	type kv struct{ k, v []byte }
	var all []kv
	if err := b.ForEach(func(k, v []byte) error {
		if v == nil {
			return nil // a nested bucket
		}
		if err := check(k, v); err != nil {
			return err
		}
		all = append(all, kv{append([]byte(nil), k...), seal(k, v)})
		return nil
	}); err != nil {
		return err
	}
	for _, e := range all {
		if err := b.Put(e.k, e.v); err != nil {
			return err
		}
	}
	return nil
}

// Load implements policy.Store.
func (s *Store) Load() ([]policy.Rollout, error) {
	var out []policy.Rollout
	err := guardedView(s.db, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRollouts).ForEach(func(k, v []byte) error {
			var r policy.Rollout
			payload, err := unseal(k, v)
			if err != nil {
				return fmt.Errorf("rollout %q: %w", k, err)
			}
			if err := json.Unmarshal(payload, &r); err != nil {
				return fmt.Errorf("rollout %q: corrupt record: %w", k, err)
			}
			if r.Plan.Name != string(k) {
				return fmt.Errorf("rollout %q: corrupt record: stored under another name than its plan's %q", k, r.Plan.Name)
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
	return guardedUpdate(s.db, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketRollouts).Put([]byte(name), seal([]byte(name), data)); err != nil {
			return err
		}
		m, err := readManifest(tx)
		if err != nil {
			return err
		}
		entry := m[name]
		entry.CRC = checksum([]byte(name), data)
		if len(events) == 0 {
			m[name] = entry
			return writeManifest(tx, m)
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
			if err := eb.Put(seqKey(seq), seal(seqKey(seq), ed)); err != nil {
				return err
			}
			entry.Events = seq
		}
		m[name] = entry
		return writeManifest(tx, m)
	})
}

// Delete implements policy.Store.
func (s *Store) Delete(name string) error {
	return guardedUpdate(s.db, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketRollouts).Delete([]byte(name)); err != nil {
			return err
		}
		m, err := readManifest(tx)
		if err != nil {
			return err
		}
		delete(m, name)
		if err := writeManifest(tx, m); err != nil {
			return err
		}
		err = tx.Bucket(bucketEvents).DeleteBucket([]byte(name))
		if errors.Is(err, berrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
}

// Events implements policy.Store.
func (s *Store) Events(name string, limit int) ([]policy.Event, error) {
	var out []policy.Event
	err := guardedView(s.db, func(tx *bolt.Tx) error {
		eb := tx.Bucket(bucketEvents).Bucket([]byte(name))
		if eb == nil {
			return nil
		}
		c := eb.Cursor()
		// Walk back from the newest so a limit reads only what it returns.
		for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			var e policy.Event
			payload, err := unseal(k, v)
			if err != nil {
				return fmt.Errorf("rollout %q: event %d: %w", name, binary.BigEndian.Uint64(k), err)
			}
			if err := json.Unmarshal(payload, &e); err != nil {
				return fmt.Errorf("rollout %q: event %d: %w", name, binary.BigEndian.Uint64(k), err)
			}
			if e.Rollout != name {
				return fmt.Errorf("rollout %q: event %d: corrupt record: it belongs to rollout %q", name, binary.BigEndian.Uint64(k), e.Rollout)
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

// NextVersion implements policy.Store and xds.VersionCounter. It writes
// the counter once every versionLease versions.
func (s *Store) NextVersion() (uint64, error) {
	s.verMu.Lock()
	defer s.verMu.Unlock()
	if s.verNext != 0 && s.verNext <= s.verLast {
		s.verNext++
		return s.verNext - 1, nil
	}
	last, err := s.reserveVersions(versionLease)
	if err != nil {
		return 0, err
	}
	s.verNext, s.verLast = last-versionLease+2, last
	return last - versionLease + 1, nil
}

// reserveVersions moves the stored counter up by k and returns it.
func (s *Store) reserveVersions(k uint64) (uint64, error) {
	var n uint64
	err := guardedUpdate(s.db, func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyVersion); v != nil {
			// A damaged counter must not restart versions from 0: Envoy
			// would ignore snapshots whose version it has seen.
			payload, err := unseal(keyVersion, v)
			if err != nil || len(payload) != 8 {
				return fmt.Errorf("snapshot version: corrupt record: %v", err)
			}
			n = binary.BigEndian.Uint64(payload)
		}
		n += k
		return meta.Put(keyVersion, seal(keyVersion, seqKey(n)))
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
