package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/shiftplane/shiftplane/examples/migration/pgtemp"
	"github.com/shiftplane/shiftplane/examples/migration/schema"
	"github.com/shiftplane/shiftplane/test/harness"
)

// The migration scenarios: the example in examples/migration
// (the users service in versions v1, v2, v3 and its migrate command) under
// constant write load through a real Envoy, on a real PostgreSQL, driven by
// shiftplane's beforeShift and afterPromote exec hooks.

const (
	migRollout = "users"
	// migRate is the write load through Envoy: every request is an INSERT.
	migRate = 150
)

// usersApp is one running version of the example service.
type usersApp struct {
	version, addr string
	proc          *harness.Process
}

// appStats is what the service's GET /stats reports.
type appStats struct {
	Version      string           `json:"version"`
	Writes       int64            `json:"writes"`
	Errors       map[string]int64 `json:"errors"`
	Failed       int64            `json:"failed"`
	FirstRequest time.Time        `json:"firstRequest"`
	LastRequest  time.Time        `json:"lastRequest"`
}

// violations counts NOT NULL (23502) and CHECK (23514) violations.
func (s appStats) violations() int64 { return s.Errors["23502"] + s.Errors["23514"] }

func (s appStats) String() string {
	return fmt.Sprintf("%s: %d writes, %d failed, SQLSTATE errors %v", s.Version, s.Writes, s.Failed, s.Errors)
}

var statsClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}

func (a *usersApp) stats(t *testing.T) appStats {
	t.Helper()
	resp, err := statsClient.Get("http://" + a.addr + "/stats")
	if err != nil {
		t.Fatalf("users %s stats: %v", a.version, err)
	}
	defer resp.Body.Close()
	var s appStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("users %s stats: %v", a.version, err)
	}
	return s
}

// migRig is PostgreSQL with v1's schema, shiftplane (exec hooks allowed),
// one Envoy, and the service versions asked for.
type migRig struct {
	pg      *pgtemp.Server
	db      *pgx.Conn
	sp      *Shiftplane
	envoy   *harness.Envoy
	listen  string
	migrate string // the migrate binary
	users   string // the users binary
	apps    map[string]*usersApp
}

func startMigRig(t *testing.T) *migRig {
	t.Helper()
	r := &migRig{
		pg:      harness.StartPostgres(t),
		migrate: harness.BuildBinary(t, "./examples/migration/cmd/migrate"),
		users:   harness.BuildBinary(t, "./examples/migration/cmd/users"),
		listen:  fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
		apps:    map[string]*usersApp{},
	}
	r.runMigrate(t, "init")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, r.pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	r.db = db
	r.sp = StartShiftplane(t, "--hooks-allow-exec")
	r.envoy = harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: nodeID(t, 0), Cluster: "e2e-migration", XDSAddr: r.sp.XDSAddr})
	return r
}

// runMigrate runs one migrate step from the test (not as a hook).
func (r *migRig) runMigrate(t *testing.T, step string) {
	t.Helper()
	p := harness.StartProcess(t, r.migrate, []string{"--database", r.pg.URL, step}, nil)
	if code, err := p.Wait(context.Background()); err != nil || code != 0 {
		t.Fatalf("migrate %s: exit %d, %v:\n%s", step, code, err, p.Output())
	}
}

