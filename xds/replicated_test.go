package xds

import (
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shiftplane/shiftplane/policy"
)

func TestConvergenceOf(t *testing.T) {
	route := func(acked, nacked, nackErr string) TypeStatus {
		return TypeStatus{TypeURL: resourcev3.RouteType, Acked: acked, Nacked: nacked, NackError: nackErr}
	}
	clusters := func(c, e string) []TypeStatus {
		return []TypeStatus{{TypeURL: resourcev3.ClusterType, Acked: c}, {TypeURL: resourcev3.EndpointType, Acked: e}}
	}
	latest := map[string]string{resourcev3.RouteType: "9", resourcev3.ClusterType: "8", resourcev3.EndpointType: "6"}
	tests := map[string]struct {
		kind    policy.ResourceKind
		version string
		nodes   []NodeStatus
		stats   []string
		want    policy.Convergence
	}{
		"no node is not converged": {kind: policy.KindRoutes, version: "9", want: policy.Convergence{}},
		"every node on or past the version": {
			kind: policy.KindRoutes, version: "9",
			nodes: []NodeStatus{{ID: "a", Types: []TypeStatus{route("9", "", "")}}, {ID: "b", Types: []TypeStatus{route("10", "", "")}}},
			want:  policy.Convergence{Converged: true, Nodes: 2},
		},
		"a node behind": {
			kind: policy.KindRoutes, version: "9",
			nodes: []NodeStatus{{ID: "a", Types: []TypeStatus{route("9", "", "")}}, {ID: "b", Types: []TypeStatus{route("7", "", "")}}},
			want:  policy.Convergence{Nodes: 2},
		},
		"a NACK names the node": {
			kind: policy.KindRoutes, version: "9",
			nodes: []NodeStatus{{ID: "b", Types: []TypeStatus{route("7", "9", "bad route")}}},
			want:  policy.Convergence{Nodes: 1, Nacks: []string{"node b rejected RouteConfiguration version 9: bad route"}},
		},
		"stats without an xDS stream": {
			kind: policy.KindRoutes, version: "9",
			nodes: []NodeStatus{{ID: "a", Types: []TypeStatus{route("9", "", "")}}},
			stats: []string{"a", "c"},
			want:  policy.Convergence{Nodes: 1, Missing: []string{"c"}},
		},
		"clusters need endpoints at their latest": {
			kind: policy.KindClusters, version: "8",
			nodes: []NodeStatus{{ID: "a", Types: clusters("8", "6")}, {ID: "b", Types: clusters("8", "5")}},
			want:  policy.Convergence{Nodes: 2},
		},
		"a node that ACKed an answer without the listener it asked for": {
			kind: policy.KindListeners, version: "4",
			nodes: []NodeStatus{{ID: "envoy", Types: []TypeStatus{{TypeURL: resourcev3.ListenerType, Acked: "4"}}},
				{ID: "grpc", Types: []TypeStatus{{TypeURL: resourcev3.ListenerType, Acked: "4", Missing: []string{"shop.example:50051"}}}}},
			want: policy.Convergence{Nodes: 2, Lacking: []string{`node grpc lacks listener "shop.example:50051"`}},
		},
		"missing resources of an older version do not name the node again": {
			kind: policy.KindRoutes, version: "9",
			nodes: []NodeStatus{{ID: "grpc", Types: []TypeStatus{{TypeURL: resourcev3.RouteType, Acked: "7", Missing: []string{"r"}}}}},
			want:  policy.Convergence{Nodes: 1},
		},
		"clusters and endpoints current": {
			kind: policy.KindClusters, version: "8",
			nodes: []NodeStatus{{ID: "a", Types: clusters("8", "6")}, {ID: "b", Types: append(clusters("8", "6"), route("1", "", ""))}},
			want:  policy.Convergence{Converged: true, Nodes: 2},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := ConvergenceOf(tc.kind, tc.version, tc.nodes, latest, tc.stats)
			if got.Converged != tc.want.Converged || got.Nodes != tc.want.Nodes || !equalStrings(got.Nacks, tc.want.Nacks) || !equalStrings(got.Missing, tc.want.Missing) || !equalStrings(got.Lacking, tc.want.Lacking) {
				t.Errorf("ConvergenceOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// SetReplicated serves exactly the given versions, sets nothing when they
// and the content are already served, and refuses a version that is not a
// number.
func TestSetReplicated(t *testing.T) {
	var seen []Published
	p := NewPublisher(NewCache(), nil, time.Now, func(rec Published) { seen = append(seen, rec) })
	ds := policy.DesiredState{Services: []policy.ServiceState{policy.ServiceStateFor(policy.Plan{
		Name: "web", Listener: policy.Listener{Address: "127.0.0.1:10000"},
		Stable: policy.Backend{Cluster: "web-v1", Endpoints: []string{"127.0.0.1:1"}},
		Canary: policy.Backend{Cluster: "web-v2", Endpoints: []string{"127.0.0.1:2"}},
	}, 20)}}
	v := map[string]string{resourcev3.ClusterType: "3", resourcev3.EndpointType: "3", resourcev3.ListenerType: "2", resourcev3.RouteType: "5"}
	rec, err := p.SetReplicated(t.Context(), ds, v, "leader")
	if err != nil || len(rec.Changed) != 4 {
		t.Fatalf("first SetReplicated: %+v, %v", rec, err)
	}
	if got := p.Versions(); got[resourcev3.RouteType] != "5" || got[resourcev3.ListenerType] != "2" {
		t.Errorf("versions %v, want the leader's %v", got, v)
	}
	if len(seen) != 4 || seen[3].Version != 5 || seen[3].Changed[0] != resourcev3.RouteType {
		t.Errorf("the fleet was told %+v, want one record per type at its own version", seen)
	}
	if rec, _ := p.SetReplicated(t.Context(), ds, v, "again"); len(rec.Changed) != 0 {
		t.Errorf("the same versions and content set again: %v", rec.Changed)
	}
	// The same content through Set (a follower turned leader) needs no counter.
	if rec, err := p.Set(t.Context(), ds, "restore"); err != nil || len(rec.Changed) != 0 {
		t.Errorf("Set of the replicated state: %v, %v", rec.Changed, err)
	}
	bad := map[string]string{resourcev3.ClusterType: "3", resourcev3.EndpointType: "3", resourcev3.ListenerType: "x", resourcev3.RouteType: "5"}
	if _, err := p.SetReplicated(t.Context(), ds, bad, "bad"); err == nil {
		t.Error("a non-numeric version was accepted")
	}
}
