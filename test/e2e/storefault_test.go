package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/harness"
)

// storeFault breaks and mends the store of a running `shiftplane serve`.
type storeFault struct {
	storePath func(t *testing.T) string // where the store lives
	fault     func(t *testing.T, sp *Shiftplane)
	heal      func(t *testing.T, sp *Shiftplane)
	// growOnly: the fault fails only writes that need new space. bbolt
	// reuses the pages it freed, so a running rollout's small saves may
	// still succeed on a full disk; a write that grows the store (a new,
	// large plan) cannot.
	growOnly bool
}

// TestStoreFaultsLoseNoDecision runs a rollout against a real Envoy, breaks
// the store mid-rollout, and checks that no decision is lost or reported
// falsely: the rollout holds with "store unavailable" at the weight Envoy
// has, an abort is refused with an error and changes nothing (Envoy keeps
// its weights, the status keeps its phase); once the store takes writes
// again the rollout moves on by itself, an abort reaches Envoy, and after
// a SIGKILL and restart the rollout is still ABORTED at weight 0.
//
//   - disk full: the store on a 1 MiB tmpfs made for the test (root only;
//     under CI=true a failed mount fails the test), filled by another file;
//     writes that need new space fail with ENOSPC (bbolt reuses the pages
//     it freed, so the rollout's own small saves may go on succeeding: then
//     it must keep telling the truth, and a new large plan, which needs new
//     space, is refused and changes nothing); mended by removing that file.
//   - read-only: every write to the store fails, by a file size limit of 0
//     bytes on the running process (prlimit RLIMIT_FSIZE; writes fail with
//     EFBIG, as a read-only filesystem refuses them with EROFS); mended by
//     lifting the limit.
func TestStoreFaultsLoseNoDecision(t *testing.T) {
	cases := map[string]storeFault{
		"disk full": {
			storePath: func(t *testing.T) string {
				dir := t.TempDir()
				out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "shiftplane-e2e", dir).CombinedOutput()
				if err != nil {
					msg := fmt.Sprintf("mount a tmpfs for the full disk (needs root): %v: %s", err, out)
					if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
						t.Fatal(msg)
					}
					t.Skip(msg)
				}
				t.Cleanup(func() {
					if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
						t.Errorf("umount %s: %v: %s", dir, err, out)
					}
				})
				return filepath.Join(dir, "shiftplane.db")
			},
			fault: func(t *testing.T, sp *Shiftplane) {
				// Fill what is left; the write stops at ENOSPC.
				f, err := os.Create(filepath.Join(filepath.Dir(sp.Store), "filler"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, 4096)
				for i := 0; i < 1024; i++ {
					if _, err := f.Write(buf); err != nil {
						return
					}
				}
				t.Fatal("1 MiB tmpfs did not fill up with 4 MiB")
			},
			growOnly: true,
			heal: func(t *testing.T, sp *Shiftplane) {
				if err := os.Remove(filepath.Join(filepath.Dir(sp.Store), "filler")); err != nil {
					t.Fatal(err)
				}
			},
		},
		"read-only": {
			storePath: func(t *testing.T) string { return filepath.Join(t.TempDir(), "shiftplane.db") },
			fault: func(t *testing.T, sp *Shiftplane) {
				lim := unix.Rlimit{Cur: 0, Max: unix.RLIM_INFINITY}
				if err := unix.Prlimit(sp.Proc.PID(), unix.RLIMIT_FSIZE, &lim, nil); err != nil {
					t.Fatalf("prlimit RLIMIT_FSIZE 0 on shiftplane: %v", err)
				}
			},
			heal: func(t *testing.T, sp *Shiftplane) {
				lim := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
				if err := unix.Prlimit(sp.Proc.PID(), unix.RLIMIT_FSIZE, &lim, nil); err != nil {
					t.Fatalf("prlimit RLIMIT_FSIZE unlimited on shiftplane: %v", err)
				}
			},
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) { storeFaultScenario(t, c) })
	}
}

