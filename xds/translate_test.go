package xds

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/shiftplane/shiftplane/xds/model"
)

var update = flag.Bool("update", false, "rewrite testdata/out golden files")

// TestTranslateGolden translates each testdata/in/<name>.yaml (a
// model.State) and compares every resource type with
// testdata/out/<name>.<type>.yaml; a mismatch prints a protocmp diff.
func TestTranslateGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			ds := readGoldenInput(t, in)
			res, err := Translate(ds)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			for typ, rs := range map[string][]types.Resource{
				"cluster": res.Clusters, "endpoint": res.Endpoints, "listener": res.Listeners, "route": res.Routes,
			} {
				path := filepath.Join("testdata", "out", name+"."+typ+".yaml")
				if *update {
					if err := os.WriteFile(path, resourcesYAML(t, rs), 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want := readGoldenOutput(t, path, typ)
				if diff := cmp.Diff(want, rs, protocmp.Transform()); diff != "" {
					t.Errorf("%s differs from the golden file (-want +got); run go test ./xds -update if the change is meant:\n%s", path, diff)
				}
			}
			// Translation is deterministic: a second run gives the same bytes.
			again, _ := Translate(ds)
			if string(resourcesYAML(t, again.Routes)) != string(resourcesYAML(t, res.Routes)) {
				t.Error("a second translation of the same input differs")
			}
		})
	}
}

func readGoldenInput(t *testing.T, path string) model.State {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ds model.State
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&ds); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return ds
}

// readGoldenOutput parses a golden file back into Envoy protos of typ.
func readGoldenOutput(t *testing.T, path, typ string) []types.Resource {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./xds -update to create it)", err)
	}
	var docs []any
	if err := yaml.Unmarshal(data, &docs); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []types.Resource
	for i, d := range docs {
		js, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("%s[%d]: %v", path, i, err)
		}
		var m types.Resource
		switch typ {
		case "cluster":
			m = &clusterv3.Cluster{}
		case "endpoint":
			m = &endpointv3.ClusterLoadAssignment{}
		case "listener":
			m = &listenerv3.Listener{}
		default:
			m = &routev3.RouteConfiguration{}
		}
		if err := protojson.Unmarshal(js, m); err != nil {
			t.Fatalf("%s[%d]: %v", path, i, err)
		}
		out = append(out, m)
	}
	return out
}

// resourcesYAML renders resources as YAML via protojson, so reviewers read
// Envoy's own field names.
func resourcesYAML(t *testing.T, rs []types.Resource) []byte {
	t.Helper()
	var docs []any
	for _, r := range rs {
		js, err := protojson.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(js, &v); err != nil {
			t.Fatal(err)
		}
		docs = append(docs, v)
	}
	out, err := yaml.Marshal(docs)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestTranslateRejects(t *testing.T) {
	base := model.Service{
		Name:         "a",
		Listener:     model.Listener{Address: "127.0.0.1:1", Domains: []string{"*"}, PathPrefix: "/"},
		Stable:       model.Backend{Cluster: "a1", Endpoints: []model.Endpoint{{IP: "127.0.0.1", Port: 2}}},
		Canary:       model.Backend{Cluster: "a2", Endpoints: []model.Endpoint{{IP: "127.0.0.1", Port: 3}}},
		Outlier:      model.Outlier{Consecutive5xx: 5, Interval: time.Second, BaseEjectionTime: time.Second, MaxEjectionPercent: 100},
		CanaryWeight: 10, CanaryPublished: true, StablePublished: true,
	}
	tests := map[string]struct {
		mutate func(*model.State)
		want   string
	}{
		"weight above 100":   {func(s *model.State) { s.Services[0].CanaryWeight = 101 }, `service "a": canaryWeight: 101 outside 0..100`},
		"negative weight":    {func(s *model.State) { s.Services[0].CanaryWeight = -1 }, "outside 0..100"},
		"nothing published":  {func(s *model.State) { s.Services[0].CanaryPublished, s.Services[0].StablePublished = false, false }, "neither stable nor canary"},
		"port 0 endpoint":    {func(s *model.State) { s.Services[0].Stable.Endpoints[0].Port = 0 }, `service "a": stable.endpoints[0]: 127.0.0.1:0 is not IP:port`},
		"bad listener":       {func(s *model.State) { s.Services[0].Listener.Address = "localhost:80" }, `listener.address: "localhost:80" is not IP:port`},
		"zero interval":      {func(s *model.State) { s.Services[0].Outlier.Interval = 0 }, `service "a": outlier:`},
		"cluster used twice": {func(s *model.State) { s.Services = append(s.Services, second(s.Services[0])) }, `canary.cluster: "a2" is also used by "a"`},
		"domain case-insensitively twice on one listener": {func(s *model.State) {
			b := second(s.Services[0])
			b.Canary.Cluster, b.Stable.Cluster = "b2", "b1"
			b.Listener.Address, b.Listener.Domains = "[::ffff:127.0.0.1]:1", []string{"*"}
			s.Services = append(s.Services, b)
		}, `listener.domains: "*" on [::ffff:127.0.0.1]:1 is also served by "a"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := model.State{Services: []model.Service{base}}
			s.Services[0].Stable.Endpoints = append([]model.Endpoint(nil), base.Stable.Endpoints...)
			tc.mutate(&s)
			_, err := Translate(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func second(s model.Service) model.Service {
	s.Name = "b"
	return s
}
