package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

// TableConfig configures RunTable.
type TableConfig struct {
	Ns    []int
	Mode  fleetsim.Mode
	Steps int // measured weight steps per N and server
	// StepsLarge, if > 0, replaces Steps for N > 1000, where a step takes
	// a second or more.
	StepsLarge int
	Warmup     int // unmeasured steps before them
	// StormAt lists the N at which the reconnect storm runs.
	StormAt []int
	// Parallel is fleetsim.FleetConfig.Parallel (0: all clients at once).
	Parallel int
	// InProcess runs the clients and the floor server in this process; by
	// default the clients run in child processes (this binary, with
	// ChildEnv set) and so does the floor (FloorProcess, FloorEnv), so that
	// heap, RSS and CPU are each server's alone.
	InProcess bool
	// Gap is the pause between steps (RunStepsGap).
	Gap time.Duration
	// CPUProfile, if set, is a path prefix: the measured steps at each N
	// are CPU-profiled into <prefix>-<N>.pprof (this process: shiftplane,
	// and the floor too if in-process) and <prefix>-<N>-floor.pprof (the
	// floor process).
	CPUProfile string
	// Variant is the shiftplane stack to measure (Shipped by default).
	Variant Variant
	// MemProfile, if set, is a path prefix: the heap with shiftplane's
	// fleet connected and idle is written to <prefix>-<N>.pprof.
	MemProfile string
	// PerN bounds each N's whole run.
	PerN time.Duration
	Log  io.Writer // progress lines; nil discards
}

// Result is one N's measurements.
type Result struct {
	N    int
	Skip string // why this N was not run

	Connect             time.Duration
	HeapPerStream       float64 // bytes, server process (combined if in-process)
	FloorHeapPerStream  float64
	RSSPerStream        float64
	GoroutinesPerStream float64

	Shiftplane, Floor Steps
	FloorConnect      time.Duration
	// Histogram is shiftplane_convergence_seconds over the measured steps.
	HistCount uint64
	HistSum   float64

	Load [2]float64 // 1-minute load average before and after
	// SideBySide says shiftplane and the floor ran at once with
	// alternating steps; false: one after the other (in-process only, when
	// the descriptor limit does not allow both fleets in one process).
	SideBySide bool

	Storm    *StormResult
	StormErr string
	Err      string
}

// fdMargin is the descriptors a process needs beyond one per stream (the
// server's socket; in-process clients hold the other end too).
const fdMargin = 512

