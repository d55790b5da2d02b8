package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/boltstore"
	"github.com/shiftplane/shiftplane/policy/notify"
	"github.com/shiftplane/shiftplane/test/harness"
)

// The fakes stand at the engine's interface boundaries: the publisher (no
// Envoy here), the fleet (always converged) and the signal gate (set by the
// test). The store is the real bbolt store, so History is what the engine
// recorded.
type publisher struct{ n atomic.Uint64 }

func (p *publisher) Publish(context.Context, policy.DesiredState, string) (policy.PublishResult, error) {
	v := strconv.FormatUint(p.n.Add(1), 10)
	return policy.PublishResult{ClusterVersion: v, ListenerVersion: v, RouteVersion: v}, nil
}

type fleet struct{}

func (fleet) Convergence(policy.ResourceKind, string) policy.Convergence {
	return policy.Convergence{Converged: true, Nodes: 1}
}

type gate struct{ firing atomic.Bool }

func (g *gate) Evaluate(now time.Time, _ policy.SignalQuery) policy.Signal {
	if g.firing.Load() {
		return policy.Signal{State: policy.SignalFiring, Reason: "test: canary ejected"}
	}
	// Each evaluation is a fresh report of the canary serving requests.
	return policy.Signal{State: policy.SignalClear, Reason: "test: clear",
		Traffic: []policy.TrafficSample{{Node: "envoy-1", From: now, At: now, Requests: 100}}}
}

func (g *gate) ActiveRequests(time.Time, string) (float64, bool) { return 0, true }

func startEngine(t *testing.T, g *gate) *policy.Engine {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e, err := policy.New(ctx, policy.Options{Store: store, Publisher: &publisher{}, Fleet: fleet{}, Gate: g, DrainQuiet: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go e.Run(ctx, 10*time.Millisecond)
	return e
}

func plan(t *testing.T, name string, holds ...time.Duration) policy.Plan {
	t.Helper()
	steps := ""
	for i, h := range holds {
		steps += fmt.Sprintf("  - {weight: %d, hold: %s}\n", 10*(i+1), h)
	}
	y := fmt.Sprintf(`name: %s
listener: {address: "127.0.0.1:%d"}
stable: {cluster: %s-v1, endpoints: ["127.0.0.1:8081"]}
canary: {cluster: %s-v2, endpoints: ["127.0.0.1:8082"]}
steps:
%s  - {weight: 100}
analysis: {stableFor: 0s, staleAfter: 10s, rollbackAfter: 200ms, drainTimeout: 1s}
`, name, 10000+len(name)+int(name[0]), name, name, steps)
	ps, probs := policy.ParseAndValidate([]byte(y), "test.yaml", policy.ValidateOptions{})
	if len(probs) > 0 || len(ps) != 1 {
		t.Fatalf("plan: %v", probs)
	}
	return ps[0]
}

// receiver is a local webhook: it records what arrives and checks signatures.
type receiver struct {
	t      *testing.T
	secret string
	mu     sync.Mutex
	got    []notify.Notification
	bad    []string
	addr   string
	srv    *http.Server
}

func newReceiver(t *testing.T, secret string) *receiver {
	return &receiver{t: t, secret: secret, addr: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))}
}

func (r *receiver) start() {
	r.t.Helper()
	lis, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if sig := req.Header.Get(notify.SignatureHeader); sig != notify.Sign([]byte(r.secret), body) {
			r.bad = append(r.bad, "bad signature "+sig)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var n notify.Notification
		if err := json.Unmarshal(body, &n); err != nil {
			r.bad = append(r.bad, err.Error())
			return
		}
		r.got = append(r.got, n)
	})}
	go func() { _ = r.srv.Serve(lis) }()
	r.t.Cleanup(func() { r.srv.Close() })
}

func (r *receiver) notifications() []notify.Notification {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]notify.Notification(nil), r.got...)
}

