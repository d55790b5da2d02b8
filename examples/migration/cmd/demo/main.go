// Command demo runs the migration example end to end on this machine and
// shows it live: a throwaway PostgreSQL, the users service as v1 and v2,
// `shiftplane serve` with exec hooks allowed, a real Envoy, and a constant
// write load through it. Every second it prints the rollout (phase,
// weight, signal), the schema state, the write rate and the database errors
// by SQLSTATE; at the end, a table of the phases it went through.
//
// `make demo-migration` builds the binaries and runs it; --naive runs the
// negative control (email added NOT NULL in beforeShift) instead.
package main

import (
	"context"

	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"encoding/json"

	"github.com/jackc/pgx/v5/pgxpool"
	vegeta "github.com/tsenart/vegeta/v12/lib"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	envoyconfigs "github.com/shiftplane/shiftplane/envoy-configs"
	"github.com/shiftplane/shiftplane/examples/migration/pgtemp"
	"github.com/shiftplane/shiftplane/examples/migration/schema"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

type options struct {
	shiftplane, users, migrate, envoy string
	rate                              int
	naive, keep                       bool
	timeout                           time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.shiftplane, "shiftplane", "", "the shiftplane binary (required)")
	flag.StringVar(&o.users, "users", "", "the users binary of this example (required)")
	flag.StringVar(&o.migrate, "migrate", "", "the migrate binary of this example (required)")
	flag.StringVar(&o.envoy, "envoy", os.Getenv("ENVOY_BIN"), "the Envoy binary (default $ENVOY_BIN)")
	flag.IntVar(&o.rate, "rate", 150, "writes per second through Envoy")
	flag.BoolVar(&o.naive, "naive", false, "the negative control: add email NOT NULL in beforeShift, and watch v1 fail")
	flag.BoolVar(&o.keep, "keep", false, "keep the demo folder (logs, store, plan)")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Minute, "give up after this long")
	flag.Parse()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func (o options) check() error {
	for _, f := range []struct{ name, v string }{{"--shiftplane", o.shiftplane}, {"--users", o.users}, {"--migrate", o.migrate}, {"--envoy", o.envoy}} {
		if f.v == "" {
			return fmt.Errorf("%s: required", f.name)
		}
		if st, err := os.Stat(f.v); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s: %q is not an executable file", f.name, f.v)
		}
	}
	if o.rate < 1 || o.rate > 2000 {
		return fmt.Errorf("--rate: must be within 1..2000 writes/s, got %d", o.rate)
	}
	return nil
}

// child is a process the demo started; stop ends it by its PID.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func start(dir, name, bin string, args ...string) (*child, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(c.done) }()
	return c, nil
}

