package leader

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/etcdstore"
	"github.com/shiftplane/shiftplane/policy/storetest"
	"github.com/shiftplane/shiftplane/test/etcdharness"
)

// pausableProxy forwards TCP to target; Pause stops moving bytes both ways
// (as a SIGSTOPped process or a partition would), Resume starts again.
type pausableProxy struct {
	l      net.Listener
	paused atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *pausableProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pausableProxy{l: l}
	t.Cleanup(p.close)
	p.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Go(func() { p.pipe(u, c) })
			p.wg.Go(func() { p.pipe(c, u) })
		}
	})
	return p
}

func (p *pausableProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.paused.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				dst.Close()
			}
			return
		}
	}
}

func (p *pausableProxy) close() {
	p.paused.Store(false)
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func newClient(t *testing.T, eps ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func elector(t *testing.T, c *clientv3.Client, id string) *Elector {
	t.Helper()
	e, err := New(c, Options{Prefix: "/sp/", TTL: 2 * time.Second, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestElection(t *testing.T) {
	cluster := etcdharness.Start(t, 3)
	eps := cluster.Endpoints()

	t.Run("PausedLeaderCannotWriteAndStepsDown", func(t *testing.T) {
		proxy := startProxy(t, strings.TrimPrefix(eps[0], "http://"))
		ca := newClient(t, "http://"+proxy.l.Addr().String())
		cb := newClient(t, eps[1], eps[2])
		store, err := etcdstore.New(context.Background(), cb, "/sp/", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		storeA, err := etcdstore.New(context.Background(), ca, "/sp/", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()

		a, b := elector(t, ca, "a"), elector(t, cb, "b")
		elected := make(chan Term, 1)
		resume := make(chan struct{})
		lateWrite := make(chan error, 1)
		aDone := make(chan struct{})
		go func() {
			defer close(aDone)
			a.Run(ctx, func(lctx context.Context, term Term) {
				select {
				case elected <- term:
				default:
					return // a later term of a: not part of this scenario
				}
				<-resume // paused: the process does not run
				r := storetest.Rollout("app", policy.PhaseProgressing, 99)
				lateWrite <- storeA.Fenced(etcdstore.Fence{Key: term.Key, Rev: term.Rev}).Save(r)
				<-lctx.Done()
			})
		}()
		var termA Term
		select {
		case termA = <-elected:
		case <-time.After(10 * time.Second):
			t.Fatal("a was never elected")
		}
		if !a.IsLeader() {
			t.Error("a elected but IsLeader false")
		}
		bTerm := make(chan Term, 1)
		go b.Run(ctx, func(lctx context.Context, term Term) {
			bTerm <- term
			r := storetest.Rollout("app", policy.PhaseProgressing, 10)
			if err := store.Fenced(etcdstore.Fence{Key: term.Key, Rev: term.Rev}).Save(r); err != nil {
				t.Errorf("new leader's write: %v", err)
			}
			<-lctx.Done()
		})
		waitFor(t, "b sees a as leader", 5*time.Second, func() bool { id, _ := b.Leader(); return id == "a" })

		paused := time.Now()
		proxy.paused.Store(true)
		var termB Term
		select {
		case termB = <-bTerm:
		case <-time.After(2*time.Second + 5*time.Second):
			t.Fatal("b not elected within TTL + 5s of a's pause")
		}
		took := time.Since(paused)
		t.Logf("new leader %s after %s (TTL 2s)", termB.ID, took.Round(time.Millisecond))
		if took > 2*time.Second+2*time.Second {
			t.Errorf("failover took %s, want within TTL + 2s", took)
		}
		if termB.Rev <= termA.Rev {
			t.Errorf("b's term rev %d not after a's %d", termB.Rev, termA.Rev)
		}

		// a wakes up and, before noticing, writes: refused.
		proxy.paused.Store(false)
		close(resume)
		select {
		case err := <-lateWrite:
			if !errors.Is(err, etcdstore.ErrFenced) {
				t.Errorf("paused leader's write after its lease expired: %v, want ErrFenced", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a's late write never returned")
		}
		waitFor(t, "a steps down", 10*time.Second, func() bool { return !a.IsLeader() })
		waitFor(t, "a sees b as leader", 10*time.Second, func() bool { id, _ := a.Leader(); return id == "b" })
		waitFor(t, "a has a new session", 10*time.Second, func() bool { return a.Health() == nil })
		got, err := store.Load()
		if err != nil || len(got) != 1 || got[0].State.Weight != 10 {
			t.Errorf("store after a's late write: %+v, %v (want b's weight 10)", got, err)
		}
		if !b.IsLeader() {
			t.Error("b lost leadership")
		}
		cancel()
		<-aDone
	})

	t.Run("StopResignsAtOnce", func(t *testing.T) {
		ca, cb := newClient(t, eps...), newClient(t, eps...)
		actx, acancel := context.WithCancel(context.Background())
		bctx, bcancel := context.WithCancel(context.Background())
		defer bcancel()
		a, b := elector(t, ca, "a2"), elector(t, cb, "b2")
		aRan := make(chan struct{})
		go a.Run(actx, func(lctx context.Context, _ Term) { close(aRan); <-lctx.Done() })
		<-aRan
		bLead := make(chan time.Time, 1)
		go b.Run(bctx, func(lctx context.Context, _ Term) { bLead <- time.Now(); <-lctx.Done() })
		waitFor(t, "b sees a2", 5*time.Second, func() bool { id, _ := b.Leader(); return id == "a2" })
		stopped := time.Now()
		acancel()
		select {
		case at := <-bLead:
			// Well under the 2s TTL: a resigned instead of letting its lease run out.
			if d := at.Sub(stopped); d > time.Second {
				t.Errorf("takeover after a clean stop took %s", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("b never took over")
		}
	})

	t.Run("BadOptions", func(t *testing.T) {
		c := newClient(t, eps...)
		for _, o := range []Options{{ID: "x", TTL: 1500 * time.Millisecond}, {ID: "x", TTL: 500 * time.Millisecond}, {TTL: time.Second}} {
			if _, err := New(c, o); err == nil {
				t.Errorf("New(%+v) succeeded", o)
			}
		}
	})
}