func storeFaultScenario(t *testing.T, c storeFault) {
	store := c.storePath(t)
	sp := StartShiftplane(t, "--store-path", store)
	sp.Store = store
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("web.yaml", fmt.Sprintf(`name: web
listener: {address: %q}
stable: {cluster: web-v1, endpoints: [%q]}
canary: {cluster: web-v2, endpoints: [%q]}
steps:
  - {weight: 10, hold: 1s}
  - {weight: 20, hold: 1s}
  - {weight: 40, hold: 1s}
  - {weight: 60, hold: 1s}
  - {weight: 80, hold: 30s}
  - {weight: 100}
analysis: {minRequests: 0}
`, listen, v1.Addr, v2.Addr))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-store", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	rc, _ := apiClients(t, sp)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatalf("listener never came up: %v", err)
	}
	canary := func() uint32 {
		t.Helper()
		ws, err := envoy.RouteWeights(ctx)
		if err != nil {
			t.Fatalf("Envoy's route weights: %v", err)
		}
		return ws["web-v2"]
	}
	WaitRouteWeights(t, envoy, "web-v2", 20)

	c.fault(t, sp)
	if c.growOnly {
		w0 := fullDiskRefusesGrowth(t, ctx, sp, rc, envoy, canary, listen, v1.Addr)
		healAndAbort(t, ctx, c, sp, rc, canary, w0)
		return
	}
	// What was decided before the fault is stored and goes out; nothing after.
	held := rolloutStatus(t, rc, "web")
	waitFor(t, 10*time.Second, "the rollout to say the store is unavailable", func() (bool, string) {
		held = rolloutStatus(t, rc, "web")
		return strings.Contains(held.GetMessage(), "store unavailable") && !held.GetWeightPending(),
			fmt.Sprintf("%s weight %d/%d: %s", held.GetPhase(), held.GetCanaryWeight(), held.GetTargetWeight(), held.GetMessage())
	})
	w0 := uint32(held.GetCanaryWeight())
	if held.GetPhase() != shiftplanev1.Phase_PHASE_HOLDING || held.GetTargetWeight() != held.GetCanaryWeight() {
		t.Fatalf("with the store down: %s weight %d (sent %d), want HOLDING at the weight the fleet holds", held.GetPhase(), held.GetCanaryWeight(), held.GetTargetWeight())
	}
	// Three holds' worth: nothing moves, on Envoy or in the status.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if w := canary(); w != w0 {
			t.Fatalf("with the store down Envoy's canary weight moved from %d to %d", w0, w)
		}
		if st := rolloutStatus(t, rc, "web"); st.GetStepIndex() != held.GetStepIndex() || st.GetTargetWeight() != held.GetTargetWeight() {
			t.Fatalf("with the store down the rollout moved: step %d weight %d, was step %d weight %d", st.GetStepIndex()+1, st.GetTargetWeight(), held.GetStepIndex()+1, held.GetTargetWeight())
		}
	}
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := rc.Abort(actx, &shiftplanev1.AbortRequest{Name: "web", Reason: "store fault test"})
	acancel()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "store unavailable") {
		t.Fatalf("abort with the store down: %v, want UNAVAILABLE store unavailable", err)
	}
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if w := canary(); w != w0 {
			t.Fatalf("a refused abort moved Envoy's canary weight from %d to %d", w0, w)
		}
	}
	if st := rolloutStatus(t, rc, "web"); st.GetPhase() != shiftplanev1.Phase_PHASE_HOLDING || st.GetCanaryWeight() != int32(w0) {
		t.Fatalf("a refused abort changed the status: %s weight %d", st.GetPhase(), st.GetCanaryWeight())
	}
	t.Logf("store down at weight %d: 3 s held on Envoy and in the status (%q); abort refused: %v", w0, held.GetMessage(), err)
	healAndAbort(t, ctx, c, sp, rc, canary, w0)
}