// RunTable measures every N in cfg.Ns and writes one table to out.
func RunTable(ctx context.Context, cfg TableConfig, out io.Writer) ([]Result, error) {
	logw := cfg.Log
	if logw == nil {
		logw = io.Discard
	}
	if cfg.PerN == 0 {
		cfg.PerN = 15 * time.Minute
	}
	var exe string
	if !cfg.InProcess {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	var results []Result
	for _, n := range cfg.Ns {
		r := Result{N: n}
		// Each server process holds its own fleet's streams, one
		// descriptor each: shiftplane's here, the floor's in the floor
		// process. In process, this one holds both servers' streams and
		// the clients' ends too; if that does not fit, the two run one
		// after the other.
		one := uint64(n) + fdMargin
		need := one
		if cfg.InProcess {
			one = 2*uint64(n) + fdMargin
			need = 4*uint64(n) + fdMargin
		}
		got, err := RaiseNoFile(need)
		r.SideBySide = err == nil
		if !r.SideBySide && need != one {
			if got, err = RaiseNoFile(one); err == nil {
				fmt.Fprintf(logw, "N=%d: descriptor limit %d: shiftplane and the floor run one after the other\n", n, got)
			}
		}
		if err != nil {
			r.Skip = fmt.Sprintf("RLIMIT_NOFILE: need %d, have %d (%v)", one, got, err)
			fmt.Fprintf(logw, "N=%d skipped: %s\n", n, r.Skip)
			results = append(results, r)
			continue
		}
		nctx, cancel := context.WithTimeout(ctx, cfg.PerN)
		t0 := time.Now()
		err = runOne(nctx, cfg, exe, &r, logw)
		cancel()
		if err != nil {
			r.Err = err.Error()
			fmt.Fprintf(logw, "N=%d failed: %v\n", n, err)
		}
		fmt.Fprintf(logw, "N=%d done in %s\n", n, time.Since(t0).Round(time.Millisecond))
		results = append(results, r)
		if ctx.Err() != nil {
			break
		}
	}
	WriteTable(out, cfg, results)
	return results, nil
}

func newClients(cfg TableConfig, exe string) (Clients, error) {
	if cfg.InProcess {
		return &LocalClients{Mode: cfg.Mode, Parallel: cfg.Parallel}, nil
	}
	return StartChild(exe, nil, cfg.Mode, cfg.Parallel)
}

// runOne measures one N. Shiftplane (in this process) and the floor (in
// the floor process) run side by side, each with its own N clients (its
// own client process), and their steps alternate, so that both see the
// same machine: on a shared 2-core box the noise from other work is larger
// than the difference being measured. With cfg.InProcess everything is in
// this process, and if the descriptor limit does not allow both fleets
// here (r.SideBySide false) they run one after the other.
func runOne(ctx context.Context, cfg TableConfig, exe string, r *Result, logw io.Writer) (err error) {
	n := r.N
	r.Load[0] = LoadAvg()
	defer func() { r.Load[1] = LoadAvg() }()
	clSP, err := newClients(cfg, exe)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, clSP.Close()) }()
	clFL, err := newClients(cfg, exe)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, clFL.Close()) }()

	sp, err := StartShiftplaneVariant(cfg.Variant)
	if err != nil {
		return err
	}
	defer sp.Stop()

	// shiftplane's idle footprint: its fleet alone.
	m0 := ReadMem()
	if r.Connect, err = clSP.Connect(ctx, sp.Addr(), n); err != nil {
		return fmt.Errorf("shiftplane: %w", err)
	}
	if err := sp.Settle(ctx, 1, n); err != nil {
		return fmt.Errorf("shiftplane after connect: %w", err)
	}
	time.Sleep(500 * time.Millisecond)
	m1 := ReadMem()
	writeHeapProfile(cfg, n, "", logw)
	r.HeapPerStream = (float64(m1.HeapInuse) - float64(m0.HeapInuse)) / float64(n)
	r.RSSPerStream = (float64(m1.RSS) - float64(m0.RSS)) / float64(n)
	r.GoroutinesPerStream = float64(m1.Goroutines-m0.Goroutines) / float64(n)
	fmt.Fprintf(logw, "N=%d shiftplane: connected in %s, heap %.1f KiB/stream, RSS %.1f KiB/stream\n",
		n, r.Connect.Round(time.Millisecond), r.HeapPerStream/1024, r.RSSPerStream/1024)
	sps := NewStepper(sp, clSP, n, 0)

	var fl floorServer
	var fls *Stepper
	startFloor := func() error {
		// Assigned only on success: fl is stopped if non-nil.
		if cfg.InProcess {
			f, err := StartFloor()
			if err != nil {
				return err
			}
			fl = f
		} else {
			f, err := StartFloorProcess(ctx, exe)
			if err != nil {
				return err
			}
			fl = f
		}
		m0, err := fl.Mem(ctx)
		if err != nil {
			return err
		}
		if r.FloorConnect, err = clFL.Connect(ctx, fl.Addr(), n); err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		time.Sleep(500 * time.Millisecond)
		m1, err := fl.Mem(ctx)
		if err != nil {
			return err
		}
		r.FloorHeapPerStream = (float64(m1.HeapInuse) - float64(m0.HeapInuse)) / float64(n)
		fmt.Fprintf(logw, "N=%d floor: connected in %s, heap %.1f KiB/stream\n", n, r.FloorConnect.Round(time.Millisecond), r.FloorHeapPerStream/1024)
		fls = NewStepper(fl, clFL, n, 0)
		return nil
	}
	defer func() {
		if fl != nil {
			fl.Stop()
		}
	}()

	c0, s0 := sp.ConvergenceHistogram()
	if r.SideBySide {
		if err := startFloor(); err != nil {
			return err
		}
		if err := runSteppers(ctx, cfg, n, "", sps, fls); err != nil {
			return err
		}
	} else if err := runSteppers(ctx, cfg, n, "-shiftplane", sps); err != nil {
		return err
	}
	c1, s1 := sp.ConvergenceHistogram()
	writeHeapProfile(cfg, n, "-steps", logw)
	r.HistCount, r.HistSum = c1-c0, s1-s0
	r.Shiftplane = sps.Result
	fmt.Fprintf(logw, "N=%d shiftplane: p50 %s p99 %s; all steps (ms): %s\n", n, Percentile(r.Shiftplane.Latency, 50), Percentile(r.Shiftplane.Latency, 99), msList(r.Shiftplane.Latency))

	if slices.Contains(cfg.StormAt, n) {
		// Only shiftplane's fleet stays connected: the storm has the machine.
		if err := clFL.Disconnect(ctx); err != nil {
			return err
		}
		// Bounded on its own, so that a storm that never converges leaves
		// time to disconnect and report.
		sctx, cancel := context.WithTimeout(ctx, stormTimeout(n))
		st, err := RunStorm(sctx, sp, clSP, n)
		cancel()
		r.Storm = &st
		if err != nil {
			r.StormErr = err.Error()
			fmt.Fprintf(logw, "N=%d storm: %v\n", n, err)
		} else {
			fmt.Fprintf(logw, "N=%d storm: %s (clients %s, fleet tracker %s), lost %d\n", n, st.Total().Round(time.Millisecond),
				st.Clients.Round(time.Millisecond), st.Server.Round(time.Millisecond), st.Lost)
		}
	}
	if !r.SideBySide {
		if err := clSP.Disconnect(ctx); err != nil {
			return err
		}
		sp.Stop()
		if err := startFloor(); err != nil {
			return err
		}
		if err := runSteppers(ctx, cfg, n, "-floor", fls); err != nil {
			return err
		}
	}
	r.Floor = fls.Result
	fmt.Fprintf(logw, "N=%d floor:      p50 %s p99 %s; all steps (ms): %s\n", n, Percentile(r.Floor.Latency, 50), Percentile(r.Floor.Latency, 99), msList(r.Floor.Latency))
	return errors.Join(clSP.Disconnect(ctx), clFL.Disconnect(ctx))
}

