package xds

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/shiftplane/shiftplane/xds/model"
)

// Fleet.Convergence walks the streams in place; it must say exactly what
// ConvergenceOf says over the copied node list (Members of Nodes), for
// random fleets: ACKs, NACKs, streams that never ACKed (in and past their
// grace), stats-only nodes, nodes that asked for resources not served.
func TestFleetConvergenceMatchesConvergenceOf(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 17))
	for iter := range 300 {
		now := time.Unix(1000, 0)
		f := NewFleet(slog.New(slog.DiscardHandler), nil, func() time.Time { return now })
		f.SetReadyGrace(10 * time.Second)
		var stats []string
		for i := range rng.IntN(4) {
			stats = append(stats, fmt.Sprintf("node-%d", rng.IntN(8)+i))
		}
		f.SetStatsNodes(func() []string { return stats })
		latest := uint64(0)
		publish := func() {
			latest++
			var changed []string
			for _, typ := range publishedTypes {
				if rng.IntN(2) == 0 {
					changed = append(changed, typ)
				}
			}
			// Each type serves a random subset of a, b, so a node that
			// asked for the others lacks them.
			served := map[string]map[string]string{}
			for _, typ := range publishedTypes {
				served[typ] = map[string]string{}
				for _, name := range []string{"a", "b"} {
					if rng.IntN(2) == 0 {
						served[typ][name] = fmt.Sprint(latest)
					}
				}
			}
			f.Published(Published{Version: latest, Time: now, Changed: changed, ResourceVersions: served})
		}
		publish()
		nonce := 0
		for id := int64(1); id <= int64(rng.IntN(8)); id++ {
			now = now.Add(time.Duration(rng.IntN(8)) * time.Second)
			if err := f.OnStreamOpen(context.Background(), id, ""); err != nil {
				t.Fatal(err)
			}
			node := &corev3.Node{Id: fmt.Sprintf("node-%d", rng.IntN(8))}
			for _, typ := range publishedTypes {
				if rng.IntN(3) == 0 {
					continue
				}
				var names []string // none: wildcard
				for _, name := range []string{"a", "b", "c"} {
					if rng.IntN(3) == 0 {
						names = append(names, name)
					}
				}
				_ = f.OnStreamRequest(id, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: names})
				for range rng.IntN(3) {
					nonce++
					n := strconv.Itoa(nonce)
					v := strconv.FormatUint(uint64(rng.IntN(int(latest)+1)), 10)
					f.OnStreamResponse(context.Background(), id, nil, &discoveryv3.DiscoveryResponse{TypeUrl: typ, Nonce: n, VersionInfo: v})
					req := &discoveryv3.DiscoveryRequest{TypeUrl: typ, ResponseNonce: n, VersionInfo: v, ResourceNames: names}
					switch rng.IntN(3) {
					case 0:
						req.ErrorDetail = &statuspb.Status{Message: "bad"}
						req.VersionInfo = ""
					case 1:
						continue // not answered yet
					}
					_ = f.OnStreamRequest(id, req)
				}
			}
			if rng.IntN(3) == 0 {
				publish()
			}
		}
		now = now.Add(time.Duration(rng.IntN(12)) * time.Second)
		for _, kind := range []model.ResourceKind{model.KindClusters, model.KindListeners, model.KindRoutes} {
			for _, v := range []uint64{0, latest - 1, latest, latest + 1} {
				version := strconv.FormatUint(v, 10)
				got := f.Convergence(kind, version)
				f.mu.Lock()
				lat := map[string]string{}
				for typ, tp := range f.types.all() {
					lat[typ] = strconv.FormatUint(tp.latest, 10)
				}
				f.mu.Unlock()
				want := ConvergenceOf(kind, version, Members(f.Nodes(), f.grace, now), lat, stats)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("iteration %d, %s at %s:\n got %+v\nwant %+v", iter, kind, version, got, want)
				}
			}
		}
	}
}

// BenchmarkFleetConvergence is one engine question to a fleet of 1,000
// streams, each ACKing all four types (the promotion bench's fleet): the
// engine asks a few times per rollout per tick, under the fleet's lock.
func BenchmarkFleetConvergence(b *testing.B) {
	now := time.Unix(1000, 0)
	f := NewFleet(slog.New(slog.DiscardHandler), nil, func() time.Time { return now })
	f.Published(Published{Version: 1, Time: now, Changed: publishedTypes})
	for id := int64(1); id <= 1000; id++ {
		if err := f.OnStreamOpen(context.Background(), id, ""); err != nil {
			b.Fatal(err)
		}
		node := &corev3.Node{Id: fmt.Sprintf("node-%d", id)}
		for k, typ := range publishedTypes {
			_ = f.OnStreamRequest(id, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ})
			n := fmt.Sprintf("%d-%d", id, k)
			f.OnStreamResponse(context.Background(), id, nil, &discoveryv3.DiscoveryResponse{TypeUrl: typ, Nonce: n, VersionInfo: "1"})
			_ = f.OnStreamRequest(id, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ, ResponseNonce: n, VersionInfo: "1"})
		}
	}
	if c := f.Convergence(model.KindClusters, "1"); !c.Converged || c.Nodes != 1000 {
		b.Fatalf("fleet not converged: %+v", c)
	}
	b.ResetTimer()
	for range b.N {
		for _, kind := range []model.ResourceKind{model.KindClusters, model.KindListeners, model.KindRoutes} {
			_ = f.Convergence(kind, "1")
		}
	}
}
