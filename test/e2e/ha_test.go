package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/etcdharness"
	"github.com/shiftplane/shiftplane/test/harness"
)

// haSessionTTL is the replicas' etcd session lease in these tests: a new
// leader must be in charge within haSessionTTL + 2s of the old one's death.
const haSessionTTL = 2 * time.Second

// haRig is three shiftplane replicas on a real 3-member etcd, two backends
// and two Envoys whose xds_cluster lists every replica.
type haRig struct {
	etcd     *etcdharness.Cluster
	replicas []*Shiftplane
	f        *fleet
}

func startHARig(t *testing.T) *haRig {
	t.Helper()
	r := &haRig{etcd: etcdharness.Start(t, 3)}
	args := []string{"--store-backend", "etcd",
		"--store-etcd-endpoints", strings.Join(r.etcd.Endpoints(), ","),
		"--store-etcd-prefix", "/" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "/",
		"--store-etcd-session-ttl", haSessionTTL.String(),
		"--store-etcd-report-every", "200ms"}
	for range 3 {
		r.replicas = append(r.replicas, StartShiftplane(t, args...))
	}
	r.f = &fleet{sp: r.replicas[0], v1: harness.StartBackend(t, "v1"), v2: harness.StartBackend(t, "v2"),
		listen: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))}
	var xds []string
	for _, sp := range r.replicas {
		xds = append(xds, sp.XDSAddr)
	}
	for i := range 2 {
		r.f.envoys = append(r.f.envoys, harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: nodeID(t, i), Cluster: "e2e-ha", XDSAddrs: xds}))
	}
	return r
}

// alive reports whether replica i's process runs and answers on HTTP.
func (r *haRig) alive(i int) bool {
	select {
	case <-r.replicas[i].Proc.Done():
		return false
	default:
	}
	return true
}

// leader returns the index of the replica whose /metrics says it leads, or -1.
func (r *haRig) leader(t *testing.T, except ...int) int {
	t.Helper()
next:
	for i, sp := range r.replicas {
		for _, e := range except {
			if i == e {
				continue next
			}
		}
		if r.alive(i) && sp.Metric("shiftplane_ha_leader") == 1 {
			return i
		}
	}
	return -1
}

func (r *haRig) waitLeader(t *testing.T, timeout time.Duration, except ...int) (int, time.Time) {
	t.Helper()
	l := -1
	at := waitFor(t, timeout, "a replica leads", func() (bool, string) {
		l = r.leader(t, except...)
		return l >= 0, ""
	})
	return l, at
}

// nodeReplicas returns node id → the replica its xDS stream is on, and
// whether the fleet API counts it converged.
func nodeReplicas(ctx context.Context, fc shiftplanev1.FleetServiceClient) (map[string]string, map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := fc.ListNodes(ctx, &shiftplanev1.ListNodesRequest{})
	if err != nil {
		return nil, nil, err
	}
	on, conv := map[string]string{}, map[string]bool{}
	for _, n := range resp.GetNodes() {
		on[n.GetId()], conv[n.GetId()] = n.GetReplica(), n.GetConverged()
	}
	return on, conv, nil
}

