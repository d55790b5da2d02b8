package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

// PromoteConfig configures RunPromotion: promotions through the CLI to
// fleet-wide convergence, against an example-style peer in the same run,
// and the engine's idle CPU.
type PromoteConfig struct {
	N        int           // streams per fleet (one fleet per server)
	Rollouts int           // rollouts on one shared listener, promoted Gap apart
	Gap      time.Duration // between promotions
	Rounds   int           // rounds of Rollouts promotions per server
	// DrainTimeout is the plans' analysis.drainTimeout: with no stats, the
	// stable is withdrawn this long after its promotion, while the next
	// promotions are under way.
	DrainTimeout time.Duration
	// IdleRollouts and IdleFor: the idle-CPU measurement (0 skips it).
	IdleRollouts int
	IdleFor      time.Duration
	// Shiftplane and Shiftctl are the binaries; empty builds them.
	Shiftplane, Shiftctl string
	Log                  io.Writer
}

// PromoteResult is what RunPromotion measured.
type PromoteResult struct {
	Shiftplane, Peer []time.Duration // per promotion: trigger → last stream ACKed 100
	CLI              []time.Duration // shiftctl promote wall time (process start → exit)
	Idle             []IdleCPU
	LoadBefore       float64
	LoadAfter        float64
}

// IdleCPU is the shiftplane process's CPU over an idle spell.
type IdleCPU struct {
	Tick      time.Duration // --engine-tick (the safety tick)
	Rollouts  int
	Streams   int
	CPU, Wall time.Duration
}

// PerMinute is CPU seconds per idle minute.
func (c IdleCPU) PerMinute() float64 {
	if c.Wall <= 0 {
		return 0
	}
	return c.CPU.Seconds() * float64(time.Minute) / float64(c.Wall)
}

// holdWatch follows, for every client, when it first ACKed a route
// configuration in which rollout k sends all its traffic to want[k].
type holdWatch struct {
	mu   sync.RWMutex
	want map[string]int // canary cluster → rollout index
	at   [][]atomic.Int64
}

func newHoldWatch(n, k int) *holdWatch {
	w := &holdWatch{want: map[string]int{}, at: make([][]atomic.Int64, n)}
	for i := range w.at {
		w.at[i] = make([]atomic.Int64, k)
	}
	return w
}

// reset sets the canaries to watch for and forgets what was seen.
func (w *holdWatch) reset(canaries []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.want = map[string]int{}
	for k, c := range canaries {
		w.want[c] = k
	}
	for i := range w.at {
		for k := range w.at[i] {
			w.at[i][k].Store(0)
		}
	}
}

func (w *holdWatch) onAck(i int) func(fleetsim.Type, []*anypb.Any) {
	return func(t fleetsim.Type, rs []*anypb.Any) {
		if t != fleetsim.RDS {
			return
		}
		now := fleetsim.Mono()
		w.mu.RLock()
		defer w.mu.RUnlock()
		for _, r := range rs {
			var rc routev3.RouteConfiguration
			if r.UnmarshalTo(&rc) != nil {
				continue
			}
			for _, vh := range rc.GetVirtualHosts() {
				only := soleCluster(vh)
				if k, ok := w.want[only]; ok && only != "" {
					w.at[i][k].CompareAndSwap(0, now)
				}
			}
		}
	}
}

// soleCluster is the one cluster every route of vh sends traffic to, "" if
// traffic is split (a weight above 0 on two clusters) or there is none.
func soleCluster(vh *routev3.VirtualHost) string {
	only := ""
	for _, rt := range vh.GetRoutes() {
		a := rt.GetRoute()
		if a == nil {
			continue
		}
		names := []string{a.GetCluster()}
		if wc := a.GetWeightedClusters(); wc != nil {
			names = names[:0]
			for _, c := range wc.GetClusters() {
				if c.GetWeight().GetValue() > 0 {
					names = append(names, c.GetName())
				}
			}
		}
		for _, n := range names {
			if n == "" {
				continue
			}
			if only != "" && only != n {
				return ""
			}
			only = n
		}
	}
	return only
}

