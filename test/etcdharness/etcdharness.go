// Package etcdharness starts a real etcd cluster for tests: members of
// go.etcd.io/etcd/server/v3/embed in the test process, with real Raft
// between them over loopback, on free ports. Every member stops on every
// exit path of the test (t.Cleanup).
package etcdharness

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/shiftplane/shiftplane/test/harness"
)

// Cluster is a running etcd cluster. Its methods are safe for concurrent use.
type Cluster struct {
	t       testing.TB
	members []*Member
	initial string
}

// Member is one etcd member.
type Member struct {
	Name      string
	Dir       string
	ClientURL string
	peerURL   string

	mu   sync.Mutex
	etcd *embed.Etcd
}

// Start runs an n-member cluster and waits until it has a leader. The
// cluster is stopped when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			Dir:       filepath.Join(t.TempDir(), fmt.Sprintf("m%d", i)),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t)),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t)),
		}
		c.members = append(c.members, m)
		initial = append(initial, m.Name+"="+m.peerURL)
	}
	c.initial = strings.Join(initial, ",")
	t.Cleanup(c.Stop)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Go(func() { errs[i] = c.start(m, "new") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("etcdharness: member %d: %v", i, err)
		}
	}
	return c
}

func (c *Cluster) start(m *Member, state string) error {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.Dir
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(filepath.Dir(m.Dir), m.Name+".log")}
	pu, _ := url.Parse(m.peerURL)
	cu, _ := url.Parse(m.ClientURL)
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = "shiftplane-test"
	cfg.ClusterState = state
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	// Ready needs a quorum: the members are started together.
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return err
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("not ready after 30s")
	}
	m.mu.Lock()
	m.etcd = e
	m.mu.Unlock()
	return nil
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.ClientURL)
	}
	return out
}

// Members returns the members, in start order.
func (c *Cluster) Members() []*Member { return c.members }

// StopMember stops member i (its data stays for RestartMember).
func (c *Cluster) StopMember(i int) {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.etcd != nil {
		m.etcd.Close()
		m.etcd = nil
	}
}

// RestartMember starts a stopped member i again on its data. It returns
// once the member is serving, which needs a quorum.
func (c *Cluster) RestartMember(ctx context.Context, i int) error {
	m := c.members[i]
	done := make(chan error, 1)
	go func() { done <- c.start(m, "existing") }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Running reports whether member i is running.
func (c *Cluster) Running(i int) bool {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd != nil
}

// Stop stops every member: followers first, then the leader, which then
// has nobody to hand its leadership to and stops at once (stopping all
// together makes each wait out a leadership transfer).
func (c *Cluster) Stop() {
	var leaders []int
	for i, m := range c.members {
		m.mu.Lock()
		isLeader := m.etcd != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID()
		m.mu.Unlock()
		if isLeader {
			leaders = append(leaders, i)
			continue
		}
		c.StopMember(i)
	}
	for _, i := range leaders {
		c.StopMember(i)
	}
}
