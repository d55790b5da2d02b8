package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/harness"
)

// killLoopRollouts move at once (one listener each), so the store takes a
// write for each of their steps and holds while the process is killed.
const killLoopRollouts = 3

// killCount is how many SIGKILLs TestKillLoopNeverGoesBack sends: 10 in CI,
// KILLS=N (make killloop: 50) on demand.
func killCount(t *testing.T) int {
	t.Helper()
	s := os.Getenv("KILLS")
	if s == "" {
		return 10
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 1000 {
		t.Fatalf("KILLS=%q: want a whole number 1..1000", s)
	}
	return n
}

// killWatch records, while shiftplane is killed and restarted under it, the
// canary weights the real Envoy holds (its config_dump) and the steps and
// weights the API reports, and every time one of them went down.
type killWatch struct {
	mu         sync.Mutex
	envoyMax   map[string]uint32 // canary cluster → highest weight Envoy held
	stepMax    map[string]int32  // rollout → highest step the API reported
	targetMax  map[string]int32  // rollout → highest weight the API said was sent
	backwards  []string
	envoyReads int
	apiReads   int
}

func (w *killWatch) envoy(weights map[string]uint32, kill int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.envoyReads++
	for c, v := range weights {
		if !strings.HasSuffix(c, "-v2") {
			continue
		}
		if m, ok := w.envoyMax[c]; ok && v < m {
			w.backwards = append(w.backwards, fmt.Sprintf("after kill %d: Envoy's route weight of %s went from %d to %d", kill, c, m, v))
		}
		w.envoyMax[c] = max(w.envoyMax[c], v)
	}
}

func (w *killWatch) api(r *shiftplanev1.Rollout, kill int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.apiReads++
	n := r.GetName()
	if m, ok := w.stepMax[n]; ok && r.GetStepIndex() < m {
		w.backwards = append(w.backwards, fmt.Sprintf("after kill %d: rollout %s went from step %d to step %d", kill, n, m+1, r.GetStepIndex()+1))
	}
	if m, ok := w.targetMax[n]; ok && r.GetTargetWeight() < m {
		w.backwards = append(w.backwards, fmt.Sprintf("after kill %d: rollout %s's sent weight went from %d to %d", kill, n, m, r.GetTargetWeight()))
	}
	w.stepMax[n] = max(w.stepMax[n], r.GetStepIndex())
	w.targetMax[n] = max(w.targetMax[n], r.GetTargetWeight())
}

// snapshot returns rollout → "step/weight" as the API last showed it at its highest.
func (w *killWatch) snapshot() map[string][2]int32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string][2]int32{}
	for n, s := range w.stepMax {
		out[n] = [2]int32{s, w.targetMax[n]}
	}
	return out
}