func (cfg TableConfig) stepsFor(n int) int {
	if n > 1000 && cfg.StepsLarge > 0 {
		return cfg.StepsLarge
	}
	return cfg.Steps
}

func (cfg TableConfig) stepsText() string {
	if cfg.StepsLarge > 0 && cfg.StepsLarge != cfg.Steps {
		return fmt.Sprintf("%d weight steps per N and server (%d at N > 1000)", cfg.Steps, cfg.StepsLarge)
	}
	return fmt.Sprintf("%d weight steps per N and server", cfg.Steps)
}

// runSteppers runs cfg.Warmup and then cfg.Steps rounds; a round is one
// step of each stepper, cfg.Gap apart, in an order that rotates per round.
func runSteppers(ctx context.Context, cfg TableConfig, n int, label string, ss ...*Stepper) error {
	round := func(i int) error {
		for k := range ss {
			s := ss[(i+k)%len(ss)]
			if err := s.Step(ctx); err != nil {
				return fmt.Errorf("%s: %w", s.tg.Name(), err)
			}
			time.Sleep(cfg.Gap)
		}
		return nil
	}
	for i := range cfg.Warmup {
		if err := round(i); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	for _, s := range ss {
		if err := s.Begin(ctx); err != nil {
			return err
		}
	}
	stop, err := profile(ctx, cfg, fmt.Sprintf("%d%s", n, label), ss)
	if err != nil {
		return err
	}
	for i := range cfg.stepsFor(n) {
		if err := round(i); err != nil {
			stop()
			return err
		}
	}
	if err := stop(); err != nil {
		return err
	}
	for _, s := range ss {
		if err := s.End(ctx); err != nil {
			return err
		}
	}
	return nil
}

// LoadAvg returns the 1-minute load average from /proc/loadavg.
func LoadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// profiler is a target in a process of its own that can CPU-profile it
// (FloorProcess).
type profiler interface {
	StartProfile(ctx context.Context, path string) error
	StopProfile(ctx context.Context) error
}

// profile starts a CPU profile of this process, and of every stepper's
// target process that has one, if cfg asks for profiles, and returns the
// function that stops them.
func profile(ctx context.Context, cfg TableConfig, suffix string, ss []*Stepper) (func() error, error) {
	if cfg.CPUProfile == "" {
		return func() error { return nil }, nil
	}
	var remote []profiler
	stopRemote := func() error {
		var errs error
		for _, p := range remote {
			errs = errors.Join(errs, p.StopProfile(ctx))
		}
		return errs
	}
	for _, s := range ss {
		if p, ok := s.tg.(profiler); ok {
			if err := p.StartProfile(ctx, fmt.Sprintf("%s-%s-%s.pprof", cfg.CPUProfile, suffix, s.tg.Name())); err != nil {
				return nil, errors.Join(fmt.Errorf("cpu profile of %s: %w", s.tg.Name(), err), stopRemote())
			}
			remote = append(remote, p)
		}
	}
	f, err := os.Create(fmt.Sprintf("%s-%s.pprof", cfg.CPUProfile, suffix))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("cpu profile: %w", err), stopRemote())
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, errors.Join(fmt.Errorf("cpu profile: %w", err), stopRemote())
	}
	return func() error {
		pprof.StopCPUProfile()
		return errors.Join(f.Close(), stopRemote())
	}, nil
}

