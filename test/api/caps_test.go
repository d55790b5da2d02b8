package api_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/api"
)

// capPlan is a plan at every size cap of validation: policy.MaxEndpoints
// per backend, policy.MaxDomains domains of nearly policy.MaxDomainLen,
// policy.MaxSteps steps. i keeps its names, clusters and domains apart.
func capPlan(i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: big-%02d\nlistener:\n  address: 127.0.0.1:10000\n  domains: [", i)
	for d := 0; d < policy.MaxDomains; d++ {
		if d > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", fmt.Sprintf("p%02d-d%03d.%s.example.com", i, d, strings.Repeat("x", 230)))
	}
	b.WriteString("]\n")
	for v, name := range []string{"stable", "canary"} {
		fmt.Fprintf(&b, "%s:\n  cluster: big-%02d-v%d\n  endpoints: [", name, i, v+1)
		for e := 0; e < policy.MaxEndpoints; e++ {
			if e > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "\"10.%d.%d.%d:%d\"", v, e/256, e%256, 8000+i)
		}
		b.WriteString("]\n")
	}
	b.WriteString("steps:\n")
	for s := 0; s < policy.MaxSteps-1; s++ {
		fmt.Fprintf(&b, "  - {weight: %d, hold: 1h}\n", 1+s/2)
	}
	b.WriteString("  - {weight: 100}\n")
	return b.String()
}

// TestPlansAtTheCap: enough rollouts at the size caps that `shiftctl list`
// answers more than gRPC's default 4 MiB (so it fails without
// api.MaxMessageBytes on both sides); apply, list and get all work.
func TestPlansAtTheCap(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	dir := t.TempDir()
	// Enough rollouts that List's answer passes gRPC's 4 MiB default.
	plans, ps := policy.ParseYAML([]byte(capPlan(0)), "cap.yaml")
	if len(ps) > 0 {
		t.Fatal(ps)
	}
	size := proto.Size(api.PlanToProto(plans[0]))
	n := 4<<20/size + 4
	args := []string{"apply"}
	start := time.Now()
	for i := 0; i < n; i++ {
		f := filepath.Join(dir, fmt.Sprintf("big-%02d.yaml", i))
		if err := os.WriteFile(f, []byte(capPlan(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-f", f)
	}
	if r := s.ctl(nil, args...); r.Code != 0 {
		t.Fatalf("apply: %s", r)
	}
	applied := time.Since(start)
	start = time.Now()
	r := s.ctl(nil, "list", "-o", "json")
	if r.Code != 0 {
		t.Fatalf("list: %s", r.Stderr)
	}
	listed := time.Since(start)
	for i := 0; i < n; i++ {
		if !strings.Contains(r.Stdout, fmt.Sprintf(`"big-%02d"`, i)) {
			t.Fatalf("list -o json lacks big-%02d", i)
		}
	}
	g := s.ctl(nil, "get", "big-07", "-o", "yaml")
	if g.Code != 0 || !strings.Contains(g.Stdout, "10.1.3.231:8007") {
		t.Fatalf("get big-07: code %d, %d bytes, stderr %s", g.Code, len(g.Stdout), g.Stderr)
	}
	t.Logf("%d plans at the caps (%d bytes of YAML, %d as a message each): applied in %s; list -o json: %d bytes in %s; get -o yaml: %d bytes",
		n, len(capPlan(0)), size, applied.Round(time.Millisecond), len(r.Stdout), listed.Round(time.Millisecond), len(g.Stdout))
}
