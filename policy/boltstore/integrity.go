package boltstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// Every value the store writes (rollouts, events, the version counter) is
// sealed in an envelope: 4 bytes of magic, the CRC-32C of the payload, the
// payload. The checksum covers the record's key too, so a value that
// moved to another key is caught as well. A record whose bytes changed on disk is refused when read, never
// decoded into different data. Stores of schema 1 (before checksums) are
// migrated by Open: every record is rewritten sealed, in one transaction.
var envelopeMagic = [4]byte{'S', 'P', 'c', '1'}

const envelopeHeader = 8

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func checksum(key, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, crcTable), crcTable, payload)
}

func seal(key, payload []byte) []byte {
	out := make([]byte, envelopeHeader+len(payload))
	copy(out, envelopeMagic[:])
	binary.BigEndian.PutUint32(out[4:], checksum(key, payload))
	copy(out[envelopeHeader:], payload)
	return out
}

// errNoEnvelope is an unsealed value in a sealed store.
var errNoEnvelope = errors.New("corrupt record: no checksum envelope")

// unseal returns the payload of a sealed value, or an error when the value
// is not sealed or its checksum does not match.
func unseal(key, v []byte) ([]byte, error) {
	if len(v) < envelopeHeader || [4]byte(v[:4]) != envelopeMagic {
		return nil, errNoEnvelope
	}
	payload := v[envelopeHeader:]
	if want, got := binary.BigEndian.Uint32(v[4:]), checksum(key, payload); want != got {
		return nil, fmt.Errorf("corrupt record: checksum %08x, stored %08x", got, want)
	}
	// bbolt's values live in its memory map, valid only inside the
	// transaction; callers decode at once.
	return payload, nil
}

// bbolt's on-disk meta page (go.etcd.io/bbolt/internal/common): a page
// header (id, flags, count, overflow) then the meta.
const (
	boltMagic     = 0xED0CDAED
	boltVersion   = 2
	pageHeaderLen = 16
	metaLen       = 4 + 4 + 4 + 4 + 16 + 8 + 8 + 8 // through txid; the checksum follows
)

type boltMeta struct {
	pageSize uint32
	highPage uint64 // pages in use: the file must hold at least this many
	txid     uint64
}

// checkFile refuses a store file bbolt would crash on: one that exists but
// is empty, or whose valid meta page says it holds more pages than the file
// has (a truncated file: bbolt would map past its end and fault with SIGBUS
// on the first read there). A file that does not exist is fine: Open
// creates it.
func checkFile(path string) (existed bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("cannot read the store file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return true, fmt.Errorf("cannot read the store file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return true, fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	size := fi.Size()
	if size == 0 {
		return true, errors.New("the file exists but is empty (0 bytes): not a store; move it away to start with an empty store")
	}
	// The first meta page is at 0; the second one page size further on.
	head := make([]byte, pageHeaderLen+metaLen+8)
	if _, err := io.ReadFull(f, head); err != nil {
		return true, fmt.Errorf("too short to be a store (%d bytes)", size)
	}
	var metas []boltMeta
	m0, err0 := parseMeta(head)
	if err0 == nil {
		metas = append(metas, m0)
	}
	// Without a valid first meta page, try bbolt's default page size for the second.
	ps := int64(os.Getpagesize())
	if err0 == nil {
		ps = int64(m0.pageSize)
	}
	if _, err := f.ReadAt(head, ps); err == nil {
		if m1, err := parseMeta(head); err == nil {
			metas = append(metas, m1)
		}
	}
	if len(metas) == 0 {
		return true, fmt.Errorf("not a bbolt store, or both meta pages are damaged (%v)", err0)
	}
	// bbolt uses the valid meta with the higher transaction id.
	m := metas[0]
	for _, o := range metas[1:] {
		if o.txid > m.txid {
			m = o
		}
	}
	if need := int64(m.highPage) * int64(m.pageSize); size < need {
		return true, fmt.Errorf("truncated: the file has %d bytes, its last transaction needs %d", size, need)
	}
	return true, nil
}

func parseMeta(b []byte) (boltMeta, error) {
	meta := b[pageHeaderLen:]
	le := binary.LittleEndian // bbolt writes native order; every platform we build for is little-endian
	if le.Uint32(meta[0:]) != boltMagic {
		return boltMeta{}, errors.New("bad magic")
	}
	if le.Uint32(meta[4:]) != boltVersion {
		return boltMeta{}, fmt.Errorf("bbolt version %d", le.Uint32(meta[4:]))
	}
	h := fnv.New64a()
	h.Write(meta[:metaLen])
	if le.Uint64(meta[metaLen:]) != h.Sum64() {
		return boltMeta{}, errors.New("meta checksum mismatch")
	}
	ps := le.Uint32(meta[8:])
	if ps < 512 || ps > 1<<20 || ps&(ps-1) != 0 {
		return boltMeta{}, fmt.Errorf("page size %d", ps)
	}
	return boltMeta{pageSize: ps, highPage: le.Uint64(meta[40:]), txid: le.Uint64(meta[48:])}, nil
}

// guard runs f, turning a panic or a memory fault inside it (bbolt walking
// a damaged page) into an error, so a damaged store stops the start with a
// message rather than crashing the server.
func guard(f func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("damaged store file: %v", r)
		}
	}()
	return f()
}