// wait waits until every client holds rollout k at 100 since t0 and
// returns the last such ACK's time.
func (w *holdWatch) wait(ctx context.Context, k int, t0 int64) (int64, error) {
	for {
		last, missing := int64(0), 0
		for i := range w.at {
			at := w.at[i][k].Load()
			if at == 0 || at < t0 {
				missing++
				continue
			}
			last = max(last, at)
		}
		if missing == 0 {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("rollout %d: %d of %d streams do not hold weight 100: %w", k, missing, len(w.at), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// promoteTarget is a control plane a promotion round runs against.
type promoteTarget interface {
	name() string
	// prepare makes rollouts names[k] (stable stables[k], canary
	// canaries[k]) wait at weight 0 for a promotion, the fleet converged.
	prepare(ctx context.Context, names, stables, canaries []string) error
	// promote triggers rollout k's promotion; it returns once the trigger
	// is done (shiftplane: the CLI exited).
	promote(ctx context.Context, k int) error
	// settle waits until every promotion's stable is withdrawn.
	settle(ctx context.Context) error
}

// roundNames are the names and clusters of round r: the canary of round
// r is the stable of round r+1, as releases follow one another.
func roundNames(k, r int) (names, stables, canaries []string) {
	for i := range k {
		n := fmt.Sprintf("promo-%02d", i)
		names = append(names, n)
		stables = append(stables, fmt.Sprintf("%s-v%d", n, r+1))
		canaries = append(canaries, fmt.Sprintf("%s-v%d", n, r+2))
	}
	return names, stables, canaries
}

// runRound promotes every rollout of a prepared target, gap apart, and
// returns each promotion's trigger → last stream ACK.
func runRound(ctx context.Context, tg promoteTarget, w *holdWatch, k int, gap time.Duration) ([]time.Duration, error) {
	lat := make([]time.Duration, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range k {
		if d := time.Until(start.Add(time.Duration(i) * gap)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := fleetsim.Mono()
			if err := tg.promote(ctx, i); err != nil {
				errs[i] = err
				return
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			last, err := w.wait(wctx, i, t0)
			errs[i] = err
			lat[i] = time.Duration(last - t0)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", tg.name(), err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return lat, tg.settle(sctx)
}

// RunPromotion runs the promotion bench: a shiftplane server (the real
// binary) and the peer, each with its own fleet of N streams in this
// process, promotion rounds alternating between them; then the idle CPU.
func RunPromotion(ctx context.Context, cfg PromoteConfig) (PromoteResult, error) {
	var res PromoteResult
	logf := func(format string, a ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", a...)
		}
	}
	if _, err := RaiseNoFileMax(); err != nil {
		logf("raise RLIMIT_NOFILE: %v", err)
	}
	dir, err := os.MkdirTemp("", "shiftplane-promote-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if cfg.Shiftplane == "" || cfg.Shiftctl == "" {
		logf("building shiftplane and shiftctl")
		if cfg.Shiftplane, cfg.Shiftctl, err = buildBinaries(ctx, dir); err != nil {
			return res, err
		}
	}
	res.LoadBefore = LoadAvg()

	// The first round's plans are there from the start: a server with no
	// rollout serves nothing (xds.allowEmptyAtStart is off).
	first := filepath.Join(dir, "promote-plans")
	if err := os.MkdirAll(first, 0o755); err != nil {
		return res, err
	}
	names, stables, canaries := roundNames(cfg.Rollouts, 0)
	for k, n := range names {
		if err := os.WriteFile(filepath.Join(first, n+".yaml"), []byte(benchPlan(n, stables[k], canaries[k], cfg.DrainTimeout)), 0o644); err != nil {
			return res, err
		}
	}
	sp, err := startServer(ctx, cfg, dir, "promote", nil, first)
	if err != nil {
		return res, err
	}
	defer sp.stop()
	peer, err := StartPeer(cfg.DrainTimeout)
	if err != nil {
		return res, err
	}
	defer peer.Stop()

	spWatch, peerWatch := newHoldWatch(cfg.N, cfg.Rollouts), newHoldWatch(cfg.N, cfg.Rollouts)
	logf("connecting %d streams to each server", cfg.N)
	spFleet, err := fleetsim.Start(ctx, fleetsim.FleetConfig{Addr: sp.xds, N: cfg.N, Mode: fleetsim.SotW, NodePrefix: "sp", OnAck: spWatch.onAck, Parallel: 500})
	if err != nil {
		return res, fmt.Errorf("shiftplane fleet: %w (%s)", err, sp.tail())
	}
	defer spFleet.Stop()
	peerFleet, err := fleetsim.Start(ctx, fleetsim.FleetConfig{Addr: peer.Addr(), N: cfg.N, Mode: fleetsim.SotW, NodePrefix: "peer", OnAck: peerWatch.onAck, Parallel: 500})
	if err != nil {
		return res, fmt.Errorf("peer fleet: %w", err)
	}
	defer peerFleet.Stop()
	spT := &spTarget{s: sp, ctl: cfg.Shiftctl, dir: dir, drain: cfg.DrainTimeout}
	peerT := &peerTarget{p: peer, fleet: peerFleet}
	for r := range cfg.Rounds {
		names, stables, canaries := roundNames(cfg.Rollouts, r)
		order := []struct {
			tg  promoteTarget
			w   *holdWatch
			out *[]time.Duration
		}{{spT, spWatch, &res.Shiftplane}, {peerT, peerWatch, &res.Peer}}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, o := range order {
			pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			err := o.tg.prepare(pctx, names, stables, canaries)
			cancel()
			if err != nil {
				return res, fmt.Errorf("round %d: %s: prepare: %w", r+1, o.tg.name(), err)
			}
			o.w.reset(canaries)
			time.Sleep(200 * time.Millisecond) // let the other server's round die down
			lat, err := runRound(ctx, o.tg, o.w, cfg.Rollouts, cfg.Gap)
			if err != nil {
				return res, fmt.Errorf("round %d: %w", r+1, err)
			}
			*o.out = append(*o.out, lat...)
			logf("round %d %-10s promotion → all %d streams at 100: %s", r+1, o.tg.name(), cfg.N, msList(lat))
		}
	}
	res.CLI = spT.cli
	spFleet.Stop()
	peerFleet.Stop()
	peer.Stop()
	sp.stop()

	if cfg.IdleRollouts > 0 {
		for _, tick := range []time.Duration{time.Second, 100 * time.Millisecond} {
			ic, err := measureIdle(ctx, cfg, dir, tick, logf)
			if err != nil {
				return res, fmt.Errorf("idle CPU (engine tick %s): %w", tick, err)
			}
			res.Idle = append(res.Idle, ic)
		}
	}
	res.LoadAfter = LoadAvg()
	return res, nil
}

// measureIdle starts a server with cfg.IdleRollouts rollouts parked at a
// manual gate and cfg.N streams, and measures its CPU over cfg.IdleFor.
func measureIdle(ctx context.Context, cfg PromoteConfig, dir string, tick time.Duration, logf func(string, ...any)) (IdleCPU, error) {
	ic := IdleCPU{Tick: tick, Rollouts: cfg.IdleRollouts, Streams: cfg.N}
	plans := filepath.Join(dir, fmt.Sprintf("idle-plans-%s", tick))
	if err := os.MkdirAll(plans, 0o755); err != nil {
		return ic, err
	}
	var names []string
	for i := range cfg.IdleRollouts {
		n := fmt.Sprintf("idle-%04d", i)
		names = append(names, n)
		if err := os.WriteFile(filepath.Join(plans, n+".yaml"), []byte(benchPlan(n, n+"-v1", n+"-v2", cfg.DrainTimeout)), 0o644); err != nil {
			return ic, err
		}
	}
	s, err := startServer(ctx, cfg, dir, "idle-"+tick.String(), []string{"--engine-tick", tick.String()}, plans)
	if err != nil {
		return ic, err
	}
	defer s.stop()
	f, err := fleetsim.Start(ctx, fleetsim.FleetConfig{Addr: s.xds, N: cfg.N, Mode: fleetsim.SotW, NodePrefix: "idle", Parallel: 500})
	if err != nil {
		return ic, fmt.Errorf("fleet: %w (%s)", err, s.tail())
	}
	defer f.Stop()
	wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	if err := s.waitPhase(wctx, names, "PAUSED"); err != nil {
		return ic, err
	}
	time.Sleep(2 * time.Second) // the last publish's ACKs and GC settle
	c0, t0 := s.cpu(), time.Now()
	select {
	case <-ctx.Done():
		return ic, ctx.Err()
	case <-time.After(cfg.IdleFor):
	}
	ic.CPU, ic.Wall = s.cpu()-c0, time.Since(t0)
	logf("idle: %d rollouts, %d streams, engine tick %s: %.3f CPU s over %s", cfg.IdleRollouts, cfg.N, tick, ic.CPU.Seconds(), ic.Wall.Round(time.Millisecond))
	return ic, nil
}

// benchPlan is a rollout that waits at a manual gate, then goes to 100.
func benchPlan(name, stable, canary string, drain time.Duration) string {
	return fmt.Sprintf(`name: %s
listener: {address: "127.0.0.1:10000", domains: ["%s.example.com"]}
stable: {cluster: %s, endpoints: ["127.0.0.1:8081"]}
canary: {cluster: %s, endpoints: ["127.0.0.1:8082"]}
steps:
  - pause: {}
  - weight: 100
analysis: {drainTimeout: %s}
`, name, name, stable, canary, drain)
}

func buildBinaries(ctx context.Context, dir string) (shiftplane, shiftctl string, err error) {
	root, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", "", fmt.Errorf("find the module root: %w", err)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(os.PathSeparator), "./cmd/shiftplane", "./cmd/shiftctl")
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return filepath.Join(dir, "shiftplane"), filepath.Join(dir, "shiftctl"), nil
}

// server is a `shiftplane serve` child process.
type server struct {
	cmd            *exec.Cmd
	xds, api, http string
	out            *tailBuffer
	done           chan struct{}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startServer(ctx context.Context, cfg PromoteConfig, dir, label string, extra []string, planDir string) (*server, error) {
	s := &server{out: &tailBuffer{max: 8 << 10}, done: make(chan struct{})}
	var err error
	for _, a := range []*string{&s.xds, &s.api, &s.http} {
		if *a, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	args := append([]string{"serve", "--xds-address", s.xds, "--api-address", s.api, "--http-address", s.http,
		"--store-path", filepath.Join(dir, label+".db"), "--plan", planDir, "--log-level", "warn",
		// Every simulated Envoy connects from 127.0.0.1.
		"--xds-max-streams-per-source", "20000"}, extra...)
	s.cmd = exec.Command(cfg.Shiftplane, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + s.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("shiftplane serve exited: %s", s.out)
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("shiftplane serve not ready after 60s: %s", s.out)
		}
	}
}

func (s *server) tail() string { return s.out.String() }

func (s *server) stop() {
	if s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// cpu is the child's user+system CPU so far (/proc/PID/stat).
func (s *server) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
	rest := string(b[bytes.LastIndexByte(b, ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// phases reads shiftplane_rollout_phase from /metrics: rollout → phase.
func (s *server) phases() (map[string]string, error) {
	resp, err := http.Get("http://" + s.http + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "shiftplane_rollout_phase{")
		if !ok || !strings.HasSuffix(line, "} 1") {
			continue
		}
		var phase, rollout string
		for kv := range strings.SplitSeq(strings.TrimSuffix(rest, "} 1"), ",") {
			k, v, _ := strings.Cut(kv, "=")
			v = strings.Trim(v, `"`)
			switch k {
			case "phase":
				phase = v
			case "rollout":
				rollout = v
			}
		}
		out[rollout] = phase
	}
	return out, sc.Err()
}

// waitPhase waits until every rollout of names is in phase.
func (s *server) waitPhase(ctx context.Context, names []string, phase string) error {
	for {
		ph, err := s.phases()
		missing := ""
		if err == nil {
			for _, n := range names {
				if ph[n] != phase {
					missing = fmt.Sprintf("%s is %q", n, ph[n])
					break
				}
			}
		} else {
			missing = err.Error()
		}
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %s: %w", phase, missing, ctx.Err())
		case <-time.After(100 * time.Millisecond): // a scrape lists every rollout
		}
	}
}

// spTarget runs rounds on a shiftplane server through shiftctl.
type spTarget struct {
	s     *server
	ctl   string
	dir   string
	drain time.Duration
	names []string
	cli   []time.Duration
	mu    sync.Mutex
}

func (t *spTarget) name() string { return "shiftplane" }

func (t *spTarget) ctlRun(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, t.ctl, append([]string{"--server", t.s.api}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("shiftctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (t *spTarget) prepare(ctx context.Context, names, stables, canaries []string) error {
	t.names = names
	for k, n := range names {
		f := filepath.Join(t.dir, n+".yaml")
		if err := os.WriteFile(f, []byte(benchPlan(n, stables[k], canaries[k], t.drain)), 0o644); err != nil {
			return err
		}
		if err := t.ctlRun(ctx, "apply", "-f", f); err != nil {
			return err
		}
	}
	return t.s.waitPhase(ctx, names, "PAUSED")
}

func (t *spTarget) promote(ctx context.Context, k int) error {
	t0 := time.Now()
	err := t.ctlRun(ctx, "promote", t.names[k])
	t.mu.Lock()
	t.cli = append(t.cli, time.Since(t0))
	t.mu.Unlock()
	return err
}

func (t *spTarget) settle(ctx context.Context) error {
	return t.s.waitPhase(ctx, t.names, "SUCCEEDED")
}

// peerTarget runs rounds on the peer, triggered in this process.
type peerTarget struct {
	p     *Peer
	fleet *fleetsim.Fleet
}

func (t *peerTarget) name() string { return "peer" }

func (t *peerTarget) prepare(ctx context.Context, names, stables, canaries []string) error {
	v, err := t.p.Reset(names, stables, canaries)
	if err != nil {
		return err
	}
	for _, ty := range []fleetsim.Type{fleetsim.CDS, fleetsim.EDS, fleetsim.LDS, fleetsim.RDS} {
		if _, err := t.fleet.WaitVersion(ctx, ty, v); err != nil {
			return err
		}
	}
	return nil
}

func (t *peerTarget) promote(_ context.Context, k int) error { return t.p.Promote(k) }

func (t *peerTarget) settle(ctx context.Context) error { return t.p.WaitWithdrawn(ctx) }

// WritePromoteTable prints the promotion and idle rows.
func WritePromoteTable(out io.Writer, cfg PromoteConfig, r PromoteResult) {
	fmt.Fprintf(out, "\nshiftplane promotion bench: %d streams per server (in this process, SotW, ACKing like Envoy), %d rollouts on one listener promoted %s apart, %d rounds per server alternating;\n",
		cfg.N, cfg.Rollouts, cfg.Gap, cfg.Rounds)
	fmt.Fprintf(out, "stable withdrawn %s after each promotion (drainTimeout, no stats), overlapping the next; shiftplane = the real binary (bbolt store), promoted by `shiftctl promote` (process start included);\n", cfg.DrainTimeout)
	fmt.Fprintf(out, "peer = go-control-plane example style in this process (cache.NewSnapshot, one version for all types, one snapshot for the fleet), promoted by a function call\n\n")
	w := func(metric, val, target string) { fmt.Fprintf(out, "%-60s %-22s %s\n", metric, val, target) }
	w("metric", "value", "target")
	sp50, sp99 := Percentile(r.Shiftplane, 50), Percentile(r.Shiftplane, 99)
	pe50, pe99 := Percentile(r.Peer, 50), Percentile(r.Peer, 99)
	w("promote (shiftctl) → all streams hold 100, p50", ms(sp50), "")
	w("promote (shiftctl) → all streams hold 100, p99", ms(sp99), "≤ 250 ms")
	w("promote (shiftctl) → all streams hold 100, max", ms(maxDur(r.Shiftplane)), "")
	w("shiftctl promote wall time p50 / max", ms(Percentile(r.CLI, 50))+" / "+ms(maxDur(r.CLI)), "")
	w("peer promote → all streams hold 100, p50", ms(pe50), "")
	w("peer p99", ms(pe99), "")
	w("peer max", ms(maxDur(r.Peer)), "")
	if pe50 > 0 && pe99 > 0 {
		w("shiftplane / peer p50", fmt.Sprintf("%.2f", sp50.Seconds()/pe50.Seconds()), "< 1")
		w("shiftplane / peer p99", fmt.Sprintf("%.2f", sp99.Seconds()/pe99.Seconds()), "< 1")
	}
	for _, ic := range r.Idle {
		w(fmt.Sprintf("idle CPU, %d rollouts, %d streams, engine.tick %s", ic.Rollouts, ic.Streams, ic.Tick),
			fmt.Sprintf("%.3f s / idle min", ic.PerMinute()), "near 0")
	}
	w("load average (1 min) before / after", fmt.Sprintf("%.1f / %.1f", r.LoadBefore, r.LoadAfter), "")
	fmt.Fprintf(out, "shiftplane promotions (ms): %s\npeer promotions (ms):       %s\n", msList(sorted(r.Shiftplane)), msList(sorted(r.Peer)))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func maxDur(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func sorted(ds []time.Duration) []time.Duration {
	out := append([]time.Duration(nil), ds...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
