// Package etcdstore is the etcd implementation of policy.Store, for several
// shiftplane replicas sharing one state. Every write is one etcd
// transaction, and a store can be fenced on a leadership key so that a
// leader that lost its lease cannot write after a new one took over.
//
// Layout under the prefix (default /shiftplane/):
//
//	schema                   "1"
//	version                  the snapshot version counter, decimal
//	rollouts/<name>          the rollout, JSON, sealed
//	eventseq/<name>          the last event Seq of the rollout, decimal, sealed
//	events/<name>/<seq>      one event, JSON, sealed; seq is zero-padded to 20 digits
//
// A sealed value is "crc32c:<8 hex digits> " and the payload; the CRC-32C
// is over the key, a NUL byte and the payload, so a changed byte, or a value
// copied under another key, is refused with the key named. Values written
// before sealing (plain JSON or decimal) are still read as they are.
package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/shiftplane/shiftplane/policy"
)

const schemaVersion = "1"

// DefaultPrefix is where shiftplane keeps its keys unless told otherwise.
const DefaultPrefix = "/shiftplane/"

// Sentinel errors.
var (
	// ErrFenced: the fence key is gone or was re-created, so this process
	// is no longer the leader and its write was refused.
	ErrFenced = errors.New("write refused: this replica is no longer the leader")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("etcd store closed")
)

// Fence conditions writes on a leadership key: the write applies only while
// Key exists with CreateRevision Rev (concurrency.Election's Key and Rev).
type Fence struct {
	Key string
	Rev int64
}

// Config says how to reach etcd.
type Config struct {
	Endpoints      []string
	Prefix         string
	DialTimeout    time.Duration
	RequestTimeout time.Duration
	// TLS: CA to verify the members, and a client certificate and key.
	CA, Cert, Key string
}

// Store is a policy.Store in etcd. Safe for concurrent use.
type Store struct {
	client  *clientv3.Client
	prefix  string
	timeout time.Duration
	fence   *Fence
	owns    bool
	closed  *atomic.Bool
}

var _ policy.Store = (*Store)(nil)

// Dial connects to etcd as cfg says. The caller closes the client.
func Dial(cfg Config) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("store.etcd.endpoints: at least one endpoint is needed")
	}
	cc := clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, Logger: zap.NewNop()}
	if cfg.CA != "" || cfg.Cert != "" {
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		cc.TLS = tc
	}
	c, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return c, nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CA != "" {
		pem, err := os.ReadFile(cfg.CA)
		if err != nil {
			return nil, fmt.Errorf("store.etcd.tls.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("store.etcd.tls.ca: %s holds no PEM certificate", cfg.CA)
		}
		tc.RootCAs = pool
	}
	if cfg.Cert != "" {
		kp, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("store.etcd.tls.cert/key: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return tc, nil
}

// Open dials etcd and opens the store on cfg.Prefix; Close closes the client.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	c, err := Dial(cfg)
	if err != nil {
		return nil, err
	}
	s, err := New(ctx, c, cfg.Prefix, cfg.RequestTimeout)
	if err != nil {
		c.Close()
		return nil, err
	}
	s.owns = true
	return s, nil
}

// New opens the store on an existing client (which the caller closes) and
// checks that it is readable: the schema matches and every rollout decodes,
// so a corrupt store stops the start. prefix "" is DefaultPrefix; timeout
// bounds each request (0: 5s).
func New(ctx context.Context, c *clientv3.Client, prefix string, timeout time.Duration) (*Store, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	s := &Store{client: c, prefix: prefix, timeout: timeout, closed: &atomic.Bool{}}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	key := prefix + "schema"
	// Create the schema key if it is absent, in one transaction.
	resp, err := c.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, schemaVersion)).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return nil, fmt.Errorf("etcd store %s: %w", prefix, err)
	}
	if !resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && string(kvs[0].Value) != schemaVersion {
			return nil, fmt.Errorf("etcd store %s: schema version %q, this shiftplane reads %q", prefix, kvs[0].Value, schemaVersion)
		}
	}
	if _, err := s.Load(); err != nil {
		return nil, fmt.Errorf("etcd store %s: %w", prefix, err)
	}
	return s, nil
}

