package policy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// FuzzPlan parses YAML plans from arbitrary bytes. Nothing may panic or
// hang, and every plan that validates must also schedule (bounded),
// translate and pass Envoy's generated validation (checkTranslates).
// Seeds: the examples and the hostile plans of TestHostilePlans.
// Run it with `make fuzz` (FUZZTIME, 5m by default) or `make fuzz-short`.
func FuzzPlan(f *testing.F) {
	files, _ := filepath.Glob("../examples/*.yaml")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(hardenBase))
	for _, tc := range hostilePlans {
		f.Add([]byte(strings.Replace(hardenBase, tc.old, tc.new, 1)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return // plan files are bounded by ReadPlanFile; keep rounds fast
		}
		done := make(chan error, 1)
		go func() {
			done <- checkFuzzed(data)
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("parsing and checking %d bytes took over 5s", len(data))
		}
	})
}

func checkFuzzed(data []byte) error {
	plans, ps := policy.ParseYAML(data, "fuzz.yaml")
	if len(ps) > 0 {
		_ = ps.Error() // formatting problems must not panic either
	}
	for _, p := range plans {
		if vs := p.Validate(policy.ValidateOptions{}); len(vs) > 0 {
			_ = vs.Error()
			continue
		}
		if vs := policy.ValidateSet([]policy.Plan{p}, nil); len(vs) > 0 {
			continue
		}
		if err := translateProblem(p); err != nil {
			return err
		}
	}
	return nil
}
