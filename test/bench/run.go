package bench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

// Steps is the outcome of a series of weight steps.
type Steps struct {
	N int
	// Latency is publish start → the last client's ACK, per step.
	Latency []time.Duration
	// FirstAck is publish start → the first client's ACK, per step.
	FirstAck []time.Duration
	// Set is how long the target's Step call took (shiftplane:
	// Publisher.Set, which answers every open watch).
	Set []time.Duration
	// Received is what the clients received during the measured steps.
	Received fleetsim.Counters
	// CPU is the server process's CPU time during the measured steps (from
	// publish until the server saw every ACK); ClientCPU the client
	// process's over the whole measured phase (when the clients run in the
	// server's process, both include both).
	CPU, ClientCPU time.Duration
	// Alloc is the bytes the server process allocated during the measured
	// steps, GCs the garbage collections that ended there meanwhile.
	Alloc, GCs uint64
}

// PerStreamStep returns bytes and responses of type t per stream per step.
func (s Steps) PerStreamStep(t fleetsim.Type) (bytes, responses float64) {
	d := float64(s.N * len(s.Latency))
	if d == 0 {
		return 0, 0
	}
	return float64(s.Received.Bytes[t]) / d, float64(s.Received.Responses[t]) / d
}

// PerStep returns d divided by the number of measured steps.
func (s Steps) PerStep(d time.Duration) time.Duration {
	if len(s.Latency) == 0 {
		return 0
	}
	return d / time.Duration(len(s.Latency))
}

// Stepper moves the weight on one target, one step at a time, and
// accumulates the measured steps. Steppers of different targets can be
// interleaved so that both see the same machine (RunTable does).
type Stepper struct {
	tg   Target
	cl   Clients
	n    int
	next int // index of the next step (StepWeight)

	measuring bool
	c0        ClientCounters
	Result    Steps
}

// NewStepper returns a stepper over n connected clients of tg, starting at
// step index first.
func NewStepper(tg Target, cl Clients, n, first int) *Stepper {
	return &Stepper{tg: tg, cl: cl, n: n, next: first, Result: Steps{N: n}}
}

// Begin starts measuring: later steps are recorded.
func (s *Stepper) Begin(ctx context.Context) error {
	c, err := s.cl.Counters(ctx)
	s.c0, s.measuring = c, err == nil
	return err
}

// End stops measuring and records what the clients received meanwhile.
func (s *Stepper) End(ctx context.Context) error {
	c1, err := s.cl.Counters(ctx)
	if err != nil {
		return err
	}
	s.measuring = false
	s.Result.Received = c1.Counters.Sub(s.c0.Counters)
	s.Result.ClientCPU = c1.CPU - s.c0.CPU
	return nil
}

// StepCost is what one step cost a server process: CPU time (user +
// system, getrusage), bytes allocated and GC cycles completed
// (runtime/metrics), from just before the publish until the server had
// seen every ACK.
type StepCost struct {
	CPU   time.Duration `json:"cpu"`
	Alloc uint64        `json:"alloc"`
	GCs   uint64        `json:"gcs"`
}

// costMeter reads this process's StepCost counters.
type costMeter struct {
	cpu        time.Duration
	alloc, gcs uint64
}

func startCost() costMeter {
	m := costMeter{cpu: ProcessCPU()}
	m.alloc, m.gcs = readAllocs()
	return m
}

// since returns the cost from m until now.
func (m costMeter) since() StepCost {
	a, g := readAllocs()
	return StepCost{CPU: ProcessCPU() - m.cpu, Alloc: a - m.alloc, GCs: g - m.gcs}
}

// SelfMeasured is a Target that runs in a process of its own (FloorProcess)
// and so times and costs its steps there, not in the process that drives
// them. After Step and Settle returned, the Stepper asks it for the step's
// start, how long its publish took and what the step cost that process.
type SelfMeasured interface {
	Target
	// LastStep returns when the last Step's publish began (fleetsim.Mono)
	// and how long it took.
	LastStep() (start int64, set time.Duration)
	// LastCost returns the last step's cost to the target's process, from
	// the start of its publish until its Settle returned.
	LastCost() StepCost
}