// guardedView and guardedUpdate are db.View and db.Update under guard: bbolt
// rolls the transaction back when f panics, and the caller gets an error.
func guardedView(db *bolt.DB, f func(*bolt.Tx) error) error {
	return guard(func() error { return db.View(f) })
}

func guardedUpdate(db *bolt.DB, f func(*bolt.Tx) error) error {
	return guard(func() error { return db.Update(f) })
}

// The manifest lists, sealed in the meta bucket, every rollout with the
// checksum of its record and its number of events. Per-record checksums
// cannot see a record that is missing (a damaged branch page can hide a
// whole rollout's events); the manifest can.
var keyManifest = []byte("manifest")

type manifestEntry struct {
	CRC    uint32 `json:"crc"`
	Events uint64 `json:"events"`
}

type manifest map[string]manifestEntry

func readManifest(tx *bolt.Tx) (manifest, error) {
	v := tx.Bucket(bucketMeta).Get(keyManifest)
	m := manifest{}
	if v == nil {
		if tx.Bucket(bucketRollouts).Stats().KeyN > 0 {
			return nil, errors.New("manifest: corrupt store: rollouts stored but no manifest")
		}
		return m, nil
	}
	payload, err := unseal(keyManifest, v)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("manifest: corrupt record: %w", err)
	}
	return m, nil
}

func writeManifest(tx *bolt.Tx, m manifest) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketMeta).Put(keyManifest, seal(keyManifest, data))
}

// recordCRC is the checksum in a sealed value's envelope.
func recordCRC(v []byte) uint32 {
	if len(v) < envelopeHeader {
		return 0
	}
	return binary.BigEndian.Uint32(v[4:])
}

// checkManifest compares the stored records with the manifest: the same
// rollouts, the same record checksums, every event 1..n present.
func checkManifest(tx *bolt.Tx) error {
	m, err := readManifest(tx)
	if err != nil {
		return err
	}
	seen := 0
	err = tx.Bucket(bucketRollouts).ForEach(func(k, v []byte) error {
		e, ok := m[string(k)]
		switch {
		case !ok:
			return fmt.Errorf("rollout %q: corrupt store: not in the manifest", k)
		case recordCRC(v) != e.CRC:
			return fmt.Errorf("rollout %q: corrupt store: its record is not the one the manifest lists", k)
		}
		seen++
		var n uint64
		if eb := tx.Bucket(bucketEvents).Bucket(k); eb != nil {
			if err := eb.ForEach(func(sk, _ []byte) error {
				n++
				if len(sk) != 8 || binary.BigEndian.Uint64(sk) != n {
					return fmt.Errorf("rollout %q: corrupt store: event %d missing or out of order", k, n)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		if n != e.Events {
			return fmt.Errorf("rollout %q: corrupt store: %d events stored, the manifest lists %d", k, n, e.Events)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(m) {
		return fmt.Errorf("manifest: corrupt store: it lists %d rollouts, %d are stored", len(m), seen)
	}
	return nil
}
