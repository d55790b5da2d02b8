// Package planfiles keeps rollouts in step with plan files and folders.
//
// A Files is given the plan paths of `shiftplane serve --plan`: plan files,
// and folders whose *.yaml and *.yml files are plans (not recursive). Each
// file is its own unit:
//
//   - At start (Open, then ApplyInitial) every file is read and checked, on
//     its own and as a set. Any problem is fatal, and every problem is
//     listed: whoever typed `serve --plan x.yaml` wants to hear about the
//     typo now, not find it later in a log. A plan the API replaced after
//     its file was last written keeps the API's version.
//   - While serving (Run), the folders are watched with fsnotify, and every
//     event (and every Resync) rescans them. Only files whose content
//     changed are parsed again, and of those only the plans that changed
//     are applied. A bad file is rejected alone: its rollouts keep running
//     the plans they had, the other files' changes apply, and the problem is
//     kept (Errors) until the file is fixed or removed.
//   - A file that is removed, or a plan removed from a file, is detached,
//     never deleted: the rollout keeps its plan, state and traffic, and its
//     source becomes policy.SourceAPI; `shiftctl delete` removes it. A plan
//     moved to another file is taken over by that file.
//   - Only regular files of at most policy.MaxPlanFileSize bytes are read:
//     FIFOs, devices, symlinks to them and oversized files are refused by
//     name, without blocking (policy.ReadPlanFile).
package planfiles

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/shiftplane/shiftplane/policy"
)

// Engine is what Files needs of the rollout engine; *policy.Engine
// implements it. Its methods must be safe for concurrent use.
type Engine interface {
	// Apply creates or replaces a rollout from p, recording source as its
	// origin. An invalid plan changes nothing and returns policy.Problems.
	Apply(p policy.Plan, source string) (policy.Status, error)
	// Get returns one rollout's status; an unknown name is an error
	// wrapping policy.ErrNotFound.
	Get(name string) (policy.Status, error)
	// List returns every rollout's status.
	List() []policy.Status
	// Detach says that source no longer defines rollout name: if the
	// rollout's Source is source, it becomes policy.SourceAPI and
	// everything else stays as it is; otherwise nothing changes. An unknown
	// name is an error wrapping policy.ErrNotFound.
	Detach(name, source string) error
}

var _ Engine = (*policy.Engine)(nil)

// Defaults of Options.
const (
	DefaultDebounce = 200 * time.Millisecond
	DefaultResync   = 30 * time.Second
)

// Options configure Files.
type Options struct {
	// Paths are plan files and folders of plans.
	Paths []string
	// Validate is the server's plan policy (exec hooks, webhook hosts).
	Validate policy.ValidateOptions
	Log      *slog.Logger
	// Now stamps load errors; nil is time.Now.
	Now func() time.Time
	// Debounce is how long after the last event of a burst the folders are
	// rescanned (an editor's save is several events); 0 is DefaultDebounce.
	Debounce time.Duration
	// Resync rescans the folders this often whatever the events, to catch
	// what fsnotify cannot report (a watched folder removed and made again,
	// an event queue overflow); 0 is DefaultResync.
	Resync time.Duration
}

// LoadError is a problem of a plan file (or folder) that was rejected while
// serving. It stands until the file is fixed or removed.
type LoadError struct {
	File    string // the plan file or folder
	Field   string // the plan field path, when the problem is about one
	Problem string // what is wrong
	// Time is when the file was first rejected with this problem.
	Time time.Time
}

func (e LoadError) String() string {
	return policy.Problem{File: e.File, Field: e.Field, Msg: e.Problem}.String()
}

// Files keeps an engine's rollouts in step with plan files. Call Open,
// ApplyInitial once, then Run once; Errors and Paths may be called from any
// goroutine at any time.
type Files struct {
	paths    []string
	opts     policy.ValidateOptions
	log      *slog.Logger
	now      func() time.Time
	debounce time.Duration
	resync   time.Duration

	engine  Engine
	initial []loadedFile // from Open, until ApplyInitial
	// files is the state of every plan file seen; only ApplyInitial and
	// Run's goroutine touch it.
	files map[string]*fileState

	mu   sync.Mutex
	errs map[string][]LoadError // by file
}