// routeSampler reads every Envoy's routes every 20 ms.
type routeSampler struct {
	mu      sync.Mutex
	samples []routeSample
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func sampleRoutes(t *testing.T, envoys []*harness.Envoy) *routeSampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &routeSampler{cancel: cancel}
	for i, e := range envoys {
		s.wg.Go(func() {
			for ctx.Err() == nil {
				rs := readRoutes(ctx, e, i)
				if !rs.Err && ctx.Err() == nil {
					s.mu.Lock()
					s.samples = append(s.samples, rs)
					s.mu.Unlock()
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	t.Cleanup(s.stop)
	return s
}

func (s *routeSampler) stop() { s.cancel(); s.wg.Wait() }

func (s *routeSampler) between(from, to time.Time) []routeSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []routeSample
	for _, rs := range s.samples {
		if !rs.Sent.Before(from) && !rs.At.After(to) {
			out = append(out, rs)
		}
	}
	return out
}

// Three replicas, three etcd members, two Envoys listing every replica,
// constant load. The leader is SIGKILLed mid-hold: another replica leads
// within TTL + 2s and carries on from the same step and counted hold, with
// every Envoy's route version and weight unchanged across the failover.
// Then the replica an Envoy is on is killed: the Envoy moves to another
// replica, gets the same version, and counts in convergence again. Then an
// etcd member is killed, and the rollout still finishes. No request fails.
func TestHALeaderKilledMidRollout(t *testing.T) {
	r := startHARig(t)
	f := r.f
	lead, _ := r.waitLeader(t, 10*time.Second)
	follower := (lead + 1) % 3
	rc, _ := apiClients(t, r.replicas[follower])

	// The plan goes in through a follower: it is forwarded to the leader.
	plan := f.plan(planSpec{Steps: []planStep{{10, 3 * time.Second}, {30, 30 * time.Second}, {100, 0}}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := rc.Apply(ctx, &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_PlanYaml{PlanYaml: plan}}); err != nil {
		t.Fatalf("apply through follower %d: %v", follower, err)
	}
	f.waitListeners(t)
	load := f.startLoad(t, 100)
	routes := sampleRoutes(t, f.envoys)

	// Mid-hold at step 1 (weight 30).
	var before *shiftplanev1.Rollout
	waitFor(t, time.Minute, "step 1 holding with 3s counted", func() (bool, string) {
		ro, err := getRollout(ctx, rc)
		if err != nil {
			return false, err.Error()
		}
		before = ro
		return ro.GetStepIndex() == 1 && ro.GetCanaryWeight() == 30 && ro.GetHoldCounted().AsDuration() >= 3*time.Second,
			fmt.Sprintf("step %d weight %d counted %s phase %s: %s", ro.GetStepIndex(), ro.GetCanaryWeight(), ro.GetHoldCounted().AsDuration(), ro.GetPhase(), ro.GetReason())
	})
	f.waitFleetWeight(t, 10*time.Second, 30)
	versionBefore := map[int]string{}
	for i, e := range f.envoys {
		versionBefore[i] = readRoutes(ctx, e, i).Version
	}
	t.Logf("before the kill: leader replica %d, step %d, counted %s, route versions %v", lead, before.GetStepIndex(), before.GetHoldCounted().AsDuration(), versionBefore)

	// SIGKILL the leader.
	killedAt := time.Now()
	if err := r.replicas[lead].Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	newLead, ledAt := r.waitLeader(t, haSessionTTL+10*time.Second, lead)
	took := ledAt.Sub(killedAt)
	t.Logf("replica %d leads %s after the leader was SIGKILLed (TTL %s)", newLead, took.Round(10*time.Millisecond), haSessionTTL)
	if took > haSessionTTL+2*time.Second {
		t.Errorf("new leader after %s, want within TTL + 2s = %s", took, haSessionTTL+2*time.Second)
	}
	rc2, fc2 := apiClients(t, r.replicas[newLead])
	after, err := getRollout(ctx, rc2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the failover: step %d weight %d counted %s phase %s", after.GetStepIndex(), after.GetCanaryWeight(), after.GetHoldCounted().AsDuration(), after.GetPhase())
	// The same step; the counted hold is what was stored (persisted every
	// second), never started over.
	if after.GetStepIndex() != 1 || after.GetCanaryWeight() != 30 {
		t.Errorf("after the failover: step %d weight %d, want step 1 weight 30", after.GetStepIndex(), after.GetCanaryWeight())
	}
	if c0, c1 := before.GetHoldCounted().AsDuration(), after.GetHoldCounted().AsDuration(); c1 < c0-1500*time.Millisecond {
		t.Errorf("counted hold went from %s to %s across the failover: it must resume, not restart", c0, c1)
	}
	// Every Envoy (reconnected wherever) still has the same version and weight.
	time.Sleep(3 * time.Second)
	for _, s := range routes.between(killedAt.Add(-time.Second), time.Now()) {
		if s.V2 != 30 || s.Version != versionBefore[s.Envoy] {
			t.Errorf("envoy %d at %s: weight %d version %s, want 30 at version %s throughout the failover", s.Envoy, s.At.Format("15:04:05.000"), s.V2, s.Version, versionBefore[s.Envoy])
			break
		}
	}

	// shiftctl through a follower: get names the leader, fleet each node's replica.
	ctl := harness.BuildBinary(t, "./cmd/shiftctl")
	other := (newLead + 1) % 3
	if other == lead {
		other = (other + 1) % 3
	}
	out, err := exec.CommandContext(ctx, ctl, "--server", r.replicas[other].APIAddr, "get", fleetRollout).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Leader:   "+r.replicas[newLead].APIAddr) {
		t.Errorf("shiftctl get through follower %d: %v\n%s\nwant a Leader: %s line", other, err, out, r.replicas[newLead].APIAddr)
	}
	out, err = exec.CommandContext(ctx, ctl, "--server", r.replicas[other].APIAddr, "fleet").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "REPLICA") || !strings.Contains(string(out), nodeID(t, 0)) {
		t.Errorf("shiftctl fleet through follower %d: %v\n%s\nwant a REPLICA column and both nodes", other, err, out)
	}
	t.Logf("shiftctl fleet:\n%s", out)

	// The killed replica comes back, as a follower.
	r.replicas[lead].Start()

	// Kill the replica one Envoy is on, if it is not the leader.
	var on map[string]string
	var conv map[string]bool
	waitFor(t, 10*time.Second, "both Envoys listed by the fleet API", func() (bool, string) {
		on, conv, err = nodeReplicas(ctx, fc2)
		return err == nil && len(on) == 2, fmt.Sprint(on, err)
	})
	t.Logf("nodes on replicas: %v", on)
	// The replica Envoy 0 is on (the leader or not) is killed.
	node := nodeID(t, 0)
	victim := -1
	for i, sp := range r.replicas {
		if sp.APIAddr == on[node] {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("node %s is on %q, not a replica", node, on[node])
	}
	watcher := (victim + 1) % 3
	if !r.alive(watcher) {
		watcher = (watcher + 1) % 3
	}
	rc3, fc3 := apiClients(t, r.replicas[watcher])
	vBefore := map[int]string{}
	for i, e := range f.envoys {
		vBefore[i] = readRoutes(ctx, e, i).Version
	}
	killed2 := time.Now()
	if err := r.replicas[victim].Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "node "+node+" on another replica and converged", func() (bool, string) {
		on, conv, err = nodeReplicas(ctx, fc3)
		return err == nil && on[node] != "" && on[node] != r.replicas[victim].APIAddr && conv[node], fmt.Sprint(on, conv, err)
	})
	t.Logf("node %s moved from replica %d (leader: %v) to %s in %s", node, victim, victim == newLead, on[node], time.Since(killed2).Round(10*time.Millisecond))
	for _, s := range routes.between(killed2, time.Now()) {
		if s.Version != vBefore[s.Envoy] && s.V2 == 30 {
			t.Errorf("envoy %d got route version %s (was %s) with the same weight after moving replica", s.Envoy, s.Version, vBefore[s.Envoy])
			break
		}
	}
	r.replicas[victim].Start()
	rc2 = rc3

	// One etcd member down: nothing changes; the rollout finishes.
	r.etcd.StopMember(0)
	waitFor(t, 90*time.Second, "rollout SUCCEEDED", func() (bool, string) {
		ro, err := getRollout(ctx, rc2)
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(ro.GetPhase().String(), "SUCCEEDED"), fmt.Sprintf("%s step %d weight %d: %s", ro.GetPhase(), ro.GetStepIndex(), ro.GetCanaryWeight(), ro.GetReason())
	})
	f.waitFleetWeight(t, 10*time.Second, 100)
	recs := load.Stop()
	s := requireNoFailures(t, "whole run", recs)
	t.Logf("load: %d requests, %d failed", s.Total, s.Failed)

	// Weights only ever moved forward in every Envoy.
	last := map[int]int{}
	for _, s := range routes.between(time.Time{}, time.Now()) {
		if s.V2 >= 0 && s.V2 < last[s.Envoy] {
			t.Errorf("envoy %d went back from weight %d to %d at %s", s.Envoy, last[s.Envoy], s.V2, s.At.Format("15:04:05.000"))
		}
		last[s.Envoy] = max(last[s.Envoy], s.V2)
	}
}

// healthz returns replica i's /healthz status code (0 if unreachable).
func (r *haRig) healthz(i int) int {
	resp, err := http.Get("http://" + r.replicas[i].HTTPAddr + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The leader is SIGSTOPped past its TTL: another replica leads; when the
// old one is SIGCONTed it writes nothing (every write it tries is fenced)
// and steps down. Then etcd loses its majority: the rollout holds, the
// Envoys keep serving, and when the majority returns everything resumes
// with the same versions.
func TestHAPausedLeaderAndQuorumLoss(t *testing.T) {
	r := startHARig(t)
	f := r.f
	lead, _ := r.waitLeader(t, 10*time.Second)
	rc, _ := apiClients(t, r.replicas[(lead+1)%3])
	plan := f.plan(planSpec{Steps: []planStep{{20, 5 * time.Minute}, {100, 0}}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := rc.Apply(ctx, &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_PlanYaml{PlanYaml: plan}}); err != nil {
		t.Fatal(err)
	}
	f.waitListeners(t)
	load := f.startLoad(t, 100)
	routes := sampleRoutes(t, f.envoys)
	waitFor(t, time.Minute, "holding at weight 20 with 2s counted", func() (bool, string) {
		ro, err := getRollout(ctx, rc)
		if err != nil {
			return false, err.Error()
		}
		return ro.GetCanaryWeight() == 20 && ro.GetHoldCounted().AsDuration() >= 2*time.Second, fmt.Sprintf("%s weight %d", ro.GetPhase(), ro.GetCanaryWeight())
	})
	f.waitFleetWeight(t, 10*time.Second, 20)

	// Every write to the rollout from here on: a write by the paused
	// leader would carry its older state, a counted hold that went back.
	cl := r.etcdClient(t)
	prefix := "/" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "/"
	var writesMu sync.Mutex
	var counted []time.Duration
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch := cl.Watch(wctx, prefix+"rollouts/"+fleetRollout)
	go func() {
		for wr := range watch {
			for _, ev := range wr.Events {
				var ro struct {
					State struct {
						HoldCounted time.Duration `json:"holdCounted"`
					} `json:"state"`
				}
				if json.Unmarshal(ev.Kv.Value, &ro) == nil {
					writesMu.Lock()
					counted = append(counted, ro.State.HoldCounted)
					writesMu.Unlock()
				}
			}
		}
	}()

	old := r.replicas[lead]
	if err := syscall.Kill(old.Proc.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Cleanup(func() { _ = syscall.Kill(old.Proc.PID(), syscall.SIGCONT) })
	newLead, ledAt := r.waitLeader(t, haSessionTTL+10*time.Second, lead)
	t.Logf("replica %d leads %s after the leader was SIGSTOPped", newLead, ledAt.Sub(stopped).Round(10*time.Millisecond))
	if d := ledAt.Sub(stopped); d > haSessionTTL+2*time.Second {
		t.Errorf("new leader after %s, want within TTL + 2s", d)
	}
	time.Sleep(haSessionTTL) // well past its TTL
	if err := syscall.Kill(old.Proc.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the old leader steps down", func() (bool, string) {
		return old.Metric("shiftplane_ha_leader") == 0, ""
	})
	time.Sleep(2 * time.Second) // let it try to write what it still had
	if !strings.Contains(old.Proc.Output(), "engine stopped: no longer leading") {
		t.Errorf("the old leader did not log that it stopped its engine:\n%s", tail(old.Proc.Output(), 30))
	}
	t.Logf("the woken leader's writes refused by the fence: %d", strings.Count(old.Proc.Output(), "no longer the leader"))
	writesMu.Lock()
	for i := 1; i < len(counted); i++ {
		if counted[i] < counted[i-1] {
			t.Errorf("a write set the counted hold back from %s to %s: the paused leader wrote after losing its term", counted[i-1], counted[i])
		}
	}
	t.Logf("%d writes of the rollout since the pause, counted hold %v .. %v", len(counted), first(counted), lastOf(counted))
	writesMu.Unlock()
	if n := r.leader(t); n != newLead {
		t.Errorf("leader is replica %d after the old one woke up, want %d", n, newLead)
	}

	// etcd loses its majority.
	vBefore := map[int]string{}
	for i, e := range f.envoys {
		vBefore[i] = readRoutes(ctx, e, i).Version
	}
	lost := time.Now()
	r.etcd.StopMember(1)
	r.etcd.StopMember(2)
	waitFor(t, 15*time.Second, "every replica reports its etcd session gone", func() (bool, string) {
		var codes []string
		all := true
		for i := range r.replicas {
			c := r.healthz(i)
			codes = append(codes, fmt.Sprint(c))
			all = all && c == http.StatusServiceUnavailable
		}
		return all, strings.Join(codes, ",")
	})
	time.Sleep(3 * time.Second)
	for _, s := range routes.between(lost, time.Now()) {
		if s.V2 != 20 || s.Version != vBefore[s.Envoy] {
			t.Errorf("envoy %d without an etcd majority: weight %d version %s, want 20 at %s", s.Envoy, s.V2, s.Version, vBefore[s.Envoy])
			break
		}
	}
	// The majority returns: a leader again, same versions, and it acts.
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for _, m := range []int{1, 2} {
		wg.Go(func() { errs[m] = r.etcd.RestartMember(rctx, m) })
	}
	wg.Wait()
	rcancel()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	back := time.Now()
	l, at := r.waitLeader(t, 20*time.Second)
	t.Logf("majority back: replica %d leads after %s", l, at.Sub(back).Round(10*time.Millisecond))
	rcl, _ := apiClients(t, r.replicas[(l+1)%3])
	if _, err := rcl.Promote(ctx, &shiftplanev1.PromoteRequest{Name: fleetRollout}); err != nil {
		t.Fatalf("promote through a follower after the majority returned: %v", err)
	}
	f.waitFleetWeight(t, 30*time.Second, 100)
	for _, s := range routes.between(lost, back) {
		if s.Version != vBefore[s.Envoy] {
			t.Errorf("envoy %d got version %s while etcd had no majority", s.Envoy, s.Version)
			break
		}
	}
	recs := load.Stop()
	st := requireNoFailures(t, "whole run", recs)
	t.Logf("load: %d requests, %d failed", st.Total, st.Failed)
}

func first(d []time.Duration) any {
	if len(d) == 0 {
		return "-"
	}
	return d[0]
}

func lastOf(d []time.Duration) any {
	if len(d) == 0 {
		return "-"
	}
	return d[len(d)-1]
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (r *haRig) etcdClient(t *testing.T) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: r.etcd.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
