package xds

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	xdsresolver "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers

	"github.com/shiftplane/shiftplane/xds/model"
)

// A real grpc-go xds:/// client follows the translated weights.
func TestProxylessGRPCClientFollowsWeights(t *testing.T) {
	srv := startTestServer(t)
	var hits [2]atomic.Int64
	var eps [2]model.Endpoint
	for i := range 2 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		i := i
		gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			hits[i].Add(1)
			return h(ctx, req)
		}))
		healthpb.RegisterHealthServer(gs, health.NewServer())
		go func() { _ = gs.Serve(lis) }()
		t.Cleanup(gs.Stop)
		eps[i] = model.Endpoint{IP: "127.0.0.1", Port: uint32(lis.Addr().(*net.TCPAddr).Port)}
	}
	ds := testState(20)
	ds.Services[0].Listener.GRPCTargets = []string{"checkout.example:50051"}
	ds.Services[0].Stable.Endpoints = eps[:1]
	ds.Services[0].Canary.Endpoints = eps[1:]
	if _, err := srv.pub.Set(context.Background(), ds, "initial"); err != nil {
		t.Fatal(err)
	}
	bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":"grpc-client-1","cluster":"test"}}`, srv.addr)
	rb, err := xdsresolver.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///checkout.example:50051", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	hc := healthpb.NewHealthClient(cc)
	run := func(name string, want float64) {
		t.Helper()
		hits[0].Store(0)
		hits[1].Store(0)
		const n = 2000
		failed := 0
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				failed++
				if failed == 1 {
					t.Logf("%s: first failure: %v", name, err)
				}
			}
			cancel()
		}
		canary := float64(hits[1].Load()) / float64(n) * 100
		t.Logf("%s: %d RPCs, %d failed, canary share %.2f %%", name, n, failed, canary)
		if failed != 0 || canary < want-3 || canary > want+3 {
			t.Fatalf("%s: %d failed, canary share %.2f %%, want 0 failed and %.0f ± 3 %%", name, failed, canary, want)
		}
	}
	run("weight 20", 20)
	// A weight step is an RDS-only push; the client follows it.
	ds.Services[0].CanaryWeight = 70
	if _, err := srv.pub.Set(context.Background(), ds, "step"); err != nil {
		t.Fatal(err)
	}
	waitForShare(t, hc, &hits, 50)
	run("weight 70", 70)
	// Promotion: all to the canary, then the stable is withdrawn.
	ds.Services[0].CanaryWeight = 100
	if _, err := srv.pub.Set(context.Background(), ds, "promote"); err != nil {
		t.Fatal(err)
	}
	waitForShare(t, hc, &hits, 99)
	ds.Services[0].StablePublished = false
	if _, err := srv.pub.Set(context.Background(), ds, "withdraw stable"); err != nil {
		t.Fatal(err)
	}
	run("stable withdrawn", 100)
}

// waitForShare sends RPCs until the canary's share of the last 100 passes
// min (the client has the new routes), for at most 5 s.
func waitForShare(t *testing.T, hc healthpb.HealthClient, hits *[2]atomic.Int64, min float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		hits[0].Store(0)
		hits[1].Store(0)
		for range 100 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = hc.Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
		}
		if float64(hits[1].Load()) >= min {
			return
		}
	}
	t.Fatalf("the client did not follow the new weights within 5 s")
}