// Fenced returns a view of the store whose writes apply only while f holds.
// It shares the client; closing it closes only the view.
func (s *Store) Fenced(f Fence) *Store {
	c := *s
	c.fence = &f
	c.owns = false
	c.closed = &atomic.Bool{}
	return &c
}

// Client returns the etcd client.
func (s *Store) Client() *clientv3.Client { return s.client }

// Prefix returns the key prefix, ending in "/".
func (s *Store) Prefix() string { return s.prefix }

// Commit runs ops in one transaction, conditioned on cmps and on the fence.
// A failed condition is ErrFenced when the fence no longer holds, and
// errConflict otherwise.
func (s *Store) Commit(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) error {
	if s.closed.Load() {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if s.fence != nil {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.fence.Key), "=", s.fence.Rev))
	}
	resp, err := s.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	if s.fence != nil {
		r, err := s.client.Get(ctx, s.fence.Key)
		if err != nil {
			return err
		}
		if len(r.Kvs) == 0 || r.Kvs[0].CreateRevision != s.fence.Rev {
			return ErrFenced
		}
	}
	return errConflict
}

var errConflict = errors.New("concurrent write, retry")

// commitRetry retries build+Commit while another writer got in between.
func (s *Store) commitRetry(build func(ctx context.Context) ([]clientv3.Cmp, []clientv3.Op, error)) error {
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		cmps, ops, err := build(ctx)
		cancel()
		if err != nil {
			return err
		}
		err = s.Commit(context.Background(), cmps, ops...)
		if !errors.Is(err, errConflict) {
			return err
		}
	}
	return errors.New("etcd store: too many concurrent writes")
}

func (s *Store) get(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return s.client.Get(ctx, key, opts...)
}

func (s *Store) rolloutKey(name string) string  { return s.prefix + "rollouts/" + name }
func (s *Store) eventSeqKey(name string) string { return s.prefix + "eventseq/" + name }
func (s *Store) eventsPrefix(name string) string {
	return s.prefix + "events/" + name + "/"
}
func (s *Store) eventKey(name string, seq uint64) string {
	return fmt.Sprintf("%s%020d", s.eventsPrefix(name), seq)
}

// Load implements policy.Store.
func (s *Store) Load() ([]policy.Rollout, error) {
	resp, err := s.get(s.prefix+"rollouts/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	return DecodeRollouts(resp, s.prefix)
}

// DecodeRollouts decodes a range response over the rollouts/ keys.
func DecodeRollouts(resp *clientv3.GetResponse, prefix string) ([]policy.Rollout, error) {
	var out []policy.Rollout
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), prefix+"rollouts/")
		var r policy.Rollout
		payload, err := unseal(string(kv.Key), kv.Value)
		if err == nil {
			err = json.Unmarshal(payload, &r)
		}
		if err == nil && r.Plan.Name != name {
			err = fmt.Errorf("it holds rollout %q", r.Plan.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("rollout %q: corrupt record at key %s: %w", name, kv.Key, err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Plan.Name < out[j].Plan.Name })
	return out, nil
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
	rkey := s.rolloutKey(name)
	if len(events) == 0 {
		return s.Commit(context.Background(), nil, clientv3.OpPut(rkey, seal(rkey, data)))
	}
	return s.commitRetry(func(ctx context.Context) ([]clientv3.Cmp, []clientv3.Op, error) {
		seqKey := s.eventSeqKey(name)
		resp, err := s.get(seqKey)
		if err != nil {
			return nil, nil, err
		}
		var seq uint64
		var rev int64
		if len(resp.Kvs) == 1 {
			payload, err := unseal(seqKey, resp.Kvs[0].Value)
			if err == nil {
				seq, err = strconv.ParseUint(string(payload), 10, 64)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("rollout %q: corrupt event sequence at key %s: %w", name, seqKey, err)
			}
			rev = resp.Kvs[0].ModRevision
		}
		ops := []clientv3.Op{clientv3.OpPut(rkey, seal(rkey, data))}
		for _, e := range events {
			seq++
			e.Seq = seq
			e.Rollout = name
			ed, err := json.Marshal(e)
			if err != nil {
				return nil, nil, err
			}
			ekey := s.eventKey(name, seq)
			ops = append(ops, clientv3.OpPut(ekey, seal(ekey, ed)))
		}
		ops = append(ops, clientv3.OpPut(seqKey, seal(seqKey, []byte(strconv.FormatUint(seq, 10)))))
		return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(seqKey), "=", rev)}, ops, nil
	})
}