func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitHTTP(ctx context.Context, url string) error {
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never answered 200: %w", url, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

const planTmpl = `name: users
listener: {address: %q}
stable: {cluster: users-v1, endpoints: [%q]}
canary: {cluster: users-v2, endpoints: [%q]}
outlierDetection: {consecutive5xx: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
steps:
  - {weight: 10, hold: 4s}
  - {weight: 50, hold: 4s}
  - {weight: 100}
analysis: {stableFor: 1s, staleAfter: 5s, rollbackAfter: 0s, drainTimeout: 5s}
hooks:
%s`

func run(ctx context.Context, o options, out io.Writer) error {
	dir, err := os.MkdirTemp("", "shiftplane-migration-demo-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintf(out, "demo folder: %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	pgBin, tried, err := pgtemp.FindBin()
	if err == nil && pgBin == "" {
		err = fmt.Errorf("no PostgreSQL 15+ (looked at %s): run bash scripts/install-postgres.sh", strings.Join(tried, ", "))
	}
	if err != nil {
		return err
	}
	pg, err := pgtemp.Start(ctx, pgBin, 0)
	if err != nil {
		return err
	}
	defer pg.Stop()
	if msg, err := exec.CommandContext(ctx, o.migrate, "--database", pg.URL, "init").CombinedOutput(); err != nil {
		return fmt.Errorf("migrate init: %w\n%s", err, msg)
	}
	pool, err := pgxpool.New(ctx, pg.URL)
	if err != nil {
		return err
	}
	defer pool.Close()

	addrs := map[string]string{}
	for _, k := range []string{"v1", "v2", "xds", "api", "http", "listen"} {
		if addrs[k], err = freeAddr(); err != nil {
			return err
		}
	}
	apps := map[string]*child{}
	for _, v := range []string{"v1", "v2"} {
		c, err := start(dir, "users-"+v, o.users, "--version", v, "--listen", addrs[v], "--database", pg.URL)
		if err != nil {
			return err
		}
		defer c.stop()
		apps[v] = c
		if err := waitHTTP(ctx, "http://"+addrs[v]+"/healthz"); err != nil {
			return err
		}
	}
	planDir := filepath.Join(dir, "plans")
	if err := os.MkdirAll(planDir, 0o755); err != nil {
		return err
	}
	sp, err := start(dir, "shiftplane", o.shiftplane, "serve", "--hooks-allow-exec",
		"--xds-address", addrs["xds"], "--api-address", addrs["api"], "--http-address", addrs["http"],
		"--store-path", filepath.Join(dir, "shiftplane.db"), "--plan", planDir)
	if err != nil {
		return err
	}
	defer sp.stop()
	if err := waitHTTP(ctx, "http://"+addrs["http"]+"/readyz"); err != nil {
		return err
	}
	b := envoyconfigs.Default()
	b.NodeID, b.Cluster, b.AdminPort, b.XDSAddress = "migration-demo", "demo", 0, addrs["xds"]
	boot, err := b.Render()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "envoy.yaml"), boot, 0o644); err != nil {
		return err
	}
	envoy, err := start(dir, "envoy", o.envoy, "-c", filepath.Join(dir, "envoy.yaml"), "--disable-hot-restart",
		"--concurrency", "1", "--log-level", "warn")
	if err != nil {
		return err
	}
	defer envoy.stop()

	hook := func(step ...string) string {
		argv, _ := json.Marshal(append([]string{o.migrate, "--database", pg.URL, "--step-delay", "1s"}, step...))
		return fmt.Sprintf("{exec: %s, timeout: 60s}", argv)
	}
	hooks := fmt.Sprintf("  beforeShift: [%s]\n  afterPromote: [%s, %s]\n", hook("expand"), hook("backfill"), hook("contract"))
	if o.naive {
		hooks = fmt.Sprintf("  beforeShift: [%s]\n", hook("naive"))
	}
	plan := fmt.Sprintf(planTmpl, addrs["listen"], addrs["v1"], addrs["v2"], hooks)
	if err := os.WriteFile(filepath.Join(planDir, "users.yaml"), []byte(plan), 0o644); err != nil {
		return err
	}
	kind := "two-phase (expand → shift → backfill + contract)"
	if o.naive {
		kind = "NAIVE (email added NOT NULL before the shift)"
	}
	fmt.Fprintf(out, "migration demo, %s: PostgreSQL %s, v1 %s, v2 %s, Envoy listener %s, %d writes/s\n",
		kind, pg.URL, addrs["v1"], addrs["v2"], addrs["listen"], o.rate)
	for ctx.Err() == nil {
		if c, err := net.DialTimeout("tcp", addrs["listen"], time.Second); err == nil {
			c.Close()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	conn, err := grpc.NewClient(addrs["api"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rc := shiftplanev1.NewRolloutServiceClient(conn)

	l := startLoad(addrs["listen"], o.rate)
	defer l.stop()
	v := &view{out: out, start: time.Now()}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var ended time.Time
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the demo did not finish: %w", ctx.Err())
		case <-tick.C:
		}
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := rc.Get(gctx, &shiftplanev1.GetRequest{Name: "users"})
		cancel()
		if err != nil {
			continue
		}
		st, err := schema.Inspect(ctx, pool)
		if err != nil {
			continue
		}
		errs := map[string]int64{}
		for _, a := range []string{"v1", "v2"} {
			for k, n := range appErrors(addrs[a]) {
				errs[a+":"+k] += n
			}
		}
		ro := resp.GetRollout()
		phase := strings.TrimPrefix(ro.GetPhase().String(), "PHASE_")
		v.observe(phase, int(ro.GetCanaryWeight()), ro.GetSignal().GetState().String(), st, errs, l.counts())
		terminal := phase == "SUCCEEDED" || phase == "ROLLED_BACK" || phase == "ABORTED" || phase == "FAILED"
		if o.naive && phase == "PROGRESSING" && int(ro.GetCanaryWeight()) > 0 && time.Since(v.phaseStart) > 4*time.Second {
			terminal = true // the point is made: stop before the whole rollout
		}
		switch {
		case terminal && ended.IsZero():
			ended = time.Now()
		case !ended.IsZero() && time.Since(ended) > 1500*time.Millisecond:
			l.stop()
			v.table()
			fmt.Fprintf(out, "rollout: %s — %s\nschema at the end: %s\n", phase, ro.GetReason(), st)
			return nil
		}
	}
}

// appErrors reads a users app's database errors by SQLSTATE.
func appErrors(addr string) map[string]int64 {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/stats")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var s struct {
		Errors map[string]int64 `json:"errors"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&s)
	return s.Errors
}

// load sends POST /users at a constant rate and counts answers by version.
type load struct {
	atk  *vegeta.Attacker
	done chan struct{}
	once sync.Once
	mu   sync.Mutex
	ok   map[string]int // by X-Version
	fail int
}

func startLoad(listen string, rate int) *load {
	l := &load{atk: vegeta.NewAttacker(vegeta.Timeout(5*time.Second), vegeta.KeepAlive(true), vegeta.Workers(16), vegeta.MaxBody(1024)),
		done: make(chan struct{}), ok: map[string]int{}}
	tgt := vegeta.Target{Method: http.MethodPost, URL: "http://" + listen + "/users",
		Body: []byte(`{"name":"demo"}`), Header: http.Header{"Content-Type": {"application/json"}}}
	go func() {
		defer close(l.done)
		for r := range l.atk.Attack(vegeta.NewStaticTargeter(tgt), vegeta.Rate{Freq: rate, Per: time.Second}, 0, "writes") {
			l.mu.Lock()
			if r.Code >= 200 && r.Code < 300 {
				l.ok[r.Headers.Get("X-Version")]++
			} else {
				l.fail++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *load) stop() { l.once.Do(func() { l.atk.Stop(); <-l.done }) }

type loadCounts struct {
	v1, v2, fail int
}

func (l *load) counts() loadCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	return loadCounts{v1: l.ok["v1"], v2: l.ok["v2"], fail: l.fail}
}

// row is one stretch with the same rollout phase, weight and schema shape.
type row struct {
	phase  string
	weight int
	schema string
	from   time.Time
	first  loadCounts
	last   loadCounts
	errs0  map[string]int64
	errs   map[string]int64
}

// view prints the live lines and keeps the rows of the final table.
type view struct {
	out        io.Writer
	start      time.Time
	rows       []*row
	lastPrint  time.Time
	lastCounts loadCounts
	lastAt     time.Time
	phaseStart time.Time
}

// shape is the schema state without the row counts.
func shape(st schema.State) string {
	switch {
	case !st.HasEmail:
		return "users(id, name)"
	case st.EmailNotNull && st.Check == schema.CheckAbsent:
		return "email NOT NULL"
	case st.EmailNotNull:
		return "email NOT NULL + CHECK"
	case st.Check != schema.CheckAbsent:
		return "email nullable + CHECK " + string(st.Check)
	}
	return "email nullable"
}

func (v *view) observe(phase string, weight int, signal string, st schema.State, errs map[string]int64, c loadCounts) {
	now := time.Now()
	sh := shape(st)
	cur := (*row)(nil)
	if n := len(v.rows); n > 0 {
		cur = v.rows[n-1]
	}
	if cur == nil || cur.phase != phase || cur.weight != weight || cur.schema != sh {
		if cur == nil || cur.phase != phase {
			v.phaseStart = now
		}
		prev := loadCounts{}
		prevErrs := map[string]int64{}
		if cur != nil {
			prev, prevErrs = cur.last, cur.errs
		}
		cur = &row{phase: phase, weight: weight, schema: sh, from: now, first: prev, errs0: prevErrs}
		v.rows = append(v.rows, cur)
		fmt.Fprintf(v.out, "%6.1fs  ── %s, v2 at %d%%; schema: %s\n", now.Sub(v.start).Seconds(), phase, weight, st)
	}
	cur.last, cur.errs = c, errs
	if now.Sub(v.lastPrint) >= time.Second {
		rate := 0.0
		if !v.lastAt.IsZero() {
			d := (c.v1 + c.v2 + c.fail) - (v.lastCounts.v1 + v.lastCounts.v2 + v.lastCounts.fail)
			rate = float64(d) / now.Sub(v.lastAt).Seconds()
		}
		fmt.Fprintf(v.out, "%6.1fs  %-12s v2 %3d%%  signal %-15s %4.0f writes/s  ok v1 %d v2 %d  failed %d  db errors %s\n",
			now.Sub(v.start).Seconds(), phase, weight, strings.TrimPrefix(signal, "SIGNAL_STATE_"), rate, c.v1, c.v2, c.fail, fmtErrs(errs))
		v.lastPrint, v.lastCounts, v.lastAt = now, c, now
	}
}

func fmtErrs(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func (v *view) table() {
	fmt.Fprintln(v.out, "\nphases")
	tw := tabwriter.NewWriter(v.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "from\tphase\tv2 weight\tschema\twrites ok v1/v2\tfailed\tnew db errors (version:SQLSTATE)")
	for _, r := range v.rows {
		d := map[string]int64{}
		for k, n := range r.errs {
			if x := n - r.errs0[k]; x > 0 {
				d[k] = x
			}
		}
		fmt.Fprintf(tw, "%.1fs\t%s\t%d%%\t%s\t%d/%d\t%d\t%s\n", r.from.Sub(v.start).Seconds(), r.phase, r.weight, r.schema,
			r.last.v1-r.first.v1, r.last.v2-r.first.v2, r.last.fail-r.first.fail, fmtErrs(d))
	}
	_ = tw.Flush()
}
