package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/storetest"
	"github.com/shiftplane/shiftplane/test/etcdharness"
)

// One real 3-member cluster for the package; each test works under its own prefix.
func TestEtcdStore(t *testing.T) {
	cluster := etcdharness.Start(t, 3)
	client := func(t *testing.T) *clientv3.Client {
		t.Helper()
		c, err := Dial(Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var prefixes atomic.Int64
	newPrefix := func() string { return fmt.Sprintf("/test-%d/", prefixes.Add(1)) }
	open := func(t *testing.T, c *clientv3.Client, prefix string) *Store {
		t.Helper()
		s, err := New(context.Background(), c, prefix, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}

	t.Run("Contract", func(t *testing.T) {
		storetest.RunContract(t, func(t *testing.T) func(t *testing.T) policy.Store {
			prefix := newPrefix()
			return func(t *testing.T) policy.Store {
				// Every open is a new client: what one wrote, the next reads from etcd.
				return open(t, client(t), prefix)
			}
		})
	})

	t.Run("VersionsUniqueAcrossReplicas", func(t *testing.T) {
		prefix := newPrefix()
		a, b := open(t, client(t), prefix), open(t, client(t), prefix)
		var mu sync.Mutex
		seen := map[uint64]bool{}
		var wg sync.WaitGroup
		for i := range 6 {
			s := a
			if i%2 == 1 {
				s = b
			}
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
		if v, _ := a.NextVersion(); v != 61 {
			t.Errorf("after 60 calls from two replicas NextVersion = %d, want 61", v)
		}
	})

	t.Run("Fence", func(t *testing.T) {
		prefix := newPrefix()
		c := client(t)
		s := open(t, c, prefix)
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(5))
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		el := concurrency.NewElection(sess, prefix+"leader")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := el.Campaign(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		fenced := s.Fenced(Fence{Key: el.Key(), Rev: el.Rev()})
		r := storetest.Rollout("app", policy.PhaseProgressing, 10)
		if err := fenced.Save(r, storetest.Event(policy.PhaseProgressing, "as leader")); err != nil {
			t.Fatalf("save while leader: %v", err)
		}
		if _, err := fenced.NextVersion(); err != nil {
			t.Fatalf("NextVersion while leader: %v", err)
		}
		// The lease goes (as when it expires): every kind of write is refused.
		if _, err := c.Revoke(ctx, sess.Lease()); err != nil {
			t.Fatal(err)
		}
		r.State.Weight = 50
		writes := map[string]func() error{
			"save":        func() error { return fenced.Save(r) },
			"save+events": func() error { return fenced.Save(r, storetest.Event(policy.PhaseProgressing, "late")) },
			"delete":      func() error { return fenced.Delete("app") },
			"nextVersion": func() error { _, err := fenced.NextVersion(); return err },
		}
		for name, w := range writes {
			if err := w(); !errors.Is(err, ErrFenced) {
				t.Errorf("%s after losing the lease: %v, want ErrFenced", name, err)
			}
		}
		// A new leader's key (another revision) does not revive the old fence.
		sess2, err := concurrency.NewSession(c, concurrency.WithTTL(5))
		if err != nil {
			t.Fatal(err)
		}
		defer sess2.Close()
		el2 := concurrency.NewElection(sess2, prefix+"leader")
		if err := el2.Campaign(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		if err := fenced.Save(r); !errors.Is(err, ErrFenced) {
			t.Errorf("old leader's save after a new leader took over: %v", err)
		}
		got, _ := s.Load()
		if len(got) != 1 || got[0].State.Weight != 10 {
			t.Errorf("the refused writes changed the store: %+v", got)
		}
		if evs, _ := s.Events("app", 0); len(evs) != 1 {
			t.Errorf("the refused writes added events: %+v", evs)
		}
		if err := s.Fenced(Fence{Key: el2.Key(), Rev: el2.Rev()}).Save(r); err != nil {
			t.Errorf("new leader's save: %v", err)
		}
	})

	t.Run("CorruptRecordFailsOpen", func(t *testing.T) {
		tests := map[string]struct {
			key, value string
			want       []string
		}{
			"a rollout that does not decode": {"rollouts/checkout", `{"plan": {"name": "checkout"`, []string{`rollout "checkout"`, "corrupt record"}},
			"a rollout of the wrong shape":   {"rollouts/payments", `{"state": {"stepIndex": "two"}}`, []string{`rollout "payments"`}},
			"another schema":                 {"schema", "9", []string{`schema version "9"`}},
		}
		for name, tc := range tests {
			t.Run(name, func(t *testing.T) {
				prefix := newPrefix()
				c := client(t)
				s := open(t, c, prefix)
				if err := s.Save(storetest.Rollout("good", policy.PhaseProgressing, 10)); err != nil {
					t.Fatal(err)
				}
				if _, err := c.Put(context.Background(), prefix+tc.key, tc.value); err != nil {
					t.Fatal(err)
				}
				_, err := New(context.Background(), c, prefix, time.Second)
				if err == nil {
					t.Fatal("New on a corrupt store succeeded")
				}
				for _, w := range append(tc.want, prefix) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
			})
		}
	})

	t.Run("ChecksumsCatchChangedRecords", func(t *testing.T) {
		prefix := newPrefix()
		c := client(t)
		s := open(t, c, prefix)
		ev := policy.Event{From: policy.PhasePending, To: policy.PhaseProgressing, Reason: "step 1", Weight: 10}
		if err := s.Save(storetest.Rollout("checkout", policy.PhaseProgressing, 55), ev); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		raw := func(key string) []byte {
			t.Helper()
			resp, err := c.Get(ctx, prefix+key)
			if err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("get %s: %v", key, err)
			}
			return resp.Kvs[0].Value
		}
		put := func(key string, v []byte) {
			t.Helper()
			if _, err := c.Put(ctx, prefix+key, string(v)); err != nil {
				t.Fatal(err)
			}
		}
		good := raw("rollouts/checkout")
		flips, refused := 0, 0
		for i := 0; i < len(good); i += max(1, len(good)/60) {
			bad := append([]byte(nil), good...)
			bad[i] ^= 1 << (i % 8)
			put("rollouts/checkout", bad)
			flips++
			_, err := New(ctx, c, prefix, time.Second)
			if err == nil {
				t.Errorf("flip of byte %d (%q → %q) loaded silently", i, good[i], bad[i])
				continue
			}
			if !strings.Contains(err.Error(), prefix+"rollouts/checkout") {
				t.Errorf("flip of byte %d: error %q does not name the key", i, err)
			}
			refused++
		}
		put("rollouts/checkout", good)
		put("rollouts/payments", good) // a whole record under another key
		if _, err := New(ctx, c, prefix, time.Second); err == nil || !strings.Contains(err.Error(), prefix+"rollouts/payments") {
			t.Errorf("a record copied under another key: %v", err)
		}
		if _, err := c.Delete(ctx, prefix+"rollouts/payments"); err != nil {
			t.Fatal(err)
		}
		evKey := fmt.Sprintf("events/checkout/%020d", 1)
		goodEv := raw(evKey)
		badEv := append([]byte(nil), goodEv...)
		badEv[len(badEv)-3] ^= 0x10
		put(evKey, badEv)
		if _, err := s.Events("checkout", 0); err == nil || !strings.Contains(err.Error(), prefix+evKey) {
			t.Errorf("a changed event: %v", err)
		}
		put(evKey, goodEv)
		// Records written before sealing still load.
		legacy, err := json.Marshal(storetest.Rollout("legacy", policy.PhasePaused, 20))
		if err != nil {
			t.Fatal(err)
		}
		put("rollouts/legacy", legacy)
		s2, err := New(ctx, c, prefix, time.Second)
		if err != nil {
			t.Fatalf("the mended store with an unsealed record: %v", err)
		}
		if rs, err := s2.Load(); err != nil || len(rs) != 2 || rs[0].State.Weight != 55 || rs[1].State.Weight != 20 {
			t.Fatalf("load after mending: %v, %+v", err, rs)
		}
		t.Logf("%d single-bit flips of a sealed rollout record: %d refused at start naming the key", flips, refused)
	})

	t.Run("CorruptEventIsAnError", func(t *testing.T) {
		prefix := newPrefix()
		c := client(t)
		s := open(t, c, prefix)
		if err := s.Save(storetest.Rollout("a", policy.PhasePending, 0), storetest.Event(policy.PhasePending, "one")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(context.Background(), s.eventKey("a", 2), "{"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Events("a", 0); err == nil || !strings.Contains(err.Error(), `rollout "a": event 2`) {
			t.Errorf("events with a corrupt record: %v", err)
		}
	})

	t.Run("NoEndpoints", func(t *testing.T) {
		if _, err := Open(context.Background(), Config{}); err == nil || !strings.Contains(err.Error(), "store.etcd.endpoints") {
			t.Errorf("Open without endpoints: %v", err)
		}
	})
}
