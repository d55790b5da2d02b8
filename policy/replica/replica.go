// Package replica shares what one shiftplane replica knows with the others
// through etcd, for store.backend: etcd. The leader stores every publish
// (desired state and its versions) before serving it, and every replica
// serves it at the same versions (Follow). Each replica stores its
// connected nodes' ACK/NACK state and the stats its MetricsService sink
// receives under its session lease (Reporter), so a replica that dies takes
// its entries with it; View reads them all back as the fleet the leader's
// convergence and signal gate look at.
//
// Keys under the store prefix:
//
//	desired             the leader's last publish (JSON desiredRecord)
//	replicas/<id>       one replica's fleet and stats (gzipped JSON Record), leased
package replica

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/etcdstore"
	"github.com/shiftplane/shiftplane/policy/signal"
	"github.com/shiftplane/shiftplane/xds"
)

// desiredRecord is one publish of the leader.
type desiredRecord struct {
	Version  uint64              `json:"version"`
	Versions map[string]string   `json:"versions"`
	Reason   string              `json:"reason"`
	Desired  policy.DesiredState `json:"desired"`
}

func desiredKey(prefix string) string { return prefix + "desired" }

// ReplicasPrefix is where the replicas' records live.
func ReplicasPrefix(prefix string) string { return prefix + "replicas/" }

// StoreHook returns the xds.Publisher BeforeSet hook of a leader: each
// publish is written to etcd through the store current() returns (the
// term's fenced store, nil when not leading), so followers serve it, and
// a leader that lost its term cannot publish.
func StoreHook(current func() *etcdstore.Store) func(ctx context.Context, rec xds.Published, ds policy.DesiredState) error {
	return func(ctx context.Context, rec xds.Published, ds policy.DesiredState) error {
		s := current()
		if s == nil {
			return etcdstore.ErrFenced
		}
		data, err := json.Marshal(desiredRecord{Version: rec.Version, Versions: rec.Versions, Reason: rec.Reason, Desired: ds})
		if err != nil {
			return err
		}
		if err := s.Commit(ctx, nil, clientv3.OpPut(desiredKey(s.Prefix()), string(data))); err != nil {
			return fmt.Errorf("store publish for the other replicas: %w", err)
		}
		return nil
	}
}

// Follow serves the leader's publishes on pub until ctx ends: it reads the
// desired key, then watches it (no polling). ready is called once the
// first read is done (there may be nothing published yet).
func Follow(ctx context.Context, client *clientv3.Client, prefix string, pub *xds.Publisher, log *slog.Logger, ready func()) {
	key := desiredKey(prefix)
	var once sync.Once
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := client.Get(rctx, key)
		cancel()
		if err != nil {
			log.Warn("read the leader's publish", "error", err)
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		if len(resp.Kvs) == 1 {
			apply(ctx, pub, resp.Kvs[0].Value, log)
		}
		once.Do(ready)
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range client.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
			if err := wr.Err(); err != nil {
				log.Warn("watch the leader's publish", "error", err)
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					apply(ctx, pub, ev.Kv.Value, log)
				}
			}
		}
		wcancel()
		sleep(ctx, 200*time.Millisecond)
	}
}

