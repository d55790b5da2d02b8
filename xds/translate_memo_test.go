package xds

import (
	"slices"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/shiftplane/shiftplane/xds/model"
)

// translateBoth translates ds with the memo and without, requires the same
// resources from both, and returns the memo's assignments by cluster.
func translateBoth(t *testing.T, ds model.State, memo *assignmentMemo) map[string]*endpointv3.ClusterLoadAssignment {
	t.Helper()
	got, err := translate(ds, memo)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Translate(ds)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("translation with the memo differs from Translate (-want +got):\n%s", diff)
	}
	out := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, r := range got.Endpoints {
		cla := r.(*endpointv3.ClusterLoadAssignment)
		out[cla.GetClusterName()] = cla
	}
	return out
}

// TestTranslateMemoReusesUnchangedEndpoints: a publish rebuilds only the
// endpoints that changed (a backend's endpoints, or whether proxyless
// clients need locality weights), and the output is Translate's every time.
func TestTranslateMemoReusesUnchangedEndpoints(t *testing.T) {
	ds := readGoldenInput(t, "testdata/in/shared-listener.yaml")
	var memo assignmentMemo

	first := translateBoth(t, ds, &memo)
	if len(first) != 4 {
		t.Fatalf("want 4 assignments, got %d", len(first))
	}

	// Same input, another weight: every assignment is the same object.
	ds.Services[0].CanaryWeight = 30
	again := translateBoth(t, ds, &memo)
	for c, cla := range first {
		if again[c] != cla {
			t.Errorf("%s: rebuilt although its endpoints did not change", c)
		}
	}

	// One backend's endpoints change (in place, as a caller might reuse its
	// slice): only that one is rebuilt, with the new endpoints.
	ds.Services[1].Canary.Endpoints = append(slices.Clone(ds.Services[1].Canary.Endpoints), model.Endpoint{IP: "10.0.1.3", Port: 8080})
	moved := translateBoth(t, ds, &memo)
	for c, cla := range first {
		if c == "cart-v2" {
			if moved[c] == cla || len(moved[c].GetEndpoints()[0].GetLbEndpoints()) != 2 {
				t.Errorf("cart-v2: want a new assignment with 2 endpoints, got the same=%v with %d", moved[c] == cla, len(moved[c].GetEndpoints()[0].GetLbEndpoints()))
			}
		} else if moved[c] != cla {
			t.Errorf("%s: rebuilt although only cart-v2 changed", c)
		}
	}
	ds.Services[1].Canary.Endpoints[1].Port = 9090
	edited := translateBoth(t, ds, &memo)
	if edited["cart-v2"] == moved["cart-v2"] {
		t.Error("cart-v2: an endpoint's port changed in the caller's slice, but the memo's copy was reused")
	}

	// Proxyless clients on checkout: its localities need a weight, so its
	// assignments are rebuilt with one; cart's are kept.
	ds.Services[0].Listener.GRPCTargets = []string{"checkout.example:50051"}
	grpc := translateBoth(t, ds, &memo)
	for _, c := range []string{"checkout-v1", "checkout-v2"} {
		if grpc[c] == edited[c] || grpc[c].GetEndpoints()[0].GetLoadBalancingWeight().GetValue() != 1 {
			t.Errorf("%s: want a rebuilt assignment with locality weight 1, got %v", c, grpc[c].GetEndpoints()[0].GetLoadBalancingWeight())
		}
		if edited[c].GetEndpoints()[0].GetLoadBalancingWeight() != nil {
			t.Errorf("%s: the assignment served before the change was modified", c)
		}
	}
	if grpc["cart-v1"] != edited["cart-v1"] {
		t.Error("cart-v1: rebuilt although nothing of cart changed")
	}

	// A service gone: the memo forgets its clusters.
	ds.Services = ds.Services[:1]
	translateBoth(t, ds, &memo)
	for c := range memo.last {
		if c != "checkout-v1" && c != "checkout-v2" {
			t.Errorf("memo still holds %s after its service was removed", c)
		}
	}

	// A failed translation leaves the memo as it was.
	before := memo.last
	bad := ds
	bad.Services = append([]model.Service(nil), ds.Services...)
	bad.Services[0].Name = ""
	if _, err := translate(bad, &memo); err == nil {
		t.Fatal("a service without a name translated")
	}
	if len(memo.last) != len(before) || memo.last["checkout-v1"].cla != before["checkout-v1"].cla {
		t.Error("a failed translation changed the memo")
	}
}

// TestPrepareReusesMarshalledResources: a resource passed to Prepare again
// keeps its marshalled bytes; an equal one that is a new object is
// marshalled to the same hash; a changed one gets a new hash.
func TestPrepareReusesMarshalledResources(t *testing.T) {
	c := NewCache()
	cla := loadAssignment(model.Backend{Cluster: "a", Endpoints: []model.Endpoint{{IP: "10.0.0.1", Port: 80}}}, false)
	prep := func(rs ...types.Resource) *preparedType {
		t.Helper()
		p, err := c.Prepare(map[string][]types.Resource{resourcev3.EndpointType: rs})
		if err != nil {
			t.Fatal(err)
		}
		return p.types[resourcev3.EndpointType]
	}
	one := prep(cla)
	two := prep(cla)
	if two.res[0].any != one.res[0].any || two.res[0].hash != one.res[0].hash {
		t.Error("the same resource was marshalled again")
	}
	equal := loadAssignment(model.Backend{Cluster: "a", Endpoints: []model.Endpoint{{IP: "10.0.0.1", Port: 80}}}, false)
	three := prep(equal)
	if three.res[0].any == one.res[0].any || three.res[0].hash != one.res[0].hash {
		t.Errorf("an equal new resource: want new bytes with the same hash, got same bytes=%v, hash %s vs %s", three.res[0].any == one.res[0].any, three.res[0].hash, one.res[0].hash)
	}
	other := loadAssignment(model.Backend{Cluster: "a", Endpoints: []model.Endpoint{{IP: "10.0.0.2", Port: 80}}}, false)
	if four := prep(other); four.res[0].hash == one.res[0].hash {
		t.Error("a changed resource kept its hash")
	}
	// Only the last Prepare's resources are kept.
	if _, ok := c.prepared[cla]; ok || len(c.prepared) != 1 {
		t.Errorf("Prepare keeps %d resources, want only the last call's 1", len(c.prepared))
	}
}