// Step publishes the next weight, waits until every client ACKed the new
// RDS version, then until the server has seen those ACKs.
func (s *Stepper) Step(ctx context.Context) error {
	i := s.next
	s.next++
	cost := startCost()
	t0 := fleetsim.Mono()
	v, err := s.tg.Step(ctx, StepWeight(i))
	if err != nil {
		return fmt.Errorf("step %d: %w", i, err)
	}
	set := time.Duration(fleetsim.Mono() - t0)
	sm, remote := s.tg.(SelfMeasured)
	if remote {
		t0, set = sm.LastStep()
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	span, err := s.cl.WaitVersion(sctx, fleetsim.RDS, v)
	if err == nil {
		err = s.tg.Settle(sctx, v, s.n)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("step %d (version %d): %w", i, v, err)
	}
	if s.measuring {
		c := cost.since()
		if remote {
			c = sm.LastCost()
		}
		r := &s.Result
		r.Latency = append(r.Latency, time.Duration(span.Last-t0))
		r.FirstAck = append(r.FirstAck, time.Duration(span.First-t0))
		r.Set = append(r.Set, set)
		r.CPU += c.CPU
		r.Alloc += c.Alloc
		r.GCs += c.GCs
	}
	return nil
}

// RunSteps runs warmup unmeasured and then steps measured weight steps on
// one target, from step index first, gap apart.
func RunSteps(ctx context.Context, tg Target, cl Clients, n, first, warmup, steps int, gap time.Duration) (Steps, error) {
	s := NewStepper(tg, cl, n, first)
	for i := range warmup + steps {
		if i == warmup {
			if err := s.Begin(ctx); err != nil {
				return s.Result, err
			}
		}
		if i > 0 && gap > 0 {
			time.Sleep(gap)
		}
		if err := s.Step(ctx); err != nil {
			return s.Result, err
		}
	}
	if err := s.End(ctx); err != nil {
		return s.Result, err
	}
	return s.Result, nil
}

var allocMetrics = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}

// readAllocs returns the bytes allocated and GC cycles completed so far.
func readAllocs() (bytes, cycles uint64) {
	s := slices.Clone(allocMetrics)
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// Percentile returns the nearest-rank p-th percentile (0 < p ≤ 100).
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// RatioInterval is the central conf (e.g. 0.9) bootstrap interval of
// Percentile(a, p) / Percentile(b, p). The steps of a and b alternated in
// one run, so round i of a is resampled together with round i of b
// (paired), keeping what the machine was doing then. With a few hundred
// steps the p99 is the third or fourth slowest step: the interval says how
// far another run of the same code may land. Deterministic: a fixed seed.
func RatioInterval(a, b []time.Duration, p, conf float64) (lo, hi float64) {
	n := min(len(a), len(b))
	if n == 0 {
		return 0, 0
	}
	const draws = 2000
	rng := rand.New(rand.NewPCG(1, 2))
	ratios := make([]float64, 0, draws)
	ra, rb := make([]time.Duration, n), make([]time.Duration, n)
	for range draws {
		for j := range n {
			k := rng.IntN(n)
			ra[j], rb[j] = a[k], b[k]
		}
		if d := Percentile(rb, p); d > 0 {
			ratios = append(ratios, float64(Percentile(ra, p))/float64(d))
		}
	}
	if len(ratios) == 0 {
		return 0, 0
	}
	slices.Sort(ratios)
	at := func(q float64) float64 {
		return ratios[max(0, min(int(q*float64(len(ratios))), len(ratios)-1))]
	}
	return at((1 - conf) / 2), at((1 + conf) / 2)
}

// Mem is a process memory reading after a full GC.
type Mem struct {
	HeapInuse  uint64 `json:"heapInuse"`
	RSS        uint64 `json:"rss"`
	Goroutines int    `json:"goroutines"`
}

// ReadMem collects garbage, returns freed memory to the OS and reads the
// heap in use, VmRSS and the goroutine count.
func ReadMem() Mem {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return Mem{HeapInuse: ms.HeapInuse, RSS: VmRSS(), Goroutines: runtime.NumGoroutine()}
}

// VmRSS returns this process's resident set size from /proc/self/status.
func VmRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// RaiseNoFile raises RLIMIT_NOFILE to at least need, the hard limit too
// if allowed. It returns the soft limit now in force.
func RaiseNoFile(need uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur >= need {
		return rl.Cur, nil
	}
	want := rl
	want.Cur = need
	if want.Max < need {
		want.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Not allowed to raise the hard limit: take what it allows.
		want = rl
		want.Cur = rl.Max
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err2 != nil {
			return rl.Cur, err2
		}
		return want.Cur, fmt.Errorf("RLIMIT_NOFILE %d needed, hard limit %d: %w", need, rl.Max, err)
	}
	return want.Cur, nil
}

// RaiseNoFileMax raises the RLIMIT_NOFILE soft limit to the hard limit.
func RaiseNoFileMax() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	rl.Cur = rl.Max
	return rl.Cur, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
}

