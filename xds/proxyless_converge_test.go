package xds

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	xdsresolver "google.golang.org/grpc/xds"

	"github.com/shiftplane/shiftplane/xds/model"
)

// A grpc-go client that ACKs an answer without the listener it asked for
// is not converged, and says so; once its target is served it converges on
// every kind. The fleet names it a proxyless gRPC client.
func TestProxylessConvergenceNeedsTheListener(t *testing.T) {
	srv := startTestServer(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	ep := model.Endpoint{IP: "127.0.0.1", Port: uint32(lis.Addr().(*net.TCPAddr).Port)}

	ds := testState(20)
	ds.Services[0].Stable.Endpoints = []model.Endpoint{ep}
	ds.Services[0].Canary.Endpoints = []model.Endpoint{ep}
	rec, err := srv.pub.Set(context.Background(), ds, "no grpc target")
	if err != nil {
		t.Fatal(err)
	}
	bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":"grpc-conv-1","cluster":"test"}}`, srv.addr)
	rb, err := xdsresolver.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///shop.example:50051", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	cc.Connect()

	lv := rec.Versions[resourcev3.ListenerType]
	var c model.Convergence
	waitFor(t, "the client to ACK the listener answer", func() bool {
		c = srv.fleet.Convergence(model.KindListeners, lv)
		return len(c.Lacking) > 0
	})
	if c.Converged || c.Lacking[0] != `node grpc-conv-1 lacks listener "shop.example:50051"` {
		t.Fatalf("convergence %+v, want not converged, lacking the listener", c)
	}
	if !strings.Contains(c.Waiting(), "shop.example:50051") {
		t.Errorf("Waiting() = %q, want it to name the listener", c.Waiting())
	}
	nodes := srv.fleet.Nodes()
	if len(nodes) != 1 || nodes[0].Kind != KindProxyless || !strings.HasPrefix(nodes[0].UserAgent, "gRPC Go ") || nodes[0].Converged {
		t.Fatalf("nodes %+v, want one unconverged proxyless-grpc node with its user agent", nodes)
	}

	ds.Services[0].Listener.GRPCTargets = []string{"shop.example:50051"}
	rec, err = srv.pub.Set(context.Background(), ds, "grpc target")
	if err != nil {
		t.Fatal(err)
	}
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("RPC once the target is served: %v", err)
	}
	for _, k := range []struct {
		kind model.ResourceKind
		typ  string
	}{{model.KindListeners, resourcev3.ListenerType}, {model.KindRoutes, resourcev3.RouteType}, {model.KindClusters, resourcev3.ClusterType}} {
		waitFor(t, string(k.kind)+" converged", func() bool {
			c = srv.fleet.Convergence(k.kind, rec.Versions[k.typ])
			return c.Converged
		})
		if c.Nodes != 1 || len(c.Lacking) != 0 {
			t.Errorf("%s: %+v, want one converged node lacking nothing", k.kind, c)
		}
	}
}