func apply(ctx context.Context, pub *xds.Publisher, data []byte, log *slog.Logger) {
	var rec desiredRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		log.Error("the leader's publish does not decode; keeping the last one", "error", err)
		return
	}
	p, err := pub.SetReplicated(ctx, rec.Desired, rec.Versions, "replicated: "+rec.Reason)
	if err != nil {
		log.Error("serve the leader's publish", "version", rec.Version, "error", err)
		return
	}
	if len(p.Changed) > 0 {
		log.Info("serving the leader's publish", "version", rec.Version, "reason", rec.Reason)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Record is what one replica stores about its part of the fleet.
type Record struct {
	ID    string              `json:"id"`
	At    time.Time           `json:"at"`
	Nodes []xds.NodeStatus    `json:"nodes"`
	Stats []signal.NodeReport `json:"stats"`
}

// Local is what a replica knows first-hand.
type Local struct {
	Nodes func() []xds.NodeStatus
	Stats signal.StatsSource
}

// Reporter writes this replica's Record under its session lease, at most
// once per Every and only when it changed.
type Reporter struct {
	Client *clientv3.Client
	Prefix string
	ID     string
	Local  Local
	// Lease returns the replica's live session lease (0: none now).
	Lease func() clientv3.LeaseID
	Every time.Duration
	Log   *slog.Logger

	writes atomic.Int64
	bytes  atomic.Int64
}

// Writes returns how many records were written and their total size.
func (r *Reporter) Writes() (n, bytes int64) { return r.writes.Load(), r.bytes.Load() }

// Run writes until ctx ends.
func (r *Reporter) Run(ctx context.Context) {
	every := r.Every
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	key := ReplicasPrefix(r.Prefix) + url.PathEscape(r.ID)
	t := time.NewTicker(every)
	defer t.Stop()
	var last []byte
	var lastLease clientv3.LeaseID
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lease := r.Lease()
		if lease == 0 {
			continue
		}
		rec := Record{ID: r.ID, Nodes: r.Local.Nodes(), Stats: r.Local.Stats.Reports()}
		body, err := json.Marshal(rec)
		if err != nil {
			r.Log.Error("encode replica record", "error", err)
			continue
		}
		if lease == lastLease && string(body) == string(last) {
			continue
		}
		rec.At = time.Now()
		data, err := encodeRecord(rec)
		if err != nil {
			r.Log.Error("encode replica record", "error", err)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = r.Client.Put(wctx, key, string(data), clientv3.WithLease(lease))
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.Log.Warn("store this replica's fleet record", "error", err)
			}
			continue
		}
		r.writes.Add(1)
		r.bytes.Add(int64(len(data)))
		last, lastLease = body, lease
	}
}

// View is the union of every replica's records, kept current by a watch.
// It serves the leader's FleetView and signal.StatsSource. Safe for
// concurrent use.
type View struct {
	client  *clientv3.Client
	prefix  string
	localID string
	local   Local
	served  func() map[string]string
	log     *slog.Logger

	onChange func()

	mu      sync.Mutex
	records map[string]Record
	synced  bool
	grace   time.Duration
}

// SetOnChange makes the view call fn after it took in other replicas'
// records (their streams' ACKs, their stats): the leader's engine's Wake.
// fn must not block. Call before Run.
func (v *View) SetOnChange(fn func()) { v.onChange = fn }

func (v *View) changed() {
	if v.onChange != nil {
		v.onChange()
	}
}

// SetReadyGrace makes a stream that has ACKed nothing stop holding back
// convergence once it has been connected this long (xds.readyGrace), as on
// one replica. Zero keeps every stream.
func (v *View) SetReadyGrace(d time.Duration) {
	v.mu.Lock()
	v.grace = d
	v.mu.Unlock()
}

// NewView returns a view; Run keeps it current. localID's own record is
// ignored in favour of local (fresher); served returns the versions the
// replica serves (xds.Publisher.Versions).
func NewView(client *clientv3.Client, prefix, localID string, local Local, served func() map[string]string, log *slog.Logger) *View {
	return &View{client: client, prefix: prefix, localID: localID, local: local, served: served, log: log, records: map[string]Record{}}
}

// Run reads and watches the records until ctx ends.
func (v *View) Run(ctx context.Context) {
	pfx := ReplicasPrefix(v.prefix)
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := v.client.Get(rctx, pfx, clientv3.WithPrefix())
		cancel()
		if err != nil {
			v.log.Warn("read the replicas' fleet records", "error", err)
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		recs := map[string]Record{}
		for _, kv := range resp.Kvs {
			if r, ok := v.decode(kv.Value); ok {
				recs[string(kv.Key)] = r
			}
		}
		v.mu.Lock()
		v.records, v.synced = recs, true
		v.mu.Unlock()
		v.changed()
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range v.client.Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if err := wr.Err(); err != nil {
				v.log.Warn("watch the replicas' fleet records", "error", err)
				break
			}
			v.mu.Lock()
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(v.records, k)
					continue
				}
				if r, ok := v.decode(ev.Kv.Value); ok {
					v.records[k] = r
				}
			}
			v.mu.Unlock()
			v.changed()
		}
		wcancel()
		sleep(ctx, 200*time.Millisecond)
	}
}

