package planfiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// fakeEngine stands in for *policy.Engine at the Engine interface: it keeps
// each rollout's plan, source and apply time, and records every call.
type fakeEngine struct {
	mu       sync.Mutex
	now      time.Time
	rollouts map[string]policy.Rollout
	calls    []string
	// failApply makes Apply of the named plan fail with this error.
	failApply map[string]error
}

func newFakeEngine() *fakeEngine {
	return &fakeEngine{now: time.Now(), rollouts: map[string]policy.Rollout{}, failApply: map[string]error{}}
}

func (e *fakeEngine) Apply(p policy.Plan, source string) (policy.Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, "apply "+p.Name+" "+source)
	if err := e.failApply[p.Name]; err != nil {
		return policy.Status{}, err
	}
	r := policy.Rollout{Plan: p, Source: source, AppliedAt: e.now}
	e.rollouts[p.Name] = r
	return policy.Status{Rollout: r}, nil
}

func (e *fakeEngine) Get(name string) (policy.Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rollouts[name]
	if !ok {
		return policy.Status{}, fmt.Errorf("%w: %q", policy.ErrNotFound, name)
	}
	return policy.Status{Rollout: r}, nil
}

func (e *fakeEngine) List() []policy.Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []policy.Status
	for _, r := range e.rollouts {
		out = append(out, policy.Status{Rollout: r})
	}
	return out
}

func (e *fakeEngine) Detach(name, source string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rollouts[name]
	if !ok {
		return fmt.Errorf("%w: %q", policy.ErrNotFound, name)
	}
	if r.Source == source {
		e.calls = append(e.calls, "detach "+name+" "+source)
		r.Source = policy.SourceAPI
		e.rollouts[name] = r
	}
	return nil
}

// takeCalls returns the calls since the last take, sorted.
func (e *fakeEngine) takeCalls() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.calls
	e.calls = nil
	slices.Sort(c)
	return c
}

func (e *fakeEngine) rollout(t *testing.T, name string) policy.Rollout {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rollouts[name]
	if !ok {
		t.Fatalf("rollout %q not in the engine", name)
	}
	return r
}