// writeHeapProfile writes the bench process's heap profile to
// MemProfile-<n><suffix>.pprof; its alloc_space against the one before the
// steps (pprof -base) is what the measured steps allocated.
func writeHeapProfile(cfg TableConfig, n int, suffix string, logw io.Writer) {
	if cfg.MemProfile == "" {
		return
	}
	f, err := os.Create(fmt.Sprintf("%s-%d%s.pprof", cfg.MemProfile, n, suffix))
	if err != nil {
		fmt.Fprintln(logw, "heap profile:", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		fmt.Fprintln(logw, "heap profile:", err)
	}
}

// WriteTable prints results as one table: a row per metric, a column per N.
func WriteTable(out io.Writer, cfg TableConfig, rs []Result) {
	where := "clients in child processes, the floor in its own: heap, RSS and CPU are each server's alone"
	if cfg.InProcess {
		where = "clients and floor IN THIS PROCESS: heap, RSS and CPU include the clients"
	}
	fmt.Fprintf(out, "shiftplane xDS bench: %s ADS, %s; %d CPUs, %s %s/%s\n", cfg.Mode, where, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if cfg.Variant != Shipped {
		fmt.Fprintf(out, "VARIANT %q: not the shipped xds stack (an experiment for a proposed change)\n", cfg.Variant)
	}
	fmt.Fprintf(out, "one plan, two clusters, weighted route; %s after %d warm-up, shiftplane and floor side by side with alternating steps %s apart;\nversion counter in memory (production persists it in bbolt)\n\n", cfg.stepsText(), cfg.Warmup, cfg.Gap)

	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	head := []string{"metric"}
	for _, r := range rs {
		head = append(head, fmt.Sprintf("N=%d", r.N))
	}
	head = append(head, "target")
	fmt.Fprintln(w, strings.Join(head, "\t"))
	row := func(name, target string, f func(r Result) string) {
		cells := []string{name}
		for _, r := range rs {
			switch {
			case r.Skip != "":
				cells = append(cells, "skipped")
			default:
				cells = append(cells, f(r))
			}
		}
		cells = append(cells, target)
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}
	ran := func(s Steps) bool { return len(s.Latency) > 0 }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	lat := func(s Steps, p float64) string {
		if !ran(s) {
			return "-"
		}
		if p == 100 {
			return ms(slices.Max(s.Latency))
		}
		return ms(Percentile(s.Latency, p))
	}
	row("connect all N (every stream ACKed CDS+EDS+LDS+RDS)", "", func(r Result) string {
		if r.Connect == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f s", r.Connect.Seconds())
	})
	row("server heap / idle stream (HeapInuse delta)", "≤ 32 KiB @10000", func(r Result) string {
		return fmt.Sprintf("%.1f KiB", r.HeapPerStream/1024)
	})
	row("floor heap / idle stream (gRPC alone)", "", func(r Result) string {
		return fmt.Sprintf("%.1f KiB", r.FloorHeapPerStream/1024)
	})
	row("server RSS / idle stream (VmRSS delta)", "≤ 48 KiB @10000", func(r Result) string {
		return fmt.Sprintf("%.1f KiB", r.RSSPerStream/1024)
	})
	row("server goroutines / idle stream", "", func(r Result) string {
		return fmt.Sprintf("%.1f", r.GoroutinesPerStream)
	})
	row("propagation p50 (publish → last stream ACKed)", "", func(r Result) string { return lat(r.Shiftplane, 50) })
	row("propagation p99", "≤ 1 s @10000", func(r Result) string { return lat(r.Shiftplane, 99) })
	row("propagation max", "", func(r Result) string { return lat(r.Shiftplane, 100) })
	row("first stream ACKed p50", "", func(r Result) string {
		if !ran(r.Shiftplane) {
			return "-"
		}
		return ms(Percentile(r.Shiftplane.FirstAck, 50))
	})
	row("Publisher.Set p50 / max", "", func(r Result) string {
		if !ran(r.Shiftplane) {
			return "-"
		}
		return ms(Percentile(r.Shiftplane.Set, 50)) + " / " + ms(slices.Max(r.Shiftplane.Set))
	})
	row("shiftplane_convergence_seconds mean", "", func(r Result) string {
		if r.HistCount == 0 {
			return "-"
		}
		return ms(time.Duration(r.HistSum / float64(r.HistCount) * float64(time.Second)))
	})
	row("floor p50", "", func(r Result) string { return lat(r.Floor, 50) })
	row("floor first stream ACKed p50", "", func(r Result) string {
		if !ran(r.Floor) {
			return "-"
		}
		return ms(Percentile(r.Floor.FirstAck, 50))
	})
	row("floor p99", "", func(r Result) string { return lat(r.Floor, 99) })
	row("floor max", "", func(r Result) string { return lat(r.Floor, 100) })
	row("p99 / floor p99", "≤ 1.15 @1000, @10000", func(r Result) string {
		if !ran(r.Shiftplane) || !ran(r.Floor) {
			return "-"
		}
		return fmt.Sprintf("%.2f", float64(Percentile(r.Shiftplane.Latency, 99))/float64(Percentile(r.Floor.Latency, 99)))
	})
	row("p99 / floor p99, 90% interval (paired bootstrap)", "", func(r Result) string {
		if !ran(r.Shiftplane) || !ran(r.Floor) {
			return "-"
		}
		lo, hi := RatioInterval(r.Shiftplane.Latency, r.Floor.Latency, 99, 0.9)
		return fmt.Sprintf("%.2f – %.2f", lo, hi)
	})
	row("p50 / floor p50", "", func(r Result) string {
		if !ran(r.Shiftplane) || !ran(r.Floor) {
			return "-"
		}
		return fmt.Sprintf("%.2f", float64(Percentile(r.Shiftplane.Latency, 50))/float64(Percentile(r.Floor.Latency, 50)))
	})
	perType := func(s Steps, responses bool) string {
		if !ran(s) {
			return "-"
		}
		var parts []string
		for t := range fleetsim.NumTypes {
			b, n := s.PerStreamStep(t)
			if responses {
				parts = append(parts, trimFloat(n))
			} else {
				parts = append(parts, fmt.Sprintf("%.0f", b))
			}
		}
		return strings.Join(parts, "/")
	}
	row("bytes / stream / step CDS/EDS/LDS/RDS", "RDS only, ≤ 1024", func(r Result) string { return perType(r.Shiftplane, false) })
	row("responses / stream / step CDS/EDS/LDS/RDS", "0/0/0/1", func(r Result) string { return perType(r.Shiftplane, true) })
	row("floor bytes / stream / step", "", func(r Result) string { return perType(r.Floor, false) })
	cpu := func(s Steps, d time.Duration) string {
		if !ran(s) {
			return "-"
		}
		return fmt.Sprintf("%.4f s", s.PerStep(d).Seconds())
	}
	row("server CPU / step", "", func(r Result) string { return cpu(r.Shiftplane, r.Shiftplane.CPU) })
	row("floor CPU / step", "", func(r Result) string { return cpu(r.Floor, r.Floor.CPU) })
	row("server CPU / floor CPU", "", func(r Result) string {
		if !ran(r.Shiftplane) || !ran(r.Floor) || r.Floor.CPU == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", float64(r.Shiftplane.PerStep(r.Shiftplane.CPU))/float64(r.Floor.PerStep(r.Floor.CPU)))
	})
	alloc := func(s Steps) string {
		if !ran(s) {
			return "-"
		}
		return fmt.Sprintf("%.0f KiB, %.2f GC", float64(s.Alloc)/float64(len(s.Latency))/1024, float64(s.GCs)/float64(len(s.Latency)))
	}
	row("server alloc / step, GCs / step", "", func(r Result) string { return alloc(r.Shiftplane) })
	row("floor alloc / step, GCs / step", "", func(r Result) string { return alloc(r.Floor) })
	row("clients CPU / step (shiftplane run)", "", func(r Result) string { return cpu(r.Shiftplane, r.Shiftplane.ClientCPU) })
	row("clients CPU / step (floor run)", "", func(r Result) string { return cpu(r.Floor, r.Floor.ClientCPU) })
	row("reconnect storm: all converged again", "≤ 5 s @1000", func(r Result) string {
		switch {
		case r.Storm == nil:
			return "-"
		case r.StormErr != "":
			return fmt.Sprintf("FAILED (clients %.2f s)", r.Storm.Clients.Seconds())
		}
		return fmt.Sprintf("%.2f s", r.Storm.Total().Seconds())
	})
	row("reconnect storm: streams lost", "0", func(r Result) string {
		if r.Storm == nil {
			return "-"
		}
		return fmt.Sprintf("%d", r.Storm.Lost)
	})
	row("load average (1 min) before / after", "", func(r Result) string {
		return fmt.Sprintf("%.1f / %.1f", r.Load[0], r.Load[1])
	})
	_ = w.Flush()
	for _, r := range rs {
		if r.Skip != "" {
			fmt.Fprintf(out, "N=%d skipped: %s\n", r.N, r.Skip)
		}
		if r.Err != "" {
			fmt.Fprintf(out, "N=%d error: %s\n", r.N, r.Err)
		}
		if r.Skip == "" && !r.SideBySide {
			fmt.Fprintf(out, "N=%d: shiftplane and the floor ran one after the other, not side by side (RLIMIT_NOFILE too low for both fleets in one process)\n", r.N)
		}
		if r.StormErr != "" {
			fmt.Fprintf(out, "N=%d storm: %s\n", r.N, r.StormErr)
		}
	}
}

func msList(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.0f", float64(d.Microseconds())/1000)
	}
	return strings.Join(parts, " ")
}

func trimFloat(f float64) string {
	s := fmt.Sprintf("%.2f", f)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" || s == "-" {
		return "0"
	}
	return s
}

