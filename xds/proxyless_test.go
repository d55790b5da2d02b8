package xds

import (
	"context"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shiftplane/shiftplane/xds/model"
)

// The proxyless listeners reference the route configuration an Envoy
// listener already names, so the snapshot passes Consistent() and a weight
// step changes only RDS.
func TestProxylessSnapshotConsistentAndWeightStepIsRDSOnly(t *testing.T) {
	ds := model.State{Services: []model.Service{{
		Name:         "checkout",
		Listener:     model.Listener{Address: "127.0.0.1:10000", Domains: []string{"*"}, PathPrefix: "/", GRPCTargets: []string{"checkout.example:50051"}},
		Stable:       model.Backend{Cluster: "checkout-v1", Endpoints: []model.Endpoint{{IP: "127.0.0.1", Port: 8081}}},
		Canary:       model.Backend{Cluster: "checkout-v2", Endpoints: []model.Endpoint{{IP: "127.0.0.1", Port: 8082}}},
		Outlier:      model.Outlier{Consecutive5xx: 3, Interval: time.Second, BaseEjectionTime: 10 * time.Second, MaxEjectionPercent: 100},
		CanaryWeight: 10, CanaryPublished: true, StablePublished: true,
	}}}
	pub := NewPublisher(NewCache(), &memCounter{}, time.Now, nil)
	if _, err := pub.Set(context.Background(), ds, "first"); err != nil {
		t.Fatalf("first publish: %v", err)
	}
	ds.Services[0].CanaryWeight = 50
	rec, err := pub.Set(context.Background(), ds, "step")
	if err != nil {
		t.Fatalf("weight step: %v", err)
	}
	if len(rec.Changed) != 1 || rec.Changed[0] != resourcev3.RouteType {
		t.Fatalf("weight step changed %v, want only RDS", rec.Changed)
	}
	ds.Services[0].Listener.GRPCTargets = []string{"bad/target"}
	if _, err := Translate(ds); err == nil || !strings.Contains(err.Error(), "listener.grpcTargets[0]") {
		t.Fatalf("bad target: got %v, want an error naming listener.grpcTargets[0]", err)
	}
}