// plan is a valid plan YAML; port keeps plans of one folder apart (each
// listener address is its own), weight is the first step's.
func plan(name string, port, weight int) string {
	return fmt.Sprintf(`name: %[1]s
listener: {address: 127.0.0.1:%[2]d}
stable: {cluster: %[1]s-v1, endpoints: ["127.0.0.1:8081"]}
canary: {cluster: %[1]s-v2, endpoints: ["127.0.0.1:8082"]}
steps: [{weight: %[3]d, hold: 30s}, {weight: 100}]
`, name, port, weight)
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start opens the paths and applies them to a fresh fake engine.
func start(t *testing.T, e *fakeEngine, paths ...string) *Files {
	t.Helper()
	f, err := Open(Options{Paths: paths, Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := f.ApplyInitial(e); err != nil {
		t.Fatalf("ApplyInitial: %v", err)
	}
	return f
}

func errorLines(f *Files) []string {
	var out []string
	for _, e := range f.Errors() {
		out = append(out, e.String())
	}
	return out
}

func firstWeight(r policy.Rollout) int { return *r.Plan.Steps[0].Weight }

// At start a bad file is fatal, whatever the good files beside it hold, and
// every problem is listed with its file and field.
func TestOpenRefusesBadFilesListingEveryProblem(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), plan("a", 10001, 10))
	write(t, filepath.Join(dir, "b.yaml"), plan("b", 10002, 120))
	write(t, filepath.Join(dir, "c.yaml"), plan("c", 10003, 10)+"colour: blue\n")
	write(t, filepath.Join(dir, "d.yaml"), strings.Replace(plan("d", 10004, 10), "d-v1", "a-v1", 1))
	_, err := Open(Options{Paths: []string{dir}})
	var ps policy.Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Open = %v, want policy.Problems", err)
	}
	for _, want := range []string{
		filepath.Join(dir, "b.yaml") + ": steps[0].weight: must be within 0..100, got 120",
		filepath.Join(dir, "c.yaml") + ": colour: unknown field",
		filepath.Join(dir, "d.yaml") + `: stable.cluster: cluster "a-v1" is already used by plan "a"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open error lacks %q:\n%v", want, err)
		}
	}
	if len(ps) != 3 {
		t.Errorf("got %d problems, want 3:\n%v", len(ps), err)
	}
}

func TestOpenRefusesMissingPath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Open(Options{Paths: []string{missing}})
	if err == nil || !strings.Contains(err.Error(), missing+": ") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("Open(missing) = %v, want a problem naming %s", err, missing)
	}
}

func TestApplyInitialAppliesEveryFile(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yml")
	write(t, a, plan("a", 10001, 10))
	write(t, b, plan("b", 10002, 20)+"---\n"+plan("b2", 10003, 30))
	write(t, filepath.Join(dir, "notes.txt"), "not a plan")
	e := newFakeEngine()
	start(t, e, dir)
	want := []string{"apply a file:" + a, "apply b file:" + b, "apply b2 file:" + b}
	if got := e.takeCalls(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
}

// A plan the API replaced after its file was last written keeps the API's
// version at start.
func TestAPINewerThanFile(t *testing.T) {
	written := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		source    string
		appliedAt time.Time
		applied   bool
	}{
		"api applied after the file was written":  {policy.SourceAPI, written.Add(time.Minute), false},
		"api applied before the file was written": {policy.SourceAPI, written.Add(-time.Minute), true},
		"last applied from the file":              {"file:elsewhere.yaml", written.Add(time.Minute), true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "web.yaml")
			write(t, p, plan("web", 10001, 10))
			if err := os.Chtimes(p, written, written); err != nil {
				t.Fatal(err)
			}
			e := newFakeEngine()
			old, _ := policy.ParseYAML([]byte(plan("web", 10001, 50)), "")
			e.rollouts["web"] = policy.Rollout{Plan: old[0], Source: tc.source, AppliedAt: tc.appliedAt}
			f := start(t, e, dir)
			r := e.rollout(t, "web")
			if tc.applied {
				if r.Source != policy.FileSource(p) || firstWeight(r) != 10 {
					t.Errorf("rollout = source %q weight %d; want the file's plan (source %q, weight 10)", r.Source, firstWeight(r), policy.FileSource(p))
				}
				return
			}
			if r.Source != policy.SourceAPI || firstWeight(r) != 50 {
				t.Errorf("rollout = source %q weight %d; want the API's plan kept (weight 50)", r.Source, firstWeight(r))
			}
			// The file's plan applies once the file changes again.
			write(t, p, plan("web", 10001, 20))
			f.rescan()
			if r := e.rollout(t, "web"); r.Source != policy.FileSource(p) || firstWeight(r) != 20 {
				t.Errorf("after the file changed: source %q weight %d, want the file's new plan", r.Source, firstWeight(r))
			}
		})
	}
}

// startedFiles is start on an engine that already holds rollouts, keeping
// what ApplyInitial did out of the calls.
func startedFiles(t *testing.T, e *fakeEngine, paths ...string) *Files {
	t.Helper()
	f := start(t, e, paths...)
	e.takeCalls()
	return f
}

// Rollouts of files removed while the server was down are detached at
// start; rollouts from paths not watched are left alone.
func TestApplyInitialDetachesRolloutsOfRemovedFiles(t *testing.T) {
	dir := t.TempDir()
	keep := filepath.Join(dir, "keep.yaml")
	write(t, keep, plan("keep", 10001, 10))
	e := newFakeEngine()
	for name, src := range map[string]string{
		"gone":      policy.FileSource(filepath.Join(dir, "gone.yaml")),
		"moved-out": policy.FileSource(keep), // keep.yaml no longer defines it
		"elsewhere": policy.FileSource("/elsewhere/x.yaml"),
		"api":       policy.SourceAPI,
	} {
		p, _ := policy.ParseYAML([]byte(plan(name, 10002, 10)), "")
		e.rollouts[name] = policy.Rollout{Plan: p[0], Source: src}
	}
	start(t, e, dir)
	want := []string{
		"apply keep file:" + keep,
		"detach gone file:" + filepath.Join(dir, "gone.yaml"),
		"detach moved-out file:" + keep,
	}
	if got := e.takeCalls(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if r := e.rollout(t, "elsewhere"); r.Source != "file:/elsewhere/x.yaml" {
		t.Errorf("a rollout of an unwatched path was changed: source %q", r.Source)
	}
}

// While serving, a bad file is rejected alone: the good file's change
// applies, the bad file's rollout keeps its plan, and the problem stands
// until the file is fixed.
func TestReloadRejectsBadFileAlone(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	write(t, a, plan("a", 10001, 10))
	write(t, b, plan("b", 10002, 10))
	e := newFakeEngine()
	now := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	f, err := Open(Options{Paths: []string{dir}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ApplyInitial(e); err != nil {
		t.Fatal(err)
	}
	e.takeCalls()

	write(t, a, plan("a", 10001, 120))
	write(t, b, plan("b", 10002, 20))
	f.rescan()
	if got, want := e.takeCalls(), []string{"apply b file:" + b}; !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if r := e.rollout(t, "a"); firstWeight(r) != 10 || r.Source != policy.FileSource(a) {
		t.Errorf("rollout a changed by its bad file: weight %d source %q", firstWeight(r), r.Source)
	}
	wantErr := LoadError{File: a, Field: "steps[0].weight", Problem: "must be within 0..100, got 120", Time: now}
	if got := f.Errors(); len(got) != 1 || got[0] != wantErr {
		t.Fatalf("Errors = %+v, want [%+v]", got, wantErr)
	}

	// Another event, the file unchanged: the problem keeps its time.
	now = now.Add(time.Minute)
	write(t, b, plan("b", 10002, 30))
	f.rescan()
	if got := f.Errors(); len(got) != 1 || !got[0].Time.Equal(wantErr.Time) {
		t.Errorf("Errors after an unrelated change = %+v, want the first rejection's time %s", got, wantErr.Time)
	}
	e.takeCalls()

	write(t, a, plan("a", 10001, 40))
	f.rescan()
	if got, want := e.takeCalls(), []string{"apply a file:" + a}; !slices.Equal(got, want) {
		t.Errorf("calls after the fix = %q, want %q", got, want)
	}
	if got := f.Errors(); len(got) != 0 {
		t.Errorf("Errors after the fix = %+v, want none", got)
	}
}

// An edit applies only the plans that changed in the file: what the API
// did to the others stands.
func TestReloadAppliesOnlyChangedPlans(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "both.yaml")
	write(t, p, plan("x", 10001, 10)+"---\n"+plan("y", 10002, 10))
	e := newFakeEngine()
	f := startedFiles(t, e, dir)
	apiPlan, _ := policy.ParseYAML([]byte(plan("x", 10001, 70)), "")
	if _, err := e.Apply(apiPlan[0], policy.SourceAPI); err != nil {
		t.Fatal(err)
	}
	e.takeCalls()

	write(t, p, plan("x", 10001, 10)+"---\n"+plan("y", 10002, 20))
	f.rescan()
	if got, want := e.takeCalls(), []string{"apply y file:" + p}; !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if r := e.rollout(t, "x"); r.Source != policy.SourceAPI || firstWeight(r) != 70 {
		t.Errorf("x = source %q weight %d; want the API's plan kept", r.Source, firstWeight(r))
	}

	// Nothing changed: nothing is applied.
	f.rescan()
	if got := e.takeCalls(); len(got) != 0 {
		t.Errorf("a rescan of unchanged files called %q", got)
	}
}

// Removing a file detaches its rollouts (never deletes them), and forgets
// its problems; removing a plan from a file detaches that plan.
func TestRemovalDetaches(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml"), filepath.Join(dir, "c.yaml")
	write(t, a, plan("a", 10001, 10))
	write(t, b, plan("b", 10002, 10)+"---\n"+plan("b2", 10003, 10))
	write(t, c, plan("c", 10004, 10))
	e := newFakeEngine()
	f := startedFiles(t, e, dir)
	write(t, c, "name: [broken")
	f.rescan()
	if len(f.Errors()) == 0 {
		t.Fatal("a broken c.yaml left no error")
	}

	for _, p := range []string{a, c} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	write(t, b, plan("b", 10002, 10))
	f.rescan()
	want := []string{"detach a file:" + a, "detach b2 file:" + b, "detach c file:" + c}
	if got := e.takeCalls(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	for _, name := range []string{"a", "b2", "c"} {
		if r := e.rollout(t, name); r.Source != policy.SourceAPI {
			t.Errorf("%s: source %q, want %q", name, r.Source, policy.SourceAPI)
		}
	}
	if got := errorLines(f); len(got) != 0 {
		t.Errorf("Errors after the bad file was removed = %q, want none", got)
	}

	// A rollout deleted through the API is not an error when its file goes.
	delete(e.rollouts, "b")
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	f.rescan()
	if got := e.takeCalls(); len(got) != 0 {
		t.Errorf("calls = %q, want none", got)
	}
}

// A renamed file, or a plan moved from one file to another, is taken over
// by its new file: applied from there, never detached on the way.
func TestRenameAndMove(t *testing.T) {
	tests := map[string]struct {
		from, to string // a plan moves from file `from` to file `to`
		rename   bool   // by renaming the file, not editing both
	}{
		"rename":              {from: "a.yaml", to: "z.yaml", rename: true},
		"move to a later one": {from: "a.yaml", to: "b.yaml"},
		"move to an earlier":  {from: "b.yaml", to: "a.yaml"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			from, to := filepath.Join(dir, tc.from), filepath.Join(dir, tc.to)
			write(t, from, plan("web", 10001, 10))
			if !tc.rename {
				write(t, to, plan("other", 10002, 10))
			}
			e := newFakeEngine()
			f := startedFiles(t, e, dir)
			if tc.rename {
				if err := os.Rename(from, to); err != nil {
					t.Fatal(err)
				}
			} else {
				write(t, from, "# moved to "+tc.to+"\n")
				write(t, to, plan("other", 10002, 10)+"---\n"+plan("web", 10001, 10))
			}
			f.rescan()
			if got, want := e.takeCalls(), []string{"apply web file:" + to}; !slices.Equal(got, want) {
				t.Errorf("calls = %q, want %q", got, want)
			}
			if r := e.rollout(t, "web"); r.Source != policy.FileSource(to) {
				t.Errorf("web: source %q, want %q", r.Source, policy.FileSource(to))
			}
			if got := errorLines(f); len(got) != 0 {
				t.Errorf("Errors = %q, want none", got)
			}
			// The old file no longer owns it: removing it detaches nothing.
			if !tc.rename {
				if err := os.Remove(from); err != nil {
					t.Fatal(err)
				}
				f.rescan()
				if got := e.takeCalls(); len(got) != 0 {
					t.Errorf("calls after removing the old file = %q, want none", got)
				}
			}
		})
	}
}

// A changed file that conflicts with a file that did not change is the one
// rejected, and only it.
func TestConflictBlamesTheChangedFile(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml"), filepath.Join(dir, "c.yaml")
	write(t, a, plan("a", 10001, 10))
	write(t, b, plan("b", 10002, 10))
	write(t, c, plan("c", 10003, 10))
	e := newFakeEngine()
	f := startedFiles(t, e, dir)

	// a.yaml sorts first, but it did not change: b.yaml is blamed.
	write(t, b, strings.Replace(plan("b", 10002, 20), "b-v1", "a-v1", 1))
	write(t, c, plan("c", 10003, 20)+"---\n"+plan("a", 10004, 10))
	f.rescan()
	if got := e.takeCalls(); len(got) != 0 {
		t.Errorf("calls = %q, want none", got)
	}
	want := []string{
		b + `: stable.cluster: cluster "a-v1" is already used by plan "a"`,
		c + `: name: "a" is also the name of a plan in ` + a,
		c + `: stable.cluster: cluster "a-v1" is already used by plan "a"`,
		c + `: canary.cluster: cluster "a-v2" is already used by plan "a"`,
	}
	// c.yaml is checked against b.yaml's running plan, not its rejected one.
	if got := errorLines(f); !slices.Equal(got, want) {
		t.Errorf("Errors = %q, want %q", got, want)
	}
}

// An engine refusal (a conflict with a rollout applied through the API, a
// store failure) is the file's load error, and the file is tried again.
func TestEngineRefusalIsALoadError(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	write(t, a, plan("a", 10001, 10))
	e := newFakeEngine()
	f := startedFiles(t, e, dir)
	e.failApply["a"] = policy.Problems{{Field: "canary.cluster", Msg: `cluster "a-v2" is already used by plan "api-one"`}}
	write(t, a, plan("a", 10001, 20))
	f.rescan()
	want := []string{a + `: canary.cluster: plan "a": cluster "a-v2" is already used by plan "api-one"`}
	if got := errorLines(f); !slices.Equal(got, want) {
		t.Errorf("Errors = %q, want %q", got, want)
	}
	delete(e.failApply, "a")
	e.takeCalls()
	f.rescan()
	if got, want := e.takeCalls(), []string{"apply a file:" + a}; !slices.Equal(got, want) {
		t.Errorf("retry calls = %q, want %q", got, want)
	}
	if got := errorLines(f); len(got) != 0 {
		t.Errorf("Errors after the retry = %q, want none", got)
	}
}

// notPlanFiles puts a FIFO, a symlink to /dev/zero and a 9 MiB (sparse)
// file in dir and returns the problem each must get.
func notPlanFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	fifo, zero, huge := filepath.Join(dir, "fifo.yaml"), filepath.Join(dir, "zero.yaml"), filepath.Join(dir, "huge.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(huge, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 9<<20+100<<10); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		fifo: fifo + ": not a regular file (fifo)",
		zero: zero + ": not a regular file (a symlink to a character device)",
		huge: huge + ": 9.1 MiB is over the 4 MiB plan file limit",
	}
}

// within fails the test if f does not return within d: reading a FIFO or
// /dev/zero would block or run forever.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s (blocked on a FIFO or device?)", what, d)
	}
}

func TestNotPlanFilesRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "good.yaml"), plan("good", 10001, 10))
	want := notPlanFiles(t, dir)
	var err error
	within(t, 5*time.Second, "Open", func() { _, err = Open(Options{Paths: []string{dir}}) })
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Open error lacks %q:\n%v", w, err)
		}
	}
}

func TestNotPlanFilesRefusedOnReload(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	write(t, good, plan("good", 10001, 10))
	e := newFakeEngine()
	f := startedFiles(t, e, dir)
	want := notPlanFiles(t, dir)
	write(t, good, plan("good", 10001, 20))
	within(t, 5*time.Second, "rescan", f.rescan)
	if got, w := e.takeCalls(), []string{"apply good file:" + good}; !slices.Equal(got, w) {
		t.Errorf("calls = %q, want %q", got, w)
	}
	var wantLines []string
	for _, w := range want {
		wantLines = append(wantLines, w)
	}
	slices.Sort(wantLines)
	if got := errorLines(f); !slices.Equal(got, wantLines) {
		t.Errorf("Errors = %q, want %q", got, wantLines)
	}
}

// Run reacts to real fsnotify events: an edit applies, a FIFO dropped in
// the folder is refused without stalling the watcher, a removal detaches.
func TestRunFollowsTheFolder(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	write(t, a, plan("a", 10001, 10))
	e := newFakeEngine()
	f, err := Open(Options{Paths: []string{dir}, Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ApplyInitial(e); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not seen within 5s; errors %q", what, errorLines(f))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	weight := func(name string) int {
		e.mu.Lock()
		defer e.mu.Unlock()
		r, ok := e.rollouts[name]
		if !ok {
			return -1
		}
		return *r.Plan.Steps[0].Weight
	}

	write(t, a, plan("a", 10001, 30))
	waitFor("edit applied", func() bool { return weight("a") == 30 })

	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(dir, "b.yaml")
	write(t, b, plan("b", 10002, 10))
	waitFor("new file applied beside a FIFO", func() bool { return weight("b") == 10 })
	waitFor("FIFO refused", func() bool { return slices.Contains(errorLines(f), fifo+": not a regular file (fifo)") })

	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	waitFor("removal detached", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.rollouts["a"].Source == policy.SourceAPI
	})
}

// A file that stays bad is read on every rescan but logged once.
func TestStandingProblemIsLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	write(t, a, plan("a", 10001, 10))
	var logs bytes.Buffer
	f, err := Open(Options{Paths: []string{dir}, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ApplyInitial(newFakeEngine()); err != nil {
		t.Fatal(err)
	}
	write(t, a, plan("a", 10001, 120))
	for range 3 {
		f.rescan()
	}
	if n := strings.Count(logs.String(), "plan file rejected"); n != 1 {
		t.Errorf("the standing problem was logged %d times, want once:\n%s", n, logs.String())
	}
	write(t, a, plan("a", 10001, 130))
	f.rescan()
	if n := strings.Count(logs.String(), "got 130"); n != 1 {
		t.Errorf("a new problem of the same file was logged %d times, want once:\n%s", n, logs.String())
	}
}
