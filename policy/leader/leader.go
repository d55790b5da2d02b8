// Package leader elects one shiftplane replica to run the engine, with
// concurrency.Election on an etcd session whose lease has a TTL. The
// leader's Term carries the election key and revision that fence its
// writes; when the session's lease is lost (the process was paused past
// the TTL, or cut off from etcd) the term's context ends, the leader steps
// down, and the replica campaigns again on a new session.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Options configure an Elector.
type Options struct {
	// Prefix is the store's key prefix; the election lives under <prefix>leader.
	Prefix string
	// TTL is the session lease: a leader that cannot renew it for this long
	// loses leadership. Whole seconds, at least 1 (default 5s).
	TTL time.Duration
	// ID identifies this replica to the others (its policy API address, so
	// followers can forward calls to the leader).
	ID  string
	Log *slog.Logger
}

// Term is one stretch of leadership.
type Term struct {
	ID string
	// Key and Rev are the election key and its create revision: a write
	// conditioned on them applies only during this term.
	Key string
	Rev int64
	// Lease is the session lease of the term.
	Lease clientv3.LeaseID
}

// Elector campaigns for leadership and tracks who leads. Its methods are
// safe for concurrent use; Run is called once.
type Elector struct {
	client *clientv3.Client
	o      Options

	mu       sync.Mutex
	sess     *concurrency.Session
	leaderID string
	leading  bool
	lastErr  error
	changed  chan struct{}
}

// New returns an elector; it does nothing until Run.
func New(client *clientv3.Client, o Options) (*Elector, error) {
	if o.TTL == 0 {
		o.TTL = 5 * time.Second
	}
	if o.TTL < time.Second || o.TTL%time.Second != 0 {
		return nil, fmt.Errorf("store.etcd.sessionTTL: must be whole seconds, at least 1s, got %s", o.TTL)
	}
	if o.ID == "" {
		return nil, errors.New("leader: replica ID must not be empty")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Elector{client: client, o: o, changed: make(chan struct{})}, nil
}

// ElectionKey is the election prefix under a store prefix.
func ElectionKey(prefix string) string { return prefix + "leader" }

// Run campaigns until ctx ends. Each time this replica is elected it calls
// lead with a context that ends when the term does (lease lost, or ctx
// ended); lead must return soon after. Run resigns a term that ends with
// ctx, so a stopping leader hands over at once instead of after its TTL.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context, t Term)) {
	for ctx.Err() == nil {
		if err := e.runSession(ctx, lead); err != nil && ctx.Err() == nil {
			e.setErr(err)
			e.o.Log.Warn("leader election: session ended", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

func (e *Elector) runSession(ctx context.Context, lead func(context.Context, Term)) error {
	ttl := int(e.o.TTL / time.Second)
	gctx, gcancel := context.WithTimeout(ctx, e.o.TTL)
	grant, err := e.client.Grant(gctx, int64(ttl))
	gcancel()
	if err != nil {
		return fmt.Errorf("grant session lease: %w", err)
	}
	// The session outlives ctx by a moment so that a clean stop can still
	// resign and revoke its lease (a cancelled session context would skip
	// both and leave the lease to run out its TTL).
	kctx, kcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer kcancel()
	sess, err := concurrency.NewSession(e.client, concurrency.WithTTL(ttl), concurrency.WithLease(grant.ID), concurrency.WithContext(kctx))
	if err != nil {
		return fmt.Errorf("new session: %w", err)
	}
	defer sess.Close()
	e.mu.Lock()
	e.sess, e.lastErr = sess, nil
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.sess = nil
		e.mu.Unlock()
		// Without a session this replica does not know who leads: a stale
		// name would send forwarded calls to a replica that no longer does.
		e.setLeader("")
	}()

	// The session's context ends with ctx or with the lease.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-sctx.Done():
		}
	}()
	el := concurrency.NewElection(sess, ElectionKey(e.o.Prefix))
	go e.observe(sctx, el)
	if err := el.Campaign(sctx, e.o.ID); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	term := Term{ID: e.o.ID, Key: el.Key(), Rev: el.Rev(), Lease: sess.Lease()}
	e.o.Log.Info("elected leader", "id", e.o.ID, "key", term.Key, "rev", term.Rev)
	e.setLeading(true)
	lead(sctx, term)
	e.setLeading(false)
	e.setLeader("") // the observer names the next leader
	select {
	case <-sess.Done():
		if ctx.Err() == nil {
			e.o.Log.Warn("leadership lost: session lease expired", "id", e.o.ID)
			return errors.New("session lease lost")
		}
	default:
	}
	// Stepping down on purpose: resign so another replica takes over now.
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	if err := el.Resign(rctx); err != nil {
		e.o.Log.Warn("resign", "error", err)
	}
	e.o.Log.Info("stepped down", "id", e.o.ID)
	if ctx.Err() == nil {
		return errors.New("leader work ended early; campaigning again")
	}
	return nil
}

// observe keeps the leader's ID current until ctx ends.
func (e *Elector) observe(ctx context.Context, el *concurrency.Election) {
	for ctx.Err() == nil {
		for resp := range el.Observe(ctx) {
			if len(resp.Kvs) > 0 {
				e.setLeader(string(resp.Kvs[0].Value))
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (e *Elector) setLeader(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if id != e.leaderID {
		e.leaderID = id
		close(e.changed)
		e.changed = make(chan struct{})
	}
}

func (e *Elector) setLeading(v bool) {
	e.mu.Lock()
	e.leading = v
	e.mu.Unlock()
	if v {
		e.setLeader(e.o.ID)
	}
}

func (e *Elector) setErr(err error) {
	e.mu.Lock()
	e.lastErr = err
	e.mu.Unlock()
}

// IsLeader reports whether this replica holds a term now.
func (e *Elector) IsLeader() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

// Leader returns the last observed leader's ID ("" before one is known),
// and a channel closed when it changes.
func (e *Elector) Leader() (string, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leaderID, e.changed
}

// Session returns the live session, or nil between sessions. Entries put
// under its lease vanish when the replica dies or is cut off.
func (e *Elector) Session() *concurrency.Session {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sess
}

// Health is nil while the replica has a live session, or says why not.
func (e *Elector) Health() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sess != nil {
		select {
		case <-e.sess.Done():
		default:
			return nil
		}
	}
	if e.lastErr != nil {
		return fmt.Errorf("no etcd session: %w", e.lastErr)
	}
	return errors.New("no etcd session yet")
}

// ID returns this replica's ID.
func (e *Elector) ID() string { return e.o.ID }
