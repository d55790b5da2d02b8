package api_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

// TestPlanFolderBadFile: while serving, a bad plan file beside good ones is
// rejected alone; its problem (file and field) is shown by `shiftctl list`
// and `shiftctl sources` until it is fixed; removing a file keeps its
// rollout (source "api").
func TestPlanFolderBadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	web, shop, bad := filepath.Join(dir, "web.yaml"), filepath.Join(dir, "shop.yaml"), filepath.Join(dir, "bad.yaml")
	writeFile(t, web, plan("web", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - pause: {}\n  - weight: 100"))
	s := startServer(t, "--plan", dir)
	if src := s.get("web")["source"]; src != "file:"+web {
		t.Fatalf("web's source = %v, want file:%s", src, web)
	}

	badPlan := plan("bad", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 10\n  - weight: 120")
	writeFile(t, bad, badPlan)
	writeFile(t, shop, plan("shop", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - pause: {}\n  - weight: 100"))
	wantProblem := bad + ": steps[1].weight: must be within 0..100, got 120"
	out := waitCtl(t, s, "sources", func(out string) bool { return strings.Contains(out, bad) })
	for _, want := range []string{"watching ", dir, bad, "steps[1].weight", "must be within 0..100, got 120"} {
		if !strings.Contains(out, want) {
			t.Errorf("sources lacks %q:\n%s", want, out)
		}
	}
	list := waitCtl(t, s, "list", func(out string) bool { return strings.Contains(out, "shop") })
	if !strings.Contains(list, "warning: "+wantProblem) || strings.Contains(list, "\nbad ") {
		t.Errorf("list does not warn about the bad file, or lists its rollout:\n%s", list)
	}
	if lines := strings.Split(strings.TrimSpace(list), "\n"); !strings.HasPrefix(lines[len(lines)-2], "warning: "+wantProblem) {
		t.Errorf("the warnings do not follow the table:\n%s", list)
	}

	// Removing a file keeps its rollout as it is.
	before := s.get("web") // PENDING: no Envoy is connected
	if err := os.Remove(web); err != nil {
		t.Fatal(err)
	}
	waitCtl(t, s, "get", func(out string) bool { return strings.Contains(out, `"source": "api"`) }, "web", "-o", "json")
	if after := s.get("web"); after["phase"] != before["phase"] || after["stepIndex"] != before["stepIndex"] {
		t.Errorf("web after its file was removed: phase %v step %v, want %v step %v kept", after["phase"], after["stepIndex"], before["phase"], before["stepIndex"])
	}

	// Fixed: applied, and the warning is gone.
	writeFile(t, bad, strings.Replace(badPlan, "weight: 120", "weight: 100", 1))
	waitCtl(t, s, "sources", func(out string) bool { return strings.Contains(out, "every plan file loaded") })
	if list := s.mustCtl("list"); strings.Contains(list, "warning") || !strings.Contains(list, "bad") {
		t.Errorf("list after the fix:\n%s", list)
	}
}

// TestServeRefusesBadPlanFileAtStart: at start a bad file is fatal, with
// every problem named, even beside good ones.
func TestServeRefusesBadPlanFileAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "good.yaml"), plan("good", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 100"))
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, plan("bad", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 120"))
	bin := harness.BuildBinary(t, "./cmd/shiftplane")
	p := harness.StartProcess(t, bin, []string{"serve", "--plan", dir,
		"--xds-address", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)), "--api-address", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
		"--http-address", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)), "--store-path", filepath.Join(t.TempDir(), "s.db")}, nil)
	code, err := p.Wait(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if code == 0 || !strings.Contains(p.Output(), bad+": steps[0].weight: must be within 0..100, got 120") {
		t.Errorf("serve with a bad plan file: exit %d, output:\n%s", code, p.Output())
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	// Write and rename, so the watcher never reads half a file.
	if err := os.WriteFile(path+".tmp", []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// waitCtl runs shiftctl VERB ARGS until its output satisfies ok (20s at most).
func waitCtl(t *testing.T, s *server, verb string, ok func(string) bool, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var out string
	for time.Now().Before(deadline) {
		out = s.mustCtl(append([]string{verb}, args...)...)
		if ok(out) {
			return out
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("shiftctl %s %s: not the output wanted within 20s:\n%s", verb, strings.Join(args, " "), out)
	return ""
}