// healAndAbort mends the store and checks the rollout moves on by itself,
// that an abort reaches Envoy, and that it survives a SIGKILL and restart.
func healAndAbort(t *testing.T, ctx context.Context, c storeFault, sp *Shiftplane, rc shiftplanev1.RolloutServiceClient, canary func() uint32, w0 uint32) {
	c.heal(t, sp)
	// A rollout that held moves on by itself once writes work again.
	if !c.growOnly {
		waitFor(t, 15*time.Second, "the rollout to move on once the store is writable", func() (bool, string) {
			st := rolloutStatus(t, rc, "web")
			return canary() > w0 && !strings.Contains(st.GetMessage(), "store unavailable"), fmt.Sprintf("Envoy %d; %s: %s", canary(), st.GetPhase(), st.GetMessage())
		})
	}
	resumed := canary()
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := rc.Abort(actx, &shiftplanev1.AbortRequest{Name: "web", Reason: "store fault test"})
	acancel()
	if err != nil {
		t.Fatalf("abort once the store is writable: %v", err)
	}
	// The reply claims 0 only once the fleet has it; until then it shows
	// the weight Envoy holds with 0 pending.
	if r := resp.GetRollout(); r.GetTargetWeight() != 0 || (r.GetCanaryWeight() == 0) == r.GetWeightPending() {
		t.Fatalf("abort replied weight %d (sent %d, pending %v)", r.GetCanaryWeight(), r.GetTargetWeight(), r.GetWeightPending())
	}
	waitFor(t, 10*time.Second, "Envoy's canary weight 0", func() (bool, string) {
		w := canary()
		return w == 0, fmt.Sprintf("web-v2 at %d", w)
	})
	waitFor(t, 10*time.Second, "ABORTED", func() (bool, string) {
		st := rolloutStatus(t, rc, "web")
		return st.GetPhase() == shiftplanev1.Phase_PHASE_ABORTED && st.GetCanaryWeight() == 0, st.GetPhase().String()
	})

	if err := sp.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	<-sp.Proc.Done()
	sp.Start()
	st := rolloutStatus(t, rc, "web")
	if st.GetPhase() != shiftplanev1.Phase_PHASE_ABORTED || st.GetTargetWeight() != 0 {
		t.Fatalf("after a SIGKILL and restart: %s weight %d, want ABORTED at 0", st.GetPhase(), st.GetTargetWeight())
	}
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if w := canary(); w != 0 {
			t.Fatalf("after the restart Envoy's canary weight is %d, want 0", w)
		}
	}
	t.Logf("store writable again, Envoy at %d; abort reached Envoy (0) and survived a SIGKILL and restart (ABORTED)", resumed)
}

// fullDiskRefusesGrowth checks a full disk from the outside: a new plan
// large enough to need new pages in the store is refused (UNAVAILABLE,
// the store named), and nothing of it reaches the API or Envoy; the
// running rollout never reports a weight Envoy does not hold. It returns
// the canary weight Envoy holds afterwards.
func fullDiskRefusesGrowth(t *testing.T, ctx context.Context, sp *Shiftplane, rc shiftplanev1.RolloutServiceClient, envoy *harness.Envoy, canary func() uint32, listen, backend string) uint32 {
	t.Helper()
	var eps []string
	for i := range 1000 {
		eps = append(eps, fmt.Sprintf("%q", fmt.Sprintf("127.0.%d.%d:%d", i/250, i%250+1, 20000+i)))
	}
	big := fmt.Sprintf(`name: big
listener: {address: %q, domains: ["big.example"]}
stable: {cluster: big-v1, endpoints: [%s]}
canary: {cluster: big-v2, endpoints: [%q]}
steps: [{weight: 10}, {weight: 100}]
`, listen, strings.Join(eps, ", "), backend)
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := rc.Apply(actx, &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_PlanYaml{PlanYaml: big}})
	acancel()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "store") {
		t.Fatalf("apply of a large plan on a full disk: %v, want UNAVAILABLE naming the store", err)
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	list, lerr := rc.List(lctx, &shiftplanev1.ListRequest{})
	lcancel()
	if lerr != nil {
		t.Fatal(lerr)
	}
	for _, r := range list.GetRollouts() {
		if r.GetName() == "big" {
			t.Fatalf("a refused apply is listed: %v", r)
		}
	}
	// Three holds' worth: Envoy never gets the refused plan, and the
	// running rollout's status never claims a weight Envoy lacks.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		ws, err := envoy.RouteWeights(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := ws["big-v1"]; ok {
			t.Fatalf("a refused apply reached Envoy: %v", ws)
		}
		st := rolloutStatus(t, rc, "web")
		if w := ws["web-v2"]; !st.GetWeightPending() && uint32(st.GetCanaryWeight()) > w {
			t.Fatalf("on a full disk the status says weight %d, Envoy holds %d", st.GetCanaryWeight(), w)
		}
	}
	w0 := canary()
	t.Logf("disk full: a 1,000-endpoint plan was refused (%v) and reached neither the API nor Envoy; the running rollout is at %d on Envoy", err, w0)
	return w0
}