// fileState is what a plan file last gave the engine.
type fileState struct {
	// hash is the content last accepted in full; a file with standing
	// errors is read again on every rescan, whatever its hash.
	hash [32]byte
	// plans are the plans this file defines, by name, as last applied
	// (or kept: see ApplyInitial).
	plans map[string]policy.Plan
}

type loadedFile struct {
	path    string
	hash    [32]byte
	modTime time.Time
	plans   []policy.Plan
}

// Open reads and checks every plan file under o.Paths. Any problem (a path
// that cannot be read, a file that is not a plan file, a plan that does not
// validate, two files that conflict) is returned as policy.Problems, every
// problem a line naming its file and field; nothing has been applied then.
func Open(o Options) (*Files, error) {
	f := &Files{
		opts: o.Validate, log: o.Log, now: o.Now, debounce: o.Debounce, resync: o.Resync,
		files: map[string]*fileState{}, errs: map[string][]LoadError{},
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.log = f.log.With("component", "planfiles")
	if f.now == nil {
		f.now = time.Now
	}
	if f.debounce <= 0 {
		f.debounce = DefaultDebounce
	}
	if f.resync <= 0 {
		f.resync = DefaultResync
	}
	for _, p := range o.Paths {
		f.paths = append(f.paths, filepath.Clean(p))
	}

	var ps policy.Problems
	l := f.list(true)
	for _, p := range f.paths {
		if err := l.unreadable[p]; err != nil {
			ps = append(ps, policy.ReadProblem(p, err))
		}
	}
	var (
		all   []policy.Plan
		files []string
	)
	for _, p := range l.files {
		data, st, err := policy.ReadPlanFile(p)
		if err != nil {
			ps = append(ps, policy.ReadProblem(p, err))
			continue
		}
		plans, perr := policy.ParseAndValidate(data, p, f.opts)
		ps = append(ps, perr...)
		for _, pl := range plans {
			all, files = append(all, pl), append(files, p)
		}
		if len(perr) == 0 {
			f.initial = append(f.initial, loadedFile{path: p, hash: sha256.Sum256(data), modTime: st.ModTime(), plans: plans})
		}
	}
	ps = append(ps, policy.ValidateSet(all, files)...)
	if len(ps) > 0 {
		return nil, ps
	}
	return f, nil
}

// Paths returns the plan paths being watched, as cleaned paths.
func (f *Files) Paths() []string { return slices.Clone(f.paths) }

// ApplyInitial applies the plans Open read. A plan the API replaced after
// its file was last written keeps the API's version (the file's plan is
// applied when the file next changes). Then every rollout whose source is a
// watched file that no longer defines it (the file was removed while the
// server was down) is detached. An engine error is fatal at start, as a
// bad plan is.
func (f *Files) ApplyInitial(e Engine) error {
	f.engine = e
	for _, lf := range f.initial {
		st := &fileState{hash: lf.hash, plans: map[string]policy.Plan{}}
		f.files[lf.path] = st
		for _, p := range lf.plans {
			st.plans[p.Name] = p
			if cur, err := e.Get(p.Name); err == nil && cur.Source == policy.SourceAPI && lf.modTime.Before(cur.AppliedAt) {
				f.log.Info("plan file older than the API's apply; keeping the API's plan", "rollout", p.Name, "file", lf.path,
					"fileWritten", lf.modTime, "apiApplied", cur.AppliedAt)
				continue
			}
			if _, err := e.Apply(p, policy.FileSource(lf.path)); err != nil {
				return fmt.Errorf("%s: %w", lf.path, err)
			}
		}
	}
	f.initial = nil
	for _, s := range e.List() {
		path, ok := policy.SourceFile(s.Source)
		if !ok || !f.watches(path) {
			continue
		}
		if st, ok := f.files[filepath.Clean(path)]; ok {
			if _, defined := st.plans[s.Plan.Name]; defined {
				continue
			}
		}
		f.detach(s.Plan.Name, path) // the source as stored, which Detach compares
	}
	return nil
}

// watches reports whether path is one of the watched files, or a plan file
// name in a watched folder.
func (f *Files) watches(path string) bool {
	path = filepath.Clean(path)
	for _, p := range f.paths {
		if path == p || (filepath.Dir(path) == p && isPlanName(path) && isDir(p)) {
			return true
		}
	}
	return false
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func isPlanName(name string) bool {
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

// listing is what the plan paths hold now.
type listing struct {
	files []string // in path order, each once
	// unreadable are paths that exist but cannot be listed or examined;
	// a path that does not exist is simply absent.
	unreadable map[string]error
}

// list lists the plan paths; missingIsError says whether a path that does
// not exist is a problem (at start) or a removal (while serving).
func (f *Files) list(missingIsError bool) listing {
	l := listing{unreadable: map[string]error{}}
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			l.files = append(l.files, p)
		}
	}
	for _, p := range f.paths {
		st, err := os.Stat(p)
		if err != nil {
			// Missing at start is fatal (Open reports it); while serving it
			// means the file or folder was removed.
			if missingIsError || !errors.Is(err, fs.ErrNotExist) {
				l.unreadable[p] = err
			}
			continue
		}
		if !st.IsDir() {
			add(p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			l.unreadable[p] = err
			continue
		}
		for _, e := range entries {
			if !e.IsDir() && isPlanName(e.Name()) {
				add(filepath.Join(p, e.Name()))
			}
		}
	}
	return l
}

// candidate is one plan file as read by a rescan.
type candidate struct {
	path     string
	hash     [32]byte
	plans    []policy.Plan
	problems policy.Problems
}

// rescan reads the plan paths again and brings the engine in step with the
// files that changed, were added or were removed. It runs on Run's
// goroutine only.
func (f *Files) rescan() {
	l := f.list(false)
	present := map[string]bool{}
	for p, err := range l.unreadable {
		f.reject(p, policy.Problems{policy.ReadProblem(p, err)})
		present[p] = true
		// The files of a folder that cannot be listed are not removed:
		// their rollouts stay as they are.
		for known := range f.files {
			if filepath.Dir(known) == p {
				present[known] = true
			}
		}
	}

	var changed []*candidate
	for _, p := range l.files {
		data, _, err := policy.ReadPlanFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing
		}
		present[p] = true
		c := &candidate{path: p}
		if err != nil {
			c.problems = policy.Problems{policy.ReadProblem(p, err)}
			changed = append(changed, c)
			continue
		}
		c.hash = sha256.Sum256(data)
		if st, ok := f.files[p]; ok && st.hash == c.hash && !f.hasErrors(p) {
			continue
		}
		c.plans, c.problems = policy.ParseAndValidate(data, p, f.opts)
		changed = append(changed, c)
	}
	f.checkSet(l.files, present, changed)

	var detach []detachment
	for _, c := range changed {
		if len(c.problems) > 0 {
			f.reject(c.path, c.problems)
			continue
		}
		detach = append(detach, f.applyFile(c)...)
	}
	// Detach after every apply, so a plan moved from one file to another
	// is taken over by its new file instead of detached first.
	for p, st := range f.files {
		if present[p] {
			continue
		}
		f.log.Info("plan file removed; its rollouts keep running as they are", "file", p, "rollouts", sortedNames(st.plans))
		for name := range st.plans {
			detach = append(detach, detachment{name: name, file: p})
		}
		delete(f.files, p)
	}
	f.forgetErrors(present)
	sort.Slice(detach, func(i, j int) bool {
		if detach[i].file != detach[j].file {
			return detach[i].file < detach[j].file
		}
		return detach[i].name < detach[j].name
	})
	for _, d := range detach {
		f.detach(d.name, d.file)
	}
}

type detachment struct{ name, file string }

// checkSet rejects changed files whose plans conflict with the other files'
// (a name, a cluster or a listener domain used twice). The plans the
// engine runs from unchanged and rejected files come first, so a conflict
// is blamed on the file that changed; a file rejected here puts its
// running plans back in the set, and the check runs again.
func (f *Files) checkSet(order []string, present map[string]bool, changed []*candidate) {
	for {
		good := map[string]*candidate{}
		for _, c := range changed {
			if len(c.problems) == 0 {
				good[c.path] = c
			}
		}
		if len(good) == 0 {
			return
		}
		var (
			plans []policy.Plan
			files []string
		)
		for _, p := range order {
			if st, ok := f.files[p]; ok && present[p] && good[p] == nil {
				for _, name := range sortedNames(st.plans) {
					plans, files = append(plans, st.plans[name]), append(files, p)
				}
			}
		}
		for _, c := range changed {
			if good[c.path] != nil {
				for _, pl := range c.plans {
					plans, files = append(plans, pl), append(files, c.path)
				}
			}
		}
		byFile := map[string]policy.Problems{}
		for _, pr := range policy.ValidateSet(plans, files) {
			if good[pr.File] != nil {
				byFile[pr.File] = append(byFile[pr.File], pr)
			}
		}
		// Reject one file at a time, the first in order: a conflict is
		// reported on the later of two plans, so that file is to blame
		// whatever is decided about the files after it.
		rejected := false
		for _, c := range changed {
			if ps := byFile[c.path]; good[c.path] != nil && len(ps) > 0 {
				c.problems = ps
				rejected = true
				break
			}
		}
		if !rejected {
			return
		}
	}
}

// applyFile applies the plans of a changed, valid file that differ from
// what the file last gave, and returns the plans the file no longer
// defines, to be detached.
func (f *Files) applyFile(c *candidate) []detachment {
	st, ok := f.files[c.path]
	if !ok {
		st = &fileState{plans: map[string]policy.Plan{}}
		f.files[c.path] = st
	}
	source := policy.FileSource(c.path)
	var problems policy.Problems
	next := map[string]policy.Plan{}
	for _, p := range c.plans {
		old, had := st.plans[p.Name]
		if had && reflect.DeepEqual(old, p) {
			// Unchanged in the file: not applied again, so what the API
			// did to the rollout since stands.
			next[p.Name] = p
			continue
		}
		if _, err := f.engine.Apply(p, source); err != nil {
			problems = append(problems, applyProblems(c.path, p.Name, err)...)
			if had {
				next[p.Name] = old
			}
			continue
		}
		next[p.Name] = p
		f.log.Info("plan applied from file", "rollout", p.Name, "file", c.path, "created", !had)
	}
	var gone []detachment
	for name := range st.plans {
		if _, ok := next[name]; !ok {
			f.log.Info("plan removed from its file; the rollout keeps running as it is", "rollout", name, "file", c.path)
			gone = append(gone, detachment{name: name, file: c.path})
		}
	}
	st.plans = next
	if len(problems) > 0 {
		st.hash = [32]byte{}
		f.reject(c.path, problems)
		return gone
	}
	st.hash = c.hash
	f.setErrors(c.path, nil)
	return gone
}

func applyProblems(file, name string, err error) policy.Problems {
	var ps policy.Problems
	if errors.As(err, &ps) {
		out := make(policy.Problems, len(ps))
		for i, p := range ps {
			out[i] = policy.Problem{File: file, Field: p.Field, Msg: fmt.Sprintf("plan %q: %s", name, p.Msg)}
		}
		return out
	}
	return policy.Problems{{File: file, Msg: fmt.Sprintf("plan %q: %v", name, err)}}
}

// reject records a file's problems and logs those that are new: a file
// that stays bad is read again on every rescan, but logged once.
func (f *Files) reject(file string, ps policy.Problems) {
	for _, p := range f.setErrors(file, ps) {
		f.log.Error("plan file rejected; its rollouts keep running the plans they had", "file", file, "field", p.Field, "problem", p.Msg)
	}
}

func (f *Files) detach(name, file string) {
	err := f.engine.Detach(name, policy.FileSource(file))
	switch {
	case err == nil:
		f.log.Debug("rollout detached from its plan file; kept as it is", "rollout", name, "file", file)
	case errors.Is(err, policy.ErrNotFound):
		// Deleted through the API already: nothing to keep.
	default:
		f.log.Error("detach rollout from its removed plan file", "rollout", name, "file", file, "error", err)
	}
}

func sortedNames(m map[string]policy.Plan) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// setErrors replaces file's standing problems (nil clears them) and
// returns those that did not stand already. A problem that stood already
// keeps the time it was first seen.
func (f *Files) setErrors(file string, ps policy.Problems) policy.Problems {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(ps) == 0 {
		delete(f.errs, file)
		return nil
	}
	since := map[string]time.Time{}
	for _, e := range f.errs[file] {
		since[e.Field+"\x00"+e.Problem] = e.Time
	}
	now := f.now()
	out := make([]LoadError, 0, len(ps))
	var fresh policy.Problems
	for _, p := range ps {
		t, ok := since[p.Field+"\x00"+p.Msg]
		if !ok {
			t = now
			fresh = append(fresh, p)
		}
		out = append(out, LoadError{File: file, Field: p.Field, Problem: p.Msg, Time: t})
	}
	f.errs[file] = out
	return fresh
}

// forgetErrors drops the problems of files and folders that are gone (or,
// for a folder, can be listed again).
func (f *Files) forgetErrors(present map[string]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for file := range f.errs {
		if !present[file] {
			delete(f.errs, file)
		}
	}
}

func (f *Files) hasErrors(file string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.errs[file]) > 0
}