// startApp starts a version of the service and waits until it answers.
func (r *migRig) startApp(t *testing.T, version string, extra ...string) *usersApp {
	t.Helper()
	a := &usersApp{version: version, addr: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))}
	args := append([]string{"--version", version, "--listen", a.addr, "--database", r.pg.URL}, extra...)
	a.proc = harness.StartProcess(t, r.users, args, nil)
	waitFor(t, harness.DefaultWait, "users "+version+" healthy", func() (bool, string) {
		resp, err := statsClient.Get("http://" + a.addr + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	r.apps[version] = a
	return a
}

// migPlan is a plan of the example, with hooks that run the migrate binary.
type migPlan struct {
	stable, canary *usersApp
	beforeShift    [][]string // migrate steps, each its own exec hook
	afterPromote   [][]string
	rollbackAfter  string
}

func (r *migRig) plan(p migPlan) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	hooks := func(steps [][]string) string {
		var hs []string
		for _, s := range steps {
			argv, _ := json.Marshal(append([]string{r.migrate, "--database", r.pg.URL}, s...))
			hs = append(hs, fmt.Sprintf("{exec: %s, timeout: 60s}", argv))
		}
		return "[" + strings.Join(hs, ", ") + "]"
	}
	rollbackAfter := p.rollbackAfter
	if rollbackAfter == "" {
		rollbackAfter = "0s"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\n", migRollout)
	fmt.Fprintf(&b, "listener: {address: %s}\n", q(r.listen))
	fmt.Fprintf(&b, "stable: {cluster: users-%s, endpoints: [%s]}\n", p.stable.version, q(p.stable.addr))
	fmt.Fprintf(&b, "canary: {cluster: users-%s, endpoints: [%s]}\n", p.canary.version, q(p.canary.addr))
	b.WriteString("outlierDetection: {consecutive5xx: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n")
	b.WriteString("steps:\n  - {weight: 25, hold: 2s}\n  - {weight: 60, hold: 2s}\n  - {weight: 100}\n")
	fmt.Fprintf(&b, "analysis: {stableFor: 1s, staleAfter: 5s, rollbackAfter: %s, drainTimeout: 5s}\n", rollbackAfter)
	b.WriteString("hooks:\n")
	if p.beforeShift != nil {
		fmt.Fprintf(&b, "  beforeShift: %s\n", hooks(p.beforeShift))
	}
	if p.afterPromote != nil {
		fmt.Fprintf(&b, "  afterPromote: %s\n", hooks(p.afterPromote))
	}
	return b.String()
}

// twoPhase is the example's plan: expand before any traffic moves,
// backfill and contract once v1 has drained.
func twoPhase(stable, canary *usersApp) migPlan {
	return migPlan{stable: stable, canary: canary,
		beforeShift:  [][]string{{"expand"}},
		afterPromote: [][]string{{"backfill"}, {"contract"}}}
}

func (r *migRig) schema(t *testing.T) schema.State {
	t.Helper()
	st, err := schema.Inspect(t.Context(), r.db)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// journalEntry is one row of migration_journal.
type journalEntry struct {
	Step, Event, Detail string
	At                  time.Time
}

func (r *migRig) journal(t *testing.T) []journalEntry {
	t.Helper()
	rows, err := r.db.Query(t.Context(), "SELECT step, event, detail, at FROM migration_journal ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (journalEntry, error) {
		var e journalEntry
		return e, row.Scan(&e.Step, &e.Event, &e.Detail, &e.At)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// find returns the entries of step and event, in order.
func find(j []journalEntry, step, event string) []journalEntry {
	var out []journalEntry
	for _, e := range j {
		if e.Step == step && e.Event == event {
			out = append(out, e)
		}
	}
	return out
}

func logJournal(t *testing.T, j []journalEntry, t0 time.Time) {
	t.Helper()
	var b strings.Builder
	for _, e := range j {
		fmt.Fprintf(&b, "\n    %+8.3fs %-22s %-6s %s", e.At.Sub(t0).Seconds(), e.Step, e.Event, e.Detail)
	}
	t.Logf("migration journal (seconds from the plan's apply):%s", b.String())
}

func (r *migRig) phase() string { return r.sp.Phase(migRollout) }

func (r *migRig) waitPhase(t *testing.T, phase string, within time.Duration) time.Time {
	t.Helper()
	return r.sp.WaitPhase(migRollout, phase, within)
}

// ---------------------------------------------------------------------------
// Load: POST /users at a constant rate through Envoy, every result kept.

type writeLoad struct {
	atk  *vegeta.Attacker
	done chan struct{}
	mu   sync.Mutex
	recs []reqRecord
}

func startWriteLoad(t *testing.T, listen string, rate int) *writeLoad {
	t.Helper()
	client := &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 1000,
		},
	}
	l := &writeLoad{done: make(chan struct{})}
	l.atk = vegeta.NewAttacker(vegeta.Client(client), vegeta.Workers(16), vegeta.MaxWorkers(1000), vegeta.MaxBody(1024))
	tgt := vegeta.Target{Method: http.MethodPost, URL: "http://" + listen + "/users",
		Body: []byte(`{"name":"load"}`), Header: http.Header{"Content-Type": {"application/json"}}}
	results := l.atk.Attack(vegeta.NewStaticTargeter(tgt), vegeta.Rate{Freq: rate, Per: time.Second}, 0, "writes")
	go func() {
		defer close(l.done)
		defer client.CloseIdleConnections()
		for res := range results {
			rec := reqRecord{Start: res.Timestamp, Latency: res.Latency, Code: int(res.Code), Err: res.Error, Version: res.Headers.Get("X-Version")}
			if rec.Code >= 200 && rec.Code < 400 {
				rec.Err = ""
			}
			l.mu.Lock()
			l.recs = append(l.recs, rec)
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { l.Stop() })
	return l
}

// Stop ends the load, waits for requests in flight, and returns every
// record sorted by start time.
func (l *writeLoad) Stop() []reqRecord {
	l.atk.Stop()
	select {
	case <-l.done:
	case <-time.After(30 * time.Second):
	}
	l.mu.Lock()
	out := append([]reqRecord(nil), l.recs...)
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// writeRate is the mean number of successful writes per second of the load.
func writeRate(recs []reqRecord) float64 {
	if len(recs) < 2 {
		return 0
	}
	ok := 0
	for _, r := range recs {
		if !r.Failed() {
			ok++
		}
	}
	return float64(ok) / recs[len(recs)-1].End().Sub(recs[0].Start).Seconds()
}

// waitListener waits until Envoy accepts connections on the plan's listener.
func (r *migRig) waitListener(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harness.DefaultWait)
	defer cancel()
	if err := r.envoy.WaitListener(ctx, r.listen); err != nil {
		t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------

// The two-phase plan: expand in beforeShift, backfill + contract in
// afterPromote. Under constant writes no request fails, no write hits a
// constraint, email ends NOT NULL with every row filled, and contract
// starts only after v1's last request.
func TestMigrationTwoPhase(t *testing.T) {
	r := startMigRig(t)
	v1, v2 := r.startApp(t, "v1"), r.startApp(t, "v2")
	t0 := time.Now()
	r.sp.WritePlan("users.yaml", r.plan(twoPhase(v1, v2)))
	r.waitListener(t)
	load := startWriteLoad(t, r.listen, migRate)
	r.waitPhase(t, "SUCCEEDED", 90*time.Second)
	time.Sleep(time.Second) // v2 alone, on the contracted schema
	recs := load.Stop()

	s1, s2 := v1.stats(t), v2.stats(t)
	st := r.schema(t)
	j := r.journal(t)
	logJournal(t, j, t0)
	sum := requireNoFailures(t, "two-phase", recs)
	contract := find(j, "contract", "start")
	t.Logf("two-phase: %d writes through Envoy (%.0f writes/s), %d failed; v1=%d v2=%d\n    %s\n    %s\n    schema: %s",
		sum.Total, writeRate(recs), sum.Failed, sum.ByVersion["v1"], sum.ByVersion["v2"], s1, s2, st)
	if v := s1.violations() + s2.violations(); v != 0 {
		t.Errorf("%d constraint violations (SQLSTATE 23502/23514) in the apps, want 0", v)
	}
	if n := s1.Failed + s2.Failed; n != 0 {
		t.Errorf("the apps answered %d requests with an error", n)
	}
	if s1.Writes == 0 || s2.Writes == 0 {
		t.Errorf("v1 wrote %d rows and v2 %d: both must have taken writes", s1.Writes, s2.Writes)
	}
	if !st.EmailNotNull || st.NullEmails != 0 || st.Check != schema.CheckAbsent {
		t.Errorf("schema at the end: %s; want email NOT NULL, every row with an email, no check left", st)
	}
	if len(contract) != 1 {
		t.Fatalf("contract started %d times, want once", len(contract))
	}
	t.Logf("v1's last request ended at %+.3fs; contract started at %+.3fs (%.3fs later)",
		s1.LastRequest.Sub(t0).Seconds(), contract[0].At.Sub(t0).Seconds(), contract[0].At.Sub(s1.LastRequest).Seconds())
	if !s1.LastRequest.Before(contract[0].At) {
		t.Errorf("contract started at %s, before v1's last request at %s", contract[0].At.Format(time.StampMilli), s1.LastRequest.Format(time.StampMilli))
	}
	if e := find(j, "expand", "done"); len(e) != 1 || !e[0].At.Before(s2.FirstRequest) {
		t.Errorf("expand done %v; v2's first request at %s: expand must finish before v2 takes traffic", e, s2.FirstRequest.Format(time.StampMilli))
	}
}

// The naive plan, as a negative control: email added NOT NULL in
// beforeShift. The same harness counts the NOT NULL violations v1 now hits.
func TestMigrationNaiveNotNullBreaksV1(t *testing.T) {
	r := startMigRig(t)
	v1, v2 := r.startApp(t, "v1"), r.startApp(t, "v2")
	r.sp.WritePlan("users.yaml", r.plan(migPlan{stable: v1, canary: v2, beforeShift: [][]string{{"naive"}}}))
	r.waitListener(t)
	load := startWriteLoad(t, r.listen, migRate)
	r.waitPhase(t, "PROGRESSING", 30*time.Second)
	time.Sleep(2 * time.Second) // 75% of the writes still go to v1
	recs := load.Stop()
	s1, s2 := v1.stats(t), v2.stats(t)
	sum := summarize(recs)
	t.Logf("naive: %d writes through Envoy (%.0f/s), %d failed; v1 answered %d OK, v2 %d OK\n    %s\n    %s\n    schema: %s",
		sum.Total, float64(sum.Total)/recs[len(recs)-1].End().Sub(recs[0].Start).Seconds(), sum.Failed,
		sum.ByVersion["v1"], sum.ByVersion["v2"], s1, s2, r.schema(t))
	if s1.Errors["23502"] == 0 {
		t.Errorf("v1 hit no NOT NULL violation (23502) after the naive migration: the negative control shows nothing")
	}
	if sum.Failed == 0 {
		t.Errorf("no request failed through Envoy after the naive migration")
	}
	if s2.violations() != 0 {
		t.Errorf("v2 writes email and should hit no violation: %s", s2)
	}
}

// A failing v2 rolls back: contract never runs, and v1 keeps writing with
// no error on the expanded schema.
func TestMigrationRollbackKeepsExpandedSchema(t *testing.T) {
	r := startMigRig(t)
	v1, v2 := r.startApp(t, "v1"), r.startApp(t, "v2", "--fail")
	p := twoPhase(v1, v2)
	p.rollbackAfter = "3s"
	r.sp.WritePlan("users.yaml", r.plan(p))
	r.waitListener(t)
	load := startWriteLoad(t, r.listen, migRate)
	rolledBack := r.waitPhase(t, "ROLLED_BACK", 60*time.Second)
	before := v1.stats(t)
	time.Sleep(3 * time.Second) // v1 alone again, on the expanded schema
	recs := load.Stop()
	s1, s2 := v1.stats(t), v2.stats(t)
	st := r.schema(t)
	j := r.journal(t)

	var v1Failed, v2Failed, after, afterFailed int
	for _, rec := range recs {
		if rec.Failed() {
			switch rec.Version {
			case "v1":
				v1Failed++
			case "v2":
				v2Failed++
			}
		}
		if rec.Start.After(rolledBack) {
			after++
			if rec.Failed() {
				afterFailed++
			}
		}
	}
	sum := summarize(recs)
	t.Logf("rollback: %d writes through Envoy, %d failed (v2: %d, v1: %d, other: %d); after ROLLED_BACK %d writes, %d failed\n    %s\n    %s\n    v1 wrote %d rows after the rollback; schema: %s",
		sum.Total, sum.Failed, v2Failed, v1Failed, sum.Failed-v1Failed-v2Failed, after, afterFailed, s1, s2, s1.Writes-before.Writes, st)
	if len(find(j, "contract", "start"))+len(find(j, "backfill", "start")) != 0 {
		t.Errorf("afterPromote ran after a rollback: journal %v", j)
	}
	if s1.Failed != 0 || len(s1.Errors) != 0 || v1Failed != 0 {
		t.Errorf("v1 had errors: %s, %d failed requests", s1, v1Failed)
	}
	if s1.Writes-before.Writes == 0 || afterFailed != 0 {
		t.Errorf("after the rollback v1 wrote %d rows and %d requests failed", s1.Writes-before.Writes, afterFailed)
	}
	if other := sum.Failed - v1Failed - v2Failed; other != 0 {
		t.Errorf("%d failed requests came from neither version (no answer from a backend)", other)
	}
	if v2Failed == 0 {
		t.Errorf("the broken v2 failed no request: the rollback proves nothing")
	}
	if !st.HasEmail || st.EmailNotNull || st.Check != schema.CheckAbsent {
		t.Errorf("schema after the rollback: %s; want the expanded schema (email nullable, no check)", st)
	}
}

// shiftplane SIGKILLed while contract runs (the host dies: the hook's
// process too). After a restart the afterPromote hooks run again, contract
// goes on from the step it had reached, and the schema ends correct.
func TestMigrationCrashDuringContract(t *testing.T) {
	r := startMigRig(t)
	v1, v2 := r.startApp(t, "v1"), r.startApp(t, "v2")
	p := twoPhase(v1, v2)
	p.afterPromote = [][]string{{"backfill"}, {"--step-delay", "2s", "contract"}}
	t0 := time.Now()
	r.sp.WritePlan("users.yaml", r.plan(p))
	r.waitListener(t)
	load := startWriteLoad(t, r.listen, migRate)
	waitFor(t, 90*time.Second, "contract added its NOT VALID check", func() (bool, string) {
		st := r.schema(t)
		return st.Check == schema.CheckNotValid, st.String()
	})
	hooks := childPIDs(r.sp.Proc.PID())
	killed := time.Now()
	if err := r.sp.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range hooks {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	atKill := r.schema(t)
	time.Sleep(time.Second)
	r.sp.Start()
	r.waitPhase(t, "SUCCEEDED", 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	recs := load.Stop()
	s1, s2 := v1.stats(t), v2.stats(t)
	st := r.schema(t)
	j := r.journal(t)
	logJournal(t, j, t0)
	sum := requireNoFailures(t, "crash during contract", recs)
	t.Logf("crash: shiftplane SIGKILLed at %+.3fs with its hook pids %v; schema then: %s\n    %d writes through Envoy (%.0f writes/s), %d failed\n    %s\n    %s\n    schema at the end: %s",
		killed.Sub(t0).Seconds(), hooks, atKill, sum.Total, writeRate(recs), sum.Failed, s1, s2, st)
	if len(hooks) == 0 {
		t.Errorf("found no hook process under shiftplane (pid %d) to kill", r.sp.Proc.PID())
	}
	if n := len(find(j, "contract", "start")); n != 2 {
		t.Errorf("contract started %d times, want 2 (the killed run and the re-run)", n)
	}
	if n := len(find(j, "contract", "done")); n != 1 {
		t.Errorf("contract finished %d times, want once", n)
	}
	if n := len(find(j, "contract:add-check", "done")); n != 1 {
		t.Errorf("the check was added %d times, want once (the re-run goes on from the NOT VALID check)", n)
	}
	if !st.EmailNotNull || st.NullEmails != 0 || st.Check != schema.CheckAbsent {
		t.Errorf("schema at the end: %s; want email NOT NULL, every row with an email, no check left", st)
	}
	if v := s1.violations() + s2.violations(); v != 0 {
		t.Errorf("%d constraint violations in the apps, want 0", v)
	}
}

// childPIDs lists the children of pid (every thread's), from /proc.
func childPIDs(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// A release train: v1 → v2 with the two-phase plan, then v2 → v3 as one
// apply of a plan under the same name whose stable is v2, back to back
// under load. No request fails at the hand-over, and the second rollout
// starts from the traffic the first left: all of it on v2, none on v1.
func TestMigrationReleaseTrain(t *testing.T) {
	r := startMigRig(t)
	v1, v2, v3 := r.startApp(t, "v1"), r.startApp(t, "v2"), r.startApp(t, "v3")
	t0 := time.Now()
	r.sp.WritePlan("users.yaml", r.plan(twoPhase(v1, v2)))
	r.waitListener(t)
	load := startWriteLoad(t, r.listen, migRate)
	first := r.waitPhase(t, "SUCCEEDED", 90*time.Second)
	// v1 is retired: any request still routed to it would now fail.
	if err := v1.proc.Stop(); err != nil {
		t.Fatal(err)
	}
	routesBefore, _ := r.envoy.RouteWeights(t.Context())
	applied := time.Now()
	r.sp.WritePlan("users.yaml", r.plan(twoPhase(v2, v3)))
	waitFor(t, 10*time.Second, "the v3 rollout started", func() (bool, string) {
		p := r.phase()
		return p != "SUCCEEDED" && p != "", p
	})
	routesAfter, _ := r.envoy.RouteWeights(t.Context())
	r.waitPhase(t, "SUCCEEDED", 90*time.Second)
	time.Sleep(500 * time.Millisecond)
	recs := load.Stop()
	s2, s3 := v2.stats(t), v3.stats(t)
	st := r.schema(t)
	logJournal(t, r.journal(t), t0)

	sum := requireNoFailures(t, "release train", recs)
	// The hand-over: from the second apply until v3 took its first
	// request, every write must be answered, and by v2. A write that
	// started before v3's first request and was still in flight then may
	// be answered by v3 (at 150 writes/s several are in flight at once);
	// one v3 answered that had ended before it is not.
	var handover, handoverFailed, handoverV1, handoverV3Done int
	handoverBy := map[string]int{}
	for _, rec := range recs {
		if rec.Start.After(applied) && rec.Start.Before(s3.FirstRequest) {
			handover++
			handoverBy[rec.Version]++
			switch {
			case rec.Failed():
				handoverFailed++
			case rec.Version == "v1":
				handoverV1++
			case rec.Version == "v3" && rec.End().Before(s3.FirstRequest):
				handoverV3Done++
			}
		}
	}
	t.Logf("release train: %d writes through Envoy (%.0f writes/s), %d failed; v1=%d v2=%d v3=%d\n"+
		"    v1→v2 SUCCEEDED at %+.3fs; v2→v3 applied at %+.3fs; v3's first request at %+.3fs\n"+
		"    Envoy routes just before the second apply %v, just after %v\n"+
		"    between the apply and v3's first request: %d writes, %d failed, by version %v\n    %s\n    %s\n    schema: %s",
		sum.Total, writeRate(recs), sum.Failed, sum.ByVersion["v1"], sum.ByVersion["v2"], sum.ByVersion["v3"],
		first.Sub(t0).Seconds(), applied.Sub(t0).Seconds(), s3.FirstRequest.Sub(t0).Seconds(),
		routesBefore, routesAfter, handover, handoverFailed, handoverBy, s2, s3, st)
	if handover == 0 || handoverFailed != 0 || handoverV1 != 0 || handoverV3Done != 0 || handoverBy["v2"]+handoverBy["v3"] != handover {
		t.Errorf("hand-over: %d writes, %d failed, by version %v; want them all answered, by v2", handover, handoverFailed, handoverBy)
	}
	// Just after the apply Envoy holds v2 at 100, or already the first
	// step (25 on v3: the engine acts on the fleet's ACK at once, so the
	// step can beat this read), and never anything on v1.
	if v3w := routesAfter["users-v3"]; routesBefore["users-v2"] != 100 || routesAfter["users-v1"] != 0 ||
		(v3w != 0 && v3w != 25) || routesAfter["users-v2"] != 100-v3w {
		t.Errorf("routes before the second apply %v, after %v; want users-v2 at 100 before, and after it 100 or the first step (75/25), nothing on v1", routesBefore, routesAfter)
	}
	if sum.ByVersion["v3"] == 0 || s3.Writes == 0 {
		t.Errorf("v3 took no writes")
	}
	if v := s2.violations() + s3.violations(); v != 0 {
		t.Errorf("%d constraint violations in the apps, want 0", v)
	}
	if !st.EmailNotNull || st.NullEmails != 0 {
		t.Errorf("schema at the end: %s", st)
	}
}

// The example's plans are valid on a server that allows exec hooks (each
// on its own: they are two releases of one rollout), and rejected, naming
// every exec field, on one that does not.
func TestMigrationExamplePlansValidate(t *testing.T) {
	bin := harness.BuildBinary(t, "./cmd/shiftplane")
	root := harness.RepoRoot(t)
	cfg := filepath.Join(root, "examples/migration/shiftplane.yaml")
	for _, name := range []string{"plan-v2.yaml", "plan-v3.yaml"} {
		plan := filepath.Join(root, "examples/migration", name)
		p := harness.StartProcess(t, bin, []string{"validate", "--config", cfg, plan}, nil)
		if code, err := p.Wait(context.Background()); err != nil || code != 0 {
			t.Errorf("validate --config %s %s: exit %d, %v: %s", cfg, name, code, err, p.Output())
		}
		p = harness.StartProcess(t, bin, []string{"validate", plan}, nil)
		code, err := p.Wait(context.Background())
		out := p.Output()
		if err != nil || code == 0 || strings.Count(out, "exec hooks are disabled") != 3 ||
			!strings.Contains(out, "hooks.afterPromote[1].exec") {
			t.Errorf("validate %s without allowExec: exit %d, %v, output %q; want a failure naming the three exec hooks", name, code, err, out)
		}
	}
}

// `make demo-migration` runs to the end: the two-phase demo with no failed
// write and no database error, passing through the contract's steps; the
// naive one showing v1's NOT NULL violations.
func TestMigrationDemo(t *testing.T) {
	harness.FindPostgres(t)
	args := []string{"--envoy", harness.FindEnvoy(t),
		"--shiftplane", harness.BuildBinary(t, "./cmd/shiftplane"),
		"--users", harness.BuildBinary(t, "./examples/migration/cmd/users"),
		"--migrate", harness.BuildBinary(t, "./examples/migration/cmd/migrate")}
	demo := harness.BuildBinary(t, "./examples/migration/cmd/demo")
	tests := map[string]struct {
		args []string
		want []string // in the output
		bad  []string // never in the phases table
	}{
		"two-phase": {
			want: []string{"rollout: SUCCEEDED", "schema at the end: email NOT NULL", "email nullable + CHECK NOT VALID", "SUCCEEDED    100%       email NOT NULL"},
			bad:  []string{"23502", "23514"},
		},
		"naive": {args: []string{"--naive"}, want: []string{"v1:23502="}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			p := harness.StartProcess(t, demo, append(args, tc.args...), nil)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			code, err := p.Wait(ctx)
			text := p.Output()
			if err != nil || code != 0 {
				t.Fatalf("demo %s: exit %d, %v after %s:\n%s", name, code, err, time.Since(start).Round(time.Second), text)
			}
			i := strings.Index(text, "\nphases\n")
			if i < 0 {
				t.Fatalf("no phases table in the demo output:\n%s", text)
			}
			table := text[i:]
			if j := strings.Index(table, "\nrollout: "); j >= 0 {
				table = table[:j]
			}
			t.Logf("demo %s took %s; its table:%s\n%s", name, time.Since(start).Round(time.Second), table, text[i+len(table):])
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("the demo output lacks %q", w)
				}
			}
			for _, b := range tc.bad {
				if strings.Contains(table, b) {
					t.Errorf("the phases table shows %q", b)
				}
			}
			if name == "two-phase" {
				for _, line := range strings.Split(strings.TrimSpace(table), "\n")[2:] {
					if f := strings.Fields(line); len(f) < 3 || f[len(f)-2] != "0" || f[len(f)-1] != "none" {
						t.Errorf("a phase with failed writes or database errors: %q", line)
					}
				}
			}
		})
	}
}