// TestKillLoopNeverGoesBack SIGKILLs `shiftplane serve` KILLS times (10 by
// default; `make killloop` sends 50) while three rollouts step through a
// linear schedule (2% at a time), each step a store write. A watcher reads
// the real Envoy's route weights (config_dump) and the API's step and sent
// weight every few tens of milliseconds, across every restart: none of them
// ever goes down, so a restart never republishes less than the fleet was
// sent, and every rollout still succeeds.
func TestKillLoopNeverGoesBack(t *testing.T) {
	kills := killCount(t)
	began := time.Now()
	sp := StartShiftplane(t)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	// The schedule (50 steps) spans the loop (about 1 s a kill), so kills
	// land on every part of it.
	every := max(150*time.Millisecond, time.Duration(kills)*time.Second/50)
	var listens []string
	for i := 0; i < killLoopRollouts; i++ {
		listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
		listens = append(listens, listen)
		sp.WritePlan(fmt.Sprintf("web%d.yaml", i), fmt.Sprintf(`name: web%d
listener: {address: %q}
stable: {cluster: web%d-v1, endpoints: [%q]}
canary: {cluster: web%d-v2, endpoints: [%q]}
linear: {step: 2, every: %s}
analysis: {minRequests: 0}
`, i, listen, i, v1.Addr, i, v2.Addr, every+time.Duration(i)*every/8))
	}
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-kill", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, l := range listens {
		if err := envoy.WaitListener(ctx, l); err != nil {
			t.Fatalf("listener %s never came up: %v", l, err)
		}
	}
	// Reconnect at once after each restart: grpc-go's default backoff grows
	// to minutes over dozens of lost connections.
	cc, err := grpc.NewClient(sp.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	rc := shiftplanev1.NewRolloutServiceClient(cc)

	w := &killWatch{envoyMax: map[string]uint32{}, stepMax: map[string]int32{}, targetMax: map[string]int32{}}
	var kill struct {
		sync.Mutex
		n int
	}
	curKill := func() int { kill.Lock(); defer kill.Unlock(); return kill.n }
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the fleet: what Envoy holds
		defer wg.Done()
		for watchCtx.Err() == nil {
			rctx, c := context.WithTimeout(watchCtx, 2*time.Second)
			ws, err := envoy.RouteWeights(rctx)
			c()
			if err == nil {
				w.envoy(ws, curKill())
			}
			time.Sleep(15 * time.Millisecond)
		}
	}()
	go func() { // the API: step and weight sent
		defer wg.Done()
		for watchCtx.Err() == nil {
			rctx, c := context.WithTimeout(watchCtx, time.Second)
			resp, err := rc.List(rctx, &shiftplanev1.ListRequest{})
			c()
			if err == nil {
				for _, r := range resp.GetRollouts() {
					w.api(r, curKill())
				}
			}
			time.Sleep(25 * time.Millisecond)
		}
	}()
	stop := func() { stopWatch(); wg.Wait() }
	defer stop()

	var restarts []time.Duration
	advanced, same := 0, 0
	for i := 0; i < kills; i++ {
		time.Sleep(time.Duration(400+(i*397)%900) * time.Millisecond) // 0.4–1.3 s, varied so kills hit saves, publishes and holds
		before := w.snapshot()
		if err := sp.Proc.Kill(); err != nil {
			t.Fatal(err)
		}
		<-sp.Proc.Done()
		kill.Lock()
		kill.n = i + 1
		kill.Unlock()
		start := time.Now()
		sp.Start()
		restarts = append(restarts, time.Since(start))
		// The first API answer after the restart against the last before the kill.
		var after *shiftplanev1.ListResponse
		for deadline := time.Now().Add(harness.DefaultWait); after == nil && time.Now().Before(deadline); {
			rctx, c := context.WithTimeout(ctx, time.Second)
			resp, err := rc.List(rctx, &shiftplanev1.ListRequest{})
			c()
			if err == nil {
				after = resp
			}
		}
		if after == nil {
			t.Fatalf("kill %d: the API never answered after the restart", i+1)
		}
		for _, r := range after.GetRollouts() {
			w.api(r, i+1)
			b := before[r.GetName()]
			if r.GetStepIndex() > b[0] || r.GetTargetWeight() > b[1] {
				advanced++
			} else {
				same++
			}
		}
	}
	for i := 0; i < killLoopRollouts; i++ {
		sp.WaitPhase(fmt.Sprintf("web%d", i), "SUCCEEDED", 2*time.Minute)
	}
	stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.backwards) > 0 {
		t.Fatalf("%d readings went backwards across %d SIGKILLs:\n%s", len(w.backwards), kills, strings.Join(w.backwards, "\n"))
	}
	if w.envoyReads < 10*kills || w.apiReads < 10*kills {
		t.Fatalf("too few readings to judge: %d of Envoy's config, %d of the API over %d kills", w.envoyReads, w.apiReads, kills)
	}
	slowest := time.Duration(0)
	for _, d := range restarts {
		slowest = max(slowest, d)
	}
	t.Logf("%d SIGKILLs of shiftplane serve under %d rollouts stepping every %s+: 0 went backwards; %d readings of Envoy's config_dump, %d of the API; "+
		"%d rollout-restarts resumed at the step last read before the kill, %d further on; slowest restart to ready %s; final Envoy weights %v; %s in all",
		kills, killLoopRollouts, every, w.envoyReads, w.apiReads, same, advanced, slowest.Round(time.Millisecond), w.envoyMax, time.Since(began).Round(time.Second))
}