// Delete implements policy.Store.
func (s *Store) Delete(name string) error {
	return s.Commit(context.Background(), nil,
		clientv3.OpDelete(s.rolloutKey(name)),
		clientv3.OpDelete(s.eventSeqKey(name)),
		clientv3.OpDelete(s.eventsPrefix(name), clientv3.WithPrefix()))
}

// Events implements policy.Store.
func (s *Store) Events(name string, limit int) ([]policy.Event, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	resp, err := s.get(s.eventsPrefix(name), opts...)
	if err != nil {
		return nil, err
	}
	out := make([]policy.Event, 0, len(resp.Kvs))
	for i := len(resp.Kvs) - 1; i >= 0; i-- {
		kv := resp.Kvs[i]
		var e policy.Event
		payload, err := unseal(string(kv.Key), kv.Value)
		if err == nil {
			err = json.Unmarshal(payload, &e)
		}
		if err == nil && e.Rollout != name {
			err = fmt.Errorf("it belongs to rollout %q", e.Rollout)
		}
		if err != nil {
			seq := strings.TrimLeft(strings.TrimPrefix(string(kv.Key), s.eventsPrefix(name)), "0")
			return nil, fmt.Errorf("rollout %q: event %s: corrupt record at key %s: %w", name, seq, kv.Key, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// NextVersion implements policy.Store and xds.VersionCounter. The counter
// lives in etcd, so versions stay unique across replicas, restarts and
// failovers.
func (s *Store) NextVersion() (uint64, error) {
	key := s.prefix + "version"
	var n uint64
	err := s.commitRetry(func(ctx context.Context) ([]clientv3.Cmp, []clientv3.Op, error) {
		resp, err := s.get(key)
		if err != nil {
			return nil, nil, err
		}
		n = 0
		var rev int64
		if len(resp.Kvs) == 1 {
			if n, err = strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64); err != nil {
				return nil, nil, fmt.Errorf("corrupt snapshot version %q: %w", resp.Kvs[0].Value, err)
			}
			rev = resp.Kvs[0].ModRevision
		}
		n++
		return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
			[]clientv3.Op{clientv3.OpPut(key, strconv.FormatUint(n, 10))}, nil
	})
	return n, err
}

// Close implements policy.Store. It closes the client only if Open dialled it.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.owns {
		return s.client.Close()
	}
	return nil
}

const sealTag = "crc32c:"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func sealSum(key string, payload []byte) uint32 {
	h := crc32.New(castagnoli)
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write(payload)
	return h.Sum32()
}

// seal wraps a value with its checksum over the key and the payload.
func seal(key string, payload []byte) string {
	return fmt.Sprintf("%s%08x %s", sealTag, sealSum(key, payload), payload)
}

// unseal checks a sealed value and returns its payload. A value without the
// tag is one written before sealing and is returned as it is; its own
// decoding is then the only check.
func unseal(key string, v []byte) ([]byte, error) {
	rest, ok := strings.CutPrefix(string(v), sealTag)
	if !ok {
		if len(v) > 0 && strings.HasPrefix(sealTag, string(v[:min(len(v), len(sealTag))])) {
			return nil, errors.New("truncated checksum")
		}
		return v, nil
	}
	if len(rest) < 9 || rest[8] != ' ' {
		return nil, errors.New("malformed checksum")
	}
	want, err := strconv.ParseUint(rest[:8], 16, 32)
	if err != nil {
		return nil, fmt.Errorf("malformed checksum %q", rest[:8])
	}
	payload := []byte(rest[9:])
	if got := sealSum(key, payload); got != uint32(want) {
		return nil, fmt.Errorf("checksum mismatch (stored %08x, computed %08x): the value was changed or moved", want, got)
	}
	return payload, nil
}