func startNotifier(t *testing.T, e *policy.Engine, reg prometheus.Registerer, sinks ...notify.SinkConfig) {
	t.Helper()
	n, err := notify.New(notify.Options{Sinks: sinks, Registerer: reg, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx, e) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(20 * time.Millisecond) // let Run subscribe before the rollout starts
}

func waitPhase(t *testing.T, e *policy.Engine, name string, want policy.Phase, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if s, err := e.Get(name); err == nil && s.State.Phase == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, _ := e.Get(name)
	t.Fatalf("rollout %q is %s after %s, want %s", name, s.State.Phase, within, want)
}

// expected is the engine's history, as the sink should have seen it.
func expected(t *testing.T, e *policy.Engine, name string) []string {
	t.Helper()
	evs, err := e.History(name, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		if len(notify.Classify(ev)) > 0 {
			out = append(out, fmt.Sprintf("%s>%s w%d s%d %s", ev.From, ev.To, ev.Weight, ev.StepIndex+1, ev.Reason))
		}
	}
	return out
}

func lines(ns []notify.Notification) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = fmt.Sprintf("%s>%s w%d s%d %s", n.From, n.To, n.Weight, n.Step, n.Reason)
	}
	return out
}

// waitNotifications waits until r holds exactly want, in order, numbered
// 1..n without gaps or repeats.
func waitNotifications(t *testing.T, r *receiver, want []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var got []notify.Notification
	for time.Now().Before(deadline) {
		got = r.notifications()
		if len(got) >= len(want) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would arrive now
	got = r.notifications()
	r.mu.Lock()
	bad := r.bad
	r.mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("receiver refused: %v", bad)
	}
	if strings.Join(lines(got), "\n") != strings.Join(want, "\n") {
		t.Fatalf("notifications:\n  %s\nwant the engine's history:\n  %s", strings.Join(lines(got), "\n  "), strings.Join(want, "\n  "))
	}
	for i, n := range got {
		if n.Seq != uint64(i+1) {
			t.Fatalf("notification %d has seq %d: a gap or a repeat", i, n.Seq)
		}
	}
}

func hasPhases(t *testing.T, want []string, phases ...string) {
	t.Helper()
	all := strings.Join(want, "\n")
	for _, p := range phases {
		if !strings.Contains(all, ">"+p+" ") {
			t.Fatalf("history lacks a transition to %s:\n%s", p, all)
		}
	}
}

// Every transition of a full rollout and of a rollback arrives once, in
// order, signed.
func TestFullRolloutAndRollback(t *testing.T) {
	g := &gate{}
	e := startEngine(t, g)
	r := newReceiver(t, "s3cret")
	r.start()
	reg := prometheus.NewRegistry()
	startNotifier(t, e, reg, notify.SinkConfig{Name: "hook", URL: "http://" + r.addr + "/", Secret: "s3cret"})

	if _, err := e.Apply(plan(t, "shop", 100*time.Millisecond, 100*time.Millisecond), "api"); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, e, "shop", policy.PhaseSucceeded, 10*time.Second)
	full := expected(t, e, "shop")
	hasPhases(t, full, "PENDING", "PROGRESSING", "PROMOTING", "SUCCEEDED")
	waitNotifications(t, r, full, 5*time.Second)
	if k := r.notifications()[len(full)-1].Kinds; !containsKind(k, notify.KindSuccess) {
		t.Fatalf("last notification kinds %v, want success", k)
	}

	g.firing.Store(true)
	if _, err := e.Apply(plan(t, "cart", time.Hour), "api"); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, e, "cart", policy.PhaseRolledBack, 10*time.Second)
	rb := expected(t, e, "cart")
	hasPhases(t, rb, "HOLDING", "ROLLING_BACK", "ROLLED_BACK")
	waitNotifications(t, r, append(full, rb...), 5*time.Second)
	if v := testutil.ToFloat64(mustCounter(t, reg, "hook", notify.ResultDelivered)); int(v) != len(full)+len(rb) {
		t.Fatalf("delivered = %v, want %d", v, len(full)+len(rb))
	}
}

