package etcdharness

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A value written through one member is read through another, and the
// cluster keeps its quorum with one member down.
func TestClusterReplicates(t *testing.T) {
	c := Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := func(ep string) *clientv3.Client {
		cl, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	eps := c.Endpoints()
	if _, err := client(eps[0]).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	c.StopMember(0)
	if c.Running(0) {
		t.Fatal("member 0 still running")
	}
	r, err := client(eps[2]).Get(ctx, "k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("get through member 2 with member 0 down: %v, %v", r, err)
	}
	if _, err := client(eps[1]).Put(ctx, "k", "w"); err != nil {
		t.Fatalf("put with one of three down: %v", err)
	}
	if err := c.RestartMember(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// The restarted member catches up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := client(eps[0]).Get(ctx, "k")
		if err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "w" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted member never caught up: %v, %v", r, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
