package policy_test

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// LoadPaths (shiftplane validate, serve's start) reads only regular files
// of bounded size, names each one it refuses, and never blocks on a FIFO.
func TestLoadPathsRefusesNonPlanFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(goodYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	// A symlink to a regular file is read like the file (ConfigMap mounts).
	linked := filepath.Join(t.TempDir(), "linked.yaml")
	if err := os.Symlink(good, linked); err != nil {
		t.Fatal(err)
	}
	fifo, zero, huge := filepath.Join(dir, "fifo.yaml"), filepath.Join(dir, "zero.yaml"), filepath.Join(dir, "huge.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(huge, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, policy.MaxPlanFileSize+1); err != nil {
		t.Fatal(err)
	}

	type result struct {
		plans []policy.SourcedPlan
		ps    policy.Problems
	}
	done := make(chan result, 1)
	go func() {
		plans, ps := policy.LoadPaths([]string{dir}, policy.ValidateOptions{AllowExec: true})
		done <- result{plans, ps}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("LoadPaths did not return within 5s: it blocked on the FIFO or read /dev/zero")
	}
	var got []string
	for _, p := range r.ps {
		got = append(got, p.String())
	}
	want := []string{
		fifo + ": not a regular file (fifo)",
		huge + ": 4194305 bytes is over the 4 MiB plan file limit",
		zero + ": not a regular file (a symlink to a character device)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%q\nwant\n%q", got, want)
	}
	if len(r.plans) != 1 || r.plans[0].File != good {
		t.Errorf("plans = %v, want the good file's only", r.plans)
	}

	plans, ps := policy.LoadPaths([]string{linked}, policy.ValidateOptions{AllowExec: true})
	if len(ps) != 0 || len(plans) != 1 {
		t.Errorf("a symlink to a plan file: plans %v, problems %v", plans, ps)
	}
}