// Errors returns the problems of the plan files rejected while serving,
// sorted by file, that stand now.
func (f *Files) Errors() []LoadError {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []LoadError
	for _, es := range f.errs {
		out = append(out, es...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].File < out[j].File })
	return out
}

// Run watches the plan paths and keeps the engine in step with them until
// ctx ends. It returns an error only when the watcher cannot be made at
// all; a folder that cannot be watched is logged and still rescanned every
// Resync.
func (f *Files) Run(ctx context.Context) error {
	if f.engine == nil {
		return errors.New("planfiles: Run before ApplyInitial")
	}
	if len(f.paths) == 0 {
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("plan file watcher: %w", err)
	}
	defer w.Close()
	watched := map[string]bool{}
	f.watch(w, watched)
	// Catch what changed between ApplyInitial and the watches.
	f.rescan()

	resync := time.NewTicker(f.resync)
	defer resync.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var burstEnd time.Time // zero when no rescan is pending
	schedule := func() {
		now := time.Now()
		if burstEnd.IsZero() {
			// A burst that never pauses still gets a rescan.
			burstEnd = now.Add(10 * f.debounce)
		}
		at := now.Add(f.debounce)
		if at.After(burstEnd) {
			at = burstEnd
		}
		timer.Reset(time.Until(at))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
				delete(watched, filepath.Clean(ev.Name)) // a watched folder itself went away
			}
			schedule()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			f.log.Warn("plan file watcher", "error", err)
			schedule()
		case <-timer.C:
			burstEnd = time.Time{}
			f.watch(w, watched)
			f.rescan()
		case <-resync.C:
			f.watch(w, watched)
			f.rescan()
		}
	}
}

// watch adds an fsnotify watch on every folder that holds plan paths and is
// not watched yet: the folders given, and the folder of each file given.
func (f *Files) watch(w *fsnotify.Watcher, watched map[string]bool) {
	for _, p := range f.paths {
		dir := p
		if !isDir(p) {
			dir = filepath.Dir(p)
		}
		if watched[dir] {
			continue
		}
		if err := w.Add(dir); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				f.log.Warn("cannot watch plan folder; rescanning it every resync", "path", dir, "resync", f.resync, "error", err)
			}
			continue
		}
		watched[dir] = true
	}
}
