package xds

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/shiftplane/shiftplane/policy"
)

var update = flag.Bool("update", false, "rewrite testdata/out golden files")

// goldenInput is one testdata/in file: services built from plans.
type goldenInput struct {
	Services []struct {
		Plan              policy.Plan `yaml:"plan"`
		Weight            int         `yaml:"weight"`
		CanaryUnpublished bool        `yaml:"canaryUnpublished"`
		StableWithdrawn   bool        `yaml:"stableWithdrawn"`
	} `yaml:"services"`
}

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
				got := resourcesYAML(t, rs)
				path := filepath.Join("testdata", "out", name+"."+typ+".yaml")
				if *update {
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./xds -update to create it)", err)
				}
				if string(got) != string(want) {
					t.Errorf("%s differs from the golden file (run go test ./xds -update and review the diff):\n--- got\n%s", path, got)
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

func readGoldenInput(t *testing.T, path string) policy.DesiredState {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var in goldenInput
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&in); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var ds policy.DesiredState
	for i, s := range in.Services {
		if ps := s.Plan.Validate(policy.ValidateOptions{}); len(ps) > 0 {
			t.Fatalf("%s: services[%d]: %v", path, i, ps)
		}
		ss := policy.ServiceStateFor(s.Plan, s.Weight)
		ss.CanaryPublished = !s.CanaryUnpublished
		ss.StablePublished = !s.StableWithdrawn
		ds.Services = append(ds.Services, ss)
	}
	return ds
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
	base := policy.ServiceStateFor(policy.Plan{
		Name:     "a",
		Listener: policy.Listener{Address: "127.0.0.1:1"},
		Stable:   policy.Backend{Cluster: "a1", Endpoints: []string{"127.0.0.1:2"}},
		Canary:   policy.Backend{Cluster: "a2", Endpoints: []string{"127.0.0.1:3"}},
	}, 10)
	tests := map[string]struct {
		mutate func(*policy.ServiceState)
		want   string
	}{
		"weight above 100":  {func(s *policy.ServiceState) { s.CanaryWeight = 101 }, "outside 0..100"},
		"negative weight":   {func(s *policy.ServiceState) { s.CanaryWeight = -1 }, "outside 0..100"},
		"nothing published": {func(s *policy.ServiceState) { s.CanaryPublished, s.StablePublished = false, false }, "neither stable nor canary"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := base
			tc.mutate(&s)
			_, err := Translate(policy.DesiredState{Services: []policy.ServiceState{s}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