// encodeRecord is gzipped JSON: 1,000 nodes' ACK state and stats are ~1 MiB
// of repetitive JSON (etcd refuses requests over 1.5 MiB by default) and
// compress well.
func encodeRecord(rec Record) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(rec); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func decodeRecord(b []byte) (Record, error) {
	var r Record
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return r, err
	}
	err = json.NewDecoder(io.LimitReader(zr, 64<<20)).Decode(&r)
	return r, err
}

func (v *View) decode(b []byte) (Record, bool) {
	r, err := decodeRecord(b)
	if err != nil {
		v.log.Error("replica record does not decode", "error", err)
		return Record{}, false
	}
	return r, true
}

// ReplicaNode is a node stream and the replica it is connected to.
type ReplicaNode struct {
	xds.NodeStatus
	Replica string
}

// Nodes returns every connected stream of the fleet with its replica,
// sorted by node. A node seen on several replicas (it moved, and the old
// replica's record has not caught up or its lease not yet expired) is
// counted where it connected last.
func (v *View) Nodes() []ReplicaNode {
	v.mu.Lock()
	recs := make([]Record, 0, len(v.records)+1)
	for _, r := range v.records {
		if r.ID != v.localID {
			recs = append(recs, r)
		}
	}
	v.mu.Unlock()
	recs = append(recs, Record{ID: v.localID, Nodes: v.local.Nodes()})
	type pick struct {
		replica string
		since   time.Time
	}
	best := map[string]pick{}
	for _, r := range recs {
		for _, n := range r.Nodes {
			if b, ok := best[n.ID]; !ok || n.ConnectedSince.After(b.since) || (n.ConnectedSince.Equal(b.since) && r.ID < b.replica) {
				best[n.ID] = pick{replica: r.ID, since: n.ConnectedSince}
			}
		}
	}
	var out []ReplicaNode
	for _, r := range recs {
		for _, n := range r.Nodes {
			if best[n.ID].replica == r.ID {
				out = append(out, ReplicaNode{NodeStatus: n, Replica: r.ID})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].StreamID < out[j].StreamID
	})
	return out
}

// Reports implements signal.StatsSource: every node's newest report, from
// whichever replica its stats stream is on.
func (v *View) Reports() []signal.NodeReport {
	v.mu.Lock()
	var all []signal.NodeReport
	for _, r := range v.records {
		if r.ID != v.localID {
			all = append(all, r.Stats...)
		}
	}
	v.mu.Unlock()
	all = append(all, v.local.Stats.Reports()...)
	byNode := map[string]signal.NodeReport{}
	for _, r := range all {
		if b, ok := byNode[r.Node]; !ok || r.At.After(b.At) {
			byNode[r.Node] = r
		}
	}
	out := make([]signal.NodeReport, 0, len(byNode))
	for _, r := range byNode {
		if r.Latest == nil {
			r.Latest = map[string]float64{}
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Convergence implements policy.FleetView over every replica's streams.
func (v *View) Convergence(kind policy.ResourceKind, version string) policy.Convergence {
	rn := v.Nodes()
	nodes := make([]xds.NodeStatus, len(rn))
	for i, n := range rn {
		nodes[i] = n.NodeStatus
	}
	v.mu.Lock()
	grace := v.grace
	v.mu.Unlock()
	if grace > 0 {
		nodes = xds.Members(nodes, grace, time.Now())
	}
	var stats []string
	for _, r := range v.Reports() {
		stats = append(stats, r.Node)
	}
	return xds.ConvergenceOf(kind, version, nodes, v.served(), stats)
}

// Synced reports whether the first read of the records is done.
func (v *View) Synced() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.synced
}

var _ policy.FleetView = (*View)(nil)
var _ signal.StatsSource = (*View)(nil)

// Sync reads the leader's last publish and serves it on pub, once. A new
// leader calls it before its engine publishes, so that the restore finds
// nothing changed and keeps every version.
func Sync(ctx context.Context, client *clientv3.Client, prefix string, pub *xds.Publisher, log *slog.Logger) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := client.Get(rctx, desiredKey(prefix))
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 1 {
		apply(ctx, pub, resp.Kvs[0].Value, log)
	}
	return nil
}