// StormResult is a reconnect storm against shiftplane.
type StormResult struct {
	// Clients is until every client re-ACKed all four types on a new
	// stream; Server until shiftplane's fleet tracker showed exactly N
	// streams, every one converged. Both from the first drop.
	Clients, Server time.Duration
	// Lost counts clients not configured again plus streams missing from
	// the fleet tracker (or not converged there) at the end.
	Lost int
	// Extra counts streams the tracker holds beyond N.
	Extra int
}

// Total is the storm's time until both views agree.
func (s StormResult) Total() time.Duration { return max(s.Clients, s.Server) }

// RunStorm drops and reconnects every client at once and measures until
// both the clients and shiftplane's fleet tracker see the fleet converged:
// exactly n streams, every one opened after the drop and converged.
func RunStorm(ctx context.Context, sp *Shiftplane, cl Clients, n int) (StormResult, error) {
	var oldMax int64
	for _, ns := range sp.Fleet.Nodes() {
		oldMax = max(oldMax, ns.StreamID)
	}
	vs := sp.Pub.Versions()
	vC, vR := vs[resourcev3.ClusterType], vs[resourcev3.RouteType]
	// cheap is Fleet.Convergence: it cannot tell old streams the server
	// has not yet seen close from new ones, so a hit is confirmed with
	// Fleet.Nodes, which holds the tracker's lock for a while at large N
	// and so runs at most every 50 ms, once the old streams are going.
	cheap := func() (bool, int) {
		c := sp.Fleet.Convergence(policy.KindClusters, vC)
		r := sp.Fleet.Convergence(policy.KindRoutes, vR)
		return c.Converged && r.Converged && c.Nodes == n && r.Nodes == n, min(c.Nodes, r.Nodes)
	}
	full := func() (good, total int) {
		nodes := sp.Fleet.Nodes()
		for _, ns := range nodes {
			if ns.StreamID > oldMax && ns.Converged {
				good++
			}
		}
		return good, len(nodes)
	}
	type seen struct {
		at          int64 // Mono() when confirmed, 0 if never
		good, total int
	}
	stop := make(chan struct{})
	res := make(chan seen, 1)
	start := fleetsim.Mono()
	go func() {
		var s seen
		defer func() { res <- s }()
		dip := false
		var lastFull int64
		for {
			ok, nodes := cheap()
			dip = dip || nodes < n
			now := fleetsim.Mono()
			if ok && (dip || now-start > int64(100*time.Millisecond)) && now-lastFull > int64(50*time.Millisecond) {
				lastFull = now
				s.good, s.total = full()
				if s.good == n && s.total == n {
					s.at = now
					return
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	st, err := cl.Storm(ctx)
	out := StormResult{Clients: st.Configured}
	if err != nil {
		close(stop)
		<-res
		return out, fmt.Errorf("storm: %w", err)
	}
	var s seen
	select {
	case s = <-res:
	case <-ctx.Done():
		close(stop)
		s = <-res
		s.good, s.total = full()
	}
	out.Lost = st.Lost + (n - s.good)
	out.Extra = max(0, s.total-n)
	if s.at == 0 {
		return out, fmt.Errorf("storm: the fleet tracker never showed %d new, converged streams (%d new and converged, %d in all)", n, s.good, s.total)
	}
	out.Server = time.Duration(s.at - st.Start)
	return out, nil
}

// stormTimeout bounds a reconnect storm of n streams: 20 s, plus 3 s per
// thousand streams beyond the first thousand.
func stormTimeout(n int) time.Duration {
	return 20*time.Second + time.Duration(max(0, n-1000))*3*time.Millisecond
}