// A receiver that is down for 10 s gets every notification after it comes back.
func TestReceiverDownThenBack(t *testing.T) {
	g := &gate{}
	e := startEngine(t, g)
	r := newReceiver(t, "k")
	startNotifier(t, e, nil, notify.SinkConfig{URL: "http://" + r.addr + "/hook", Secret: "k"})
	down := time.Now()
	if _, err := e.Apply(plan(t, "shop", 200*time.Millisecond), "api"); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, e, "shop", policy.PhaseSucceeded, 10*time.Second)
	if n := len(r.notifications()); n != 0 {
		t.Fatalf("%d notifications arrived while the receiver was down", n)
	}
	time.Sleep(10*time.Second - time.Since(down))
	r.start()
	back := time.Now()
	want := expected(t, e, "shop")
	waitNotifications(t, r, want, 5*time.Second)
	t.Logf("receiver down 10s; %d notifications arrived %s after it came back", len(want), time.Since(back).Round(time.Millisecond))
}

// A receiver that never answers does not slow the engine: weight steps keep
// their timing, and what the full queue cannot take is counted as dropped.
func TestReceiverNeverBack(t *testing.T) {
	g := &gate{}
	e := startEngine(t, g)
	// Accepts connections and never answers: every attempt waits its timeout.
	hang := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hang.Serve(lis) }()
	t.Cleanup(func() { hang.Close() })
	reg := prometheus.NewRegistry()
	startNotifier(t, e, reg, notify.SinkConfig{Name: "black-hole", URL: "http://" + lis.Addr().String() + "/", QueueSize: 2, Timeout: 2 * time.Second, RetryFor: time.Minute})

	const hold = 150 * time.Millisecond
	holds := []time.Duration{hold, hold, hold, hold, hold, hold}
	if _, err := e.Apply(plan(t, "shop", holds...), "api"); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, e, "shop", policy.PhaseSucceeded, 10*time.Second)
	evs, err := e.History("shop", 0)
	if err != nil {
		t.Fatal(err)
	}
	var steps []time.Time
	for _, ev := range evs {
		if strings.HasPrefix(ev.Reason, "step ") {
			steps = append(steps, ev.Time)
		}
	}
	if len(steps) != len(holds)+1 {
		t.Fatalf("%d step events, want %d:\n%s", len(steps), len(holds)+1, strings.Join(expected(t, e, "shop"), "\n"))
	}
	for i := 1; i < len(steps); i++ {
		// A hold starts one tick after its weight is ACKed and ends on a tick.
		if d := steps[i].Sub(steps[i-1]); d < hold || d > hold+100*time.Millisecond {
			t.Fatalf("step %d lasted %s, want %s (+ ticks): the engine was slowed", i, d, hold)
		}
	}
	// One in flight, two queued: the rest of the history is dropped (one
	// more if the first had not left the queue when the third arrived). The
	// notifier reads the engine's updates on its own goroutine, so the last
	// drops may be counted a moment after SUCCEEDED.
	want := float64(len(expected(t, e, "shop")) - 3)
	var dropped float64
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		dropped = testutil.ToFloat64(mustCounter(t, reg, "black-hole", notify.ResultDropped))
		if dropped >= want || time.Now().After(deadline) {
			break
		}
	}
	if dropped != want && dropped != want+1 {
		t.Fatalf("dropped = %v, want %v (or %v)", dropped, want, want+1)
	}
	t.Logf("steps of %s took %s..%s; %v notifications dropped", hold, steps[1].Sub(steps[0]), steps[len(steps)-1].Sub(steps[len(steps)-2]), dropped)
}

func mustCounter(t *testing.T, reg *prometheus.Registry, sink, result string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "shiftplane_notifications_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["sink"] == sink && labels["result"] == result {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("no shiftplane_notifications_total{sink=%q,result=%q}", sink, result)
	return nil
}

func containsKind(ks []notify.Kind, k notify.Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}