// RunAB compares the shipped stack with variant v: both run side by side,
// each with its own N clients, their steps alternating, for every N in
// cfg.Ns that the descriptor limit allows. It prints one table.
func RunAB(ctx context.Context, cfg TableConfig, v Variant, out io.Writer) error {
	logw := cfg.Log
	if logw == nil {
		logw = io.Discard
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	type ab struct {
		n    int
		a, b Steps
		load [2]float64
		err  error
	}
	var rs []ab
	for _, n := range cfg.Ns {
		if _, err := RaiseNoFile(uint64(2*n + fdMargin)); err != nil {
			fmt.Fprintf(logw, "N=%d skipped: %v\n", n, err)
			continue
		}
		r := ab{n: n, load: [2]float64{LoadAvg()}}
		nctx, cancel := context.WithTimeout(ctx, cfg.PerN)
		r.a, r.b, r.err = runAB(nctx, cfg, exe, v, n)
		cancel()
		r.load[1] = LoadAvg()
		if r.err != nil {
			fmt.Fprintf(logw, "N=%d: %v\n", n, r.err)
		}
		rs = append(rs, r)
	}
	fmt.Fprintf(out, "A/B: shipped xds stack vs variant %q, %s ADS, side by side with alternating steps, %s after %d warm-up, %s apart\n\n", v, cfg.Mode, cfg.stepsText(), cfg.Warmup, cfg.Gap)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "N\tp50 shipped\tp50 variant\tp99 shipped\tp99 variant\tCPU/step shipped\tCPU/step variant\tvariant/shipped CPU\tload before/after")
	for _, r := range rs {
		if r.err != nil {
			fmt.Fprintf(w, "%d\terror: %v\n", r.n, r.err)
			continue
		}
		ca, cb := r.a.PerStep(r.a.CPU), r.b.PerStep(r.b.CPU)
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%.4f s\t%.4f s\t%.2f\t%.1f / %.1f\n", r.n,
			Percentile(r.a.Latency, 50).Round(100*time.Microsecond), Percentile(r.b.Latency, 50).Round(100*time.Microsecond),
			Percentile(r.a.Latency, 99).Round(100*time.Microsecond), Percentile(r.b.Latency, 99).Round(100*time.Microsecond),
			ca.Seconds(), cb.Seconds(), cb.Seconds()/ca.Seconds(), r.load[0], r.load[1])
	}
	return w.Flush()
}

func runAB(ctx context.Context, cfg TableConfig, exe string, v Variant, n int) (a, b Steps, err error) {
	var steppers []*Stepper
	for _, variant := range []Variant{Shipped, v} {
		cl, err := newClients(cfg, exe)
		if err != nil {
			return a, b, err
		}
		defer func() { err = errors.Join(err, cl.Close()) }()
		sp, err := StartShiftplaneVariant(variant)
		if err != nil {
			return a, b, err
		}
		defer sp.Stop()
		if _, err := cl.Connect(ctx, sp.Addr(), n); err != nil {
			return a, b, err
		}
		if err := sp.Settle(ctx, 1, n); err != nil {
			return a, b, err
		}
		defer func() { err = errors.Join(err, cl.Disconnect(ctx)) }()
		steppers = append(steppers, NewStepper(sp, cl, n, 0))
	}
	if err := runSteppers(ctx, cfg, n, "-ab", steppers...); err != nil {
		return a, b, err
	}
	return steppers[0].Result, steppers[1].Result, nil
}
