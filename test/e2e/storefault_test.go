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
//     writes fail with ENOSPC; mended by removing that file.
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

	c.heal(t, sp)
	waitFor(t, 15*time.Second, "the rollout to move on once the store is writable", func() (bool, string) {
		st := rolloutStatus(t, rc, "web")
		return canary() > w0 && !strings.Contains(st.GetMessage(), "store unavailable"), fmt.Sprintf("Envoy %d; %s: %s", canary(), st.GetPhase(), st.GetMessage())
	})
	resumed := canary()
	actx, acancel = context.WithTimeout(ctx, 5*time.Second)
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
	t.Logf("store writable again: moved on to %d by itself; abort reached Envoy (0) and survived a SIGKILL and restart (ABORTED)", resumed)
}
