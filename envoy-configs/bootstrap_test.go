package envoyconfigs

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite envoy.yaml from the template and defaults")

// envoy.yaml is what a user runs as-is; it must stay the template's output.
func TestEnvoyYAMLIsRenderedDefaults(t *testing.T) {
	want, err := Default().Render()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("envoy.yaml", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("envoy.yaml is stale; run: go test ./envoy-configs -update")
	}
}

// HAReplicas are the xDS addresses envoy-ha.yaml lists: three replicas on
// one host, as make demo-ha runs them.
var HAReplicas = []string{"127.0.0.1:18000", "127.0.0.1:18010", "127.0.0.1:18020"}

// envoy-ha.yaml is the bootstrap for several replicas; it must stay the
// template's output too.
func TestEnvoyHAYAMLIsRendered(t *testing.T) {
	b := Default()
	b.XDSAddresses = HAReplicas
	want, err := b.Render()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("envoy-ha.yaml", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("envoy-ha.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("envoy-ha.yaml is stale; run: go test ./envoy-configs -update")
	}
}

func TestRender(t *testing.T) {
	tests := map[string]struct {
		in      Bootstrap
		want    []string // substrings of the output
		wantErr string   // substring of the error
	}{
		"defaults": {
			in:   Default(),
			want: []string{`id: "envoy-1"`, `cluster: "shiftplane-fleet"`, "port_value: 9901", "api_type: GRPC\n", `address: "127.0.0.1", port_value: 18000`},
		},
		"delta and custom xds": {
			in:   Bootstrap{NodeID: "n-2", Cluster: "c", AdminPort: 0, XDSAddress: "127.0.0.2:19000", UseDelta: true},
			want: []string{"api_type: DELTA_GRPC", `address: "127.0.0.2", port_value: 19000`, "port_value: 0}"},
		},
		"empty xds address means default": {
			in:   Bootstrap{NodeID: "n", Cluster: "c"},
			want: []string{"port_value: 18000"},
		},
		"quotes are escaped": {
			in:   Bootstrap{NodeID: `a"b: c`, Cluster: "c"},
			want: []string{`id: "a\"b: c"`},
		},
		"ipv6 xds": {
			in:   Bootstrap{NodeID: "n", Cluster: "c", XDSAddress: "[::1]:18000"},
			want: []string{`address: "::1"`},
		},
		"every replica of an HA shiftplane": {
			in: Bootstrap{NodeID: "n", Cluster: "c", XDSAddresses: []string{"127.0.0.1:18000", "127.0.0.1:18010", "127.0.0.1:18020"}},
			want: []string{`address: "127.0.0.1", port_value: 18000`, `address: "127.0.0.1", port_value: 18010`,
				`address: "127.0.0.1", port_value: 18020`, "retry_back_off: {base_interval: 0.25s, max_interval: 2s}"},
		},
		"replica listed twice": {in: Bootstrap{NodeID: "n", Cluster: "c", XDSAddresses: []string{"127.0.0.1:1", "127.0.0.1:1"}}, wantErr: "xdsAddresses[1]"},
		"bad replica":          {in: Bootstrap{NodeID: "n", Cluster: "c", XDSAddresses: []string{"127.0.0.1:1", "host:2"}}, wantErr: "xdsAddresses[1]"},
		"empty node id":        {in: Bootstrap{Cluster: "c"}, wantErr: "nodeID: must not be empty"},
		"empty cluster":        {in: Bootstrap{NodeID: "n"}, wantErr: "cluster: must not be empty"},
		"newline in id":        {in: Bootstrap{NodeID: "a\nb", Cluster: "c"}, wantErr: "nodeID"},
		"hostname xds":         {in: Bootstrap{NodeID: "n", Cluster: "c", XDSAddress: "localhost:18000"}, wantErr: "IP literal"},
		"no port":              {in: Bootstrap{NodeID: "n", Cluster: "c", XDSAddress: "127.0.0.1"}, wantErr: "xdsAddress"},
		"port zero":            {in: Bootstrap{NodeID: "n", Cluster: "c", XDSAddress: "127.0.0.1:0"}, wantErr: "port must be"},
		"admin port high":      {in: Bootstrap{NodeID: "n", Cluster: "c", AdminPort: 70000}, wantErr: "adminPort"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, err := tc.in.Render()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want ErrInvalid containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
